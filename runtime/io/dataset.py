"""Datasets on disk: scan + mask pairs (a folder or a CSV), and masks read onto a scan's grid.

A dataset is a folder or a CSV:

* folder: every scan ``NAME.AIM`` (or ``.ISQ``) with a mask beside it named ``NAME_GT.AIM``,
  ``NAME_MASK.AIM`` or ``NAME_SEG.AIM``, or an expert contour ``NAME.GOBJ`` (converted with aimio-py's
  GOBJ reader). Folders from ``vbmd-rt synth`` are datasets as they are.
* CSV: a header with ``scan`` and ``mask`` columns; relative paths are relative to the CSV.

Training (``vbmd_rt.export.data``) and evaluation (``vbmd_rt.evaluation``) both read datasets through here.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.io.naming import MASK_SUFFIXES, TRUTH_SUFFIX, is_scan_file, scan_name


class DatasetError(VbmdInputError):
    """A dataset folder or CSV that cannot be used for training."""


@dataclass
class Pair:
    name: str
    scan: Path
    mask: Path
    meta: dict = field(default_factory=dict)  # e.g. the phantom's truth JSON (motion grade, erosions)


def discover(source: str | Path) -> list[Pair]:
    """All scan/mask pairs of a folder or CSV, sorted by name."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _from_csv(source)
    if not source.is_dir():
        raise DatasetError(
            source,
            "is neither a folder nor a CSV of scan,mask pairs",
            "pass a folder from `vbmd-rt synth` or a CSV with scan and mask columns",
        )
    files = {p.name: p for p in source.iterdir() if p.is_file()}
    pairs = []
    for _, path in sorted(files.items()):
        if not is_scan_file(path):
            continue
        stem = scan_name(path)
        names = [f"{stem}{suffix}{ext}" for suffix in MASK_SUFFIXES for ext in (".AIM", ".aim")]
        mask = next((files[n] for n in [*names, f"{stem}.GOBJ", f"{stem}.gobj"] if n in files), None)
        if mask is None:
            continue
        meta = {}
        truth = source / f"{stem}{TRUTH_SUFFIX}"
        if truth.is_file():
            meta = json.loads(truth.read_text())
        pairs.append(Pair(stem, path, mask, meta))
    if not pairs:
        raise DatasetError(
            source,
            "holds no scan with a mask beside it",
            "name masks NAME_GT.AIM (or _MASK/_SEG, or NAME.GOBJ) next to NAME.AIM",
        )
    return pairs


def _from_csv(path: Path) -> list[Pair]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"scan", "mask"} <= set(rows[0]):
        raise DatasetError(path, "CSV needs a header with 'scan' and 'mask' columns", None)
    pairs = []
    for row in rows:
        scan = (path.parent / row["scan"]).resolve()
        mask = (path.parent / row["mask"]).resolve()
        for p in (scan, mask):
            if not p.is_file():
                raise DatasetError(p, "listed in the CSV but missing", f"fix {path.name}")
        pairs.append(Pair(row.get("name") or scan_name(scan), scan, mask))
    return pairs


def read_mask(path: Path, like: aim.AimHeader) -> np.ndarray:
    """A mask as a boolean (z, y, x) array on the scan's grid, placed by its position (AIM or GOBJ)."""
    if path.suffix.lower() == ".gobj":
        try:
            from py_aimio import read_gobj
        except ImportError:
            raise DatasetError(path, "GOBJ contours need aimio-py", "pip install 'vbmd-rt[dev]' (aimio-py)") from None
        data, meta = read_gobj(str(path), crop="tight")
        x, y, z = (int(v) for v in meta["position"])
        return place(data != 0, (x, y, z), like)
    m = aim.read_aim(path)
    return place(np.asarray(m.data) != 0, tuple(m.header.position), like)


def place(data: np.ndarray, position_xyz: tuple[int, int, int], like: aim.AimHeader) -> np.ndarray:
    """Put a (z, y, x) mask whose first voxel sits at ``position_xyz`` onto the grid of ``like``."""
    if data.shape == like.shape and tuple(position_xyz) == tuple(like.position):
        return data
    out = np.zeros(like.shape, dtype=bool)
    off = [int(position_xyz[i]) - int(like.position[i]) for i in (2, 1, 0)]  # (z, y, x)
    dst = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(off, data.shape, like.shape, strict=True))
    if any(d.stop <= d.start for d in dst):
        return out
    src = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, off, strict=True))
    out[dst] = data[src]
    return out
