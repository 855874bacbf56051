"""Many scans: resume, shards, a summary, and Dask for cohorts too big for one machine.

``vbmd-rt run DIR... -o OUT`` goes through here:

* **resume**: a scan is skipped only when its result records this very input (fingerprint: size and a
  sha256 of the whole content, ``outputs.same_input``), the same model and options, and its files are still what the result's manifest
  says; a changed input is redone and the old result kept in ``OUT/.vbmd-rt/history/``; a scan cut off by a
  kill left nothing half-written (``outputs.Transaction``) and is done again; ``--overwrite`` redoes
  everything; two inputs with one output name are refused before any work;
* **concurrency**: a scan another run on the same OUT is writing is taken last, waited for and then reused,
  so two runs on one OUT never compute a scan twice;
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
from vbmd_rt.runtime import compartments, pipeline
from vbmd_rt.runtime.errors import OutputError, VbmdInputError, printable
from vbmd_rt.runtime.io import aim, naming, outputs
from vbmd_rt.runtime.io.atomic import atomic_write_bytes
from vbmd_rt.runtime.result import Record

STATUSES = ("done", "skipped", "failed")
# The compartments (runtime.compartments) of MC2, its head and its shaft: units in the names.
COMPARTMENT_FIELDS = (
    *compartments.PARAMETERS,
    *(f"{r}_{k}" for r in compartments.REGIONS for k in compartments.PARAMETERS),
)
ROW_FIELDS = (
    "scan",
    "status",
    "d100_mg_ha_cm3",
    "bone_volume_mm3",
    "mean_slice_area_mm2",
    "slices",
    "side",
    *COMPARTMENT_FIELDS,
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


def row(
    path: Path,
    status: str,
    result: dict | None = None,
    error: BaseException | str | None = None,
    error_kind: str | None = None,
) -> dict:
    r = {k: None for k in ROW_FIELDS}
    r.update(scan=naming.display_name(path), status=status)  # one line, whatever the file is called
    if result:  # the result's own columns, from its record (runtime.result)
        r.update(Record.from_json(result).summary_values())
    r["values"] = VALUES.get(status)
    if error is not None:
        r["error_kind"] = error_kind or ("input" if isinstance(error, VbmdInputError) else "internal")
        r["error"] = printable(
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
        fp = None
        try:
            # One read of the whole file, hashed in the same pass: its fingerprint decides whether a result
            # standing in OUT is this input's, and the same read is what the pipeline processes.
            timer = pipeline.Timer()
            if stage:
                stage("read")
            with timer("read"):
                scan = pipeline.read_for_run(path, predictor.model, options)
            fp = outputs.fingerprint_of(scan)
            if not options.overwrite and (out / json_name).exists():
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


# --------------------------------------------------------------------------- a cohort, planned and run


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


@dataclass
class Plan:
    """What ``vbmd-rt run`` will do, decided and checked before any scan is touched (``plan``)."""

    files: list[Path]  # this part's scans, in order
    out: Path
    groups: dict[Path, list[Path]] | None = None  # --layout bids: output folder -> its scans
    cluster: str | None = None  # Dask: local or tcp://HOST:PORT; None: this process
    num_parts: int = 1
    part_id: int = 0
    overwrite: bool = False

    @property
    def summarised(self) -> bool:
        """A cohort (more than one scan, a shard or Dask) gets ``summary.csv``; one scan's is its NAME.json."""
        return self.groups is None and (len(self.files) > 1 or bool(self.cluster) or self.num_parts > 1)


@dataclass
class Outcome:
    """What a run of a plan gave: a row per scan (in the plan's order) and its summary or BIDS table."""

    rows: list[dict]
    table: Path | None = None  # summary.csv, or the BIDS derivative's vbmd.tsv

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def skipped(self) -> int:
        return sum(r["status"] == "skipped" for r in self.rows)

    @property
    def exit_code(self) -> int:
        """0 all done or reused, 1 an internal error, 2 bad input only (the CLI's contract)."""
        failed = self.failed
        if not failed:
            return 0
        return 1 if any(r["error_kind"] == "internal" for r in failed) else 2


def plan(
    scans: list[Path],
    out: Path,
    recursive: bool = False,
    layout: str = "flat",
    cluster: str | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    overwrite: bool = False,
) -> Plan:
    """The scans of ``scans`` (files or folders) for this part, refused before any work where outputs would
    collide (``check_names``) or a user's summary would be replaced (``check_summary``); OUT is created."""
    from vbmd_rt.cohort import bids
    from vbmd_rt.runtime.io.atomic import check_writable_dir

    if layout == "bids" and (cluster or num_parts > 1):
        raise VbmdInputError(
            None, "--layout bids runs the cohort in this process", "leave out --cluster and --num-parts"
        )
    files = scan_files(scans, recursive)
    groups = None
    if layout == "bids":
        groups = bids.groups(out, files)  # one output folder per subject and session
        for group in groups.values():
            check_names(group, batch=False)
    else:
        check_names(files, batch=len(files) > 1 or bool(cluster) or num_parts > 1)  # before sharding
    p = Plan(shard(files, num_parts, part_id), Path(out), groups, cluster, num_parts, part_id, overwrite)
    check_writable_dir(out)
    if groups is not None:
        bids.write_description(out)
    elif p.summarised:  # a user's summary.csv in OUT is refused before any work
        check_summary(out, num_parts, part_id, overwrite)
    return p


