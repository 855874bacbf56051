"""Preprocessing shared by inference and training: native scan -> model space, and the way back.

Model space is what the network sees, defined in millimetres:

* in-plane: every slice resampled with OpenCV ``INTER_AREA`` (``INTER_LINEAR`` when enlarging) from the
  header's voxel size to the model's ``spacing_mm`` (0.246 mm for the bundled model: an XtremeCT I
  1536 x 1536 scan at 82 µm becomes 512 x 512), whatever the field of view: a scan cropped around the
  hand, or an XtremeCT II scan at 60.7 µm, shows its bones at the size the network learnt. The work is
  bounded by the scan's physical size, not by its pixel count. Cards without ``spacing_mm`` (format 1)
  keep the old pixel-count resize to ``size`` x ``size``;
* along z (summed first, slice by slice, then each sum resized in-plane: both steps are linear, so the order
  changes nothing but the work and the memory): the 3D net (``z_mode="isotropic"``) sees slices area-averaged to the in-plane spacing, so a
  82 µm scan and a 246 µm scan look alike; the 2D net (``z_mode="native"``) sees every slice;
* orientation: left hands are mirrored in x when the side is known (the bundled model is trained
  mirror-invariant, so ``side="auto"`` needs no flip and the side is read off the result);
* crop: the hand's bounding box (air cut away, a margin kept, sizes rounded up to ``multiple``), which
  divides the network's work by three to four on a typical scan (at an integer in-plane factor, XtremeCT I at
  82 µm, the box is found on the mean over every slice of each block's centre voxel and only the native
  voxels under it are resampled: the same voxels, a quarter of the work); models without crop (the 2D net) see a
  ``size`` x ``size`` window centred on the hand (air padding where the scan is smaller);
* normalisation: ``(raw - mean) / std`` with statistics from the training split (the model card).

``Geometry`` records every step, so probabilities come back to native voxels exactly
(``postprocess.postprocess`` through ``native_box`` and ``sample_at_native``) and ``from_model(to_model(x)) == x`` for both hands (tested).
Training (``vbmd_rt.export``) imports these functions, so training and inference cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from vbmd_rt.runtime.parallel import each, spans

SIDES = ("auto", "left", "right")
PREVIEW_SLICES = 8  # slices (at least) whose model voxels give the air level for padding
MODEL_SPACING_MM = 0.246  # in-plane spacing of new models: an XtremeCT I slice (1536 x 82 µm) becomes 512 x 512


@dataclass(frozen=True)
class Spec:
    """The preprocessing a model was trained with (from its card's ``preprocessing``)."""

    size: int = 512  # the 2D net's fixed input; with spacing_mm None (old cards), the in-plane grid
    spacing_mm: float | None = None  # model-space in-plane spacing; None: resize to size x size by pixel count
    z_mode: str = "isotropic"  # "isotropic" (3D net) or "native" (2D net)
    mean: float = 0.0
    std: float = 1.0
    multiple: int = 16  # crop sizes are multiples of this (16 for the 3D net, 32 for the 2D net)
    margin: int = 12  # model voxels kept around the hand
    crop: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Geometry:
    """How a native (z, y, x) volume maps into model space."""

    native_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]  # (z, y, x) of the model grid before cropping
    flip_x: bool
    crop: tuple[int, int, int, int]  # (y0, y1, x0, x1) in model space; may reach past the edges (padding)

    @property
    def scale(self) -> tuple[float, float, float]:
        """Native voxels per model voxel along (z, y, x)."""
        (nz, ny, nx), (mz, my, mx) = self.native_shape, self.model_shape
        return nz / mz, ny / my, nx / mx


# --------------------------------------------------------------------------- resampling


