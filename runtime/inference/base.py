"""The one interface every inference backend implements, in Polygraphy's shape.

A backend is built with everything it needs (model files, precision, the input's name, dtype and shape
range), then used as a context manager::

    with create("auto", model) as backend:        # activate(): sessions, engines, device buffers
        prob = backend.infer(batch)                # (N, 1, ...) float32 -> same shape, probabilities
                                                   # deactivate(): everything freed

``infer`` outside ``with`` (or between ``activate()`` and ``deactivate()``) is an error, not a silent
activation. Subclasses implement ``_activate``, ``_infer`` and ``_deactivate``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from vbmd_rt.runtime.errors import VbmdInputError


class BackendError(VbmdInputError):
    """The asked-for backend cannot run here (library or GPU missing, engine for another GPU)."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


ORT_INSTALL = "pip install onnxruntime"  # a base dependency of vbmd-rt; missing only after a broken swap
ORT_GPU_SWAP = 'pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu>=1.20,<2"'


def _distribution(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def ort_conflict() -> str | None:
    """A problem line when onnxruntime and onnxruntime-gpu are both installed (they share one package
    folder, and the CUDA provider disappears), else None."""
    if _distribution("onnxruntime") and _distribution("onnxruntime-gpu"):
        return "onnxruntime and onnxruntime-gpu are both installed (the CUDA provider may be lost)"
    return None


def require_onnxruntime() -> None:
    """Exit-2 error (with the pip line) when no ONNX Runtime can be imported, checked before any work."""
    if not installed("onnxruntime"):
        raise BackendError(
            None,
            "ONNX Runtime is not installed (onnxruntime, a dependency of vbmd-rt)",
            f"{ORT_INSTALL}, or for CUDA: {ORT_GPU_SWAP}",
        )


class InputShapeError(ValueError):
    """A model input outside the shapes the engine was built for (a scan's geometry the model cannot take)."""


@dataclass(frozen=True)
class InputSpec:
    """The network input a backend accepts: name, dtype and the shape range (``opt`` is the usual shape)."""

    name: str
    dtype: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    def check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != len(self.min_shape) or not all(
            lo <= s <= hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape, strict=True)
        ):
            raise InputShapeError(
                f"input {self.name!r} of shape {tuple(shape)} is outside {self.min_shape}..{self.max_shape}"
            )


def input_spec_for(model, batch: tuple[int, int, int] | None = None) -> InputSpec:
    """The input range of ``model``: the 2D net's slice batch (min, opt, max); the 3D net's window (the
    runtime feeds the hand's box, so y and x vary up to the model grid, in multiples of 16)."""
    a = model.card.arch
    name, dtype = model.card.input.name, model.card.input.dtype
    size = int(model.spec.size)
    batch = batch or a.profile_batches
    if a.window_mode == "slices":
        c, size = a.channels, a.input_px or size
        return InputSpec(name, dtype, (batch[0], c, size, size), (batch[1], c, size, size), (batch[2], c, size, size))
    z = int(model.window.roi_slices)
    return InputSpec(
        name,
        dtype,
        (1, 1, a.multiple, a.multiple, a.multiple),
        (1, 1, z, size // 2, size * 7 // 8),
        (1, 1, z, size, size),
    )


class Backend:
    """Base class: an active guard around ``_activate`` / ``_infer`` / ``_deactivate``."""

    name: str = "backend"

    def __init__(self, input_spec: InputSpec | None, precision: str, reason: str = ""):
        self.input_spec = input_spec
        self.precision = precision
        self.reason = reason  # why ``create("auto")`` took this backend (empty when asked for by name)
        self.onnx_sha256: str | None = None  # the sha256 of the ONNX (or the plan's source ONNX) it runs
        self.is_active = False
        # The most slices a 2D model takes per call here (None: the model card's batch). A CPU backend's
        # memory follows the batch and its speed does not.
        self.max_batch: int | None = None

    def batch_for(self, wanted: int) -> int:
        """The slices per call for a model that asks for ``wanted``."""
        return max(1, min(wanted, self.max_batch or wanted))

    def activate(self) -> None:
        if self.is_active:
            raise RuntimeError(f"{self.name} is already active")
        self._activate()
        self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: infer() on an inactive backend; use `with backend:` or activate()")
        if self.input_spec is not None and self.input_spec.max_shape:
            self.input_spec.check(batch.shape)
        return self._infer(batch)

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def describe(self) -> dict:
        """What a result records about the backend that made it."""
        return {"name": self.name, "precision": self.precision, "reason": self.reason, "onnx_sha256": self.onnx_sha256}

    # subclasses
    def _activate(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


class NoNetwork(Backend):
    """The backend of the classical model: it runs no network for the mask (the segmentation is in
    ``classical``). ``reader``: (model, backend) of a one-bone network that QC asks for a second reading of
    the same bone (``pipeline.second_reading``: the two contours must agree); its backend is activated on
    first use (``second_reader``) and deactivated with this one. None: no second reading."""

    name = "classical"

    def __init__(self, reader: tuple | None = None):
        why = "the classical model has no network"
        super().__init__(None, "n/a", why + ("; the bundled network reads the bone again for QC" if reader else ""))
        self.reader = reader

    def second_reader(self) -> tuple | None:
        """(model, active backend) of the second reading, or None."""
        if self.reader is not None and not self.reader[1].is_active:
            self.reader[1].activate()
        return self.reader

    def deactivate(self) -> None:
        super().deactivate()
        if self.reader is not None:  # also where this backend was used without activating it
            self.reader[1].deactivate()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the classical model runs no network")
