"""The MC2-centred window: what the one-bone segmenter sees, shared by inference and training.

The identification stage (``runtime.identify``) says which bone is MC2 and where it lies on the coarse
grid; the segmenter then only has to draw that bone's periosteal envelope. It sees a window of fixed
*physical* size centred on MC2 (``WINDOW_PX`` x ``WINDOW_PX`` model voxels of ``SPACING_MM``: 39 mm, enough
for the widest head, the joint and the phalanx base), one slice at a time with neighbours above and below
as context (``CONTEXT``, in model slices), plus one channel that says which bone is meant: the identified
region, blurred (``PRIOR_SIGMA_MM``). Cropping makes the network independent of how many bones, thumbs
and tendons surround MC2, and makes training and inference cheap (a 2D network on 160 x 160 inputs).

Intensities are calibrated densities (mg HA/cm³ / 1000): the physical quantity, the same on XtremeCT I and
II. A scan without calibration is mapped by its own soft-tissue and cortex levels instead (and is
``review`` for other reasons).

Everything here is numpy and OpenCV: ``export.bonewin`` imports it, so training and inference cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import ndimage

from vbmd_rt.runtime.preprocess import MODEL_SPACING_MM, Spec, crop_pad, uncrop

WINDOW_PX = 160  # 39.4 mm at 0.246 mm
CONTEXT = (-4, -2, 0, 2, 4)  # model slices (0.246 mm) around the slice predicted
PRIOR_SIGMA_MM = 1.0
DENSITY_UNIT = 1000.0  # mg HA/cm³ per unit of network input
EXTEND_MM = 4.0  # slices predicted beyond the identified region's ends (its joint estimate may be short)
GROW_MM = 12.0  # ... and at most this much further where the mask reaches the window's end (``predict``)
GROW_FRACTION = 0.15  # ... holding this share of its largest cross-section there (a dome's tip holds less)
#: A slice whose bone (the identified region's core) reads this much denser or lighter than the slices around
#: it, in network units (300 mg HA/cm³), is no context for its neighbours (``odd_slices``). Across a bone's
#: shaft and head the level departs from the median of the three slices on each side by at most 0.25, near a
#: joint (the 184 evaluation phantoms and an independent generator's 24); a bone closed by a filled disc of
#: cortex in the stack's first slice (a third generator's) by 0.5.
ODD_SLICE = 0.3
CHANNELS = len(CONTEXT) + 1

#: The model grid the window is cut from: millimetre-isotropic, hand box, stored units (no normalisation).
GRID = Spec(size=512, spacing_mm=MODEL_SPACING_MM, z_mode="isotropic", mean=0.0, std=1.0, multiple=16, margin=12)


@dataclass(frozen=True)
class Window:
    """Where the window lies on the (cropped) model grid: its top-left corner in y and x, and the slices."""

    y0: int
    x0: int
    z0: int
    z1: int
    size: int = WINDOW_PX

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.y0, self.y0 + self.size, self.x0, self.x0 + self.size

    def of(self, vol: np.ndarray) -> np.ndarray:
        """The part of a (cropped) model-grid volume under the window: its slices, its box inside the grid (a
        view; ``predict``'s probabilities are 0 everywhere else)."""
        y0, y1, x0, x1 = self.box
        return vol[self.z0 : self.z1, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)]

    def to_dict(self) -> dict:
        return {"y0": self.y0, "x0": self.x0, "z0": self.z0, "z1": self.z1, "size": self.size}


def to_input_units(vol: np.ndarray, cal) -> np.ndarray:
    """Stored values (float32, in place) -> network units: calibrated mg HA/cm³ / 1000; without a calibration,
    the scan's own levels (its median -> 0, its 99.9th percentile -> 1)."""
    if cal is not None:
        m, b = cal.density_equation()
        vol *= np.float32(m / DENSITY_UNIT)
        vol += np.float32(b / DENSITY_UNIT)
        return vol
    sample = vol[:, ::4, ::4]
    lo, hi = np.percentile(sample, [50, 99.9]) if sample.size else (0.0, 1.0)
    vol -= np.float32(lo)
    vol *= np.float32(1.0 / max(float(hi - lo), 1e-6))
    return vol


