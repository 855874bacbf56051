"""When a file the scanner writes into the watch folder has arrived (``vbmd-rt watch``'s arrival policy).

A file counts as arrived when ``NAME.AIM.done`` (the marker) newer than the file is beside it (a marker
written before the copy, or left from an older export, is ignored), or when its size and modification time
have not changed for ``stable_for`` seconds *and* its header parses completely (the declared data is all
there). A stable file that still does not parse after ``PARSE_GRACE * stable_for`` seconds is processed, and
so fails with the reason; one whose header parses with its data not all there (a preallocated file, a
stalled copy) is never taken without its marker: a half-copied scan is not a scan.
"""

from __future__ import annotations

import os
from pathlib import Path

from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import aim

MARKER = ".done"
PARSE_GRACE = 5  # a stable file that does not parse is processed (and fails) after this many stable_for


def stat_key(st: os.stat_result) -> str:
    """Cheap: has the file changed since we last looked (for stability and for skipping settled files)."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def marker_newer(path: Path, st: os.stat_result) -> bool:
    """``NAME.AIM.done`` counts only when written after the file: an early or stale marker is ignored."""
    try:
        m = os.stat(path.with_name(path.name + MARKER), follow_symlinks=False)
    except OSError:
        return False
    return m.st_mtime_ns >= st.st_mtime_ns


def is_marker(name: str) -> bool:
    return name.endswith(MARKER)


class Arrival:
    """The arrival state of the files seen in one watch folder (first seen, complete or not)."""

    def __init__(self, stable_for: float):
        self.stable_for = stable_for
        self.seen: dict[str, tuple[str, float]] = {}  # name -> (stat key, first time this key was seen)
        self.incomplete: dict[str, bool] = {}  # name -> its header parses but its data is not all there

    def arrived(self, path: Path, st: os.stat_result, names: set[str], now: float) -> bool:
        """Has ``path`` (stat ``st``; ``names``: the folder's entries, for its marker) arrived at ``now``?"""
        name, key = path.name, stat_key(st)
        marker = name + MARKER in names and marker_newer(path, st)
        first = self.seen.get(name)
        if first is None or first[0] != key:
            self.seen[name] = (key, now)
            first = self.seen[name]
        stable = self.stable_for > 0 and now - first[1] >= self.stable_for
        complete = self.complete(path) if stable and not marker else None
        # A header that never parses is processed after a grace (and fails, saying why); a header that
        # parses with its data not all there is never taken without its marker.
        late = complete is None and stable and now - first[1] >= PARSE_GRACE * self.stable_for
        return bool(marker or complete or (late and not self.incomplete.get(name)))

    def complete(self, path: Path) -> bool | None:
        """True: the header is valid and all the data it declares is in the file. None: the header does not
        parse (yet). False: it parses, but the data is not all there yet.

        A preallocated file has its full size from the start: there, a greyscale scan whose data still ends
        in a block of zero bytes (no real scan's last slice is noise-free) is still being written, however
        long it has not changed (a stalled copy).
        """
        try:
            hdr = aim.read_header(path)
        except (VbmdInputError, OSError):
            self.incomplete.pop(path.name, None)
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
        self.incomplete[path.name] = not done
        return done

    def forget(self, name: str) -> None:
        """Taken (or failed): the next version of the file is seen afresh."""
        self.seen.pop(name, None)

    def waiting(self, in_dir: Path, settled, refused: set[tuple[str, str]]) -> bool:
        """Files seen that have not arrived yet (``once`` waits for them to settle, or their marker);
        ``settled(name, stat_key)``: done or failed already."""
        if self.stable_for <= 0:
            return False
        return any(
            not settled(n, k) and (n, k) not in refused and not self.incomplete.get(n)
            for n, (k, _) in self.seen.items()
            if (in_dir / n).exists()
        )
