"""Cortical and trabecular compartments of MC2 inside its periosteal mask: Ct.BMD, Tb.BMD, Ct.Th, Ct.Po,
Tb.BV/TV and the areas, for the whole bone and for its head and shaft.

The endosteal contour follows the dual-threshold autocontour of Buie et al. (2007, Bone 41:505) as IPL
runs it, slice by slice, with every radius and threshold in physical units (mm, mg HA/cm³), so that a
scan at 82 µm (XtremeCT I) and one at 60.7 µm (XtremeCT II) give the same compartments:

0. Outer voxels of the given mask darker than its periosteal edge (``peel_level`` of the way from the
   soft tissue's density to the cortex's) are peeled, up to ``peel_mm`` deep and only on slices whose outer
   layer is mostly that dark: a mask drawn a voxel or two wide of the bone (a network's, an editor's) would
   put soft tissue into the cortex. Peeled voxels are in neither compartment.
1. The calibrated density is smoothed (Gaussian, ``sigma_mm``) and thresholded half-way between the
   cortex's density and the interior's (the second threshold; the first is the periosteal mask's), both
   read from the scan itself: the cortex's once per bone (a high percentile over slices of each slice's
   90th percentile in the outer 1 mm band: the thick shaft cortex), the interior's per slice (the median
   deeper than 1.5 mm: marrow in the shaft, trabecular bone in the head; read about every mm and
   interpolated). An edge blurred by a symmetric point spread crosses that level where the edge is,
   whatever the scanner's blur; the level is kept within ``threshold_range_mg``.
2. The marrow space is what lies below it, deeper than the periosteal partial-volume rim (``rim_mm``);
   regions of it smaller than ``pore_max_mm2`` are intracortical pores, not marrow.
3. The marrow space is closed with a disc of ``close_mm`` (two Euclidean distance transforms): the
   trabeculae inside it, and those attached to the endosteal surface, join the trabecular region; the
   cortex, reached from outside the bone by that disc, does not. Holes of the region are filled; pieces
   smaller than ``min_tb_mm2`` go to the cortex.
4. Cortex = (peeled) periosteal mask minus the trabecular region (the periosteal rim belongs to the cortex).

Parameters (per slice, pooled over the slices of a region, the areas as means over its slices):

* ``ct_bmd_mg_ha_cm3``, ``tb_bmd_mg_ha_cm3``: mean density of the (unsmoothed) image in each compartment.
* ``ct_th_mm``, ``ct_th_sd_mm``: distance-transform thickness (Hildebrand and Rüegsegger 1997), in-plane:
  every cortical voxel gets the width of the cortex through it, its Euclidean distance to the periosteal
  surface plus its distance to the endosteal surface (less one voxel: both distances run between voxel
  centres). Where the two surfaces are locally parallel this is the diameter of the largest disc that
  contains the voxel and fits in the cortex, Hildebrand's local thickness; mean and SD over the cortical
  voxels of the slices that have a trabecular region (the dome's cap, solid cortex, has no second surface).
  In-plane because MC2 runs along z: a 3D transform would read the dome's oblique shell thinner.
* ``ct_ar_mm2``, ``tb_ar_mm2``, ``tt_ar_mm2``: mean areas over the region's slices (Tt.Ar = Ct.Ar + Tb.Ar).
* ``ct_po``: intracortical pore voxels (below the cortical threshold on a lightly smoothed image, more
  than ``pore_margin_mm`` from both surfaces) over the cortical voxels.
* ``tb_bv_tv``: voxels of the trabecular region at or above ``tb_threshold_mg`` (XtremeCT II's 320 mg
  HA/cm³ on a Gaussian of ``tb_sigma_mm``) over the region's voxels, as XtremeCT II measures it;
  ``tb_bv_tv_derived_1200``: XtremeCT I's derived form, Tb.BMD / 1200 mg HA/cm³.

``head`` and ``shaft`` split MC2 at its neck, found on the mask's cross-sectional area profile: where
the area, coming from the shaft, first passes half-way between the shaft's area and the head's largest.

Everything runs inside the mask's bounding box (plus a margin), with the slices of a chunk laid side by
side as one image for OpenCV (no Python loop over slices). No torch here (runtime never imports it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from vbmd_rt.runtime import damage
from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.runtime.parallel import each

PARAMETERS = (
    "ct_bmd_mg_ha_cm3",
    "tb_bmd_mg_ha_cm3",
    "ct_th_mm",
    "ct_th_sd_mm",
    "ct_ar_mm2",
    "tb_ar_mm2",
    "tt_ar_mm2",
    "ct_po",
    "tb_bv_tv",
    "tb_bv_tv_derived_1200",
)
"""The parameters of a region, in the order of the summary's columns (units in the names; ct_po and the
bone volume fractions are fractions in 0-1)."""

REGIONS = ("head", "shaft")

DEFINITIONS = {
    "ct_bmd_mg_ha_cm3": "Ct.BMD: mean density of the cortical compartment (mg HA/cm3)",
    "tb_bmd_mg_ha_cm3": "Tb.BMD: mean density of the trabecular compartment (mg HA/cm3)",
    "ct_th_mm": "Ct.Th: mean cortical thickness, distance-transform method (Hildebrand and Ruegsegger 1997), "
    "in-plane (mm)",
    "ct_th_sd_mm": "Ct.Th.SD: standard deviation of the local cortical thickness (mm)",
    "ct_ar_mm2": "Ct.Ar: mean cortical area over the slices (mm2)",
    "tb_ar_mm2": "Tb.Ar: mean trabecular area over the slices (mm2)",
    "tt_ar_mm2": "Tt.Ar: mean total (periosteal) area over the slices (mm2)",
    "ct_po": "Ct.Po: intracortical pore volume over cortical volume (fraction)",
    "tb_bv_tv": "Tb.BV/TV: bone (>= 320 mg HA/cm3) over trabecular volume (fraction, as XtremeCT II)",
    "tb_bv_tv_derived_1200": "Tb.BV/TV derived as XtremeCT I does: Tb.BMD / 1200 mg HA/cm3 (fraction)",
}


@dataclass(frozen=True)
class Params:
    """The autocontour's settings, all in physical units."""

    sigma_mm: float = 0.1  # Gaussian before the cortical threshold (Buie: about 1.2 voxels at 82 µm)
    rim_mm: float = 0.2  # the periosteal partial-volume rim: cortex, never marrow space
    close_mm: float = 1.2  # radius of the disc that closes the marrow space over the trabeculae
    pore_max_mm2: float = 0.25  # low-density regions smaller than this inside the bone are pores
    min_tb_mm2: float = 1.0  # smaller trabecular pieces are cortex; a slice needs this much to have a ring
    band_mm: float = 1.0  # outer band where the cortex's density is read
    level_sigma_mm: float = 0.1  # Gaussian of the image the densities of cortex and interior are read on
    level_percentile: float = 75.0  # of the slices' cortex levels: the thick (shaft) cortex, not the thin head
    level_step_mm: float = 1.0  # the interior's density is read on a slice about every this many mm
    level_slices: int = 40  # ... and on at most this many slices
    deep_mm: float = 1.5  # depth below the periosteal surface where the interior's density is read
    threshold_range_mg: tuple[float, float] = (300.0, 800.0)
    tb_sigma_mm: float = 0.05  # XtremeCT II's trabecular Gaussian (sigma 0.8 voxels of 60.7 µm)
    tb_threshold_mg: float = 320.0  # XtremeCT II's trabecular bone threshold
    pore_margin_mm: float = 0.1  # pores are read this far inside both surfaces (their partial volume)
    peel_mm: float = 0.25  # a given mask's outer voxels darker than the periosteal edge are peeled this deep
    peel_level: float = 0.4  # ... darker: below this fraction of the way from soft tissue to cortex
    peel_share: float = 0.5  # ... on a slice whose outer layer is at least this much that dark
    gap_fraction: float = 0.25  # a cortex missing along this share of a slice's outline is broken
    break_depth_mm: float = 0.3  # ... missing: no voxel at the cortical threshold this deep below the surface
    derived_tissue_mg: float = 1200.0  # XtremeCT I: Tb.BV/TV = Tb.BMD / 1200 mg HA/cm³
    neck_smooth_mm: float = 1.0  # running median of the area profile before the neck is looked for
    head_ratio: float = 1.25  # a head is at least this much larger in area than the shaft


