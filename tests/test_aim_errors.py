"""Bad files: one error type naming the file, no allocation before sizes are checked."""

import os
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbmd_rt.runtime.errors import AimFormatError
from vbmd_rt.runtime.io.aim import read_aim, write_aim

from .conftest import REFERENCE, SAMPLES, needs_samples


def _v020(dim, type_code=0x00020002, log=b"", data=b"", data_len=None):
    w = np.zeros(35, "<i4")
    w[0], w[5] = 16, type_code
    w[9:12] = dim
    hdr = bytearray(w.tobytes())
    hdr[108:120] = b"\x00\x00\x00\x00" * 3
    el = np.float32(0.082 * 4).tobytes()
    hdr[108:120] = (el[2:4] + el[0:2]) * 3
    pre = struct.pack("<5i", 20, 140, len(log), len(data) if data_len is None else data_len, 0)
    return pre + bytes(hdr) + log + data


def _expect(path, match):
    with pytest.raises(AimFormatError, match=match) as e:
        read_aim(path)
    assert str(path) in str(e.value)
    return e.value


def test_not_an_aim(tmp_path):
    p = tmp_path / "notes.aim"
    p.write_bytes(b"This is a text file, not a scan at all.\n" * 4)
    _expect(p, "not an AIM")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.aim"
    p.write_bytes(b"")
    _expect(p, "empty")


def test_directory(tmp_path):
    _expect(tmp_path, "folder")


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.aim", "not found")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.aim"
    p.write_bytes(_v020((2, 2, 2), data=b"\0" * 16))
    p.chmod(0)
    _expect(p, "cannot open")


def test_huge_claim_in_a_small_file_fails_at_once_without_allocating(tmp_path):
    p = tmp_path / "liar.aim"
    p.write_bytes(_v020((10_000, 10_000, 10_000), data=b"\0" * 600))
    assert p.stat().st_size < 1024
    tracemalloc.start()
    try:
        _expect(p, "truncated|absurd")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_compressed_claim_beyond_what_the_bytes_can_hold(tmp_path):
    p = tmp_path / "liar_bin.aim"
    p.write_bytes(_v020((100_000, 100_000, 100), type_code=0x00150001, data=b"\x0a\0\0\0\0\x7f\xff\xff\xff\xff"))
    _expect(p, "truncated|absurd")


@pytest.mark.parametrize("dim", [(0, 5, 5), (-3, 5, 5), (5, 5, -1)])
def test_non_positive_dimensions(tmp_path, dim):
    p = tmp_path / "neg.aim"
    p.write_bytes(_v020(dim, data=b"\0" * 64))
    _expect(p, "non-positive")


def test_unknown_type_code(tmp_path):
    p = tmp_path / "type.aim"
    p.write_bytes(_v020((2, 2, 2), type_code=0x00990001, data=b"\0" * 16))
    _expect(p, "unsupported AIM type")


def test_data_length_past_the_end(tmp_path):
    p = tmp_path / "short.aim"
    p.write_bytes(_v020((2, 2, 2), data=b"\0" * 16, data_len=4096))
    _expect(p, "truncated")


@needs_samples
@pytest.mark.parametrize(
    "name",
    [
        "bonelabdata_aluminum.aim",
        "bonelabdata_XT2_RADIUS_82_SEG.AIM",
        "aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM",
        "ormir_xct_test_isq.ISQ",
    ],
)
@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.5, 0.9])
def test_truncated_sample_files(tmp_path, name, fraction):
    raw = (SAMPLES / name).read_bytes()
    p = tmp_path / name
    p.write_bytes(raw[: int(len(raw) * fraction)])
    _expect(p, "truncated|too short|not an AIM")


def test_truncated_binary_stream_is_reported(tmp_path):
    m = np.zeros((4, 4, 4), np.int8)
    m[1:3, 1:3, 1:3] = 127
    good = tmp_path / "good.aim"
    write_aim(good, m, type="binary-rle")
    raw = bytearray(good.read_bytes())
    # Cut the run counts short but keep the header consistent with the shorter file.
    log_len, data_len = struct.unpack("<2i", raw[8:16])
    cut = raw[: 160 + log_len + 6 + 1]
    cut[12:16] = struct.pack("<i", len(cut) - 160 - log_len)
    cut[160 + log_len : 164 + log_len] = struct.pack("<i", len(cut) - 160 - log_len)
    bad = tmp_path / "bad.aim"
    bad.write_bytes(bytes(cut))
    _expect(bad, "truncated")


FUZZ_SAMPLES = [
    "bonelabdata_aluminum.aim",
    "bonelabdata_XT2_RADIUS_82_SEG.AIM",
    "bonelabdata_test25a.aim",
    "aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM",
    "aimiopy_TRAB_1240_SEG.AIM",
    "ormir_xct_test_isq.ISQ",
    "aimiopy_CALLUS_1237.AIM",
]


@needs_samples
@settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    name=st.sampled_from([n for n in FUZZ_SAMPLES if n in REFERENCE]),
    edits=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 4000)),
    wide=st.lists(
        st.tuples(st.integers(0, 700), st.sampled_from([-1, 0, 1, 2**31 - 1, -(2**31), 2**20, 255])), max_size=3
    ),
)
def test_mutated_headers_give_an_array_or_the_format_error(tmp_path_factory, name, edits, cut, wide):
    raw = bytearray((SAMPLES / name).read_bytes())
    for pos, val in edits:
        if pos < len(raw):
            raw[pos] = val
    for pos, val in wide:
        pos -= pos % 4
        if pos + 4 <= len(raw):
            raw[pos : pos + 4] = struct.pack("<i", val)
    if cut is not None:
        raw = raw[: min(len(raw), cut + 200)] if cut % 2 else raw + bytes(cut)
    p = tmp_path_factory.mktemp("fuzz") / name
    p.write_bytes(bytes(raw))
    size = len(raw)
    tracemalloc.start()
    try:
        try:
            scan = read_aim(p, mmap=False)
        except AimFormatError:
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    a = np.asarray(scan.data)
    assert a.ndim == 3 and a.size == int(np.prod(scan.header.dim))
    # Decoded voxels never exceed what the bytes could encode (254 voxels per RLE byte);
    # the decoder's temporaries stay within a small multiple of that.
    assert a.nbytes <= 254 * size
    assert peak <= 40 * 254 * size + 50_000_000
