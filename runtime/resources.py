"""Resources bounded before any work: the memory a scan will take, predicted from its header alone.

A header can lie (a 34 KB file that claims 1 x 1 x 15625 voxels of 82 µm, or a voxel size a thousand
times too large); the file's own size is already checked against its dimensions by the reader. What is
left is to refuse, before a byte of voxel data is read, a scan whose processing would take more memory
than this machine should give it: one clear line and exit 2 instead of the OOM killer (which, under the
watch service, would kill the same file again on every restart).

The estimate follows what ``pipeline.segment`` allocates: the model-space volume and its copies (crop,
probabilities, the uncropped grid, the component labels: five float32-sized arrays; the slices are resampled
a few at a time), and at native resolution the int16 scan read into memory and the mask with its work
arrays, plus the interpreter with its libraries. The bundled one-bone network and the classical contour
touch the native mask only in a box round MC2 (``postprocess.sparse_zeros``: the rest are zero pages never
written): the one-bone window is 39 mm across, and ``BONE_BOX_MM`` is charged; the classical contour also
tracks the bones near MC2 on a coarse grid and draws its mask in a native crop round them
(``classical.NEAR_MM``), charged per coarse voxel. A model that segments whole slices may mark anywhere: the
whole scan counts. Output files that are whole-scan arrays add theirs (``output_bytes_per_voxel``).

Measured (peak RSS, ``/usr/bin/time -v vbmd-rt run``), against the estimate: a full-size XtremeCT II phantom
(393 x 2304 x 2304 voxels of 60.7 µm, 3.9 GiB of scan), 4.3 GiB for the network (estimate 7.3) and 4.7 GiB
for the classical contour (7.9); the estimate before counted three native copies of the mask and refused
the classical contour on a 24 GB machine (17.9 GiB against its limit of 17.7).
"""

from __future__ import annotations

import math
import os

from vbmd_rt.runtime import preprocess
from vbmd_rt.runtime.errors import VbmdInputError

BASELINE_BYTES = 400 * 2**20  # Python, numpy, OpenCV, ONNX Runtime and the model
MODEL_COPIES = 5
NATIVE_MASK_COPIES = 3  # a model of whole slices: the uint8 mask, its hole-filled copy, the write buffer
SCAN_BYTES_PER_VOXEL = 2  # int16, held in memory
BONE_BOX_MM = 45.0  # the one-bone window is 39 mm across (``bonewin``); MC2's head is 15-25 mm wide
BOX_BYTES_PER_VOXEL = 12  # in that box: the mask, its copies, its component labels (int32), the outline's work
CLASSICAL_BYTES_PER_VOXEL = 16  # per voxel of the classical contour's coarse grid near MC2: levels, labels


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


def output_bytes_per_voxel(native_prob: bool, mask_format: str, export: tuple | list | str | None) -> int:
    """Bytes per scan voxel that the output files ask for on top of the run, where they are whole-scan arrays
    that the writers fill in the bone's box only: a mask written as a whole char AIM (``--mask-format char``),
    an exported NIfTI or MetaImage (the mask, and the scan's image written out), the classical model's
    probability file (``--save-prob``: its mask as 0/100 on the native grid). Counted at 2 bytes a voxel each
    all the same: the exported scan's image and the writers' own conversions are not measured."""
    return 2 * (mask_format == "char") + 2 * bool(export) + 2 * bool(native_prob)


def estimate_bytes(
    shape_zyx: tuple[int, int, int],
    spacing_zyx,
    spec: preprocess.Spec | None,
    one_bone: bool = False,
    extra_per_voxel: int = 0,
) -> int:
    """Peak memory of one scan through the pipeline, from its dimensions and voxel size (no data read).

    ``spec`` is the model's preprocessing, ``one_bone`` whether it draws one bone in a window round it (the
    bundled network); ``None`` for the classical model, which reads the one-bone grid for the identification
    stage and draws its contour at native resolution near MC2. ``extra_per_voxel``: what the outputs ask for
    (``output_bytes_per_voxel``).
    """
    z, ny, nx = (int(v) for v in shape_zyx)
    native = z * ny * nx
    scan = (SCAN_BYTES_PER_VOXEL + int(extra_per_voxel)) * native  # the scan read into memory (issue 23), outputs
    classical = spec is None
    if classical:
        from vbmd_rt.runtime import bonewin

        spec, one_bone = bonewin.GRID, True
    (mz, my, mx), _ = preprocess.model_grid((z, ny, nx), spec, spacing_zyx)
    need = BASELINE_BYTES + scan + MODEL_COPIES * mz * my * mx * 4
    if not one_bone:
        return need + NATIVE_MASK_COPIES * native
    px = min(float(spacing_zyx[1]), float(spacing_zyx[2]))
    side = math.ceil(BONE_BOX_MM / px)
    need += BOX_BYTES_PER_VOXEL * z * min(ny, side) * min(nx, side)
    if classical:
        from vbmd_rt.runtime import classical as contour

        factor = contour.coarse_factor(spacing_zyx)
        near = math.ceil(2 * contour.NEAR_MM / px)
        need += CLASSICAL_BYTES_PER_VOXEL * z * (min(ny, near) // factor) * (min(nx, near) // factor)
    return need


def check_memory(
    path,
    shape_zyx,
    spacing_zyx,
    spec: preprocess.Spec | None,
    max_bytes: int | None,
    one_bone: bool = False,
    extra_per_voxel: int = 0,
) -> int:
    """The estimate, or a :class:`VbmdInputError` when it exceeds ``max_bytes`` (None: the default)."""
    limit = default_max_memory() if max_bytes is None else int(max_bytes)
    try:
        need = estimate_bytes(shape_zyx, spacing_zyx, spec, one_bone, extra_per_voxel)
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
