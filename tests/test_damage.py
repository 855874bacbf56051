"""Slices a scan lost (one value throughout): bridged to find and draw MC2, left out of the numbers, reviewed;
too many, refused."""

import dataclasses
import json

import numpy as np
import pytest

from tests.conftest import cli_here
from vbmd_rt.runtime import damage
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import aim


def _noise(nz: int = 30) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3000, (nz, 40, 40)).astype(np.int16)


def test_only_slices_of_one_value_throughout_are_lost():
    data = _noise()
    data[3] = 0
    data[17] = 1234  # a constant that is not zero
    data[22, ::16, ::16] = 7  # one value on the sampled grid only: a scan slice all the same
    assert damage.lost_slices(data).tolist() == [3, 17]
    assert damage.lost_slices(_noise()).size == 0


def test_lost_slices_are_filled_from_both_sides_and_the_input_is_left_alone():
    data = _noise()
    data[[0, 10, 11]] = 0
    before = data.copy()
    out = damage.filled(data, np.array([0, 10, 11]))
    assert np.array_equal(data, before)
    assert np.array_equal(out[0], data[1])  # the stack's end: the one neighbour it has
    lo, hi = data[9].astype(np.float32), data[12].astype(np.float32)
    for k, w in ((10, 1 / 3), (11, 2 / 3)):  # linear in z between slices 9 and 12
        assert np.abs(out[k] - ((1 - w) * lo + w * hi)).max() <= 0.5 + 1e-3
    assert np.array_equal(np.delete(out, [0, 10, 11], 0), np.delete(data, [0, 10, 11], 0))


def test_too_many_or_too_long_a_run_is_refused():
    damage.check("s.AIM", np.array([5, 9, 20]), 100, 0.246)  # three apart: bridged
    damage.check("s.AIM", np.array([5, 6, 7, 8]), 100, 0.246)  # 0.98 mm: bridged
    with pytest.raises(VbmdInputError, match="5 neighbouring slices"):
        damage.check("s.AIM", np.arange(5, 10), 100, 0.246)
    with pytest.raises(VbmdInputError, match="12 of its 100 slices"):
        damage.check("s.AIM", np.arange(0, 100, 9), 100, 0.246)
    with pytest.raises(VbmdInputError, match="no image"):
        damage.check("s.AIM", np.arange(30), 30, 0.246)


@pytest.fixture(scope="module")
def damaged(phantoms, tmp_path_factory):
    """PHANTOM_0000 with one slice of zeros in MC2's shaft, one run of five in another copy."""
    d = tmp_path_factory.mktemp("damaged")
    s = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data) != 0
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    k = int(zs[0] + (zs[-1] - zs[0]) // 3)
    one, five = np.array(s.data), np.array(s.data)
    one[k] = 0
    five[k : k + 5] = 0
    hdr = dataclasses.replace(s.header)
    aim.write_aim(d / "one.AIM", one, hdr)
    aim.write_aim(d / "five.AIM", five, hdr)
    return d, k, gt


def test_a_lost_slice_is_bridged_left_out_and_reviewed(phantoms, damaged, tmp_path):
    d, k, gt = damaged
    truth = json.loads((phantoms / "PHANTOM_0000.truth.json").read_text())
    r = cli_here("run", d / "one.AIM", "-o", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "one.json").read_text())
    assert res["mask"]["lost_slices"] == [k]
    assert res["qc"]["status"] == "review"
    assert any(f"slice {k} of the scan holds a single value" in x for x in res["qc"]["reasons"])
    assert not any("skips" in x for x in res["qc"]["reasons"])  # not a gap of the mask's own
    mask = np.asarray(aim.read_aim(tmp_path / "one_SEG.AIM").data) != 0
    assert not mask[k].any() and mask[k - 1].any() and mask[k + 1].any()
    dice = 2 * (mask & gt).sum() / (mask.sum() + gt.sum())
    assert dice > 0.95
    assert res["d100_mg_ha_cm3"] == pytest.approx(truth["d100_mg_ha_cm3"], abs=5)


