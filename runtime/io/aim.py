"""Scanco AIM (v020, v030) and ISQ files: read (memory-mapped) and write.

Layout facts (see shared/docs/domain.md):

* v020: pre-header of 5 little-endian int32 ``[20, 140, log_len, data_len, assoc_len]``, a
  140-byte struct of 35 int32 (version, two pointers, id, ref, type, then the triples pos,
  dim, off, supdim, suppos, subdim, testoff, and el_size as VAX F-floats, then 5 reserved),
  the ASCII processing log, then the data.
* v030: the 16-byte string ``AIMDATA_V030   \\0``, a pre-header of 5 int64 ``[40, 224, log_len,
  data_len, assoc_len]``, a 224-byte struct (version, id, ref, type as int32, then int64
  triples pos, dim, off, supdim, suppos, subdim, testoff, and el_size in nanometres, then two
  reserved int64), the log, then the data.
* Data is x fastest, so as a numpy array it is (z, y, x).

Compressed types decode with vectorised numpy (never a per-voxel loop). Every size in a
header is checked against the file before anything is allocated: a 1 KB file claiming 10^12
voxels fails at once with :class:`AimFormatError`.

One module of about 540 lines on purpose: the three header layouts (v020, v030, ISQ) build one
``AimHeader`` and share its checks, and the writer must emit exactly what the reader accepts; the
compressed codecs live apart in ``codecs``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from vbmd_rt.runtime.errors import AimFormatError
from vbmd_rt.runtime.io import proclog
from vbmd_rt.runtime.io.atomic import atomic_write
from vbmd_rt.runtime.io.calibration import Calibration, calibration_from_log
from vbmd_rt.runtime.io.codecs import (
    BinaryRle,
    _decode_bitpacked,
    _decode_char_rle,
    decode_binary_rle,
    encode_binary_rle,
)

__all__ = [
    "AimHeader",
    "Scan",
    "read_aim",
    "read_isq",
    "read_header",
    "read_whole",
    "write_aim",
    "encode_binary_rle",
    "decode_binary_rle",
    "TYPE_INT16",
    "TYPE_CHAR",
    "TYPE_BINARY_RLE",
    "TYPE_CHAR_RLE",
    "TYPE_BITPACKED",
]

TYPE_INT16 = 0x00020002
TYPE_CHAR = 0x00010001
TYPE_BINARY_RLE = 0x00150001
TYPE_CHAR_RLE = 0x00080002
TYPE_BITPACKED = 0x00060001
TYPE_NAMES = {
    TYPE_INT16: "int16",
    TYPE_CHAR: "char",
    TYPE_BINARY_RLE: "binary-rle",
    TYPE_CHAR_RLE: "char-rle",
    TYPE_BITPACKED: "bit-packed",
}
_BY_NAME = {v: k for k, v in TYPE_NAMES.items()}
_DTYPES: dict[int, np.dtype] = {
    TYPE_INT16: np.dtype("<i2"),
    TYPE_CHAR: np.dtype("i1"),
    TYPE_BINARY_RLE: np.dtype("i1"),
    TYPE_CHAR_RLE: np.dtype("i1"),
    TYPE_BITPACKED: np.dtype("i1"),
}
V030_MAGIC = b"AIMDATA_V030   \0"
ISQ_MAGIC = b"CTDATA-HEADER_V1"
MAX_DIM = 1 << 20  # no scanner writes a side longer than a million voxels
# What real scanners write (Scanco XtremeCT I/II, vivaCT, µCT 35-100 and their IPL derivatives, downsampled
# up to a few mm): a header outside these ranges lies, and is refused with the field named.
MIN_VOXEL_MM = 0.0005  # 0.5 µm, finer than any Scanco µCT
MAX_VOXEL_MM = 2.0  # a heavily downsampled AIM; 8.2 or 82 mm (82 µm x 100, x 1000) is no voxel
MAX_VOXEL_RATIO = 100.0  # anisotropy: slices 100 x thicker than the pixels are no scan
MAX_SIDE_XY = 16384  # pixels a slice side (XtremeCT I: 1536, XtremeCT II: 2304)
MAX_SLICES = 100_000
MAX_POSITION = 1 << 20  # |position| and offset in voxels
_ZERO3 = (0, 0, 0)
XTREMECT_VOXEL_MM = 0.082  # isotropic voxel of Scanco's XtremeCT (I) hand scans: a header's default


@dataclass
class AimHeader:
    """Everything in an AIM/ISQ header, with sizes in voxels and element size in mm.

    Triples are in (x, y, z) order as in the file; ``shape`` gives the numpy (z, y, x) shape.
    """

    version: int  # 2 (AIM v020), 3 (AIM v030) or 4 (ISQ, read only)
    type_code: int
    dim: tuple[int, int, int]
    position: tuple[int, int, int] = _ZERO3
    offset: tuple[int, int, int] = _ZERO3
    element_size_mm: tuple[float, float, float] = (XTREMECT_VOXEL_MM, XTREMECT_VOXEL_MM, XTREMECT_VOXEL_MM)
    processing_log: str = ""
    supdim: tuple[int, int, int] = _ZERO3
    suppos: tuple[int, int, int] = _ZERO3
    subdim: tuple[int, int, int] = _ZERO3
    testoff: tuple[int, int, int] = _ZERO3
    id: int = 0
    ref: int = 0
    byte_offset: int = 0  # where the voxel data starts in the file
    data_length: int = 0  # bytes of voxel data as the header declares them
    isq: dict = field(default_factory=dict)  # raw ISQ fields (read only)
    isq_calibration: Calibration | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.dim[2], self.dim[1], self.dim[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """The voxel size in mm in the numpy order (z, y, x): the one order of the runtime past the header
        (the file, NIfTI, the result JSON's ``element_size_mm`` keep the header's x, y, z)."""
        x, y, z = (float(v) for v in self.element_size_mm)
        return (z, y, x)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_code, hex(self.type_code))

    @property
    def dtype(self) -> np.dtype:
        return _DTYPES[self.type_code]

    @property
    def is_mask(self) -> bool:
        """True for char and binary types (segmentations), False for greyscale."""
        return self.type_code != TYPE_INT16

    @property
    def log(self) -> dict[str, object]:
        """The processing log parsed into ``{key: value}`` (contains patient fields!)."""
        return proclog.parse_log(self.processing_log)

    @property
    def calibration(self) -> Calibration | None:
        if self.isq_calibration is not None:
            return self.isq_calibration
        return calibration_from_log(self.log)

    def describe(self) -> dict:
        """Header facts safe to print: no patient fields of the processing log."""
        cal = self.calibration
        return {
            "format": "ISQ" if self.version == 4 else f"AIM v0{self.version}0",
            "type": self.type_name,
            "type_code": f"0x{self.type_code:08x}",
            "dtype": str(self.dtype),
            "dimensions_xyz": list(self.dim),
            "shape_zyx": list(self.shape),
            "position_xyz": list(self.position),
            "offset_xyz": list(self.offset),
            "element_size_mm": [float(v) for v in self.element_size_mm],
            "physical_size_mm": [float(d) * float(e) for d, e in zip(self.dim, self.element_size_mm, strict=True)],
            "calibration": None if cal is None else cal.to_dict(),
            "scanner": proclog.public_fields(self.log),
        }


@dataclass
class Scan:
    """Voxels in (z, y, x) order plus the header they came with."""

    data: np.ndarray
    header: AimHeader
    path: str | None = None
    fingerprint: dict | None = None  # read_whole: the file's identity and a hash of every byte read
    # read_whole(hash_behind=True): what finishes that hash (``settle``); ``fingerprint`` is None till then
    pending: Callable[[], dict] | None = field(default=None, repr=False, compare=False)

    def settle(self) -> dict | None:
        """The fingerprint, once the hash that ``read_whole(hash_behind=True)`` left running is done (it waits
        for it; the voxels are read-only until then)."""
        if self.pending is not None:
            self.fingerprint, self.pending = self.pending(), None
        return self.fingerprint

    @property
    def calibration(self) -> Calibration | None:
        return self.header.calibration

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """The voxel size in mm, (z, y, x) as ``data``."""
        return self.header.spacing_zyx


# --------------------------------------------------------------------------- reading


def _fail(path, problem, fix="check that this is an AIM/ISQ file written by Scanco software and is complete"):
    raise AimFormatError(path, problem, fix)


def _ftriple(values) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _triple(values) -> tuple[int, int, int]:
    return (int(values[0]), int(values[1]), int(values[2]))


def _vax_to_float(words: np.ndarray) -> tuple[float, float, float]:
    """VAX F-floats (as little-endian int32) -> Python floats (of their float32 value)."""
    raw = np.asarray(words, dtype="<i4").tobytes()
    swapped = b"".join(raw[i + 2 : i + 4] + raw[i : i + 2] for i in range(0, len(raw), 4))
    vals = np.frombuffer(swapped, dtype="<f4") / np.float32(4.0)
    return tuple(float(v) for v in vals)  # type: ignore[return-value]


def _float_to_vax(values) -> bytes:
    raw = (np.asarray(values, dtype=np.float32) * np.float32(4.0)).astype("<f4").tobytes()
    return b"".join(raw[i + 2 : i + 4] + raw[i : i + 2] for i in range(0, len(raw), 4))


def _check_dims(path, dim, type_code, avail: int) -> int:
    if any(d <= 0 for d in dim):
        _fail(path, f"header gives non-positive dimensions {list(dim)}")
    if any(d > MAX_DIM for d in dim) or dim[0] > MAX_SIDE_XY or dim[1] > MAX_SIDE_XY or dim[2] > MAX_SLICES:
        _fail(
            path,
            f"header gives absurd dimensions {list(dim)} (x y z; real scanners write at most "
            f"{MAX_SIDE_XY} x {MAX_SIDE_XY} x {MAX_SLICES})",
        )
    n = dim[0] * dim[1] * dim[2]
    if type_code in (TYPE_INT16, TYPE_CHAR):
        need = n * _DTYPES[type_code].itemsize
        if need > avail:
            _fail(path, f"truncated: dimensions {list(dim)} need {need} bytes of data but the file holds {avail}")
    else:
        # The most a compressed stream can expand to; beyond that the header lies.
        most = {TYPE_BINARY_RLE: 254 * avail, TYPE_CHAR_RLE: 255 * (avail // 2), TYPE_BITPACKED: 8 * avail}[type_code]
        if n > most:
            _fail(path, f"truncated: {avail} bytes of compressed data cannot hold {list(dim)} voxels")
    return n


def _check_data_length(path, dim, type_code, data_len: int, start: int, assoc_len: int, size: int) -> None:
    """The declared data length against the dimensions and type, and the blocks against the file.

    For int16 and char data the length is exactly what the dimensions need (one byte more in the log length,
    or one slice fewer in the dimensions, is caught here instead of decoding shifted or missing voxels);
    compressed streams are checked against the dimensions when decoded.
    """
    if start + data_len > size:
        _fail(path, f"truncated: header declares {data_len} bytes of data, the file holds {max(0, size - start)}")
    if start + data_len + assoc_len > size:
        _fail(path, f"truncated: header declares {assoc_len} bytes of associated data past the end of the file")
    if type_code in (TYPE_INT16, TYPE_CHAR):
        need = dim[0] * dim[1] * dim[2] * _DTYPES[type_code].itemsize
        if data_len != need:
            _fail(
                path,
                f"header is inconsistent: it declares {data_len} bytes of data, but dimensions {list(dim)} "
                f"of {TYPE_NAMES[type_code]} need {need}",
            )
    elif type_code == TYPE_BITPACKED:
        need = ((dim[0] + 1) // 2) * ((dim[1] + 1) // 2) * ((dim[2] + 1) // 2) + 1
        if data_len != need:
            _fail(
                path,
                f"header is inconsistent: it declares {data_len} bytes of bit-packed data, "
                f"dimensions {list(dim)} need {need}",
            )


def _check_log(path, raw: bytes, next_byte: bytes = b"") -> None:
    """The declared log length must end where the log does: one byte more takes the first data byte into
    the log, one byte less leaves the log's last byte in front of the data; both shift every voxel.

    Scanco (IPL, AimIO) ends the log with exactly one NUL, counted in its length; ITK's writer counts no NUL
    and ends the text with a newline. Anything else (a NUL inside, binary bytes at the end, or a newline-ended
    log directly followed by a NUL: a Scanco log declared one byte short) is refused.
    """
    if not raw:
        return
    first_nul = raw.find(b"\0")
    if first_nul == len(raw) - 1 and (len(raw) == 1 or raw[-2] != 0):
        return  # Scanco: text, then one NUL
    if first_nul < 0 and raw.endswith(b"\n") and next_byte != b"\0":
        return  # ITK: text ending in a newline, no NUL
    _fail(path, f"header is inconsistent: the processing log length ({len(raw)} bytes) does not end at the log's end")


def _check_geometry(path, el, position=_ZERO3, offset=_ZERO3) -> None:
    """Element size, position and offset in the range of real scanners, naming the field that is not."""
    if not all(np.isfinite(el)) or any(e <= 0 for e in el):
        _fail(path, f"header gives an invalid element size {[float(e) for e in el]} mm")
    if any(e < MIN_VOXEL_MM or e > MAX_VOXEL_MM for e in el):
        _fail(
            path,
            f"header gives an element size of {' x '.join(f'{e:.6g}' for e in el)} mm, outside the range of "
            f"real scanners ({MIN_VOXEL_MM}-{MAX_VOXEL_MM} mm)",
        )
    if max(el) / min(el) > MAX_VOXEL_RATIO:
        _fail(path, f"header gives an element size of {' x '.join(f'{e:.6g}' for e in el)} mm: too anisotropic")
    if any(abs(v) > MAX_POSITION for v in position):
        _fail(path, f"header gives an absurd position {list(position)}")
    if any(v < 0 or v > MAX_POSITION for v in offset):
        _fail(path, f"header gives an absurd offset {list(offset)}")


def _read_exact(f, n: int, path) -> bytes:
    b = f.read(n)
    if len(b) != n:
        _fail(path, "truncated header")
    return b


def read_header(path: str | os.PathLike) -> AimHeader:
    """Read and validate the header of an AIM (v020/v030) or ISQ file, without the data."""
    path = os.fspath(path)
    f = _open_regular(path)
    with f:
        return _header_of(f, path, os.fstat(f.fileno()).st_size)


def _header_of(f, path, size: int) -> AimHeader:
    """The header of the open file ``f`` (of ``size`` bytes), read from its start."""
    f.seek(0)
    head = f.read(16)
    if len(head) < 16:
        _fail(path, "empty or too short to be an AIM file" if size else "empty file")
    if head == ISQ_MAGIC:
        return _isq_header(f, path, size)
    if head == V030_MAGIC:
        return _v030_header(f, path, size)
    pre = struct.unpack("<4i", head)
    if pre[0] == 20 and pre[1] == 140:
        return _v020_header(f, path, size)
    _fail(path, "not an AIM or ISQ file (unknown header)")
    raise AssertionError("unreachable")


def _open_regular(path: str):
    """Open ``path`` for reading, refusing anything but a regular file *before* it can block.

    A named pipe called ``f.AIM`` would hang a plain ``open``; a device would be read forever. The file is
    opened non-blocking and checked with ``fstat`` on the open descriptor, so it cannot be swapped in between.
    """
    if os.path.isdir(path):
        _fail(path, "is a folder, not an AIM file", "give the path of a .AIM file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise AimFormatError(path, "file not found", "check the path") from None
    except OSError as e:
        raise AimFormatError(path, f"cannot open ({e.strerror})", "check the file's permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _fail(path, "is not a regular file (a pipe, device or socket)", "give the path of a complete AIM/ISQ file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _type_checked(path, code: int) -> int:
    if code not in TYPE_NAMES:
        _fail(path, f"unsupported AIM type code 0x{code & 0xFFFFFFFF:08x}", "vbmd-rt reads int16, char and binary AIMs")
    return code


def _log_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _v020_header(f, path, size) -> AimHeader:
    f.seek(0)
    pre = struct.unpack("<5i", _read_exact(f, 20, path))
    _, hlen, log_len, data_len, assoc_len = pre
    if log_len < 0 or data_len < 0 or assoc_len < 0:
        _fail(path, "header gives negative lengths")
    start = 20 + hlen + log_len
    if start > size:
        _fail(path, "truncated: the processing log runs past the end of the file")
    w = np.frombuffer(_read_exact(f, 140, path), dtype="<i4")
    raw_log = _read_exact(f, log_len, path)
    _check_log(path, raw_log, f.read(1))
    log = _log_text(raw_log)
    code = _type_checked(path, int(w[5]) & 0xFFFFFFFF)
    dim = _triple(w[9:12])
    _check_dims(path, dim, code, size - start if code in (TYPE_INT16, TYPE_CHAR) else min(data_len, size - start))
    _check_data_length(path, dim, code, data_len, start, assoc_len, size)
    el = _vax_to_float(w[27:30])
    position, offset = _triple(w[6:9]), _triple(w[12:15])
    _check_geometry(path, el, position, offset)
    return AimHeader(
        version=2,
        type_code=code,
        dim=dim,
        position=position,
        offset=offset,
        element_size_mm=el,
        processing_log=log,
        supdim=_triple(w[15:18]),
        suppos=_triple(w[18:21]),
        subdim=_triple(w[21:24]),
        testoff=_triple(w[24:27]),
        id=int(w[3]),
        ref=int(w[4]),
        byte_offset=start,
        data_length=data_len,
    )


def _v030_header(f, path, size) -> AimHeader:
    pre = struct.unpack("<5q", _read_exact(f, 40, path))
    plen, hlen, log_len, data_len, assoc_len = pre
    if plen != 40 or hlen != 224:
        _fail(path, "not an AIM v030 file (bad pre-header)")
    if log_len < 0 or data_len < 0 or assoc_len < 0:
        _fail(path, "header gives negative lengths")
    start = 16 + 40 + 224 + log_len
    if start > size:
        _fail(path, "truncated: the processing log runs past the end of the file")
    raw = _read_exact(f, 224, path)
    ints = np.frombuffer(raw[:16], dtype="<i4")
    q = np.frombuffer(raw[16:208], dtype="<i8")
    raw_log = _read_exact(f, log_len, path)
    _check_log(path, raw_log, f.read(1))
    log = _log_text(raw_log)
    code = _type_checked(path, int(ints[3]) & 0xFFFFFFFF)
    if any(abs(int(v)) > 1 << 40 for v in q[:21]):
        _fail(path, "header gives absurd dimensions or positions")
    dim = _triple(q[3:6])
    _check_dims(path, dim, code, size - start if code in (TYPE_INT16, TYPE_CHAR) else min(data_len, size - start))
    _check_data_length(path, dim, code, data_len, start, assoc_len, size)
    el_nm = q[21:24]
    if any(v <= 0 for v in el_nm):
        _fail(path, f"header gives an invalid element size {[int(v) for v in el_nm]} nm")
    el = _ftriple(float(np.float32(v / 1e6)) for v in el_nm)
    position, offset = _triple(q[0:3]), _triple(q[6:9])
    _check_geometry(path, el, position, offset)
    return AimHeader(
        version=3,
        type_code=code,
        dim=dim,
        position=position,
        offset=offset,
        element_size_mm=el,
        processing_log=log,
        supdim=_triple(q[9:12]),
        suppos=_triple(q[12:15]),
        subdim=_triple(q[15:18]),
        testoff=_triple(q[18:21]),
        id=int(ints[1]),
        ref=int(ints[2]),
        byte_offset=start,
        data_length=data_len,
    )


_ISQ_FIELDS = (
    "data_type",
    "nr_of_bytes",
    "nr_of_blocks",
    "patient_index",
    "scanner_id",
    "creation_date_lo",
    "creation_date_hi",
    "dimx_p",
    "dimy_p",
    "dimz_p",
    "dimx_um",
    "dimy_um",
    "dimz_um",
    "slice_thickness_um",
    "slice_increment_um",
    "slice_1_pos_um",
    "min_data_value",
    "max_data_value",
    "mu_scaling",
    "nr_of_samples",
    "nr_of_projections",
    "scandist_um",
    "scanner_type",
    "sampletime_us",
    "index_measurement",
    "site",
    "reference_line_um",
    "recon_alg",
)


def _scanco_double(b: bytes) -> float:
    # VAX G-float style: 16-bit words swapped within each 32-bit half, value * 4 in IEEE.
    hi = b[2:4] + b[0:2]
    lo = b[6:8] + b[4:6]
    return struct.unpack("<d", lo + hi)[0] / 4.0


def _isq_header(f, path, size) -> AimHeader:
    f.seek(0)
    raw = _read_exact(f, 512, path)
    ints = struct.unpack("<28i", raw[16:128])
    fields = dict(zip(_ISQ_FIELDS, ints, strict=True))
    energy, intensity = struct.unpack("<2i", raw[168:176])
    fields.update(energy_v=energy, intensity_ua=intensity)
    (blocks,) = struct.unpack("<i", raw[508:512])
    if blocks < 0:
        _fail(path, "header gives a negative data offset")
    start = (blocks + 1) * 512
    if fields["data_type"] != 3:
        _fail(path, f"unsupported ISQ data type {fields['data_type']}", "vbmd-rt reads int16 ISQ files")
    dim = (fields["dimx_p"], fields["dimy_p"], fields["dimz_p"])
    if start > size:
        _fail(path, "truncated: the header runs past the end of the file")
    _check_dims(path, dim, TYPE_INT16, size - start)
    need = dim[0] * dim[1] * dim[2] * 2
    # The data ends where the file does (at most padded to a whole 512-byte block). A file with a block or
    # more past the data has a header block count that does not match it (a padded count reads every voxel
    # 256 places late): which bytes are the voxels is unknown, so it is refused.
    extra = size - start - need
    if extra >= 512:
        _fail(
            path,
            f"header is inconsistent: its data offset ({blocks} header blocks) and dimensions {list(dim)} leave "
            f"{extra} bytes of the file unaccounted for",
        )
    # Extended header blocks begin with Scanco's "MultiHeader" directory. Blocks that do not are no header: a
    # padded block count that would start the voxels a block late.
    if blocks > 0:
        f.seek(512)
        if not f.read(16).startswith(b"MultiHeader"):
            _fail(
                path,
                f"header is inconsistent: its data offset counts {blocks} extended header blocks, "
                "but they hold no extended header (every voxel would be read late)",
            )
    # nr_of_bytes is a 32-bit field (it wraps past 2 GiB); nr_of_blocks counts whole 512-byte blocks. Scanco
    # always fills both; a header with neither does not say how much data it has.
    if not fields["nr_of_bytes"] and not fields["nr_of_blocks"] and need & 0xFFFFFFFF:
        _fail(path, "header gives no data size (nr_of_bytes and nr_of_blocks are both 0)")
    if fields["nr_of_bytes"] and fields["nr_of_bytes"] & 0xFFFFFFFF != need & 0xFFFFFFFF:
        _fail(
            path,
            f"header is inconsistent: it declares {fields['nr_of_bytes']} bytes of data, "
            f"but dimensions {list(dim)} of int16 need {need}",
        )
    if fields["nr_of_blocks"] and fields["nr_of_blocks"] not in (need // 512, -(-need // 512)):
        _fail(path, f"header is inconsistent: {fields['nr_of_blocks']} data blocks for {need} bytes of data")
    um = (fields["dimx_um"], fields["dimy_um"], fields["dimz_um"])
    if any(u <= 0 for u in um):
        _fail(path, f"header gives invalid physical size {list(um)} um")
    el = _ftriple(float(np.float32(u / d / 1000.0)) for u, d in zip(um, dim, strict=True))
    _check_geometry(path, el)
    cal = None
    if start > 512:
        f.seek(512)
        ext = f.read(start - 512)
        at = ext.find(b"Calibration")
        base = at - 8
        if at >= 0 and base + 1208 <= len(ext):
            slope = _scanco_double(ext[base + 1176 : base + 1184])
            icpt = _scanco_double(ext[base + 1184 : base + 1192])
            mu_w = _scanco_double(ext[base + 1200 : base + 1208])
            mus = float(fields["mu_scaling"])
            if np.isfinite([slope, icpt]).all() and slope != 0 and mus > 0:
                # The extended header's rescale slope is per stored unit.
                cal = Calibration(mus, slope * mus, icpt, mu_w if mu_w > 0 else None)
    return AimHeader(
        version=4,
        type_code=TYPE_INT16,
        dim=dim,
        element_size_mm=el,
        byte_offset=start,
        data_length=dim[0] * dim[1] * dim[2] * 2,
        isq=fields,
        isq_calibration=cal,
    )


def _read_data(path, hdr: AimHeader, mmap: bool) -> np.ndarray:
    code = hdr.type_code
    n = hdr.dim[0] * hdr.dim[1] * hdr.dim[2]
    if code in (TYPE_INT16, TYPE_CHAR):
        dtype = _DTYPES[code]
        if mmap:
            return np.memmap(path, dtype=dtype, mode="r", offset=hdr.byte_offset, shape=hdr.shape)
        with open(path, "rb") as f:
            f.seek(hdr.byte_offset)
            arr = np.fromfile(f, dtype=dtype, count=n)
        if arr.size != n:
            _changed(path)
        return arr.reshape(hdr.shape)
    with open(path, "rb") as f:
        f.seek(hdr.byte_offset)
        raw = np.frombuffer(f.read(hdr.data_length), dtype=np.uint8)
    return _decode_compressed(path, hdr, raw)


def _decode_compressed(path, hdr: AimHeader, raw: np.ndarray) -> np.ndarray:
    code = hdr.type_code
    n = hdr.dim[0] * hdr.dim[1] * hdr.dim[2]
    if code == TYPE_BITPACKED:
        return _decode_bitpacked(raw, hdr.dim, path).reshape(hdr.shape)
    isz = 8 if hdr.version == 3 else 4
    if raw.size < isz:
        _fail(path, "truncated: compressed data missing")
    # The stream starts with its own length (prefix included), which equals the pre-header's data length
    # in every file Scanco writes; very old files store it big-endian. Where neither reading agrees, one
    # of the two lengths lies, and which voxels the file holds is unknown.
    declared = None
    for order in ("<", ">"):
        if int(raw[:isz].view(f"{order}i{isz}")[0]) == raw.size:
            declared = raw.size
            break
    if declared is None:
        _fail(
            path,
            f"header is inconsistent: the compressed data's own length does not match the declared {raw.size} bytes",
        )
    stream = raw[isz:declared]
    if code == TYPE_BINARY_RLE:
        return decode_binary_rle(stream, n, path).reshape(hdr.shape)
    return _decode_char_rle(stream, n, path).reshape(hdr.shape)


# One read of the whole file, hashed in the same pass: the scan's identity for resume, watch and cohorts.
# sha256: with the CPU's SHA extensions about twice as fast as blake2b here (1.47 GB: 2.0 s against 4.3 s
# on a loaded 2-core EPYC); results, manifests and summaries of earlier versions record blake2b, still read.
FINGERPRINT_KEY = "sha256"
FINGERPRINT_METHOD = "sha256 of every byte of the file"
CONTENT_KEYS = ("sha256", "blake2b")  # the content hashes a fingerprint or a manifest may hold, newest first
READ_CHUNK = 16 << 20


def content_hasher(key: str = FINGERPRINT_KEY):
    """The hash of a file's whole content (``fingerprint['sha256']``; ``key='blake2b'``: the hash records
    written before the fingerprint became sha256 hold)."""
    if key == "sha256":
        return hashlib.sha256()
    if key == "blake2b":
        return hashlib.blake2b(digest_size=32)
    raise ValueError(f"no content hash {key!r}")


def content_hasher_of(data: bytes) -> str:
    """``content_hasher``'s hex digest of ``data``."""
    h = content_hasher()
    h.update(data)
    return h.hexdigest()


