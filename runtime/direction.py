"""Which way the stack runs: from the metacarpal shafts to the fingers (the tool's frame), or the other way.

The identification stage tracks the bones from slice 0, where an MCP scan holds the metacarpal shafts. A
stack written from the fingers to the wrist puts the phalanges there instead: the stage takes them for
metacarpals, and the mask holds a phalanx and half a head (the independent generator's case 17: Dice 0.43,
D100 33 mg HA/cm³ low, QC ``pass``). Nothing in the AIM header says which way the slices run.

Anatomy does. The metacarpal head ends distally in a convex dome, and the base of the proximal phalanx is flat
or cupped round it, so every MCP joint bulges distally. Per metacarpal candidate (``identify.candidates``),
two measures of which way its joint bulges, in mm (positive: towards the stack's last slice, the tool's frame):

* ``valleys``: the joint space is a dark layer between two bone surfaces. In the bone's columns (z), the
  dips of the smoothed intensity below the bone level with bone within ``FLANK_MM`` above and below; their
  largest connected sheet; a quadratic surface fitted to its heights (trimmed once); its curvature times
  its area over pi: the joint's sagitta.
* ``surfaces``: the bone as the instances' levels find it (``identify.bone_mask``), split into pieces in
  3D within the bone's columns. The piece that holds its shaft in the proximal slices ends in the joint's
  near surface (its top); the piece met first above it begins with the far one (its bottom, over all of
  that piece's columns); for each surface, its median height in the inner part of its footprint less that
  in the outer ring. A piece that runs on to the stack's end (the joint space not resolved) gives nothing,
  and neither does a surface that bulges more than a cap can (``CAP``; a sheet of dips, more than a
  hemisphere).

The two fail on different phantoms (a textured head's own dips; a joint space the levels bridge), so the
stack is only turned where both say so, in both orientations: this one's sums are below ``-LEVEL_MM`` and the
reversed stack's above ``LEVEL_MM``. It is taken as it is where both of this orientation's sums are above
``LEVEL_MM``. Otherwise it is left as it is, and where the evidence of both orientations (``lean``: this
orientation's two sums less the reversed stack's) points the other way, the identity is ``review`` with
the reason. The reversed stack's candidates are only found where the first look is not clear (a second
identification pass on the coarse grid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

FLANK_MM = 2.0  # a joint space's dip has bone within this distance above and below
DIP = 0.15  # ... and lies this fraction of the scan's soft-tissue-to-cortex span under both flanks
SMOOTH_VOX = 1.0  # Gaussian sigma on the coarse grid (0.5 mm) before the dips are looked for
INNER, OUTER = 0.45, (0.6, 1.0)  # a surface's centre and rim, in radii of its footprint
MERGED = 0.3  # a piece that reaches the stack's end in this fraction of its columns has no joint in view
LEVEL_MM = 0.5  # both sums beyond this (mm) are a clear answer
#: A surface's centre lies at most this many radii of its footprint above its rim: a hemisphere's 0.38 (the
#: inner part's median height less the ring's). A larger difference is no cap: a piece that took in part of the
#: bone beyond at its rim.
CAP = 0.5


@dataclass
class Direction:
    """How the stack runs and why: ``reversed`` (distal first: the tool turns it), ``reason`` ("" or why the
    identity is ``review``), and the evidence (sums in mm; ``reverse``: the reversed stack's, where looked at)."""

    reversed: bool = False
    reason: str = ""
    valleys: float = 0.0
    surfaces: float = 0.0
    reverse: tuple[float, float] | None = None
    per_bone: list = field(default_factory=list)  # [instance label, valleys, surfaces] of the stack as written
    reverse_per_bone: list = field(default_factory=list)  # ... of the reversed stack (where looked at)

    @property
    def lean(self) -> float | None:
        """This orientation's evidence less the reversed stack's (mm); None where the reverse was not looked at."""
        if self.reverse is None:
            return None
        return self.valleys + self.surfaces - sum(self.reverse)

    def to_dict(self) -> dict:
        order = "distal first" if self.reversed else ("proximal first, uncertain" if self.reason else "proximal first")
        return {
            "slice_order": order,
            "turned": self.reversed,
            "valleys_mm": round(self.valleys, 2),
            "surfaces_mm": round(self.surfaces, 2),
            "reverse_mm": None if self.reverse is None else [round(v, 2) for v in self.reverse],
            "lean_mm": None if self.lean is None else round(self.lean, 2),
            "per_bone_mm": self.per_bone,  # the labels of the instances of the stack as written
            "reverse_per_bone_mm": self.reverse_per_bone,  # ... of the reversed stack's (a turned identity's)
            **({"review_reason": self.reason} if self.reason else {}),
        }


def _ring_difference(height: np.ndarray, cols: np.ndarray) -> float | None:
    """Median ``height`` in the inner part of the footprint ``cols`` (bool, 2D) less that in its outer ring
    (``INNER``, ``OUTER``, in radii of a disc of the footprint's area round its centroid); None when either
    part holds too few columns to say."""
    ys, xs = np.nonzero(cols)
    if ys.size < 30:
        return None
    radius = np.sqrt(ys.size / np.pi)
    r = np.hypot(ys - ys.mean(), xs - xs.mean()) / radius
    z = height[ys, xs]
    inner, outer = r < INNER, (r > OUTER[0]) & (r < OUTER[1])
    if inner.sum() < 8 or outer.sum() < 20:
        return None
    bulge = float(np.median(z[inner]) - np.median(z[outer]))
    return bulge if abs(bulge) <= CAP * radius else None


def valley_sagitta(smooth: np.ndarray, cols: np.ndarray, low: float, span: float, spacing_mm: float) -> float | None:
    """The joint's sagitta (mm, positive: bulging towards the last slice) from the dips in the columns
    ``cols`` (bool, 2D) of the smoothed coarse volume ``smooth``; None when too few columns hold one.

    A dip is a local minimum along z below ``low`` that lies ``DIP`` x ``span`` under the highest value within
    ``FLANK_MM`` on either side. The joint space is the dips' largest sheet: their connected set that covers
    the most columns, each dip grown by two slices up and down before the sets are found (so dips up to four
    slices, 2 mm, apart in one column and five in neighbouring ones join: the joint space runs steeply at a
    head's side); a textured head's own dips are small patches. Where a column holds several of the sheet's
    dips, their mean height."""
    ys, xs = np.nonzero(cols)
    if ys.size < 20:
        return None
    col = smooth[:, ys, xs]
    d = max(1, int(round(FLANK_MM / spacing_mm)))
    up = np.full_like(col, -np.inf)
    down = np.full_like(col, -np.inf)
    for k in range(1, d + 1):
        up[:-k] = np.maximum(up[:-k], col[k:])
        down[k:] = np.maximum(down[k:], col[:-k])
    minimum = np.ones(col.shape, bool)
    minimum[1:] &= col[1:] <= col[:-1]
    minimum[:-1] &= col[:-1] <= col[1:]
    dips = minimum & (col < low) & (np.minimum(up, down) - col > DIP * span)
    if not dips.any():
        return None
    y0, x0 = int(ys.min()), int(xs.min())
    grid = np.zeros((col.shape[0], int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), bool)
    zc, ic = np.nonzero(dips)
    grid[zc, ys[ic] - y0, xs[ic] - x0] = True
    joined = ndimage.binary_dilation(grid, structure=np.ones((5, 1, 1), bool))
    sheets, n = ndimage.label(joined, structure=np.ones((3, 3, 3), bool))
    own = sheets[zc, ys[ic] - y0, xs[ic] - x0]  # each dip's sheet
    cover = np.bincount(np.unique(own.astype(np.int64) * ys.size + ic) // ys.size, minlength=n + 1)
    on = own == int(np.argmax(cover[1:])) + 1
    count = np.bincount(ic[on], minlength=ys.size)
    has = count > 0
    if has.sum() < 20:
        return None
    z = np.bincount(ic[on], weights=zc[on], minlength=ys.size)[has] / count[has] * spacing_mm
    y, x = ys[has] * spacing_mm, xs[has] * spacing_mm
    y, x = y - y.mean(), x - x.mean()
    a = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    keep = np.ones(z.size, bool)
    for _ in range(2):  # a fit, then one without the heights far off it
        coef = np.linalg.lstsq(a[keep], z[keep], rcond=None)[0]
        res = np.abs(z - a @ coef)
        keep = res < 3 * 1.4826 * float(np.median(res[keep])) + spacing_mm
    radius2 = float(has.sum()) * spacing_mm**2 / np.pi  # the sheet's radius (a disc of its area), squared
    sagitta = -0.5 * float(coef[3] + coef[5]) * radius2
    return sagitta if abs(sagitta) <= np.sqrt(radius2) else None  # no cap bulges more than a hemisphere


def surface_bulge(bone: np.ndarray, mine: np.ndarray, cols: np.ndarray, top: int, spacing_mm: float) -> float | None:
    """The bulge (mm) of the joint's near and far surfaces, summed. In the columns ``cols``, ``bone`` (bool,
    coarse grid) falls into 3D pieces: the one that holds the candidate's region ``mine`` (bool, its first
    ``top`` slices at least) in the first ``top`` slices ends in the near surface (its top); the piece met first above that top in most of its
    columns begins with the far one (its bottom), over all of that piece's own columns: a hollow base (a tube
    at the bone level) has no near surface inside its rim, the head beyond it has one all across. Columns
    where a surface lies at the stack's end (its first or last two slices) are left out. None where the near
    piece runs on to the stack's end or neither surface says."""
    nz = bone.shape[0]
    y0, y1 = np.flatnonzero(cols.any(axis=1))[[0, -1]]
    x0, x1 = np.flatnonzero(cols.any(axis=0))[[0, -1]]
    box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    sub = bone[(slice(None), *box)] & cols[box]
    pieces, _ = ndimage.label(sub)
    seed = pieces[:top][mine[(slice(0, top), *box)] & sub[:top]]
    seed = seed[seed > 0]
    if seed.size == 0:
        return None
    near = pieces == int(np.bincount(seed).argmax())
    ncols = near.any(axis=0)
    z = np.arange(nz)[:, None, None]
    h_near = np.where(near, z, -1).max(axis=0)
    if float((h_near[ncols] >= nz - 2).mean()) > MERGED:
        return None
    parts = [_ring_difference(h_near, ncols & (h_near < nz - 2))]
    first = np.where(sub & ~near & (z > h_near[None]), z, nz).min(axis=0)  # the first bone above the near top
    met = ncols & (first < nz)
    if met.any():
        ys, xs = np.nonzero(met)
        far = pieces == int(np.bincount(pieces[first[met], ys, xs]).argmax())
        h_far = np.where(far, z, nz).min(axis=0)
        parts.append(_ring_difference(h_far, far.any(axis=0) & (h_far > 1)))
    found = [p for p in parts if p is not None]
    return sum(found) * spacing_mm if found else None


def evidence(
    coarse: np.ndarray,
    spacing_mm: float,
    labels: np.ndarray,
    bones,
    bone: np.ndarray,
    low: float,
    span: float,
    top: int,
):
    """Per candidate (``bones``, on ``labels``: ``identify.candidates``) the two measures; their sums (mm) and
    the per-bone list. ``bone``: the coarse volume's ``identify.bone_mask``; ``low``: its low level, ``span``
    its soft tissue to cortex; ``top``: the proximal slab's slices (``identify.reach``)."""
    if not bones:
        return 0.0, 0.0, []
    every = ndimage.find_objects(labels)
    objs = [every[b.label - 1] for b in bones]
    pad = int(4 * SMOOTH_VOX) + 1  # the filter's reach: inside the footprints, as if over the whole volume
    ny, nx = coarse.shape[1:]
    box = (
        slice(None),
        slice(max(min(sl[1].start for sl in objs) - pad, 0), min(max(sl[1].stop for sl in objs) + pad, ny)),
        slice(max(min(sl[2].start for sl in objs) - pad, 0), min(max(sl[2].stop for sl in objs) + pad, nx)),
    )
    smooth = np.zeros(coarse.shape, np.float32)
    smooth[box] = ndimage.gaussian_filter(coarse[box], SMOOTH_VOX)
    valleys = surfaces = 0.0
    per_bone = []
    for b, sl in zip(bones, objs, strict=True):
        cols = np.zeros(labels.shape[1:], bool)
        cols[sl[1], sl[2]] = (labels[sl] == b.label).any(axis=0)
        v = valley_sagitta(smooth, cols, low, span, spacing_mm)
        s = surface_bulge(bone, labels[:top] == b.label, cols, top, spacing_mm)
        valleys += v or 0.0
        surfaces += s or 0.0
        per_bone.append([b.label, None if v is None else round(v, 2), None if s is None else round(s, 2)])
    return valleys, surfaces, per_bone


def decide(here: tuple[float, float, list], reverse: Callable[[], tuple[float, float, list]]) -> Direction:
    """The direction from this orientation's evidence ``here`` and, where that is not clear, the reversed
    stack's (``reverse()``)."""
    v, s, per_bone = here
    d = Direction(valleys=v, surfaces=s, per_bone=per_bone)
    if v > LEVEL_MM and s > LEVEL_MM:
        return d
    rv, rs, d.reverse_per_bone = reverse()
    d.reverse = (rv, rs)
    lean = d.lean or 0.0
    if v < -LEVEL_MM and s < -LEVEL_MM and rv > LEVEL_MM and rs > LEVEL_MM:
        d.reversed = True
    elif lean < 0:
        d.reason = (
            f"the slices may run from the fingers to the wrist (the joints bulge towards the first slice by"
            f" {-lean:.1f} mm on balance): check the slice order"
        )
    return d


__all__ = ["Direction", "decide", "evidence", "LEVEL_MM"]
