"""Domain-randomised phantoms: structurally different families, exact truth, named held-out families."""

import json
import shutil

import numpy as np
import pytest

from vbmd_rt.runtime.io.aim import read_aim
from vbmd_rt.runtime.io.calibration import to_density
from vbmd_rt.synth import families, phantom


@pytest.fixture(scope="module")
def randomised(tmp_path_factory):
    out = tmp_path_factory.mktemp("random")
    truths = phantom.synth(out, 6, seed=5, size="small", family="random")
    yield out, truths
    shutil.rmtree(out, ignore_errors=True)  # 0.7 GB: gone when the module is done, not at the session's end


def test_family_filters_parse_and_refuse_what_does_not_exist():
    allowed = families.parse_family("random:texture!=blobs,shape=condyle|fourier,scanner=xct2")
    assert "blobs" not in allowed["texture"] and set(allowed["texture"]) == set(families.TEXTURES) - {"blobs"}
    assert allowed["shape"] == ("fourier", "condyle") and allowed["scanner"] == ("xct2",)
    for bad in (
        "nonsense",
        "random:colour=red",
        "random:texture=plaid",
        "random:texture!=" + "|".join(families.TEXTURES),
    ):
        with pytest.raises(ValueError):
            families.parse_family(bad)


def test_held_out_family_is_never_drawn_in_training_sets():
    train = [families.sample_random(s, "small", families.parse_family("random:texture!=rodplate")) for s in range(40)]
    held = [families.sample_random(s, "small", families.parse_family("random:texture=rodplate")) for s in range(5)]
    assert all(p.family["texture"] != "rodplate" for p in train)
    assert all(p.family["texture"] == "rodplate" for p in held)


def test_random_family_varies_structure_not_only_intensity():
    cases = [families.sample_random(s, "small", families.parse_family("random")) for s in range(60)]
    assert {p.family["texture"] for p in cases} == set(families.TEXTURES)
    assert {p.family["shape"] for p in cases} == set(families.SHAPES)
    assert {p.family["scanner"] for p in cases} == {"xct1", "xct2"}
    assert {len([b for b in p.bones if b.name != "T1"]) for p in cases} >= {2, 3, 4}
    assert any(b.name == "T1" for p in cases for b in p.bones)  # the thumb beside MC2, sometimes
    # MC2 is not always the largest metacarpal
    assert any(max(b.head[0] for b in p.bones if b.name.startswith("MC")) > p.bones[0].head[0] for p in cases)
    assert len({p.voxel_mm for p in cases}) == 2 and len({p.nxy for p in cases}) > 3


def test_random_cases_have_exact_truth_and_their_family_in_the_truth_json(randomised):
    out, truths = randomised
    for t in truths:
        scan = read_aim(out / f"{t['name']}.AIM")
        gt = np.asarray(read_aim(out / f"{t['name']}_GT.AIM").data) != 0
        assert gt.any() and gt[0].any(), "MC2's shaft runs through the first slice"
        d = to_density(scan.data, scan.calibration)
        assert t["d100_mg_ha_cm3"] == pytest.approx(float(d[gt].astype(np.float64).mean()), abs=0.05)
        saved = json.loads((out / f"{t['name']}.truth.json").read_text())
        assert saved["family"] == "random" and saved["family_params"]["texture"] in families.TEXTURES
        assert scan.header.element_size_mm[0] == pytest.approx(t["voxel_mm"], rel=1e-5)


def test_xtremect2_cases_carry_their_own_calibration(tmp_path):
    phantom.synth(tmp_path, 1, seed=3, family="random:scanner=xct2")
    scan = read_aim(tmp_path / "PHANTOM_0000.AIM")
    assert scan.calibration.slope == pytest.approx(families.SCANNERS["xct2"][2].slope)
    assert scan.header.element_size_mm[0] == pytest.approx(0.0607 * 3, rel=1e-5)


def test_the_same_seed_and_family_give_the_same_files(tmp_path, randomised):
    out, _ = randomised
    phantom.synth(tmp_path, 2, seed=5, family="random")
    for name in ("PHANTOM_0001.AIM", "PHANTOM_0001_GT.AIM"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_another_bone_can_be_the_truth_for_qc_tests():
    p = families.sample_random(11, "small", families.parse_family("random:texture=bandpass"))
    scan, mc2 = phantom.render_case(p)
    scan3, mc3 = phantom.render_case(p, truth_bone="MC3")
    assert np.array_equal(scan, scan3), "the image does not depend on which bone is the truth"
    assert mc2.any() and mc3.any() and not (mc2 & mc3).any()


@pytest.mark.parametrize("kind", families.TEXTURES)
def test_every_texture_thresholds_to_the_asked_fraction(kind):
    t = families.texture_tile(np.random.default_rng(0), 48, kind, 6.0, 3.0)
    assert t.shape == (48, 48, 48) and 0.0 <= t.min() and t.max() <= 1.0
    q = np.quantile(t, 0.75)
    assert (t > q).mean() == pytest.approx(0.25, abs=0.02)


def test_cli_synth_random_family_and_a_bad_family(tmp_path):
    from tests.conftest import cli_here

    r = cli_here("synth", tmp_path / "ok", "--cases", "1", "--family", "random:texture=grf", "--seed", "2", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ok" / "PHANTOM_0000.truth.json").read_text())["family_params"]["texture"] == "grf"
    r = cli_here("synth", tmp_path / "bad", "--family", "random:texture=plaid")
    assert r.returncode == 2 and "texture" in r.stderr
    assert not (tmp_path / "bad").exists()
