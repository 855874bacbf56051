"""The compressed AIM encodings, against simple independent oracles."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbmd_rt.runtime.io import aim


def _oracle_binary_decode(stream: bytes, n: int) -> np.ndarray:
    # The format spelled out voxel by voxel: 255 = 254 voxels, no toggle.
    vals = [stream[0], stream[1]]
    out, cur = [], 0
    for c in stream[2:]:
        if c == 255:
            out += [vals[cur]] * 254
        else:
            out += [vals[cur]] * c
            cur ^= 1
        if len(out) >= n:
            break
    return np.array(out[:n], dtype=np.uint8).view(np.int8)


@pytest.mark.parametrize("runs", [[0], [1], [253], [254], [255], [508], [509], [1000, 3], [0, 254, 254, 1]])
def test_binary_rle_round_trip_at_run_length_edges(runs):
    flat = np.concatenate(
        [np.full(r, 127 if i % 2 else 0, np.int8) for i, r in enumerate(runs)] + [np.zeros(1, np.int8)]
    )
    enc = aim.encode_binary_rle(flat, (0, 127))
    dec = aim.decode_binary_rle(np.frombuffer(enc, np.uint8), flat.size)
    np.testing.assert_array_equal(dec, flat)
    np.testing.assert_array_equal(_oracle_binary_decode(enc, flat.size), flat)


def test_binary_rle_stream_starting_with_object_begins_with_empty_run():
    enc = aim.encode_binary_rle(np.array([127, 127, 0], np.int8), (0, 127))
    assert enc == bytes([0, 127, 0, 2, 1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=30), st.booleans())
def test_binary_rle_round_trip_random_runs(runs, start_object):
    flat = np.concatenate([np.full(r, 127 if (i % 2) ^ start_object else 0, np.int8) for i, r in enumerate(runs)])
    enc = aim.encode_binary_rle(flat, (0, 127))
    np.testing.assert_array_equal(aim.decode_binary_rle(np.frombuffer(enc, np.uint8), flat.size), flat)
    np.testing.assert_array_equal(_oracle_binary_decode(enc, flat.size), flat)


def test_binary_rle_refuses_a_third_value():
    with pytest.raises(ValueError):
        aim.encode_binary_rle(np.array([0, 1, 127], np.int8), (0, 127))


def test_char_rle_decodes_count_value_pairs():
    stream = np.array([3, 5, 2, 127, 1, 0], np.uint8)
    out = aim._decode_char_rle(stream, 6, None)
    np.testing.assert_array_equal(out, [5, 5, 5, 127, 127, 0])


def test_bitpacked_decodes_2x2x2_blocks_with_trailing_value():
    rng = np.random.default_rng(0)
    nz, ny, nx = 5, 3, 7
    truth = rng.integers(0, 2, size=(nz, ny, nx)).astype(np.int8)
    hx, hy, hz = 4, 2, 3
    packed = np.zeros((hz, hy, hx), np.uint8)
    for z in range(nz):  # the oracle: one bit per voxel, set one by one
        for y in range(ny):
            for x in range(nx):
                if truth[z, y, x]:
                    packed[z // 2, y // 2, x // 2] |= 1 << ((x & 1) | (y & 1) << 1 | (z & 1) << 2)
    stream = np.concatenate([packed.ravel(), [0]]).astype(np.uint8)  # value 0 means 127
    out = aim._decode_bitpacked(stream, (nx, ny, nz), None)
    np.testing.assert_array_equal(out, truth * 127)
