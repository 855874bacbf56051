"""Cohorts on Dask (``--cluster local`` or ``tcp://HOST:PORT``): one task per scan; each worker process
loads the model and backend once and keeps them; a task that crashes is retried (``--retries``), a worker
that dies has its scans rescheduled, and bad input fails only its own scan. A task is ``batch.process``:
the same resume, locking and rows as a local run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from vbmd_rt.api import Predictor
from vbmd_rt.cohort.batch import Job, load_job, pin_worker_gpu, process
from vbmd_rt.cohort.summary import row
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.parallel import cores

_WORKER: dict = {}  # per worker process: the job key -> its Predictor, loaded once


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


def worker_threads(given: int | None, workers: int) -> int | None:
    """CPU threads for each of ``workers`` local worker processes: the user's ``--threads``, else the cores
    shared out (ONNX Runtime and vbmd-rt's own stages would otherwise each take every core in every worker).
    None (each takes every core) for one worker."""
    if given:
        return given
    return None if workers <= 1 else max(1, cores() // workers)


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
        job = dataclasses.replace(job, gpus=gpus, threads=worker_threads(job.threads, n))
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
