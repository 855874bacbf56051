"""Error types a user can cause, and their one-line messages.

Every error here is something the person running vbmd-rt can fix (a wrong file, a missing
calibration, a folder that is not writable). The CLI prints ``str(error)`` as one line on
stderr and exits with code 2. Messages name the file (by its path, never by patient fields
of its processing log) and say what to do.
"""

from __future__ import annotations

import os


def printable(text: str) -> str:
    """``text`` safe for one output line: control characters (a newline in a file name) and the undecodable
    bytes of a non-UTF-8 name (surrogate escapes) are written as backslash escapes."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte of a non-UTF-8 name, as os.fsdecode keeps it
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


class VbmdInputError(Exception):
    """Bad input from the user: one line naming the file and the fix."""

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        tail = f" ({fix})" if fix else ""
        super().__init__(printable(f"{where}{problem}{tail}"))  # one line, whatever the file is called

    def __reduce__(self):  # picklable across worker processes (Dask, process pools)
        return (self.__class__, (self.path, self.problem, self.fix))


class AimFormatError(VbmdInputError):
    """The file is not a readable AIM/ISQ file (or is truncated, or claims absurd sizes)."""


class CalibrationError(VbmdInputError):
    """Density is needed but the scan's header has no (complete) density calibration."""


class OutputError(VbmdInputError):
    """An output location cannot be written (not writable, exists without --overwrite, disk full)."""


class OutputUnavailable(OutputError):
    """The output location fails for a reason of the machine, not of the input (disk full, no permission, a
    read-only or failing file system): the same scan can succeed once that is fixed (the watch service
    retries it, and never lists it as bad input)."""


DEBUG_ENV = "VBMD_RT_DEBUG"


def debug_enabled() -> bool:
    """``VBMD_RT_DEBUG=1``: show tracebacks of internal errors (the one place this switch is read)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def print_traceback_if_debug() -> None:
    if debug_enabled():
        import traceback

        traceback.print_exc()
