"""Resources bounded before any work: the memory a scan will take, predicted from its header alone.

A header can lie (a 34 KB file that claims 1 x 1 x 15625 voxels of 82 µm, or a voxel size a thousand
times too large); the file's own size is already checked against its dimensions by the reader. What is
left is to refuse, before a byte of voxel data is read, a scan whose processing would take more memory
than this machine should give it: one clear line and exit 2 instead of the OOM killer (which, under the
watch service, would kill the same file again on every restart).

The estimate follows what ``pipeline.segment`` allocates: the slices resampled in-plane to the model's
spacing (float32), the model-space volume and its copies (crop, probabilities, the uncropped grid, the
component labels: five float32-sized arrays), and at native resolution the int16 scan read into memory,
the uint8 mask, its hole-filled copy and the write buffer, plus the interpreter with its libraries.
"""

from __future__ import annotations

import os

from vbmd_rt.runtime import preprocess
from vbmd_rt.runtime.errors import VbmdInputError

BASELINE_BYTES = 400 * 2**20  # Python, numpy, OpenCV, ONNX Runtime and the model
MODEL_COPIES = 5
NATIVE_MASK_COPIES = 3
SCAN_BYTES_PER_VOXEL = 2  # int16, held in memory


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_max_memory() -> int:
    """Three quarters of the machine's RAM (8 GiB where it cannot be read)."""
    ram = physical_memory()
    return int(ram * 0.75) if ram else 8 * 2**30


def estimate_bytes(shape_zyx: tuple[int, int, int], spacing_zyx, spec: preprocess.Spec | None) -> int:
    """Peak memory of one scan through the pipeline, from its dimensions and voxel size (no data read).

    ``spec`` is the model's preprocessing; ``None`` for the classical model, which works at native
    resolution (its int32 component labels of the native mask dominate).
    """
    z, ny, nx = (int(v) for v in shape_zyx)
    native = z * ny * nx
    scan = SCAN_BYTES_PER_VOXEL * native  # the scan itself, read into memory (no memory map: issue 23)
    if spec is None:
        return BASELINE_BYTES + scan + 4 * native + NATIVE_MASK_COPIES * native  # + int32 component labels
    (mz, my, mx), _ = preprocess.model_grid((z, ny, nx), spec, spacing_zyx)
    resized = z * my * mx * 4
    model = mz * my * mx * 4
    return BASELINE_BYTES + scan + resized + MODEL_COPIES * model + NATIVE_MASK_COPIES * native


def check_memory(path, shape_zyx, spacing_zyx, spec: preprocess.Spec | None, max_bytes: int | None) -> int:
    """The estimate, or a :class:`VbmdInputError` when it exceeds ``max_bytes`` (None: the default)."""
    limit = default_max_memory() if max_bytes is None else int(max_bytes)
    try:
        need = estimate_bytes(shape_zyx, spacing_zyx, spec)
    except ValueError as e:  # a voxel size that is no size at all
        raise VbmdInputError(path, f"cannot be processed: {e}", "check the scan's header (vbmd-rt info)") from None
    if need > limit:
        z, ny, nx = shape_zyx
        el = " x ".join(f"{float(v):.4g}" for v in spacing_zyx[::-1])
        raise VbmdInputError(
            path,
            f"would need about {need / 2**30:.1f} GiB of memory ({nx} x {ny} x {z} voxels of {el} mm), "
            f"more than the limit of {limit / 2**30:.1f} GiB",
            "check the header (vbmd-rt info); if the scan is real, raise --max-memory (e.g. --max-memory 64G)",
        )
    return need


def parse_size(text: str) -> int:
    """``"16G"``, ``"512M"``, ``"2048"`` (bytes) -> bytes; ValueError otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    number = float(t[:-1] if factor > 1 else t)
    if not number > 0:
        raise ValueError(f"{text!r} is not a positive size")
    return int(number * factor)
