"""MC2 parted from the phalanx where the mask's profile shows no joint: a narrow or tilted MCP joint.

Both models draw MC2's envelope and end it at the joint from its profile (``postprocess.joint_end``: the
dome narrows, then the phalanx's cup widens the mask again). Where the joint space is narrow (0.25-0.7 mm,
one to three voxels of the model grid, as arthritis leaves it) or the finger is tilted so that the joint
lies oblique to the slices, the mask runs on across the joint into the base of the proximal phalanx, and
the base's cup, which holds the dome, keeps its cross-section from narrowing: the profile shows no joint.
QC reviewed most of these masks, and the measurement was lost: on a fourth, independent generator's hands
with joint spaces of 0.25-0.8 mm, tilted 0-17°, the bundled network's masks that ran on read Dice 0.79-0.93.

Such a mask is parted in 3D where the scan shows the joint: two bright subchondral plates with a darker
sheet between them. A cost is high on thin dark sheets between brighter voxels (``_cost``: the black top-hat
of a one-voxel cross, which a joint space under two voxels wide fills and marrow, wider, does not) and, less,
on darkness. A watershed on it (``ndimage.watershed_ift``, where a path costs its largest step between
neighbouring voxels) grows two seeds towards each other inside the mask: its proximal half, or the part up to
``HEAD_MM`` before the head's tip that the identification stage measured on its own instance
(``identify.Bone.tip``), and its last half millimetre (what lies beyond the joint). The fronts stop at the
steep sides of such a sheet: they meet in the joint space. What grew from the shaft is MC2, less what it
took of the far bone where the two touch without a gap the scan resolves (``without_rim``). It is taken

- where the mask may have run on: it runs to the last slice predicted, or ends wide and neither its last 1 mm
  nor its last 2 mm narrows (``runs_on``; QC: "does the mask hold the joint space or the phalanx's base?"),
  or ends more than ``PAST_TIP_MM`` beyond the identified tip (then the joint must show more clearly,
  ``VALLEY_PAST``, and its plates on the scan smoothed over ``CALM_SIGMA`` voxels too, ``PLATES_PAST``: the
  tip's estimate is off by a millimetre or more, a dome's own plate must not be peeled off, and a noisy
  marrow's brightest voxels must not pass for plates). A mask that ends wide and narrows there is a
  head cut short, with nothing beyond it;
- if MC2 then ends in a dome by QC's own limits (``qc.Limits.end_fraction``, ``end_taper_mm``), narrowing
  to it (``regrows``: a head split along its length, where the seeds met in its marrow between trabecular
  sheets, widens again), keeping a head (its largest cross-section ``HEAD_RATIO`` of its first 3 mm's or
  more: 1.5-2.9 where a parting was right, 1.02 where the seeds met in a stack of shafts only), not more than
  ``SHORT_MM`` before the identified tip;
- if the surface between the parts is a joint: its density lies below the brightest within ``NEAR`` voxels
  on both sides by ``VALLEY`` of the mask's range from marrow to cortex (median over the surface), and the
  dimmer of those two is nearly as bright as cortex (``PLATES`` of the way from marrow to it, on three
  quarters of the surface: a head's subchondral plates are thinner than the shaft's cortex, and the third
  generator's read 0.74 of it). A cut through marrow (a stack that ends in the shaft or in the head) has
  no plates on its sides (a stack of shafts only: 0.62);
- and at least ``MIN_MM3`` is taken off.

Otherwise the mask stays as it was. The record (``mask.joint_parted`` in the result JSON) holds the first
slice of the far bone's part (model grid, from the proximal end), what was taken off (mm³), the valley, the
plates (and on the tip's path ``calm_plates``, the plates on the smoothed scan), and the share of the contact (the surface ``RIM`` voxels or more inside the envelope) where the
joint shows (``joint_shown``): where the phalanx's plate is pressed on the dome without a gap the scan
resolves, the cut there is a guess, and QC reviews it (``qc.Limits.joint_shown``).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from vbmd_rt.runtime import qc
from vbmd_rt.runtime.postprocess import largest_component

VALLEY_PAST = 0.25  # ... where only the identified tip says the mask ran on
VALLEY = 0.15  # the joint's sheet lies this far (of marrow to cortex) below the plates on both sides
MIN_MM3 = 20.0  # the least a phalanx's base takes off
SEED_MM = 0.5  # the distal seed: the mask's last slices over this depth (at least one)
PLATES = 0.7  # ... between plates nearly as bright as cortex (a head's plates are thinner than the shaft's cortex)
PLATES_PAST = 0.8  # ... and where only the identified tip says the mask ran on, this on the scan smoothed over
CALM_SIGMA = 1.0  # ... this many voxels (``_calm_plates``: noise does not pass for plates there)
SHOWN = 0.05  # a surface voxel where the joint shows: this far below the plates on both sides
DARK = 0.3  # the weight of darkness beside the top-hat in the cost
PAST_TIP_MM = 1.0  # a mask that ends this far beyond the identified head's tip may hold the phalanx's base
HEAD_MM = 5.0  # the shaft's seed ends this far before the identified tip (a head's dome and the cup's rim)
HEAD_RATIO = 1.25  # MC2 keeps a head: its largest cross-section this much over its first SHAFT_MM's
SHAFT_MM = 3.0
REGROW = 1.15  # a parted MC2 whose cross-section grows again by more past its largest was split along its head
SHORT_MM = 1.5  # ... and a parting that ends MC2 this far before it cut into the head
RIM = 3  # voxels from the envelope's outside where the surface is the contact of the bones, not its rim
WALL = 65534  # (not 65535: scipy before 1.12 overflows on the type's largest value)
NEAR = 3  # voxels on either side of the surface where the plates are looked for


def _end(area: np.ndarray, spacing_mm: float) -> dict:
    """QC's reading of how a cross-section profile ends (``qc.end_shape``, its last millimetre as QC reads it)."""
    return qc.end_shape(np.asarray(area, dtype=np.float64), max(1, int(round(1.0 / spacing_mm))), spacing_mm)


