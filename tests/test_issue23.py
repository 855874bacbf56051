"""Issue 23: never a signal, a stale pass or a mixed result. One test (or more) per row of the issue's table."""

import dataclasses
import io
import os
import struct
import tracemalloc
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from tests.conftest import SAMPLES, cli_here, needs_samples, tiny_scan
from vbmd_rt.runtime import pipeline
from vbmd_rt.runtime.errors import AimFormatError, CalibrationError, VbmdInputError
from vbmd_rt.runtime.io import aim, masks, proclog
from vbmd_rt.runtime.io.calibration import calibration_from_log, implausible
from vbmd_rt.runtime.io.codecs import BinaryRle

PATIENT = "Patient Name                  DOE^JANE_SECRET"


@pytest.fixture(scope="module")
def tiny(phantoms, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny23")
    return tiny_scan(phantoms / "PHANTOM_0000.AIM", d / "T.AIM", slices=20)


@pytest.fixture(scope="module")
def classical():
    from vbmd_rt import Predictor

    with Predictor("classical", device="cpu") as p:
        yield p


@pytest.fixture(scope="module")
def bundled():
    from vbmd_rt import Predictor

    with Predictor(None, device="cpu", threads=1) as p:
        yield p


def _variant(src: Path, dst: Path, data=None, log: str | None = None, **header) -> Path:
    """``src`` rewritten with other voxels, log or header fields."""
    s = aim.read_aim(src, mmap=False)
    hdr = dataclasses.replace(s.header, **header)
    if log is not None:
        hdr = dataclasses.replace(hdr, processing_log=log)
    aim.write_aim(dst, s.data if data is None else data, hdr)
    return dst


def _with_field(log: str, key: str, value) -> str:
    lines = [ln for ln in log.split("\n") if not ln.startswith(key)]
    return "\n".join(lines).rstrip("\n") + "\n" + proclog.field_line(key, value) + "\n"


# --------------------------------------------------------------------------- row 1: a file changing under us


def test_row1_truncated_while_read_is_refused_not_a_signal(tiny, tmp_path):
    p = tmp_path / "S.AIM"
    p.write_bytes(tiny.read_bytes())

    def truncate(header):  # after the header, before the voxels: as `truncate -s` during `run`
        os.truncate(p, header.byte_offset + 1000)

    with pytest.raises(AimFormatError, match="changed while it was being read"):
        pipeline.read_scan(p, check=truncate)


def test_row1_overwritten_while_read_is_refused(tiny, tmp_path):
    p = tmp_path / "S.AIM"
    p.write_bytes(tiny.read_bytes())

    def replace(header):  # another file moved over the name (same size): another inode
        other = tmp_path / "other.AIM"
        other.write_bytes(tiny.read_bytes())
        os.replace(other, p)

    with pytest.raises(AimFormatError, match="changed while it was being read"):
        pipeline.read_scan(p, check=replace)


def test_row1_run_on_a_file_truncated_during_the_read_exits_cleanly(tiny, tmp_path, classical, monkeypatch):
    p, out = tmp_path / "S.AIM", tmp_path / "out"
    p.write_bytes(tiny.read_bytes())
    real = aim._read_hashed

    def cut_then_read(f, view, h, path, *rest):
        os.truncate(p, os.path.getsize(p) // 2)
        return real(f, view, h, path, *rest)

    monkeypatch.setattr(aim, "_read_hashed", cut_then_read)
    with pytest.raises(VbmdInputError, match="changed while it was being read"):
        classical.run_to(p, out, pipeline.RunOptions())
    left = [q for q in out.rglob("*") if q.is_file() and q.suffix != ".lock"]
    assert left == []  # nothing staged or committed


def test_row1_scan_is_read_into_memory_with_its_fingerprint(tiny):
    s = pipeline.read_scan(tiny)
    assert not isinstance(s.data, np.memmap) and s.data.flags.owndata
    assert not s.data.flags.writeable  # the hash may still be reading the voxels in its thread
    fp = s.settle()
    assert s.data.flags.writeable and s.fingerprint is fp and s.settle() is fp  # waited for once
    from vbmd_rt.runtime.io import aim

    whole = aim.read_whole(tiny)  # the library's reader returns with the hash done, the voxels writable
    assert whole.fingerprint == fp and whole.data.flags.writeable
    assert fp["size"] == tiny.stat().st_size and len(fp["sha256"]) == 64
    import hashlib

    from vbmd_rt.runtime.io import outputs

    assert fp["sha256"] == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert outputs.same_input(outputs.fingerprint(tiny), fp)


def test_row1_a_large_scan_is_read_into_memory_mapped_in_chunk_by_chunk():
    """A scan of 64 MB or more goes into an anonymous memory map whose pages are mapped in a chunk at a time
    just before the chunk is read (not a map of the file: a file cut while it is read is still an error,
    never a signal); small ones into np.empty. The read of a large file gives every byte, hashed."""
    import hashlib
    import mmap

    from vbmd_rt.runtime.io import aim

    big, populate = aim._voxel_buffer((40, 1024, 1024), np.int16)
    assert big.shape == (40, 1024, 1024) and big.dtype == np.int16 and big.flags.writeable
    assert not isinstance(big, np.memmap) and isinstance(big.base.base.obj, mmap.mmap)  # reshaped frombuffer
    if populate is not None:  # the kernel knows MADV_POPULATE_WRITE: a range mapped in, unaligned ends too
        populate(4097, 5 << 20)
    big[-1, -1, -1] = 7
    assert big[-1, -1, -1] == 7
    small, none = aim._voxel_buffer((4, 8, 8), np.int16)
    assert small.flags.owndata and none is None

    raw = np.random.default_rng(0).integers(0, 256, size=(3 << 20) + 123, dtype=np.uint8).tobytes()
    view = np.empty(len(raw), np.uint8)
    calls = []

    class H:
        def __init__(self):
            self.h = hashlib.sha256()

        def update(self, b):
            self.h.update(b)

    h = H()
    with io.BytesIO(raw) as f, mock.patch.object(aim, "READ_CHUNK", 1 << 20):
        aim._read_hashed(f, memoryview(view), h, "x.aim", lambda a, b: calls.append((a, b)))
    assert view.tobytes() == raw and h.h.hexdigest() == hashlib.sha256(raw).hexdigest()
    assert calls == [(0, 1 << 20), (1 << 20, 2 << 20), (2 << 20, 3 << 20), (3 << 20, len(raw))]


# --------------------------------------------------------------------------- row 8: headers that pass the checks


@pytest.mark.parametrize("el", [0.0005, 2.0, 0.01, 1.5])
def test_row8_voxel_size_outside_20um_to_1mm_is_exit_2(tiny, tmp_path, classical, el):
    p = _variant(tiny, tmp_path / "V.AIM", element_size_mm=(el, el, el))
    with pytest.raises(VbmdInputError, match="voxel size"):
        classical.run_to(p, tmp_path / "out", pipeline.RunOptions())
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_row8_tiny_density_slope_is_exit_2_not_zero_division(tiny, tmp_path, classical):
    log = _with_field(aim.read_header(tiny).processing_log, "Density: slope", "5e-324")
    p = _variant(tiny, tmp_path / "Z.AIM", log=log)
    with pytest.raises(CalibrationError, match="Density: slope"):
        classical.run_to(p, tmp_path / "out", pipeline.RunOptions())


@pytest.mark.parametrize("shape,el", [((2, 200, 200), 1.0), ((1, 8, 500), 0.082), ((1, 16, 5000), 0.082)])
def test_row8_geometry_the_model_cannot_take_is_exit_2(tiny, tmp_path, bundled, shape, el):
    p = _variant(tiny, tmp_path / "G.AIM", data=np.full(shape, 1000, np.int16), element_size_mm=(el, el, el))
    with pytest.raises(VbmdInputError):
        bundled.run_to(p, tmp_path / "out", pipeline.RunOptions())


@pytest.mark.parametrize("shape,el", [((1, 64, 64), 0.082), ((2, 200, 200), 0.082), ((5, 17, 17), 1.0)])
def test_row8_odd_geometries_run_or_are_refused_never_an_internal_error(tiny, tmp_path, bundled, classical, shape, el):
    """A uniform image (no hand found) used to reach the engine with a shape it was not built for."""
    data = np.full(shape, 1000, np.int16)
    p = _variant(tiny, tmp_path / "O.AIM", data=data, element_size_mm=(el, el, el))
    for predictor in (bundled, classical):
        try:
            r = predictor.run_to(p, tmp_path / "out", pipeline.RunOptions(overwrite=True))
            assert r["qc"]["status"] == "review"
        except VbmdInputError:
            pass


def test_row8_cli_voxel_size_gives_one_line_and_exit_2(tiny, tmp_path):
    p = _variant(tiny, tmp_path / "V.AIM", element_size_mm=(2.0, 2.0, 2.0))
    r = cli_here("run", p, "-o", tmp_path / "out", "--model", "classical", "-q")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "voxel size" in r.stderr


# --------------------------------------------------------------------------- row 14: absurd calibrations


@pytest.mark.parametrize(
    "key,value",
    [
        ("Density: intercept", "1e39"),
        ("Density: slope", "-1441.13599"),
        ("Mu_Scaling", "1e12"),
        ("HU: mu water", "1e30"),
    ],
)
def test_row14_absurd_calibration_is_refused_without_warnings(tiny, tmp_path, classical, key, value):
    log = _with_field(aim.read_header(tiny).processing_log, key, value)
    p = _variant(tiny, tmp_path / "C.AIM", log=log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw RuntimeWarning (overflow, divide) on the way
        with pytest.raises(CalibrationError, match=key):
            classical.run_to(p, tmp_path / "out", pipeline.RunOptions())


def test_row14_no_calibration_is_review_never_pass(tiny, tmp_path, bundled):
    log = "\n".join(
        ln for ln in aim.read_header(tiny).processing_log.split("\n") if not ln.startswith(("Density", "Mu_Scaling"))
    )
    p = _variant(tiny, tmp_path / "N.AIM", log=log)
    assert aim.read_header(p).calibration is None
    r = bundled.run_to(p, tmp_path / "out", pipeline.RunOptions())
    assert r["d100_mg_ha_cm3"] is None
    assert r["qc"]["status"] == "review" and any("calibration" in x for x in r["qc"]["reasons"])


def test_row14_cr_only_log_keeps_its_calibration(tiny):
    log = aim.read_header(tiny).processing_log
    lf = calibration_from_log(proclog.parse_log(log))
    cr = calibration_from_log(proclog.parse_log(log.replace("\n", "\r")))
    crlf = calibration_from_log(proclog.parse_log(log.replace("\n", "\r\n")))
    assert lf is not None and cr == lf and crlf == lf


# --------------------------------------------------------------------------- row 13: --save-prob and patient fields


def test_row13_prob_aim_carries_no_patient_fields(tiny, tmp_path, classical):
    log = aim.read_header(tiny).processing_log
    log = log.replace("Patient Name", "Original Patient") + PATIENT + "\nPatient Index                 4711\n"
    p = _variant(tiny, tmp_path / "P.AIM", log=log)
    out = tmp_path / "out"
    classical.run_to(p, out, pipeline.RunOptions(save_prob=True))
    prob_log = aim.read_header(out / "P_PROB.AIM").processing_log
    assert "DOE^JANE" not in prob_log and "Patient" not in prob_log and "4711" not in prob_log
    assert "Density: slope" in prob_log and "Mu_Scaling" in prob_log  # the calibration stays
    assert "DOE^JANE" in aim.read_header(out / "P_SEG.AIM").processing_log  # the mask keeps it: IPL needs it


# --------------------------------------------------------------------------- row 10: ISQ header blocks


@needs_samples
def test_row10_isq_with_a_padded_header_block_count_is_refused(tmp_path):
    raw = bytearray((SAMPLES / "ormir_xct_test_isq.ISQ").read_bytes())
    raw[508:512] = struct.pack("<i", struct.unpack("<i", raw[508:512])[0] + 1)
    p = tmp_path / "padded.ISQ"
    p.write_bytes(bytes(raw) + bytes(512))  # a block more at the end: the late read would fit
    with pytest.raises(AimFormatError, match="inconsistent"):
        aim.read_aim(p, mmap=False)


@needs_samples
def test_row10_isq_with_trailing_blocks_is_refused(tmp_path):
    p = tmp_path / "tail.ISQ"
    p.write_bytes((SAMPLES / "ormir_xct_test_isq.ISQ").read_bytes() + bytes(1024))
    with pytest.raises(AimFormatError, match="inconsistent"):
        aim.read_header(p)


@needs_samples
def test_row10_isq_without_data_size_is_refused(tmp_path):
    raw = bytearray((SAMPLES / "ormir_xct_test_isq.ISQ").read_bytes())
    raw[20:28] = bytes(8)  # nr_of_bytes = nr_of_blocks = 0
    p = tmp_path / "nosize.ISQ"
    p.write_bytes(bytes(raw))
    with pytest.raises(AimFormatError, match="nr_of_bytes"):
        aim.read_header(p)


@needs_samples
def test_row10_the_real_isq_still_reads():
    s = aim.read_aim(SAMPLES / "ormir_xct_test_isq.ISQ", mmap=False)
    assert s.header.shape == (25, 25, 25)


# --------------------------------------------------------------------------- row 9: memory before refusal


def _rle_bomb(path: Path, n: int = 1000) -> Path:
    """A binary run-length AIM of a few MB that declares n^3 voxels."""
    runs = -(-(n**3) // 254)
    counts = np.full(runs, 255, np.uint8)
    counts[-1] = (n**3 - 254 * (runs - 1)) or 254  # the last run toggles: exactly n^3 voxels
    stream = bytes([0, 127]) + counts.tobytes()
    aim.write_aim(path, BinaryRle((n, n, n), stream))
    return path


def test_row9_compressed_mask_is_refused_before_it_is_decoded(tmp_path):
    p = _rle_bomb(tmp_path / "BOMB.AIM")
    assert p.stat().st_size < 10 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(VbmdInputError, match="mask"):
            pipeline.read_scan(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # not the 1 GB of its voxels


def test_row9_measure_refuses_an_oversized_mask_before_decoding(tiny, tmp_path):
    p = _rle_bomb(tmp_path / "BOMB_SEG.AIM")
    scan_header = aim.read_header(tiny)
    tracemalloc.start()
    try:
        with pytest.raises(VbmdInputError):
            masks.read_mask_file(p, scan_header)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


# --------------------------------------------------------------------------- row 11: file names


def test_row11_long_odd_and_newline_names_never_stop_a_batch_or_its_summary(tiny, tmp_path, classical, capsys):
    from vbmd_rt.cli.scans import _print_row
    from vbmd_rt.cohort import batch as cohort

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    names = [
        "A" * 251 + ".AIM",  # the longest name a file system takes: its outputs would not fit
        "B" * 240 + ".AIM",
        os.fsdecode(b"caf\xe9.AIM"),  # latin-1 bytes: not UTF-8
        "new\nline.AIM",
        "plain.AIM",
    ]
    files = []
    for n in names:
        (d / n).write_bytes(tiny.read_bytes())
        files.append(d / n)
    rows = cohort.run_local(files, out, classical, pipeline.RunOptions())
    assert [r["status"] for r in rows] == ["done"] * len(names), [r["error"] for r in rows]
    for r in rows:
        _print_row(r, False, print)
    lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("  warning:")]
    assert len(lines) == len(names)  # one line a scan (warnings indented below it): the newline is escaped
    assert any("new\\nline.AIM" in x for x in lines) and any("caf\\xe9.AIM" in x for x in lines)
    csv_path, _ = cohort.write_summary(out, rows)
    assert len(csv_path.read_text().splitlines()) == 1 + len(names)
    assert all(len(os.fsencode(p.name)) <= 255 for p in out.rglob("*"))
    long_json = [p for p in out.glob("AAAA*.json")]
    assert len(long_json) == 1 and "~" in long_json[0].name


def test_row11_two_long_names_with_one_prefix_stay_apart():
    from vbmd_rt.runtime.io.naming import scan_name

    a, b = scan_name(Path("x" * 240 + "1.AIM")), scan_name(Path("x" * 240 + "2.AIM"))
    assert a != b and len(a.encode()) <= 150 and len(b.encode()) <= 150


def test_row11_error_lines_escape_newlines_and_undecodable_bytes():
    e = VbmdInputError(os.fsdecode(b"bad\n\xff.AIM"), "is broken", "fix it")
    assert "\n" not in str(e) and "\\xff" in str(e) and "\\n" in str(e)


# --------------------------------------------------------------------------- row 5: summaries are outputs too


@pytest.mark.parametrize("foreign", ["summary.csv", "summary.json"])
def test_row5_a_users_summary_is_never_replaced_without_overwrite(tmp_path, foreign):
    from vbmd_rt.cohort import batch as cohort
    from vbmd_rt.runtime.errors import OutputError

    out = tmp_path / "out"
    out.mkdir()
    (out / foreign).write_text("the user's own table\n")
    with pytest.raises(OutputError, match="not written by vbmd-rt"):
        cohort.check_summary(out)
    with pytest.raises(OutputError, match="not written by vbmd-rt"):
        cohort.write_summary(out, [])
    assert (out / foreign).read_text() == "the user's own table\n"
    cohort.write_summary(out, [], overwrite=True)  # --overwrite replaces it
    cohort.write_summary(out, [])  # and then it is ours: a later batch replaces it freely
    assert "vbmd_rt_version" in (out / "summary.json").read_text()


def test_row5_cli_batch_into_a_folder_with_a_users_summary_exits_2_before_work(tiny, tmp_path):
    d = tmp_path / "F"
    d.mkdir()
    for n in ("A.AIM", "B.AIM"):
        (d / n).write_bytes(tiny.read_bytes())
    (d / "summary.csv").write_text("patient,score\n1,2\n")
    r = cli_here("run", d, "-o", d, "--model", "classical", "-q")
    assert r.returncode == 2 and "summary.csv" in r.stderr
    assert (d / "summary.csv").read_text() == "patient,score\n1,2\n"
    assert not (d / "A.json").exists()  # refused before any work


# --------------------------------------------------------------------------- rows 2, 6, 12: the watch service


def _watcher(in_dir, out, process=None, **kw):
    from vbmd_rt.runtime import service
    from vbmd_rt.runtime.inference.factory import create
    from vbmd_rt.runtime.model import load_model

    model = load_model("classical")
    be = create("auto", model)
    kw.setdefault("log", lambda s: None)
    run = process or (lambda p: pipeline.run_scan(p, out, model, be, pipeline.RunOptions()))
    return service.Watcher(in_dir, out, run, **kw)


def _arrived(w):
    """Candidates once their files have been stable for ``stable_for``."""
    import time

    w.candidates()
    time.sleep(w.stable_for * 2)
    return w.candidates()


def _close(w):
    w.journal.close()
    w._lock.close()


def test_row2_a_stalled_preallocated_copy_is_never_processed(tiny, tmp_path):
    import time

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    raw = tiny.read_bytes()
    hdr = aim.read_header(tiny)
    with open(inp / "P.AIM", "wb") as f:  # fallocate to full size, copy a third, then the copy stalls
        f.truncate(len(raw))
        f.write(raw[: hdr.byte_offset + hdr.data_length // 3])
    w = _watcher(inp, out, stable_for=0.1)
    assert w.candidates() == []
    time.sleep(0.8)  # stable for 8 x stable_for: past the grace given to headers that never parse
    assert w.candidates() == []
    (inp / "P.AIM.done").write_bytes(b"")  # the copier's marker, newer than the file: it has arrived
    os.utime(inp / "P.AIM.done", ns=(time.time_ns() + 10**9,) * 2)
    assert [p.name for p, _ in w.candidates()] == ["P.AIM"]
    _close(w)


def test_row6_watch_redoes_another_scan_with_the_same_size_and_mtime(phantoms, tiny, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    other = tiny_scan(phantoms / "PHANTOM_0001.AIM", tmp_path / "other.AIM", slices=20)
    assert other.stat().st_size == tiny.stat().st_size
    (inp / "X.AIM").write_bytes(tiny.read_bytes())
    w = _watcher(inp, out, stable_for=0.05)
    os.utime(inp / "X.AIM", ns=(10**18, 10**18))
    [(p, key)] = _arrived(w)
    assert w.handle(p, key)
    first = (out / "X.json").read_text()
    assert w.candidates() == []  # done: settled
    (inp / "X.AIM").write_bytes(other.read_bytes())  # cp other.AIM IN/X.AIM; touch -r orig IN/X.AIM
    os.utime(inp / "X.AIM", ns=(10**18, 10**18))
    [(p, key2)] = _arrived(w)
    assert key2 != key and w.handle(p, key2)
    assert (out / "X.json").read_text() != first
    _close(w)


@pytest.mark.parametrize("raw", [False, True])
def test_row12_full_disk_is_retried_with_health_red_and_nothing_in_failed(tiny, tmp_path, raw):
    import errno
    import time

    from vbmd_rt.runtime import service
    from vbmd_rt.runtime.errors import OutputUnavailable

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "S.AIM").write_bytes(tiny.read_bytes())
    calls = []
    w = None

    def process(p):
        calls.append(p.name)
        if len(calls) == 1:
            if raw:  # an OSError no writer wrapped
                raise OSError(errno.ENOSPC, "No space left on device")
            raise OutputUnavailable(out / "S_SEG.AIM", "cannot write (No space left on device)", "free space")
        return inner.process(p)

    inner = _watcher(tmp_path / "in", tmp_path / "out2", stable_for=0.05)
    w = _watcher(inp, out, process=process, stable_for=0.05, poll=0.05)
    [(p, key)] = _arrived(w)
    assert not w.handle(p, key)
    assert not (out / "failed").exists() or not list((out / "failed").iterdir())  # not bad input
    ok, msg = service.health(out)
    assert not ok and "No space left" in msg
    assert w.candidates() == []  # backing off
    time.sleep(0.3)
    [(p, key)] = _arrived(w)  # the cause is gone: retried
    assert w.handle(p, key)
    w.write_health("idle")
    assert service.health(out)[0]
    _close(w)
    _close(inner)


# --------------------------------------------------------------------------- rows 3, 4: one switch per scan


def _kill_env(renames: int) -> dict:
    from vbmd_rt.runtime.io import outputs

    return {**os.environ, outputs.KILL_AFTER_ENV: str(renames)}


def _consistent(out: Path, name: str) -> bool:
    """No JSON, or a JSON whose every listed file is what it records."""
    import json

    from vbmd_rt.runtime.io import outputs

    p = out / f"{name}.json"
    if not p.exists():
        return True
    r = json.loads(p.read_text())
    return all(outputs.file_record(out / f) == rec for f, rec in r["outputs"].items())


@pytest.mark.parametrize("renames", [0, 1, 2, 3])
def test_row4_measure_is_one_transaction(phantoms, tiny, tmp_path, renames):
    import subprocess
    import sys

    scan = tmp_path / "S.AIM"
    scan.write_bytes((phantoms / "PHANTOM_0000.AIM").read_bytes())
    gt = aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM", mmap=False)
    half = np.asarray(gt.data).copy()
    half[: half.shape[0] // 2] = 0
    aim.write_aim(tmp_path / "HALF_MASK.AIM", half, gt.header, type="char")
    out = tmp_path / "out"
    base = [sys.executable, "-m", "vbmd_rt", "measure", scan]
    r = cli_here("measure", scan, phantoms / "PHANTOM_0000_GT.AIM", "-o", out, "--report", "html")
    assert r.returncode == 0, r.stderr
    before = (out / "S.json").read_bytes()
    assert _consistent(out, "S")
    r = subprocess.run(
        [*base, tmp_path / "HALF_MASK.AIM", "-o", out, "--report", "html", "--overwrite"],
        capture_output=True,
        env=_kill_env(renames),
    )
    assert r.returncode == 137
    assert _consistent(out, "S")  # never a new PNG beside an old JSON
    assert (out / "S.json").exists() == (renames == 0)
    if renames == 0:
        assert (out / "S.json").read_bytes() == before
    r = cli_here("measure", scan, tmp_path / "HALF_MASK.AIM", "-o", out, "--overwrite")
    assert r.returncode == 0 and _consistent(out, "S")


def test_row3_kill_in_the_commit_window_never_leaves_the_old_json_beside_the_new_mask(tiny, tmp_path):
    import subprocess
    import sys

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "S.AIM").write_bytes(tiny.read_bytes())
    cmd = ["run", d / "S.AIM", "-o", out, "--model", "classical", "-q"]
    args = [sys.executable, "-m", "vbmd_rt", *cmd]
    assert cli_here(*cmd).returncode == 0
    for renames, fmt in [(1, "char"), (2, "rle"), (3, "char")]:  # another mask format: the new mask differs
        r = subprocess.run([*args, "--overwrite", "--mask-format", fmt], capture_output=True, env=_kill_env(renames))
        assert r.returncode == 137 and _consistent(out, "S") and not (out / "S.json").exists()
        r = cli_here(*cmd, "--mask-format", fmt)  # a plain run finishes the job
        assert r.returncode == 0 and _consistent(out, "S") and (out / "S.json").exists()


# --------------------------------------------------------------------------- the fuzz corpus of issue 23's kinds


@needs_samples
def test_fuzz_corpus_23_is_refused_or_read_as_the_file_is_and_run_refuses_what_it_must(tmp_path, classical):
    from vbmd_rt.bench import fuzz_aim

    cases = fuzz_aim.corpus_23(60, seed=23)
    assert {c.kind.split(":")[0].split("=")[0].split("-")[0] for c in cases} >= {"calib", "el", "isq", "bomb"}
    refs = {p.name: fuzz_aim.truth(p) for p in fuzz_aim.sample_files()}
    ran = 0
    for c in cases:
        p = tmp_path / f"case{c.id}{Path(c.sample).suffix or '.AIM'}"
        p.write_bytes(c.data)
        r = fuzz_aim.check_23(c, p, refs.get(c.sample))
        assert r["verdict"] in ("accepted", "refused"), (c.kind, r)
        if r["verdict"] == "accepted" and c.kind.startswith(("calib:", "el-range")):
            el = aim.read_header(p).element_size_mm
            cal = aim.read_header(p).calibration
            if c.kind.startswith("calib:") and (cal is None or implausible(cal) is None):
                continue  # no calibration ("nan": a review case), or a value that is physical (intercept 0)
            if all(0.02 <= e <= 1.0 for e in el) and c.kind.startswith("el-range"):
                continue
            with pytest.raises(VbmdInputError):
                classical.run_to(p, tmp_path / f"out{c.id}", pipeline.RunOptions())
            ran += 1
        p.unlink()
    assert ran >= 5


# --------------------------------------------------------------------------- row 7: a change the sampled hash missed


def test_row7_run_redoes_a_scan_changed_between_the_sampled_blocks(phantoms, tmp_path, classical):
    from vbmd_rt.cohort import batch as cohort

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    p = tiny_scan(phantoms / "PHANTOM_0000.AIM", d / "S.AIM", slices=24, factor=2)  # 3 MB: > 18 blocks of 64 KiB
    assert p.stat().st_size > 18 * 2**16
    [r] = cohort.run_local([p], out, classical, pipeline.RunOptions())
    assert r["status"] == "done"
    from vbmd_rt.runtime.io import outputs

    st = p.stat()
    sampled = outputs.sampled_hash(p)  # the key of 0.2
    hdr = aim.read_header(p)
    n, block = st.st_size, 2**16
    step = (n - 2 * block) // 17
    at = (block + step + block + (step - block) // 2) // 2 * 2  # between two of the blocks 0.2's hash sampled
    assert at > hdr.byte_offset
    with open(p, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<h", 30000))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    assert outputs.sampled_hash(p) == sampled  # the change the sampled fingerprint missed
    [r] = cohort.run_local([p], out, classical, pipeline.RunOptions())
    assert r["status"] == "done"  # not skipped: the fingerprint covers every byte


@pytest.mark.parametrize("fail_at,json_stays", [("T_SEG.AIM", True), ("T.png", False)])
def test_row3_a_rename_failing_in_the_switch_leaves_a_consistent_result(
    tiny, tmp_path, classical, monkeypatch, fail_at, json_stays
):
    import json

    from vbmd_rt.runtime.io import outputs

    out = tmp_path / "out"
    classical.run_to(tiny, out, pipeline.RunOptions())
    before = (out / "T.json").read_bytes()
    real = os.replace

    def replace(src, dst):
        if Path(dst) == out / fail_at:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(VbmdInputError, match="No space left"):
        classical.run_to(tiny, out, pipeline.RunOptions(overwrite=True, mask_format="char"))
    monkeypatch.setattr(outputs.os, "replace", real)
    assert _consistent(out, "T") and (out / "T.json").exists() == json_stays
    if json_stays:
        assert (out / "T.json").read_bytes() == before
    r = classical.run_to(tiny, out, pipeline.RunOptions(mask_format="char"))  # no --overwrite: ours, all of it
    assert _consistent(out, "T") and json.loads((out / "T.json").read_text())["mask"]["format"] == r["mask"]["format"]
