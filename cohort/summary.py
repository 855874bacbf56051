"""A cohort's summary: a row per scan (``row``) and ``OUT/summary.csv`` and ``OUT/summary.json``
(``summary.part-K-of-N.*`` for one part of a sharded cohort), never replacing a user's files of those names.

Rows never hold patient fields: the scan's file name, numbers, status and error text only. A row's values
come from the scan's result record (``runtime.result.Record.summary_values``).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from pathlib import Path

from vbmd_rt import __version__
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
    found = _foreign(Path(out), csv_name, json_name)
    if found:  # a run beside this one on the same -o may have written its pair (CSV, then JSON) between the looks
        found = _foreign(Path(out), csv_name, json_name)
    return found


def _foreign(out: Path, csv_name: str, json_name: str) -> list[Path]:
    """``foreign_summaries``'s one look. The JSON is found present before it is read: one written by another
    run between the read and the look for it would read as no summary of ours."""
    foreign = []
    present = (out / json_name).exists() or (out / json_name).is_symlink()
    own = _own_summary_json(out / json_name) if present else None
    if present and own is None:
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