class _HashBehind:
    """A hash fed from a second thread, so that hashing a chunk overlaps reading the next (hashlib and the
    file read both release the GIL): the read costs about the time of the hash alone, not their sum.
    ``update`` queues a buffer, which must not change afterwards; ``hexdigest`` waits for the queue."""

    def __init__(self, h):
        import queue

        self._h, self._error, self._abort, self._finished = h, None, False, False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="vbmd-rt-hash", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (buf := self._queue.get()) is not None:
            if self._error is None and not self._abort:
                try:
                    self._h.update(buf)
                except BaseException as e:  # noqa: BLE001 - raised again by hexdigest
                    self._error = e

    def update(self, buf) -> None:
        self._queue.put(buf)

    def finish(self) -> None:
        """No more buffers: the thread ends once the queued ones are hashed (without waiting for it)."""
        if not self._finished:
            self._finished = True
            self._queue.put(None)

    def close(self, abort: bool = False) -> None:
        """Stop the thread once every queued buffer is hashed (``abort``: the rest is dropped, the read
        failed); safe to call twice."""
        self._abort = self._abort or abort
        self.finish()
        self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()


def _changed(path) -> None:
    raise AimFormatError(
        path,
        "changed while it was being read (truncated, overwritten or still being copied)",
        "run it again once the file is complete and no longer written to",
    )


