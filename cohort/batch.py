"""Many scans, one after the other: resume, shards, concurrency.

``vbmd-rt run DIR... -o OUT`` goes through here (``runner.plan``, then ``runner.run``; the CLI only parses
and prints):

* **resume**: a scan is skipped only when its result records this very input (fingerprint: size and a
  sha256 of the whole content, ``outputs.same_input``), the same model and options, and its files are still
  what the result's manifest says; a changed input is redone and the old result kept in
  ``OUT/.vbmd-rt/history/``; a scan cut off by a kill left nothing half-written (``outputs.Transaction``)
  and is done again; ``--overwrite`` redoes everything; two inputs with one output name are refused before
  any work;
* **concurrency**: a scan another run on the same OUT is writing is taken last, waited for and then reused,
  so two runs on one OUT never compute a scan twice;
* **shards**: ``--num-parts N --part-id K`` takes every N-th scan of the sorted list, starting at K, so
  a SLURM array needs no coordinator; each part writes its own summary;
* **Dask**: ``cohort/dask.py`` (one task per scan, each a ``process`` of this module);
* **summary**: ``cohort/summary.py`` (a row per scan, ``OUT/summary.csv`` and ``OUT/summary.json``);
* **plan and run** of a whole cohort (local, Dask or BIDS; the summary last): ``cohort/runner.py``.

Each scan goes through the pipeline directly (``pipeline.run_scan``) with the one read that decided reuse.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vbmd_rt.api import Predictor
from vbmd_rt.cohort.summary import (  # noqa: F401 - re-exported: the summary's names were batch's
    COMPARTMENT_FIELDS,
    CSV_DIGITS,
    ROW_FIELDS,
    STATUSES,
    VALUES,
    check_summary,
    foreign_summaries,
    row,
    write_summary,
)
from vbmd_rt.runtime import pipeline
from vbmd_rt.runtime.errors import OutputError, VbmdInputError
from vbmd_rt.runtime.io import naming, outputs


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
    return list(naming.outputs_for(name, out, options.report_html, options.save_prob, options.export).values())


def existing_result(
    path: Path, out: Path, options: pipeline.RunOptions, key: dict | None = None, fp: dict | None = None
) -> dict | None:
    """The result of a finished run of this very input in ``out``, or ``None`` when it must be (re)done.

    Reused only when the JSON is vbmd-rt's, names this file, records this input's fingerprint (size and
    whole-content hash), the same model and options (``key``: ``pipeline.run_key``; None: any), and
    every output it lists is still what its manifest says (so a mix left by a kill is never trusted).
    """
    name = naming.scan_name(path)
    files = output_files(name, out, options)
    result = outputs.read_result(files[-1])
    if result is None or result.get("mask", {}).get("format", "char") != options.mask_format:
        return None
    try:
        fp = fp or outputs.fingerprint(path)
    except (OSError, VbmdInputError):
        return None
    fp = outputs.comparable(fp, (result.get("scan") or {}).get("fingerprint"), path)  # an earlier result: blake2b
    expected = [f.name for f in files[:-1]]
    run_key = key if key is not None else result.get("run_key")
    return result if outputs.reusable(result, out, path.name, fp, run_key, expected) else None


def check_names(files: list[Path], batch: bool | None = None) -> None:
    """Refuse, before any work, inputs whose outputs would collide: two scans of one name (``d1/S.AIM`` and
    ``d2/S.AIM``, or ``Y.AIM`` and ``Y.ISQ``; case-insensitively, as on the scanner's file systems), and in a
    batch a scan whose outputs would be the batch summary (``summary.AIM``)."""
    batch = len(files) > 1 if batch is None else batch
    seen: dict[str, Path] = {}
    for f in files:
        name = naming.scan_name(f)
        key = name.casefold()
        if key in seen and seen[key] != f:
            files = naming.outputs_for(name, Path())
            raise VbmdInputError(
                f,
                f"has the same output name as {seen[key]} (both would write {files['json']}, {files['mask']}, ...)",
                "rename one, or run them into different -o folders",
            )
        seen[key] = f
        if batch and naming.is_reserved_name(name):
            raise VbmdInputError(
                f,
                f"would write {naming.result_name(name)}, the name of the batch summary",
                "rename the scan (e.g. to " + name + "_1" + f.suffix + "), or run it on its own",
            )


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


def process(
    path: Path,
    out: Path,
    predictor: Predictor,
    options: pipeline.RunOptions,
    stage=None,
    reraise_internal: bool = False,
    wait: bool = True,
    on_wait=None,
) -> dict | None:
    """One scan with resume semantics; returns its summary row (status done, skipped or failed).

    Under the scan's lock in ``out``: another process writing the same scan (a second run on this OUT)
    is waited for, and its result then reused; with ``wait=False`` such a scan returns None at once (the
    caller comes back to it). Bad input fails the scan (``error_kind`` input); a result of another version
    of this input then goes to history instead of standing as this scan's. An internal error fails the
    scan too, or is raised when ``reraise_internal`` (so Dask retries it).
    """
    path, out = Path(path), Path(out)
    name = naming.scan_name(path)
    json_name = naming.result_name(name)
    try:
        pipeline.check_scan(path)  # bad input fails before anything is created in OUT (the header alone)
    except VbmdInputError as e:
        if (out / json_name).exists():  # the result of an earlier version of this input must not stand
            with contextlib.suppress(OSError, VbmdInputError), outputs.scan_lock(out, name):
                outputs.retire_stale(out, name, json_name, path.name, _fingerprint(path))
        return row(path, "failed", error=e)
    try:
        lock = outputs.scan_lock(
            out, name, wait=wait, on_wait=(lambda _: on_wait(naming.display_name(path))) if on_wait else None
        )
        lock.__enter__()
    except outputs.ScanBusy:
        return None
    except VbmdInputError as e:
        return row(path, "failed", error=e)
    except OSError as e:  # the lock cannot be made (a name the file system refuses): this scan fails alone
        return row(path, "failed", error=OutputError(path, f"cannot lock its outputs ({e.strerror})", "rename it"))
    try:
        fp, scan = None, None
        try:
            # One read of the whole file, hashed in the same pass: its fingerprint decides whether a result
            # standing in OUT is this input's, and the same read is what the pipeline processes.
            timer = pipeline.Timer()
            if stage:
                stage("read")
            with timer("read"):
                scan = pipeline.read_for_run(path, predictor.model, options)
            if not options.overwrite and (out / json_name).exists():  # the hash's end is waited for here only
                with timer("read"):
                    fp = outputs.fingerprint_of(scan)
                key = pipeline.run_key(predictor.model, predictor.backend, options)
                done = existing_result(path, out, options, key, fp)
                if done is not None:
                    return row(path, "skipped", done)
            result = pipeline.run_scan(
                path, out, predictor.model, predictor.backend, options, stage=stage, scan=scan, timer=timer
            )
        except VbmdInputError as e:
            if not isinstance(e, outputs.InputChanged):
                with contextlib.suppress(OSError, VbmdInputError):
                    if fp is None and scan is not None:
                        fp = outputs.fingerprint_of(scan)
                    outputs.retire_stale(out, name, json_name, path.name, fp)
            return row(path, "failed", error=e)
        except Exception as e:
            if reraise_internal:
                raise
            return row(path, "failed", error=e)
        return row(path, "done", result)
    finally:
        lock.__exit__(None, None, None)


def _fingerprint(path: Path) -> dict | None:
    try:
        return outputs.fingerprint(path)
    except (OSError, VbmdInputError):
        return None  # run_scan says what is wrong with the path


def _guarded(path: Path, out: Path, predictor: Predictor, options: pipeline.RunOptions, **kw) -> dict | None:
    """``process``, with anything it did not turn into a row (a name the file system or the terminal cannot
    take) failing this scan alone: one bad name never stops a batch or its summary."""
    try:
        return process(path, out, predictor, options, **kw)
    except (OSError, UnicodeError, ValueError) as e:
        return row(path, "failed", error=e)


def run_local(
    files: list[Path],
    out: Path,
    predictor: Predictor,
    options: pipeline.RunOptions,
    on_row=None,
    stage=None,
    on_wait=None,
) -> list[dict]:
    """The scans one after the other in this process, with one loaded predictor."""
    with contextlib.suppress(OSError, VbmdInputError):
        outputs.clean_staging(out)  # what runs killed before this one left staged
    rows: dict[int, dict] = {}
    busy = []
    for i, f in enumerate(files):  # scans another run on this OUT is writing now come last...
        r = _guarded(f, out, predictor, options, stage=(lambda s, i=i: stage(i, s)) if stage else None, wait=False)
        if r is None:
            busy.append(i)
            continue
        rows[i] = r
        if on_row:
            on_row(r)
    for i in busy:  # ...waited for, then reused (skipped) when that run finished them
        r = _guarded(
            files[i], out, predictor, options, stage=(lambda s, i=i: stage(i, s)) if stage else None, on_wait=on_wait
        )
        assert r is not None
        rows[i] = r
        if on_row:
            on_row(r)
    return [rows[i] for i in range(len(files))]


def scan_files(items: list[Path], recursive: bool = False) -> list[Path]:
    """The scans to process, checked before anything is created: every path given exists, and a folder
    holds scans (or says to use --recursive). Two scans with one output name: ``check_names``."""
    for item in items:
        if not Path(item).exists():
            raise VbmdInputError(item, "no such file or folder", "check the path")
    files = naming.expand_inputs(items, recursive=recursive)
    if not files:
        nested = not recursive and any(Path(i).is_dir() and naming.has_nested_scans(Path(i)) for i in items)
        raise VbmdInputError(
            items[0],
            "holds no scan files (*.AIM, *.ISQ)" + (" at its top level" if nested else ""),
            "add --recursive to take the scans in its subfolders" if nested else "give scan files or a folder of them",
        )
    return files


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


def load_job(job: Job) -> Predictor:
    """The job's model and backend, loaded (and activated) in this process."""
    from vbmd_rt.runtime.model import load_model

    model = load_model(job.model)
    if job.backend_factory is not None:  # e.g. --backend torch, which lives outside the runtime
        return Predictor(model, job.backend_factory(model, job.device))
    return Predictor(model, job.backend, job.device, threads=job.threads)


__all__ = [
    "Job",
    "scan_files",
    "shard",
    "check_names",
    "existing_result",
    "remove_partial",
    "process",
    "load_job",
    "run_local",
    "pin_worker_gpu",
    "write_summary",
    "check_summary",
    "foreign_summaries",
    "ROW_FIELDS",
]
