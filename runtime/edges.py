"""The mask's outline where the scan resolves the bone's edge: on the half level between soft tissue and cortex.

Both models draw MC2 on the 0.246 mm model grid, and the network learnt its boundary from phantoms whose
edges are blurred over 0.8-1.8 of those voxels. There a boundary voxel one too many or one too few holds a
blend of cortex and soft tissue near the bone's mean, and D100 hardly moves. Where a scan's edge is sharp
(the step from soft tissue to cortex within one voxel), a voxel one too many is soft tissue and one too few
is cortex, and both lower D100: on a third, independent generator's sharp hands the network read -9 mg
HA/cm³ at Dice 0.97 and the classical contour -12.

So the edge is measured first. Around the mask's outline (in-plane, slice by slice: the stack's first slice
and the cut at the joint are no surface) the median density of three voxel shells inside and three outside
gives the edge's profile. Its steepest step, as a share of the whole rise from the soft tissue (the third
shell out) to the cortex (the brightest shell in, or the first out), is the edge's ``sharpness``: 0.8-1.0
where the edge is a step within one voxel (the third generator's hands: 0.79-0.98), under 0.5 where it is
blurred over a voxel or more (the project's 184 evaluation phantoms: 0.25-0.46, either model). Only where it
is at least ``RESOLVED`` (0.6: blur under about half a voxel), the surface is where the density crosses
half-way from the soft tissue to the cortex, and one shell on either side of the outline is set by that
level: the shell outside gains its voxels above it, and the mask's own outer shell loses those below it
that are still on the outline (not marrow under a cortex just added, nor a dome's last small slices).
Blurred edges are left as the model drew them: there the half level of a thin cortex lies outside the bone
(its blurred peak is lower), and a one-voxel shift costs little.

The shells are in the scan's own voxels. Every scan it was measured on had voxels of 0.18-0.25 mm; at 61
or 82 µm a scanner's edge is expected to spread over more than one voxel (sharpness under 0.6), and the
outline is then left as drawn: not measured here, no such scan of a hand being at hand.

Values are the scan's stored ones (the level is relative: a linear calibration does not move it).
"""

from __future__ import annotations

import cv2
import numpy as np

RESOLVED = 0.6  # the edge's sharpness from which the outline is set by the half level
SHELLS = 3  # shells of voxels read on either side of the outline
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _step(mask: np.ndarray, grow: bool) -> np.ndarray:
    """``mask`` (uint8 0/1, z y x) grown (or shrunk) by one in-plane 4-neighbour voxel, slice by slice."""
    if grow:
        return np.stack([cv2.dilate(s, _CROSS) for s in mask])
    return np.stack([cv2.erode(s, _CROSS, borderType=cv2.BORDER_REPLICATE) for s in mask])


def shells(mask: np.ndarray, n: int = SHELLS):
    """In-plane shells of a bool (z, y, x) ``mask``: ``(inside, shell)`` pairs, ``n`` inside from the outline
    in (the first is the mask's own outer shell), then ``n`` outside from the outline out."""
    for grow in (False, True):
        cur = mask.astype(np.uint8)
        for _ in range(n):
            nxt = _step(cur, grow)
            yield (not grow), (nxt > cur) if grow else (cur > nxt)
            cur = nxt


def profile(values: np.ndarray, mask: np.ndarray) -> tuple[list[float], np.ndarray, np.ndarray] | None:
    """Median value of the shells across the outline, from the third inside to the third outside, and the
    two shells next to the outline (inside, outside); None where a shell is empty (a mask too small to hold
    three inside)."""
    ins: list[float] = []
    outs: list[float] = []
    first: dict[bool, np.ndarray] = {}
    for inside, shell in shells(mask):
        if not shell.any():
            return None
        (ins if inside else outs).append(float(np.median(values[shell])))
        first.setdefault(inside, shell)
    return ins[::-1] + outs, first[True], first[False]


def levels(p: list[float]) -> tuple[float, float]:
    """The cortex (the brightest of the inside shells and the first outside one: a mask a voxel narrow of a
    thin cortex has it there) and the soft tissue (the third shell out) of a ``profile``."""
    return max(p[: SHELLS + 1]), p[-1]


def sharpness(p: list[float]) -> float:
    """The steepest step of a ``profile`` as a share of its rise from the soft tissue to the cortex
    (``levels``), at most 1: 0.8-1.0 for an edge within one voxel, under 0.5 for one blurred over a voxel or
    more."""
    cortex, soft = levels(p)
    if cortex <= soft:
        return 0.0
    return min(1.0, max(a - b for a, b in zip(p[:-1], p[1:], strict=True)) / (cortex - soft))


def _set(sub: np.ndarray, values: np.ndarray, p: list[float], outer: np.ndarray, beyond: np.ndarray):
    """One shell on either side of the outline of ``sub`` (in place) by the half level of profile ``p``:
    the voxels just outside above it are added; then the mask's outer voxels below it that are still on
    the outline (a dark voxel under a cortex just added is marrow, not soft tissue) are taken off, but not
    in a slice that is all outline (a dome's last small slices). Returns (removed, added), bool."""
    cortex, soft = levels(p)
    bright = values > (cortex + soft) / 2
    add = beyond & bright
    on = sub.max()
    sub[add] = on
    new = (sub != 0).astype(np.uint8)
    core = _step(new, grow=False)
    has_core = np.asarray(core.any(axis=(1, 2)), dtype=bool)
    outline = (new > core) & has_core[:, None, None]
    drop = outer & outline & ~bright
    sub[drop] = 0
    return drop, add


def snap(data: np.ndarray, mask: np.ndarray, box) -> dict | None:
    """Set the outline of a native ``mask`` (uint8, in place; 0 outside ``box`` (z0, z1, y0, y1, x0, x1))
    by the half level where the scan resolves the edge (module doc). Returns the record (``sharpness``,
    ``snapped``, voxels ``removed`` and ``added``, the new ``box``), None for an empty mask or one too small
    to read an edge around."""
    if box is None:
        return None
    z0, z1, y0, y1, x0, x1 = (int(v) for v in box)
    m = SHELLS + 1
    ys, xs = slice(max(0, y0 - m), min(data.shape[1], y1 + m)), slice(max(0, x0 - m), min(data.shape[2], x1 + m))
    sub = mask[z0:z1, ys, xs]
    values = data[z0:z1, ys, xs]
    read = profile(values, sub != 0)
    if read is None:
        return None
    p, outer, beyond = read
    s = sharpness(p)
    rec: dict = {"sharpness": round(s, 3), "resolved_from": RESOLVED, "snapped": False, "removed": 0, "added": 0}
    if s < RESOLVED:
        return rec
    drop, add = _set(sub, values, p, outer, beyond)
    new_box = [z0, z1, y0, y1, x0, x1]
    if add.any():
        yy, xx = (np.flatnonzero(add.any(axis=a)) for a in ((0, 2), (0, 1)))
        new_box[2], new_box[3] = min(y0, ys.start + int(yy[0])), max(y1, ys.start + int(yy[-1]) + 1)
        new_box[4], new_box[5] = min(x0, xs.start + int(xx[0])), max(x1, xs.start + int(xx[-1]) + 1)
    rec.update(snapped=True, removed=int(drop.sum()), added=int(add.sum()), box=new_box)
    return rec