PARAMS = Params()
CHUNK_SLICES = 24  # slices laid side by side in one image: OpenCV's calls amortised, memory bounded


@dataclass
class Compartments:
    """The compartments of one mask: ``labels`` (uint8, 0 outside, 1 cortex, 2 trabecular) inside ``box``
    ((z, y, x) slices of the scan), and the parameters (``values``, the result JSON's ``compartments``)."""

    labels: np.ndarray
    box: tuple[slice, slice, slice] | None
    values: dict


CORTEX, TRABECULAR = 1, 2


def record(comp: Compartments | None) -> dict | None:
    """The result JSON's ``compartments``: the parameters of the whole bone, ``head`` and ``shaft``, the neck,
    the thresholds and settings used, and the facts QC judges (None where none were computed)."""
    return None if comp is None else dict(comp.values)


def analyse(
    data: np.ndarray,
    mask: np.ndarray,
    spacing_zyx,
    calibration: Calibration | None,
    box=None,
    params: Params = PARAMS,
) -> Compartments | None:
    """Compartments of the scan ``data`` (stored values, (z, y, x)) inside ``mask`` (non-zero inside).

    ``box`` (z0, z1, y0, y1, x0, x1) bounds the mask (it is searched inside it only). ``None`` without a
    calibration (the thresholds are densities) or for an empty mask.
    """
    if calibration is None:
        return None
    k, b = calibration.density_equation()
    return _compartments(data, mask, spacing_zyx, (np.float32(k), np.float32(b)), box, params)