def ends_in_dome(area: np.ndarray, spacing_mm: float, at_last_slice: bool) -> bool:
    """Whether a mask with the cross-sections ``area`` (its first to its last slice) ends in a dome by QC's
    limits on its last slice and its dome's length (``end_fraction``, ``end_taper_mm``; not the halving nor the
    run-on check, which QC asks of the result); False where it runs to the last slice that was read
    (``at_last_slice``: no end in view)."""
    if at_last_slice or area.size < 2:  # no end in view, or no dome in one slice
        return False
    end = _end(area, spacing_mm)
    return end["end_fraction"] <= qc.LIMITS.end_fraction and end["end_taper_mm"] >= qc.LIMITS.end_taper_mm


_DISK = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # a cortex's width: 1.2 mm on the model grid


def _cost(v: np.ndarray, top: float, low: float) -> np.ndarray:
    """Where the seeds meet last: thin dark sheets between brighter voxels (the black top-hat of a one-voxel
    cross: a joint space under a voxel or two wide, not marrow, which is wider), then darkness."""
    closed = ndimage.grey_closing(v, footprint=ndimage.generate_binary_structure(3, 1))
    return (2.0 * (closed - v) + DARK * (top - v)) / (top - low)


def runs_on(area: np.ndarray, spacing_mm: float, at_last_slice: bool) -> bool:
    """Whether a mask with the cross-sections ``area`` may have run on across the joint: it runs to the last
    slice that was read (``at_last_slice``), or it ends wide and neither its last millimetre nor its last two
    narrow (``qc.end_narrows``; QC: "does the mask hold the joint space or the phalanx's base?"). A mask that
    ends wide but narrows there is a head cut short: there is nothing beyond it to take off. The last 2 mm
    count too because a cut head's last slices wobble: a standard phantom's network mask that lost the last
    3 mm of the dome fell from its largest cross-section to 0.59 of it, then read 0.49, 0.60, 0.47, 0.55
    over its last millimetre, and was taken for a mask that ran on."""
    if at_last_slice:
        return True
    if area.size < 2:
        return False
    end = _end(area, spacing_mm)
    return end["end_fraction"] > qc.LIMITS.end_fraction and not qc.end_narrows(end)


