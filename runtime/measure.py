"""vBMD and morphometry from a scan and its MC2 mask: D100, bone volume, mean slice area, slices."""

from __future__ import annotations

import numpy as np

from vbmd_rt.runtime.io.calibration import Calibration


def overlap(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, IoU and pixel accuracy of two masks of one grid (non-zero is inside)."""
    tp = fp = fn = 0
    for k in range(pred.shape[0]):  # slice by slice: no full-size boolean temporaries
        p, t = np.asarray(pred[k]) != 0, np.asarray(truth[k]) != 0
        tp += int(np.count_nonzero(p & t))
        fp += int(np.count_nonzero(p & ~t))
        fn += int(np.count_nonzero(~p & t))
    n = int(np.prod(pred.shape))
    union = tp + fp + fn
    return {
        "dice": 1.0 if union == 0 else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if union == 0 else tp / union,
        "accuracy": (n - fp - fn) / n,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (non-zero is inside); 1.0 when both are empty."""
    return overlap(a, b)["dice"]


def vbmd(data: np.ndarray, mask: np.ndarray, spacing_zyx, calibration: Calibration | None, box=None) -> dict:
    """D100 (mean mg HA/cm³ inside ``mask``), bone volume mm³, mean slice area mm², slices with bone.

    Density is linear in the stored value, so the mean density is the density of the mean stored
    value (summed in float64 slice by slice, over the mask's slices only). ``d100_mg_ha_cm3`` is
    ``None`` without a calibration. ``spacing_zyx``: the voxel size in mm, (z, y, x) as the arrays. ``box``
    (z0, z1, y0, y1, x0, x1), where given, bounds the mask: only the voxels inside it are read.
    """
    ez, ey, ex = (float(v) for v in spacing_zyx)
    z0, z1, y0, y1, x0, x1 = (0, mask.shape[0], 0, mask.shape[1], 0, mask.shape[2]) if box is None else box
    inside = mask[z0:z1, y0:y1, x0:x1]
    zs = np.flatnonzero(inside.reshape(inside.shape[0], -1).any(axis=1))
    total = 0.0
    count = 0
    for k in zs:
        m = inside[k] != 0
        n = int(np.count_nonzero(m))
        total += float(np.asarray(data[z0 + k, y0:y1, x0:x1])[m].sum(dtype=np.float64))
        count += n
    d100 = None
    mean_raw = total / count if count else None
    if calibration is not None and count:
        d100 = float(calibration.density(mean_raw))
    return {
        "d100_mg_ha_cm3": d100,
        "bone_volume_mm3": count * ex * ey * ez,
        "mean_slice_area_mm2": (count / len(zs)) * ex * ey if len(zs) else 0.0,
        "slices": int(len(zs)),
        "voxels": int(count),
        "mean_raw": mean_raw,
    }