def of_density(
    density: np.ndarray, mask: np.ndarray, spacing_zyx, params: Params = PARAMS, labels: np.ndarray | None = None
) -> Compartments | None:
    """Compartments of a calibrated density volume (mg HA/cm³, (z, y, x)) inside ``mask``; None if empty.

    With ``labels`` (the scan's shape; ``TRABECULAR`` marks the trabecular compartment, e.g. a phantom's
    truth), the endosteal contour is not searched: the parameters are measured on the given compartments.
    """
    return _compartments(density, mask, spacing_zyx, None, None, params, labels)


def _compartments(data, mask, spacing_zyx, equation, box, params: Params, given=None) -> Compartments | None:
    from vbmd_rt.runtime.io.masks import bounding_box

    tight = bounding_box(mask, box)
    if tight is None:
        return None
    sz, sy, sx = (float(v) for v in spacing_zyx)
    px = math.sqrt(sy * sx)  # in-plane voxel (HR-pQCT voxels are square in-plane)
    # Every slice of a chunk gets a frame of real image around the mask's box, wide enough that nothing
    # reaches from one slice into the next when the chunk is one image (the closing's disc, the Gaussian).
    frame = int(math.ceil(params.close_mm / px)) + 3
    zs, ys, xs = tight
    sub = np.asarray(mask[tight]) != 0
    given_sub = None if given is None else (np.asarray(given[tight]) == TRABECULAR)
    nz = sub.shape[0]

    def block(z0, z1, y0, y1, x0, x1):
        """Density (float32 mg HA/cm³) and mask (uint8) of slices z0:z1, rows y0:y1, columns x0:x1 of the box,
        the frame around them; outside the scan the frame repeats the scan's edge (and holds no mask)."""
        Y0, Y1, X0, X1 = ys.start + y0 - frame, ys.start + y1 + frame, xs.start + x0 - frame, xs.start + x1 + frame
        cy0, cy1 = max(0, Y0), min(mask.shape[1], Y1)
        cx0, cx1 = max(0, X0), min(mask.shape[2], X1)
        d = np.asarray(data[zs.start + z0 : zs.start + z1, cy0:cy1, cx0:cx1], dtype=np.float32)
        if (cy0, cy1, cx0, cx1) != (Y0, Y1, X0, X1):
            d = np.pad(d, ((0, 0), (cy0 - Y0, Y1 - cy1), (cx0 - X0, X1 - cx1)), mode="edge")
        if equation is not None:
            d *= equation[0]
            d += equation[1]
        m = np.zeros(d.shape, np.uint8)
        m[:, frame:-frame, frame:-frame] = sub[z0:z1, y0:y1, x0:x1]
        if given is None:
            return np.ascontiguousarray(d), m, None
        t = np.zeros(d.shape, np.uint8)
        t[:, frame:-frame, frame:-frame] = given_sub[z0:z1, y0:y1, x0:x1]
        return np.ascontiguousarray(d), m, t & m

    thresholds, levels = cortical_threshold(block, sub, px, sz, params)
    rim = levels[2] + params.peel_level * (levels[0] - levels[2])
    labels = np.zeros(sub.shape, np.uint8)
    rows = np.zeros((nz, len(_ROW)), np.float64)

    def one(c0: int) -> None:
        c1 = min(nz, c0 + CHUNK_SLICES)
        part = sub[c0:c1]
        yy = np.flatnonzero(part.any(axis=(0, 2)))
        xx = np.flatnonzero(part.any(axis=(0, 1)))
        if yy.size == 0:
            return
        y0, y1, x0, x1 = int(yy[0]), int(yy[-1]) + 1, int(xx[0]), int(xx[-1]) + 1
        d, m, t = block(c0, c1, y0, y1, x0, x1)
        lab, r = _chunk(d, m, thresholds[c0:c1], px, params, t, rim)
        labels[c0:c1, y0:y1, x0:x1] = lab[:, frame:-frame, frame:-frame]  # chunks write disjoint slices
        rows[c0:c1] = r

    each(one, range(0, nz, CHUNK_SLICES))
    values = summarise(rows, (sz, sy, sx), params)
    if values["neck_slice"] is not None:
        values["neck_slice"] += zs.start
    inside = thresholds[np.flatnonzero(sub.reshape(nz, -1).any(axis=1))]
    values["thresholds_mg_ha_cm3"] = {
        "cortical": round(float(np.median(inside)), 1),
        "cortical_range": [round(float(inside.min()), 1), round(float(inside.max()), 1)],
        "cortex_level": round(levels[0], 1),
        "interior_level": round(levels[1], 1),
        "soft_tissue_level": round(levels[2], 1),
        "periosteal_peel": round(rim, 1),
        "trabecular_bone": params.tb_threshold_mg,
    }
    values["method"] = {"name": "dual-threshold autocontour (Buie et al. 2007), in mm", **asdict(params)}
    values["box_zyx"] = [int(v) for sl in tight for v in (sl.start, sl.stop)]  # where ``labels`` lie in the scan
    return Compartments(labels, tight, values)


