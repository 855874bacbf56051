"""Mask files: write a run's MC2 mask compactly, read any mask back onto a scan's grid.

A full XtremeCT scan's mask is 700 MB as full-size char, almost all of it background. Written here:

* ``rle`` (default): binary run-length (``0x00150001``), the scanner's own compact mask type, full
  geometry (same dimensions, position and offset as the scan). It is encoded from the bone's bounding
  box alone (runs outside it are known to be background), so a full-size mask takes tens of
  milliseconds and a few hundred KB. AimIO refuses run-length files with an offset border, so a scan
  with an offset gets ``cropped`` instead.
* ``cropped``: char 0/127 cut to the bone's bounding box, its position moved by the box's corner,
  as IPL stores masks (``gobj_to_aim``); the scan's grid is restored from the position.
* ``char``: full-size char 0/127, the old behaviour.

``read_mask_file`` (with ``place_on_grid``) is the inverse for any mask file (AIM of any type, cropped or not, GOBJ through
aimio-py, NIfTI): it places the mask's voxels on the scan's grid by position, and refuses masks whose
voxel size or extent does not fit the scan.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import cast

import numpy as np

from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import aim, proclog
from vbmd_rt.runtime.io.codecs import BinaryRle, encode_run_lengths

MASK_FORMATS = ("rle", "cropped", "char")
MASK_VALUE = 127  # IPL's object value in char masks
# The log's last block says what the values are (IPL's parameter lines) and scales them by 1, so that
# readers that rescale by the log's calibration (ITK's Scanco reader) read 0/127 as IPL's masks read.
MASK_VALUES = (*proclog.OBJECTS, 0, MASK_VALUE)
PROB_VALUES = ("Probability x100", "[%]", 0, 100)  # NAME_PROB.AIM (--save-prob), char 0..100


def bounding_box(mask: np.ndarray, hint=None) -> tuple[slice, slice, slice] | None:
    """Tight (z, y, x) box of the non-zero voxels, or None for an empty mask.

    ``hint`` (z0, z1, y0, y1, x0, x1), e.g. postprocess's work region, bounds the search: outside it the
    mask must be zero, and only the voxels inside it are looked at.
    """
    if hint is None:
        z0, y0, x0 = 0, 0, 0
        region = mask
    else:
        z0, _, y0, _, x0, _ = (int(v) for v in hint)
        region = mask[int(hint[0]) : int(hint[1]), int(hint[2]) : int(hint[3]), int(hint[4]) : int(hint[5])]
    zs = np.flatnonzero(region.reshape(region.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return None
    sub = region[zs[0] : zs[-1] + 1]
    ys = np.flatnonzero(sub.any(axis=(0, 2)))
    xs = np.flatnonzero(sub.any(axis=(0, 1)))
    return (
        slice(z0 + int(zs[0]), z0 + int(zs[-1]) + 1),
        slice(y0 + int(ys[0]), y0 + int(ys[-1]) + 1),
        slice(x0 + int(xs[0]), x0 + int(xs[-1]) + 1),
    )


def encode_in_box(mask: np.ndarray, box, value: int = MASK_VALUE) -> BinaryRle:
    """Binary run-length of a (z, y, x) mask (non-zero inside) that is zero outside ``box``.

    Runs are found row by row inside the box; the flat index of every run's start and end gives the
    stream. Cost and memory scale with the box, not the scan.
    """
    shape = tuple(int(v) for v in mask.shape)
    n = int(np.prod(shape))
    if box is None:
        return BinaryRle(shape, encode_run_lengths(np.array([n]), (0, value)))
    sub = np.asarray(mask[box]) != 0
    pad = np.zeros((sub.shape[0], sub.shape[1], sub.shape[2] + 2), dtype=np.int8)
    pad[:, :, 1:-1] = sub
    d = np.diff(pad, axis=2)
    kz, ky, kx = np.nonzero(d)  # C order: the flat order of the file
    flat = ((kz + box[0].start) * shape[1] + (ky + box[1].start)) * shape[2] + (kx + box[2].start)
    flat = flat.astype(np.int64)
    # Starts and ends alternate; a run ending at a row's last voxel and one starting at the next row's
    # first voxel meet (only when the box spans the whole width): merge them into one run.
    starts, ends = flat[0::2], flat[1::2]
    touch = ends[:-1] == starts[1:]
    drop_end = np.concatenate((touch, [False]))
    drop_start = np.concatenate(([False], touch))
    starts = starts[~drop_start]
    ends = ends[~drop_end]
    bounds = np.empty(starts.size * 2 + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    return BinaryRle(shape, encode_run_lengths(np.diff(bounds), (0, value)))


def write_mask(
    path: str | os.PathLike,
    mask: np.ndarray,
    header: aim.AimHeader,
    fmt: str = "rle",
    log_entry: str | None = None,
    box=None,
    voxels: int | None = None,
) -> dict:
    """Write a (z, y, x) mask (non-zero inside) of the scan ``header`` describes, atomically.

    ``fmt`` is ``rle``, ``cropped`` or ``char`` (see the module's docstring); ``box`` is an optional
    (z0, z1, y0, y1, x0, x1) outside which the mask is zero (it saves scanning the whole volume); with
    ``voxels`` (the mask's count, e.g. from ``measure.vbmd``) a box that misses some is caught and the
    whole volume is searched instead. Returns the facts for the result JSON: file, format, AIM type, values, dimensions and position.
    """
    if fmt not in MASK_FORMATS:
        raise ValueError(f"mask format must be one of {', '.join(MASK_FORMATS)}, not {fmt!r}")
    if tuple(mask.shape) != tuple(header.shape):
        raise ValueError(f"mask shape {mask.shape} is not the scan's {header.shape}")
    tight = bounding_box(mask, box)
    if box is not None and voxels is not None:
        inside = 0 if tight is None else int(np.count_nonzero(np.asarray(mask[tight])))
        if inside != voxels:  # the hint was wrong: never drop a voxel for speed
            tight = bounding_box(mask)
    if fmt == "rle" and any(header.offset):
        fmt = "cropped"  # AimIO refuses run-length files with an offset border
    if fmt == "rle":
        written = aim.write_aim(path, encode_in_box(mask, tight), header, log_entry=log_entry, values=MASK_VALUES)
    elif fmt == "cropped":
        sl = tight or (slice(0, 1), slice(0, 1), slice(0, 1))  # an empty mask: one background voxel
        corner = (sl[2].start, sl[1].start, sl[0].start)  # x, y, z
        sub = np.asarray(mask[sl])
        data = np.where(sub != 0, np.int8(MASK_VALUE), np.int8(0)).astype(np.int8)
        dims = (data.shape[2], data.shape[1], data.shape[0])
        tmpl = dataclasses.replace(
            header,
            position=tuple(int(p) + c for p, c in zip(header.position, corner, strict=True)),
            # the scan's offset border, as far as it reaches into the box
            offset=tuple(int(min(max(o - c, 0), d)) for o, c, d in zip(header.offset, corner, dims, strict=True)),
        )
        written = aim.write_aim(path, data, tmpl, type="char", log_entry=log_entry, values=MASK_VALUES)
    else:  # the whole scan's grid, written in the bone's box only: the rest are zero pages never touched
        data = np.zeros(mask.shape, np.int8)
        if tight is not None:
            data[tight] = np.where(np.asarray(mask[tight]) != 0, np.int8(MASK_VALUE), np.int8(0))
        written = aim.write_aim(path, data, header, type="char", log_entry=log_entry, values=MASK_VALUES)
    return {
        "file": Path(path).name,
        "format": fmt,
        "type": written.type_name,
        "values": [0, MASK_VALUE],
        "dimensions_xyz": [int(v) for v in written.dim],
        "position_xyz": [int(v) for v in written.position],
    }


# --------------------------------------------------------------------------- reading any mask


def _fail(path, problem, fix):
    raise VbmdInputError(path, problem, fix)


def read_mask_file(path: str | os.PathLike, scan_header: aim.AimHeader) -> np.ndarray:
    """Any mask file -> uint8 (z, y, x) 0/1 mask on the scan's grid.

    AIM of any type (char, binary or char run-length, bit-packed; full size or cropped with its
    position), GOBJ contours (needs aimio-py), NIfTI (``.nii``/``.nii.gz``, on the scan's grid or
    placed by its origin). Raises ``VbmdInputError`` (exit 2) for a mask that does not fit the scan.
    """
    p = Path(path)
    if not p.is_file():
        _fail(p, "no such file", "check the mask's path")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from vbmd_rt.runtime.io import nifti

        data, el, pos = nifti.read_as_grid(p, scan_header)
    elif name.endswith(".gobj"):
        data, el, pos = _read_gobj(p)
    else:
        m = aim.read_whole(p, check=lambda h: _check_mask_header(p, h, scan_header))  # before any decoding
        data, el, pos = np.asarray(m.data), m.header.element_size_mm, m.header.position
    return place_on_grid(p, data, el, pos, scan_header)


def _check_mask_header(p: Path, header: aim.AimHeader, scan_header: aim.AimHeader) -> None:
    """Refuse from the mask's header alone, before its (possibly compressed) data is decoded: a scan, another
    grid, or a block of more than twice the scan's voxels (a run-length stream can claim 10^9 voxels in a few MB)."""
    if header.version == 4:
        _fail(p, "is an ISQ scan, not a mask", "pass the mask (AIM, GOBJ or NIfTI)")
    if not header.is_mask:
        _fail(p, "is a greyscale int16 AIM, not a mask", "pass the mask (char or binary AIM, GOBJ or NIfTI)")
    el, el_s = (np.asarray(e, dtype=np.float64) for e in (header.element_size_mm, scan_header.element_size_mm))
    if not np.allclose(el, el_s, rtol=1e-4, atol=1e-7):
        place_on_grid(p, np.zeros((0, 0, 0), np.uint8), header.element_size_mm, header.position, scan_header)
    if int(np.prod(header.dim, dtype=np.int64)) > 2 * int(np.prod(scan_header.dim, dtype=np.int64)):
        _fail(
            p,
            f"mask of {' x '.join(map(str, header.dim))} voxels is larger than the scan "
            f"({' x '.join(map(str, scan_header.dim))})",
            "pass the mask drawn on this scan",
        )


def place_on_grid(path, data: np.ndarray, element_size_mm, position_xyz, scan_header: aim.AimHeader) -> np.ndarray:
    """A mask block with its voxel size and position -> uint8 0/1 on the scan's grid (checked)."""
    el_s = np.asarray(scan_header.element_size_mm, dtype=np.float64)
    if not np.allclose(np.asarray(element_size_mm, dtype=np.float64), el_s, rtol=1e-4, atol=1e-7):
        _fail(
            path,
            f"voxel size {tuple(round(float(v), 6) for v in element_size_mm)} mm differs from the scan's "
            f"{tuple(round(float(v), 6) for v in el_s)} mm",
            "resample the mask to the scan's grid, or pass the scan it was drawn on",
        )
    shape = scan_header.shape
    # position is in voxels of the full scan; the scan itself sits at its own position
    rel = [int(p) - int(s) for p, s in zip(position_xyz, scan_header.position, strict=True)]  # x, y, z
    dz, dy, dx = data.shape
    start = (rel[2], rel[1], rel[0])
    stop = (rel[2] + dz, rel[1] + dy, rel[0] + dx)
    out = np.zeros(shape, dtype=np.uint8)
    if any(a < 0 for a in start) or any(b > n for b, n in zip(stop, shape, strict=True)):
        inside = data != 0
        # voxels of the block that fall outside the scan must all be background
        src = tuple(slice(max(0, -a), min(d, n - a)) for a, d, n in zip(start, data.shape, shape, strict=True))
        if any(s.stop <= s.start for s in src) or int(np.count_nonzero(inside)) != int(np.count_nonzero(inside[src])):
            _fail(
                path,
                f"mask (position {tuple(position_xyz)}, {dx} x {dy} x {dz} voxels) reaches outside the scan "
                f"(position {tuple(scan_header.position)}, {shape[2]} x {shape[1]} x {shape[0]})",
                "pass the mask drawn on this scan",
            )
        dst = tuple(slice(a + s.start, a + s.stop) for a, s in zip(start, src, strict=True))
        out[dst] = inside[src]
        return out
    out[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = data != 0
    return out


def _read_gobj(path: Path):
    try:
        import py_aimio
    except ImportError:
        _fail(path, "GOBJ contours need aimio-py", "pip install aimio-py, or convert the GOBJ to a mask AIM")
    data, meta = py_aimio.read_gobj(str(path))  # (z, y, x), cropped to the contours, with its position
    return np.asarray(data), tuple(meta["element_size"]), tuple(meta["position"])


COMPARTMENTS = {"cort": (1, "cortical"), "trab": (2, "trabecular")}  # runtime.compartments' labels


def write_compartments(
    paths: dict, labels: np.ndarray | None, box, header: aim.AimHeader, fmt: str = "rle", log_entry: str = ""
) -> dict:
    """``NAME_CORT_MASK.AIM`` and ``NAME_TRAB_MASK.AIM`` (``paths["cort"]``, ``paths["trab"]``) in the format
    of the SEG mask: the compartments ``labels`` (1 cortex, 2 trabecular, the (z, y, x) slices ``box`` of the
    scan); empty masks where there are none (no calibration, no bone). Returns each file's facts."""
    out = {}
    for key, (label, what) in COMPARTMENTS.items():
        if labels is not None:
            full = BoxedMask(labels == label, box, header.shape)
            hint = tuple(int(v) for s in box for v in (s.start, s.stop))
            voxels = int(np.count_nonzero(full.inside))
        else:
            full = BoxedMask(np.zeros((1, 1, 1), bool), (slice(0, 1),) * 3, header.shape)
            hint, voxels = (0, 1, 0, 1, 0, 1), 0
        entry = f"MC2 {what} compartment by vbmd-rt" + (f"; {log_entry}" if log_entry else "")
        box_only = cast(np.ndarray, full)  # write_mask reads boxes of it (and np.asarray for ``char``)
        out[key] = {**write_mask(paths[key], box_only, header, fmt, entry, hint, voxels), "voxels": voxels}
    return out


class BoxedMask:
    """A scan-sized mask that is zero outside ``box`` ((z, y, x) slices), held as its box only: ``write_mask``
    reads boxes of it (``mask[slices]``), so a full-size compartment mask costs its box, not 0.7 GB of pages;
    ``np.asarray`` gives the whole array (the ``char`` format)."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, inside: np.ndarray, box, shape):
        self.inside, self.box, self.shape = inside, tuple(box), tuple(int(v) for v in shape)

    def __getitem__(self, key) -> np.ndarray:
        key = tuple(slice(*k.indices(n)) for k, n in zip(key, self.shape, strict=True))
        out = np.zeros(tuple(k.stop - k.start for k in key), np.uint8)
        src, dst = [], []
        for k, b in zip(key, self.box, strict=True):
            lo, hi = max(k.start, b.start), min(k.stop, b.stop)
            if hi <= lo:
                return out
            src.append(slice(lo - b.start, hi - b.start))
            dst.append(slice(lo - k.start, hi - k.start))
        out[tuple(dst)] = self.inside[tuple(src)]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = np.zeros(self.shape, np.uint8)
        full[self.box] = self.inside
        return full if dtype is None else full.astype(dtype)
