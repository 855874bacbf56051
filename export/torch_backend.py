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


class TorchBackend:
    def __init__(self, module: torch.nn.Module, device: str = "cpu", precision: str = "fp32"):
        self.module = module
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.precision = precision
        self.name = f"torch-{self.device.type}"
        self.reason = ""

    @classmethod
    def from_model(cls, model, device: str = "auto", precision: str | None = None) -> TorchBackend:
        """From a runtime ``Model`` (card + folder): the weights of its FP32 ONNX."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        net = nets.build(model.architecture, model.card.get("config"))
        load_onnx_weights(net, model.onnx("fp32"))
        return cls(net, device, precision or ("fp16" if device == "cuda" else "fp32"))

    def activate(self) -> None:
        self.module.to(self.device).eval()

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        use_amp = self.device.type == "cuda" and self.precision == "fp16"
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
            y = torch.sigmoid(self.module(x).float())
        return y.cpu().numpy()

    def deactivate(self) -> None:
        self.module.to("cpu")
        if self.device.type == "cuda":
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
    if missing:
        raise ValueError(f"{onnx_path}: {len(missing)} parameters not found in the ONNX (first: {missing[0]})")
    net.load_state_dict(loaded, strict=False)