def regrows(area: np.ndarray) -> float:
    """How far a cross-section profile grows again past its largest (the most a slice holds over the least
    before it, where both hold a quarter of the largest or more): 1.0 for a head that narrows to its dome; a
    head split along its length, where the seeds met in its marrow between trabecular sheets, narrows and
    widens again."""
    a = np.asarray(area, dtype=np.float64)
    if a.size == 0 or a.max() <= 0:
        return 1.0
    peak = int(np.argmax(a))
    tail = a[peak:][a[peak:] >= 0.25 * a[peak]]
    return float(np.max(tail / np.minimum.accumulate(tail))) if tail.size else 1.0


def without_rim(one: np.ndarray, first: int) -> np.ndarray:
    """MC2's part (bool, z from the proximal end) less what it took of the far bone from its slice ``first``
    on, where the two touch without a gap the scan resolves: strands a voxel thin round the far bone's rim,
    and the cup's rim, a cortex's width round the dome (a 2D opening of 5 voxels: a dome is round); then its
    largest piece."""
    core = largest_component(ndimage.binary_opening(one))
    thin = one & ~ndimage.binary_dilation(core)
    thin[:first] = False
    out = one & ~thin
    for z in range(max(first, 0), out.shape[0]):
        out[z] &= cv2.morphologyEx(out[z].view(np.uint8), cv2.MORPH_OPEN, _DISK).view(bool)
    return largest_component(out)


def _smoothed(vol: np.ndarray, sigma: float) -> np.ndarray:
    """The mask's box of the scan (``vol``) smoothed over ``sigma`` voxels, float32, padded by one voxel as the
    mask is (``part``)."""
    return np.pad(ndimage.gaussian_filter(np.asarray(vol, dtype=np.float32), sigma), 1, mode="edge")


def _span(inside: np.ndarray) -> tuple[float, float] | None:
    """Cortex and marrow from the values under the mask (``inside``: their 90th and 10th percentiles), or None
    where the scan shows no contrast."""
    cortex, marrow = float(np.percentile(inside, 90)), float(np.percentile(inside, 10))
    return (cortex, marrow) if cortex > marrow else None


def _plate_share(plate: np.ndarray, cortex: float, marrow: float) -> float:
    """``plates``: the 25th percentile of the plates' brightness (``_plates``), marrow 0 and cortex 1."""
    return float(np.percentile((plate - marrow) / (cortex - marrow), 25))


