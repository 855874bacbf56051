"""Classic TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx``) share one backend: device buffers
from cuda-python sized once for the profile maximum, ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``, batches in chunks. Both modules are imported only on activation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vbmd_rt.runtime.inference.base import Backend, BackendError, InputSpec


class TensorRTBackend(Backend):
    """A serialised TensorRT or TensorRT-RTX plan, run with cuda-python device buffers.

    ``flavour`` is ``"trt"`` (module ``tensorrt``) or ``"rtx"`` (module ``tensorrt_rtx``); the Python APIs
    are the same for what is used here. Buffers are allocated once for the profile's maximum shape.
    """

    def __init__(
        self,
        plan: str | Path,
        flavour: str = "trt",
        runtime_cache: str | Path | None = None,
        precision: str = "fp16",
        input_spec: InputSpec | None = None,
        reason: str = "",
        onnx_sha256: str | None = None,
    ):
        super().__init__(input_spec, precision, reason)
        self.onnx_sha256 = onnx_sha256  # the ONNX the plan was built from (its key)
        self.plan = Path(plan)
        self.flavour = flavour
        self.runtime_cache = Path(runtime_cache) if runtime_cache else None
        self.name = "tensorrt" if flavour == "trt" else "tensorrt-rtx"
        self.context: Any = None
        self.max_shape: Any = None

    def _trt(self):
        import importlib

        return importlib.import_module("tensorrt" if self.flavour == "trt" else "tensorrt_rtx")

    @staticmethod
    def _check(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def _activate(self) -> None:
        from cuda.bindings import runtime as cudart

        trt = self._trt()
        self._cudart = cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            raise BackendError(
                self.plan,
                "TensorRT could not load this engine (built for another TensorRT or GPU)",
                "rebuild it with `vbmd-rt export --engine " + self.flavour + "`",
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.flavour == "rtx" and self.runtime_cache is not None and hasattr(self.context, "set_runtime_config"):
            self._load_runtime_cache(trt)
        self.stream = self._check(cudart.cudaStreamCreate())
        self.buffers: dict = {}
        self.io = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = list(engine.get_tensor_profile_shape(name, 0)[2]) if is_input else None
            self.io.append((name, is_input, trt.nptype(engine.get_tensor_dtype(name)), shape))
        for name, is_input, dtype, shape in self.io:
            if is_input:
                self.input_name, self.input_dtype, self.max_shape = name, dtype, shape
        for name, is_input, dtype, _ in self.io:
            if not is_input:
                self.output_name, self.output_dtype = name, dtype
        n_in = int(np.prod(self.max_shape)) * np.dtype(self.input_dtype).itemsize
        n_out = int(np.prod(self.max_shape)) * np.dtype(self.output_dtype).itemsize
        self.d_in = self._check(cudart.cudaMalloc(n_in))
        self.d_out = self._check(cudart.cudaMalloc(n_out))
        self.context.set_tensor_address(self.input_name, int(self.d_in))
        self.context.set_tensor_address(self.output_name, int(self.d_out))

    def _load_runtime_cache(self, trt) -> None:
        config = self.context.get_runtime_config() if hasattr(self.context, "get_runtime_config") else None
        if config is None:
            return
        cache = config.create_runtime_cache()
        if self.runtime_cache is not None and self.runtime_cache.is_file():
            cache.deserialize(self.runtime_cache.read_bytes())
        config.set_runtime_cache(cache)
        self._cache = cache

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        out = np.empty(x.shape, dtype=self.output_dtype)
        step = self.max_shape[0]
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for a in range(0, x.shape[0], step):
            chunk = np.ascontiguousarray(x[a : a + step])
            self.context.set_input_shape(self.input_name, chunk.shape)
            self._check(cudart.cudaMemcpyAsync(self.d_in, chunk.ctypes.data, chunk.nbytes, kind_h2d, self.stream))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execution failed")
            host = out[a : a + step]
            self._check(cudart.cudaMemcpyAsync(host.ctypes.data, self.d_out, host.nbytes, kind_d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32, copy=False)

    def _deactivate(self) -> None:
        cudart = self._cudart
        if getattr(self, "_cache", None) is not None and self.runtime_cache is not None:
            data = self._cache.serialize()
            tmp = self.runtime_cache.with_name(f".{self.runtime_cache.name}.tmp-{os.getpid()}")
            tmp.write_bytes(bytes(data))
            os.replace(tmp, self.runtime_cache)
        cudart.cudaFree(self.d_in)
        cudart.cudaFree(self.d_out)
        cudart.cudaStreamDestroy(self.stream)
        self.context = None
        self.engine = None
