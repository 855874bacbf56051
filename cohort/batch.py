"""Many scans: resume, shards, a summary, and Dask for cohorts too big for one machine.

``vbmd-rt run DIR... -o OUT`` goes through here:

* **resume**: a scan whose outputs exist and are valid (its JSON, written last, parses and names a mask
  whose header matches the scan) is skipped; outputs of a scan that was cut off (no JSON) are removed
  and the scan is done again; ``--overwrite`` redoes everything;
* **shards**: ``--num-parts N --part-id K`` takes every N-th scan of the sorted list, starting at K, so
  a SLURM array needs no coordinator; each part writes its own summary;
* **Dask** (``--cluster local`` or ``tcp://HOST:PORT``): one task per scan; each worker process loads
  the model and backend once and keeps them; a task that crashes is retried (``--retries``), a worker
  that dies has its scans rescheduled, and bad input fails only its own scan;
* **summary**: ``OUT/summary.csv`` (a row per scan) and ``OUT/summary.json``.

Rows never hold patient fields: the scan's file name, numbers, status and error text only.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import io
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.api import Predictor
from vbmd_rt.runtime import pipeline
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import aim, naming, nifti
from vbmd_rt.runtime.io.atomic import atomic_write_bytes

STATUSES = ("done", "skipped", "failed")
ROW_FIELDS = (
    "scan",
    "status",
    "d100_mg_ha_cm3",
    "bone_volume_mm3",
    "mean_slice_area_mm2",
    "slices",
    "side",
    "backend",
    "precision",
    *(f"{s}_s" for s in (*pipeline.STAGES, "total")),
    "warnings",
    "error_kind",
    "error",
    "model",
    "model_sha256",
    "vbmd_rt_version",
    "qc_status",
    "qc_reasons",
    "values",
)
# Digits kept in summary.csv: D100 to 0.1 mg HA/cm³ (the measurement's own noise is larger), volume
# to 0.1 mm³, area to 0.01 mm², seconds to the millisecond. summary.json keeps every digit.
CSV_DIGITS = {"d100_mg_ha_cm3": 1, "bone_volume_mm3": 1, "mean_slice_area_mm2": 2}
VALUES = {"done": "computed", "skipped": "reused"}  # where a row's values come from


@dataclass
class Job:
    """What a worker needs to build its own model and backend (picklable, small)."""

    model: str | None = None  # folder, "classical", or None for the bundled model
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    options: pipeline.RunOptions = field(default_factory=pipeline.RunOptions)
    backend_factory: Callable | None = None  # a module-level function (model, device) -> backend, or None
    gpus: int = 0  # GPUs of a local cluster's machine: each worker process is pinned to one

    def key(self) -> tuple:
        return (self.model, self.backend, self.device, self.threads)


def shard(files: list[Path], num_parts: int = 1, part_id: int = 0) -> list[Path]:
    """Every ``num_parts``-th scan of the sorted list, from ``part_id``: the same split on every node."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise VbmdInputError(
            None, f"--part-id {part_id} is not in 0..{num_parts - 1}", "give 0 <= --part-id < --num-parts"
        )
    ordered = sorted(files, key=lambda p: (naming.scan_name(p), str(p)))
    return ordered[part_id::num_parts]


def output_files(name: str, out: Path, options: pipeline.RunOptions) -> list[Path]:
    """Every file ``run`` may write for scan ``name`` (the JSON last)."""
    files = list(naming.outputs_for(name, out, options.report_html, options.save_prob).values())
    if options.export:  # NAME.nii.gz / NAME_SEG.nii.gz (or .mha), before the JSON
        files[-1:-1] = [out / n for n in nifti.export_names(name, options.export)]
    return files


def existing_result(path: Path, out: Path, options: pipeline.RunOptions) -> dict | None:
    """The result of a finished run of this scan in ``out``, or ``None`` when it is not complete and valid.

    Valid: the JSON parses and has the result keys, it is for a file of this name, and its mask exists
    with a header of the scan's dimensions; the PNG (and HTML, probability map when asked) exist.
    """
    name = naming.scan_name(path)
    files = output_files(name, out, options)
    js = files[-1]
    try:
        result = json.loads(js.read_text())
        mask = out / result["mask"]["file"]
        hdr = aim.read_header(mask)
        ok = (
            result["scan"]["file"] == path.name
            and result["mask"].get("format", "char") == options.mask_format
            and (options.mask_format == "cropped" or list(hdr.shape) == list(result["scan"]["shape_zyx"]))
            and "d100_mg_ha_cm3" in result
            and all(f.is_file() for f in files)
        )
    except (OSError, ValueError, KeyError, TypeError, VbmdInputError):
        return None
    return result if ok else None