def cortical_threshold(block, sub: np.ndarray, px: float, slice_mm: float, params: Params = PARAMS):
    """The endosteal threshold of every slice (mg HA/cm³): half-way between the cortex's density and the
    interior's. The cortex's is one level for the bone: the ``level_percentile`` over slices of each slice's
    90th percentile in the outer band (the thick shaft cortex, which blur does not lower); the interior's is
    read per slice (the median deeper than ``deep_mm``: marrow in the shaft, trabecular bone in the head),
    on slices about every ``level_step_mm``, and interpolated between them. ``block(z0, z1, y0, y1, x0, x1)``
    gives framed density and mask. Returns (thresholds per slice, (cortex level, median interior level))."""
    area = np.count_nonzero(sub.reshape(sub.shape[0], -1), axis=1)
    zs = np.flatnonzero(area)
    lo, hi = params.threshold_range_mg
    if zs.size == 0:
        return np.full(sub.shape[0], lo), (float("nan"), float("nan"), float("nan"))
    n = int(min(params.level_slices, max(3, round(zs.size * slice_mm / params.level_step_mm))))
    picks = np.unique(zs[np.linspace(0, zs.size - 1, min(n, zs.size)).round().astype(int)])
    cortex, interior, at, soft = [], [], [], []
    for k in picks:
        d, m, _ = block(int(k), int(k) + 1, 0, sub.shape[1], 0, sub.shape[2])
        s = _smooth(d[0], params.level_sigma_mm / px)
        dist = cv2.distanceTransform(m[0], cv2.DIST_L2, 5) * px
        band = (dist > 0) & (dist <= params.band_mm)
        deep = dist > params.deep_mm
        out = cv2.distanceTransform(1 - m[0], cv2.DIST_L2, 5) * px
        ring = (out > 0.3) & (out <= 1.0)  # around the bone, past its blur: soft tissue (or a neighbour)
        if ring.sum() > 10:
            soft.append(float(np.median(s[ring])))
        if band.any():
            cortex.append(float(np.percentile(s[band], 90)))
        if deep.sum() > 10:
            interior.append(float(np.median(s[deep])))
            at.append(int(k))
    if not cortex:
        return np.full(sub.shape[0], lo), (float("nan"), float("nan"), float("nan"))
    c = float(np.percentile(cortex, params.level_percentile))
    if interior:
        inner = np.interp(np.arange(sub.shape[0]), at, interior)
    else:
        inner = np.full(sub.shape[0], c / 4)
    thr = np.clip(0.5 * (c + inner), lo, hi)
    outside = float(np.median(soft)) if soft else 0.0
    return thr, (c, float(np.median(inner[zs])), outside)


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma_px) if sigma_px >= 0.3 else img


