"""``vbmd-rt watch IN OUT``: the workstation service. Scans arrive from the scanner in IN; results appear
in OUT without anyone typing.

* **Exactly once, across restarts.** ``OUT/.vbmd-rt/journal.jsonl`` records ``start``, then ``done`` or
  ``failed`` for each scan, keyed by its name, size and modification time (fsynced before and after the
  work). A scan that was started but not finished (the service was killed) left nothing half-written
  (outputs are one transaction) and is done again; a scan done or failed is not taken again unless the
  file changes.
* **Arrival.** A file counts as arrived when ``NAME.AIM.done`` (the marker) newer than the file is beside
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
  container's HEALTHCHECK runs ``vbmd-rt health OUT``, which fails when it is stale.
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
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.runtime.errors import OutputError, OutputUnavailable, VbmdInputError, print_traceback_if_debug
from vbmd_rt.runtime.io import aim, naming, outputs
from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir

STATE_DIR = naming.STATE_DIR
MARKER = ".done"
MAX_ATTEMPTS = 2  # a scan during which the service died this often goes to failed/
PARSE_GRACE = 5  # a stable file that does not parse is processed (and fails) after this many stable_for
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
        self._seen: dict[str, tuple[str, float]] = {}  # name -> (stat key, first time this key was seen)
        self._hashes: dict[str, tuple[str, str]] = {}  # name -> (stat key, content key): hashed once a version
        self._incomplete: dict[str, bool] = {}  # name -> its header parses but its data is not all there
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
    @staticmethod
    def _stat_key(st: os.stat_result) -> str:
        """Cheap: has the file changed since we last looked (for stability and for skipping settled files)."""
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def _settled(self, name: str, stat_key: str) -> bool:
        """Done or failed, for this very version of the file (by its stat, or by its content key hashed)."""
        if self.journal.settled_stat(name, stat_key):
            return True
        cached = self._hashes.get(name)
        return cached is not None and cached[0] == stat_key and self.journal.settled(name, cached[1])

    def _key(self, path: Path, st: os.stat_result) -> str | None:
        """The journal's key: size, mtime and a sha256 of the whole content (``outputs.fingerprint``, the one
        key of run and cohorts), hashed once per version of the file. None while it changes under us."""
        sk = self._stat_key(st)
        cached = self._hashes.get(path.name)
        if cached and cached[0] == sk:
            return cached[1]
        try:
            fp = outputs.fingerprint(path)
        except (OSError, VbmdInputError):
            return None
        key = f"{fp['size']}:{fp['mtime_ns']}:{fp[aim.FINGERPRINT_KEY]}"
        if sk != self._stat_key(os.stat(path, follow_symlinks=False)):
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
            if name.startswith(".") or name.endswith(MARKER):
                continue
            p = Path(entry.path)
            if not naming.is_scan_file(p):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished
            key = self._stat_key(st)
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
            marker = name + MARKER in names and self._marker_newer(p, st)
            first = self._seen.get(name)
            if first is None or first[0] != key:
                self._seen[name] = (key, now)
                first = self._seen[name]
            stable = self.stable_for > 0 and now - first[1] >= self.stable_for
            complete = self._complete(p) if stable and not marker else None
            # A header that never parses is processed after a grace (and fails, saying why); a header that
            # parses with its data not all there (a preallocated file, a stalled copy) is never taken
            # without its marker: a half-copied scan is not a scan.
            late = complete is None and stable and now - first[1] >= PARSE_GRACE * self.stable_for
            if marker or complete or (late and not self._incomplete.get(name)):
                content = self._key(p, st)
                if content is None or self.journal.settled(name, content):
                    continue
                found.append((st.st_mtime_ns, p, content))
        return [(p, key) for _, p, key in sorted(found)]

    @staticmethod
    def _marker_newer(path: Path, st: os.stat_result) -> bool:
        """``NAME.AIM.done`` counts only when written after the file: an early or stale marker is ignored."""
        try:
            m = os.stat(path.with_name(path.name + MARKER), follow_symlinks=False)
        except OSError:
            return False
        return m.st_mtime_ns >= st.st_mtime_ns

    def _complete(self, path: Path) -> bool | None:
        """True: the header is valid and all the data it declares is in the file. None: the header does not
        parse (yet). False: it parses, but the data is not all there yet.

        A preallocated file has its full size from the start: there, a greyscale scan whose data still ends
        in a block of zero bytes (no real scan's last slice is noise-free) is still being written, however
        long it has not changed (a stalled copy).
        """
        try:
            hdr = aim.read_header(path)
        except (VbmdInputError, OSError):
            self._incomplete.pop(path.name, None)
            return None
        if hdr.type_code != aim.TYPE_INT16 or hdr.data_length == 0:
            return True
        n = min(hdr.data_length, 1 << 16)
        try:
            with open(path, "rb") as f:
                f.seek(hdr.byte_offset + hdr.data_length - n)
                tail = f.read(n)
        except OSError:
            return None
        done = len(tail) == n and tail.count(0) != len(tail)
        self._incomplete[path.name] = not done
        return done

    def _parses(self, path: Path) -> bool:
        return bool(self._complete(path))

    def handle(self, path: Path, key: str) -> bool:
        """Process one arrived scan; True when done."""
        name = path.name
        try:  # the file may have changed since it was listed: then it has not arrived yet
            st = path.stat(follow_symlinks=False)
            if self._key(path, st) != key:
                return False
        except OSError:
            return False
        stat_key = self._stat_key(st)
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
            self._seen.pop(name, None)
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
        self._seen.pop(name, None)
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
            h = self._health_record()
            with contextlib.suppress(VbmdInputError):
                atomic_write_bytes(self.state / naming.HEALTH_NAME, (json.dumps(h) + "\n").encode())

    def _beat(self) -> None:
        """The heartbeat thread: the health file stays fresh while the main thread is busy with a scan."""
        while not self._stopped_beating.wait(self.heartbeat):
            self.write_health()

    def _health_record(self) -> dict:
        return {
            **self._state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "backend": self.backend_info,
            "time": time.time(),
            "time_iso": _now(),
            "done": self.counts.done,
            "failed": self.counts.failed,
            "recovered": self.counts.recovered,
            "since": self.counts.started,
            "in": str(self.in_dir),
            "vbmd_rt_version": __version__,
        }

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
        if self.stable_for <= 0:
            return False
        return any(
            not self._settled(n, k) and (n, k) not in self._refused and not self._incomplete.get(n)
            for n, (k, _) in self._seen.items()
            if (self.in_dir / n).exists()
        )

    def install_signal_handlers(self) -> None:
        def _stop(signum, frame):
            self.log(f"signal {signal.Signals(signum).name}: finishing the current scan, then stopping")
            self.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)


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
    p = Path(out) / STATE_DIR / naming.HEALTH_NAME
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
