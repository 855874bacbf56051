"""The watch service's health: ``OUT/.vbmd-rt/health.json``, rewritten by the service at every poll and by
its heartbeat during a long scan (state, counts, backend, time), and ``vbmd-rt health OUT``'s verdict on it
(the container's HEALTHCHECK): alive, stopped, stuck, gone, or unable to write its results.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import naming
from vbmd_rt.runtime.io.atomic import atomic_write_bytes


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def health_record(state: dict, backend: dict, in_dir: Path, done: int, failed: int, recovered: int, since: str) -> dict:
    """What ``health.json`` holds: the service's state (idle, busy with NAME, error, stopped), who and where
    it is, its backend, its counts and the time of this beat."""
    return {
        **state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "backend": backend,
        "time": time.time(),
        "time_iso": _now(),
        "done": done,
        "failed": failed,
        "recovered": recovered,
        "since": since,
        "in": str(in_dir),
        "vbmd_rt_version": __version__,
    }


def write_health_file(state_dir: Path, record: dict) -> None:
    """Rewrite ``STATE_DIR/health.json`` atomically (a full disk loses a beat, never the service)."""
    with contextlib.suppress(VbmdInputError):
        atomic_write_bytes(Path(state_dir) / naming.HEALTH_NAME, (json.dumps(record) + "\n").encode())


def device_of(backend_name: str) -> str:
    """``cpu`` or ``cuda``: where a backend of this name runs (TensorRT always on the GPU)."""
    return "cpu" if backend_name == "classical" or backend_name.endswith("-cpu") else "cuda"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def health(out: str | Path, max_age: float = 120.0) -> tuple[bool, str]:
    """Is the service serving ``out`` alive? Its process must exist (checked at once, where the health file
    was written on this host) and its heartbeat, refreshed every few seconds even during a long scan,
    must be younger than ``max_age``. The message says the state: idle, or busy with NAME since when."""
    p = Path(out) / naming.STATE_DIR / naming.HEALTH_NAME
    try:
        h = json.loads(p.read_text())
    except (OSError, ValueError):
        return False, f"{p}: no health file (is vbmd-rt watch running on this folder?)"
    age = time.time() - float(h.get("time", 0))
    counts = f"done {h.get('done')}, failed {h.get('failed')}"
    if h.get("status") == "stopped":
        return False, f"service stopped {age:.0f} s ago ({counts})"
    if h.get("host") == socket.gethostname() and isinstance(h.get("pid"), int) and not _pid_alive(h["pid"]):
        return False, f"the service's process {h['pid']} is gone (last beat {age:.0f} s ago, {counts})"
    if age > max_age:
        return False, f"health file is {age:.0f} s old (limit {max_age:.0f} s): the service is stuck or gone"
    if h.get("status") == "error":  # alive, but it cannot write its results (disk full, permissions)
        return False, f"cannot write results: {h.get('error')} (scans wait and are retried; {counts})"
    state = h.get("status")
    if state == "busy":
        state = f"busy with {h.get('scan')} since {h.get('busy_since')}"
    be = h.get("backend") or {}
    dev = f"{be.get('device')}, " if be.get("device") else ""
    on = f" on {dev}{be.get('name')} ({be.get('precision')})" if be.get("name") else ""
    return True, f"{state}{on}: {counts}, last beat {age:.0f} s ago"