# Per-slice sums, pooled into the regions' parameters by ``summarise``.
_ROW = (
    "tt",  # voxels of the periosteal mask
    "ct",  # cortical voxels
    "tb",  # trabecular voxels
    "ct_sum",  # density summed over the cortex (mg HA/cm³ x voxels)
    "tb_sum",
    "th_n",  # cortical voxels with a local thickness (slices with a trabecular region)
    "th_sum",  # local thickness summed (mm)
    "th_sq",  # its squares
    "pores",  # intracortical pore voxels
    "tb_bone",  # trabecular voxels at or above the trabecular bone threshold
    "ring",  # 1 where the slice has a trabecular region
    "broken",  # 1 where the periosteal surface has no cortical bone below it along ``gap_fraction`` of it
    "radius_mm",  # the cross-section's equivalent radius, sqrt(area / pi)
    "peeled",  # voxels of the given mask's outer rim below the periosteal level (``_peel``): in no compartment
)
_I = {k: i for i, k in enumerate(_ROW)}


def _chunk(d: np.ndarray, m: np.ndarray, thresholds: np.ndarray, px: float, p: Params, given=None, rim_mg=None):
    """Labels and per-slice sums of a chunk of framed slices (n, H, W): the slices one above the other as
    one image (their frames keep them apart), so each OpenCV call covers the whole chunk. ``given``: the
    trabecular compartment (uint8 0/1, same shape) instead of the autocontour's."""
    n, H, W = d.shape
    flat = (n * H, W)
    dm, mm = d.reshape(flat), m.reshape(flat)
    inside = mm > 0
    s = _smooth(dm, p.sigma_mm / px)
    s_tb = _smooth(dm, p.tb_sigma_mm / px)
    threshold = np.repeat(thresholds.astype(np.float32), H)[:, None]  # each slice's, row by row
    # Distances in voxels; OpenCV's 5x5 Euclidean approximation (within 2 %) is three times faster than
    # the exact transform and well inside the thickness's tolerance.
    layers = int(p.peel_mm / px)  # whole voxel layers; at coarser voxels one layer is too much to peel
    if given is None and layers >= 2 and rim_mg is not None and math.isfinite(rim_mg):
        mm, peeled = _peel(mm, s, rim_mg, layers, n, p.peel_share)
        inside = mm > 0
    else:
        peeled = np.zeros(mm.shape, bool)
    d_peri = cv2.distanceTransform(mm, cv2.DIST_L2, 5)  # to the nearest voxel outside the bone
    low = s < threshold
    if given is None:
        trab = _endosteal(low, d_peri, inside, mm, px, p)
    else:
        trab = given.reshape(flat)
    tb = trab > 0
    cortex = inside & ~tb
    d_endo = cv2.distanceTransform(1 - trab, cv2.DIST_L2, 5)  # to the nearest trabecular voxel
    rows = np.zeros((n, len(_ROW)), np.float64)

    def count(a):
        return np.count_nonzero(a.reshape(n, -1), axis=1)

    def total(a, w):
        return np.where(a, w, np.float32(0)).reshape(n, -1).sum(axis=1, dtype=np.float64)

    rows[:, _I["tt"]] = count(inside)
    rows[:, _I["ct"]] = count(cortex)
    rows[:, _I["tb"]] = count(tb)
    rows[:, _I["ct_sum"]] = total(cortex, dm)
    rows[:, _I["tb_sum"]] = total(tb, dm)
    ring = rows[:, _I["tb"]] > 0
    with_ring = cortex & np.repeat(ring, H)[:, None]
    # mm: the cortex's width through each voxel (where a slice has no trabecular region, d_endo is huge)
    local = np.minimum(d_peri + d_endo - 1.0, np.float32(1e4)) * np.float32(px)
    rows[:, _I["th_n"]] = count(with_ring)
    lw = np.where(with_ring, local, np.float32(0)).reshape(n, -1)
    rows[:, _I["th_sum"]] = lw.sum(axis=1, dtype=np.float64)
    lw *= lw
    rows[:, _I["th_sq"]] = lw.sum(axis=1, dtype=np.float64)
    margin = p.pore_margin_mm / px + 1.0
    rows[:, _I["pores"]] = count(cortex & (s_tb < threshold) & (d_peri > margin) & (d_endo > margin))
    rows[:, _I["tb_bone"]] = count(tb & (s_tb >= p.tb_threshold_mg))
    rows[:, _I["ring"]] = ring
    # A break: periosteal surface with no cortical bone (at the threshold) within ``break_depth_mm`` below it
    # (an erosion, a cortical gap, a cortex lost), along ``gap_fraction`` or more of the slice's outline.
    depth = max(2.0, p.break_depth_mm / px)
    bone_near = cv2.distanceTransform((~(inside & ~low)).astype(np.uint8), cv2.DIST_L2, 3) <= depth
    surface = inside & (d_peri <= 1.0)
    rows[:, _I["broken"]] = (count(surface & ~bone_near) >= p.gap_fraction * count(surface)) & ring
    rows[:, _I["radius_mm"]] = np.sqrt(rows[:, _I["tt"]] / math.pi) * px
    rows[:, _I["peeled"]] = count(peeled)
    labels = (cortex * np.uint8(CORTEX)) | (tb * np.uint8(TRABECULAR))
    return labels.reshape(n, H, W), rows


