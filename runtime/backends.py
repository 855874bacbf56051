"""Inference backends behind one interface: ``activate()``, ``infer(batch)``, ``deactivate()``.

* ``OnnxRuntimeBackend``: ONNX Runtime on the CPU, or with the CUDA / TensorRT execution providers
  when ``onnxruntime-gpu`` is installed.
* ``TensorRTBackend``: classic TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx``) share one
  implementation: device buffers from cuda-python sized once for the profile maximum,
  ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``, batches in chunks.

``create(name, model, device)`` builds one; ``auto`` takes TensorRT, then TensorRT-RTX, then ONNX Runtime
CUDA, then the CPU, by what is installed and what the GPU supports, and records why in ``reason``.
Every heavy module is imported inside the code that needs it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.model import Model

BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


class BackendError(VbmdInputError):
    """The asked-for backend cannot run here (library or GPU missing, engine for another GPU)."""


class Backend(Protocol):
    name: str  # e.g. "onnxruntime-cpu", "tensorrt-rtx"
    precision: str  # "fp32" or "fp16"
    reason: str  # why auto took it (empty when asked for by name)

    def activate(self) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def deactivate(self) -> None: ...


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class OnnxRuntimeBackend:
    """ONNX Runtime session over the model's FP32 (CPU) or FP16 (CUDA/TensorRT EP) ONNX."""

    def __init__(self, model: Model, device: str = "cpu", precision: str | None = None, threads: int | None = None):
        self.model = model
        self.device = device
        self.precision = precision or ("fp16" if device == "cuda" and "fp16" in model.card["files"] else "fp32")
        self.threads = threads
        self.reason = ""
        self.session = None
        self.name = f"onnxruntime-{device}"

    def _providers(self) -> list:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise BackendError(None, "ONNX Runtime here has no CUDA provider",
                               "install the gpu extra (pip install 'vbmd-rt[gpu]') or use --device cpu")
        return [*wanted, "CPUExecutionProvider"]

    def activate(self) -> None:
        if self.session is not None:
            return
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

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.session is None:
            self.activate()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def deactivate(self) -> None:
        self.session = None


