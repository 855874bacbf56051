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

The edge is judged on the scale of the models' grid, where the outline was drawn. A Scanco scan's voxels
(82 µm; 60.7 µm for XtremeCT II) are three or four to one of the grid's (``scale``: k). There the profile
runs over k times the shells (three grid voxels either side, read on every k-th slice), the sharpness is
the steepest rise over k shells (one grid voxel), and the outline moves by up to k voxels, a shell at a time
(4-neighbour steps: a diagonal edge moves less). Read voxel by voxel, an 82 or 60.7 µm scan's edge always
looks blurred (0.25-0.39 on full-size phantoms); on the grid's scale most of theirs read 0.62-0.90. The outline interpolated from the grid lay up to a grid voxel off there, soft tissue
in and cortex out: on 20 full-size phantoms of every family the right bones read D100 2.5 mg HA/cm³ low
(median; up to 10.6) with the network and 6.6 low (up to 13.9) with the classical contour; set on the half
level, +0.6 and +0.9, every snapped Dice higher; the largest errors left, 5.9 and 5.4, are on edges blurred
over more than half a grid voxel, left as drawn (CHANGELOG, sixteenth pass). Through a gap in a thin cortex
the peel can reach k voxels (one grid voxel, 0.25 mm) into the marrow, as one voxel does at k = 1. At k = 1
(voxels of 0.18-0.25 mm) the rule is the one above, unchanged.

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
    out = np.empty_like(mask)
    for s, o in zip(mask, out, strict=True):
        if grow:
            cv2.dilate(s, _CROSS, dst=o)
        else:
            cv2.erode(s, _CROSS, dst=o, borderType=cv2.BORDER_REPLICATE)
    return out


def shells(mask: np.ndarray, n: int = SHELLS):
    """In-plane shells of a bool (z, y, x) ``mask``: ``(inside, shell)`` pairs, ``n`` inside from the outline
    in (the first is the mask's own outer shell), then ``n`` outside from the outline out."""
    for grow in (False, True):
        cur = mask.astype(np.uint8)
        for _ in range(n):
            nxt = _step(cur, grow)
            yield (not grow), (nxt > cur) if grow else (cur > nxt)
            cur = nxt


def scale(voxel_mm: float | None, grid_mm: float | None) -> int:
    """How many of the scan's in-plane voxels make one voxel of the grid the models draw on (at least 1): 1
    for the 0.18-0.25 mm voxels of the evaluation phantoms, 3 for a Scanco scan's 82 µm, 4 for 61 µm."""
    if not voxel_mm or not grid_mm:
        return 1
    return max(1, int(round(grid_mm / voxel_mm)))


def profile(values: np.ndarray, mask: np.ndarray, n: int = SHELLS) -> list[float] | None:
    """Median value of the shells across the outline, from the ``n``-th inside to the ``n``-th outside; None
    where a shell is empty (a mask too small to hold ``n`` inside)."""
    ins: list[float] = []
    outs: list[float] = []
    for inside, shell in shells(mask, n):
        if not shell.any():
            return None
        (ins if inside else outs).append(float(np.median(values[shell])))
    return ins[::-1] + outs