def _peel(mm: np.ndarray, s: np.ndarray, level: float, layers: int, n: int, share: float = 0.5):
    """The mask (uint8) without its outer voxels darker than ``level`` (``peel_level`` of the way from soft
    tissue to cortex: outside the periosteal edge, whose voxels read half-way), peeled layer by layer from
    outside, at most ``layers`` deep, on the slices (``n`` in the chunk) where at least ``share`` of the
    outer layer is that dark (a mask drawn wide of the bone; a blurred or moved edge leaves most of a right
    mask's outer layer brighter); and what was peeled (bool). A mask drawn a voxel or two wide of the bone
    would otherwise put soft tissue into the cortex, whose density it would lower by 100 mg HA/cm³ or more."""
    cur = mm.copy()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    dark = s < level
    rows = mm.shape[0] // n
    for _ in range(layers):
        edge = (cur > 0) & (cv2.erode(cur, cross) == 0)
        drop = edge & dark
        wide = np.count_nonzero(drop.reshape(n, -1), axis=1) >= share * np.count_nonzero(edge.reshape(n, -1), axis=1)
        drop &= np.repeat(wide, rows)[:, None]
        if not drop.any():
            break
        cur[drop] = 0
    return cur, (mm > 0) & (cur == 0)


def _endosteal(low, d_peri, inside, mm, px: float, p: Params) -> np.ndarray:
    """The trabecular compartment (uint8 0/1): the marrow space below the threshold, deeper than the rim,
    without pores, closed with the disc, small pieces dropped, holes filled."""
    space = ((d_peri > max(1.0, p.rim_mm / px)) & low).astype(np.uint8)
    _drop_small(space, p.pore_max_mm2 / (px * px))
    radius = p.close_mm / px
    near = (cv2.distanceTransform(1 - space, cv2.DIST_L2, 3) <= radius).astype(np.uint8)  # dilation by the disc
    trab = ((cv2.distanceTransform(near, cv2.DIST_L2, 3) > radius) & inside).astype(np.uint8)  # erosion: closing
    _drop_small(trab, p.min_tb_mm2 / (px * px))
    return _fill_holes(trab, mm)