class TensorRTBackend:
    """A serialised TensorRT or TensorRT-RTX plan, run with cuda-python device buffers.

    ``flavour`` is ``"trt"`` (module ``tensorrt``) or ``"rtx"`` (module ``tensorrt_rtx``); the Python APIs
    are the same for what is used here. Buffers are allocated once for the profile's maximum shape.
    """

    def __init__(self, plan: str | Path, flavour: str = "trt", runtime_cache: str | Path | None = None):
        self.plan = Path(plan)
        self.flavour = flavour
        self.runtime_cache = Path(runtime_cache) if runtime_cache else None
        self.name = "tensorrt" if flavour == "trt" else "tensorrt-rtx"
        self.precision = "fp16"
        self.reason = ""
        self.context = None

    def _trt(self):
        import importlib

        return importlib.import_module("tensorrt" if self.flavour == "trt" else "tensorrt_rtx")

    @staticmethod
    def _check(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def activate(self) -> None:
        if self.context is not None:
            return
        from cuda.bindings import runtime as cudart

        trt = self._trt()
        self._cudart = cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            raise BackendError(self.plan, "TensorRT could not load this engine (built for another TensorRT or GPU)",
                               "rebuild it with `vbmd-rt export --engine " + self.flavour + "`")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.flavour == "rtx" and self.runtime_cache is not None and hasattr(self.context, "set_runtime_config"):
            self._load_runtime_cache(trt)
        self.stream = self._check(cudart.cudaStreamCreate())
        self.buffers = {}
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
        if self.runtime_cache.is_file():
            cache.deserialize(self.runtime_cache.read_bytes())
        config.set_runtime_cache(cache)
        self._cache = cache

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.context is None:
            self.activate()
        cudart = self._cudart
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        out = np.empty(x.shape, dtype=self.output_dtype)
        step = self.max_shape[0]
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for a in range(0, x.shape[0], step):
            chunk = np.ascontiguousarray(x[a:a + step])
            self.context.set_input_shape(self.input_name, chunk.shape)
            self._check(cudart.cudaMemcpyAsync(self.d_in, chunk.ctypes.data, chunk.nbytes, kind_h2d, self.stream))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execution failed")
            host = out[a:a + step]
            self._check(cudart.cudaMemcpyAsync(host.ctypes.data, self.d_out, host.nbytes, kind_d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32, copy=False)

    def deactivate(self) -> None:
        if self.context is None:
            return
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


def cuda_device_count() -> int:
    """Number of CUDA devices cuda-python sees (0 when it or the driver is missing)."""
    if not _installed("cuda"):
        return 0
    try:
        from cuda.bindings import runtime as cudart

        err, n = cudart.cudaGetDeviceCount()
        return int(n) if int(err) == 0 else 0
    except Exception:  # noqa: BLE001 - any failure here means "no usable GPU"
        return 0


def tensorrt_backend(model: Model, flavour: str, precision: str = "fp16", log=None) -> TensorRTBackend:
    """The TensorRT (``trt``) or TensorRT-RTX (``rtx``) backend with the plan whose key fits this machine.

    No fitting plan: classic TensorRT builds one for this GPU (and caches it); TensorRT-RTX refuses with
    the command that builds one. A plan for another TensorRT or GPU is never handed to TensorRT.
    """
    from vbmd_rt.runtime import engines

    cc = engines.gpu_compute_capability()
    if cc is None:
        raise BackendError(None, f"{engines.BACKEND_NAMES[flavour]} needs a CUDA GPU and cuda-python, and none was found",
                           "use --backend onnxruntime")
    want = engines.key_for(model, flavour, cc, precision)
    plan, why = engines.select(model, want)
    if plan is None:
        if flavour != "trt":
            raise BackendError(model.folder, why, f"build one with `{engines.rebuild_command(model, flavour, cc)}`")
        if log:
            log(f"{why}: building a TensorRT engine for this GPU (sm_{cc.replace('.', '')}); it is cached")
        plan, _ = engines.build(model, "trt", precision=precision, log=log or (lambda s: None))
    cache = plan.with_name(plan.name + ".runtime-cache")
    if not os.access(plan.parent, os.W_OK):
        cache = engines.cache_dir() / cache.name
    be = TensorRTBackend(plan, flavour, runtime_cache=cache)
    be.precision = precision
    return be


def _has_plan(model: Model, flavour: str) -> bool:
    from vbmd_rt.runtime import engines

    cc = engines.gpu_compute_capability()
    return cc is not None and engines.select(model, engines.key_for(model, flavour, cc))[0] is not None


class NoNetwork:
    """The backend of the classical model: it runs no network (the segmentation is in ``classical``)."""

    name = "classical"
    precision = "n/a"
    reason = "the classical model has no network"

    def activate(self) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the classical model runs no network")

    def deactivate(self) -> None:
        pass


def create(name: str, model: Model, device: str = "auto", threads: int | None = None, log=None) -> Backend:
    """Build the backend ``name`` (one of ``BACKENDS``) for ``model`` on ``device``."""
    if model.classical:
        if name not in ("auto",):
            raise BackendError(None, f"the classical model runs no network, so --backend {name} does not apply",
                               "leave --backend at auto")
        return NoNetwork()
    if name not in BACKENDS:
        raise BackendError(None, f"unknown backend {name!r}", f"choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(None, f"unknown device {device!r}", f"choose one of {', '.join(DEVICES)}")
    gpus = cuda_device_count() if device != "cpu" else 0
    if name in ("tensorrt", "tensorrt-rtx"):
        flavour, module = ("trt", "tensorrt") if name == "tensorrt" else ("rtx", "tensorrt_rtx")
        if device == "cpu":
            raise BackendError(None, f"{name} needs a GPU", "use --backend onnxruntime for the CPU")
        if not _installed(module):
            extra = "trt" if flavour == "trt" else "rtx"
            raise BackendError(None, f"{module} is not installed", f"pip install 'vbmd-rt[{extra}]'")
        if not gpus:
            raise BackendError(None, f"{name} needs a CUDA GPU and cuda-python, and none was found",
                               "use --backend onnxruntime")
        return tensorrt_backend(model, flavour, log=log)
    if name == "onnxruntime":
        if device == "auto":
            device = "cuda" if gpus and _ort_has_cuda() else "cpu"
        return OnnxRuntimeBackend(model, device, threads=threads)
    # auto: TensorRT, TensorRT-RTX, ONNX Runtime CUDA, CPU.
    skipped = []
    if device != "cpu":
        for candidate, module, flavour in (("tensorrt", "tensorrt", "trt"), ("tensorrt-rtx", "tensorrt_rtx", "rtx")):
            if not _installed(module):
                skipped.append(f"{candidate}: not installed")
            elif not gpus:
                skipped.append(f"{candidate}: no CUDA GPU")
            elif flavour == "rtx" and not _has_plan(model, flavour):
                skipped.append(f"{candidate}: no engine for this model and GPU")
            else:
                b = create(candidate, model, device, log=log)
                b.reason = "; ".join(skipped + [f"{candidate}: engine and GPU found"])
                return b
        if gpus and _ort_has_cuda():
            b = OnnxRuntimeBackend(model, "cuda", threads=threads)
            b.reason = "; ".join(skipped + ["onnxruntime-cuda: CUDA provider found"])
            return b
        skipped.append("onnxruntime-cuda: " + ("no CUDA provider" if gpus else "no CUDA GPU"))
    b = OnnxRuntimeBackend(model, "cpu", threads=threads)
    b.reason = "; ".join(skipped + ["onnxruntime-cpu"]) if skipped else "device cpu"
    return b


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False
