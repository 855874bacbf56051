"""Synthetic phantoms: deterministic, exact truth, plausible densities, readable by aimio-py."""

import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import cli_here
from vbmd_rt.runtime.io.aim import read_aim
from vbmd_rt.runtime.io.calibration import to_density
from vbmd_rt.synth import phantom


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    truths = phantom.synth(out, 6, seed=21, size="small")
    yield out, truths
    shutil.rmtree(out, ignore_errors=True)  # 0.37 GB: gone when the module is done, not at the session's end


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_the_same_files(tmp_path, cohort):
    out, _ = cohort
    phantom.synth(tmp_path, 2, seed=21, size="small")
    for name in ("PHANTOM_0000.AIM", "PHANTOM_0000_GT.AIM", "PHANTOM_0000.truth.json", "PHANTOM_0001.AIM"):
        assert _digest(tmp_path / name) == _digest(out / name), name


def test_another_seed_gives_another_case(tmp_path, cohort):
    out, _ = cohort
    phantom.synth(tmp_path, 1, seed=22, size="small")
    assert _digest(tmp_path / "PHANTOM_0000.AIM") != _digest(out / "PHANTOM_0000.AIM")


def test_truth_d100_is_the_mean_density_of_the_stored_scan_inside_the_stored_mask(cohort):
    out, truths = cohort
    for t in truths:
        scan = read_aim(out / f"{t['name']}.AIM")
        gt = np.asarray(read_aim(out / f"{t['name']}_GT.AIM").data)
        assert set(np.unique(gt)) <= {0, 127}
        m = gt != 0
        d = to_density(scan.data, scan.calibration)
        assert t["d100_mg_ha_cm3"] == pytest.approx(float(d[m].astype(np.float64).mean()), abs=0.05)
        vox = float(np.prod(scan.header.element_size_mm))
        assert t["bone_volume_mm3"] == pytest.approx(m.sum() * vox, rel=1e-4)
        per = m.reshape(m.shape[0], -1).sum(1)
        assert t["slices"] == int((per > 0).sum())
        assert t["scan_slices"] == gt.shape[0]


def test_mask_lies_inside_bone_not_in_soft_tissue_or_air():
    p = phantom.sample_case(1234, "small")
    r = phantom._Renderer(p)
    checked = 0
    for z in range(0, p.slices, 7):
        sharp, truth = r.slice(z)
        m = truth.astype(bool)
        if not m.any():
            continue
        checked += 1
        assert (sharp[m] > phantom.AIR).all()
        assert np.mean(sharp[m] == np.float32(p.soft_density)) < 0.005
    assert checked >= 5


def test_mc2_runs_from_shaft_to_head_and_stops_before_the_joint(cohort):
    out, truths = cohort
    for t in truths:
        gt = np.asarray(read_aim(out / f"{t['name']}_GT.AIM").data) != 0
        per = gt.reshape(gt.shape[0], -1).sum(1)
        assert per[0] > 0  # the shaft is in the first slice
        assert per[-1] == 0  # the last slices are joint space and phalanx, not MC2
        last = int(np.flatnonzero(per).max())
        assert per[: last + 1].min() > 0  # one connected run of slices


@pytest.mark.parametrize("seed", range(8))
def test_tissue_densities_are_in_their_ranges(seed):
    p = phantom.sample_case(seed, "small")
    assert 700 <= p.cortex_density <= 1200
    assert all(0.3 <= b.cortex_head <= 1.5 and 0.3 <= b.cortex_shaft <= 1.5 for b in p.bones)
    assert 0 <= p.soft_density <= 100
    r = phantom._Renderer(p)
    b = p.bones[0]
    tex = r._texture(b, 10, (0, 200, 0, 200), p.trab_fraction_head)
    lo, hi = (80, 350) if p.osteopenia else (150, 350)
    assert lo <= float(tex.mean()) <= hi
    assert tex.std() > 100  # texture, not a flat value


