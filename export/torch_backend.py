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
        if model.card.arch.bone_window:  # exported in eval mode: its batch norms are folded into the convolutions
            load_folded_onnx_weights(net, model.onnx("fp32"))
        else:
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
    """Copy an exported FP32 ONNX's initialisers back into ``net`` (names as the exporter wrote them)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
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
    _verify(net, onnx_path)


def load_folded_onnx_weights(net: torch.nn.Module, onnx_path: str | Path) -> None:
    """Copy an ONNX exported in eval mode with its batch norms folded (the one-bone segmenter's:
    ``NAME.weight`` and ``NAME.weight_bias`` per convolution) into ``net``: every batch norm that follows a
    convolution in a ``Sequential`` becomes the identity, and the convolution takes the folded weight and
    bias. The whole net is checked against ONNX Runtime."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    norms = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    convs = (torch.nn.Conv2d, torch.nn.Conv3d)
    for seq in [m for m in net.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(1, len(seq)):
            if isinstance(seq[i], norms) and isinstance(seq[i - 1], convs):
                seq[i] = torch.nn.Identity()
    for name, conv in net.named_modules():
        if not isinstance(conv, convs):
            continue
        w = inits.get(f"net.{name}.weight")
        b = next((inits[k] for k in (f"net.{name}.weight_bias", f"net.{name}.bias") if k in inits), None)
        if w is None or b is None or w.shape != tuple(conv.weight.shape) or b.shape != (conv.out_channels,):
            raise ValueError(f"{onnx_path}: the folded weights of {name} are not in the ONNX")
        conv.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
        conv.bias = torch.nn.Parameter(torch.from_numpy(b.copy()))
    if any(isinstance(m, norms) for m in net.modules()):
        raise ValueError(f"{onnx_path}: a batch norm that follows no convolution cannot be unfolded")
    _verify(net, onnx_path)


def _is3d(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv3d) for m in net.modules())


def _verify(net: torch.nn.Module, onnx_path) -> None:
    """The loaded net must compute what the ONNX computes (ONNX Runtime, CPU), on an input of the ONNX's
    fixed channels and size where it states them."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [2, 1, 64, 64] if not _is3d(net) else [1, 1, 16, 32, 32]
    stated = s.get_inputs()[0].shape
    if len(stated) == len(shape):
        shape = [shape[0]] + [d if isinstance(d, int) else v for d, v in zip(stated[1:], shape[1:], strict=True)]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = s.run(None, {s.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = torch.sigmoid(net.eval()(torch.from_numpy(x))).numpy()  # the ONNX ends in the sigmoid
    err = float(np.abs(got - ref).max())
    if err > 1e-4:
        raise ValueError(f"{onnx_path}: the weights read back differ from the ONNX by {err:.1e}")
