"""The AIM processing log: parse it, keep it, append to it, and never leak patient fields.

A Scanco processing log is ASCII text of 80-column lines: ``!``-lines are separators and
comments, the other lines are ``key<2+ spaces>value``. IPL appends one block per operation.
The log carries patient identifiers (name, patient index, original file path, dates); only
the whitelisted scanner and calibration fields below are ever shown by default.
"""

from __future__ import annotations

import re
import time

__all__ = [
    "parse_log",
    "append_entry",
    "field_line",
    "SEPARATOR",
    "PUBLIC_FIELDS",
    "public_fields",
    "public_log",
    "scan_date",
    "values_block",
    "append_values",
    "OBJECTS",
]

# Fields that describe the scanner, the acquisition and the calibration: safe to print.
PUBLIC_FIELDS = (
    "Site",
    "Scanner ID",
    "Scanner type",
    "Position Slice 1 [um]",
    "No. samples",
    "No. projections per 180",
    "Scan Distance [um]",
    "Integration time [us]",
    "Reference line [um]",
    "Reconstruction-Alg.",
    "Energy [V]",
    "Intensity [uA]",
    "Mu_Scaling",
    "Calibration Data",
    "Calib. default unit type",
    "Density: unit",
    "Density: slope",
    "Density: intercept",
    "HU: mu water",
    "Parameter name",
    "Parameter units",
)

_SPLIT = re.compile(r"\s{2,}")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


def _value(text: str):
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_log(text: str) -> dict[str, object]:
    """Parse a processing log into ``{key: value}``; numbers become int/float.

    Line ends may be LF, CRLF or CR alone (old Macintosh exports). Later blocks win over earlier ones for repeated keys (IPL appends the newest operation
    last). Lines without a two-space separator are kept under their own text with value "".
    """
    out: dict[str, object] = {}
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):  # CRLF, CR-only and LF logs alike
        line = raw.rstrip("\0").strip()
        if not line or line.startswith("!"):
            continue
        parts = [p for p in _SPLIT.split(line) if p]
        if len(parts) == 1:
            out.setdefault(parts[0], "")
        elif len(parts) == 2:
            out[parts[0]] = _value(parts[1])
        else:
            out[parts[0]] = [_value(p) for p in parts[1:]]
    return out


def public_fields(parsed: dict[str, object]) -> dict[str, object]:
    """The subset of a parsed log that identifies no patient (scanner, calibration)."""
    return {k: parsed[k] for k in PUBLIC_FIELDS if k in parsed}


def public_log(text: str) -> str:
    """The log with only its public lines: separators and the fields of ``PUBLIC_FIELDS`` (scanner,
    acquisition, calibration). For outputs other than the mask AIM (``NAME_PROB.AIM``): no patient name,
    index, file path, date or free text reaches them."""
    keep: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.rstrip("\0").rstrip()
        if line.startswith("!"):
            if not keep or keep[-1] != SEPARATOR:
                keep.append(SEPARATOR)  # a comment line may carry free text: only the separator is kept
            continue
        parts = [p for p in _SPLIT.split(line.strip()) if p]
        if len(parts) >= 2 and parts[0] in PUBLIC_FIELDS:
            keep.append(line)
    return "\n".join(keep) + "\n" if keep else ""


SEPARATOR = "!" + "-" * 79


def field_line(key: str, value: object) -> str:
    """One 80-column ``key value`` line as IPL writes it (key padded to 30 columns)."""
    return f"{key:<30}{value}"[:80].ljust(80)


def append_entry(log: str, tool: str, operation: str, when: float | None = None) -> str:
    """Return ``log`` with one IPL-style block appended naming ``tool`` and ``operation``.

    The original text (including its trailing separator) is kept byte for byte; a missing
    final newline is added. The block records the tool and version, the time (VMS style, as
    IPL writes it) and what was done, in 80-column lines.
    """
    body = log.rstrip("\0")
    if body and not body.endswith("\n"):
        body += "\n"
    t = time.gmtime(when) if when is not None else time.localtime()
    stamp = time.strftime("%d-%b-%Y %H:%M:%S", t).upper() + ".00"
    lines = []
    if not body.rstrip().endswith(SEPARATOR):
        lines.append(SEPARATOR)
    lines += [field_line("Created by", tool), field_line("Time", stamp)]
    # Long descriptions wrap over several "Operation" lines rather than breaking 80 columns.
    words, cur = operation.split(), ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > 50:
            lines.append(field_line("Operation", cur))
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(field_line("Operation", cur))
    lines.append(SEPARATOR)
    return body + "\n".join(lines) + "\n"


# What a mask's values are, in IPL's words (its /threshold and /gobj_maskaimpeel_ow write these).
OBJECTS = ("Segmented Objects", "[object]")


def values_block(name: str, units: str, lo: float, hi: float) -> list[str]:
    """The lines that say what a file's values are when they are not the scan's densities (a mask's
    objects, a probability): IPL's parameter lines (``Parameter name``, ``Scaled by factor 1``, the data
    range), then an identity scaling (``Mu_Scaling 1``, ``Density: slope 1``, ``Density: intercept 0``)
    that overrides the scan's calibration further up the log (the last entry of a key wins).

    Without it, readers that rescale stored values by the log's calibration take the mask for
    densities: ITK's Scanco reader (itk-ioscanco) rescales uncompressed data (char) to HU when
    ``Mu_Scaling`` > 1 and ``HU: mu water`` > 0, or by ``Density: slope / Mu_Scaling`` and the intercept
    otherwise, unless that slope is 1 and the intercept 0; a char 0/127 mask then reads as 24/87.
    """
    return [
        field_line("Parameter name", name),
        field_line("Parameter units", units),
        field_line("Scaled by factor", 1),
        field_line("Minimum data value", f"{lo:.5f}"),
        field_line("Maximum data value", f"{hi:.5f}"),
        "! The values above are stored as they are, not densities: identity scaling for".ljust(80),
        "! readers that rescale by the log's calibration (Mu_Scaling, Density: slope).".ljust(80),
        field_line("Mu_Scaling", 1),
        field_line("Density: slope", "1.00000000e+00"),
        field_line("Density: intercept", "0.00000000e+00"),
    ]


def append_values(log: str, name: str, units: str, lo: float, hi: float) -> str:
    """``log`` with :func:`values_block` appended (between separators); the original text kept."""
    body = log.rstrip("\0")
    if body and not body.endswith("\n"):
        body += "\n"
    lines = [] if body.rstrip().endswith(SEPARATOR) else [SEPARATOR]
    return body + "\n".join([*lines, *values_block(name, units, lo, hi), SEPARATOR]) + "\n"


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def scan_date(log: str) -> str | None:
    """The date of the log's first ``Time`` line (IPL writes it when the scan's AIM is created from the
    ISQ), as ``YYYY-MM-DD``; the date alone, no time of day, no other field. ``None`` when absent."""
    import re

    m = re.search(r"^Time\s+(\d{1,2})-([A-Z]{3})-(\d{4})", log or "", re.M | re.I)
    if not m or m.group(2).upper() not in _MONTHS:
        return None
    return f"{m.group(3)}-{_MONTHS.index(m.group(2).upper()) + 1:02d}-{int(m.group(1)):02d}"