def place(region: np.ndarray, extend_slices: int) -> Window:
    """The window over a region (bool, model grid): centred on its box in y/x, its slices plus
    ``extend_slices`` at both ends (clipped to the grid)."""
    zs = np.flatnonzero(region.any(axis=(1, 2)))
    ys = np.flatnonzero(region.any(axis=(0, 2)))
    xs = np.flatnonzero(region.any(axis=(0, 1)))
    cy, cx = (ys[0] + ys[-1] + 1) // 2, (xs[0] + xs[-1] + 1) // 2
    z0 = max(0, int(zs[0]) - extend_slices)
    z1 = min(region.shape[0], int(zs[-1]) + 1 + extend_slices)
    return Window(int(cy) - WINDOW_PX // 2, int(cx) - WINDOW_PX // 2, z0, z1)


def cut(vol: np.ndarray, win: Window, fill: float) -> np.ndarray:
    """``vol[:, y0:y1, x0:x1]`` for the window's box, padded with ``fill`` outside the grid (all slices)."""
    return crop_pad(vol, win.box, fill)


def paste(prob: np.ndarray, win: Window, shape: tuple[int, int, int]) -> np.ndarray:
    """Window probabilities (z1 - z0, size, size) back onto a zero model grid of ``shape``."""
    out = np.zeros(shape, np.float32)
    out[win.z0 : win.z1] = uncrop(prob.astype(np.float32, copy=False), win.box, shape[1:])
    return out


def prior(region: np.ndarray, spacing_mm: float = MODEL_SPACING_MM) -> np.ndarray:
    """The "which bone" channel: the identified region (bool or 0/1, windowed), blurred by ``PRIOR_SIGMA_MM``
    in 3D, float32 in [0, 1]."""
    s = PRIOR_SIGMA_MM / spacing_mm
    out = np.asarray(region, dtype=np.float32)
    out = ndimage.gaussian_filter1d(out, s, axis=0, mode="nearest")
    for k in range(out.shape[0]):
        out[k] = cv2.GaussianBlur(out[k], (0, 0), sigmaX=s, borderType=cv2.BORDER_CONSTANT)
    return out


def odd_slices(image: np.ndarray, pri: np.ndarray) -> np.ndarray:
    """Slices of a windowed volume unlike those around them (bool per slice): the mean over the identified
    bone's core (``pri`` > 0.5) departs from the median of the three slices on each side by over
    ``ODD_SLICE``. Only slices whose core holds at least half its median area are judged: the dome and the
    joint beyond it change fast by nature.

    The network reads every slice with its neighbours (``CONTEXT``); one slice unlike the others among them
    blanks its prediction. A phantom generator's bone closed by a filled disc in the stack's first slice took
    the mask off the four slices after it (2.1-fold area jumps, QC ``review``, Dice 0.98 instead of 0.998); a
    slice of zeros or a detector's glitch would do the same anywhere in the stack."""
    n = image.shape[0]
    core = pri > 0.5
    area = core.sum(axis=(1, 2))
    odd = np.zeros(n, bool)
    if not area.any():
        return odd
    judged = area >= 0.5 * float(np.median(area[area > 0]))
    level = np.full(n, np.nan)
    level[judged] = (image * core).sum(axis=(1, 2))[judged] / area[judged]
    for k in np.flatnonzero(judged):
        around = np.concatenate([level[max(0, k - 3) : k], level[k + 1 : k + 4]])
        around = around[np.isfinite(around)]
        odd[k] = around.size >= 2 and abs(level[k] - float(np.median(around))) > ODD_SLICE
    return odd


def batch(image: np.ndarray, pri: np.ndarray, ks, odd: np.ndarray | None = None) -> np.ndarray:
    """Network inputs for the slices ``ks`` of a windowed volume: (len(ks), CHANNELS, size, size) float32,
    the context slices (clipped at the volume's ends) then the prior of the slice itself. A context slice
    that ``odd`` (``odd_slices``) marks is replaced by the one as far on the other side, or where that one
    is odd too, by the slice itself (a slice's own channel is always its own)."""
    n = image.shape[0]
    ks = np.asarray(list(ks), dtype=np.int64)
    out = np.empty((ks.size, CHANNELS) + image.shape[1:], np.float32)
    for c, off in enumerate(CONTEXT):
        idx = np.clip(ks + off, 0, n - 1)
        if odd is not None and off:
            other = np.clip(ks - off, 0, n - 1)
            idx = np.where(odd[idx], np.where(odd[other], ks, other), idx)
        out[:, c] = image[idx]
    out[:, -1] = pri[ks]
    return out


def predict(vol: np.ndarray, region: np.ndarray, infer, batch_size: int = 32) -> tuple[np.ndarray, Window]:
    """MC2 probabilities on the model grid from a volume in network units and the identified region (both
    the cropped model grid): the window over the region, every slice of it through ``infer`` (any
    callable ``(b, CHANNELS, size, size) -> (b, 1, size, size)``, a backend's or a torch module's).
    ``batch_size`` slices go through at once (the backend's ``batch_for``: fewer on the CPU).

    Where the mask still holds a good part of the bone at the window's last slice (``GROW_FRACTION`` of its
    largest cross-section: a head that the region ended short of, an erosion in the way of its tracking),
    the window grows distally by ``EXTEND_MM`` at a time, up to ``GROW_MM`` (the slices whose context the old
    end clipped are predicted again); the joint is cut from the mask's own profile after (``pipeline``)."""
    ext = int(round(EXTEND_MM / GRID.spacing_mm))
    win = place(region, ext)
    air = float(np.percentile(vol[:, ::8, ::8], 1)) if vol.size else 0.0
    out = np.empty((0, win.size, win.size), np.float32)
    done, limit = 0, min(vol.shape[0], win.z1 + int(round(GROW_MM / GRID.spacing_mm)))
    while True:
        image = cut(vol[win.z0 : win.z1], win, air)
        pri = prior(cut(region[win.z0 : win.z1], win, False))
        odd = odd_slices(image, pri)
        keep = max(0, done - max(CONTEXT))  # the slices predicted before whose context reached the old end
        new = np.empty((image.shape[0] - keep,) + image.shape[1:], np.float32)
        for a in range(keep, image.shape[0], batch_size):
            ks = range(a, min(a + batch_size, image.shape[0]))
            new[a - keep : a - keep + len(ks)] = np.asarray(infer(batch(image, pri, ks, odd)), dtype=np.float32)[:, 0]
        out = np.concatenate([out[:keep], new])
        done = out.shape[0]
        if win.z1 >= limit or not _reaches_end(out > 0.5):
            break
        win = replace(win, z1=min(limit, win.z1 + ext))
    return paste(out, win, vol.shape), win


def _reaches_end(mask: np.ndarray) -> bool:
    """Does the bone's mask (bool, window slices) hold ``GROW_FRACTION`` of its largest cross-section at the
    window's last slice? Only the largest 3D piece counts (the bone asked for): another bone the network
    marked there (a neighbour's head, a phalanx) does not grow the window."""
    area = mask.sum(axis=(1, 2))
    if not area.any() or area[-1] < GROW_FRACTION * area.max():
        return False
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        area = (labels == int(np.argmax(sizes))).sum(axis=(1, 2))
    return bool(area[-1] >= GROW_FRACTION * area.max())


def exclude(prob: np.ndarray, win: Window, other: np.ndarray | None) -> None:
    """Probability 0 (in place) on the voxels of other bones under the window (``prob`` is 0 elsewhere):
    ``other`` is bool on the 2x coarser grid (``identify.Identity.others``; a model voxel lies in coarse voxel
    index // 2, and the model grid's odd last plane in none, as ``identify.expand2``)."""
    if other is None:
        return
    if other.shape != tuple(n // 2 for n in prob.shape):
        raise ValueError(f"other bones on a {other.shape} grid, not the coarse grid of {prob.shape}")
    view = win.of(prob)
    if view.size == 0:
        return
    starts = (win.z0, max(win.y0, 0), max(win.x0, 0))
    idx = [np.arange(a, a + n) // 2 for a, n in zip(starts, view.shape, strict=True)]
    ok = [i < c for i, c in zip(idx, other.shape, strict=True)]
    inside = other[np.ix_(*(np.minimum(i, c - 1) for i, c in zip(idx, other.shape, strict=True)))]
    inside &= ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
    view[inside] = 0.0


def model_volume(data: np.ndarray, spacing_zyx, cal):
    """A native (z, y, x) scan on the one-bone grid (``GRID``, the hand's box) in network units, and its
    ``preprocess.Geometry``: what the identification stage and the network read."""
    from vbmd_rt.runtime.preprocess import to_model

    vol, geo = to_model(data, GRID, "auto", spacing_zyx=spacing_zyx)
    return to_input_units(vol, cal), geo


def inputs_for_check(scan: np.ndarray, truth: np.ndarray, spacing_zyx, cal, count: int = 2) -> np.ndarray:
    """Network inputs of ``count`` slices through the middle of a phantom's MC2 (its true region as the
    prior): the export's ONNX-vs-torch check runs on what the runtime feeds."""
    from vbmd_rt.runtime.preprocess import to_model_mask

    vol, geo = model_volume(scan, spacing_zyx, cal)
    region = to_model_mask(np.asarray(truth) != 0, geo) > 0.5
    win = place(region, 0)
    image = cut(vol[win.z0 : win.z1], win, float(vol.min()))
    pri = prior(cut(region[win.z0 : win.z1], win, False))
    mid = image.shape[0] // 2
    return batch(image, pri, range(mid, mid + count))
