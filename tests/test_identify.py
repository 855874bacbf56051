"""The identification stage: which bone is MC2, for the network and the classical contour alike."""

import numpy as np
import pytest

from vbmd_rt.runtime import bonewin, identify
from vbmd_rt.runtime.preprocess import to_model, to_model_mask
from vbmd_rt.synth import families, phantom


def _grid(scan, spacing, cal):
    vol, geo = to_model(scan, bonewin.GRID, spacing_zyx=spacing)
    return bonewin.to_input_units(vol, cal), geo


def _on_truth(idt, truth, geo) -> float:
    t = to_model_mask(truth, geo) > 0.5
    return float((idt.region & t).sum()) / max(1, int(idt.region.sum()))


@pytest.mark.parametrize("seed", [3, 11])
def test_identifies_mc2_of_standard_phantoms_with_a_margin(seed):
    p = phantom.sample_case(seed, "small")
    scan, truth = phantom.render_case(p)
    vol, geo = _grid(scan, (p.voxel_mm,) * 3, p.cal)
    idt = identify.identify(vol, bonewin.GRID.spacing_mm)
    assert _on_truth(idt, truth, geo) > 0.7
    assert idt.side == p.side
    assert len(idt.candidates) >= 3
    record = idt.to_dict()
    assert record["choice"] is not None and record["candidates"][record["choice"]]["evidence"]


def test_a_mirrored_hand_names_the_same_bone():
    p = phantom.sample_case(5, "small")
    scan, truth = phantom.render_case(p)
    flipped = np.ascontiguousarray(scan[:, :, ::-1])
    a = identify.identify(_grid(scan, (p.voxel_mm,) * 3, p.cal)[0], bonewin.GRID.spacing_mm)
    vol_b, geo_b = _grid(flipped, (p.voxel_mm,) * 3, p.cal)
    b = identify.identify(vol_b, bonewin.GRID.spacing_mm)
    assert _on_truth(b, np.ascontiguousarray(truth[:, :, ::-1]), geo_b) > 0.7
    assert {a.side, b.side} == {"left", "right"}


def test_the_users_side_overrides_anatomy():
    p = phantom.sample_case(3, "small")
    scan, truth = phantom.render_case(p)
    vol, geo = _grid(scan, (p.voxel_mm,) * 3, p.cal)
    wrong = "left" if p.side == "right" else "right"
    idt = identify.identify(vol, bonewin.GRID.spacing_mm, side=wrong)
    assert idt.side_source == "given"
    assert _on_truth(idt, truth, geo) < 0.3  # the other end of the row, as the user said
    assert idt.reasons  # and a reader is told that anatomy disagrees


@pytest.mark.xfail(
    strict=True,
    reason="issue 19 open: on some randomised hands with a thumb the identity is wrong with a margin above "
    "the review limit (2 of 11 wrong bones pass QC on the seed-7000 set)",
)
def test_randomised_hand_with_a_thumb_is_identified():
    allowed = families.parse_family("random")
    for seed in range(40, 80):
        p = families.sample_random(seed, "small", allowed)
        if any(b.name == "T1" for b in p.bones) and len(p.bones) >= 4:
            break
    scan, truth = phantom.render_case(p)
    vol, geo = _grid(scan, (p.voxel_mm,) * 3, p.cal)
    idt = identify.identify(vol, bonewin.GRID.spacing_mm)
    assert _on_truth(idt, truth, geo) > 0.5 or idt.review  # right, or left to a reader: never silently wrong


def test_side_written_in_the_log_is_read():
    assert identify.side_from_log("Hand side                     LEFT\n") == "left"
    assert identify.side_from_log("Measured hand: rechts\n") == "right"
    assert identify.side_from_log("Site                          4\n") is None
    assert identify.side_from_log("left hand and right hand\n") is None  # contradictory: no evidence
    assert identify.side_from_log(None) is None


def test_a_small_field_of_view_is_not_a_hand():
    vol = np.zeros((40, 24, 40), np.float32)  # 5.9 x 9.8 mm: a trabecular crop
    with pytest.raises(identify.NotAHand, match="field of view"):
        identify.identify(vol, bonewin.GRID.spacing_mm)