def resize_slices(volume: np.ndarray, size: int | tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Resize every (y, x) slice to ``size`` with ``INTER_AREA`` (``INTER_LINEAR`` when enlarging).

    Works slice by slice on memory maps (one native slice in memory at a time); the dtype is kept
    unless ``out`` says otherwise.
    """
    ny, nx = (size, size) if isinstance(size, int) else size
    z = volume.shape[0]
    if out is None:
        out = np.empty((z, ny, nx), dtype=volume.dtype if volume.dtype != bool else np.uint8)
    interp = cv2.INTER_AREA if ny <= volume.shape[1] and nx <= volume.shape[2] else cv2.INTER_LINEAR
    for k in range(z):
        s = np.asarray(volume[k])
        if s.dtype == bool:
            s = s.view(np.uint8)
        if out.dtype == np.float32 or s.dtype not in (np.uint8, np.int16, np.uint16, np.float32):
            s = s.astype(np.float32, copy=False)
        out[k] = cv2.resize(s, (nx, ny), interpolation=interp)
    return out


def resample_z(volume: np.ndarray, nz: int) -> np.ndarray:
    """Area-resample (z, y, x) float32 along z to ``nz`` slices (each output slice the overlap-weighted
    mean of the input slices it covers)."""
    z = volume.shape[0]
    if nz == z:
        return volume
    flat = np.ascontiguousarray(volume, dtype=np.float32).reshape(z, -1)
    # cv2.resize limits width to SHRT_MAX-ish blocks for some paths; go through columns in chunks.
    out = np.empty((nz, flat.shape[1]), dtype=np.float32)
    step = 1 << 15
    interp = cv2.INTER_AREA if nz < z else cv2.INTER_LINEAR
    for c in range(0, flat.shape[1], step):
        out[:, c : c + step] = cv2.resize(
            flat[:, c : c + step], (min(step, flat.shape[1] - c), nz), interpolation=interp
        )
    return out.reshape((nz,) + volume.shape[1:])


def z_weights(z: int, nz: int) -> np.ndarray:
    """(nz, z) float32: the weight of each of ``z`` slices in each of ``nz`` resampled ones, as ``resample_z``
    gives them (the same OpenCV resampling of the identity)."""
    if nz == z:
        return np.eye(z, dtype=np.float32)
    interp = cv2.INTER_AREA if nz < z else cv2.INTER_LINEAR
    return cv2.resize(np.eye(z, dtype=np.float32), (z, nz), interpolation=interp)


def _resample_zyx(volume: np.ndarray, shape: tuple[int, int, int], nonzero: bool = False) -> np.ndarray:
    """``resample_z(resize_slices(volume, shape[1:]), shape[0])`` in the other order: each output slice is the
    weighted sum of its few input slices (``z_weights``), then resized in-plane. Both are linear, so the
    result is the same; only ``shape[0]`` slices are resized, and the one temporary is a slice. ``nonzero``:
    resample ``volume > 0`` (a mask stored 0/1 or 0/127), taken a slice at a time: a native mask is mostly
    untouched zero pages (``postprocess.sparse_zeros``), and a whole-stack comparison would fill them."""
    nz, ny, nx = shape
    w = z_weights(volume.shape[0], nz)
    out = np.empty(shape, np.float32)
    interp = cv2.INTER_AREA if ny <= volume.shape[1] and nx <= volume.shape[2] else cv2.INTER_LINEAR

    def part(ks: range) -> None:
        acc = np.empty(volume.shape[1:], np.float32)
        term = np.empty_like(acc)
        for k in ks:
            js = np.flatnonzero(w[k])
            np.multiply(volume[js[0]] > 0 if nonzero else volume[js[0]], w[k, js[0]], out=acc)
            for j in js[1:]:
                np.multiply(volume[j] > 0 if nonzero else volume[j], w[k, j], out=term)
                acc += term
            out[k] = cv2.resize(acc, (nx, ny), interpolation=interp)

    each(part, spans(nz, 8))  # output slices in a few runs, one thread each
    return out


def model_slices(native_z: int, scale_inplane: float, z_mode: str) -> int:
    """Number of model slices for ``native_z`` native ones (``scale_inplane``: native voxels per model voxel)."""
    if z_mode == "native":
        return native_z
    if z_mode != "isotropic":
        raise ValueError(f"unknown z_mode {z_mode!r}")
    return max(1, int(round(native_z / scale_inplane)))


def model_grid(shape_zyx: tuple[int, int, int], spec: Spec, spacing_zyx=None) -> tuple[tuple[int, int, int], float]:
    """The uncropped model grid ``(mz, my, mx)`` of a native scan, and the in-plane scale (native voxels per
    model voxel along y; z follows it for isotropic models).

    In millimetres (``spec.spacing_mm``): each axis's physical extent over the model spacing, so only the
    voxel size and the field of view decide the grid; by pixel count for old cards (``spacing_mm`` None).
    """
    z, ny, nx = shape_zyx
    if spec.spacing_mm is None:
        scale = max(ny, nx) / spec.size
        return (model_slices(z, scale, spec.z_mode), spec.size, spec.size), scale
    if spacing_zyx is None:
        raise ValueError("model space is in millimetres: the scan's voxel size (spacing_zyx) is needed")
    sz, sy, sx = (float(v) for v in spacing_zyx)
    if not all(math.isfinite(v) and v > 0 for v in (sz, sy, sx)):
        raise ValueError(f"voxel size {spacing_zyx} is not a positive number of millimetres")
    my = max(1, int(round(ny * sy / spec.spacing_mm)))
    mx = max(1, int(round(nx * sx / spec.spacing_mm)))
    mz = z if spec.z_mode == "native" else model_slices(z, spec.spacing_mm / sz, spec.z_mode)
    return (mz, my, mx), spec.spacing_mm / sy


# --------------------------------------------------------------------------- crop and orientation


def hand_box(volume: np.ndarray, multiple: int, margin: int) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of the hand in a model-space volume, sizes rounded up to ``multiple``.

    The hand is what is brighter than air on the mean over slices (which averages the noise away),
    split by Otsu's threshold; small specks (rings, table edge) are dropped. The box may reach past
    the image (the caller pads with air). Falls back to the whole image when nothing stands out.
    """
    _, ny, nx = volume.shape
    mean = volume.mean(axis=0, dtype=np.float64)
    lo, hi = np.percentile(mean, [1, 99.5])
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return _round_box(0, ny, ny, multiple) + _round_box(0, nx, nx, multiple)
    u8 = np.clip((mean - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= 0.002 * ny * nx]
    if not keep:  # the whole image, its sizes rounded up like any box (the model takes multiples only)
        return _round_box(0, ny, ny, multiple) + _round_box(0, nx, nx, multiple)
    y0 = min(stats[i, cv2.CC_STAT_TOP] for i in keep)
    x0 = min(stats[i, cv2.CC_STAT_LEFT] for i in keep)
    y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in keep)
    x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in keep)
    return _round_box(y0 - margin, y1 + margin, ny, multiple) + _round_box(x0 - margin, x1 + margin, nx, multiple)


