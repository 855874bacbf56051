"""Where TensorRT / TensorRT-RTX plans live and whether one fits this machine (no TensorRT import here).

A plan is tied to its TensorRT flavour and version, the GPU's compute capability, the exact ONNX file,
the precision and the optimisation profile. Each plan ``{flavour}-sm{cc}-{precision}-{digest}.plan`` is
stored with its key in a JSON beside it, in ``MODEL/engines/`` or in the engine cache
(``$VBMD_RT_CACHE/engines``, default ``~/.cache/vbmd-rt/engines``; a container mounts a volume there).
Before a plan is loaded its key is compared with the machine's, so a mismatch becomes a clear message
(and, for classic TensorRT, a rebuild), never a crash inside TensorRT.

Builds (``vbmd-rt export --engine``, and classic TensorRT's build at first start):

* ``rtx``: TensorRT for RTX, ahead of time for a chosen compute capability (default SM75: the RTX
  2080) on any machine, no GPU needed. Strongly typed: the precision comes from the ONNX (the FP16
  file keeps the norms and the sigmoid in FP32). The JIT part is finished on the GPU at first run and
  kept in a runtime cache beside the plan.
* ``trt``: classic TensorRT on this machine's GPU. A strongly typed network from the FP16 ONNX where
  the version offers it (10.x and 11.x); otherwise the FP32 ONNX with the FP16 builder flag. A timing
  cache is kept on disk, so a rebuild (new TensorRT, new GPU) is fast.

Only ``tensorrt`` / ``tensorrt_rtx`` / ``cuda`` are imported, lazily, where a build or a check needs them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.inference.base import input_spec_for
from vbmd_rt.runtime.io.atomic import atomic_write_bytes
from vbmd_rt.runtime.model import Model, sha256_of


class EngineError(VbmdInputError):
    """An engine cannot be built or used here (library or GPU missing, plan for another machine)."""


MODULES = {"rtx": "tensorrt_rtx", "trt": "tensorrt"}
BACKEND_NAMES = {"rtx": "tensorrt-rtx", "trt": "tensorrt"}


@dataclass(frozen=True)
class PlanKey:
    flavour: str  # "rtx" or "trt"
    trt_version: str
    compute_capability: str  # "7.5"
    onnx_sha256: str
    precision: str  # "fp16", "int8"
    profile: tuple  # ((input name, min, opt, max), ...)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = [[n, list(a), list(b), list(c)] for n, a, b, c in self.profile]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PlanKey:
        prof = tuple((n, tuple(a), tuple(b), tuple(c)) for n, a, b, c in d["profile"])
        return cls(
            d["flavour"], str(d["trt_version"]), str(d["compute_capability"]), d["onnx_sha256"], d["precision"], prof
        )

    def filename(self) -> str:
        return f"{self.flavour}-sm{self.compute_capability.replace('.', '')}-{self.precision}-{self.digest()}.plan"

    def differences(self, other: PlanKey) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [f"{k} {a[k]} (plan) vs {b[k]} (here)" for k in a if a[k] != b[k]]


def default_profile(model: Model, batch: tuple[int, int, int] | None = None) -> tuple:
    """The optimisation profile of a model's input, ``((name, min, opt, max),)``: the input range the
    runtime feeds (``base.input_spec_for``)."""
    spec = input_spec_for(model, batch)
    return ((spec.name, spec.min_shape, spec.opt_shape, spec.max_shape),)


def cache_dir() -> Path:
    root = os.environ.get("VBMD_RT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vbmd-rt")
    return Path(root) / "engines"


def search_dirs(model: Model) -> list[Path]:
    return [model.folder / "engines", cache_dir()]


def is_bundled(model: Model) -> bool:
    """The model shipped inside the package (its folder belongs to pip: nothing is written there)."""
    from vbmd_rt.runtime.model import default_model_dir

    try:
        return model.folder.resolve() == default_model_dir()
    except OSError:
        return False


def writable_dir(model: Model) -> Path:
    """Where a new plan goes: the engine cache for the bundled model (a plan inside site-packages would
    outlive ``pip uninstall``); beside a model folder the user named when it is writable, else the cache."""
    if is_bundled(model):
        return cache_dir()
    own = model.folder / "engines"
    for d in (own, cache_dir()):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    return cache_dir()


def plans(model: Model, flavour: str | None = None) -> list[tuple[Path, PlanKey]]:
    """Every stored plan for this model's ONNX files (any machine), with its key."""
    shas = {f.sha256 for f in model.card.files.values()}
    int8 = int8_onnx_path(model)
    if int8 is not None:
        shas.add(sha256_of(int8))
    found = []
    for d in search_dirs(model):
        if not d.is_dir():
            continue
        for meta in sorted(d.glob("*.plan.json")):
            try:
                key = PlanKey.from_dict(json.loads(meta.read_text())["key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            plan = meta.with_suffix("")
            if plan.is_file() and key.onnx_sha256 in shas and (flavour is None or key.flavour == flavour):
                found.append((plan, key))
    return found


def select(model: Model, want: PlanKey) -> tuple[Path | None, str]:
    """The stored plan whose key equals ``want``; else ``None`` and why the closest ones do not fit."""
    near = []
    for plan, key in plans(model, want.flavour):
        if key == want:
            return plan, ""
        near.append(f"{plan.name}: " + "; ".join(key.differences(want)))
    if not near:
        return None, f"no {BACKEND_NAMES[want.flavour]} engine for this model"
    return None, "no engine matches this machine (" + " | ".join(near[:3]) + ")"


def rebuild_command(model: Model, flavour: str, cc: str | None = None) -> str:
    where = "" if model.folder == _bundled() else f" --model {model.folder}"
    sm = f" --sm {cc.replace('.', '')}" if cc and flavour == "rtx" else ""
    return f"vbmd-rt export --engine {flavour}{sm}{where}"


def _bundled() -> Path:
    from vbmd_rt.runtime.model import default_model_dir

    return default_model_dir()


# --------------------------------------------------------------------------- builds

SM_CHOICES = ("75", "80", "86", "89", "120", "121")


def trt_module(flavour: str):
    module = MODULES[flavour]
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = "rtx" if flavour == "rtx" else "trt"
        raise EngineError(None, f"{module} is not installed", f"pip install 'vbmd-rt[{extra}]'") from None


def gpu_compute_capability() -> str | None:
    """Compute capability of CUDA device 0 as "M.m", or None without a usable GPU."""
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        return f"{props.major}.{props.minor}" if int(err) == 0 else None
    except Exception:  # noqa: BLE001 - no cuda-python, no driver, no device
        return None


def int8_onnx_name(model: Model) -> str:
    """File name of the quantised ONNX of ``model`` (in ``writable_dir``; named after the FP32 ONNX)."""
    return f"model.int8.{(model.sha256('fp32') or '')[:12]}.onnx"


def int8_onnx_path(model: Model) -> Path | None:
    """The quantised ONNX of ``model`` that ``vbmd-rt export --precision int8`` wrote (``None`` if none)."""
    for d in search_dirs(model):
        p = d / int8_onnx_name(model)
        if p.is_file():
            return p
    return None


def onnx_sha256(model: Model, precision: str) -> str:
    """The sha256 of the ONNX a ``precision`` plan is built from: the card's FP16 file for fp16, the current
    quantised file for int8 (so a re-calibration gives a new key, and the old INT8 plan is never reused)."""
    if precision == "int8":
        path = int8_onnx_path(model)
        if path is None:
            raise EngineError(
                model.folder,
                "no INT8 ONNX for this model",
                "run `vbmd-rt calib` and `vbmd-rt export --engine ... --precision int8` first",
            )
        return sha256_of(path)
    sha = model.sha256(precision if precision in model.card.files else "fp16")
    if sha is None:
        raise EngineError(model.folder, f"the model card lists no {precision} ONNX", "re-export the model")
    return sha


def key_for(
    model: Model,
    flavour: str,
    cc: str,
    precision: str = "fp16",
    profile=None,
    version=None,
    onnx_sha: str | None = None,
) -> PlanKey:
    sha = onnx_sha or onnx_sha256(model, precision)
    version = version or trt_module(flavour).__version__
    return PlanKey(flavour, str(version), cc, sha, precision, tuple(profile or default_profile(model)))


class _Network:
    """A parsed network and its builder (kept alive together), with its I/O for inspection."""

    def __init__(self, trt, onnx_path: Path, strongly_typed: bool):
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        flags = 0
        if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self.network = self.builder.create_network(flags)
        self.parser = trt.OnnxParser(self.network, self.logger)
        if not self.parser.parse_from_file(str(onnx_path)):
            errs = "; ".join(str(self.parser.get_error(i)) for i in range(self.parser.num_errors))
            raise EngineError(onnx_path, f"TensorRT cannot parse this ONNX ({errs})", "re-export the model")

    def io(self) -> dict:
        net = self.network
        return {
            "inputs": [(t.name, tuple(t.shape), str(t.dtype)) for t in map(net.get_input, range(net.num_inputs))],
            "outputs": [(t.name, tuple(t.shape), str(t.dtype)) for t in map(net.get_output, range(net.num_outputs))],
        }


def build(
    model: Model,
    flavour: str = "rtx",
    sm: str | None = "75",
    precision: str = "fp16",
    profile=None,
    out_dir: Path | None = None,
    onnx_path: Path | None = None,
    log=print,
) -> tuple[Path, dict]:
    """Build (or find) the plan for ``model``; returns its path and the build record (key, I/O, seconds)."""
    trt = trt_module(flavour)
    if flavour == "rtx":
        if str(sm) not in SM_CHOICES:
            raise EngineError(None, f"--sm {sm} is not a TensorRT-RTX target", f"choose one of {', '.join(SM_CHOICES)}")
        cc = f"{str(sm)[:-1]}.{str(sm)[-1]}"
    else:
        gpu_cc = gpu_compute_capability()
        if gpu_cc is None:
            raise EngineError(
                None,
                "classic TensorRT builds for the GPU it runs on, and none was found",
                "build on the workstation, or use --engine rtx --sm 75 (no GPU needed)",
            )
        cc = gpu_cc
    key = key_for(
        model,
        flavour,
        cc,
        precision,
        profile,
        trt.__version__,
        onnx_sha=sha256_of(onnx_path) if onnx_path is not None else None,
    )
    found, _ = select(model, key)
    if found is not None:
        log(f"{found}: an engine with this key exists")
        return found, json.loads(found.with_name(found.name + ".json").read_text())
    onnx = onnx_path or model.onnx("fp16" if precision == "fp16" else precision)
    typed = flavour == "rtx" or hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if not typed:  # old classic TensorRT: FP32 graph, FP16 by builder flag
        onnx = model.onnx("fp32")
    net = _Network(trt, onnx, typed)
    config = net.builder.create_builder_config()
    if flavour == "rtx":
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{sm}"), 0)
    elif not typed:
        config.set_flag(trt.BuilderFlag.FP16)
    prof = net.builder.create_optimization_profile()
    for name, lo, opt, hi in key.profile:
        prof.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(prof)
    timing = None
    if flavour == "trt":
        timing = cache_dir() / f"timing-trt{key.trt_version}-sm{cc.replace('.', '')}.cache"
        tc = config.create_timing_cache(timing.read_bytes() if timing.is_file() else b"")
        config.set_timing_cache(tc, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = net.builder.build_serialized_network(net.network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise EngineError(onnx, f"{BACKEND_NAMES[flavour]} could not build an engine", "see the messages above")
    out_dir = out_dir or writable_dir(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / key.filename()
    record = {
        "key": key.to_dict(),
        "io": net.io(),
        "build_seconds": round(seconds, 3),
        "bytes": plan.nbytes,
        "onnx": onnx.name,
        "model": model.name,
        "vbmd_rt_version": __version__,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_bytes(path, bytes(memoryview(plan)))
    atomic_write_bytes(path.with_name(path.name + ".json"), (json.dumps(record, indent=2) + "\n").encode())
    if timing is not None:
        timing.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(timing, bytes(memoryview(config.get_timing_cache().serialize())))
    log(
        f"{path}: {BACKEND_NAMES[flavour]} {precision} for sm_{cc.replace('.', '')}, "
        f"{plan.nbytes / 2**20:.1f} MiB, built in {seconds:.1f} s"
    )
    return path, record
