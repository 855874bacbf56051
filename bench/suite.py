"""``vbmd-rt bench``: latency per stage against the paper, network-only latency, the physical floor, memory.

* **Stages**: ``vbmd-rt run`` on a cached full-size phantom (1536 x 1536, 200-320 slices), each run a
  fresh process (model load in its wall time, peak RSS from ``VmHWM``), a warm-up then ``--runs``
  measured runs, for every backend that runs on this machine (ONNX Runtime CPU/CUDA, TensorRT,
  TensorRT-RTX, PyTorch when the train extra is installed, and the classical baseline). Median, min and
  max per stage, and the ratio of the median total to the paper's 33.45 s (2D) and 32.98 s (3D).
* **Network only**: the 3D net on the phantom's own windows (per window, per volume); the 2D net per
  slice at batch 1, 8, 16, 32 (an exported 2D model given with ``--model2d``, or, with torch, an
  untrained one exported once into the cache: weights do not change latency).
* **Floor**: FLOPs of each network (from the ONNX graph with shapes inferred), the bytes read and
  written, and the time these take at this machine's measured memory bandwidth, page-cache read, disk
  write (with fsync) and matrix-multiply throughput (float32 GEMM); the floor assumes perfect overlap.
* Saved as JSON with the machine's description.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vbmd_rt.runtime.pipeline import STAGES as RUN_STAGES

PAPER_S = {"2d": 33.45, "3d": 32.98}
STAGES = (*RUN_STAGES, "total")  # every stage a run times (its JSON's timings_s), then the total
_RUN = (
    "import sys; sys.argv=['vbmd-rt']+sys.argv[1:]\n"
    "from vbmd_rt.cli import main\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "print('VMHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    "sys.exit(code)"
)


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _lines("/proc/cpuinfo") if ln.startswith("model name")),
        platform.processor(),
    )
    mem = next((int(ln.split()[1]) * 1024 for ln in _lines("/proc/meminfo") if ln.startswith("MemTotal")), None)
    gpus = []
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        gpus = [g.strip() for g in r.stdout.splitlines() if g.strip()] if r.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib import metadata

    versions = {}  # from the installed distributions: importing torch only to read its version takes seconds
    for mod, dist in (
        ("numpy", "numpy"),
        ("onnxruntime", "onnxruntime"),
        ("onnxruntime", "onnxruntime-gpu"),
        ("cv2", "opencv-python-headless"),
        ("cv2", "opencv-python"),
        ("torch", "torch"),
        ("tensorrt", "tensorrt"),
        ("tensorrt_rtx", "tensorrt-rtx"),
    ):
        try:
            versions.setdefault(mod, metadata.version(dist))
        except metadata.PackageNotFoundError:
            continue
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "gpus": gpus,
        "python": platform.python_version(),
        "versions": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _best(run, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``run`` (seconds)."""
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        t.append(time.perf_counter() - t0)
    return min(t)