def test_a_block_of_aluminium_is_not_a_hand():
    vol = np.zeros((60, 120, 120), np.float32)
    yy, xx = np.mgrid[:120, :120]
    vol[:, (yy - 60) ** 2 + (xx - 60) ** 2 < 45**2] = 2.5  # one solid cylinder, 22 mm across
    with pytest.raises(identify.NotAHand, match="metacarpal"):
        identify.identify(vol, bonewin.GRID.spacing_mm)


def test_touching_shafts_are_split_into_bones():
    yy, xx = np.mgrid[:60, :100]
    two = ((yy - 30) ** 2 + (xx - 30) ** 2 < 18**2) | ((yy - 30) ** 2 + (xx - 64) ** 2 < 18**2)
    parts = identify.split(two, 0.25)
    assert parts.max() == 2
    assert parts[30, 30] != parts[30, 64]
    one = ((yy - 30) ** 2 / 20**2 + (xx - 50) ** 2 / 28**2) < 1  # an elongated shaft stays one bone
    assert identify.split(one, 0.25).max() == 1


def test_hypotheses_prefer_the_row_end_beside_the_thumb():
    def bone(x, y, area=60.0, joint=15.0):
        return identify.Bone(0, x, y, area, area * 2, joint, True, joint, False)

    row = [bone(20, 20), bone(38, 22), bone(56, 22), bone(74, 20, 40.0, 12.0)]
    thumb = bone(0, 36, 50.0)
    hyps, margin = identify.name([*row, thumb], None)
    assert hyps[0]["mc2"] == 0 and hyps[0]["thumb"] == 4
    assert margin > 0


@pytest.mark.parametrize("name", ["bonelabdata_aluminum.aim", "aimiopy_TRAB_1240.AIM"])
def test_scans_that_hold_no_hand_are_refused_with_exit_2_and_no_output(samples, tmp_path, name):
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "vbmd_rt", "run", str(samples / name), "-o", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    line = [x for x in r.stderr.splitlines() if x.strip()]
    assert any(name in x and ("metacarpal" in x or "field of view" in x) for x in line)
    assert not any(p.suffix in (".json", ".AIM", ".png") for p in out.rglob("*") if ".vbmd-rt" not in p.parts)


def test_the_cpu_recipe_caches_trains_resumes_and_exports(phantoms, tmp_path):
    """The one-bone segmenter's recipe end to end on two phantoms: windows cached once, a time-budgeted
    run writes last.pt, a rerun resumes from it, and the checkpoint exports to a model the runtime loads."""
    pytest.importorskip("torch")
    import torch

    from vbmd_rt.export import bonewin as recipe
    from vbmd_rt.export.onnx_export import export_bonewin
    from vbmd_rt.runtime.model import load_model

    from .conftest import phantom_copies

    data = phantom_copies(phantoms, tmp_path / "data", 2)
    r = recipe.Recipe(data=[str(data)], out=str(tmp_path / "run"), cache=str(tmp_path / "cache"), minutes=0.02, batch=2)
    last = recipe.train(r, log=lambda s: None)
    first = torch.load(last, weights_only=False)["state"]
    assert first["step"] >= 1 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    r.minutes = first["seconds"] / 60 + 0.02  # budget left after what the first run spent (load: its steps overrun)
    again = torch.load(recipe.train(r, log=lambda s: None), weights_only=False)["state"]
    assert again["step"] > first["step"] and again["seconds"] >= first["seconds"]
    card = export_bonewin(last, tmp_path / "model", {"steps": again["step"]}, check_cases=1)
    assert card["architecture"] == "bonewin2d" and card["training_data"]["steps"] == again["step"]
    assert load_model(tmp_path / "model").card.arch.bone_window


def test_a_degraded_prior_stays_near_the_truth():
    from vbmd_rt.export.bonewin import degrade

    truth = np.zeros((120, 80, 80), bool)  # 30 mm of a 10 mm wide bone at 0.246 mm
    truth[:100, 20:60, 20:60] = True
    rng = np.random.default_rng(0)
    for _ in range(20):  # coarser, 1 mm thicker or thinner, 1.5 mm shifted, a joint 4 mm off: still the bone
        d = degrade(truth, rng)
        assert d.shape == truth.shape and d.any()
        assert (d & truth).sum() / truth.sum() > 0.4 and not d[:, :8].any() and not d[:, :, :8].any()
