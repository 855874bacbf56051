"""A PyTorch backend with the runtime's ``Backend`` interface (``--backend torch``, training validation).

It rebuilds the network from a model card (or takes a live module), loads the weights of a checkpoint
or of the exported ONNX itself (``weights_from_onnx``: the initialisers map one to one onto the
parameters), and runs it on the CPU or CUDA, in FP16 autocast on CUDA where asked. Torch is imported
here, never by ``vbmd_rt.runtime``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vbmd_rt.export import nets
from vbmd_rt.runtime.inference.base import Backend


class TorchBackend(Backend):
    """A torch module behind the runtime's ``Backend`` interface; the module goes back to where it was
    (its device) on ``deactivate``, so training can validate its live network."""

    def __init__(self, module: torch.nn.Module, device: str = "cpu", precision: str = "fp32", reason: str = ""):
        super().__init__(None, precision, reason)
        self.module = module
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.name = f"torch-{self.device.type}"

    @classmethod
    def from_model(cls, model, device: str = "auto", precision: str | None = None) -> TorchBackend:
        """From a runtime ``Model`` (card + folder): the weights of its FP32 ONNX."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        net = nets.build(model.architecture, model.card.config)
        load_onnx_weights(net, model.onnx("fp32"))
        return cls(net, device, precision or ("fp16" if device == "cuda" else "fp32"))

    def _activate(self) -> None:
        p = next(self.module.parameters(), None)
        self._home = p.device if p is not None else torch.device("cpu")
        self._was_training = self.module.training
        self.module.to(self.device).eval()

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        use_amp = self.device.type == "cuda" and self.precision == "fp16"
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
            y = torch.sigmoid(self.module(x).float())
        return y.cpu().numpy()

    def _deactivate(self) -> None:
        self.module.to(self._home).train(self._was_training)
        if self.device.type == "cuda" and self._home.type != "cuda":
            torch.cuda.empty_cache()


def load_onnx_weights(net: torch.nn.Module, onnx_path: str | Path) -> None:
    """Copy an exported FP32 ONNX's initialisers back into ``net`` (names as the exporter wrote them). An ONNX
    exported in eval mode has its batch norms folded into the convolutions before them (``NAME.weight_bias``:
    the one-bone segmenter's, the 2D U-Net's); ``_load_folded`` reads those."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    probe = _probe_shape(net, model)
    if any(name.endswith(".weight_bias") for name in inits):
        _load_folded(net, inits, onnx_path, probe)
        _verify(net, onnx_path, probe)
        return
    state = net.state_dict()
    loaded = {}
    for key, value in state.items():
        for cand in (key, f"net.{key}"):
            if cand in inits and inits[cand].shape == tuple(value.shape):
                loaded[key] = torch.from_numpy(inits[cand].copy())
                break
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    # The exporter folds ``weight.view(1, C, 1, 1, 1)`` of the instance norms into initialisers named
    # view, view_1, ...; the node that uses one names its module (metadata ``pkg.torch.onnx.name_scopes``):
    # a Mul takes the weight, an Add the bias. The whole net is checked against ONNX Runtime below.
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if not scopes or node.op_type not in ("Mul", "Add"):
            continue
        for name in node.input:
            if name in inits and not name.startswith("net."):
                path = [s.strip(" '\"") for s in scopes.strip("[]").split(",")][-2]
                key = f"{path.removeprefix('net.')}.{'weight' if node.op_type == 'Mul' else 'bias'}"
                if key in missing and inits[name].size == state[key].numel():
                    loaded[key] = torch.from_numpy(inits[name].reshape(tuple(state[key].shape)).copy())
    missing = [k for k in missing if k not in loaded]
    if missing:
        raise ValueError(f"{onnx_path}: {len(missing)} parameters not found in the ONNX (first: {missing[0]})")
    net.load_state_dict(loaded, strict=False)
    _verify(net, onnx_path, probe)


def _load_folded(net: torch.nn.Module, inits: dict, onnx_path, probe: list[int]) -> None:
    """Weights of an ONNX whose batch norms are folded: each convolution takes its folded weight, and the
    batch norm that reads its output (found by running the net once) its folded bias, as a norm that adds it
    and scales by one (``running_var`` 1 - eps); the modules and their state's keys stay as they are. In eval
    mode the net computes what the ONNX computes; a warm start trains on from there."""
    convs = {m: n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)}
    norms = {m: n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d)}
    made: dict[int, tuple[str, torch.Tensor]] = {}  # the outputs are kept alive: their ids stay theirs
    after: dict[str, str | None] = {}  # batch norm -> the convolution whose output it reads
    hooks = [m.register_forward_hook(lambda m, i, o: made.__setitem__(id(o), (convs[m], o))) for m in convs]
    hooks += [
        m.register_forward_pre_hook(lambda m, i: after.__setitem__(norms[m], made.get(id(i[0]), (None,))[0]))
        for m in norms
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(probe))
    finally:
        for h in hooks:
            h.remove()
    folded = {c: b for b, c in after.items() if c is not None}  # convolution -> its batch norm
    with torch.no_grad():
        for conv, name in convs.items():
            w, b = inits.get(f"net.{name}.weight"), inits.get(f"net.{name}.weight_bias")
            if w is None or w.shape != tuple(conv.weight.shape):
                raise ValueError(f"{onnx_path}: the weights of {name} are not in the ONNX")
            conv.weight.copy_(torch.from_numpy(w.copy()))
            if conv.bias is not None:
                b = inits.get(f"net.{name}.bias", b)
                if b is None:
                    raise ValueError(f"{onnx_path}: the bias of {name} is not in the ONNX")
                conv.bias.copy_(torch.from_numpy(b.copy()))
            elif name in folded and b is not None:
                bn = net.get_submodule(folded[name])
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(b.copy()))
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            elif b is not None:
                raise ValueError(f"{onnx_path}: {name} has a folded bias but no batch norm after it")
    loose = [n for m, n in norms.items() if after.get(n) not in folded or folded[after[n]] != n]
    if loose:
        raise ValueError(f"{onnx_path}: {len(loose)} batch norms not folded into a convolution (first: {loose[0]})")


def _probe_shape(net: torch.nn.Module, model) -> list[int]:
    """An input the ONNX ``model`` (its ``ModelProto``) takes: its fixed batch, channels and size where its
    image input states them, else 2 x 64 x 64 (2D) or 16 x 32 x 32 (3D) of one channel."""
    shape = [2, 1, 64, 64] if not _is3d(net) else [1, 1, 16, 32, 32]
    inits = {i.name for i in model.graph.initializer}
    image = next(i for i in model.graph.input if i.name not in inits)
    stated = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    if len(stated) == len(shape):
        shape = [v if d is None else d for d, v in zip(stated, shape, strict=True)]
    return shape


def _is3d(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv3d) for m in net.modules())


def _verify(net: torch.nn.Module, onnx_path, probe: list[int]) -> None:
    """The loaded net must compute what the ONNX computes (ONNX Runtime, CPU), on an input of shape ``probe``
    (``_probe_shape``'s)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(probe).astype(np.float32)
    ref = s.run(None, {s.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = torch.sigmoid(net.eval()(torch.from_numpy(x))).numpy()  # the ONNX ends in the sigmoid
    err = float(np.abs(got - ref).max())
    if err > 1e-4:
        raise ValueError(f"{onnx_path}: the weights read back differ from the ONNX by {err:.1e}")