def _drop_small(binary: np.ndarray, min_voxels: float) -> None:
    """Remove (in place) the 8-connected pieces of a uint8 0/1 image smaller than ``min_voxels``."""
    try:  # 16-bit labels are a quarter faster; a chunk with more pieces than they count takes 32-bit ones
        n, lab, st, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        n, lab, st, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return
    small = st[:, cv2.CC_STAT_AREA] < min_voxels
    small[0] = False
    if small.any():
        binary[small[lab]] = 0


def _fill_holes(binary: np.ndarray, within: np.ndarray) -> np.ndarray:
    """``binary`` (uint8 0/1) with its holes filled (background the image's corner does not reach, 4-connected),
    inside ``within``."""
    reach = binary.copy()
    cv2.floodFill(reach, None, (0, 0), 2, flags=4)  # the frames of all slices are one background
    return ((reach != 2) & (within > 0)).astype(np.uint8)


# --------------------------------------------------------------------------- the parameters


def neck_slice(area: np.ndarray, slice_mm: float, params: Params = PARAMS) -> tuple[int, bool] | None:
    """Where MC2's head begins, from the mask's voxels per slice ``area``: (first slice of the head, True)
    when the head lies towards the last slice (the usual MCP scan: shaft first), (first slice past the
    head, False) when towards the first; None when the profile shows no head. The neck is where the
    (running-median) area, going from the shaft towards the largest cross-section, first passes half-way
    between the shaft's area and the largest."""
    from scipy import ndimage

    zs = np.flatnonzero(area)
    if zs.size < 8:
        return None
    span = area[zs[0] : zs[-1] + 1]
    a = damage.bridged(span, np.flatnonzero(span == 0))  # slices the mask leaves out (the scan lost them)
    half = max(1, int(round(0.5 * params.neck_smooth_mm / slice_mm)))
    sm = ndimage.median_filter(a, size=2 * half + 1, mode="nearest")
    top = int(np.argmax(sm))
    end = max(1, int(0.15 * a.size))
    # The shaft runs out of the stack with its full section; the head ends in a dome that tapers off.
    distal = float(sm[: min(3, a.size)].mean()) >= float(sm[-min(3, a.size) :].mean())
    shaft = float(np.median(sm[:end] if distal else sm[-end:]))
    if sm[top] < params.head_ratio * shaft:
        return None
    level = 0.5 * (shaft + float(sm[top]))
    if distal:
        below = np.flatnonzero(sm[:top] < level)
        return int(zs[0] + (below[-1] + 1 if below.size else 0)), True
    below = np.flatnonzero(sm[top:] < level)
    return int(zs[0] + top + (below[0] if below.size else a.size - top)), False