def _round_box(a: int, b: int, n: int, multiple: int) -> tuple[int, int]:
    a, b = max(a, 0), min(b, n)
    length = min(max(multiple, int(math.ceil((b - a) / multiple)) * multiple), int(math.ceil(n / multiple)) * multiple)
    centre = (a + b) // 2
    a = centre - length // 2
    a = min(max(a, 0), max(n - length, 0)) if length <= n else (n - length) // 2
    return a, a + length


def in_view(geometry: Geometry) -> tuple[int, int, int, int]:
    """The (y0, y1, x0, x1) of a cropped model grid that holds the scan: the crop box may reach past the
    image, and ``crop_pad`` fills that part with air."""
    y0, y1, x0, x1 = geometry.crop
    _, my, mx = geometry.model_shape
    return max(0, -y0), min(y1, my) - y0, max(0, -x0), min(x1, mx) - x0


def crop_pad(volume: np.ndarray, box: tuple[int, int, int, int], fill: float) -> np.ndarray:
    """volume[:, y0:y1, x0:x1], padded with ``fill`` where the box reaches past the image."""
    y0, y1, x0, x1 = box
    z, ny, nx = volume.shape
    if y0 >= 0 and x0 >= 0 and y1 <= ny and x1 <= nx:
        return np.ascontiguousarray(volume[:, y0:y1, x0:x1])
    out = np.full((z, y1 - y0, x1 - x0), fill, dtype=volume.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)
    out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = volume[:, sy0:sy1, sx0:sx1]
    return out


