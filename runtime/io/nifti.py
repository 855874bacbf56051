"""Scan and mask in physical coordinates for 3D Slicer, ITK-SNAP and ITK: NIfTI-1 (``.nii``/``.nii.gz``)
and MetaImage (``.mha``), written with numpy alone (no imaging library at run time).

Geometry, as ITK reads it (LPS): spacing = the AIM's element size (mm), origin = position x element
size (the block's first voxel in the full scan's frame, so a cropped mask lands where it belongs),
direction = identity. NIfTI stores RAS, so its affine is ``diag(-sx, -sy, sz)`` with origin
``(-ox, -oy, oz)``, which is exactly what ITK itself writes for that image. Data are x-fastest in all
three formats, like AIM, so a (z, y, x) array is written as it is.

A calibrated int16 scan is written to NIfTI with ``scl_slope``/``scl_inter`` so that viewers show
mg HA/cm³; MetaImage has no scaling field, so its scan keeps the stored values (use NIfTI where the
viewer should show density). ``nifti`` writes ``.nii.gz``, ``nii`` uncompressed ``.nii`` (ORMIR-XCT's
readers want it). NIfTI exports come with JSON sidecars (ormir-mids' keys: ``ScancoMuScaling``,
``ScancoDensitySlope``, ``ScancoDensityIntercept``, ``ScancoMuWater``, and the unit of the values): the
mask's is ``NAME_SEG.json``; the scan's sidecar would be ``NAME.json``, which is the result JSON, so
the scan's keys go into the result JSON (:func:`scan_sidecar`). With a cropped mask (``--mask-format
cropped``) the NIfTI mask is cropped to the bone too, its origin moved to the box.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import naming
from vbmd_rt.runtime.io.atomic import atomic_write

EXPORT_FORMATS = ("nifti", "mha", "nii")
DENSITY_UNIT = "mg HA/cm3"
_NIFTI_CODES = {np.dtype("uint8"): (2, 8), np.dtype("int16"): (4, 16), np.dtype("int8"): (256, 8)}
_MET_TYPES = {np.dtype("uint8"): "MET_UCHAR", np.dtype("int16"): "MET_SHORT", np.dtype("int8"): "MET_CHAR"}


def origin_mm(position_xyz, element_size_mm) -> tuple[float, float, float]:
    """Physical (LPS) origin of a block: its position in voxels times the element size."""
    return tuple(float(p) * float(e) for p, e in zip(position_xyz, element_size_mm, strict=True))  # type: ignore[return-value]


def nifti_header(shape_zyx, dtype, element_size_mm, position_xyz, slope: float = 1.0, inter: float = 0.0) -> bytes:
    """The 348-byte NIfTI-1 header plus the 4-byte extension flag (data follow at byte 352)."""
    dtype = np.dtype(dtype)
    code, bits = _NIFTI_CODES[dtype]
    nz, ny, nx = (int(v) for v in shape_zyx)
    sx, sy, sz = (float(v) for v in element_size_mm)
    ox, oy, oz = origin_mm(position_xyz, element_size_mm)
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, nx, ny, nz, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", h, 70, code, bits)  # datatype, bitpix
    struct.pack_into("<8f", h, 76, 1.0, sx, sy, sz, 1.0, 1.0, 1.0, 1.0)  # pixdim (qfac 1)
    struct.pack_into("<f", h, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", h, 112, slope, inter)  # scl_slope, scl_inter
    h[123] = 2 | 8  # xyzt_units: mm, s
    h[148:228] = b"vbmd-rt".ljust(80, b"\0")  # descrip
    # qform: a rotation of 180 degrees about z (RAS <- LPS), as quaternion (b, c, d) = (0, 0, 1)
    struct.pack_into("<hh", h, 252, 1, 1)  # qform_code scanner, sform_code scanner
    struct.pack_into("<6f", h, 256, 0.0, 0.0, 1.0, -ox, -oy, oz)  # quatern_b,c,d, qoffset_x,y,z
    struct.pack_into("<4f", h, 280, -sx, 0.0, 0.0, -ox)  # srow_x
    struct.pack_into("<4f", h, 296, 0.0, -sy, 0.0, -oy)  # srow_y
    struct.pack_into("<4f", h, 312, 0.0, 0.0, sz, oz)  # srow_z
    h[344:348] = b"n+1\0"
    return bytes(h) + b"\0\0\0\0"


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    element_size_mm,
    position_xyz=(0, 0, 0),
    slope: float = 1.0,
    inter: float = 0.0,
) -> Path:
    """A (z, y, x) uint8/int8/int16 array as NIfTI-1 (gzip when the name ends in .gz), atomically."""
    path = Path(path)
    arr = np.ascontiguousarray(data)
    if arr.dtype.newbyteorder("<") != arr.dtype and arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    head = nifti_header(arr.shape, arr.dtype.newbyteorder("="), element_size_mm, position_xyz, slope, inter)
    with atomic_write(path, overwrite=True) as f:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) as g:
                g.write(head)
                g.write(memoryview(arr.reshape(-1)).cast("B"))  # type: ignore[arg-type]
        else:
            f.write(head)
            f.write(memoryview(arr.reshape(-1)).cast("B"))  # type: ignore[arg-type]
    return path


def write_mha(path: str | os.PathLike, data: np.ndarray, element_size_mm, position_xyz=(0, 0, 0)) -> Path:
    """A (z, y, x) array as a MetaImage (.mha, header and data in one file), atomically."""
    path = Path(path)
    arr = np.ascontiguousarray(data)
    nz, ny, nx = arr.shape
    ox, oy, oz = origin_mm(position_xyz, element_size_mm)
    head = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            "TransformMatrix = 1 0 0 0 1 0 0 0 1",
            f"Offset = {ox:.9g} {oy:.9g} {oz:.9g}",
            "CenterOfRotation = 0 0 0",
            "AnatomicalOrientation = RAI",
            "ElementSpacing = " + " ".join(f"{float(v):.9g}" for v in element_size_mm),
            f"DimSize = {nx} {ny} {nz}",
            f"ElementType = {_MET_TYPES[arr.dtype.newbyteorder('=')]}",
            "ElementDataFile = LOCAL",
            "",
        ]
    ).encode()
    with atomic_write(path, overwrite=True) as f:
        f.write(head)
        f.write(memoryview(arr.reshape(-1)).cast("B"))  # type: ignore[arg-type]
    return path


def _box(m: np.ndarray, hint=None) -> tuple[slice, slice, slice] | None:
    """Tight (z, y, x) box of a boolean mask; ``hint`` (z0, z1, y0, y1, x0, x1) bounds the search where
    it holds every voxel (as ``masks.bounding_box``, which imports this module)."""
    z0 = y0 = x0 = 0
    region = m
    if hint is not None:
        z0, z1, y0, y1, x0, x1 = (int(v) for v in hint)
        region = m[z0:z1, y0:y1, x0:x1]
        if int(np.count_nonzero(region)) != int(np.count_nonzero(m)):
            z0 = y0 = x0 = 0
            region = m
    axes = [np.flatnonzero(region.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1))]
    if any(a.size == 0 for a in axes):
        return None
    (zs, ys, xs), (oz, oy, ox) = axes, (z0, y0, x0)
    return (
        slice(oz + int(zs[0]), oz + int(zs[-1]) + 1),
        slice(oy + int(ys[0]), oy + int(ys[-1]) + 1),
        slice(ox + int(xs[0]), ox + int(xs[-1]) + 1),
    )


def scan_sidecar(scan, fmt: str) -> dict:
    """The scan export's sidecar keys (ormir-mids' names): the Scanco calibration from the header and
    the unit of the values a reader gets (NIfTI applies ``scl_slope``/``scl_inter``: mg HA/cm³ where
    calibrated; MetaImage keeps the stored, native values)."""
    cal = scan.calibration
    scaled = fmt != "mha" and cal is not None
    return {
        "ScancoMuScaling": None if cal is None else float(cal.mu_scaling),
        "ScancoDensitySlope": None if cal is None else float(cal.slope),
        "ScancoDensityIntercept": None if cal is None else float(cal.intercept),
        "ScancoMuWater": None if cal is None else cal.mu_water,
        "ScancoDensityUnit": None if cal is None else cal.unit,
        "Units": DENSITY_UNIT if scaled else "native",
        "UnitsDescription": (
            "values as read with scl_slope/scl_inter applied: mg HA/cm3 = stored x ScancoDensitySlope / "
            "ScancoMuScaling + ScancoDensityIntercept; the stored int16 are Scanco native units "
            "(linear attenuation in 1/cm x ScancoMuScaling)"
            if scaled
            else "Scanco native units as stored (linear attenuation in 1/cm x ScancoMuScaling); mg HA/cm3 = "
            "value x ScancoDensitySlope / ScancoMuScaling + ScancoDensityIntercept"
        ),
    }


def mask_sidecar(scan, cropped: bool) -> dict:
    """``NAME_SEG.json``: what the mask's values are, and the scan's calibration keys (the pair's)."""
    keys = {k: v for k, v in scan_sidecar(scan, "nifti").items() if k.startswith("Scanco")}
    return {
        **keys,
        "Units": "label",
        "Labels": {"0": "background", "1": "MC2 (second metacarpal, periosteal)"},
        "Cropped": cropped,
        "Source": "vbmd-rt",
    }


def export_pair(
    out_dir: Path, name: str, scan, mask: np.ndarray, fmt: str, cropped: bool = False, box=None
) -> list[Path]:
    """``NAME.nii.gz``/``NAME_SEG.nii.gz`` (``.nii`` for ``nii``, ``.mha``): the scan (density where
    calibrated) and its mask (uint8 0/1), placed so that they open aligned in 3D Slicer; NIfTI also gets
    the mask's sidecar ``NAME_SEG.json`` (the scan's keys: :func:`scan_sidecar`, in the result JSON).
    ``cropped``: the mask only over the bone's box (``box``: a hint, see ``masks.bounding_box``), its
    position moved to the box, as the cropped mask AIM."""
    import json

    from vbmd_rt.runtime.io.atomic import atomic_write_bytes

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
    el, pos = scan.header.element_size_mm, scan.header.position
    hint = _box(np.asarray(mask), box)  # the mask's tight box (a hint that misses voxels is not taken)
    m = np.zeros(mask.shape, bool)  # written in that box only: the rest are zero pages never touched
    if hint is not None:
        m[hint] = np.asarray(mask[hint]) != 0
    mpos = pos
    if cropped:
        sl = hint or (slice(0, 1), slice(0, 1), slice(0, 1))  # an empty mask: one background voxel
        m = np.ascontiguousarray(m[sl])
        mpos = tuple(int(p) + s.start for p, s in zip(pos, (sl[2], sl[1], sl[0]), strict=True))
    scan_file, mask_file, *sidecar = (out_dir / n for n in export_names(name, fmt))
    if fmt == "mha":
        return [
            write_mha(scan_file, np.asarray(scan.data), el, pos),
            write_mha(mask_file, m.view(np.uint8), el, mpos),
        ]
    cal = scan.calibration
    slope, inter = (1.0, 0.0) if cal is None else cal.density_equation()  # density = stored * slope + inter
    body = (json.dumps(mask_sidecar(scan, cropped), indent=2) + "\n").encode()
    atomic_write_bytes(sidecar[0], body, overwrite=True)
    return [  # the images; the sidecar is the last of export_names
        write_nifti(scan_file, np.asarray(scan.data), el, pos, slope, inter),
        write_nifti(mask_file, m.view(np.uint8), el, mpos),
    ]


export_names = naming.export_names  # NAME.nii.gz, NAME_SEG.nii.gz, NAME_SEG.json (runtime.io.naming)


# --------------------------------------------------------------------------- reading (masks for `measure`)


def _read_bytes(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as g:
            return g.read()
    return path.read_bytes()


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI-1 -> ((z, y, x) array, 4x4 RAS affine from the sform, else the qform/pixdim)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 352 or struct.unpack_from("<i", raw, 0)[0] != 348:
        raise VbmdInputError(path, "is not a NIfTI-1 file (or is big-endian)", "save the mask as NIfTI-1 .nii/.nii.gz")
    dim = struct.unpack_from("<8h", raw, 40)
    if dim[0] < 3 or any(d > 1 for d in dim[4 : dim[0] + 1]):
        raise VbmdInputError(path, f"holds a {dim[0]}-D image", "save a 3-D mask")
    nx, ny, nz = dim[1:4]
    code = struct.unpack_from("<h", raw, 70)[0]
    types = {2: "u1", 4: "<i2", 8: "<i4", 16: "<f4", 64: "<f8", 256: "i1", 512: "<u2", 768: "<u4"}
    if code not in types:
        raise VbmdInputError(path, f"has NIfTI data type {code}", "save the mask as 8-bit or 16-bit integers")
    off = int(struct.unpack_from("<f", raw, 108)[0])
    dt = np.dtype(types[code])
    n = nx * ny * nz
    if len(raw) < off + n * dt.itemsize:
        raise VbmdInputError(path, "is truncated", "save the mask again")
    data = np.frombuffer(raw, dtype=dt, count=n, offset=off).reshape(nz, ny, nx)
    qcode, scode = struct.unpack_from("<hh", raw, 252)
    if scode > 0:
        rows = [struct.unpack_from("<4f", raw, o) for o in (280, 296, 312)]
        aff = np.array([*rows, (0, 0, 0, 1)], dtype=np.float64)
    else:
        pix = struct.unpack_from("<8f", raw, 76)
        b, c, d, qx, qy, qz = struct.unpack_from("<6f", raw, 256)
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        r = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c],
            ]
        )
        qfac = -1.0 if pix[0] < 0 else 1.0
        aff = np.eye(4)
        aff[:3, :3] = r * np.array([pix[1], pix[2], pix[3] * qfac])
        if qcode <= 0:
            aff[:3, :3] = np.diag(pix[1:4])
        aff[:3, 3] = (qx, qy, qz)
    return data, aff