def test_noise_in_air_has_a_realistic_size(cohort):
    out, truths = cohort
    scan = read_aim(out / f"{truths[0]['name']}.AIM")
    d = to_density(scan.data[:, :40, :40], scan.calibration)  # outside the field of view: air only
    assert abs(float(d.mean()) - phantom.AIR) < 1.0
    inner = to_density(scan.data[:, 240:272, 40:60], scan.calibration)
    assert 30 < float(inner.std()) < 200


def test_cohort_spans_the_papers_d100_range():
    d = []
    for i in range(40):
        p = phantom.sample_case(int(np.random.SeedSequence([3, i]).generate_state(1)[0]), "small")
        d.append(p.trab_apparent_head)
    assert min(d) < 160 and max(d) > 300


def test_left_hand_is_the_mirror_image_of_the_right():
    p = phantom.sample_case(99, "small")
    p = replace(p, slices=12, side="right")
    right, rt = phantom.render_case(p)
    left, lt = phantom.render_case(replace(p, side="left"))
    np.testing.assert_array_equal(left, right[:, :, ::-1])
    np.testing.assert_array_equal(lt, rt[:, :, ::-1])


def test_truth_does_not_leak_into_the_scan_file(cohort):
    out, truths = cohort
    logs, heads = set(), set()
    for t in truths:
        h = read_aim(out / f"{t['name']}.AIM").header
        logs.add(h.processing_log)
        heads.add((h.position, h.offset, h.element_size_mm, h.type_code, h.version, h.dim[:2]))
        low = h.processing_log.lower()
        for word in ("left", "right", "motion", "grade", "erosion", "seed", "d100", "truth"):
            assert word not in low
    assert len(logs) == 1 and len(heads) == 1  # every scan's header says the same
    assert {t["side"] for t in truths} == {"left", "right"}


def test_aimio_reads_every_file(cohort):
    py_aimio = pytest.importorskip("py_aimio")
    out, truths = cohort
    for t in truths[:3]:
        for suffix in ("", "_GT"):
            ours = read_aim(out / f"{t['name']}{suffix}.AIM")
            theirs, meta = py_aimio.read_aim(str(out / f"{t['name']}{suffix}.AIM"))
            np.testing.assert_array_equal(np.asarray(ours.data), theirs)
            assert meta["element_size"] == pytest.approx((0.246,) * 3, rel=1e-6)
        _, meta = py_aimio.read_aim(str(out / f"{t['name']}.AIM"))
        assert py_aimio.get_aim_density_equation(meta["processing_log_raw"])[0] == pytest.approx(1441.13599 / 8192)


def test_truth_json_has_the_contract_keys(cohort):
    out, truths = cohort
    t = json.loads((out / "PHANTOM_0000.truth.json").read_text())
    for k in (
        "d100_mg_ha_cm3",
        "bone_volume_mm3",
        "mean_slice_area_mm2",
        "slices",
        "side",
        "motion_grade",
        "erosions",
        "seed",
        "generator_version",
    ):
        assert k in t


def test_cli_synth_with_preview(tmp_path):
    r = cli_here("synth", tmp_path, "--cases", "2", "--seed", "4", "--preview")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "PHANTOM_0001_GT.AIM").exists()
    png = (tmp_path / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_synth_into_a_file_path_exits_2(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = cli_here("synth", f)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_full_size_case_has_scanner_geometry(tmp_path):
    t = phantom.synth_case(tmp_path, 0, seed=5, size="full")
    h = read_aim(tmp_path / "PHANTOM_0000.AIM").header
    assert h.dim[:2] == (1536, 1536) and 200 <= h.dim[2] <= 320
    assert h.element_size_mm == pytest.approx((0.082,) * 3, rel=1e-6)
    assert 100 < t["d100_mg_ha_cm3"] < 450


def test_workers_do_not_change_the_files(tmp_path):
    import hashlib

    from vbmd_rt.synth import phantom as ph

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    ph.synth(tmp_path / "one", 2, seed=8, start=3)
    ph.synth(tmp_path / "two", 2, seed=8, start=3, workers=2)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")
