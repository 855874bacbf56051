"""A scan's outputs as one transaction, tied to the input they came from.

* **Fingerprint.** A scan is known by its size, mtime and a sha256 of its whole content, computed in the same
  pass as its one read (``aim.read_whole``); the inode is recorded to see a change during processing. A
  result is reused only when the fingerprint, the model and the options that change the result all match
  (``reusable``). Manifests record each output's size and sha256 (blake2b in those of earlier versions).
* **Transaction.** Every file of a scan is written into a hidden staging folder
  ``OUT/.vbmd-rt/staging/NAME.<pid>-<random>/``, then a manifest of them (names, sizes, hashes, the input's
  fingerprint) is written there; then the previous JSON is taken down (into the staging folder), the files
  are renamed into OUT and the result JSON, which carries the same manifest, is renamed last: the commit. So
  a JSON never stands beside files it does not name: a kill before the switch leaves the previous result
  whole, a kill during it leaves no result, and the scan is redone; the staging folder's manifest and the
  previous JSON tell the next run which of the files in OUT it wrote (and what goes to history).
* **Ownership.** The tool replaces or deletes only files that a manifest of its own (the committed JSON, or
  a staging folder left by a kill) lists with the same size and hash. Anything else at an output's name
  (``NAME_SEG.AIM`` of another tool, a user's ``NAME.png``) is refused without ``--overwrite``.
* **History.** A result replaced by one of another input (a re-exported scan) is kept as
  ``OUT/.vbmd-rt/history/NAME.<time>.json`` and listed under ``history`` in the new ``NAME.json``.
* **Locks.** ``scan_lock(out, name)``: one process at a time writes a scan's outputs (``flock`` on
  ``OUT/.vbmd-rt/locks/NAME.lock``, released by the kernel when a process dies, re-entrant in a process).

Nothing here reads the processing log: no patient field reaches a manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from vbmd_rt.runtime.errors import OutputError, OutputUnavailable, VbmdInputError
from vbmd_rt.runtime.io import aim, naming
from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir

STATE_DIR = naming.STATE_DIR
BLOCK = 1 << 16
SAMPLED_BLOCKS = 16
KILL_AFTER_ENV = "VBMD_RT_TEST_KILL_AFTER_RENAME"  # fault injection for the tests: die after N renames
PREVIOUS = naming.PREVIOUS_NAME  # in a staging folder: the result its commit took down before switching files
MANIFEST = naming.MANIFEST_NAME  # in a staging folder: the files it holds and their hashes

__all__ = [
    "fingerprint",
    "content_hash",
    "same_input",
    "scan_lock",
    "ScanBusy",
    "owned_files",
    "reusable",
    "Transaction",
    "retire_stale",
    "InputChanged",
    "clean_staging",
]


class InputChanged(VbmdInputError):
    """The scan changed while it was being processed (still being copied?): nothing of it was written."""


class ScanBusy(Exception):
    """Another process holds the scan's lock (``scan_lock(..., wait=False)``)."""


# --------------------------------------------------------------------------- fingerprints


def content_hash(path: str | os.PathLike, size: int | None = None, key: str = aim.FINGERPRINT_KEY) -> str:
    """sha256 of every byte of a file (``aim.FINGERPRINT_METHOD``; ``key='blake2b'``: as earlier results
    recorded it)."""
    h = aim.content_hasher(key)
    with open(path, "rb") as f:
        while block := f.read(aim.READ_CHUNK):
            h.update(block)
    return h.hexdigest()


