"""Headers that lie: each check on its own, then the fuzz corpus of 620 mutated real samples.

The corpus (``bench/fuzz_aim.py``, seed 15) is read in full here; a handful of accepted cases also go
through ``run``. The whole campaign with ``run`` on every accepted case is ``-m slow`` (and the script).
"""

import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REFERENCE, SAMPLES, cli_here, needs_samples
from vbmd_rt.bench import fuzz_aim
from vbmd_rt.runtime.errors import AimFormatError, VbmdInputError
from vbmd_rt.runtime.io import aim

GREY = "aimiopy_CALLUS_1237.AIM"  # v020 int16, 77 KB, with trailing bytes after the data (as Scanco writes)
V030 = "aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM"  # v030 binary run-length
BINARY = "aimiopy_TRAB_1240_SEG.AIM"  # v020 binary run-length


def _mutant(tmp_path, name, edit) -> Path:
    raw = bytearray((SAMPLES / name).read_bytes())
    edit(raw)
    p = tmp_path / name
    p.write_bytes(bytes(raw))
    return p


def _i32(raw, pos, delta=0, value=None):
    old = struct.unpack("<i", raw[pos : pos + 4])[0]
    raw[pos : pos + 4] = struct.pack("<i", old + delta if value is None else value)


@needs_samples
def test_log_length_one_byte_longer_is_refused_not_shifted(tmp_path):
    p = _mutant(tmp_path, GREY, lambda r: _i32(r, 8, +1))
    with pytest.raises(AimFormatError, match="processing log length"):
        aim.read_aim(p)


@needs_samples
def test_log_length_one_byte_shorter_is_refused(tmp_path):
    p = _mutant(tmp_path, GREY, lambda r: _i32(r, 8, -1))
    with pytest.raises(AimFormatError, match="processing log length"):
        aim.read_header(p)


@needs_samples
@pytest.mark.parametrize("delta", [-1, +1])
def test_data_length_off_by_one_is_refused(tmp_path, delta):
    p = _mutant(tmp_path, GREY, lambda r: _i32(r, 12, delta))
    with pytest.raises(AimFormatError, match="declares .* bytes of data, but dimensions"):
        aim.read_header(p)


@needs_samples
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_slice_or_row_fewer_in_the_dimensions_is_refused(tmp_path, axis):
    p = _mutant(tmp_path, GREY, lambda r: _i32(r, 56 + 4 * axis, -1))
    with pytest.raises(AimFormatError, match="inconsistent"):
        aim.read_header(p)


@needs_samples
@pytest.mark.parametrize("name", [BINARY, V030])
@pytest.mark.parametrize("delta", [-1, +1])
def test_compressed_data_must_decode_to_exactly_the_dimensions(tmp_path, name, delta):
    z_at = 64 if name == BINARY else 112
    fmt = "<i" if name == BINARY else "<q"

    def edit(r):
        w = struct.calcsize(fmt)
        r[z_at : z_at + w] = struct.pack(fmt, struct.unpack(fmt, r[z_at : z_at + w])[0] + delta)

    p = _mutant(tmp_path, name, edit)
    aim.read_header(p)  # the header alone cannot tell: the stream's voxel count does
    with pytest.raises(AimFormatError, match="voxels"):
        aim.read_aim(p)


@needs_samples
def test_compressed_length_prefix_must_match_the_declared_length(tmp_path):
    start = REFERENCE[BINARY]["byte_offset"]
    p = _mutant(tmp_path, BINARY, lambda r: _i32(r, start, -4))
    with pytest.raises(AimFormatError, match="own length"):
        aim.read_aim(p)


def _vax(v):
    b = struct.pack("<f", v * 4)
    return b[2:4] + b[0:2]


@needs_samples
@pytest.mark.parametrize("value", [82.0, 0.000082, 8.2])
def test_element_size_outside_real_scanners_names_the_field(tmp_path, value):
    def edit(r):
        r[128:132] = _vax(value)

    p = _mutant(tmp_path, GREY, edit)
    with pytest.raises(AimFormatError, match="element size .* outside the range of real scanners"):
        aim.read_header(p)


@needs_samples
def test_v030_element_size_x1000_is_refused(tmp_path):
    def edit(r):
        r[240:248] = struct.pack("<q", struct.unpack("<q", r[240:248])[0] * 1000)

    with pytest.raises(AimFormatError, match="element size"):
        aim.read_header(_mutant(tmp_path, V030, edit))


@needs_samples
def test_absurd_slice_count_names_the_limit(tmp_path):
    p = _mutant(tmp_path, GREY, lambda r: _i32(r, 64, value=15_625_000))
    with pytest.raises(AimFormatError, match="absurd dimensions"):
        aim.read_header(p)


