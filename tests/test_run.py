"""`vbmd-rt run` end to end with the bundled model: outputs, alignment, bad input, batches."""

import hashlib
import json

import numpy as np
import pytest

from tests.conftest import cli_here, phantom_copies
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.model import load_model

KEYS = {
    "d100_mg_ha_cm3",
    "bone_volume_mm3",
    "mean_slice_area_mm2",
    "slices",
    "side",
    "backend",
    "model",
    "calibration",
    "timings_s",
    "scan",
    "mask",
    "warnings",
}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cases(phantoms, tmp_path_factory):
    return phantom_copies(phantoms, tmp_path_factory.mktemp("scans"), 2)


@pytest.fixture(scope="module")
def results(cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    before = {p.name: sha(p) for p in cases.iterdir()}
    r = cli_here("run", cases / "PHANTOM_0000.AIM", cases / "PHANTOM_0001.AIM", "-o", out, "--report", "html", "-q")
    assert r.returncode == 0, r.stderr
    assert {p.name: sha(p) for p in cases.iterdir()} == before  # inputs untouched, nothing written beside them
    return out


def test_bundled_model_card_is_complete():
    m = load_model()
    assert m.architecture == "bonewin2d"
    assert m.card.training_data.get("train_minutes") and m.card.training_data.get("steps")
    for key in ("fp32", "fp16"):
        m.onnx(key)  # sha256 checked
        assert m.card.files[key].bytes < 10 * 2**20
    assert "synthetic" in m.card.intended_use and "vbmd-rt train" in m.card.intended_use
    assert m.card.preprocessing.std > 0 and m.card.threshold == 0.5


@pytest.mark.parametrize("i", [0, 1])
def test_outputs_json_and_mask_line_up_with_truth(cases, results, i):
    name = f"PHANTOM_{i:04d}"
    truth = json.loads((cases / f"{name}.truth.json").read_text())
    res = json.loads((results / f"{name}.json").read_text())
    assert KEYS <= set(res)
    assert set(res["timings_s"]) == {
        "read",
        "preprocess",
        "identify",
        "inference",
        "postprocess",
        "vbmd",
        "qc",
        "write",
        "total",
    }
    assert res["backend"]["name"] == "onnxruntime-cpu"
    assert res["model"]["sha256"] == load_model().sha256("fp32")
    assert res["side"] == truth["side"]
    assert res["d100_mg_ha_cm3"] == pytest.approx(truth["d100_mg_ha_cm3"], abs=25)
    seg = aim.read_aim(results / f"{name}_SEG.AIM")
    gt = aim.read_aim(cases / f"{name}_GT.AIM")
    scan = aim.read_header(cases / f"{name}.AIM")
    assert seg.header.type_name == "binary-rle" and seg.header.version == scan.version
    assert seg.header.position == scan.position and seg.header.shape == scan.shape
    assert seg.header.element_size_mm == pytest.approx(scan.element_size_mm)
    assert set(np.unique(seg.data)) <= {0, 127}
    a, b = np.asarray(seg.data) > 0, np.asarray(gt.data) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
    scan_log = scan.processing_log.rstrip("\0")
    assert seg.header.processing_log.startswith(scan_log.rstrip("\n"))  # the scan's log kept, one entry added
    assert "vbmd-rt" in seg.header.processing_log[len(scan_log) :]
    assert (results / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (results / f"{name}.html").read_text()
    assert "data:image/png;base64," in html and "D100" in html


def test_valid_outputs_are_skipped_without_overwrite(cases, results):
    before = sha(results / "PHANTOM_0000.json")
    r = cli_here("run", cases / "PHANTOM_0000.AIM", "-o", results)
    assert r.returncode == 0 and "skipped" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert sha(results / "PHANTOM_0000.json") == before


def _only_error(r):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert "Traceback" not in r.stderr
    return lines[0]


def test_not_an_aim(tmp_path):
    bad = tmp_path / "notes.AIM"
    bad.write_text("not a scan\n" * 20)
    out = tmp_path / "out"
    r = cli_here("run", bad, "-o", out, "-q")
    assert r.returncode == 2 and str(bad) in _only_error(r)
    assert [p.name for p in out.iterdir()] in ([], [".vbmd-rt"])  # no output, at most the locks folder


def test_truncated_scan(cases, tmp_path):
    src = (cases / "PHANTOM_0000.AIM").read_bytes()
    bad = tmp_path / "CUT.AIM"
    bad.write_bytes(src[: len(src) // 2])
    r = cli_here("run", bad, "-o", tmp_path / "out", "-q")
    assert r.returncode == 2 and "CUT.AIM" in _only_error(r)
    assert not any((tmp_path / "out").iterdir())


def test_mask_given_as_scan(cases, tmp_path):
    r = cli_here("run", cases / "PHANTOM_0000_GT.AIM", "-o", tmp_path / "out", "-q")
    assert r.returncode == 2 and "mask" in _only_error(r) and "not a greyscale scan" in r.stderr


def test_uncalibrated_scan_still_gets_a_mask(cases, tmp_path):
    s = aim.read_aim(cases / "PHANTOM_0001.AIM")
    import dataclasses

    hdr = dataclasses.replace(s.header, processing_log="")
    aim.write_aim(tmp_path / "NOCAL.AIM", np.asarray(s.data), hdr)
    r = cli_here("run", tmp_path / "NOCAL.AIM", "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "NOCAL.json").read_text())
    assert res["d100_mg_ha_cm3"] is None and res["calibration"] is None
    assert any("calibration" in w for w in res["warnings"]) and res["bone_volume_mm3"] > 0
    assert (tmp_path / "out" / "NOCAL_SEG.AIM").exists()


def test_scan_without_bone_is_refused_as_not_a_hand(cases, tmp_path):
    """No metacarpal, no result: exit 2 with one line, never a D100 (the identification stage decides)."""
    s = aim.read_aim(cases / "PHANTOM_0001.AIM")
    air = np.full(s.header.shape, -2000, np.int16) + np.random.default_rng(0).integers(
        -50, 50, s.header.shape, dtype=np.int16
    )
    aim.write_aim(tmp_path / "AIR.AIM", air, s.header)
    r = cli_here("run", tmp_path / "AIR.AIM", "-o", tmp_path / "out", "-q")
    assert r.returncode == 2 and "metacarpal" in _only_error(r)
    assert not (tmp_path / "out" / "AIR.json").exists()


def test_out_not_writable(cases, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli_here("run", cases / "PHANTOM_0000.AIM", "-o", blocker, "-q")
    assert r.returncode == 2 and "not a folder" in _only_error(r)


def test_one_bad_scan_does_not_stop_the_batch(cases, tmp_path):
    bad = tmp_path / "in" / "BROKEN.AIM"
    bad.parent.mkdir()
    bad.write_bytes(b"\0" * 100)
    good = tmp_path / "in" / "GOOD.AIM"
    good.write_bytes((cases / "PHANTOM_0000.AIM").read_bytes())
    r = cli_here("run", tmp_path / "in", "-o", tmp_path / "out", "-q")
    assert r.returncode == 2
    assert "BROKEN.AIM" in r.stderr and "1 of 2 scans failed" in r.stderr
    assert (tmp_path / "out" / "GOOD.json").exists() and not (tmp_path / "out" / "BROKEN.json").exists()
