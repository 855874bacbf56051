"""What damages a scan: slices it lost, and metal.

**Lost slices**: one value throughout (zeros where a reconstruction or a transfer dropped them).

A scanner writes noise into every voxel of every slice it reconstructed; a slice that holds one value
throughout holds no image. Read as bone, one such slice in the shaft cut every bone's tracking in two at it
(the identification stage took it for every joint), and the network's mask stopped or started there: of 72
runs of eight phantoms with a slice of zeros in their shaft or head, 51 read MC2 wrong (Dice down to 0,
D100 errors up to 74 mg HA/cm³) and 3 of those passed QC.

Where a few slices are lost, the rest of the scan is still a scan: the lost slices are filled from the
nearest slices on each side (linear in z) for everything that finds and draws the bone, and left out of the
mask and of every number (they hold no density to measure). QC reviews the result, and says which slices.
Where too many are lost, or a run of them is too long to bridge, the scan is refused.

**Metal** (a ring, a wire, an implant) reads thousands of mg HA/cm³, far over any bone, and its streaks
run across the slices it lies in. With dark streaks from a steel spot 2 mm from MC2 crossing the shaft on a
few slices, D100 read 6-9 mg HA/cm³ low while the mask was right, and QC passed it (5 of 8 phantoms, a
fault-injection campaign). Metal in MC2's own slices (within 1 mm of them) is a QC ``review``; metal only
in other slices (a ring on a finger past the joint) is a warning: its streaks lie in slices D100 does not
read.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from vbmd_rt.runtime.errors import VbmdInputError

#: A scan is refused where more than this share of its slices is lost ...
MAX_LOST_FRACTION = 0.1
#: ... or where a run of lost slices spans more than this (mm): the bone is no longer bridged.
MAX_RUN_MM = 1.0
_SAMPLE = 16  # every 16th row and column decide which slices may be lost; those are checked in full


def lost_slices(data: np.ndarray) -> np.ndarray:
    """Indices of the (z, y, x) scan's slices that hold one value throughout. A sparse sample of each slice
    (every ``_SAMPLE``-th row and column) finds the candidates; each is confirmed on all its voxels."""
    if data.ndim != 3 or data.shape[0] == 0 or data.shape[1] * data.shape[2] <= 1:
        return np.zeros(0, np.int64)
    sample = np.asarray(data[:, ::_SAMPLE, ::_SAMPLE]).reshape(data.shape[0], -1)
    maybe = np.flatnonzero(sample.min(axis=1) == sample.max(axis=1))
    out = [int(k) for k in maybe if np.all(np.asarray(data[k]) == data[k].flat[0])]
    return np.array(out, np.int64)


def check(path, lost: np.ndarray, nz: int, slice_mm: float) -> None:
    """Refuse (``VbmdInputError``) a scan with more lost slices than can be bridged."""
    if lost.size == 0:
        return
    fix = "reconstruct the scan again, or export it again from the scanner"
    if lost.size == nz:
        raise VbmdInputError(path, f"every one of its {nz} slices holds a single value: the scan holds no image", fix)
    if lost.size > MAX_LOST_FRACTION * nz:
        raise VbmdInputError(
            path,
            f"{lost.size} of its {nz} slices hold a single value throughout (lost slices; at most"
            f" {MAX_LOST_FRACTION:.0%} can be bridged)",
            fix,
        )
    runs = np.split(lost, np.flatnonzero(np.diff(lost) > 1) + 1)
    longest = max(len(r) for r in runs)
    if longest * slice_mm > MAX_RUN_MM:
        raise VbmdInputError(
            path,
            f"{longest} neighbouring slices ({longest * slice_mm:.1f} mm) hold a single value throughout (lost"
            f" slices; at most {MAX_RUN_MM:g} mm can be bridged)",
            fix,
        )


def filled(data: np.ndarray, lost: np.ndarray) -> np.ndarray:
    """A copy of the scan whose lost slices are interpolated (linear in z) from the nearest kept slices on
    each side, or copied from the one side that has one (at the stack's ends). The caller's array is left
    as it is."""
    out = np.array(data, copy=True)
    keep = np.setdiff1d(np.arange(data.shape[0]), lost)
    whole = np.issubdtype(out.dtype, np.integer)
    for k in lost:
        below, above = keep[keep < k], keep[keep > k]
        if below.size and above.size:
            a, b = int(below[-1]), int(above[0])
            w = (k - a) / (b - a)
            v = (1.0 - w) * out[a].astype(np.float64) + w * out[b].astype(np.float64)
            if whole:  # between two values of the type: within its range
                v = np.rint(v)
            out[k] = v.astype(out.dtype)
        else:
            out[k] = out[int(below[-1] if below.size else above[0])]
    return out


def bridged(profile: np.ndarray, slices) -> np.ndarray:
    """A per-slice profile (a mask's area) with its values at ``slices`` (indices into it) read, linearly,
    from the others: slices a mask leaves out because the scan lost them are no gap in it."""
    out = np.array(profile, dtype=np.float64)
    slices = np.asarray(slices, np.int64)
    kept = np.setdiff1d(np.arange(out.size), slices)
    if slices.size and kept.size:
        out[slices] = np.interp(slices, kept, out[kept])
    return out


def near(lost: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a lost slice lies within MC2's mask's slices or next to them (the mask leaves it out)."""
    if lost.size == 0:
        return False
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return bool(zs.size) and bool(((lost >= zs[0] - 1) & (lost <= zs[-1] + 1)).any())


def reason(lost: np.ndarray, near: bool = True) -> str:
    """QC's reason for a result made across lost slices (slice numbers as the file stores them); ``near``
    False: a warning for lost slices away from MC2's (they were filled to find the bones, D100 holds none)."""
    shown = ", ".join(str(int(k)) for k in lost[:8]) + (", ..." if lost.size > 8 else "")
    s = "s" if lost.size > 1 else ""
    head = f"slice{s} {shown} of the scan hold{'' if s else 's'} a single value throughout (lost)"
    if not near:
        return f"{head}, away from MC2: filled from the slices around to find the bones; D100 is not affected"
    return (
        f"{head}: MC2 was found across {'them' if s else 'it'} from the slices around, and"
        f" {'they are' if s else 'it is'} left out of the mask and of D100"
    )


#: Metal: over this density on the model grid (0.25 mm voxels). Bone reads at most 1,630 mg HA/cm³ there on
#: 229 evaluation, independent and third-generator phantoms (median of their maxima 1,120); a steel ring
#: 5,400 (`/work/notes/s21/metal_scan.py`).
METAL_MG = 2500.0
#: Specks smaller than this (mm³; three voxels of 0.246 mm) are no metal: a single hot voxel is noise.
MIN_METAL_MM3 = 0.04
#: Metal within this (mm, along the stack) of MC2's first or last slice shares its slices.
METAL_SLICES_MM = 1.0


def metal(vol: np.ndarray, grid_mm: float, mask: np.ndarray, level: float) -> dict | None:
    """Metal in a calibrated model-grid volume ``vol`` (isotropic ``grid_mm``): over ``level``, ``METAL_MG``
    in the volume's own units (any unit rising with density: network units, stored values), and where it lies
    from MC2's ``mask`` on the same grid; None where there is none.

    ``{"volume_mm3", "distance_mm"`` (nearest metal voxel to the mask's rim; 0 where metal lies in the mask),
    ``"in_mc2_slices"`` (metal on a
    slice within ``METAL_SLICES_MM`` of the mask's slices), ``"slices"`` (the metal's first and last grid
    slice)``}``. One pass over the grid where nothing reads as metal."""
    if vol.size == 0 or float(vol.max()) <= level:
        return None
    zs, ys, xs = (np.flatnonzero(np.any(vol > level, axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    hot = vol[box] > level
    lab, n = ndimage.label(hot, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes * grid_mm**3 >= MIN_METAL_MM3
    keep[0] = False
    if not keep.any():
        return None
    where = np.argwhere(keep[lab]) + np.array([zs[0], ys[0], xs[0]])
    out = {
        "volume_mm3": round(float(len(where)) * grid_mm**3, 2),
        "slices": [int(where[:, 0].min()), int(where[:, 0].max())],
        "distance_mm": None,
        "in_mc2_slices": False,
    }
    mz = np.flatnonzero(mask.any(axis=(1, 2)))
    if mz.size:
        reach = METAL_SLICES_MM / grid_mm
        out["in_mc2_slices"] = bool(((where[:, 0] >= mz[0] - reach) & (where[:, 0] <= mz[-1] + reach)).any())
        my, mx = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
        sub = np.pad(mask[mz[0] : mz[-1] + 1, my[0] : my[-1] + 1, mx[0] : mx[-1] + 1], 1)
        rim = np.argwhere(sub & ~ndimage.binary_erosion(sub)) + np.array([mz[0], my[0], mx[0]]) - 1
        inside = bool(mask[tuple(where.T)].any())  # in the canal: the rim is no measure of it
        d, _ = cKDTree(rim * grid_mm).query(where * grid_mm, k=1)
        out["distance_mm"] = 0.0 if inside else round(float(d.min()), 1)
    return out


def metal_reason(found: dict, near: bool = True) -> str:
    """QC's reason for metal in MC2's slices; ``near`` False: the warning for metal only in other slices."""
    where = "" if found["distance_mm"] is None else f" {found['distance_mm']:g} mm from MC2,"
    head = f"metal ({found['volume_mm3']:.1f} mm³ over {METAL_MG:.0f} mg HA/cm³){where}"
    if near:
        return f"{head} in MC2's slices: its streaks cross the bone there and may bias D100"
    return f"{head} only in slices MC2 does not span: D100 is not affected"


def native_slices(found: dict, per_grid: float, nz: int, turned: bool) -> list[int]:
    """``metal``'s first and last grid slice as the scan's own slices: every native slice a grid slice
    covers (``per_grid`` native slices each), counted as the file stores them (``turned``: the grid is of
    the stack turned end to end)."""
    z0, z1 = found["slices"]
    first, last = int(math.floor(z0 * per_grid)), min(int(math.ceil((z1 + 1) * per_grid)) - 1, nz - 1)
    return sorted((nz - 1 - last, nz - 1 - first)) if turned else [first, last]
