"""``vbmd-rt watch IN OUT``: the workstation service. Scans arrive from the scanner in IN; results appear
in OUT without anyone typing.

* **Exactly once, across restarts.** ``OUT/.vbmd-rt/journal.jsonl`` records ``start``, then ``done`` or
  ``failed`` for each scan, keyed by its name, size and modification time (fsynced before and after the
  work). A scan that was started but not finished (the service was killed) left nothing half-written
  (outputs are one transaction) and is done again; a scan done or failed is not taken again unless the
  file changes.
* **Arrival** (``runtime/arrival.py``). A file counts as arrived when ``NAME.AIM.done`` (the marker) newer than the file is beside
  it (a marker written before the copy, or left from an older export, is ignored), or when its size and
  modification time have not changed for ``stable_for`` seconds *and* its header parses completely (the
  declared data is all there). A stable file that still does not parse after ``5 * stable_for`` seconds
  is processed, and so fails with the reason. A scan whose file changes while it is processed is not
  written (``outputs.InputChanged``) and is taken again once stable. Hidden files, markers and masks are
  not scans.
* **Re-exports.** A scan that comes again under its name with other content is redone; the old result is
  kept in ``OUT/.vbmd-rt/history/`` and listed in the new JSON. Two files with one output name (``Y.AIM``
  and ``Y.ISQ``): the second is refused (``failed/``), never mixed into the first's outputs.
* **Poison files.** A scan during which the service died twice (killed by the OOM killer, a crash in a
  native library) goes to ``failed/`` with that reason and is not taken again: it never blocks the queue.
* **Failures** go to ``OUT/failed/NAME.error.json`` (reason and kind, no patient data) and the journal;
  the service goes on. Inputs are never moved, changed or deleted unless ``move_done`` is given. Outputs
  are written as one transaction (``outputs.Transaction``): a kill leaves nothing half-written, and only
  files vbmd-rt wrote are ever replaced.
* **Safety.** Symlinks and names that would leave IN are refused. One service per OUT (a lock file).
* **Health.** ``OUT/.vbmd-rt/health.json`` is rewritten at every poll (state, counts, time): the
  container's HEALTHCHECK runs ``vbmd-rt health OUT``, which fails when it is stale (``runtime/health.py``).
* **Stop.** SIGTERM or SIGINT: the scan being processed is finished, then the service exits 0.

Log lines name scans by file name only; the processing log's patient fields never reach them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.runtime import arrival
from vbmd_rt.runtime.arrival import MARKER, PARSE_GRACE, Arrival, is_marker  # noqa: F401 - re-exported
from vbmd_rt.runtime.errors import OutputError, OutputUnavailable, VbmdInputError, print_traceback_if_debug
from vbmd_rt.runtime.health import device_of, health, health_record, write_health_file  # noqa: F401 - re-exported
from vbmd_rt.runtime.io import aim, naming, outputs
from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir

STATE_DIR = naming.STATE_DIR
MAX_ATTEMPTS = 2  # a scan during which the service died this often goes to failed/
ENVIRONMENTAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO}  # the machine's fault
RETRY_POLLS = 5  # an environmental failure (OUT full or not writable) is retried after this many polls


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Journal:
    """Append-only JSON lines; the last event per scan wins. A torn last line (a kill mid-write) is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self.state: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    e = json.loads(line)
                    self.state[e["name"]] = e
                except (ValueError, KeyError, TypeError):
                    continue
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the service's life

    def record(self, event: str, name: str, key: str, **extra) -> None:
        e = {"event": event, "name": name, "key": key, "time": _now(), **extra}
        self._f.write(json.dumps(e) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.state[name] = e

    def unfinished(self) -> list[dict]:
        return [e for e in self.state.values() if e["event"] == "start"]

    def settled(self, name: str, key: str) -> bool:
        e = self.state.get(name)
        return e is not None and e["key"] == key and e["event"] in ("done", "failed")

    def settled_stat(self, name: str, stat_key: str) -> bool:
        """Settled, and the file is still the one it was settled with (inode, size, mtime and ctime): no
        need to hash it again. A copy over it, even with ``touch -r``, changes its ctime."""
        e = self.state.get(name)
        return e is not None and e.get("stat") == stat_key and e["event"] in ("done", "failed")

    def close(self) -> None:
        self._f.close()


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    recovered: int = 0
    started: str = field(default_factory=_now)


class Watcher:
    """Polls IN, processes arrived scans with ``process(path) -> result dict`` into OUT."""

    def __init__(
        self,
        in_dir: str | Path,
        out_dir: str | Path,
        process,
        stable_for: float = 10.0,
        poll: float = 2.0,
        move_done: str | Path | None = None,
        log=print,
        heartbeat: float = 5.0,
        backend_info: dict | None = None,
    ):
        self.in_dir = Path(in_dir)
        self.heartbeat = heartbeat  # seconds between health-file beats, also while a long scan runs
        self.backend_info = backend_info or {}  # which backend and device serve (shown by `vbmd-rt health`)
        self._state: dict = {"status": "starting"}
        self._beat_lock = threading.Lock()
        self.out = Path(out_dir)
        self.process = process
        self.stable_for = stable_for
        self.poll = poll
        self.move_done = Path(move_done) if move_done else None
        self.log = log
        self.stop = threading.Event()
        self.counts = Counts()
        self.arrival = Arrival(stable_for)  # when a file has arrived (runtime.arrival)
        self._hashes: dict[str, tuple[str, str]] = {}  # name -> (stat key, content key): hashed once a version
        self._retry_at: dict[str, float] = {}  # name -> when an environmental failure is retried
        self._env_error: str | None = None
        self._refused: set[tuple[str, str]] = set()
        if not self.in_dir.is_dir():
            raise VbmdInputError(
                self.in_dir, "input folder does not exist or is not a folder", "give the folder the scanner writes to"
            )
        check_writable_dir(self.out)
        if self.move_done:
            check_writable_dir(self.move_done)
        self.state = check_writable_dir(self.out / STATE_DIR)
        self.failed_dir = self.out / naming.FAILED_DIR
        self._lock = self._take_lock()
        self.journal = Journal(self.state / "journal.jsonl")

    # ------------------------------------------------------------------ setup
    def _take_lock(self):
        import fcntl

        f = open(self.state / "lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise OutputError(
                self.out,
                "another vbmd-rt watch already serves this output folder",
                "stop it first, or give another OUT",
            ) from None
        return f

    def recover(self) -> None:
        """Scans started but not finished (the service was killed): do them again, or, the second time the
        service died on one, send it to failed/ (a poison file must not block the queue)."""
        for e in self.journal.unfinished():
            attempt = int(e.get("attempt", 1))
            if attempt >= MAX_ATTEMPTS:  # a poison file: it must not take the service down again
                self._fail(
                    self.in_dir / e["name"],
                    e["key"],
                    "crash",
                    f"the service died {attempt} times while processing this scan (killed, e.g. by the "
                    "out-of-memory killer, or crashed)",
                    "check the scan (vbmd-rt info); give the service more memory or lower --max-memory",
                    stat=e.get("stat"),
                )
                continue
            self.journal.record("abandoned", e["name"], e["key"], attempt=attempt)
            self.counts.recovered += 1
            self.log(f"recovered: {e['name']} was cut off (nothing of it was written); it will be redone")
        for tmp in self.out.glob(".*.tmp-*"):  # temporaries of atomic writes cut off by a kill
            with contextlib.suppress(OSError):
                tmp.unlink()
        with contextlib.suppress(OSError, VbmdInputError):
            outputs.clean_staging(self.out)  # staged files of transactions cut off by a kill

    def _retire_stale(self, path: Path) -> None:
        """A failed re-export: the result of the earlier version must not stand as this scan's (to history)."""
        name = naming.scan_name(path)
        try:
            fp = outputs.fingerprint(path)
        except (OSError, VbmdInputError):
            fp = None
        with contextlib.suppress(OSError, VbmdInputError), outputs.scan_lock(self.out, name):
            if outputs.retire_stale(self.out, name, naming.result_name(name), path.name, fp):
                self.log(f"{path.name}: the result of its earlier version was moved to {STATE_DIR}/history")

    def _owner(self, name: str) -> str | None:
        """The file that already writes the outputs of ``name``'s scan name (``Y.AIM`` for ``Y.ISQ``)."""
        key = naming.scan_name(Path(name)).casefold()
        for other, e in self.journal.state.items():
            if other != name and e["event"] in ("start", "done", "abandoned", "retry"):
                if naming.scan_name(Path(other)).casefold() == key:
                    return other
        return None

    # ------------------------------------------------------------------ one pass
    def _settled(self, name: str, stat_key: str) -> bool:
        """Done or failed, for this very version of the file (by its stat, or by its content key hashed)."""
        if self.journal.settled_stat(name, stat_key):
            return True
        cached = self._hashes.get(name)
        return cached is not None and cached[0] == stat_key and self.journal.settled(name, cached[1])

    def _key(self, path: Path, st: os.stat_result) -> str | None:
        """The journal's key: size, mtime and a sha256 of the whole content (``outputs.fingerprint``, the one
        key of run and cohorts), hashed once per version of the file. None while it changes under us."""
        sk = arrival.stat_key(st)
        cached = self._hashes.get(path.name)
        if cached and cached[0] == sk:
            return cached[1]
        try:
            fp = outputs.fingerprint(path)
        except (OSError, VbmdInputError):
            return None
        key = f"{fp['size']}:{fp['mtime_ns']}:{fp[aim.FINGERPRINT_KEY]}"
        if sk != arrival.stat_key(os.stat(path, follow_symlinks=False)):
            return None
        self._hashes[path.name] = (sk, key)
        return key

    def candidates(self) -> list[tuple[Path, str]]:
        """Arrived scans not yet settled, oldest first; refuses (once) what must not be read."""
        found = []
        now = time.monotonic()
        try:
            entries = list(os.scandir(self.in_dir))
        except OSError as e:
            self.log(f"warning: cannot list the input folder ({e.strerror}); retrying")
            return []
        names = {e.name for e in entries}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or is_marker(name):
                continue
            p = Path(entry.path)
            if not naming.is_scan_file(p):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished
            key = arrival.stat_key(st)
            if self._settled(name, key):
                continue
            if self._retry_at.get(name, 0.0) > now:  # an environmental failure (disk full): retried later
                continue
            if (
                entry.is_symlink()
                or os.sep in name
                or name in ("..", ".")
                or not p.resolve().is_relative_to(self.in_dir.resolve())
            ):
                if (name, key) not in self._refused:
                    self._refused.add((name, key))
                    self._fail(
                        p,
                        key,
                        "input",
                        "is a symbolic link or leaves the input folder: refused",
                        "copy the scan itself into the input folder",
                        stat=key,
                    )
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            if self.arrival.arrived(p, st, names, now):
                content = self._key(p, st)
                if content is None or self.journal.settled(name, content):
                    continue
                found.append((st.st_mtime_ns, p, content))
        return [(p, key) for _, p, key in sorted(found)]

    def handle(self, path: Path, key: str) -> bool:
        """Process one arrived scan; True when done."""
        name = path.name
        try:  # the file may have changed since it was listed: then it has not arrived yet
            st = path.stat(follow_symlinks=False)
            if self._key(path, st) != key:
                return False
        except OSError:
            return False
        stat_key = arrival.stat_key(st)
        owner = self._owner(name)
        if owner is not None:
            self._fail(
                path,
                key,
                "input",
                f"has the same output name as {owner}, which this service already processes into this folder",
                "rename one of them",
                retire=False,
                stat=stat_key,
            )
            return False
        prev = self.journal.state.get(name)
        attempt = 1
        if prev is not None and prev["event"] == "abandoned" and prev["key"] == key:
            attempt = int(prev.get("attempt", 1)) + 1
        self.journal.record("start", name, key, attempt=attempt, stat=stat_key)
        self.write_health("busy", scan=name, busy_since=_now())
        t0 = time.perf_counter()
        try:
            result = self.process(path)
        except outputs.InputChanged:
            self.journal.record("changed", name, key)  # not arrived after all: taken again once stable
            self.arrival.forget(name)
            self.log(f"{name} changed while it was processed; nothing written, it will be taken again")
            return False
        except OutputUnavailable as e:  # OUT full or not writable: not the scan's fault; retried once it is fixed
            self._environment(path, key, e)
            return False
        except VbmdInputError as e:
            self._fail(path, key, "input", e.problem, e.fix, shown=str(e), stat=stat_key)
            return False
        except Exception as e:  # noqa: BLE001 - one bad scan must not stop the service
            if isinstance(e, OSError) and e.errno in ENVIRONMENTAL_ERRNOS:  # a write of OUT, unwrapped
                self._environment(path, key, OutputUnavailable(self.out, f"cannot write ({e.strerror})", "free space"))
                return False
            self._fail(
                path,
                key,
                "internal",
                f"{type(e).__name__}: {e}",
                "report this with the scan's header (vbmd-rt info); set VBMD_RT_DEBUG=1 for a traceback",
                stat=stat_key,
            )
            print_traceback_if_debug()
            return False
        self._retry_at.pop(name, None)
        self._env_error = None
        with contextlib.suppress(OSError):
            (self.failed_dir / naming.error_name(naming.scan_name(path))).unlink()  # an earlier failure is stale
        self.journal.record(
            "done",
            name,
            key,
            d100_mg_ha_cm3=result.get("d100_mg_ha_cm3"),
            seconds=round(time.perf_counter() - t0, 3),
            stat=stat_key,
        )
        self.counts.done += 1
        d = result.get("d100_mg_ha_cm3")
        self.log(f"done: {name}: D100 {'n/a' if d is None else f'{d:.1f}'} mg HA/cm3, {time.perf_counter() - t0:.1f} s")
        if self.move_done:
            self._move(path)
        return True

    def _fail(
        self,
        path: Path,
        key: str,
        kind: str,
        problem: str,
        fix: str | None,
        shown: str | None = None,
        retire: bool = True,
        stat: str | None = None,
    ):
        name = path.name
        err = {
            "scan": name,
            "kind": kind,
            "reason": problem,
            "fix": fix,
            "time": _now(),
            "vbmd_rt_version": __version__,
        }
        try:
            check_writable_dir(self.failed_dir)
            atomic_write_bytes(
                self.failed_dir / naming.error_name(naming.scan_name(path)), (json.dumps(err, indent=2) + "\n").encode()
            )
        except VbmdInputError as e:
            self.log(f"warning: cannot write the failed list ({e})")
        if retire:
            self._retire_stale(path)
        self.journal.record("failed", name, key, kind=kind, **({"stat": stat} if stat else {}))
        self.counts.failed += 1
        self.log(f"failed: {shown or f'{name}: {problem}'}")

    def _environment(self, path: Path, key: str, e: OutputUnavailable) -> None:
        """A failure of OUT (disk full, permissions), not of the scan: nothing goes to failed/, the scan stays
        unsettled and is retried after a back-off, and health turns red until a scan is written again."""
        name = path.name
        self.journal.record("retry", name, key, reason=e.problem)
        self.arrival.forget(name)
        self._retry_at[name] = time.monotonic() + self.poll * RETRY_POLLS
        self._env_error = str(e)
        self.write_health("error", error=str(e), scan=name)
        self.log(f"cannot write the result of {name}: {e}; it will be retried")

    def _move(self, path: Path) -> None:
        assert self.move_done is not None
        try:
            shutil.move(str(path), str(self.move_done / path.name))
            marker = path.with_name(path.name + MARKER)
            if marker.exists():
                shutil.move(str(marker), str(self.move_done / marker.name))
        except OSError as e:
            self.log(f"warning: {path.name} is done but could not be moved ({e.strerror})")

    def write_health(self, status: str | None = None, **state) -> None:
        """Rewrite OUT/.vbmd-rt/health.json; with a status, that becomes the state the beats repeat."""
        with self._beat_lock:
            if status is not None:
                self._state = {"status": status, **state}
            write_health_file(self.state, self._health_record())

    def _beat(self) -> None:
        """The heartbeat thread: the health file stays fresh while the main thread is busy with a scan."""
        while not self._stopped_beating.wait(self.heartbeat):
            self.write_health()

    def _health_record(self) -> dict:
        c = self.counts
        return health_record(self._state, self.backend_info, self.in_dir, c.done, c.failed, c.recovered, c.started)

    # ------------------------------------------------------------------ loop
    def run(self, once: bool = False) -> Counts:
        """Serve until stopped (SIGTERM/SIGINT or ``self.stop``); with ``once``, until IN has nothing left."""
        self.recover()
        self._stopped_beating = threading.Event()
        beat = threading.Thread(target=self._beat, name="vbmd-rt-heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stop.is_set():
                if self._env_error is None:
                    self.write_health("idle")
                else:
                    self.write_health("error", error=self._env_error)
                todo = self.candidates()
                for path, key in todo:
                    if self.stop.is_set():
                        break
                    self.handle(path, key)
                if once and not todo and not self._waiting():
                    break
                if not todo:
                    self.stop.wait(self.poll)
        finally:
            self._stopped_beating.set()
            beat.join()
            self.write_health("stopped")
            self.journal.close()
            self._lock.close()
        return self.counts

    def _waiting(self) -> bool:
        """Files seen that have not arrived yet (``once`` waits for them to settle, or their marker)."""
        return self.arrival.waiting(self.in_dir, self._settled, self._refused)

    def install_signal_handlers(self) -> None:
        def _stop(signum, frame):
            self.log(f"signal {signal.Signals(signum).name}: finishing the current scan, then stopping")
            self.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