def summarise(rows: np.ndarray, spacing_zyx, params: Params = PARAMS) -> dict:
    """The parameters of the whole bone and of its head and shaft from the per-slice sums."""
    sz, sy, sx = (float(v) for v in spacing_zyx)
    neck = neck_slice(rows[:, _I["tt"]], sz, params)
    values = _region(rows, sy * sx, params)
    values["neck_slice"] = None if neck is None else neck[0]
    values["head_towards"] = None if neck is None else ("last slice" if neck[1] else "first slice")
    z = np.arange(rows.shape[0])
    if neck is None:
        values["head"] = values["shaft"] = None
    else:
        head = z >= neck[0] if neck[1] else z < neck[0]
        values["head"] = _region(rows[head], sy * sx, params)
        values["shaft"] = _region(rows[~head], sy * sx, params)
    values["checks"] = _checks(rows, params)
    given = rows[:, _I["tt"]].sum() + rows[:, _I["peeled"]].sum()
    values["rim_peeled_fraction"] = round(float(rows[:, _I["peeled"]].sum() / given), 4) if given else 0.0
    return values


def _region(rows: np.ndarray, px2: float, p: Params) -> dict:
    c = {k: float(rows[:, i].sum()) for k, i in _I.items()}
    slices = int(np.count_nonzero(rows[:, _I["tt"]]))
    out: dict = dict.fromkeys(PARAMETERS)
    if slices == 0:
        return {**out, "slices": 0}
    if c["ct"]:
        out["ct_bmd_mg_ha_cm3"] = round(c["ct_sum"] / c["ct"], 2)
        out["ct_po"] = round(c["pores"] / c["ct"], 4)
    if c["tb"]:
        tb_bmd = c["tb_sum"] / c["tb"]
        out["tb_bmd_mg_ha_cm3"] = round(tb_bmd, 2)
        out["tb_bv_tv"] = round(c["tb_bone"] / c["tb"], 4)
        out["tb_bv_tv_derived_1200"] = round(tb_bmd / p.derived_tissue_mg, 4)
    if c["th_n"]:
        mean = c["th_sum"] / c["th_n"]
        out["ct_th_mm"] = round(mean, 4)
        out["ct_th_sd_mm"] = round(math.sqrt(max(0.0, c["th_sq"] / c["th_n"] - mean * mean)), 4)
    out["ct_ar_mm2"] = round(c["ct"] / slices * px2, 3)
    out["tb_ar_mm2"] = round(c["tb"] / slices * px2, 3)
    out["tt_ar_mm2"] = round(c["tt"] / slices * px2, 3)
    out["slices"] = slices
    return out


def _checks(rows: np.ndarray, p: Params) -> dict:
    """Facts for QC (``qc.compartment_reasons``): how many slices have a broken or no cortex, or no
    trabecular region although the cross-section is wide, and the thickest slice's cortex against its radius."""
    has = rows[:, _I["tt"]] > 0
    r = rows[has]
    if r.size == 0:
        return {"slices": 0}
    wide = r[:, _I["radius_mm"]] > 2.0  # below this, the dome's cap: solid cortex by nature
    ring = r[:, _I["ring"]] > 0
    no_cortex = ring & (r[:, _I["ct"]] < 0.02 * r[:, _I["tt"]])
    th = np.divide(r[:, _I["th_sum"]], r[:, _I["th_n"]], out=np.zeros(len(r)), where=r[:, _I["th_n"]] > 0)
    ratio = np.divide(th, r[:, _I["radius_mm"]], out=np.zeros(len(r)), where=r[:, _I["radius_mm"]] > 0)
    n_wide = max(1, int(wide.sum()))
    return {
        "slices": int(len(r)),
        "wide_slices": int(wide.sum()),
        "broken_cortex_fraction": round(float((r[:, _I["broken"]] > 0)[wide].sum()) / n_wide, 4),
        "absent_cortex_fraction": round(float(no_cortex[wide].sum()) / n_wide, 4),
        "no_trabecular_fraction": round(float((~ring)[wide].sum()) / n_wide, 4),
        "max_thickness_to_radius": round(float(ratio[wide].max()) if wide.any() else 0.0, 4),
    }
