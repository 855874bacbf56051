"""A cohort planned, then run: what ``vbmd-rt run SCAN... -o OUT`` does, callable from Python.

``plan`` takes the inputs (files or folders), refuses before any work what would collide or replace a
user's files, and creates OUT; ``run`` processes the plan's scans here with one loaded model
(``batch.run_local``, or one folder per subject and session with ``--layout bids``) or on Dask
(``cohort.dask``), then writes the cohort's summary (``cohort.summary``) or the BIDS table last.
The CLI only parses its arguments, calls these two and prints (TotalSegmentator's script over its
``python_api`` is the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vbmd_rt.cohort.batch import Job, check_names, load_job, run_local, scan_files, shard
from vbmd_rt.cohort.summary import check_summary, write_summary
from vbmd_rt.runtime.errors import VbmdInputError


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
        from vbmd_rt.cohort.dask import run_dask  # Dask's import only where a cluster is asked for

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
