"""Atomic output files: write to a temporary file beside the target, then rename.

A reader never sees a half-written output, and a crash leaves at most a hidden
``.NAME.tmp-*`` file that the next run may delete, never a corrupt ``NAME``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

from vbmd_rt.runtime.errors import OutputError, OutputUnavailable

__all__ = ["atomic_write", "atomic_write_bytes", "check_writable_dir"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = True):
    """Context manager yielding a binary file object; on success it replaces ``path``."""
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputError(path, "output already exists", "pass --overwrite to replace it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as e:
        raise OutputUnavailable(
            path.parent, f"cannot write here ({e.strerror})", "choose a writable output folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600: follow the umask as a plain open would
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputUnavailable(path, f"cannot write ({e.strerror})", "check free space and permissions") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask_mode() -> int:
    """0666 less the process's umask (read without changing it where /proc tells)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: read it by setting it, and put it back at once (writers run on threads)
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    with atomic_write(path, overwrite=overwrite) as f:
        f.write(data)


def check_writable_dir(path: str | os.PathLike, create: bool = True) -> Path:
    """Make sure ``path`` is a folder we can write into (creating it if asked)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(path, "output path exists and is not a folder", "give a folder for -o")
    if not path.exists():
        if not create:
            raise OutputError(path, "output folder does not exist", "create it first")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputUnavailable(
                path, f"cannot create output folder ({e.strerror})", "choose a writable location"
            ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputUnavailable(path, "output folder is not writable", "choose a writable output folder")
    return path