def remove_partial(name: str, out: Path, options: pipeline.RunOptions) -> list[Path]:
    """Remove every output of scan ``name`` from ``out`` (its JSON too, where there is one) and the
    temporaries of their atomic writes. Only this scan's own file names: a scan P1 never touches the
    temporaries of a P10 that another worker is writing."""
    removed = []
    files = output_files(name, out, options)
    temps = [t for f in files for t in sorted(out.glob(f".{glob.escape(f.name)}.tmp-*"))]
    for f in files + temps:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            removed.append(f)
    return removed


def row(
    path: Path,
    status: str,
    result: dict | None = None,
    error: BaseException | str | None = None,
    error_kind: str | None = None,
) -> dict:
    r = {k: None for k in ROW_FIELDS}
    r.update(scan=path.name, status=status)
    if result:
        for k in ("d100_mg_ha_cm3", "bone_volume_mm3", "mean_slice_area_mm2", "slices", "side"):
            r[k] = result.get(k)
        r["backend"] = result.get("backend", {}).get("name")
        r["precision"] = result.get("backend", {}).get("precision")
        for k, v in result.get("timings_s", {}).items():
            r[f"{k}_s"] = v
        r["warnings"] = " | ".join(result.get("warnings", [])) or None
        model = result.get("model") or {}
        r["model"] = model.get("name")
        r["model_sha256"] = model.get("sha256")
        r["vbmd_rt_version"] = result.get("vbmd_rt_version")
        qc = result.get("qc")
        if isinstance(qc, dict):  # pass | review, and why
            r["qc_status"] = qc.get("status")
            r["qc_reasons"] = " | ".join(str(x) for x in qc.get("reasons") or []) or None
    r["values"] = VALUES.get(status)
    if error is not None:
        r["error_kind"] = error_kind or ("input" if isinstance(error, VbmdInputError) else "internal")
        r["error"] = (
            str(error)
            if isinstance(error, VbmdInputError)
            else (error if isinstance(error, str) else f"{type(error).__name__}: {error}")
        )
    return r


def process(
    path: Path,
    out: Path,
    predictor: Predictor,
    options: pipeline.RunOptions,
    stage=None,
    reraise_internal: bool = False,
) -> dict:
    """One scan with resume semantics; returns its summary row (status done, skipped or failed).

    Bad input fails the scan (``error_kind`` input). An internal error does too, or is raised when
    ``reraise_internal`` (so Dask retries it).
    """
    path, out = Path(path), Path(out)
    if not options.overwrite:
        done = existing_result(path, out, options)
        if done is not None:
            return row(path, "skipped", done)
        if not (out / f"{naming.scan_name(path)}.json").exists():  # a JSON that does not validate is kept,
            remove_partial(naming.scan_name(path), out, options)  # and run_scan refuses to overwrite it
    try:
        result = predictor.run_to(path, out, options, stage=stage)
    except VbmdInputError as e:
        return row(path, "failed", error=e)
    except Exception as e:
        if reraise_internal:
            raise
        return row(path, "failed", error=e)
    return row(path, "done", result)


def run_local(
    files: list[Path], out: Path, predictor: Predictor, options: pipeline.RunOptions, on_row=None, stage=None
) -> list[dict]:
    """The scans one after the other in this process, with one loaded predictor."""
    rows = []
    for i, f in enumerate(files):
        r = process(f, out, predictor, options, stage=(lambda s, i=i: stage(i, s)) if stage else None)
        rows.append(r)
        if on_row:
            on_row(r)
    return rows


# --------------------------------------------------------------------------- Dask

_WORKER: dict = {}  # per worker process: the job key -> its Predictor, loaded once


def load_job(job: Job) -> Predictor:
    """The job's model and backend, loaded (and activated) in this process."""
    from vbmd_rt.runtime.model import load_model

    model = load_model(job.model)
    if job.backend_factory is not None:  # e.g. --backend torch, which lives outside the runtime
        return Predictor(model, job.backend_factory(model, job.device))
    return Predictor(model, job.backend, job.device, threads=job.threads)


