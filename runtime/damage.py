"""Slices a scan lost: one value throughout (zeros where a reconstruction or a transfer dropped them).

A scanner writes noise into every voxel of every slice it reconstructed; a slice that holds one value
throughout holds no image. Read as bone, one such slice in the shaft cut every bone's tracking in two at it
(the identification stage took it for every joint), and the network's mask stopped or started there: of 72
runs of eight phantoms with a slice of zeros in their shaft or head, 51 read MC2 wrong (Dice down to 0,
D100 errors up to 74 mg HA/cm³) and 3 of those passed QC.

Where a few slices are lost, the rest of the scan is still a scan: the lost slices are filled from the
nearest slices on each side (linear in z) for everything that finds and draws the bone, and left out of the
mask and of every number (they hold no density to measure). QC reviews the result, and says which slices.
Where too many are lost, or a run of them is too long to bridge, the scan is refused.
"""

from __future__ import annotations

import numpy as np

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
