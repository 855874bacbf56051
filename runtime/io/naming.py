"""File names: which files are scans, what a scan is called, and the names of its outputs.

Every output name the tool writes is spelled here, so the pipeline, the cohort runner, the watch service
and dataset discovery agree on them (and on which files are never taken as scans).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vbmd_rt.runtime.errors import printable

SCAN_SUFFIXES = (".aim", ".isq")
MASK_SUFFIXES = ("_GT", "_MASK", "_SEG")  # masks beside a scan: NAME_GT.AIM etc.
NOT_SCANS = (*MASK_SUFFIXES, "_PROB")  # AIMs that are never scans
SEG_SUFFIX = "_SEG.AIM"  # the MC2 mask of a run
CORT_SUFFIX = "_CORT_MASK.AIM"  # its cortical compartment (IPL's name)
TRAB_SUFFIX = "_TRAB_MASK.AIM"  # its trabecular compartment (IPL's name)
PROB_SUFFIX = "_PROB.AIM"  # --save-prob: probability x100 on the model grid
TRUTH_SUFFIX = ".truth.json"  # a phantom's truth
SUMMARY_STEM = "summary"  # OUT/summary.csv and summary.json of a batch


MAX_NAME_BYTES = 150  # NAME in bytes: NAME_SEG.AIM, .NAME_SEG.AIM.tmp-*, NAME.<time>.json stay under 255


def scan_name(path: Path) -> str:
    """NAME of ``NAME.AIM`` (also ``NAME.AIM;1`` as OpenVMS writes it): the stem of every output and lock.

    A stem too long for its outputs' names to fit a file system's 255 bytes is shortened: its first
    characters, ``~`` and 10 hex digits of a hash of the whole stem (so two long names stay apart).
    """
    name = path.name.split(";")[0]
    stem, ext = os.path.splitext(name)
    name = stem if ext.lower() in SCAN_SUFFIXES else name
    raw = os.fsencode(name)
    if len(raw) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.blake2b(raw, digest_size=5).hexdigest()
    keep, size = [], 0
    for ch in name:
        n = len(os.fsencode(ch))
        if size + n > MAX_NAME_BYTES - 11:
            break
        keep.append(ch)
        size += n
    return "".join(keep) + "~" + digest


def display_name(path: Path | str) -> str:
    """A file's name for one line of output: newlines and undecodable bytes escaped."""
    return printable(Path(path).name)


def is_scan_file(path: Path) -> bool:
    """An AIM or ISQ that is not a mask of another scan (``NAME_SEG.AIM``, ``_GT``, ``_MASK``, ``_PROB``)."""
    name = path.name.split(";")[0]
    stem, ext = os.path.splitext(name)
    return ext.lower() in SCAN_SUFFIXES and not stem.upper().endswith(NOT_SCANS)


def expand_inputs(items: list[str | Path], recursive: bool = False) -> list[Path]:
    """Files as given; folders become their scan files (masks named *_SEG/_GT/_MASK/_PROB are skipped),
    with ``recursive`` also those in their subfolders (a folder of per-patient folders)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(q for q in found if q.is_file() and is_scan_file(q)))
        else:
            out.append(p)
    return out


def has_nested_scans(folder: Path) -> bool:
    """A folder whose subfolders hold scans (for the hint to use ``--recursive``)."""
    return any(q.is_file() and is_scan_file(q) for q in Path(folder).rglob("*"))


def same_names(files: list[Path]) -> list[tuple[Path, Path]]:
    """Pairs of scans that would write the same outputs (NAME.AIM in two patient folders)."""
    seen: dict[str, Path] = {}
    clashes = []
    for f in files:
        n = scan_name(f)
        if n in seen and seen[n].resolve() != f.resolve():
            clashes.append((seen[n], f))
        seen.setdefault(n, f)
    return clashes


def outputs_for(name: str, out: Path, report_html: bool = False, save_prob: bool = False) -> dict[str, Path]:
    """The files ``vbmd-rt run`` writes for scan ``name``; the JSON last (its presence means done)."""
    files = {"prob": out / f"{name}{PROB_SUFFIX}"} if save_prob else {}
    files.update({"mask": out / f"{name}{SEG_SUFFIX}", **compartment_masks(name, out), "png": out / f"{name}.png"})
    if report_html:
        files["html"] = out / f"{name}.html"
    files["json"] = out / f"{name}.json"
    return files


def compartment_masks(name: str, out: Path) -> dict[str, Path]:
    """``NAME_CORT_MASK.AIM`` and ``NAME_TRAB_MASK.AIM``: the compartments ``run`` and ``measure`` write."""
    return {"cort": out / f"{name}{CORT_SUFFIX}", "trab": out / f"{name}{TRAB_SUFFIX}"}


def is_reserved_name(name: str) -> bool:
    """A scan NAME whose ``NAME.json`` would be a batch summary's file (``summary``, ``summary.part-K-of-N``)."""
    key = name.casefold()
    return key == SUMMARY_STEM or key.startswith(f"{SUMMARY_STEM}.part-")


def summary_names(num_parts: int = 1, part_id: int = 0) -> tuple[str, str]:
    """``summary.csv``/``.json``, or ``summary.part-K-of-N.*`` for one part of a sharded cohort."""
    stem = SUMMARY_STEM if num_parts == 1 else f"{SUMMARY_STEM}.part-{part_id}-of-{num_parts}"
    return f"{stem}.csv", f"{stem}.json"
