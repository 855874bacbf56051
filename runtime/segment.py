"""Inference over a model-space volume, and postprocessing back to a native-resolution mask.

``predict`` feeds a backend: the 3D net sees overlapping windows of ``model.window`` slices (blended
with linear ramps, so there are no seams), the 2D net batches of slices. ``postprocess`` thresholds at
model resolution, keeps the largest 3D connected component, and only then goes to native resolution,
interpolating the probabilities inside the bone's bounding box alone; it fills holes slice by slice
(a periosteal mask is solid) and keeps the largest native component.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from vbmd_rt.runtime.preprocess import Geometry, from_model, native_box, sample_at_native


def _windows(n: int, window: int, overlap: int) -> list[int]:
    if n <= window:
        return [0]
    step = max(1, window - overlap)
    starts = list(range(0, n - window + 1, step))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def _ramp(window: int, overlap: int) -> np.ndarray:
    w = np.ones(window, dtype=np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        w[:overlap] = r
        w[-overlap:] = r[::-1]
    return w


def fit_window(z: int, window: int, multiple: int) -> tuple[int, int | None]:
    """The 3D window for ``z`` slices: ``window``, or for short volumes ``z`` rounded up to ``multiple``;
    and the edge slices to pad before the volume (``None`` when it needs no padding)."""
    win = min(window, -(-z // multiple) * multiple)
    return win, (win - z) // 2 if z < win else None


def pad_z(volume: np.ndarray, win: int, before: int) -> np.ndarray:
    """Pad (z, y, x) with edge slices to ``win`` slices, ``before`` of them in front."""
    return np.pad(volume, ((before, win - volume.shape[0] - before), (0, 0), (0, 0)), mode="edge")


def predict(volume: np.ndarray, backend, architecture: str, window: int, overlap: int = 16,
            multiple: int = 16) -> np.ndarray:
    """Probabilities (float32, the shape of ``volume``) for a cropped, normalised model-space volume."""
    z = volume.shape[0]
    if architecture == "unet2d":
        out = np.empty(volume.shape, dtype=np.float32)
        for a in range(0, z, window):
            batch = volume[a:a + window, None]
            out[a:a + window] = backend.infer(batch)[:, 0]
        return out
    if architecture != "unet3d":
        raise ValueError(f"unknown architecture {architecture!r}")
    win, before = fit_window(z, window, multiple)
    if before is not None:
        prob = backend.infer(pad_z(volume, win, before)[None, None])[0, 0]
        return np.ascontiguousarray(prob[before:before + z], dtype=np.float32)
    acc = np.zeros(volume.shape, dtype=np.float32)
    weight = np.zeros(z, dtype=np.float32)
    starts = _windows(z, win, overlap)
    ramp = _ramp(win, overlap if len(starts) > 1 else 0)
    for s in starts:
        prob = backend.infer(np.ascontiguousarray(volume[None, None, s:s + win]))[0, 0]
        acc[s:s + win] += prob * ramp[:, None, None]
        weight[s:s + win] += ramp
    acc /= weight[:, None, None]
    return acc


def _largest(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 26-connected component of a boolean volume, and how many components there were."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return (mask.astype(bool, copy=False) if n == 1 else np.zeros_like(mask, dtype=bool)), n
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes)), n


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean volume (empty stays empty)."""
    return _largest(mask)[0]


def fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every (y, x) slice (a periosteal contour encloses its marrow)."""
    out = np.empty_like(mask, dtype=bool)
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_fill_holes(mask[k]) if mask[k].any() else False
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


def postprocess(prob: np.ndarray, geometry: Geometry, threshold: float = 0.5) -> tuple[np.ndarray, dict]:
    """Cropped model-space probabilities -> native uint8 mask (0/1) in scan orientation, and facts.

    Facts: ``model_voxels`` of the kept component, ``components`` above threshold at model resolution,
    ``box`` (native z0, z1, y0, y1, x0, x1 of the work region), ``empty`` when nothing was found.
    """
    full = from_model(prob, geometry)  # uncropped model grid, scan orientation
    keep, n = _largest(full > threshold)
    mask = np.zeros(geometry.native_shape, dtype=np.uint8)
    if n == 0:
        return mask, {"components": 0, "model_voxels": 0, "box": None, "empty": True}
    region = ndimage.binary_dilation(keep, iterations=2)
    mbox = _bbox(region)
    box = native_box(mbox, geometry)
    gated = np.where(region, full, np.float32(0))
    p = sample_at_native(gated, geometry, box)
    native = largest_component(fill_holes_slicewise(p > threshold))
    mask[box] = native
    info = {"components": int(n), "model_voxels": int(keep.sum()),
            "box": [box[0].start, box[0].stop, box[1].start, box[1].stop, box[2].start, box[2].stop],
            "empty": not native.any()}
    return mask, info