def sampled_hash(path: str | os.PathLike, size: int | None = None) -> str:
    """sha256 of a file's head, spread blocks and tail: the manifests of vbmd-rt 0.2, read to own their files."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = os.fstat(f.fileno()).st_size if size is None else size
        if n <= (SAMPLED_BLOCKS + 2) * BLOCK:
            while block := f.read(1 << 20):
                h.update(block)
            return h.hexdigest()
        h.update(n.to_bytes(8, "little"))
        step = (n - 2 * BLOCK) // (SAMPLED_BLOCKS + 1)
        for at in [0, *(BLOCK + step * (k + 1) for k in range(SAMPLED_BLOCKS)), n - BLOCK]:
            f.seek(at)
            h.update(f.read(BLOCK))
    return h.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict:
    """The input's identity: ``size``, ``mtime_ns``, ``inode`` and ``sha256`` of its whole content.

    The one "exactly once" key of ``run``, cohorts and the watch service (``same_input`` compares size, mtime
    and content: a copy with another scan's size and mtime, or a change anywhere in the data, is another input).
    A file that changes while it is hashed raises ``InputChanged``.
    """
    st = os.stat(path)
    digest = content_hash(path)
    st2 = os.stat(path)
    if (st2.st_size, st2.st_mtime_ns, st2.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
        raise InputChanged(path, "changed while it was being read (still being copied?)", "run it again once complete")
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
        aim.FINGERPRINT_KEY: digest,
        "method": aim.FINGERPRINT_METHOD,
    }


def fingerprint_of(scan) -> dict:
    """The fingerprint of a scan read by ``aim.read_whole`` (hashed in its one read), as ``fingerprint``."""
    fp = scan.settle()  # waits for a hash read_whole(hash_behind=True) left running
    return dict(fp) if fp else fingerprint(scan.path)


def same_input(a: dict | None, b: dict | None) -> bool:
    """One input: the same size, mtime and hash of the whole content (a touched file is redone; a file with
    another's size and mtime, or changed anywhere, is another input). Compared by a content hash both hold
    (``aim.CONTENT_KEYS``); none in common: not known to be the same (``comparable`` hashes the other way)."""
    if not a or not b:
        return False
    for key in aim.CONTENT_KEYS:
        if a.get(key) and b.get(key):
            return all(a.get(k) == b.get(k) for k in ("size", "mtime_ns", key))
    return False


def comparable(fp: dict, recorded: dict | None, path: str | os.PathLike) -> dict:
    """``fp`` (this input's fingerprint), able to be compared with ``recorded`` (a result's): results written
    before the fingerprint became sha256 record a blake2b; where its size and mtime are this file's, the file
    is hashed that way too (one more read, once: the new result records sha256), so that an upgrade redoes
    no scan."""
    if not fp or not recorded or any(fp.get(k) and recorded.get(k) for k in aim.CONTENT_KEYS):
        return fp
    if (recorded.get("size"), recorded.get("mtime_ns")) != (fp.get("size"), fp.get("mtime_ns")):
        return fp
    for key in aim.CONTENT_KEYS:
        if recorded.get(key):
            try:
                return {**fp, key: content_hash(path, key=key)}
            except OSError:
                return fp
    return fp


def unchanged_since(path: str | os.PathLike, fp: dict) -> bool:
    """Cheap check (stat only) that the file is still the one fingerprinted: size, mtime and inode."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    same = st.st_size == fp["size"] and st.st_mtime_ns == fp["mtime_ns"]
    return same and fp.get("inode", st.st_ino) == st.st_ino


def file_record(path: Path) -> dict:
    return {"size": path.stat().st_size, aim.FINGERPRINT_KEY: content_hash(path)}


def _matches(path: Path, rec: dict) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != rec.get("size"):
            return False
        for key in aim.CONTENT_KEYS:  # sha256; blake2b in manifests written before
            if key in rec:
                return content_hash(path, key=key) == rec[key]
        return "sha256_sampled" in rec and sampled_hash(path) == rec["sha256_sampled"]  # a 0.2 manifest
    except OSError:
        return False


# --------------------------------------------------------------------------- locks

_HELD: dict[str, list] = {}  # lock path -> [file object, depth]
_HELD_GUARD = threading.Lock()


def state_dir(out: Path, *parts: str) -> Path:
    return check_writable_dir(Path(out).joinpath(STATE_DIR, *parts))


@contextlib.contextmanager
def scan_lock(out: str | os.PathLike, name: str, wait: bool = True, on_wait=None):
    """Hold the lock of scan ``name`` in ``out``; ``wait=False`` raises :class:`ScanBusy` when another
    process holds it. Re-entrant within one process (the cohort runner and ``run_scan`` both take it)."""
    import fcntl

    path = state_dir(Path(out), "locks") / f"{name}.lock"
    key = str(path)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is None:
        f = open(path, "a")  # noqa: SIM115 - held for the block's duration
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not wait:
                f.close()
                raise ScanBusy(name) from None
            if on_wait:
                on_wait(name)
            fcntl.flock(f, fcntl.LOCK_EX)
        with _HELD_GUARD:
            _HELD[key] = [f, 1]
    try:
        yield path
    finally:
        with _HELD_GUARD:
            entry = _HELD[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                entry[0].close()  # releases the flock


# --------------------------------------------------------------------------- manifests and ownership


def read_result(path: Path) -> dict | None:
    """A result JSON written by vbmd-rt, or None (missing, torn, or someone else's file)."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(r, dict) and "vbmd_rt_version" in r and "d100_mg_ha_cm3" in r and "scan" in r and "rows" not in r
    return r if ok else None  # (a batch summary has rows)


def _staging_root(out: Path) -> Path:
    return Path(out) / STATE_DIR / "staging"


def _leftover_stagings(out: Path, name: str) -> list[Path]:
    root = _staging_root(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.rsplit(".", 1)[0] == name)


def owned_files(out: Path, name: str, json_name: str) -> dict[str, dict | None]:
    """Files in ``out`` this tool wrote for scan ``name``: file name -> its manifest record.

    From the committed result (its ``outputs``; a result of vbmd-rt 0.1 without a manifest owns the names it
    gives) and from staging folders that a killed run left (their ``manifest.json``). A file is owned only
    while it is still what the manifest recorded; the JSON itself is owned when it is a vbmd-rt result.
    """
    out = Path(out)
    owned: dict[str, dict | None] = {}
    result = read_result(out / json_name)
    manifests = []
    if result is not None:
        owned[json_name] = None
        if isinstance(result.get("outputs"), dict):
            manifests.append(result["outputs"])
        else:  # 0.1 results: no manifest; their files are the ones the result names
            legacy = set(naming.legacy_outputs(name))
            legacy.add(str(result.get("mask", {}).get("file", "")))
            owned.update({f: None for f in legacy if f and (out / f).is_file()})
    for st in _leftover_stagings(out, name):
        try:
            m = json.loads((st / MANIFEST).read_text())
            manifests.append(m["outputs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        prev = read_result(st / PREVIOUS)  # the result a killed commit took down: its files are still ours
        if prev is not None and isinstance(prev.get("outputs"), dict):
            manifests.append(prev["outputs"])
    for m in manifests:
        for f, rec in m.items():
            if isinstance(rec, dict) and _matches(out / f, rec):
                owned[f] = rec
    return owned


def reusable(result: dict | None, out: Path, scan_file: str, fp: dict, run_key: dict, expected: list[str]) -> bool:
    """True when ``result`` (a parsed NAME.json) is the finished result of this very input: same file name,
    same fingerprint, same model and options, and every expected output still what its manifest says."""
    if result is None or not isinstance(result.get("outputs"), dict):
        return False
    scan = result.get("scan") or {}
    if scan.get("file") != scan_file or not same_input(scan.get("fingerprint"), fp):
        return False
    if result.get("run_key") != run_key:
        return False
    outs = result["outputs"]
    return all(f in outs and _matches(Path(out) / f, outs[f]) for f in expected)


# --------------------------------------------------------------------------- the transaction


def _history_entry(result: dict, path: Path) -> dict:
    scan = result.get("scan") or {}
    return {
        "file": str(path),
        "d100_mg_ha_cm3": result.get("d100_mg_ha_cm3"),
        "scan_fingerprint": scan.get("fingerprint"),
        "model_sha256": (result.get("model") or {}).get("sha256"),
        "time": result.get("time"),
    }


def keep_in_history(out: Path, name: str, result: dict) -> dict:
    """Copy a result about to be replaced to ``OUT/.vbmd-rt/history/NAME.<time>.json``; its history entry."""
    folder = state_dir(Path(out), "history")
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{secrets.token_hex(2)}"
    dest = folder / naming.history_name(name, stamp)
    atomic_write_bytes(dest, (json.dumps(result, indent=2) + "\n").encode())
    return _history_entry(result, dest.relative_to(out))


class Transaction:
    """Stage a scan's files, then make them appear in OUT together (JSON last), or not at all.

    ::

        with Transaction(out, name, targets, overwrite) as t:
            write_aim(t.path("NAME_SEG.AIM"), ...)        # into the staging folder
            ...
            t.commit("NAME.json", result)               # result gets "outputs" and "history"
    """

    def __init__(
        self, out: str | os.PathLike, name: str, targets: list[str], overwrite: bool = False, prune: bool = True
    ):
        self.prune = prune  # remove files of the previous result that this one does not write (run: yes)
        self.out = Path(out)
        self.name = name
        self.targets = list(targets)  # file names in OUT, the JSON last
        self.overwrite = overwrite
        self.json_name = self.targets[-1]
        self.staging: Path | None = None
        self.committed = False
        self.switched = 0  # steps of the commit's switch done
        self.keep_staging = False

    def __enter__(self) -> Transaction:
        check_writable_dir(self.out)
        self.owned = owned_files(self.out, self.name, self.json_name)
        if not self.overwrite:
            for f in self.targets:
                p = self.out / f
                if (p.exists() or p.is_symlink()) and f not in self.owned:
                    raise OutputError(
                        p,
                        "exists and was not written by vbmd-rt for this scan",
                        "pass --overwrite to replace it, or choose another -o",
                    )
        self.previous = None
        for st in _leftover_stagings(self.out, self.name):  # a killed run's: its manifest was read above
            if self.previous is None:  # a commit killed mid-switch: the result it took down goes to history
                self.previous = read_result(st / PREVIOUS)
            shutil.rmtree(st, ignore_errors=True)
        root = state_dir(self.out, "staging")
        self.staging = root / f"{self.name}.{os.getpid()}-{secrets.token_hex(4)}"
        self.staging.mkdir()
        return self

    def path(self, file_name: str) -> Path:
        assert self.staging is not None
        return self.staging / file_name

    def commit(self, result: dict) -> dict:
        """Rename the staged files into OUT, then the JSON: ``result`` gains ``outputs`` and ``history``."""
        assert self.staging is not None
        files = [f for f in self.targets[:-1] if self.path(f).is_file()]
        outputs = {f: file_record(self.path(f)) for f in files}
        old = read_result(self.out / self.json_name) or self.previous
        history = list((old or {}).get("history") or [])
        if old is not None and not (
            same_input((old.get("scan") or {}).get("fingerprint"), (result.get("scan") or {}).get("fingerprint"))
            and old.get("run_key") == result.get("run_key")
        ):
            history.append(keep_in_history(self.out, self.name, {k: v for k, v in old.items() if k != "history"}))
        result["outputs"] = outputs
        result["history"] = history
        body = (json.dumps(result, indent=2) + "\n").encode()
        atomic_write_bytes(self.path(self.json_name), body)
        manifest = {"scan": self.name, "outputs": outputs, "fingerprint": (result.get("scan") or {}).get("fingerprint")}
        atomic_write_bytes(self.staging / MANIFEST, (json.dumps(manifest) + "\n").encode())
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "-1"))
        # The switch: the old JSON is taken down first (into the staging folder, where the next run finds it),
        # then the files are renamed into OUT, then the new JSON: at no moment does a JSON stand beside files
        # it does not name. A kill in between leaves no result (and the staging folder's manifest and
        # previous result, which tell the next run what is ours); the scan is then done again.
        steps = [(self.out / self.json_name, self.staging / PREVIOUS)]
        steps += [(self.path(f), self.out / f) for f in [*files, self.json_name]]
        for i, (src, dst) in enumerate(steps):
            if i == kill_after:
                os._exit(137)  # fault injection (tests only): as if killed between two renames
            if i == 0 and not (src.exists() or src.is_symlink()):
                continue
            try:
                os.replace(src, dst)
                if i == 0:
                    _fsync_dir(self.out)  # the old JSON is gone before any file changes
            except OSError as e:
                self._abort_switch(i)
                raise OutputUnavailable(
                    dst, f"cannot write ({e.strerror})", "check free space and permissions"
                ) from None
            self.switched = i + 1
        self.committed = True
        # Files of the previous result that this one does not write (e.g. NAME_PROB.AIM of an earlier
        # --save-prob run) would be left unlisted by any manifest: they go, being ours.
        for f in self.owned if self.prune else ():
            if f not in outputs and f != self.json_name:
                with contextlib.suppress(OSError):
                    (self.out / f).unlink()
        _fsync_dir(self.out)
        return result

    def _abort_switch(self, failed_step: int) -> None:
        """A rename failed: before any file was switched, the previous JSON goes back up (the previous result
        stands whole); after, the staging folder is kept (its manifest and the previous JSON tell the next
        run what is ours and what goes to history)."""
        prev = self.staging / PREVIOUS if self.staging is not None else None
        if failed_step <= 1 and prev is not None and prev.exists():
            with contextlib.suppress(OSError):
                os.replace(prev, self.out / self.json_name)
                return
        self.keep_staging = failed_step > 1

    def __exit__(self, *exc) -> None:
        if self.staging is not None and not self.keep_staging:
            shutil.rmtree(self.staging, ignore_errors=True)


def clean_staging(out: str | os.PathLike) -> int:
    """Free the space of staging folders that killed runs left (a staged full-size mask is ~700 MB).

    Only folders whose scan nobody is writing now; their ``manifest.json`` is kept while it exists, as it
    tells the next run of that scan which files in OUT are vbmd-rt's. Returns the bytes freed.
    """
    root = _staging_root(Path(out))
    freed = 0
    if not root.is_dir():
        return 0
    for st in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            with scan_lock(out, st.name.rsplit(".", 1)[0], wait=False):
                keep = (st / MANIFEST).is_file()
                for f in st.iterdir():
                    if keep and f.name in (MANIFEST, PREVIOUS):
                        continue
                    with contextlib.suppress(OSError):
                        freed += f.stat().st_size
                        f.unlink()
                if not keep:
                    shutil.rmtree(st, ignore_errors=True)
        except (ScanBusy, OSError, VbmdInputError):
            continue
    return freed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def retire_stale(out: str | os.PathLike, name: str, json_name: str, scan_file: str, fp: dict | None) -> bool:
    """When the result in OUT is of another version of the input (re-exported, then failed), it must not
    stand as this scan's result: it goes to history and its files (ours only) are removed. True if retired."""
    out = Path(out)
    old = read_result(out / json_name)
    if old is None or fp is None:
        return False
    scan = old.get("scan") or {}
    if scan.get("file") != scan_file or same_input(scan.get("fingerprint"), fp):
        return False  # another file's result, or the result of this very input: it stays
    owned = owned_files(out, name, json_name)
    keep_in_history(out, name, old)
    for f in owned:
        with contextlib.suppress(OSError):
            (out / f).unlink()
    return True
