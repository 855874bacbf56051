"""Postprocessing: model-space probabilities back to a native-resolution MC2 mask, and the hand side.

``postprocess`` thresholds at model resolution, keeps the largest 3D connected component, and only then goes to
native resolution, interpolating the probabilities inside the bone's bounding box alone; it fills holes slice
by slice (a periosteal mask is solid) and keeps the largest native component. Every step works inside a box
(what is above threshold, the dilated bone, the bone at native resolution): no whole-grid temporaries.
"""

from __future__ import annotations

import mmap

import cv2
import numpy as np
from scipy import ndimage

from vbmd_rt.runtime.preprocess import Geometry, native_box, sample_at_native


def sparse_zeros(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """A zero array that takes memory only where it is written: a native mask written inside the bone's box.

    numpy asks the kernel for 2 MiB huge pages on large arrays, so a full-size mask (1536 x 1536 x 311) written
    inside the bone's box would take a huge page per slice (0.45 GB); a private anonymous map of 4 KiB pages
    takes the rows of the box (50 MB), and pages only read stay free. Small arrays: ``np.zeros``.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size < 1 << 24:
        return np.zeros(shape, dtype)
    # Private: a page read before it is written is the kernel's shared zero page (a shared map would
    # commit every page read, and share the mask with a forked child).
    return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype).reshape(shape)


def _largest(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 26-connected component of a boolean volume, and how many components there were.
    Labelled inside the box of what is set only (the labels' raster order, and so the tie-break, is the
    whole volume's)."""
    bb = _bbox(mask)
    if bb is None:
        return np.zeros(mask.shape, dtype=bool), 0
    at = (slice(bb[0], bb[1]), slice(bb[2], bb[3]), slice(bb[4], bb[5]))
    sub = np.asarray(mask[at], dtype=bool)
    labels, n = ndimage.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        sub = labels == int(np.argmax(sizes))
    if sub.shape == mask.shape:
        return sub, n
    out = np.zeros(mask.shape, dtype=bool)
    out[at] = sub
    return out, n


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean volume (empty stays empty)."""
    return _largest(mask)[0]


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of a 2D mask (what the background, 4-connected, cannot reach from the
    border is filled), by one OpenCV flood fill from the border: the same pixels, ten times faster."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask != 0
    cv2.floodFill(pad, None, (0, 0), 1)
    return (mask != 0) | (pad[1:-1, 1:-1] == 0)


def fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every (y, x) slice (a periosteal contour encloses its marrow)."""
    out = np.empty_like(mask, dtype=bool)
    for k in range(mask.shape[0]):
        out[k] = fill_holes_2d(mask[k]) if mask[k].any() else False
    return out


def _bbox(mask: np.ndarray) -> tuple[int, ...] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box += [int(idx[0]), int(idx[-1]) + 1]
    return tuple(box)


def _visible(prob: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The part of a cropped model-space volume that lies on the model grid, in scan orientation (a view),
    and where it starts on the uncropped grid (z, y, x): ``from_model`` without its full-grid copy."""
    cy0, cy1, cx0, cx1 = geometry.crop
    _, my, mx = geometry.model_shape
    sy0, sy1, sx0, sx1 = max(cy0, 0), min(cy1, my), max(cx0, 0), min(cx1, mx)
    view = prob[:, sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0]
    if geometry.flip_x:
        return view[..., ::-1], (0, sy0, mx - sx1)
    return view, (0, sy0, sx0)


def postprocess(prob: np.ndarray, geometry: Geometry, threshold: float = 0.5) -> tuple[np.ndarray, dict]:
    """Cropped model-space probabilities -> native uint8 mask (0/1) in scan orientation, and facts.

    Facts: ``model_voxels`` of the kept component, ``components`` above threshold at model resolution,
    ``box`` (native z0, z1, y0, y1, x0, x1 of the work region), ``empty`` when nothing was found.

    Works inside boxes only: the components inside the box of what is above threshold, the dilated bone in
    its own box on the model grid, the native grid inside the bone's box; no temporary of the whole model
    grid or of the native scan (the returned mask is the only full-size array, written inside the box).
    """
    mask = sparse_zeros(geometry.native_shape)
    view, origin = _visible(prob, geometry)
    above = view > threshold
    bb = _bbox(above)
    if bb is None:
        return mask, {"components": 0, "model_voxels": 0, "box": None, "empty": True}
    at = (slice(bb[0], bb[1]), slice(bb[2], bb[3]), slice(bb[4], bb[5]))
    keep, n = _largest(above[at])
    kb = _bbox(keep)
    assert kb is not None
    grid = (view.shape[0], *geometry.model_shape[1:])
    # The kept component on the uncropped grid, in a block two voxels wider (the dilation's reach).
    lo = [max(origin[a] + bb[2 * a] + kb[2 * a] - 2, 0) for a in range(3)]
    hi = [min(origin[a] + bb[2 * a] + kb[2 * a + 1] + 2, grid[a]) for a in range(3)]
    block = np.zeros([h - low for low, h in zip(lo, hi, strict=True)], dtype=bool)
    k0 = [origin[a] + bb[2 * a] + kb[2 * a] - lo[a] for a in range(3)]
    kept = keep[kb[0] : kb[1], kb[2] : kb[3], kb[4] : kb[5]]
    block[k0[0] : k0[0] + kept.shape[0], k0[1] : k0[1] + kept.shape[1], k0[2] : k0[2] + kept.shape[2]] = kept
    region = ndimage.binary_dilation(block, iterations=2)
    values = np.zeros(block.shape, dtype=np.float32)  # the probabilities on the block (0 off the crop)
    v0 = [max(lo[a] - origin[a], 0) for a in range(3)]
    v1 = [min(hi[a] - origin[a], view.shape[a]) for a in range(3)]
    values[
        v0[0] + origin[0] - lo[0] : v1[0] + origin[0] - lo[0],
        v0[1] + origin[1] - lo[1] : v1[1] + origin[1] - lo[1],
        v0[2] + origin[2] - lo[2] : v1[2] + origin[2] - lo[2],
    ] = view[v0[0] : v1[0], v0[1] : v1[1], v0[2] : v1[2]]
    values[~region] = 0
    rb = _bbox(region)
    assert rb is not None
    mbox = tuple(lo[a // 2] + rb[a] for a in range(6))
    box = native_box(mbox, geometry)
    p = sample_at_native(values, geometry, box, origin=tuple(lo), grid=grid)
    native = largest_component(fill_holes_slicewise(p > threshold))
    mask[box] = native
    info = {
        "components": int(n),
        "model_voxels": int(keep.sum()),
        "box": [box[0].start, box[0].stop, box[1].start, box[1].stop, box[2].start, box[2].stop],
        "empty": not native.any(),
    }
    return mask, info


#: The joint beyond MC2's head, on a mask's cross-section profile (``joint_end``).
DOME_FRACTION = 0.8  # the head's dome: cross-section below this fraction of the largest so far
DOME_MM = 1.5  # ... reached after shrinking over at least this length (a dip of a few slices is no dome)
CUP_RISE = 1.15  # ... that grows again by this factor within CUP_MM has taken in the phalanx's base
CUP_MM = 3.0
CUP_FLOOR = 0.45  # ... and the smallest cross-section there is still this share of the largest (a cup
#                  around the dome, not a mask that fell apart)
RIM_RISE = 0.5  # or (``tip``) the mask grows again to this share of the largest: across the joint space onto
#                 the phalanx's base
TIP_FLOOR = 0.2  # ... or, where the head's end is not known (``tip_floor``), from a dome that narrowed to under
#                  this share of the largest wherever it lies: a dome's tip narrows to a tenth, an erosion a third


def joint_end(
    area: np.ndarray, spacing_mm: float, tip: bool = False, tip_from: int = 0, tip_floor: float | None = None
) -> int | None:
    """Where a mask that ran on past MC2's head into the base of the proximal phalanx should end: the first
    slice of the phalanx, or None when the profile shows no joint.

    ``area``: the mask's cross-section per slice from the proximal end (any unit), ``spacing_mm`` between
    slices. The phalanx's base cups the head, so a mask that takes it in keeps the outline of the cup: its
    cross-section shrinks along the dome (to below ``DOME_FRACTION`` of the largest, over at least
    ``DOME_MM``), then grows again (by ``CUP_RISE`` within ``CUP_MM``) where the cup's rim is wider than
    the dome's tip. The cut is at the narrowest slice of the smoothed profile (the first zeroed slice is the one
    after it), so the phalanx is not counted as MC2; the dome's tip inside the cup, which the cut takes with it
    (up to 2.5 mm of the head), is followed on past it by the callers (``classical.dome_tip``). A short dip (a
    few slices the network marked badly) or a mask that fell apart (under ``CUP_FLOOR`` of the largest) is no
    joint.

    With ``tip`` (a network's mask, which follows the dome towards its tip rather than the cup's outline), a
    dome that narrows below ``CUP_FLOOR`` and then grows again within ``CUP_MM`` (by ``CUP_RISE``) to over
    ``RIM_RISE`` of the largest has run on across the joint space onto the phalanx's base (bridged by the
    joint's blur, or a flexed finger's base beside the head's end): it ends after the narrowest slice (of
    the profile as it is, not smoothed), where that slice lies at ``tip_from`` or beyond (the caller's
    estimate of where the head may end: a mask that fell apart in the middle of the head, an erosion, is no
    tip). ``tip_floor`` (``TIP_FLOOR``, where that estimate may be wrong) takes a tip before ``tip_from`` too
    where the narrowest slice (the least of the three raw ones around the smoothed profile's) holds under that
    share of the largest cross-section so far: a dome's tip narrows to nothing, an erosion leaves a good part
    of the head's.
    """
    a = ndimage.uniform_filter1d(np.asarray(area, dtype=np.float64), 3, mode="nearest")
    n, look, dome = a.size, max(1, int(round(CUP_MM / spacing_mm))), DOME_MM / spacing_mm
    peak, top, k = 0.0, 0, 1
    while k < n:
        if a[k - 1] >= peak:
            peak = a[k - 1]
        if a[k - 1] >= 0.95 * peak:
            top = k - 1
        if a[k] < DOME_FRACTION * peak:
            m = k
            while m + 1 < n and a[m + 1] <= a[m]:
                m += 1
            after = a[m + 1 : m + 1 + look]
            low = float(a[k : m + 1].min())
            if after.size and after.max() > CUP_RISE * a[m] and m - top >= dome:
                if low >= CUP_FLOOR * peak:
                    return m + 1
                if tip and after.max() > RIM_RISE * peak:
                    raw = np.asarray(area, dtype=np.float64)[max(m - 1, 0) : m + 2]
                    if m >= tip_from or (tip_floor is not None and raw.min() < tip_floor * peak):
                        return max(m - 1, 0) + int(np.argmin(raw)) + 1
            k = m + 1
            while k < n and a[k] < DOME_FRACTION * peak:  # no dome there: on to where the mask is whole again
                k += 1
            continue
        k += 1
    return None


def sample_slices(mask: np.ndarray, count: int = 9) -> np.ndarray:
    """Up to ``count`` slice indices spread evenly over the slices that hold the mask."""
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return zs[np.linspace(0, zs.size - 1, min(count, zs.size)).astype(int)] if zs.size else zs


def detect_side(data: np.ndarray, mask: np.ndarray) -> str | None:
    """Hand side from where MC2 lies in the row of metacarpals (model space is a right hand: MC2 on -x).

    On the slices with MC2, the bright voxels (above the midpoint between the soft tissue and MC2's
    cortex) are the metacarpals; MC2 left of their centre of mass means a right hand. ``None`` when
    there is no MC2 or no other bone to compare with.
    """
    mc2_x, all_x = [], []
    for k in sample_slices(mask):
        img = np.asarray(data[k], dtype=np.float32)
        m = mask[k] != 0
        inside = img[m]
        if inside.size < 10:
            continue
        cortex = np.percentile(inside, 95)
        tissue = np.median(img[~m])
        bone = img > (cortex + tissue) / 2
        other = bone & ~m
        if other.sum() < 10:
            continue
        xs = np.arange(img.shape[1], dtype=np.float64)
        mc2_x.append(float((m.sum(axis=0) * xs).sum() / m.sum()))
        all_x.append(float((bone.sum(axis=0) * xs).sum() / bone.sum()))
    if not mc2_x:
        return None
    return "right" if np.median(np.subtract(mc2_x, all_x)) < 0 else "left"


# --------------------------------------------------------------------------- a small bone held by a neck

#: A sesamoid (or another small bone) that MC2's mask took in beside the head: in each slice a lobe that a neck
#: parts from the cross-section (``split``) and that holds under this share of its largest lobe ...
SATELLITE_FRACTION = 0.3
SATELLITE_NECK = 0.9  # a neck: the distance map dips under this share of the lower peak between two lobes (for
#                       touching shafts ``split`` asks 0.75: a sesamoid lies close, and blur widens its neck)
SATELLITE_MIN_MM3 = 2.0  # ... whose lobes, stacked, make a body of at least this volume (not a sliver of a
#                          lobe that the cut's power diagram left), at most ...
SATELLITE_MAX_MM3 = 200.0  # ... this volume (an MCP sesamoid is
SATELLITE_MAX_MM = 8.0  # ... 3-6 mm across), this height and ...
SATELLITE_MAX_MM2 = 32.0  # ... this cross-section (a disc 6.4 mm across): a condyle, or a neighbour's shaft or
#                           head that the mask took in with MC2 (two bones as one: QC's business), is larger
SATELLITE_REACH_MM = 3.0  # the body's own voxels in the slices where no neck shows: within this of it


def satellites(mask: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, list[dict]]:
    """The voxels of small bones that a neck joins to MC2's ``mask`` (bool z, y, x; isotropic ``spacing_mm``),
    and a record of each body (``volume_mm3``, ``slices``).

    In each slice the cross-section is cut at its necks (``split``: peaks of the distance map, each the highest
    in a 6 mm square and at least 1.2 mm deep, with a neck under ``SATELLITE_NECK`` of the lower one between
    them). MC2's lobe is the one nearest the centre of its cross-section in the slice before, counted from the
    largest cross-section towards both ends (not the largest lobe: near the dome's tip a sesamoid can be
    larger than MC2 there). Other lobes under ``SATELLITE_FRACTION`` of MC2's are stacked into bodies. A body
    of ``SATELLITE_MIN_MM3`` to ``SATELLITE_MAX_MM3``, at most ``SATELLITE_MAX_MM`` tall and
    ``SATELLITE_MAX_MM2`` in cross-section is another bone: a sesamoid beside the head (at the MCP joint of the
    index finger in about half of hands), which a blurred joint space bridges to it. It takes the mask's
    voxels that lie closer to it than to MC2 through the mask, within ``SATELLITE_REACH_MM`` (a watershed on
    the mask's distance map: its poles, which show no neck, and the neck up to its narrowest point). Larger
    bodies stay (a condyle, two bones as one: QC's business). The mask alone decides: a bony outgrowth on a
    narrow stalk, rare at the MCP joint, would go as a sesamoid does (``mask.small_bones_removed`` says what
    went)."""
    lobes = np.zeros(mask.shape, bool)
    main = np.zeros(mask.shape, bool)  # MC2's lobe in every slice that has a neck
    cut: dict[int, tuple] = {}
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    for z in zs:
        ys, xs = np.flatnonzero(mask[z].any(axis=1)), np.flatnonzero(mask[z].any(axis=0))
        at = (slice(max(ys[0] - 1, 0), ys[-1] + 2), slice(max(xs[0] - 1, 0), xs[-1] + 2))  # its box, a rim wider
        lab = split(mask[z][at], spacing_mm, neck=SATELLITE_NECK)
        if int(lab.max()) >= 2:
            cut[int(z)] = (at, lab)
    if not cut:
        return np.zeros(mask.shape, bool), []
    start = int(zs[int(np.argmax(mask[zs].sum(axis=(1, 2))))])
    for order in (range(start, int(zs[-1]) + 1), range(start - 1, int(zs[0]) - 1, -1)):
        before = None if order.start == start else (main[start] if start in cut else mask[start])
        for k in order:  # MC2's cross-section in the slice before (``before``), on the way from the largest one
            if k not in cut:
                before = mask[k]
                continue
            at, lab = cut[k]
            n = int(lab.max())
            areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            own = int(areas.argmax()) + 1
            if before is not None and before.any():  # the lobe nearest the centre of MC2's cross-section before
                centre = np.array(ndimage.center_of_mass(before)) - (at[0].start, at[1].start)
                lobes_at = np.array(ndimage.center_of_mass(lab > 0, lab, range(1, n + 1)))
                own = int(np.argmin(np.hypot(*(lobes_at - centre).T))) + 1
            main[k][at] = lab == own
            small = np.flatnonzero(areas < SATELLITE_FRACTION * areas[own - 1]) + 1
            lobes[k][at] = np.isin(lab, small)
            before = main[k]
    removed = np.zeros(mask.shape, bool)
    bodies: list[dict] = []
    if not lobes.any():
        return removed, bodies
    comps, _ = ndimage.label(lobes)
    reach = max(1, int(round(SATELLITE_REACH_MM / spacing_mm)))
    for j, sl in enumerate(ndimage.find_objects(comps), start=1):
        body = comps[sl] == j
        volume = float(body.sum()) * spacing_mm**3
        widest = float(body.sum(axis=(1, 2)).max()) * spacing_mm**2
        tall = (sl[0].stop - sl[0].start) * spacing_mm
        if (
            not SATELLITE_MIN_MM3 <= volume <= SATELLITE_MAX_MM3
            or widest > SATELLITE_MAX_MM2
            or tall > SATELLITE_MAX_MM
        ):
            continue
        box = tuple(
            slice(max(s.start - reach, 0), min(s.stop + reach, size)) for s, size in zip(sl, mask.shape, strict=True)
        )
        m = mask[box]
        depth = ndimage.distance_transform_edt(m)
        cost = np.full(m.shape, 255, np.uint8)  # deep inside floods first: a neck parts the two
        cost[m] = (253 - np.minimum(depth[m] * 253 / max(float(depth.max()), 1.0), 252)).astype(np.uint8)
        seeds = np.zeros(m.shape, np.int16)
        faces = np.ones(m.shape, bool)
        faces[1:-1, 1:-1, 1:-1] = False
        seeds[m & (main[box] | faces)] = 1  # MC2: its largest lobes, and the mask where it leaves the box
        inner = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sl, box, strict=True))
        seeds[inner][body] = 2
        took = (ndimage.watershed_ift(cost, seeds) == 2) & m
        removed[box] |= took
        on = np.flatnonzero(took.any(axis=(1, 2))) + box[0].start  # the body's slices
        bodies.append(
            {"volume_mm3": round(float(took.sum()) * spacing_mm**3, 1), "slices": [int(on[0]), int(on[-1]) + 1]}
        )
    return removed, bodies


# --------------------------------------------------------------------------- touching bones in one cross-section


WALL_MM = 4.0  # a cortex wall between two marrows is at most this thick: two cortices of up to 2 mm, touching


def segment_pixels(a, b, shape, samples: int | None = None, least: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (rows, columns) on the straight segment from ``a`` to ``b`` ((y, x) px), clipped to ``shape``:
    ``samples`` points, by default two a pixel of its length (at least ``least``)."""
    n = samples or max(least, int(2 * float(np.hypot(b[0] - a[0], b[1] - a[1]))) + 1)
    t = np.linspace(0.0, 1.0, n)
    yy = np.clip(np.round(a[0] + t * (b[0] - a[0])).astype(int), 0, shape[0] - 1)
    xx = np.clip(np.round(a[1] + t * (b[1] - a[1])).astype(int), 0, shape[1] - 1)
    return yy, xx


def wall_between(ring: np.ndarray, a, b, spacing_mm: float) -> bool:
    """Whether the segment from ``a`` to ``b`` (two points in marrow, (y, x) px) crosses a cortex wall of
    ``ring`` (bool, cortex): a run of cortex 0.5 mm to ``WALL_MM`` thick with at least 1 mm of marrow on
    both sides. Two shafts that touch share such a wall; two lobes of one marrow do not. Runs of cortex at
    the ends (a dense spot at a centre) are part of the ends."""
    length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
    yy, xx = segment_pixels(a, b, ring.shape)
    on = ring[yy, xx].astype(np.int8)
    step = length / max(1, yy.size - 1) * spacing_mm
    edges = np.flatnonzero(np.diff(on)) + 1
    bounds = np.concatenate([[0], edges, [on.size]])
    runs: list[tuple[int, float]] = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        value, mm = int(on[s]), (e - s) * step
        if len(runs) >= 2 and value and not runs[-1][0] and runs[-1][1] < 0.5:  # a speck of marrow in a wall
            mm += runs.pop()[1] + runs.pop()[1]
        runs.append((value, mm))
    for i in range(1, len(runs) - 1):
        value, mm = runs[i]
        before, after = runs[i - 1], runs[i + 1]
        if value and 0.5 <= mm <= WALL_MM and not before[0] and not after[0] and before[1] >= 1.0 and after[1] >= 1.0:
            return True
    return False


def split(
    piece: np.ndarray,
    spacing_mm: float,
    min_gap_mm: float = 6.0,
    min_radius_mm: float = 1.2,
    ring=None,
    neck: float = 0.75,
) -> np.ndarray:
    """A 2D piece of bone (bool) -> labels 1..n of the bones it holds (touching shafts or heads): the filled
    cross-section is cut by a watershed on its distance map, one seed per peak at least ``min_gap_mm``
    from a higher one; two seeds are one bone unless the distance map between them dips under ``neck`` of the
    lower peak. ``ring``: the cortices (bool, same shape), where known: two seeds with a cortex wall
    between them (``wall_between``) are two bones even without a neck."""
    filled = fill_holes_2d(piece)
    edt = ndimage.distance_transform_edt(filled) * spacing_mm
    size = max(3, int(round(min_gap_mm / spacing_mm)) | 1)
    peaks = (edt >= ndimage.maximum_filter(edt, size=size)) & (edt > min_radius_mm)
    seeds, n = ndimage.label(ndimage.binary_dilation(peaks, iterations=1))
    if n <= 1:
        return piece.astype(np.int32)
    # Two seeds with no clear neck between them (the distance map along the segment joining them stays
    # above ``neck`` of the lower peak) are one bone: an elongated or lobed cross-section.
    cs = ndimage.center_of_mass(seeds > 0, seeds, range(1, n + 1))
    hs = ndimage.maximum(edt, seeds, range(1, n + 1))
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            t = np.linspace(0, 1, 24)
            yy = np.round(cs[i][0] + t * (cs[j][0] - cs[i][0])).astype(int)
            xx = np.round(cs[i][1] + t * (cs[j][1] - cs[i][1])).astype(int)
            if edt[yy, xx].min() > neck * min(hs[i], hs[j]):
                if ring is not None and wall_between(ring, cs[i], cs[j], spacing_mm):
                    continue  # touching shafts that share a wall: their marrows are apart
                parent[root(j)] = root(i)
    lut = np.zeros(n + 1, np.int32)
    roots = sorted({root(i) for i in range(n)})
    for i in range(n):
        lut[i + 1] = roots.index(root(i)) + 1
    seeds = lut[seeds]
    n = len(roots)
    if n <= 1:
        return piece.astype(np.int32)
    # Each voxel to its nearest seed, weighted by the seed's radius (a power diagram of the discs).
    centres = ndimage.center_of_mass(seeds > 0, seeds, range(1, n + 1))
    radii = np.array(ndimage.maximum(edt, seeds, range(1, n + 1)))
    yy, xx = np.nonzero(piece)
    d = np.stack(
        [np.hypot(yy - cy, xx - cx) * spacing_mm / max(r, 1e-6) for (cy, cx), r in zip(centres, radii, strict=True)]
    )
    out = np.zeros(piece.shape, np.int32)
    out[yy, xx] = np.argmin(d, axis=0) + 1
    return out
