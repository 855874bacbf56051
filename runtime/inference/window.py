"""Sliding-window inference over a cropped, normalised model-space volume.

As MONAI's ``sliding_window_inference``: the window takes any callable ``predictor(batch) -> batch``
(a backend's ``infer``, a torch module in training, a stub in tests) and a :class:`WindowSpec`, so every
backend shares one implementation.

* ``mode="volume"`` (the 3D net): overlapping windows of ``roi_slices`` slices, input ``(1, 1, z, y, x)``,
  blended with linear ramps over ``overlap`` slices so there are no seams; a volume shorter than the
  window is padded with edge slices to a multiple of ``multiple`` and the padding cut off again.
* ``mode="slices"`` (the 2D net): batches of ``roi_slices`` slices, input ``(b, 1, y, x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]
MODES = ("volume", "slices")


@dataclass(frozen=True)
class WindowSpec:
    """How a volume is cut into network calls."""

    mode: str  # "volume" (3D net) or "slices" (2D net)
    roi_slices: int  # slices per call: the 3D net's window, the 2D net's batch
    overlap: int = 0  # slices shared by neighbouring 3D windows
    multiple: int = 1  # the 3D net's input sizes are multiples of this

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"window mode must be one of {MODES}, not {self.mode!r}")
        if self.roi_slices < 1 or not 0 <= self.overlap < self.roi_slices:
            raise ValueError(f"bad window: {self.roi_slices} slices with {self.overlap} overlapping")
        if self.mode == "volume" and self.roi_slices % max(1, self.multiple):
            raise ValueError(f"a 3D window of {self.roi_slices} slices is no multiple of {self.multiple}")


def starts(n: int, window: int, overlap: int) -> list[int]:
    """First slices of the windows that cover ``n`` slices (the last one flush with the end)."""
    if n <= window:
        return [0]
    step = max(1, window - overlap)
    out = list(range(0, n - window + 1, step))
    if out[-1] != n - window:
        out.append(n - window)
    return out


def ramp(window: int, overlap: int) -> np.ndarray:
    """Blending weights of one window: rising over the first ``overlap`` slices, falling over the last."""
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


def sliding_window(volume: np.ndarray, predictor: Predictor, spec: WindowSpec) -> np.ndarray:
    """Probabilities (float32, the shape of the (z, y, x) ``volume``) from ``predictor`` over windows."""
    z = volume.shape[0]
    if spec.mode == "slices":
        out = np.empty(volume.shape, dtype=np.float32)
        for a in range(0, z, spec.roi_slices):
            out[a : a + spec.roi_slices] = predictor(volume[a : a + spec.roi_slices, None])[:, 0]
        return out
    win, before = fit_window(z, spec.roi_slices, spec.multiple)
    if before is not None:
        prob = predictor(pad_z(volume, win, before)[None, None])[0, 0]
        return np.ascontiguousarray(prob[before : before + z], dtype=np.float32)
    acc = np.zeros(volume.shape, dtype=np.float32)
    weight = np.zeros(z, dtype=np.float32)
    first = starts(z, win, spec.overlap)
    w = ramp(win, spec.overlap if len(first) > 1 else 0)
    for s in first:
        prob = predictor(np.ascontiguousarray(volume[None, None, s : s + win]))[0, 0]
        acc[s : s + win] += prob * w[:, None, None]
        weight[s : s + win] += w
    acc /= weight[:, None, None]
    return acc
