"""``run --layout bids``: outputs as a BIDS-style derivative, the way motionscorehrpqct and
timelapsed-hrpqct write theirs, so that vbmd-rt's results sit beside them in a lab's dataset.

::

    OUT/derivatives/vbmd-rt/
        dataset_description.json     DatasetType derivative, GeneratedBy vbmd-rt and its version
        vbmd.tsv, vbmd.json          one row per scan (participant_id, session_id, D100, ...); the JSON
                                     describes every column and gives its unit
        sub-<label>/[ses-<label>/]   the scan's outputs (NAME_SEG.AIM, NAME.json, NAME.png, ...)

The ``sub`` and ``ses`` entities come from the input's name (``sub-01_ses-2_hrpqct.AIM``) or from its
folders (``.../sub-01/ses-2/SCAN.AIM``), the name first; a scan that gives none goes to the derivative's
top folder. Per-scan files keep the input's name, so they carry its entities where it has them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.runtime.compartments import DEFINITIONS, PARAMETERS
from vbmd_rt.runtime.io import naming
from vbmd_rt.runtime.io.atomic import atomic_write_bytes

BIDS_VERSION = "1.9.0"
DERIVATIVE = Path("derivatives") / "vbmd-rt"
_ENTITY = re.compile(r"^(sub|ses)-([A-Za-z0-9]+)$")

# vbmd.tsv: (column, summary row key, description, unit or None)
UNITS = {"cm3": "mg HA/cm3", "mm": "mm", "mm2": "mm2"}  # from a column name's last part; fractions have none
COLUMNS = (
    ("participant_id", None, "The subject, from the input's name or folder (sub-<label>); n/a if none", None),
    ("session_id", None, "The session, from the input's name or folder (ses-<label>); n/a if none", None),
    ("scan", "scan", "The input scan's file name", None),
    ("status", "status", "done (computed now), skipped (reused from an earlier run) or failed", None),
    ("d100_mg_ha_cm3", "d100_mg_ha_cm3", "D100: mean calibrated density inside MC2's periosteal contour", "mg HA/cm3"),
    ("bone_volume_mm3", "bone_volume_mm3", "Volume inside MC2's periosteal contour", "mm3"),
    ("mean_slice_area_mm2", "mean_slice_area_mm2", "Mean cross-sectional area of MC2 over its slices", "mm2"),
    ("slices", "slices", "Slices with MC2", "slices"),
    *(
        (k, k, DEFINITIONS[k].split(" (")[0], UNITS.get(k.rsplit("_", 1)[-1]))
        for k in PARAMETERS  # the compartments of the whole MC2 (head and shaft: summary.csv, NAME.json)
    ),
    ("side", "side", "Hand side (left, right)", None),
    ("qc_status", "qc_status", "pass, or review (a person should look at the result first)", None),
    ("qc_reasons", "qc_reasons", "Why review, separated by |", None),
    ("total_s", "total_s", "Processing time of the scan", "s"),
    ("model_sha256", "model_sha256", "sha256 of the model that made the mask", None),
    ("vbmd_rt_version", "vbmd_rt_version", "vbmd-rt version", None),
    ("error", "error", "Why the scan failed", None),
)


def entities(path: Path) -> dict[str, str]:
    """``{"sub": label, "ses": label}`` from the scan's name, else from its folders (innermost first)."""
    found: dict[str, str] = {}
    for part in naming.scan_name(path).split("_"):
        m = _ENTITY.match(part)
        if m:
            found.setdefault(m.group(1), m.group(2))
    for folder in reversed(Path(path).parent.parts):
        m = _ENTITY.match(folder)
        if m:
            found.setdefault(m.group(1), m.group(2))
    return found


def root(out: Path) -> Path:
    return Path(out) / DERIVATIVE


def scan_dir(out: Path, path: Path) -> Path:
    """Where a scan's outputs go: ``OUT/derivatives/vbmd-rt/sub-X/ses-Y`` (as far as its entities go)."""
    e = entities(path)
    d = root(out)
    if "sub" in e:
        d = d / f"sub-{e['sub']}"
        if "ses" in e:
            d = d / f"ses-{e['ses']}"
    return d


def groups(out: Path, files: list[Path]) -> dict[Path, list[Path]]:
    """The scans by output folder, in their order."""
    by: dict[Path, list[Path]] = {}
    for f in files:
        by.setdefault(scan_dir(out, f), []).append(f)
    return by


def dataset_description() -> dict:
    return {
        "Name": "vbmd-rt: vBMD (D100) of the second metacarpal",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "vbmd-rt",
                "Version": __version__,
                "Description": "MC2 periosteal mask (AIM), D100 and QC per HR-pQCT hand scan",
            }
        ],
    }


def write_description(out: Path) -> Path:
    """``dataset_description.json`` of the derivative (rewritten: it names the version that ran last)."""
    path = root(out) / naming.BIDS_DESCRIPTION
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(dataset_description(), indent=2) + "\n").encode())
    return path


def _cell(v) -> str:
    if v is None or v == "":
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace("\t", " ").replace("\n", " ")


def write_table(out: Path, rows: list[dict], files: list[Path]) -> tuple[Path, Path]:
    """``vbmd.tsv`` (one row per scan, ``n/a`` for missing values, as BIDS writes them) and ``vbmd.json``
    (each column's description and unit)."""
    base = root(out)
    lines = ["\t".join(c for c, *_ in COLUMNS)]
    for r, f in zip(rows, files, strict=True):
        e = entities(f)
        cells = []
        for col, key, _, _ in COLUMNS:
            if col == "participant_id":
                v = f"sub-{e['sub']}" if "sub" in e else None
            elif col == "session_id":
                v = f"ses-{e['ses']}" if "ses" in e else None
            else:
                v = r.get(key)
            cells.append(_cell(v))
        lines.append("\t".join(cells))
    tsv, side = base / naming.BIDS_TABLE, base / naming.BIDS_TABLE_SIDECAR
    atomic_write_bytes(tsv, ("\n".join(lines) + "\n").encode())
    desc = {col: {"Description": d, **({"Units": u} if u else {})} for col, _, d, u in COLUMNS}
    atomic_write_bytes(side, (json.dumps(desc, indent=2) + "\n").encode())
    return tsv, side