def levels(p: list[float]) -> tuple[float, float]:
    """The cortex (the brightest of the inside shells and the first outside one: a mask a voxel narrow of a
    thin cortex has it there) and the soft tissue (the last shell out) of a ``profile``."""
    return max(p[: len(p) // 2 + 1]), p[-1]


def sharpness(p: list[float], k: int = 1) -> float:
    """The steepest rise of a ``profile`` over ``k`` shells (one voxel of the models' grid) as a share of its
    rise from the soft tissue to the cortex (``levels``), at most 1: 0.8-1.0 for an edge within one such
    voxel, under 0.5 for one blurred over a voxel or more."""
    cortex, soft = levels(p)
    if cortex <= soft:
        return 0.0
    return min(1.0, max(a - b for a, b in zip(p[:-k], p[k:], strict=True)) / (cortex - soft))


def _set(cur: np.ndarray, bright: np.ndarray, outer: np.ndarray, beyond: np.ndarray):
    """One shell on either side of the outline of ``cur`` (bool, in place) by the half level (``bright``:
    above it): the voxels just outside (``beyond``) above it are added; then the mask's outer voxels
    (``outer``) below it that are still on the outline (a dark voxel under a cortex just added is marrow, not
    soft tissue) are taken off, but not in a slice that is all outline (a dome's last small slices). Returns
    (removed, added), bool."""
    add = beyond & bright
    cur |= add
    core = _step(cur.view(np.uint8), grow=False).view(bool)
    drop = cur & ~core
    drop &= np.asarray(core.any(axis=(1, 2)), dtype=bool)[:, None, None]
    drop &= outer
    drop &= ~bright
    cur &= ~drop
    return drop, add


def snap(data: np.ndarray, mask: np.ndarray, box, voxel_mm: float | None = None, grid_mm: float | None = None):
    """Set the outline of a native ``mask`` (uint8, in place; 0 outside ``box`` (z0, z1, y0, y1, x0, x1))
    by the half level where the scan resolves the edge (module doc). ``voxel_mm``, ``grid_mm``: the scan's
    in-plane voxel and the models' grid; where the scan's voxels are finer (``scale`` k of them to a grid
    voxel), the edge is read over k times the shells, judged by its rise over k of them, and the outline
    moves by up to k voxels, one at a time. Returns the record (``sharpness``, ``snapped``, voxels ``removed``
    and ``added``, the new ``box``), None for an empty mask or one too small to read an edge around."""
    if box is None:
        return None
    k = scale(voxel_mm, grid_mm)
    z0, z1, y0, y1, x0, x1 = (int(v) for v in box)
    m = SHELLS * k + 1
    ys, xs = slice(max(0, y0 - m), min(data.shape[1], y1 + m)), slice(max(0, x0 - m), min(data.shape[2], x1 + m))
    sub = mask[z0:z1, ys, xs]
    values = data[z0:z1, ys, xs]
    cur = sub != 0
    p = profile(values[::k], cur[::k], SHELLS * k)  # a slice per grid voxel along z: a median needs no more
    if p is None:
        return None
    s = sharpness(p, k)
    rec: dict = {"sharpness": round(s, 3), "resolved_from": RESOLVED, "snapped": False, "removed": 0, "added": 0}
    if k > 1:
        rec["voxels_per_grid_voxel"] = k
    if s < RESOLVED:
        return rec
    cortex, soft = levels(p)
    bright = values > (cortex + soft) / 2
    dropped = np.zeros(sub.shape, bool)
    added = np.zeros(sub.shape, bool)
    for _ in range(k):  # the outline as it is now: its own outer shell and the one beyond it
        u = cur.view(np.uint8)
        outer = cur & ~_step(u, grow=False).view(bool)
        beyond = _step(u, grow=True).view(bool) & ~cur
        drop, add = _set(cur, bright, outer, beyond)  # a dark voxel is never added, a bright one never dropped
        dropped |= drop
        added |= add
        if not drop.any() and not add.any():
            break
    sub[added] = sub.max()
    sub[dropped] = 0
    new_box = [z0, z1, y0, y1, x0, x1]
    if added.any():
        yy, xx = (np.flatnonzero(added.any(axis=a)) for a in ((0, 2), (0, 1)))
        new_box[2], new_box[3] = min(y0, ys.start + int(yy[0])), max(y1, ys.start + int(yy[-1]) + 1)
        new_box[4], new_box[5] = min(x0, xs.start + int(xx[0])), max(x1, xs.start + int(xx[-1]) + 1)
    rec.update(snapped=True, removed=int(dropped.sum()), added=int(added.sum()), box=new_box)
    return rec
