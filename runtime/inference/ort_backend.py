"""ONNX Runtime on the CPU, or with the CUDA / TensorRT execution providers of ``onnxruntime-gpu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from vbmd_rt.runtime.inference.base import (
    ORT_GPU_SWAP,
    Backend,
    BackendError,
    input_spec_for,
    ort_conflict,
    require_onnxruntime,
)
from vbmd_rt.runtime.model import Model

CPU_BATCH = 8  # slices per call on the CPU: 120 MB of ONNX Runtime's arena on a full scan (350 MB at 32), as fast


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime session over the model's FP32 (CPU) or FP16 (CUDA/TensorRT EP) ONNX."""

    def __init__(
        self,
        model: Model,
        device: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
        reason: str = "",
    ):
        require_onnxruntime()
        precision = precision or ("fp16" if device == "cuda" and "fp16" in model.card.files else "fp32")
        super().__init__(input_spec_for(model), precision, reason)
        self.model = model
        self.device = device
        self.threads = threads
        self.session: Any = None
        self.onnx_sha256 = model.sha256(precision)
        self.name = f"onnxruntime-{device}"
        if device == "cpu":
            self.max_batch = CPU_BATCH

    def _providers(self) -> list:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            conflict = ort_conflict()
            raise BackendError(
                None,
                "ONNX Runtime here has no CUDA provider" + (f": {conflict}" if conflict else ""),
                f"replace onnxruntime by onnxruntime-gpu: {ORT_GPU_SWAP}; or use --device cpu",
            )
        return [*wanted, "CPUExecutionProvider"]

    def _activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        path = self.model.onnx(self.precision)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self._providers())
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _deactivate(self) -> None:
        self.session = None