def read_as_grid(path: Path, scan_header) -> tuple[np.ndarray, tuple, tuple]:
    """A NIfTI mask -> (data (z, y, x) in the AIM's axis order, element size mm, position in voxels).

    The affine must be axis-aligned (as Slicer and ITK-SNAP save segmentations of our exports); flipped
    axes are turned back. A NIfTI without orientation (sform/qform code 0) is taken on the scan's grid.
    """
    data, aff = read_nifti(path)
    lin = aff[:3, :3]
    if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6 * max(1.0, float(np.abs(lin).max()))):
        raise VbmdInputError(
            path, "is rotated relative to the scan's axes", "resample the mask onto the scan (e.g. in 3D Slicer)"
        )
    diag = np.diag(lin)
    # LPS direction of each array axis (x, y, z): RAS -> LPS flips x and y
    lps_sign = np.sign(diag) * np.array([-1.0, -1.0, 1.0])
    origin = aff[:3, 3] * np.array([-1.0, -1.0, 1.0])
    spacing = np.abs(diag)
    shape_xyz = (data.shape[2], data.shape[1], data.shape[0])
    arr = data
    for axis_xyz in range(3):
        if lps_sign[axis_xyz] < 0:  # stored backwards: flip, and the first voxel is the other end
            origin[axis_xyz] -= (shape_xyz[axis_xyz] - 1) * spacing[axis_xyz]
            arr = np.flip(arr, axis=2 - axis_xyz)
    pos = tuple(int(round(o / s)) for o, s in zip(origin, spacing, strict=True))
    if np.any(np.abs(np.asarray(pos) * spacing - origin) > 0.25 * spacing):
        raise VbmdInputError(path, "is not on a voxel grid of its own origin", "resample the mask onto the scan")
    return np.ascontiguousarray(arr), tuple(float(s) for s in spacing), pos
