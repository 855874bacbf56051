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
GT_SUFFIX = "_GT.AIM"  # a phantom's true MC2 mask
RESULT_SUFFIX = ".json"  # NAME.json: the result (its presence means done)
PICTURE_SUFFIX = ".png"  # NAME.png: the picture
REPORT_SUFFIX = ".html"  # NAME.html: the report page (--report html)
ERROR_SUFFIX = ".error.json"  # the watch service's OUT/failed/NAME.error.json
SUMMARY_STEM = "summary"  # OUT/summary.csv and summary.json of a batch
STATE_DIR = ".vbmd-rt"  # OUT/.vbmd-rt/: locks, staging folders, history, the watch service's state
FAILED_DIR = "failed"  # the watch service's OUT/failed/
HEALTH_NAME = "health.json"  # OUT/.vbmd-rt/health.json: the watch service's heartbeat
MANIFEST_NAME = "manifest.json"  # in a staging folder: the files it holds and their hashes
PREVIOUS_NAME = "previous.json"  # in a staging folder: the result its commit took down before switching files
EXPORT_EXTENSIONS = {"nifti": ".nii.gz", "nii": ".nii", "mha": ".mha"}  # --export: scan and mask for 3D Slicer
BIDS_DESCRIPTION = "dataset_description.json"  # --layout bids: the derivative's description
BIDS_TABLE, BIDS_TABLE_SIDECAR = "vbmd.tsv", "vbmd.json"  # --layout bids: a row per scan, and its columns
PREVIEW_NAME = "preview.png"  # vbmd-rt synth --preview


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


def outputs_for(
    name: str, out: Path, report_html: bool = False, save_prob: bool = False, export: str | None = None
) -> dict[str, Path]:
    """The files ``vbmd-rt run`` writes for scan ``name``; the JSON last (its presence means done). With
    ``export``, the scan and mask for 3D Slicer (``export_names``) before the JSON."""
    files = {"prob": out / f"{name}{PROB_SUFFIX}"} if save_prob else {}
    files.update({"mask": out / f"{name}{SEG_SUFFIX}", **compartment_masks(name, out)})
    files.update(_pictures(name, out, report_html, export))
    return files


def measure_outputs_for(name: str, out: Path, report_html: bool = False, export: str | None = None) -> dict[str, Path]:
    """The files ``vbmd-rt measure`` writes for scan ``name``: ``run``'s, less the mask it was given (and
    the probabilities); the JSON last."""
    return {**compartment_masks(name, out), **_pictures(name, out, report_html, export)}


def _pictures(name: str, out: Path, report_html: bool, export: str | None) -> dict[str, Path]:
    files = {"png": out / f"{name}{PICTURE_SUFFIX}"}
    if report_html:
        files["html"] = out / f"{name}{REPORT_SUFFIX}"
    if export:
        files.update({n: out / n for n in export_names(name, export)})
    files["json"] = out / result_name(name)
    return files


def result_name(name: str) -> str:
    """``NAME.json``: the result of scan ``name``."""
    return f"{name}{RESULT_SUFFIX}"


def error_name(name: str) -> str:
    """``NAME.error.json``: why the watch service could not process scan ``name``."""
    return f"{name}{ERROR_SUFFIX}"


def history_name(name: str, stamp: str) -> str:
    """``NAME.<time>.json``: a replaced result, kept in ``OUT/.vbmd-rt/history/``."""
    return f"{name}.{stamp}{RESULT_SUFFIX}"


def export_names(name: str, fmt: str) -> list[str]:
    """``--export``: ``NAME.nii.gz``, ``NAME_SEG.nii.gz`` and the mask's sidecar ``NAME_SEG.json`` (``.nii``
    for ``nii``; ``.mha`` has no sidecar). The scan's sidecar is the result JSON."""
    ext = EXPORT_EXTENSIONS[fmt]
    seg = name + SEG_SUFFIX.rsplit(".", 1)[0]  # NAME_SEG
    return [f"{name}{ext}", f"{seg}{ext}"] + ([] if fmt == "mha" else [f"{seg}{RESULT_SUFFIX}"])


def legacy_outputs(name: str) -> list[str]:
    """What a result of vbmd-rt 0.1 (no manifest) may own: its mask, picture, report and probabilities."""
    return [f"{name}{SEG_SUFFIX}", f"{name}{PICTURE_SUFFIX}", f"{name}{REPORT_SUFFIX}", f"{name}{PROB_SUFFIX}"]


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