def test_a_run_of_lost_slices_too_long_to_bridge_is_refused(damaged, tmp_path):
    d, _, _ = damaged
    r = cli_here("run", d / "five.AIM", "-o", tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln and not ln.startswith("backend:")]
    assert len(lines) == 1 and "five.AIM" in lines[0] and "5 neighbouring slices" in lines[0], r.stderr
    assert not list(tmp_path.glob("five*"))  # no result, no mask, no picture


def test_a_crop_with_lost_slices_is_refused_for_its_field_of_view_first(damaged, tmp_path):
    """A trabecular crop is no hand, lost slices or not: the user is told that, not to reconstruct it."""
    d, _, _ = damaged
    s = aim.read_aim(d / "one.AIM")
    crop = np.array(s.data[:, :40, :40])
    crop[: crop.shape[0] // 2] = 0  # half its slices lost
    aim.write_aim(tmp_path / "crop.AIM", crop, s.header)
    r = cli_here("run", tmp_path / "crop.AIM", "-o", tmp_path / "out")
    assert r.returncode == 2 and "field of view" in r.stderr and "reconstruct" not in r.stderr, r.stderr


def test_float_scans_are_filled_without_rounding():
    data = np.random.default_rng(1).random((12, 20, 20)).astype(np.float32)
    data[5] = 0.0
    out = damage.filled(data, np.array([5]))
    assert np.allclose(out[5], (data[4].astype(np.float64) + data[6]) / 2, atol=1e-6)


def test_qc_and_the_neck_read_across_the_slices_the_mask_leaves_out(phantoms):
    from vbmd_rt.runtime import compartments, qc

    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data) != 0
    spacing = aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").spacing_zyx
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    holed = gt.copy()
    k = int(zs[0] + (zs[-1] - zs[0]) // 4)  # where the shaft widens into the head (without the bridge: neck moved)
    holed[k : k + 4] = False
    assert qc.plausibility(holed, spacing)["gap_slices"] == 4
    bridged = qc.plausibility(holed, spacing, bridged=list(range(k, k + 4)))
    assert bridged["gap_slices"] == 0 and bridged["area_jump"] == pytest.approx(
        qc.plausibility(gt, spacing)["area_jump"], abs=0.05
    )
    area = lambda m: m.reshape(m.shape[0], -1).sum(axis=1)  # noqa: E731
    assert compartments.neck_slice(area(holed), spacing[0]) == compartments.neck_slice(area(gt), spacing[0])


def test_a_lost_slice_away_from_mc2_is_a_warning_not_a_review(phantoms, tmp_path):
    s = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data) != 0
    last = int(np.flatnonzero(gt.any(axis=(1, 2)))[-1])
    assert last + 4 < gt.shape[0]
    data = np.array(s.data)
    data[last + 4] = 0  # past the head, in the phalanx
    aim.write_aim(tmp_path / "far.AIM", data, s.header)
    r = cli_here("run", tmp_path / "far.AIM", "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "far.json").read_text())
    assert res["mask"]["lost_slices"] == [last + 4]
    assert not any("single value" in x for x in res["qc"]["reasons"])
    assert any("away from MC2" in w for w in res["warnings"])


def test_a_stack_written_fingers_first_bridges_the_same_slice(damaged, tmp_path):
    """QC reads a turned stack from its proximal end: the lost slice is bridged there, not taken for a gap."""
    d, k, _ = damaged
    s = aim.read_aim(d / "one.AIM")
    aim.write_aim(tmp_path / "turned.AIM", np.ascontiguousarray(np.asarray(s.data)[::-1]), s.header)
    for name in ("one", "turned"):
        r = cli_here("run", d / "one.AIM" if name == "one" else tmp_path / "turned.AIM", "-o", tmp_path / name, "-q")
        assert r.returncode == 0, r.stderr
    up = json.loads((tmp_path / "one" / "one.json").read_text())
    down = json.loads((tmp_path / "turned" / "turned.json").read_text())
    assert down["identity"]["stack"]["turned"]
    assert down["mask"]["lost_slices"] == [s.data.shape[0] - 1 - k]
    assert not any("skips" in x for x in down["qc"]["reasons"])
    assert down["d100_mg_ha_cm3"] == pytest.approx(up["d100_mg_ha_cm3"], abs=0.5)