def _read_hashed(f, view: memoryview, h, path, populate=None) -> None:
    """Fill ``view`` from ``f`` in chunks, hashing each; a short read means the file shrank under us.
    ``populate(start, stop)``, where given, maps in the pages of a byte range before it is read."""
    at, n = 0, len(view)
    while at < n:
        stop = min(n, at + READ_CHUNK)
        if populate is not None:
            populate(at, stop)
        got = f.readinto(view[at:stop])
        if not got:
            _changed(path)
        h.update(view[at : at + got])
        at += got


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; Python 3.11's mmap lacks the name


def _voxel_buffer(shape: tuple[int, ...], dtype):
    """An uninitialised array for a scan's voxels, and ``populate(start, stop)`` (or None) that maps in the
    pages of a byte range of it in one go.

    A large one is an anonymous memory map: page by page, a fresh 1.5 GB buffer faults 360,000 times as the
    read fills it, and on a virtual machine that had handed the memory back to its host that costs more
    than the read itself (1.1 s instead of 1.6-2.7 s measured here, where ``np.empty`` asks for huge pages,
    which the kernel may compact memory to find). Its pages are mapped in chunk by chunk just before each
    chunk is read (``MADV_POPULATE_WRITE``), so that the kernel's zeroing of the next chunk overlaps the
    hashing of the last one in the second thread; where the kernel does not know that advice, all pages
    are mapped in at once (``MAP_POPULATE``)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    flags = getattr(mmap, "MAP_POPULATE", None)
    if size < 1 << 26 or flags is None:
        return np.empty(shape, dtype=dtype), None
    try:
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(MADV_POPULATE_WRITE, 0, mmap.PAGESIZE)  # the kernel knows the advice
    except (OSError, ValueError):
        try:
            buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
        except (OSError, ValueError):  # no room for it at once: let the kernel find the pages as they are read
            return np.empty(shape, dtype=dtype), None
        return np.frombuffer(buf, dtype=dtype).reshape(shape), None

    def populate(start: int, stop: int) -> None:
        a = start - start % mmap.PAGESIZE
        try:
            buf.madvise(MADV_POPULATE_WRITE, a, stop - a)
        except OSError:  # no memory for it now: the read faults the pages in one by one (or fails as it would)
            pass

    return np.frombuffer(buf, dtype=dtype).reshape(shape), populate


def read_whole(path: str | os.PathLike, check=None, hash_behind: bool = False) -> Scan:
    """Read an AIM/ISQ file into memory from one open descriptor, hashing every byte in the same pass.

    ``check(header)`` runs after the header is read and before any voxel data is read or decoded (refuse a
    mask, a voxel size or a memory need there). No memory map: a file truncated or overwritten while it is
    read gives :class:`AimFormatError` (exit 2), never a SIGBUS. The file must be the same (size, mtime,
    inode) at the end of the read as when it was opened. The returned scan's ``fingerprint`` holds ``size``,
    ``mtime_ns``, ``inode`` and ``sha256`` (of the whole file, ``FINGERPRINT_KEY``). The hash runs a chunk
    behind the read in a second thread; with ``hash_behind`` this returns before it ends, so that the
    caller's work overlaps it: ``Scan.settle()`` then waits for it and sets ``fingerprint``, and the voxels
    are read-only until then.
    """
    path = os.fspath(path)
    f = _open_regular(path)
    with f:
        st0 = os.fstat(f.fileno())
        hdr = _header_of(f, path, st0.st_size)
        if check is not None:
            check(hdr)
        h = _HashBehind(content_hasher())  # hashed in a second thread while the next chunk is read
        read = False
        try:
            f.seek(0)
            head = f.read(hdr.byte_offset)
            if len(head) != hdr.byte_offset:
                _changed(path)
            h.update(head)
            raw = None
            if hdr.type_code in (TYPE_INT16, TYPE_CHAR):
                data, populate = _voxel_buffer(hdr.shape, _DTYPES[hdr.type_code])
                _read_hashed(f, memoryview(data.reshape(-1)).cast("B"), h, path, populate)
            else:
                raw = np.empty(hdr.data_length, dtype=np.uint8)
                _read_hashed(f, memoryview(raw), h, path)  # type: ignore[arg-type]
            total = hdr.byte_offset + hdr.data_length
            while chunk := f.read(READ_CHUNK):  # associated data and padding: part of the file's identity
                h.update(chunk)
                total += len(chunk)
            st1 = os.fstat(f.fileno())
            read = True
        except OSError as e:
            raise AimFormatError(path, f"cannot read ({e.strerror})", "check the file") from None
        finally:
            if read:  # the queued chunks are hashed in the thread (Scan.settle waits for them)
                h.finish()
            else:  # the read failed: no thread left behind
                h.close(abort=True)
    try:
        st2 = os.stat(path)
    except OSError:
        st2 = None
    same = (st0.st_size, st0.st_mtime_ns)
    if (
        total != st0.st_size
        or (st1.st_size, st1.st_mtime_ns) != same
        or st2 is None
        or (st2.st_size, st2.st_mtime_ns, st2.st_ino, st2.st_dev) != (*same, st0.st_ino, st0.st_dev)
    ):
        h.close(abort=True)
        _changed(path)
    if raw is not None:
        data = _decode_compressed(path, hdr, raw)  # from ``raw``, which the hash holds until it is done
    hashed = data if raw is None else raw
    hashed.flags.writeable = False  # the hash thread may still read it

    def fingerprint() -> dict:
        digest = h.hexdigest()
        hashed.flags.writeable = True
        return {
            "size": st0.st_size,
            "mtime_ns": st0.st_mtime_ns,
            "inode": st0.st_ino,
            FINGERPRINT_KEY: digest,
            "method": FINGERPRINT_METHOD,
        }

    scan = Scan(data=data, header=hdr, path=path, pending=fingerprint)
    if not hash_behind:
        scan.settle()
    return scan


def read_aim(path: str | os.PathLike, mmap: bool = True) -> Scan:
    """Read an AIM (v020 or v030) or ISQ file.

    Returns a :class:`Scan` whose ``data`` is (z, y, x): int16 for greyscale (a read-only
    memory map unless ``mmap=False``, which reads it into memory once: :func:`read_whole`), int8 for
    char and binary masks (decoded in memory). Raises :class:`AimFormatError` naming the file for
    anything that is not a complete, supported AIM/ISQ file.
    """
    if not mmap:
        return read_whole(path)
    hdr = read_header(path)
    try:
        data = _read_data(os.fspath(path), hdr, mmap)
    except OSError as e:
        raise AimFormatError(path, f"cannot read ({e.strerror})", "check the file") from None
    return Scan(data=data, header=hdr, path=os.fspath(path))


def read_isq(path: str | os.PathLike, mmap: bool = True) -> Scan:
    """Read an ISQ file (same as :func:`read_aim`, which detects the format)."""
    scan = read_aim(path, mmap=mmap)
    if scan.header.version != 4:
        _fail(path, "not an ISQ file", "use read_aim for AIM files")
    return scan


# --------------------------------------------------------------------------- writing


def _stored(data: np.ndarray, type_code: int) -> tuple[np.ndarray, np.ndarray | bytes]:
    """Array as written (dtype checked) and its data bytes (compressed where the type says)."""
    if type_code == TYPE_INT16:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < -32768 or data.max() > 32767)):
            raise ValueError("int16 AIM needs integer data within int16")
        arr = np.ascontiguousarray(data, dtype="<i2")
        return arr, arr  # written straight from the array's buffer: no 1.5 GB bytes copy
    if data.dtype == np.bool_:
        data = data.astype(np.int8) * np.int8(127)
    if data.dtype.kind not in "iub" or (data.size and (data.min() < -128 or data.max() > 127)):
        raise ValueError("char/binary AIM needs integer data within -128..127")
    arr = np.ascontiguousarray(data, dtype=np.int8)
    if type_code == TYPE_CHAR:
        return arr, arr
    if type_code == TYPE_BINARY_RLE:
        # Background is 0 where 0 occurs; the object value is the other one (127 if none).
        mn, mx = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        lo, hi = (0, mx) if mn == 0 else (mn, 0) if mx == 0 else (mn, mx)
        if lo == hi:
            hi = 127 if lo == 0 else hi
            lo = 0 if hi != 0 else lo
        return arr, encode_binary_rle(arr, (lo, hi))
    raise ValueError(f"writing type 0x{type_code:08x} is not supported (int16, char, binary-rle)")


def write_aim(
    path: str | os.PathLike,
    data: np.ndarray | BinaryRle,
    header: AimHeader | None = None,
    *,
    type: str | int | None = None,
    version: int | None = None,
    log_entry: str | None = None,
    values: tuple[str, str, float, float] | None = None,
    overwrite: bool = True,
) -> AimHeader:
    """Write ``data`` (z, y, x) as an AIM file, atomically; return the header written.

    ``data`` may also be a :class:`~vbmd_rt.runtime.io.codecs.BinaryRle` (written as binary run-length).
    ``header`` is the template: position, offset, element size, sup/sub fields and the
    processing log come from it (default: origin, 82 µm, empty log). ``version`` is 2 or 3
    (default: the template's; ISQ templates become v020). ``type`` is "int16", "char" or
    "binary-rle" (default: int16 for int16 data, char otherwise). ``log_entry`` appends one
    block to the log naming vbmd-rt and what was done. ``values`` (name, units, min, max) says the
    values are not the scan's densities (a mask's objects, a probability): IPL's parameter lines and an
    identity scaling after the entry (:func:`proclog.values_block`), so that no reader rescales them.
    """
    from vbmd_rt import __version__ as _rt_version

    if isinstance(data, BinaryRle):  # encoded by the caller (runtime.io.masks: from the bone's box alone)
        type = TYPE_BINARY_RLE
    else:
        data = np.asarray(data)
        if data.ndim != 3:
            raise ValueError("AIM data must be 3-D (z, y, x)")
    if type is None:
        code = TYPE_INT16 if data.dtype == np.int16 else TYPE_CHAR
    elif isinstance(type, str):
        code = _BY_NAME[type]
    else:
        code = int(type)
    tmpl = header or AimHeader(version=2, type_code=code, dim=(1, 1, 1))
    ver = version or (tmpl.version if tmpl.version in (2, 3) else 2)
    if ver not in (2, 3):
        raise ValueError("AIM version must be 2 (v020) or 3 (v030)")
    if code == TYPE_BINARY_RLE and any(tmpl.offset):
        # AimIO (and so IPL's readers) assert on compressed binaries with an offset border.
        raise ValueError("binary run-length AIMs cannot carry an offset; write type 'char' instead")
    if isinstance(data, BinaryRle):
        shape, payload = data.shape, data.stream
    else:
        arr, payload = _stored(data, code)
        shape = arr.shape
    dim = (shape[2], shape[1], shape[0])
    log = tmpl.processing_log
    if log_entry:
        log = proclog.append_entry(log, f"vbmd-rt {_rt_version}", log_entry)
    if values is not None:
        log = proclog.append_values(log, *values)
    log_b = log.encode("latin-1", errors="replace") + b"\0"
    if code == TYPE_BINARY_RLE:
        isz = 8 if ver == 3 else 4
        payload = struct.pack("<q" if ver == 3 else "<i", len(payload) + isz) + payload
    nbytes = payload.nbytes if isinstance(payload, np.ndarray) else len(payload)
    out = replace(
        tmpl, version=ver, type_code=code, dim=dim, processing_log=log, data_length=nbytes, isq={}, isq_calibration=None
    )
    if ver == 2:
        w = np.zeros(35, dtype="<i4")
        w[0] = 16
        w[3], w[4], w[5] = out.id, out.ref, np.uint32(code).view(np.int32)
        for i, t in enumerate((out.position, dim, out.offset, out.supdim, out.suppos, out.subdim, out.testoff)):
            w[6 + 3 * i : 9 + 3 * i] = t
        hdr_b = bytearray(w.tobytes())
        hdr_b[108:120] = _float_to_vax(out.element_size_mm)
        pre = struct.pack("<5i", 20, 140, len(log_b), nbytes, 0)
        head = pre + bytes(hdr_b)
    else:
        ints = np.array([24, out.id, out.ref, np.uint32(code).view(np.int32)], dtype="<i4")
        q = np.zeros(26, dtype="<i8")
        for i, t in enumerate((out.position, dim, out.offset, out.supdim, out.suppos, out.subdim, out.testoff)):
            q[3 * i : 3 * i + 3] = t
        q[21:24] = np.rint(np.asarray(out.element_size_mm, dtype=np.float64) * 1e6)
        pre = struct.pack("<5q", 40, 224, len(log_b), nbytes, 0)
        head = V030_MAGIC + pre + ints.tobytes() + q.tobytes()
    out.byte_offset = len(head) + len(log_b)
    with atomic_write(path, overwrite=overwrite) as f:
        f.write(head)
        f.write(log_b)
        if isinstance(payload, np.ndarray):
            if payload.size:
                f.write(memoryview(payload.reshape(-1)).cast("B"))  # type: ignore[arg-type]
        else:
            f.write(payload)
    return out