def uncrop(volume: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int], fill=0) -> np.ndarray:
    """Inverse of ``crop_pad``: place a cropped (z, h, w) volume back into (z, *shape)."""
    y0, y1, x0, x1 = box
    ny, nx = shape
    out = np.full((volume.shape[0], ny, nx), fill, dtype=volume.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)
    out[:, sy0:sy1, sx0:sx1] = volume[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out


def orient(volume: np.ndarray, flip_x: bool) -> np.ndarray:
    """Mirror along x (a view; its own inverse)."""
    return volume[..., ::-1] if flip_x else volume


def flip_for(side: str) -> bool:
    """Model space is a right hand: left hands are mirrored; ``auto`` keeps the scan as it is."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, not {side!r}")
    return side == "left"


# --------------------------------------------------------------------------- the whole step


def to_model(data: np.ndarray, spec: Spec, side: str = "auto", spacing_zyx=None) -> tuple[np.ndarray, Geometry]:
    """Native (z, y, x) scan (int16, memory map welcome) -> normalised float32 model-space volume.

    ``spacing_zyx``: the native voxel size in mm (the header's element size, reversed); needed unless the
    model's card predates millimetre model space.
    """
    if data.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {data.shape}")
    z, ny, nx = data.shape
    (mz, my, mx), _ = model_grid(data.shape, spec, spacing_zyx)
    flip = flip_for(side)
    if spec.crop and ny % my == 0 and nx % mx == 0:
        return _to_model_in_box(data, spec, (mz, my, mx), flip)
    vol = orient(_resample_zyx(data, (mz, my, mx)), flip)
    vol -= np.float32(spec.mean)
    vol *= np.float32(1.0 / spec.std)
    if spec.crop:
        box = hand_box(vol, spec.multiple, spec.margin)
    elif (my, mx) == (spec.size, spec.size):
        box = (0, spec.size, 0, spec.size)
    else:  # a fixed size x size input (the 2D net), centred on the hand; air padding where the grid is smaller
        y0, y1, x0, x1 = hand_box(vol, 1, 0)
        a, b = (y0 + y1 - spec.size) // 2, (x0 + x1 - spec.size) // 2
        box = (a, a + spec.size, b, b + spec.size)
    air = float(np.percentile(vol[:, ::8, ::8], 1)) if vol.size else 0.0
    out = crop_pad(vol, box, air)
    return out, Geometry((z, ny, nx), (mz, my, mx), flip, box)


def centre_sum(data: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """The sum over all slices of the centre voxel of every ``fy`` x ``fx`` block (float32), on the cores:
    the parts are summed exactly (float64), so the result is the same on any number of threads."""
    centres = data[:, fy // 2 :: fy, fx // 2 :: fx]
    runs = spans(centres.shape[0], 16)
    parts = np.empty((len(runs), *centres.shape[1:]), np.float64)
    each(lambda i: centres[runs[i].start : runs[i].stop].sum(axis=0, dtype=np.float64, out=parts[i]), range(len(runs)))
    return parts.sum(axis=0).astype(np.float32)


def _to_model_in_box(
    data: np.ndarray, spec: Spec, grid: tuple[int, int, int], flip: bool
) -> tuple[np.ndarray, Geometry]:
    """``to_model`` when each model voxel is a whole block of native voxels in-plane (an integer factor:
    an XtremeCT I scan at 82 µm on the 0.246 mm grid): the hand's box is found on the mean over every
    slice of each block's centre voxel, and only the native voxels under it are resampled. Each model
    voxel still averages exactly its own native block, so the box's voxels are those of the whole grid
    cropped; the work and the memory follow the hand, not the field of view (a quarter of it on a typical
    scan)."""
    z, ny, nx = data.shape
    mz, my, mx = grid
    fy, fx = ny // my, nx // mx
    mean = centre_sum(data, fy, fx)  # every slice: no bone missed
    mean *= np.float32(1.0 / (z * spec.std))
    mean -= np.float32(spec.mean / spec.std)
    box = hand_box(orient(mean[None], flip), spec.multiple, spec.margin)
    step = max(1, z // PREVIEW_SLICES)  # air, where the box reaches past the grid: as the whole grid's
    preview = resize_slices(data[::step], (my, mx), out=np.empty((len(range(0, z, step)), my, mx), np.float32))
    air = (float(np.percentile(preview[:, ::8, ::8], 1)) - spec.mean) / spec.std
    y0, y1, x0, x1 = box
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, my), max(x0, 0), min(x1, mx)  # the box inside the grid
    ux0, ux1 = (mx - cx1, mx - cx0) if flip else (cx0, cx1)  # ... in scan orientation
    inside = data[:, cy0 * fy : cy1 * fy, ux0 * fx : ux1 * fx]
    vol = orient(_resample_zyx(inside, (mz, cy1 - cy0, ux1 - ux0)), flip)
    vol -= np.float32(spec.mean)
    vol *= np.float32(1.0 / spec.std)
    if (cy0, cy1, cx0, cx1) != (y0, y1, x0, x1):  # the box reaches past the grid: air there
        out = np.full((mz, y1 - y0, x1 - x0), air, dtype=np.float32)
        out[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = vol
        vol = out
    return np.ascontiguousarray(vol), Geometry((z, ny, nx), (mz, my, mx), flip, box)


def to_model_mask(mask: np.ndarray, geometry: Geometry, box=None) -> np.ndarray:
    """A native 0/non-zero mask -> fraction of each model voxel inside it (float32, training targets).

    ``box`` (z0, z1, y0, y1, x0, x1), where given, bounds the mask: at an integer in-plane factor only the
    model voxels over it are resampled (the same fractions; the rest are 0), not the whole scan."""
    mz, my, mx = geometry.model_shape
    _, ny, nx = mask.shape
    if box is not None and ny % my == 0 and nx % mx == 0:
        fy, fx = ny // my, nx // mx
        _, _, y0, y1, x0, x1 = (int(v) for v in box)
        a, b, c, d = y0 // fy, -(-y1 // fy), x0 // fx, -(-x1 // fx)  # the model voxels over the box
        frac = np.zeros((mz, my, mx), np.float32)
        frac[:, a:b, c:d] = _resample_zyx(np.asarray(mask[:, a * fy : b * fy, c * fx : d * fx]) > 0, (mz, b - a, d - c))
    else:
        frac = _resample_zyx(np.asarray(mask), (mz, my, mx), nonzero=True)  # no whole-stack temporary
    return crop_pad(orient(frac, geometry.flip_x), geometry.crop, 0.0)


def from_model(volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A cropped model-space volume back to the uncropped model grid in scan orientation."""
    full = uncrop(volume, geometry.crop, geometry.model_shape[1:])
    return np.ascontiguousarray(orient(full, geometry.flip_x))


def native_box(model_box: tuple[int, int, int, int, int, int], geometry: Geometry) -> tuple[slice, slice, slice]:
    """A (z0, z1, y0, y1, x0, x1) box on the uncropped model grid -> native slices, one model voxel wider."""
    out = []
    for (a, b), s, n in zip(
        ((model_box[0], model_box[1]), (model_box[2], model_box[3]), (model_box[4], model_box[5])),
        geometry.scale,
        geometry.native_shape,
        strict=True,
    ):
        out.append(slice(max(0, int(math.floor((a - 1) * s))), min(n, int(math.ceil((b + 1) * s)))))
    return out[0], out[1], out[2]


def sample_at_native(
    volume: np.ndarray,
    geometry: Geometry,
    box: tuple[slice, slice, slice],
    origin: tuple[int, int, int] = (0, 0, 0),
    grid: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Linear interpolation of an uncropped model-grid volume (scan orientation) at the native voxel
    centres inside ``box``; returns float32 of the box's shape.

    ``volume`` may be a block of the grid (``grid``: the whole grid's shape) starting at ``origin``: the grid
    is 0 outside it. Separable: first z (to the native slices of the box), then each slice in-plane with
    ``cv2.remap``.
    """
    sz, sy, sx = geometry.scale
    mz, my, mx = grid if grid is not None else volume.shape
    zc = (np.arange(box[0].start, box[0].stop) + 0.5) / sz - 0.5
    z0 = np.clip(np.floor(zc).astype(np.int64), 0, mz - 1)
    z1 = np.clip(z0 + 1, 0, mz - 1)
    wz = np.clip(zc - z0, 0.0, 1.0).astype(np.float32)
    ys = ((np.arange(box[1].start, box[1].stop) + 0.5) / sy - 0.5).astype(np.float32)
    xs = ((np.arange(box[2].start, box[2].stop) + 0.5) / sx - 0.5).astype(np.float32)
    # Only the model voxels the box needs take part.
    ya, yb = max(int(np.floor(ys.min())) - 1, 0), min(int(np.ceil(ys.max())) + 2, my)
    xa, xb = max(int(np.floor(xs.min())) - 1, 0), min(int(np.ceil(xs.max())) + 2, mx)
    map_x, map_y = np.meshgrid(xs - xa, ys - ya)
    out = np.empty((len(zc), len(ys), len(xs)), dtype=np.float32)
    for k in range(len(zc)):
        a, b = _plane(volume, origin, z0[k], ya, yb, xa, xb), _plane(volume, origin, z1[k], ya, yb, xa, xb)
        plane = a * (1 - wz[k]) + b * wz[k] if wz[k] > 0 else a
        out[k] = cv2.remap(
            np.ascontiguousarray(plane, dtype=np.float32),
            map_x,
            map_y,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out


def _plane(volume: np.ndarray, origin, z: int, ya: int, yb: int, xa: int, xb: int) -> np.ndarray:
    """Rows ``ya:yb`` and columns ``xa:xb`` of grid slice ``z`` from a block of the grid at ``origin`` (0 where
    the block does not reach; a view where it holds them all)."""
    oz, oy, ox = origin
    bz, by, bx = volume.shape
    z, ya, yb, xa, xb = z - oz, ya - oy, yb - oy, xa - ox, xb - ox
    if 0 <= z < bz and ya >= 0 and xa >= 0 and yb <= by and xb <= bx:
        return volume[z, ya:yb, xa:xb]
    out = np.zeros((yb - ya, xb - xa), dtype=volume.dtype)
    y0, y1, x0, x1 = max(ya, 0), min(yb, by), max(xa, 0), min(xb, bx)
    if 0 <= z < bz and y0 < y1 and x0 < x1:
        out[y0 - ya : y1 - ya, x0 - xa : x1 - xa] = volume[z, y0:y1, x0:x1]
    return out
