"""Quality control of a segmentation: is what the network found bone at all, and is it plausible."""

from __future__ import annotations

import cv2
import numpy as np

from vbmd_rt.runtime.postprocess import sample_slices

MIN_CONTRAST = 0.15  # in units of the training data's standard deviation (about 40 mg HA/cm³ for the default)


def bone_contrast(data: np.ndarray, mask: np.ndarray, scale: float) -> float:
    """How much brighter the mask is than the ring of 4 native voxels around it (a 9 x 9 dilation), on up to
    nine slices, in ``scale`` units."""
    picks = sample_slices(mask)
    if picks.size == 0:
        return 0.0
    inside, ring = [], []
    kernel = np.ones((9, 9), np.uint8)
    for k in picks:
        m = (mask[k] != 0).astype(np.uint8)
        r = (cv2.dilate(m, kernel) > 0) & (m == 0)
        img = np.asarray(data[k], dtype=np.float32)
        inside.append(float(img[m > 0].mean()))
        if r.any():
            ring.append(float(np.median(img[r])))
    if not ring:
        return float("inf")
    return (float(np.median(inside)) - float(np.median(ring))) / float(scale or 1.0)
