"""The classical baseline: MC2's periosteal contour from thresholds on the calibrated image, no weights.

In the spirit of Buie et al. (Bone 2007), the dual-threshold periosteal contouring that Scanco's
semi-automatic tools follow, adapted to the MCP joint:

1. Slice-wise Gaussian smoothing (sigma in mm, so 82 and 246 µm scans behave alike), on a grid of about
   0.16 mm (82 µm scans are reduced 2x in-plane for this and the next steps).
2. Two thresholds in mg HA/cm³ set from the scan's own soft-tissue and cortex levels (with floors),
   compared in stored units through the calibration: the *high* one finds cortex, the *low* one grows
   it into adjacent trabecular and thin-cortex voxels (hysteresis: low voxels connected to high ones).
3. Bones tracked slice by slice from the proximal end: pieces take the label of the region they
   overlap in the slice before, a piece touching two regions is split between them, and each bone is
   closed and filled on its own (its convex hull where the cortex stays open).
4. MC2 is the end of the metacarpal row with the larger head; the joint is cut where the shrinking
   dome's cross-section jumps up (the base of the phalanx joining the tracked region), and the dome's tip
   inside the phalanx's cup is followed on past the cut (``dome_tip``).
5. MC2's region back on the native grid, and its largest 3D component. Once the joint is settled (the
   pipeline's cut and parting read this contour), its outline is moved in to where the smoothed density
   crosses the high threshold, the half level (``peel_outline``: the low threshold's hysteresis takes the
   blurred edge's outer part in).

It needs the density calibration. It stands in for the semi-automatic expert tools in comparisons and
is a fallback where no trained model fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from vbmd_rt.runtime import edges
from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.runtime.postprocess import fill_holes_2d, joint_end, largest_component, sparse_zeros


@dataclass(frozen=True)
class Params:
    sigma_mm: float = 0.3  # Gaussian smoothing
    low_frac: float = 0.3  # hysteresis: voxels above tissue + low_frac x (cortex - tissue) joined to ...
    high_frac: float = 0.5  # ... voxels above tissue + high_frac x (cortex - tissue)
    min_low_mg: float = 180.0  # floors for the two thresholds, in mg HA/cm³
    min_high_mg: float = 350.0
    close_mm: float = 1.0  # slice-wise closing radius: bridges pores and small erosions
    group_mm: float = 0.5  # pieces of a new bone's cortex this close together are one bone
    min_volume_mm3: float = 20.0  # smaller components are noise
    hull_fill: float = 0.7  # a filled contour below this fraction of its convex hull is open: take the hull
    dome_fraction: float = 0.8  # the head's dome: cross-section below this fraction of the largest
    jump: float = 1.3  # ... that grows by this factor from one slice to the next has met the phalanx
    proximal_fraction: float = 0.15  # a metacarpal reaches into this first fraction of the slices


def _disc(radius_vox: float) -> np.ndarray:
    r = max(1, int(round(radius_vox)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _smooth(slice_: np.ndarray, sigma_vox: float, factor: int) -> np.ndarray:
    img: np.ndarray = np.asarray(slice_, dtype=np.float32)
    if factor > 1:
        img = cv2.resize(img, (img.shape[1] // factor, img.shape[0] // factor), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma_vox, 0.3), borderType=cv2.BORDER_REPLICATE)


#: A sampled slice whose brightest values (99.5th percentile) stand further above the soft tissue than this many
#: times the median slice's holds metal (a ring, a marker, a clip), not cortex: it is left out. Over 347 scans
#: checked (evaluation phantoms, the third generator's hands) bone's own slices stand at most 2.1 times as far
#: (a shaft's thick cortex against the heads'); the slices through a steel ring on a finger 2.4-5.3 times (those
#: under 3 are kept, and raise the cortex level by about a quarter: MC2 is still found). The median assumes bone
#: in most sampled slices, as an MCP scan has (metacarpals, then phalanges).
METAL_FACTOR = 3.0


def _split(v: np.ndarray) -> np.ndarray:
    """The hand's values in a sample (any unit): what Otsu separates from the air (empty where nothing does)."""
    grey = np.clip((v - v.min()) / max(float(np.ptp(v)), 1e-6) * 255, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return v[grey > otsu]


def hand_levels(slices) -> tuple[float, float] | None:
    """Soft tissue and cortex levels from sampled slices of a scan (an array, first axis the slices, or a
    list of them; any unit): the hand is what Otsu separates from the air, soft tissue its median, cortex
    its 99.5th percentile (bone is a few per cent of the hand); None when nothing stands out.

    Slices whose own brightest values stand ``METAL_FACTOR`` times further above the soft tissue than the
    median slice's are left out first: metal's values (a ring on a finger: thousands of mg HA/cm³)
    would otherwise set the cortex level, and no cortex would reach the thresholds drawn from it."""
    slices = [v for v in (np.asarray(s, dtype=np.float32).ravel() for s in slices) if v.size]
    own = [_split(v) for v in slices] if len(slices) > 2 else []
    tops = [float(np.percentile(h, 99.5)) if h.size else -np.inf for h in own]
    if any(h.size for h in own):
        soft = float(np.median([np.median(h) for h in own if h.size]))
        limit = soft + METAL_FACTOR * (float(np.median([t for t in tops if t > -np.inf])) - soft)
        slices = [v for v, t in zip(slices, tops, strict=True) if t <= limit]
    if not slices:
        return None
    hand = _split(np.concatenate(slices))
    if hand.size == 0:
        return None
    return float(np.median(hand)), float(np.percentile(hand, 99.5))


def _centres(shape, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The native rows and columns at the centres of the ``factor`` times coarser grid's pixels (``_smooth``)."""
    ny, nx = shape[1] // factor, shape[2] // factor
    return np.arange(ny) * factor + factor // 2, np.arange(nx) * factor + factor // 2


def thresholds(data: np.ndarray, spacing_zyx, cal: Calibration, p: Params = Params(), factor: int = 1, not_bone=None):
    """The two thresholds in mg HA/cm³, from the scan's own soft tissue and cortex levels.

    On nine slices spread over the scan, smoothed as for segmentation: the hand is what Otsu separates
    from air, soft tissue its median, cortex its 99.5th percentile (bone is a few per cent of the hand).
    ``not_bone`` (as ``bone_components``'s): a holder's shell, counted as air (it is neither tissue nor bone).
    """
    px = float(np.mean(spacing_zyx[1:])) * factor
    m, b = cal.density_equation()
    centres = _centres(data.shape, factor)
    values = []
    for k in np.linspace(0, data.shape[0] - 1, min(9, data.shape[0])).astype(int):
        v = _smooth(data[k], p.sigma_mm / px, factor) * m + b
        if not_bone is not None:
            v[not_bone(int(k), *centres)] = float(v.min())
        values.append(v)
    levels = hand_levels(values)
    if levels is None:
        return p.min_low_mg, p.min_high_mg
    tissue, cortex = levels
    span = max(cortex - tissue, 0.0)
    return max(p.min_low_mg, tissue + p.low_frac * span), max(p.min_high_mg, tissue + p.high_frac * span)


def bone_components(
    data: np.ndarray,
    spacing_zyx,
    cal: Calibration,
    p: Params = Params(),
    factor: int = 1,
    levels: tuple[float, float] | None = None,
    not_bone=None,
):
    """Labelled 3D bone components on a grid ``factor`` times coarser in-plane: hysteresis of the two
    thresholds (mg HA/cm³) on the smoothed scan (voxels above ``low`` joined to voxels above ``high``).
    ``not_bone(k, ys, xs)``: where slice ``k`` holds no bone whatever its density (bool, ``len(ys)`` x
    ``len(xs)``, at the native rows and columns given), e.g. a holder's shell the identification stage found."""
    px = float(np.mean(spacing_zyx[1:])) * factor
    low_mg, high_mg = levels or thresholds(data, spacing_zyx, cal, p, factor)
    lo, hi = cal.stored(low_mg), cal.stored(high_mg)
    z, y, x = data.shape
    low = np.zeros((z, y // factor, x // factor), bool)
    high = np.zeros_like(low)
    centres = _centres(data.shape, factor)
    for k in range(z):
        s = _smooth(data[k], p.sigma_mm / px, factor)
        low[k], high[k] = s > lo, s > hi
        if not_bone is not None:
            low[k] &= ~not_bone(k, *centres)
    labels, n = ndimage.label(low, structure=np.ones((3, 3, 3), bool))
    del low
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[high])] = True
    keep[0] = False
    labels[~keep[labels]] = 0
    return labels


def hull(m: np.ndarray) -> np.ndarray:
    pts = cv2.findNonZero(m)
    out = np.zeros(m.shape, np.uint8)
    if pts is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out.astype(bool)


def track(bone: np.ndarray, spacing_zyx, p: Params = Params(), split=None, init=None) -> np.ndarray:
    """Periosteal regions of every bone, tracked slice by slice from the proximal end (int32 labels).

    A slice's bone pieces take the label of the region they overlap in the slice before; a piece that
    touches two regions (neighbouring heads) is split between them by distance; a piece that touches
    none starts a new bone (a phalanx beyond the joint). Each bone's pieces are then closed and filled
    on their own, so a phalanx cup around a head never swallows it. ``split(mask) -> labels``: how a new
    group of pieces is cut into bones (``runtime.identify.split``: touching shafts); None keeps it whole.
    ``init``: labels of a slice before the first (``runtime.identify.shafts``: the shafts found on the mean
    of the proximal slab), so that a cortex broken into arcs in the first slice starts as one bone.
    """
    px = float(np.mean(spacing_zyx[1:]))
    min_px = max(4, int(p.min_volume_mm3 / 20.0 / (px * px)))
    close, group = _disc(p.close_mm / px), _disc(p.group_mm / px)
    out = np.zeros(bone.shape, np.int32)
    prev = np.zeros(bone.shape[1:], np.int32) if init is None else np.asarray(init, np.int32)
    next_label = int(prev.max()) + 1
    eight = np.ones((3, 3), bool)
    for k in range(bone.shape[0]):
        pieces, n = ndimage.label(bone[k], structure=eight)
        assigned = np.zeros_like(prev)
        unowned = np.zeros(prev.shape, bool)
        if n:
            near = None
            for j, sl in enumerate(ndimage.find_objects(pieces), start=1):
                piece = pieces[sl] == j
                owners = np.unique(prev[sl][piece])
                owners = owners[owners > 0]
                if owners.size == 1:
                    assigned[sl][piece] = owners[0]
                elif owners.size > 1:
                    if near is None:  # label of the nearest region of the slice before, for every pixel
                        idx = ndimage.distance_transform_edt(prev == 0, return_distances=False, return_indices=True)
                        near = prev[idx[0], idx[1]]
                    assigned[sl][piece] = near[sl][piece]
                else:
                    unowned[sl][piece] = True
            if unowned.any():  # new bones: pieces of one cortex ring grouped by the closing
                groups, g = ndimage.label(
                    cv2.morphologyEx(unowned.astype(np.uint8), cv2.MORPH_CLOSE, group), structure=eight
                )
                for j, gsl in enumerate(ndimage.find_objects(groups), start=1):
                    whole = groups[gsl] == j
                    if split is None:
                        parts = [whole]
                    else:
                        cut = split(cv2.morphologyEx(whole.astype(np.uint8), cv2.MORPH_CLOSE, close) > 0)
                        parts = [cut == q for q in range(1, int(cut.max()) + 1)]
                    for part in parts:
                        sel = part & unowned[gsl]
                        if sel.sum() >= min_px:
                            assigned[gsl][sel] = next_label
                            next_label += 1
        cur = np.zeros_like(prev)
        for lab in np.unique(assigned[assigned > 0]):
            sl = ndimage.find_objects((assigned == lab).astype(np.uint8))[0]
            pad = close.shape[0]
            sl = tuple(slice(max(0, s.start - pad), s.stop + pad) for s in sl)
            m = cv2.morphologyEx((assigned[sl] == lab).astype(np.uint8), cv2.MORPH_CLOSE, close)
            filled = fill_holes_2d(m)
            convex = hull(m)
            if filled.sum() < p.hull_fill * convex.sum():  # a cortex with gaps wider than the closing
                filled = convex
            cur[sl][filled & (cur[sl] == 0)] = lab
        out[k] = cur
        prev = cur
    return out


def pick_mc2(labels: np.ndarray, spacing_zyx, p: Params = Params(), near=None) -> int:
    """Label of MC2 among the tracked bones, or 0 when no metacarpal is found.

    ``near`` (y, x on this grid): where the identification stage (``runtime.identify``) put MC2's shaft;
    the metacarpal nearest to it is taken. Without it, the baseline's own rule:

    Metacarpals are the bones present through the proximal slices; MC2 is the one of the two at the
    ends of their row with the larger head (largest cross-section before the joint): MC5, at the other
    end, has the smallest head of the four.
    """
    reach = max(1, int(round(labels.shape[0] * p.proximal_fraction)))
    voxel_mm2 = float(spacing_zyx[1]) * float(spacing_zyx[2])
    first = labels[:reach]
    cands = []
    for lab in np.unique(first[first > 0]):
        zs = np.flatnonzero((first == lab).any(axis=(1, 2)))
        if zs.size < reach // 2:
            continue
        area = (labels == lab).sum(axis=(1, 2))
        area = area[: bone_end(area, float(spacing_zyx[0]), p, tail=None, cup=False)]
        if area.max() * voxel_mm2 < 2.0:
            continue
        ys, xs = np.nonzero((first == lab).any(axis=0))
        cands.append((float(xs.mean()), int(lab), float(area.max()), float(ys.mean())))
    if not cands:
        return 0
    if near is not None:
        return min(cands, key=lambda c: (c[0] - near[1]) ** 2 + (c[3] - near[0]) ** 2)[1]
    cands.sort()
    typical = float(np.median([c[2] for c in cands]))
    cands = [c for c in cands if c[2] >= 0.4 * typical]  # fragments are not metacarpals
    return max((cands[0], cands[-1]), key=lambda c: c[2])[1]


TAIL_FRACTION = 0.15  # past the head, a tracked region under this share of its largest cross-section is a sliver
DOME_MM = 0.4  # the jump rule's dome holds over at least this length (and two slices): a noisy cortex dips for less


def bone_end(
    area: np.ndarray, spacing_mm: float, p: Params = Params(), tail: float | None = TAIL_FRACTION, cup: bool = True
) -> int:
    """The first slice past a bone's head, from its tracked region's cross-section per slice (``area``,
    slices ``spacing_mm`` apart). The first of:

    * with ``cup``, the phalanx's cup around the dome (``postprocess.joint_end``);
    * the phalanx's base taken in at one slice: the area grows by ``p.jump`` right after the dome (slices
      under ``p.dome_fraction`` of the largest so far) that held over ``DOME_MM`` (two slices at least), or
      after a run of as many shrinking slices and one more that ends under it (three on the 0.5 mm grid). A
      slice or two that dip out of the blue are a noisy cortex;
    * with ``tail``, the region dwindled to under ``tail`` of its largest cross-section so far (3-slice mean):
      what the tracking carries on past the dome's tip is a tendon's or a sesamoid's sliver (on the
      identification stage's 0.5 mm grid). The native contour keeps its dome's tip (``tail=None``) and leaves
      the cup to the pipeline's cut on the model grid (``cup=False``).

    The stack's end when none is in view. One rule for every tracked region: the identification stage's, the
    native contour's, ``pick_mc2``'s heads and QC's baseline region (``qc.baseline``). The one-slice rule it
    replaced (the first jump after any dip) ended MC2 6.7 mm early on a noisy cortex: the identification stage
    named the wrong bone with a margin of 3.9 (randomised phantom 0017), and the classical contour cut heads
    short by up to 8.6 mm. Against the generator's head tips
    (``scripts/identity_errors.py``), joints more than 2 mm off fall from 12 % to 11 % of bones on 900
    training-family phantoms, from 13 % to 11 % on 112 randomised test hands and from 16 % to 15 % on the
    three held-out families."""
    n = int(area.size)
    a = np.asarray(area, dtype=np.float64)
    on = np.flatnonzero(a)
    start = int(on[0]) if on.size else 0  # a region may start a few slices in
    a = a[start:]
    ends = [(joint_end(area, spacing_mm) if cup else None) or n]
    if tail is not None:
        low = np.flatnonzero(a < tail * np.maximum.accumulate(ndimage.uniform_filter1d(a, 3, mode="nearest")))
        if low.size:
            ends.append(start + int(low[0]))
    dome = a < p.dome_fraction * np.maximum.accumulate(a)
    need = max(2, int(np.ceil(DOME_MM / spacing_mm - 1e-9)))
    for k in range(1, a.size):
        if dome[k - 1] and a[k] > p.jump * a[k - 1]:
            if k >= need and (dome[k - need : k].all() or (k > need and (np.diff(a[k - need - 1 : k]) < 0).all())):
                ends.append(start + k)
                break
    return min(ends)


TIP_MM = 3.0  # ``dome_tip`` follows a head's dome at most this far past its joint cut (a phalanx's cup is shallow)
NARROWING_MM = 4.0  # ... and where it cannot see it, extends the narrowing of the head's last this many mm
#: Where the dome found so far ends more than ``TIP_SHORT_MM`` before the identified tip (``dome_tip``'s ``tip``;
#: the identification stage's tips lie within 0.5 mm of the generator's in 80 % of bones, ``identity_errors.py
#: score``), it is carried on to that tip; where the image showed its last sliver, only more than ``TIP_AGREE_MM``
#: before it (the sliver is then taken for a piece of the cup's rim).
TIP_SHORT_MM, TIP_AGREE_MM = 0.5, 1.0


def dome_tip(
    region: np.ndarray, bone: np.ndarray, end: int, spacing_mm: float, p: Params = Params(), tip: float | None = None
) -> np.ndarray:
    """The tip of a head's dome inside the phalanx's cup, past the slice ``end`` where ``bone_end`` cut the
    bone's tracked ``region`` (bool, z y x; ``bone``: the bone mask it was tracked on, ``spacing_mm`` apart in
    z). Returns bool (k, y, x): the dome's cross-sections in slices ``end``, ``end + 1``, ... (k may be 0).

    Where the cup closes round the dome, tracking takes the two in as one region, and the cut at the joint
    (the narrowest slice, or the jump where the cup joins) loses the dome's tip inside the cup: up to 2.5 mm
    of the head. A dome narrows slice by slice within the cross-section before, so:

    1. as the image shows it (``_dome_slice``): the region itself while it still narrows and has not taken in
       the cup; then the region's bone pieces inside the cup, parted from it by the joint space;
    2. where the joint space is not seen (on a 0.5 mm grid, a blurred joint space is bone too), as the head
       narrows: its cross-section's area over its last ``NARROWING_MM`` before the cut, fitted with a
       parabola (a dome's area falls ever faster towards its tip; a line where the fit is not concave), is
       carried on, and each slice is the one before shrunk to that area (its deepest pixels), within the
       tracked region;
    3. with ``tip`` (the head's tip as the identification stage found it on its own instances,
       ``identify.head_tip``: in slices of this grid, slice k spanning [k, k + 1) from the stack's first
       slice as the pipeline turned it), where the dome found so far ends more than ``TIP_SHORT_MM`` before it:
       on to that tip as a dome of revolution narrows near its tip, its area falling linearly to nothing
       there (a paraboloid, at the slices' centres), from the last cross-section kept, each slice the one
       before shrunk to that area, within the tracked region or the bone. The tracking can hand the dome
       inside the cup to the phalanx's instance, or take the cup in with a cross-section that does not
       narrow, and a piece of the cup's rim can pass for the dome's last sliver (taken for one where it lies more
       than ``TIP_AGREE_MM`` before the tip), or the narrowing ends early: the dome then ended at the
       cut, 1-2.5 mm short of its tip (``--model classical``: 20 of 256 results of Dice >= 0.90 on the training
       and evaluation phantoms, 6 with it). A tip given too far carries the dome too far, nested in its last
       cross-section: by up to ``TIP_MM``, past a last sliver the image showed.

    It stops at the dome's tip (below ``TAIL_FRACTION`` of the head's largest cross-section, where a tracked
    region is a sliver), where the region ends (without ``tip``), or ``TIP_MM`` past ``end``."""
    nz = region.shape[0]
    empty = np.zeros((0, *region.shape[1:]), bool)
    if end <= 0 or end >= nz or not region[end - 1].any():
        return empty
    if tip is not None and not math.isfinite(tip):
        tip = None
    head = region[:end].sum(axis=(1, 2))  # the cross-sections up to the cut
    floor = max(1.0, TAIL_FRACTION * float(head.max()))
    stop = min(nz, end + max(1, int(round(TIP_MM / spacing_mm))))

    def short(ends: float, by_mm: float = TIP_SHORT_MM) -> bool:  # a dome ending at ``ends`` (slices) falls short
        return tip is not None and ends < tip - by_mm / spacing_mm

    out: list[np.ndarray] = []
    prev, k = region[end - 1], end
    narrowing = True  # whether step 2 may carry the head's narrowing on
    while k < stop:
        cur = _dome_slice(region[k], bone[k], prev, p)
        if cur is None:  # the dome touches the cup here
            break
        if cur.sum() >= prev.sum() or not region[k].any():  # no dome, or the region's end (no tip seen)
            narrowing = False
            break
        if cur.sum() < floor:  # its tip (in slice k), or a piece of the cup's rim well before
            if not short(k, TIP_AGREE_MM):  #   the identified tip (the sliver's slice measured from its start)
                return np.stack(out) if out else empty
            narrowing = False
            break
        out.append(cur)
        prev, k = cur, k + 1
    if narrowing:
        fit = _narrowing(np.concatenate([head, [o.sum() for o in out]]).astype(np.float64), spacing_mm)
        if fit is not None:
            out += _shrinking(prev, k, stop, floor, lambda j: int(np.polyval(fit, j)), lambda j: region[j])
    k, prev = end + len(out), (out[-1] if out else region[end - 1])
    if tip is not None and short(k):  # step 3: a paraboloid from the last cross-section kept (slice k - 1)
        last, centre = float(prev.sum()), k - 0.5
        out += _shrinking(
            prev,
            k,
            stop,
            floor,
            lambda j: int(last * (tip - j - 0.5) / (tip - centre)),  # at the slices' centres; none at the tip
            lambda j: region[j] | bone[j],  # the region may have handed the dome over
        )
    return np.stack(out) if out else empty


def _shrinking(prev: np.ndarray, k: int, stop: int, floor: float, area, within) -> list[np.ndarray]:
    """``dome_tip``'s carried dome: from cross-section ``prev`` (slice ``k - 1``), each slice ``k``, ``k + 1``, ...
    before ``stop`` the one before shrunk to ``area(k)`` pixels (``_shrunk``) within ``within(k)``, until the area
    or the slice falls under ``floor``."""
    out: list[np.ndarray] = []
    while k < stop:
        want = area(k)
        if want < floor:
            break
        cur = _shrunk(prev, want) & within(k)
        if cur.sum() < floor:
            break
        out.append(cur)
        prev, k = cur, k + 1
    return out


def with_tip(mask: np.ndarray, end: int, tip: np.ndarray) -> None:
    """A bool mask (z y x, in place) cut at slice ``end``, but for the dome's tip past it (``dome_tip``)."""
    mask[end + len(tip) :] = False
    mask[end : end + len(tip)] = tip


def _dome_slice(here: np.ndarray, bone: np.ndarray, prev: np.ndarray, p: Params) -> np.ndarray | None:
    """The dome's cross-section in one slice past the cut, as the image shows it (``dome_tip``), from the tracked
    region ``here``, the bone mask and the dome's cross-section ``prev`` in the slice before; None where the
    dome cannot be told from the cup (no bone piece inside the region's outline, or none that narrows)."""
    eight = np.ones((3, 3), bool)
    near = ndimage.binary_dilation(prev, structure=eight)
    if here.sum() <= prev.sum() and (here & ~near).sum() <= 0.05 * here.sum():
        return here.copy()  # still the dome alone (or nothing: the region ends)
    pieces, n = ndimage.label(bone & here, structure=eight)
    keep = np.ones(n + 1, bool)
    keep[0] = False
    keep[pieces[here & ~ndimage.binary_erosion(here, structure=eight)]] = False  # the cup: the region's outline
    inner = (keep[pieces] & near).astype(np.uint8)
    filled = fill_holes_2d(inner)
    convex = hull(inner)
    cur = (convex if filled.sum() < p.hull_fill * convex.sum() else filled) & near
    return cur if 0 < cur.sum() < prev.sum() else None


def _shrunk(section: np.ndarray, area: int) -> np.ndarray:
    """A cross-section shrunk to about ``area`` pixels, always fewer than it has: its pixels deepest inside
    (by distance to its outline; of the two counts around ``area`` that ties allow, the nearer)."""
    depth = ndimage.distance_transform_edt(section)
    order = np.sort(depth[section])[::-1]
    level = order[min(order.size, max(area, 1)) - 1]
    wide, narrow = depth >= level, depth > level
    return wide if wide.sum() < section.sum() and wide.sum() - area <= area - narrow.sum() else narrow


def _narrowing(area: np.ndarray, spacing_mm: float) -> np.ndarray | None:
    """Polynomial coefficients (``np.polyval``, in slice numbers) of a head's cross-section area over its last
    ``NARROWING_MM``, from where it narrows (its last slice within 5 % of the widest) at most: a concave
    parabola, else a line; None where it does not narrow."""
    n = area.size
    widest = int(np.flatnonzero(area >= 0.95 * area.max())[-1])  # where the narrowing begins
    z0 = max(widest, n - max(3, int(round(NARROWING_MM / spacing_mm))))
    zs = np.arange(z0, n)
    zs = zs[area[zs] > 0]
    if zs.size < 3:
        return None
    fit = np.polyfit(zs, area[zs], 2) if zs.size >= 4 else None
    if fit is None or fit[0] > 0:
        fit = np.concatenate([[0.0], np.polyfit(zs, area[zs], 1)])
    return fit if np.polyval(fit, n) < area[-1] else None


PEEL_MM = 0.25  # ``peel`` moves the outline in by at most this much (a voxel of the models' grid)
#: ``peel``'s smoothing: 0.15 mm (two 82 µm voxels), at least 1.2 of the scan's voxels (0.3 mm at 0.246 mm). The
#: thresholds' 0.3 mm flattens a thin cortex's peak at 82 µm under the half level (a standard full-size hand's
#: outline then went 3 voxels in, -5.3 mg HA/cm³ where it read +2.0); without smoothing, a 0.246 mm scan's noise
#: decides voxel by voxel (rand7000: mean absolute error 5.3 against 4.6).
PEEL_SIGMA_MM, PEEL_SIGMA_VOXELS = 0.15, 1.2


def peel(mask: np.ndarray, data: np.ndarray, cal: Calibration, level_mg: float, px: float, zs, ys, xs) -> int:
    """The outline of a native ``mask`` (uint8, in place, in slices ``zs`` and the box ``ys``, ``xs``) where
    the smoothed density crosses ``level_mg``: the high threshold, half-way from the soft tissue to the cortex
    (or its floor, ``Params.min_high_mg``).

    The hysteresis grows the cortex into every voxel above the low threshold (tissue + 0.3 x the rise) that
    touches it: what joins and fills a thin or porous cortex also takes in the blurred edge's outer part, a
    voxel of soft tissue and partial volume all round. On the project's 0.246 mm phantoms the contour was then
    7-28 % larger than the bone, and D100 read up to 28 mg HA/cm³ off (188 right bones of the evaluation
    phantoms: mean absolute error 5.75). So the outline's voxels (in-plane, 4-neighbour, on the slice's filled
    region: a hole's rim is no outline, and the field of view's edge cuts the bone, it is no surface) whose
    density, smoothed a little (``PEEL_SIGMA_MM``), stays under the level are taken off, a shell at a time, for
    at most ``PEEL_MM`` (at least a voxel); a shell that would take more than half of a slice's voxels (a dome's
    last small slices) leaves that slice as it is. Measured: mean absolute error 3.73 (CHANGELOG, thirty-second
    pass). A sharp edge is then set exactly by ``runtime.edges``. Returns the voxels taken off."""
    level = cal.stored(level_mg)  # the calibration's slope is positive
    sigma = max(PEEL_SIGMA_MM / px, PEEL_SIGMA_VOXELS)
    shells = max(1, int(PEEL_MM / px + 1e-6))
    g = int(math.ceil(3 * sigma))  # the blur reads this far past the box: a neighbour there is what it is
    y0, y1 = max(0, ys.start - g), min(data.shape[1], ys.stop + g)
    x0, x1 = max(0, xs.start - g), min(data.shape[2], xs.stop + g)
    inner = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    removed = 0
    for k in range(*zs.indices(mask.shape[0])):
        cur = mask[k, ys, xs]  # a view: written in place
        if not cur.any():
            continue
        smooth = cv2.GaussianBlur(
            data[k, y0:y1, x0:x1].astype(np.float32), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE
        )
        dark = smooth[inner] < level
        for _ in range(shells):
            core = edges._step(fill_holes_2d(cur).view(np.uint8)[None], grow=False)[0]  # in-plane, 4-neighbour
            drop = (cur != 0) & (core == 0) & dark
            n = int(drop.sum())
            if n == 0 or 2 * n > int(np.count_nonzero(cur)):
                break
            cur[drop] = 0
            removed += n
    return removed


def peel_outline(mask: np.ndarray, data: np.ndarray, cal: Calibration, info: dict, spacing_zyx) -> int:
    """``peel`` on ``segment``'s native ``mask`` (in place) in its box, at its high threshold, then the largest
    3D component in the box (a peel can part a thin bridge). The pipeline calls it once the joint is cut or
    parted on the contour as drawn: the joint's rules read the drawn contour's profile (an osteoporotic head's
    thin cortex, peeled first, let a parting through its marrow be taken: Dice 0.98 -> 0.75). Returns the
    voxels taken off (``info["peeled_voxels"]``)."""
    if info.get("box") is None:
        return 0
    z0, z1, y0, y1, x0, x1 = (int(v) for v in info["box"])
    zs, ys, xs = slice(z0, z1), slice(y0, y1), slice(x0, x1)
    removed = peel(mask, data, cal, float(info["thresholds_mg_ha_cm3"][1]), float(np.mean(spacing_zyx[1:])), zs, ys, xs)
    if removed:
        sub = mask[zs, ys, xs]
        sub[...] = largest_component(sub)
    info["peeled_voxels"] = removed
    return removed


NEAR_MM = 30.0  # with ``near``, bones are tracked within this distance of MC2's shaft (its neighbours too)


def coarse_factor(spacing_zyx) -> int:
    """How many native voxels in-plane make one of the grid ``segment`` finds and tracks bones on (about 0.16
    mm: 2 for 82 µm scans, 1 for voxels of 0.11 mm or more)."""
    return max(1, int(round(0.16 / float(np.mean(spacing_zyx[1:])))))


def segment(
    data: np.ndarray,
    spacing_zyx,
    cal: Calibration,
    p: Params = Params(),
    near=None,
    not_bone=None,
    tip: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Native (z, y, x) scan -> native uint8 MC2 mask (0/1) and facts, as the network path gives.

    ``near``: MC2's shaft (native y, x) as the identification stage found it; without it, the baseline's
    own choice (``pick_mc2``). With it, only the bones within ``NEAR_MM`` of the shaft are tracked (MC2 and
    its neighbours: a fifth of a full scan's field of view, a third of the time), on the same coarse grid
    and with the thresholds of the whole scan; ``components`` then counts the bones there.

    Bones are found and tracked on a grid of about 0.16 mm (2x coarser for 82 µm scans); MC2's region is
    then resampled (linear, at 0.5) onto the native grid. ``not_bone``: as ``bone_components``'s, on the
    whole scan's native rows and columns. ``tip``: the head's tip as the identification stage found it, in native
    slices (``dome_tip``'s), where its dome past the joint cut does not show.
    """
    px = float(np.mean(spacing_zyx[1:]))
    factor = coarse_factor(spacing_zyx)
    levels = thresholds(data, spacing_zyx, cal, p, factor, not_bone)
    if near is None:
        return _segment(data, spacing_zyx, cal, p, None, factor, levels, not_bone, tip)
    r = int(round(NEAR_MM / px))
    y0, x0 = (max(0, int(v) - r) // factor * factor for v in near)  # on the whole scan's coarse grid
    y1, x1 = min(data.shape[1], int(near[0]) + r), min(data.shape[2], int(near[1]) + r)
    crop = None if not_bone is None else (lambda k, ys, xs: not_bone(k, ys + y0, xs + x0))
    sub, info = _segment(
        data[:, y0:y1, x0:x1], spacing_zyx, cal, p, (near[0] - y0, near[1] - x0), factor, levels, crop, tip
    )
    mask = sparse_zeros(data.shape)  # written in MC2's box only
    if info["box"] is not None:
        z0, z1, b0, b1, b2, b3 = info["box"]
        mask[z0:z1, y0 + b0 : y0 + b1, x0 + b2 : x0 + b3] = sub[z0:z1, b0:b1, b2:b3]
        info["box"] = [z0, z1, y0 + b0, y0 + b1, x0 + b2, x0 + b3]
    return mask, info


def _segment(
    data, spacing_zyx, cal: Calibration, p: Params, near, factor: int, levels, not_bone=None, tip=None
) -> tuple[np.ndarray, dict]:
    coarse_spacing = (spacing_zyx[0], spacing_zyx[1] * factor, spacing_zyx[2] * factor)
    bone = bone_components(data, spacing_zyx, cal, p, factor, levels, not_bone) > 0
    labels = track(bone, coarse_spacing, p)
    n = int(labels.max())
    lab = pick_mc2(labels, coarse_spacing, p, None if near is None else (near[0] / factor, near[1] / factor))
    mask = np.zeros(data.shape, np.uint8)
    if lab == 0:
        return mask, {"components": n, "box": None, "empty": True, "thresholds_mg_ha_cm3": levels}
    mine = labels == lab
    del labels
    end = bone_end(mine.sum(axis=(1, 2)), float(spacing_zyx[0]), p, tail=None, cup=False)
    dome = dome_tip(mine, bone, end, float(spacing_zyx[0]), p, tip)
    del bone
    with_tip(mine, end, dome)
    mine = mine.astype(np.uint8)
    sl = ndimage.find_objects(mine)[0]
    pad = 2 * factor + 2
    ys = slice(max(0, sl[1].start * factor - pad), min(data.shape[1], sl[1].stop * factor + pad))
    xs = slice(max(0, sl[2].start * factor - pad), min(data.shape[2], sl[2].stop * factor + pad))
    for k in range(sl[0].start, sl[0].stop):
        if not mine[k].any():
            continue
        if factor > 1:  # coarse region -> native grid
            up = cv2.resize(
                mine[k].astype(np.float32),
                (mine.shape[2] * factor, mine.shape[1] * factor),
                interpolation=cv2.INTER_LINEAR,
            )
            region = np.zeros(data.shape[1:], np.uint8)
            h, w = min(up.shape[0], data.shape[1]), min(up.shape[1], data.shape[2])
            region[:h, :w] = up[:h, :w] > 0.5
        else:
            region = mine[k]
        mask[k] = region
    mask = largest_component(mask).astype(np.uint8)
    box = [sl[0].start, sl[0].stop, ys.start, ys.stop, xs.start, xs.stop]
    return mask, {
        "components": n,
        "box": box,
        "empty": not mask.any(),
        "thresholds_mg_ha_cm3": [round(v, 1) for v in levels],
        "tip_slices": len(dome),
    }
