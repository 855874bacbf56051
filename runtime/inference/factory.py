"""Choosing and building a backend: ``create(name, model, device)``.

``auto`` takes TensorRT, then TensorRT-RTX, then ONNX Runtime CUDA, then the CPU, by what is installed and
what the GPU supports, and records why in ``reason``. ``--device cuda`` never falls back to the CPU: with
no usable GPU it is a :class:`BackendError` (exit 2). Every heavy module is imported inside the code that
needs it.
"""

from __future__ import annotations

import os

from vbmd_rt.runtime.inference.base import (
    ORT_GPU_SWAP,
    Backend,
    BackendError,
    NoNetwork,
    input_spec_for,
    installed,
    ort_conflict,
)
from vbmd_rt.runtime.inference.ort_backend import OnnxRuntimeBackend
from vbmd_rt.runtime.inference.trt_backend import TensorRTBackend
from vbmd_rt.runtime.model import Model
from vbmd_rt.runtime.parallel import set_threads

BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


def cuda_device_count() -> int:
    """Number of CUDA devices cuda-python sees (0 when it or the driver is missing)."""
    if not installed("cuda"):
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
    from vbmd_rt.runtime.inference import engines

    cc = engines.gpu_compute_capability()
    if cc is None:
        raise BackendError(
            None,
            f"{engines.BACKEND_NAMES[flavour]} needs a CUDA GPU and cuda-python, and none was found",
            "use --backend onnxruntime",
        )
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
    return TensorRTBackend(
        plan,
        flavour,
        runtime_cache=cache,
        precision=precision,
        input_spec=input_spec_for(model),
        onnx_sha256=want.onnx_sha256,
    )


def _has_plan(model: Model, flavour: str) -> bool:
    from vbmd_rt.runtime.inference import engines

    cc = engines.gpu_compute_capability()
    return cc is not None and engines.select(model, engines.key_for(model, flavour, cc))[0] is not None


def second_reader(threads: int | None = None) -> tuple | None:
    """The bundled one-bone network on ONNX Runtime's CPU provider, for QC's second reading of the classical
    model's bone (``NoNetwork.reader``); None where ONNX Runtime or the bundled model is missing (the check
    is then left out, the rest of QC stands)."""
    from vbmd_rt.runtime.model import ModelError, load_model

    if not installed("onnxruntime"):
        return None
    try:
        model = load_model(None)
        if not model.card.arch.bone_window:
            return None
        return model, OnnxRuntimeBackend(model, "cpu", threads=threads)
    except (ModelError, BackendError):
        return None


def create(name: str, model: Model, device: str = "auto", threads: int | None = None, log=None) -> Backend:
    """Build the backend ``name`` (one of ``BACKENDS``) for ``model`` on ``device``. ``threads`` bounds
    the CPU threads of ONNX Runtime and of vbmd-rt's own stages (``parallel.set_threads``) in this process."""
    if threads:
        set_threads(threads)
    if model.classical:
        if name not in ("auto",):
            raise BackendError(
                None,
                f"the classical model runs no network, so --backend {name} does not apply",
                "leave --backend at auto",
            )
        return NoNetwork(second_reader(threads))
    if name not in BACKENDS:
        raise BackendError(None, f"unknown backend {name!r}", f"choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(None, f"unknown device {device!r}", f"choose one of {', '.join(DEVICES)}")
    gpus = cuda_device_count() if device != "cpu" else 0
    if name in ("tensorrt", "tensorrt-rtx"):
        flavour, module = ("trt", "tensorrt") if name == "tensorrt" else ("rtx", "tensorrt_rtx")
        if device == "cpu":
            raise BackendError(None, f"{name} needs a GPU", "use --backend onnxruntime for the CPU")
        if not installed(module):
            extra = "trt" if flavour == "trt" else "rtx"
            raise BackendError(None, f"{module} is not installed", f"pip install 'vbmd-rt[{extra}]'")
        if not gpus:
            raise BackendError(
                None, f"{name} needs a CUDA GPU and cuda-python, and none was found", "use --backend onnxruntime"
            )
        return tensorrt_backend(model, flavour, log=log)
    if device == "cuda" and not gpus:
        raise BackendError(
            None,
            "--device cuda was asked for, but no CUDA GPU can be used here (no driver, no GPU or no cuda-python)",
            "install the gpu extra on a machine with an NVIDIA GPU, or use --device cpu",
        )
    if name == "onnxruntime":
        if device == "auto":
            device = "cuda" if gpus and _ort_has_cuda() else "cpu"
        return OnnxRuntimeBackend(model, device, threads=threads)
    # auto: TensorRT, TensorRT-RTX, ONNX Runtime CUDA, CPU.
    skipped = []
    if device != "cpu":
        for candidate, module, flavour in (("tensorrt", "tensorrt", "trt"), ("tensorrt-rtx", "tensorrt_rtx", "rtx")):
            if not installed(module):
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
            return OnnxRuntimeBackend(
                model, "cuda", threads=threads, reason="; ".join(skipped + ["onnxruntime-cuda: CUDA provider found"])
            )
        conflict = ort_conflict() if gpus else None
        skipped.append(
            "onnxruntime-cuda: "
            + ("no CUDA provider" + (f" ({conflict}; {ORT_GPU_SWAP})" if conflict else "") if gpus else "no CUDA GPU")
        )
        if device == "cuda":
            raise BackendError(
                None,
                "--device cuda was asked for, but no backend here can use the GPU (" + "; ".join(skipped) + ")",
                "pip install 'vbmd-rt[trt]' (TensorRT), or replace onnxruntime by onnxruntime-gpu "
                f"({ORT_GPU_SWAP}), or use --device cpu",
            )
    return OnnxRuntimeBackend(
        model, "cpu", threads=threads, reason="; ".join(skipped + ["onnxruntime-cpu"]) if skipped else "device cpu"
    )


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False