def pin_worker_gpu(worker_name, gpus: int) -> str | None:
    """One GPU per worker process of a local cluster: ``CUDA_VISIBLE_DEVICES`` from the worker's number,
    set before anything in the process initialises CUDA (a user's own setting is kept)."""
    if gpus < 2 or "CUDA_VISIBLE_DEVICES" in os.environ:
        return os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        index = int(worker_name)
    except (TypeError, ValueError):
        index = sum(map(ord, str(worker_name)))
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    return os.environ["CUDA_VISIBLE_DEVICES"]


def _worker_predictor(job: Job) -> Predictor:
    key = job.key()
    if key not in _WORKER:
        if job.gpus > 1:
            from distributed import get_worker

            pin_worker_gpu(get_worker().name, job.gpus)
        _WORKER[key] = load_job(job)
    return _WORKER[key]


def dask_task(path: str, out: str, job: Job) -> dict:
    """One scan on a Dask worker; internal errors are raised so that Dask retries them."""
    return process(Path(path), Path(out), _worker_predictor(job), job.options, reraise_internal=True)


def run_dask(
    files: list[Path],
    out: Path,
    job: Job,
    cluster: str = "local",
    retries: int = 2,
    workers: int | None = None,
    on_row=None,
) -> list[dict]:
    """The scans as Dask tasks on ``cluster`` (``local`` starts a LocalCluster of worker processes)."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise VbmdInputError(None, "--cluster needs Dask", "pip install 'vbmd-rt[cluster]'") from None
    local = None
    if cluster == "local":
        gpus = _gpu_count()
        n = workers or max(1, gpus or min(4, os.cpu_count() or 1))
        job = dataclasses.replace(job, gpus=gpus)
        local = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(local)
    elif cluster.startswith("tcp://"):
        try:
            client = Client(cluster, timeout="30s")
        except OSError as e:
            raise VbmdInputError(
                None,
                f"cannot reach the Dask scheduler at {cluster} ({e})",
                "check the address and that the scheduler runs",
            ) from None
    else:
        raise VbmdInputError(
            None,
            f"--cluster {cluster!r} is neither 'local' nor tcp://HOST:PORT",
            "give --cluster local or --cluster tcp://HOST:PORT",
        )
    rows: dict[str, dict] = {}
    try:
        futures = {
            client.submit(dask_task, str(f), str(out), job, key=f"vbmd-{i}-{f.name}", retries=retries, pure=False): f
            for i, f in enumerate(files)
        }
        for fut in as_completed(futures):
            f = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # noqa: BLE001 - retries exhausted, or the task was lost too often
                r = row(f, "failed", error=e, error_kind="internal")
            rows[str(f)] = r
            if on_row:
                on_row(r)
    finally:
        client.close()
        if local is not None:
            local.close()
    return [rows[str(f)] for f in files]


def _gpu_count() -> int:
    from vbmd_rt.runtime.inference.factory import cuda_device_count

    return cuda_device_count()


# --------------------------------------------------------------------------- summary


def _csv_value(key: str, value):
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, CSV_DIGITS.get(key, 3))
    return value


def write_summary(out: Path, rows: list[dict], num_parts: int = 1, part_id: int = 0, extra: dict | None = None):
    """``OUT/summary.csv`` and ``OUT/summary.json`` (``summary.part-K-of-N.*`` for a shard), atomically."""
    csv_name, json_name = naming.summary_names(num_parts, part_id)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(k, r.get(k)) for k in ROW_FIELDS})
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    d100 = [r["d100_mg_ha_cm3"] for r in rows if r["status"] != "failed" and r["d100_mg_ha_cm3"] is not None]
    summary = {
        "scans": len(rows),
        **counts,
        "d100_mg_ha_cm3": {"n": len(d100), "mean": sum(d100) / len(d100) if d100 else None},
        "failed_scans": [
            {"scan": r["scan"], "error_kind": r["error_kind"], "error": r["error"]}
            for r in rows
            if r["status"] == "failed"
        ],
        "part": {"id": part_id, "of": num_parts},
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "vbmd_rt_version": __version__,
        **(extra or {}),
        "rows": rows,
    }
    atomic_write_bytes(out / csv_name, buf.getvalue().encode())
    atomic_write_bytes(out / json_name, (json.dumps(summary, indent=2) + "\n").encode())
    return out / csv_name, out / json_name


__all__ = [
    "Job",
    "shard",
    "existing_result",
    "remove_partial",
    "process",
    "load_job",
    "run_local",
    "run_dask",
    "write_summary",
    "ROW_FIELDS",
]