def _stream_rates(folder: Path, mib: int, repeats: int) -> tuple[float, float, float, float]:
    """Memory copy (read + write), fsynced disk write, page-cache read and sha256 of ``mib`` MiB, in GB/s."""
    a = np.ones(mib * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    f = folder / ".bench-io.bin"

    def write() -> None:
        with open(f, "wb") as fh:
            fh.write(a.data)
            fh.flush()
            os.fsync(fh.fileno())

    def read() -> None:
        with open(f, "rb") as fh:
            fh.readinto(b.data)

    import hashlib

    mem = 2 * a.nbytes / _best(lambda: np.copyto(b, a), repeats) / 1e9
    write_s = _best(write, repeats)
    read_s = _best(read, repeats)
    f.unlink()
    # the read's content hash (issue 23): one core, in sequence
    sha_s = _best(lambda: hashlib.sha256(memoryview(a).cast("B")).digest(), repeats)
    return mem, a.nbytes / write_s / 1e9, a.nbytes / read_s / 1e9, a.nbytes / sha_s / 1e9


def throughput(folder: Path, mib: int = 512, repeats: int = 3) -> dict:
    """Memory copy, page-cache read, fsynced disk write and sha256 in GB/s; float32 GEMM in GFLOP/s. The
    rates are each the best of ``repeats`` runs: ``floor`` is a least time, and one slow run (page faults,
    another process) would raise it above what the job itself achieves."""
    mem, write, read, sha = _stream_rates(folder, mib, repeats)
    m = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    m @ m  # warm: threads started, pages touched
    gemm = 2 * 2048**3 / _best(lambda: m @ m, repeats) / 1e9
    return {
        "memory_copy_gb_s": mem,
        "page_cache_read_gb_s": read,
        "disk_write_gb_s": write,
        "sha256_gb_s": sha,
        "gemm_gflop_s": gemm,
    }


def onnx_cost(path: Path, shape: tuple[int, ...]) -> dict | None:
    """For one input of ``shape``: ``flops`` (multiply-adds x 2 of Conv/ConvTranspose/MatMul/Gemm) and
    ``activation_bytes`` (every intermediate tensor written once and read once, float32)."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape, strict=True):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    m = shape_inference.infer_shapes(m, data_prop=True)
    shapes = {}
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    total = 0
    act = sum(4 * int(np.prod(v)) for k, v in shapes.items() if k not in inits and v and 0 not in v)
    for node in m.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = inits.get(node.input[1]) or shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not w or not out or 0 in out:
                return None
            per_out = int(np.prod(w[1:]))  # Cin/groups x kernel
            if node.op_type == "ConvTranspose":
                inp = shapes.get(node.input[0])
                total += 2 * int(np.prod(inp)) * w[1] * int(np.prod(w[2:]))
            else:
                total += 2 * int(np.prod(out)) * per_out
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                total += 2 * int(np.prod(out)) * a[-1]
    return {"flops": total, "activation_bytes": 2 * act}


def _phantom(cache: Path, size: str, seed: int) -> Path:
    folder = cache / f"{size}-{seed}"
    scan = folder / "PHANTOM_0000.AIM"
    if not (folder / "PHANTOM_0000.truth.json").exists():
        subprocess.run(
            [sys.executable, "-m", "vbmd_rt", "synth", folder, "--size", size, "--seed", str(seed), "-q"], check=True
        )
    return scan


def available_backends() -> list[tuple[str, str | None]]:
    """(backend, model) pairs that run here: the network on each installed backend, then the baseline."""
    from vbmd_rt.runtime.inference.base import installed
    from vbmd_rt.runtime.inference.factory import cuda_device_count

    found = [("onnxruntime", None)]
    if cuda_device_count():
        for name, module in (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx")):
            if installed(module):
                found.append((name, None))
    if installed("torch"):
        found.append(("torch", None))
    found.append(("auto", "classical"))
    return found


def stage_latency(scan: Path, backend: str, model: str | None, runs: int, warmup: int, threads: int | None) -> dict:
    rows, err = [], None
    extra = (
        ["--backend", backend]
        + (["--model", model] if model else [])
        + (["--threads", str(threads)] if threads else [])
    )
    for i in range(warmup + runs):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-c", _RUN, "run", str(scan), "-o", out, "-q", *extra], capture_output=True, text=True
            )
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                err = (r.stderr.strip().splitlines() or ["failed"])[-1]
                break
            res = json.loads((Path(out) / f"{scan.stem}.json").read_text())
            written = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
            if i >= warmup:
                rows.append(
                    {
                        **res["timings_s"],
                        "process_wall": wall,
                        "written_bytes": written,
                        "peak_rss_bytes": int(r.stdout.split("VMHWM")[1].split()[0]) * 1024,
                        "backend_name": res["backend"]["name"],
                        "precision": res["backend"]["precision"],
                    }
                )
    if not rows:
        return {"error": err or "no runs"}
    keys = [*STAGES, "process_wall", "peak_rss_bytes", "written_bytes"]
    return {
        "backend": rows[0]["backend_name"],
        "precision": rows[0]["precision"],
        "runs": len(rows),
        "median": {k: statistics.median(r[k] for r in rows) for k in keys},
        "min": {k: min(r[k] for r in rows) for k in keys},
        "max": {k: max(r[k] for r in rows) for k in keys},
    }


def _time(fn, reps: int) -> dict:
    fn()  # warm-up
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return {"median": statistics.median(t), "min": min(t), "max": max(t), "reps": reps}


def network_latency(
    scan: Path, model2d: Path | None, cache: Path, reps: int, threads: int | None, net2d: bool = True
) -> dict:
    """The nets alone on ONNX Runtime (and PyTorch where installed): 3D per window and per volume, 2D per slice."""
    from vbmd_rt.runtime import preprocess
    from vbmd_rt.runtime.inference import window as sw
    from vbmd_rt.runtime.inference.ort_backend import OnnxRuntimeBackend
    from vbmd_rt.runtime.io import aim
    from vbmd_rt.runtime.model import load_model

    out: dict = {}
    m3 = load_model("unet3d")
    s = aim.read_aim(scan)
    vol, geom = preprocess.to_model(s.data, m3.spec, spacing_zyx=s.spacing_zyx)
    window, _ = sw.fit_window(vol.shape[0], m3.window.roi_slices, m3.window.multiple)
    x = np.ascontiguousarray(vol[None, None, :window]).astype(np.float32)
    starts = len(sw.starts(vol.shape[0], window, m3.window.overlap))
    cost = onnx_cost(m3.onnx("fp32"), x.shape) or {}
    with OnnxRuntimeBackend(m3, "cpu", threads=threads) as be:
        t = _time(lambda: be.infer(x), reps)
    out["unet3d"] = {
        "input": list(x.shape),
        "model_grid": list(vol.shape),
        "windows": starts,
        "flops_per_window": cost.get("flops"),
        "activation_bytes_per_window": cost.get("activation_bytes"),
        "onnxruntime-cpu": {"per_window_s": t, "per_volume_s": t["median"] * starts},
    }
    m2 = _model2d(model2d, cache) if net2d else None
    if m2 is not None:
        cost2 = onnx_cost(m2.onnx("fp32"), (1, 1, 512, 512)) or {}
        res = {"flops_per_slice": cost2.get("flops"), "activation_bytes_per_slice": cost2.get("activation_bytes")}
        with OnnxRuntimeBackend(m2, "cpu", threads=threads) as be:
            for b in (1, 8, 16, 32):
                xb = np.random.default_rng(0).standard_normal((b, 1, 512, 512)).astype(np.float32)
                tb = _time(lambda xb=xb, be=be: be.infer(xb), max(1, reps // 2) if b > 8 else reps)
                res[f"batch_{b}"] = {"per_batch_s": tb, "per_slice_s": tb["median"] / b}
        out["unet2d"] = {"onnxruntime-cpu": res, "model": str(m2.folder)}
    return out


def _model2d(model2d: Path | None, cache: Path):
    from vbmd_rt.runtime.model import load_model

    if model2d is not None:
        return load_model(model2d)
    folder = cache / "unet2d-untrained"
    if (folder / "model.json").exists():
        return load_model(folder)
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    from vbmd_rt.export.onnx_export import export_untrained

    export_untrained("unet2d", folder)
    return load_model(folder)


def floor(stage: dict, scan_bytes: int, written_bytes: int, net: dict | None, tp: dict) -> dict:
    """The least time the job could take here, assuming perfect overlap: the scan read at page-cache speed
    and what the run wrote (masks, JSON, picture) at disk speed; the scan's sha256 (issue 23's fingerprint,
    one sequential stream, so one core) at the rate measured here; one pass over the scan at memory
    bandwidth plus the net's FLOPs at the best FLOP rate measured here (GEMM, or the nets themselves) and
    its activations at memory bandwidth."""
    io_s = scan_bytes / (tp["page_cache_read_gb_s"] * 1e9) + written_bytes / (tp["disk_write_gb_s"] * 1e9)
    hash_s = scan_bytes / (tp["sha256_gb_s"] * 1e9)
    flops = (net or {}).get("flops") or 0
    act = (net or {}).get("activation_bytes") or 0
    compute_s = scan_bytes / (tp["memory_copy_gb_s"] * 1e9) + max(
        flops / (tp["best_gflop_s"] * 1e9), act / (tp["memory_copy_gb_s"] * 1e9)
    )
    f = max(io_s, hash_s, compute_s)
    return {
        "io_s": io_s,
        "hash_s": hash_s,
        "compute_s": compute_s,
        "floor_s": f,
        "ratio_to_floor": stage["median"]["total"] / f if stage.get("median") else None,
    }


def run(
    out_json: Path | None,
    size: str = "full",
    runs: int = 5,
    warmup: int = 1,
    seed: int = 2024,
    cache: Path = Path(".cache/bench"),
    backends: list[str] | None = None,
    model2d: Path | None = None,
    network: bool = True,
    threads: int | None = None,
    net2d: bool = True,
    log=print,
) -> dict:

    cache.mkdir(parents=True, exist_ok=True)
    scan = _phantom(cache, size, seed)
    truth = json.loads(scan.with_name("PHANTOM_0000.truth.json").read_text())
    report = {
        "machine": machine(),
        "scan": {"size": size, "slices": truth["scan_slices"], "bytes": scan.stat().st_size},
        "paper_s": PAPER_S,
    }
    log(
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"GPUs: {', '.join(report['machine']['gpus']) or 'none'}"
    )
    report["throughput"] = tp = throughput(cache)
    log(
        "throughput: memory copy {memory_copy_gb_s:.1f} GB/s, page-cache read {page_cache_read_gb_s:.1f} GB/s, "
        "sha256 {sha256_gb_s:.2f} GB/s, "
        "disk write {disk_write_gb_s:.2f} GB/s, GEMM {gemm_gflop_s:.0f} GFLOP/s".format(**tp)
    )
    if network:
        report["network"] = network_latency(scan, model2d, cache, max(3, runs), threads, net2d)
    tp["best_gflop_s"] = tp["gemm_gflop_s"]
    net_case = None
    if network and report["network"]["unet3d"]["flops_per_window"]:
        n3 = report["network"]["unet3d"]
        net_case = {
            "flops": n3["flops_per_window"] * n3["windows"],
            "activation_bytes": n3["activation_bytes_per_window"] * n3["windows"],
        }
        rates = [n3["flops_per_window"] / n3["onnxruntime-cpu"]["per_window_s"]["min"] / 1e9]
        n2 = report["network"].get("unet2d", {}).get("onnxruntime-cpu")
        if n2 and n2["flops_per_slice"]:
            rates += [n2["flops_per_slice"] * b / n2[f"batch_{b}"]["per_batch_s"]["min"] / 1e9 for b in (1, 8, 16, 32)]
        tp["best_gflop_s"] = max(tp["gemm_gflop_s"], *rates)
    report["stages"] = {}
    todo = [b for b in available_backends() if backends is None or (b[1] or b[0]) in backends]
    for be, model in todo:
        label = model or be
        log(f"run x {warmup}+{runs}: {label} ...")
        st = stage_latency(scan, be, model, runs, warmup, threads)
        if "median" in st:
            st["ratio_to_paper_3d"] = st["median"]["total"] / PAPER_S["3d"]
            st["ratio_to_paper_2d"] = st["median"]["total"] / PAPER_S["2d"]
            st["peak_rss_over_scan"] = st["median"]["peak_rss_bytes"] / report["scan"]["bytes"]
            written = int(st["median"]["written_bytes"])  # the default binary run-length masks: megabytes
            st["floor"] = floor(st, report["scan"]["bytes"], written, None if model else net_case, tp)
        report["stages"][label] = st
    log(table(report))
    log(
        f"floor: the scan read and the outputs written at the measured rates, or its sha256 at "
        f"{tp['sha256_gb_s']:.2f} GB/s (one core), or one pass over it plus the net at {tp['best_gflop_s']:.0f} "
        f"GFLOP/s (best measured) and {tp['memory_copy_gb_s']:.0f} GB/s, whichever is longest; "
        "vs 33 s = median total / the paper's 32.98 s (3D)"
    )
    if out_json:
        from vbmd_rt.runtime.io.atomic import atomic_write_bytes

        atomic_write_bytes(out_json, (json.dumps(report, indent=2) + "\n").encode())
    return report


def table(report: dict) -> str:
    lines = [
        f"scan: {report['scan']['size']}, {report['scan']['slices']} slices, {report['scan']['bytes'] / 2**20:.0f} MiB; "
        "seconds, median (min-max)"
    ]
    head = (
        f"{'backend':22s}"
        + "".join(f"{s:>17s}" for s in STAGES)
        + f"{'vs 33 s':>9s}{'floor s':>8s}{'peak RSS GiB':>13s}{'RSS/scan':>10s}"
    )
    lines.append(head)
    for label, st in report["stages"].items():
        if "median" not in st:
            lines.append(f"{label:22s} failed: {st['error']}")
            continue
        cells = "".join(f"{st['median'][s]:7.2f} ({st['min'][s]:.2f}-{st['max'][s]:.2f})".rjust(17) for s in STAGES)
        lines.append(
            f"{label + ' ' + st['precision']:22s}{cells}{st['ratio_to_paper_3d']:9.3f}"
            f"{st['floor']['floor_s']:8.2f}{st['median']['peak_rss_bytes'] / 2**30:13.2f}"
            f"{st['peak_rss_over_scan']:9.2f}x"
        )
    lines.append(
        "vs 33 s: median total / the paper's 32.98 s; floor s: the least time possible here; peak RSS GiB: the "
        "process's peak resident memory; RSS/scan: that peak as a multiple (x) of the scan file's size"
    )
    net = report.get("network")
    if net:
        n3 = net["unet3d"]
        o = n3["onnxruntime-cpu"]
        gf = n3["flops_per_window"] / 1e9 if n3["flops_per_window"] else float("nan")
        lines.append(
            f"3D net, onnxruntime-cpu: window {n3['input']} ({gf:.1f} GFLOP, "
            f"{(n3['activation_bytes_per_window'] or 0) / 1e9:.1f} GB of activations) "
            f"{o['per_window_s']['median']:.3f} s, {n3['windows']} windows = {o['per_volume_s']:.2f} s per volume"
        )
        if "unet2d" in net:
            r = net["unet2d"]["onnxruntime-cpu"]
            gf = (r["flops_per_slice"] or float("nan")) / 1e9
            lines.append(
                f"2D net, onnxruntime-cpu ({gf:.1f} GFLOP per slice): "
                + ", ".join(f"batch {b} {r[f'batch_{b}']['per_slice_s'] * 1e3:.0f} ms/slice" for b in (1, 8, 16, 32))
            )
    return "\n".join(lines)