def run(
    p: Plan,
    job: Job,
    retries: int = 2,
    workers: int | None = None,
    on_row=None,
    stage=None,
    on_wait=None,
    on_backend=None,
) -> Outcome:
    """Run a plan: on Dask (``p.cluster``), or here with one loaded model (``on_backend(backend)`` once it is
    active); ``on_row(row)`` as each scan finishes, ``stage(i, stage)`` and ``on_wait(name)`` for progress.
    Writes the cohort's summary (or the BIDS table) last."""
    from vbmd_rt.cohort import bids
    from vbmd_rt.runtime.io.atomic import check_writable_dir

    if p.cluster:
        rows = run_dask(p.files, p.out, job, p.cluster, retries=retries, workers=workers, on_row=on_row)
    else:
        with load_job(job) as predictor:
            if on_backend:
                on_backend(predictor.backend)
            if p.groups is None:
                rows = run_local(p.files, p.out, predictor, job.options, on_row=on_row, stage=stage, on_wait=on_wait)
            else:
                by_file: dict = {}
                for folder, group in p.groups.items():
                    check_writable_dir(folder)
                    first = len(by_file)
                    at = (lambda i, s, first=first: stage(first + i, s)) if stage else None
                    rows_here = run_local(
                        group, folder, predictor, job.options, on_row=on_row, stage=at, on_wait=on_wait
                    )
                    by_file.update(zip(group, rows_here, strict=True))
                rows = [by_file[f] for f in p.files]
    table = None
    if p.groups is not None:  # the derivative's table, one row per scan, with units in vbmd.json
        table, _ = bids.write_table(p.out, rows, p.files)
    elif p.summarised:
        table, _ = write_summary(p.out, rows, p.num_parts, p.part_id, overwrite=p.overwrite)
    return Outcome(rows, table)


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


def _own_summary_json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and "rows" in d and "vbmd_rt_version" in d else None


def foreign_summaries(out: Path, num_parts: int = 1, part_id: int = 0) -> list[Path]:
    """The summary files in ``out`` that vbmd-rt did not write (a user's ``summary.csv``): never replaced
    without ``--overwrite``. Ours: a summary JSON of vbmd-rt, and a CSV whose hash that JSON records (or,
    from older versions, that starts with vbmd-rt's header)."""
    csv_name, json_name = naming.summary_names(num_parts, part_id)
    out = Path(out)
    foreign = []
    own = _own_summary_json(out / json_name)
    if (out / json_name).exists() or (out / json_name).is_symlink():
        if own is None:
            foreign.append(out / json_name)
    p = out / csv_name
    if p.exists() or p.is_symlink():
        rec = (own or {}).get("csv") or {}
        key = next((k for k in aim.CONTENT_KEYS if rec.get(k)), None)  # sha256; blake2b in earlier summaries
        try:
            ours = p.is_file() and (
                outputs.content_hash(p, key=key) == rec[key]
                if key
                else p.open("rb").readline().rstrip(b"\r\n") == ",".join(ROW_FIELDS).encode()
            )
        except OSError:
            ours = False
        if not ours:
            foreign.append(p)
    return foreign


def check_summary(out: Path, num_parts: int = 1, part_id: int = 0, overwrite: bool = False) -> None:
    """Before any work: refuse a batch whose summary would replace files vbmd-rt did not write."""
    csv_name, json_name = naming.summary_names(num_parts, part_id)
    if outputs.read_result(Path(out) / json_name) is not None:  # a scan's result, never overwritten
        raise OutputError(Path(out) / json_name, "is a scan's result, not a batch summary", "choose another -o")
    if not overwrite:
        for p in foreign_summaries(out, num_parts, part_id):
            raise OutputError(
                p,
                "exists and was not written by vbmd-rt (the batch summary would replace it)",
                "move it away, pass --overwrite to replace it, or choose another -o",
            )


def write_summary(
    out: Path,
    rows: list[dict],
    num_parts: int = 1,
    part_id: int = 0,
    extra: dict | None = None,
    overwrite: bool = False,
):
    """``OUT/summary.csv`` and ``OUT/summary.json`` (``summary.part-K-of-N.*`` for a shard), atomically.
    Files at those names that vbmd-rt did not write are refused without ``overwrite`` (``check_summary``)."""
    csv_name, json_name = naming.summary_names(num_parts, part_id)
    check_summary(out, num_parts, part_id, overwrite)
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
    body = buf.getvalue().encode("utf-8", "backslashreplace")
    summary["csv"] = {"file": csv_name, aim.FINGERPRINT_KEY: aim.content_hasher_of(body)}
    atomic_write_bytes(out / csv_name, body)
    atomic_write_bytes(out / json_name, (json.dumps(summary, indent=2) + "\n").encode())
    return out / csv_name, out / json_name


__all__ = [
    "Job",
    "Plan",
    "Outcome",
    "plan",
    "run",
    "scan_files",
    "shard",
    "check_names",
    "existing_result",
    "remove_partial",
    "process",
    "load_job",
    "run_local",
    "run_dask",
    "write_summary",
    "check_summary",
    "foreign_summaries",
    "ROW_FIELDS",
]