def _plates(v: np.ndarray, one: np.ndarray, two: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """The dimmer of the brightest voxels of ``v`` within ``NEAR`` on either side (``one``, ``two``) of each
    voxel of the ``surface`` between them."""
    size = 2 * NEAR + 1
    near_one = ndimage.maximum_filter(np.where(one, v, -np.inf), size=size)
    near_two = ndimage.maximum_filter(np.where(two, v, -np.inf), size=size)
    return np.minimum(near_one, near_two)[surface]


def _calm_plates(vol: np.ndarray, m: np.ndarray, one: np.ndarray, two: np.ndarray, surface: np.ndarray) -> float:
    """``plates`` read on the scan smoothed over ``CALM_SIGMA`` voxels (``vol``: the mask's box, unpadded;
    ``m``, ``one``, ``two``, ``surface`` padded by one): a subchondral plate is a sheet, and keeps its
    brightness there, where the brightest of a noisy marrow's voxels near a cut through it does not."""
    v = _smoothed(vol, CALM_SIGMA)
    span = _span(v[m])
    return 0.0 if span is None else _plate_share(_plates(v, one, two, surface), *span)


def part(
    vol: np.ndarray, mask: np.ndarray, spacing_mm: float, tip_mm: float | None = None
) -> tuple[np.ndarray, dict] | None:
    """MC2's part of a bool ``mask`` (z from the proximal end; the volume ``vol`` under it, any linear
    units) that ran on across the joint, with its record (``slice``: the first slice of the far bone's part,
    ``removed_mm3``: all that was taken off, ``valley``, ``plates``, ``joint_shown``), or None where the mask
    need not have run on or the scan shows no joint that parts it (module doc). The mask's last slice counts
    as the end of what was read. ``tip_mm``: where the identification stage puts the head's tip (z, mm, in
    the mask's frame; None: not in view)."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size < 4:
        return None
    area = np.count_nonzero(mask, axis=(1, 2))
    ran_on = runs_on(area[zs[0] : zs[-1] + 1], spacing_mm, zs[-1] == mask.shape[0] - 1)
    if not ran_on and not (tip_mm is not None and (zs[-1] + 1) * spacing_mm - tip_mm > PAST_TIP_MM):
        return None
    ys, xs = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    box = (slice(z0, z1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
    m = np.pad(mask[box], 1)  # a wall all round: ``watershed_ift``'s neighbours run on across rows
    v = _smoothed(vol[box], 0.5)
    inside = v[m]
    span = _span(inside)
    top, low = float(np.percentile(inside, 99)), float(inside.min())
    if span is None or top <= low:
        return None
    cortex, marrow = span
    cost = np.full(m.shape, WALL, np.uint16)  # steps into the wall outside the mask cost more than any inside
    cost[m] = (np.clip(_cost(v, top, low)[m], 0.0, 1.0) * 60000).astype(np.uint16)
    seeds = np.zeros(m.shape, np.int16)
    n = m.shape[0]
    shaft = (z1 - z0) // 2
    if tip_mm is not None:
        shaft = min(shaft, int((tip_mm - HEAD_MM) / spacing_mm) - z0)
    if shaft < 1:
        return None
    seeds[1 : 1 + shaft][m[1 : 1 + shaft]] = 1
    k = max(1, int(round(SEED_MM / spacing_mm)))
    seeds[n - 1 - k : n - 1][m[n - 1 - k : n - 1]] = 2
    grown = ndimage.watershed_ift(cost, seeds)
    beyond = largest_component(m & (grown == 2))
    if not beyond.any():
        return None
    first = int(np.flatnonzero(beyond.any(axis=(1, 2)))[0])
    one = without_rim(largest_component(m & (grown == 1)), first)
    two = m & ~one
    if not one.any() or two.sum() * spacing_mm**3 < MIN_MM3:
        return None
    keep = np.count_nonzero(one, axis=(1, 2))
    kz = np.flatnonzero(keep)
    if not ends_in_dome(keep[kz[0] : kz[-1] + 1], spacing_mm, kz[-1] == n - 2) or regrows(keep) > REGROW:
        return None
    shaft_area = float(np.median(keep[kz[0] : kz[0] + max(1, int(round(SHAFT_MM / spacing_mm)))]))
    if keep.max() < HEAD_RATIO * shaft_area:  # no head: the seeds met in a shaft (a stack of shafts only)
        return None
    if tip_mm is not None and (z0 + kz[-1]) * spacing_mm < tip_mm - SHORT_MM:  # (one slice of padding)
        return None
    surface = (one & ndimage.binary_dilation(two)) | (two & ndimage.binary_dilation(one))
    if not surface.any():
        return None
    plate = _plates(v, one, two, surface)
    depth = (plate - v[surface]) / (cortex - marrow)
    valley = float(np.median(depth))
    plates = _plate_share(plate, cortex, marrow)
    if valley < (VALLEY if ran_on else VALLEY_PAST) or plates < PLATES:
        return None
    calm = None if ran_on else _calm_plates(vol[box], m, one, two, surface)
    if calm is not None and calm < PLATES_PAST:
        return None
    inner = ndimage.distance_transform_edt(m)[surface] >= RIM  # the contact, not its rim in the soft tissue
    out = np.zeros_like(mask)
    out[box] = one[1:-1, 1:-1, 1:-1]
    return out, {
        "slice": z0 + first - 1,
        "removed_mm3": round(float(two.sum()) * spacing_mm**3, 1),
        "valley": round(valley, 3),
        "plates": round(plates, 3),
        **({} if calm is None else {"calm_plates": round(calm, 3)}),
        "joint_shown": round(float(np.mean(depth[inner] >= SHOWN)) if inner.any() else 0.0, 3),
    }
