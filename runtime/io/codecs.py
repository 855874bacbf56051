"""The compressed AIM data types, encoded and decoded with vectorised numpy (never a per-voxel loop).

* binary run-length (``0x00150001``): the two values, then one count byte per run (see
  ``decode_binary_rle``); written by vbmd-rt for masks;
* char run-length (``0x00080002``) and bit-packed (``0x00060001``): read only.

A stream that holds fewer voxels than the dimensions need is an :class:`AimFormatError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vbmd_rt.runtime.errors import AimFormatError


def _fail(path, problem, fix="check that this is an AIM/ISQ file written by Scanco software and is complete"):
    raise AimFormatError(path, problem, fix)


def decode_binary_rle(stream: np.ndarray, n: int, path=None, exact: bool = True) -> np.ndarray:
    """Decode binary run-length data (after the length prefix): 2 value bytes, then counts.

    ``exact``: the runs must add up to exactly ``n`` voxels (else :class:`AimFormatError`); without it,
    runs past ``n`` are ignored as padding.

    A count byte ``c < 255`` is ``c`` voxels of the current value, then the value toggles; 255
    is 254 voxels with no toggle (so long runs need no escape).
    """
    if stream.size < 2:
        _fail(path, "binary run-length data too short")
    values = stream[:2].view(np.int8)
    counts = stream[2:].astype(np.int64)
    toggles = counts != 255
    lengths = np.where(toggles, counts, 254)
    # Value index of each run: toggles before it, mod 2.
    which = np.concatenate(([0], np.cumsum(toggles)[:-1])) & 1 if counts.size else counts
    ends = np.cumsum(lengths)
    if counts.size == 0 or ends[-1] < n:
        _fail(path, f"truncated: binary run-length data holds {0 if not counts.size else int(ends[-1])} of {n} voxels")
    if exact and int(ends[-1]) != n:
        # Scanco's streams hold exactly the voxels of the dimensions: more means the dimensions lie.
        _fail(path, f"header is inconsistent: binary run-length data holds {int(ends[-1])} voxels, the dimensions {n}")
    last = int(np.searchsorted(ends, n))  # runs past n are padding
    lengths = lengths[: last + 1].copy()
    lengths[-1] -= int(ends[last]) - n
    return np.repeat(values[which[: last + 1]], lengths)


def _binary_transitions(flat: np.ndarray, values: tuple[int, int], chunk: int = 1 << 24) -> np.ndarray:
    """Indices where ``flat`` switches between the two values, checked chunk by chunk.

    Works in chunks so a 1.5 GB mask needs only a few tens of MB of temporaries.
    """
    v0, v1 = values
    out, prev = [], None
    for s in range(0, flat.size, chunk):
        part = flat[s : s + chunk]
        is1 = part == v1
        n1 = int(np.count_nonzero(is1))
        if n1 + int(np.count_nonzero(part == v0)) != part.size:
            raise ValueError(f"binary AIMs hold two values; data has others than {values}")
        if prev is not None and bool(is1[0]) != prev:
            out.append(np.array([s], dtype=np.int64))
        out.append(np.flatnonzero(is1[1:] != is1[:-1]).astype(np.int64) + (s + 1))
        prev = bool(is1[-1])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def encode_binary_rle(flat: np.ndarray, values: tuple[int, int]) -> bytes:
    """Inverse of :func:`decode_binary_rle` (without the length prefix)."""
    flat = np.asarray(flat).ravel()
    change = _binary_transitions(flat, values)
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    if flat.size and flat[0] == values[1]:
        lengths = np.concatenate(([0], lengths))  # the stream starts with values[0]
    return encode_run_lengths(lengths, values)


@dataclass(frozen=True)
class BinaryRle:
    """A binary mask already run-length encoded (``write_aim`` writes it as is): ``shape`` is (z, y, x),
    ``stream`` the data after the length prefix (the two values, then the counts)."""

    shape: tuple[int, int, int]
    stream: bytes


def encode_run_lengths(lengths: np.ndarray, values: tuple[int, int]) -> bytes:
    """Runs of alternating value (``values[0]`` first; a run may be 0 long) -> binary run-length stream."""
    v0, v1 = values
    lengths = np.asarray(lengths, dtype=np.int64)
    # A run of L: (L-1)//254 bytes of 255 (254 each, no toggle), then the rest (1..254).
    full = np.where(lengths > 0, (lengths - 1) // 254, 0)
    rest = lengths - 254 * full
    nbytes = full + 1
    out = np.full(int(nbytes.sum()), 255, dtype=np.uint8)
    out[np.cumsum(nbytes) - 1] = rest
    return bytes([v0 & 0xFF, v1 & 0xFF]) + out.tobytes()


def _decode_char_rle(stream: np.ndarray, n: int, path) -> np.ndarray:
    pairs = stream[: stream.size // 2 * 2].reshape(-1, 2)
    counts = pairs[:, 0].astype(np.int64)
    ends = np.cumsum(counts)
    if counts.size == 0 or ends[-1] < n:
        _fail(path, "truncated: run-length data holds fewer voxels than the dimensions")
    if int(ends[-1]) != n:
        _fail(path, f"header is inconsistent: run-length data holds {int(ends[-1])} voxels, the dimensions {n}")
    last = int(np.searchsorted(ends, n))
    counts = counts[: last + 1].copy()
    counts[-1] -= int(ends[last]) - n
    return np.repeat(pairs[: last + 1, 1].view(np.int8), counts)


def _decode_bitpacked(stream: np.ndarray, dim, path) -> np.ndarray:
    # Each byte holds a 2x2x2 block: bit (x&1) | (y&1)<<1 | (z&1)<<2; the last byte is the
    # object value (0 meaning 127).
    nx, ny, nz = dim
    hx, hy, hz = (nx + 1) // 2, (ny + 1) // 2, (nz + 1) // 2
    need = hx * hy * hz + 1
    if stream.size < need:
        _fail(path, "truncated: bit-packed data shorter than its dimensions need")
    value = int(stream[need - 1]) or 127
    blocks = stream[: need - 1].reshape(hz, hy, hx)
    bits = np.unpackbits(blocks[..., None], axis=-1, bitorder="little")  # (hz, hy, hx, 8)
    cube = bits.reshape(hz, hy, hx, 2, 2, 2)  # (.., zbit, ybit, xbit)
    full = cube.transpose(0, 3, 1, 4, 2, 5).reshape(2 * hz, 2 * hy, 2 * hx)[:nz, :ny, :nx]
    return (full.astype(np.int8) * np.int8(value if value < 128 else value - 256)).astype(np.int8)