@needs_samples
def test_trailing_bytes_after_the_data_are_accepted_with_the_same_voxels(tmp_path):
    p = _mutant(tmp_path, GREY, lambda r: r.extend(b"\x01" * 4096))
    a, b = aim.read_aim(p), aim.read_aim(SAMPLES / GREY)
    assert a.header.dim == b.header.dim and np.array_equal(a.data, b.data)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("command", ["info", "run"])
def test_a_named_pipe_called_aim_is_refused_at_once(tmp_path, command):
    fifo = tmp_path / "f.AIM"
    os.mkfifo(fifo)
    with pytest.raises(AimFormatError, match="not a regular file"):
        aim.read_header(fifo)
    args = [command, fifo] + (["-o", tmp_path / "out", "--model", "classical"] if command == "run" else [])
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "vbmd_rt", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- the corpus


@pytest.fixture(scope="module")
def corpus():
    if not REFERENCE:
        pytest.skip(f"sample AIM files not found in {SAMPLES}")
    cases = fuzz_aim.corpus(620, seed=15)
    refs = {p.name: fuzz_aim.truth(p) for p in fuzz_aim.sample_files()}
    return cases, refs


def test_corpus_is_deterministic_and_large_enough(corpus):
    cases, _ = corpus
    assert len(cases) == 620 and len({c.kind for c in cases}) > 200
    again = fuzz_aim.corpus(620, seed=15)
    assert [c.data for c in again[:50]] == [c.data for c in cases[:50]]


def test_every_mutant_is_refused_or_read_as_the_file_really_is(corpus, tmp_path):
    cases, refs = corpus
    verdicts = {v: 0 for v in fuzz_aim.VERDICTS}
    lies = []
    tracemalloc.start()
    try:
        for c in cases:
            p = tmp_path / f"case{c.id}{Path(c.sample).suffix}"
            p.write_bytes(c.data)
            r = fuzz_aim.check(c, p, refs[c.sample])
            verdicts[r["verdict"]] += 1
            assert r["s"] < 5, (c.kind, r)
            if r["verdict"] in ("lie", "exception"):
                lies.append((c.sample, c.kind, r))
            p.unlink()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not lies, lies[:5]
    assert verdicts["refused"] > 300 and verdicts["accepted"] > 100, verdicts
    assert peak < 2**30


@needs_samples
def test_accepted_mutants_run_end_to_end_or_are_refused(corpus, tmp_path):
    """A handful of accepted greyscale cases through ``Predictor.run_to`` (classical model: fast)."""
    from vbmd_rt import Predictor
    from vbmd_rt.runtime.pipeline import RunOptions

    cases, refs = corpus
    picked = [
        c
        for c in cases
        if refs[c.sample]["type_code"] == aim.TYPE_INT16 and (SAMPLES / c.sample).stat().st_size < 2**20
    ][::23][:8]
    with Predictor("classical", device="cpu") as predictor:
        for c in picked:
            p = tmp_path / f"case{c.id}{Path(c.sample).suffix}"
            p.write_bytes(c.data)
            t0 = time.perf_counter()
            try:
                predictor.run_to(p, tmp_path / f"out{c.id}", RunOptions())
            except VbmdInputError:
                pass
            assert time.perf_counter() - t0 < 5, c.kind


@pytest.mark.slow
@needs_samples
def test_full_campaign_with_run_on_every_accepted_case():
    r = subprocess.run(
        [sys.executable, fuzz_aim.__file__, "--cases", "620", "--run", "1000"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert '"hang": 0' in r.stdout and '"exception": 0' in r.stdout


def test_cli_reports_a_lying_header_in_one_line(tmp_path):
    p = tmp_path / "liar.AIM"
    hdr = np.zeros(35, "<i4")
    hdr[5], hdr[9:12] = aim.TYPE_INT16, (4, 4, 4)
    el = struct.pack("<f", 0.082 * 4)
    body = bytearray(hdr.tobytes())
    body[108:120] = (el[2:4] + el[0:2]) * 3
    p.write_bytes(struct.pack("<5i", 20, 140, 1, 129, 0) + bytes(body) + b"\0" + b"\0" * 200)
    r = cli_here("info", p)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "inconsistent" in r.stderr


@needs_samples
def test_a_log_written_the_itk_way_without_its_nul_is_accepted(tmp_path):
    """ITK's writer counts no NUL and ends the log with a newline: the same voxels."""

    def edit(r):
        log_len = struct.unpack("<i", r[8:12])[0]
        assert r[160 + log_len - 1] == 0
        del r[160 + log_len - 1]
        _i32(r, 8, -1)

    p = _mutant(tmp_path, GREY, edit)
    a, b = aim.read_aim(p), aim.read_aim(SAMPLES / GREY)
    assert a.header.byte_offset == b.header.byte_offset - 1 and np.array_equal(a.data, b.data)
