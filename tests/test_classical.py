"""The classical baseline (`--model classical`): its steps, and the whole path on phantoms."""

import dataclasses
import json

import numpy as np
import pytest

from tests.conftest import cli_here
from vbmd_rt.runtime import classical, edges, measure, qc
from vbmd_rt.runtime.io import aim, masks
from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.runtime.model import load_model


@pytest.fixture(scope="module")
def cases(phantoms):
    return phantoms


@pytest.mark.parametrize("slice_mm", [0.082, 0.246, 0.49])
def test_bone_end_finds_the_phalanx_jump(slice_mm):
    """The rule every tracked region ends by (identification, the native contour, ``pick_mc2``'s heads, QC's
    baseline region), on any slice spacing."""
    shaft, head, dome = [100] * 10, [150, 200, 240, 250, 240], [200, 150, 100, 60]
    area = np.array(shaft + head + dome + [170, 200, 210], float)  # then the phalanx joins the region
    end = classical.bone_end(area, slice_mm, tail=None, cup=False)
    assert end == len(shaft + head + dome)
    assert classical.bone_end(np.array(shaft + head + dome, float), slice_mm, tail=None, cup=False) == end
    # An erosion's dip in the shaft is no joint: the shaft never fell below 80% of the largest so far.
    assert classical.bone_end(np.array([100, 100, 85, 100, 110, 120], float), slice_mm, tail=None, cup=False) == 6


def _ring(img, cy, cx, r, lab, width=2):
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    d = np.hypot(yy - cy, xx - cx)
    img[(d <= r) & (d > r - width)] = lab


def test_track_fills_rings_and_splits_touching_bones():
    z, n = 12, 96
    bone = np.zeros((z, n, n), bool)
    for k in range(z):
        tmp = np.zeros((n, n), np.uint8)
        _ring(tmp, 48, 25, 12, 1)
        _ring(tmp, 48, 54 if k < 6 else 48, 12, 1)  # the second bone moves to touch the first
        bone[k] = tmp > 0
    bone[3, 48, 13:16] = False  # a gap in one cortex: the closing bridges it
    labels = classical.track(bone, (0.25, 0.25, 0.25), classical.Params(min_volume_mm3=0.1))
    assert set(np.unique(labels[0])) == {0, 1, 2}
    for k in range(z):  # two filled discs per slice, never merged, labels kept along z
        for lab in (1, 2):
            area = (labels[k] == lab).sum()
            assert 0.8 * np.pi * 12**2 < area < 1.2 * np.pi * 12**2, (k, lab, area)
    assert labels[11, 48, 25] == labels[0, 48, 25] and labels[11, 48, 50] == labels[0, 48, 54]


def test_pick_mc2_takes_the_end_of_the_row_with_the_larger_head():
    labels = np.zeros((20, 40, 100), np.int32)
    for lab, (x, r_head) in enumerate([(10, 6), (35, 7), (60, 6), (85, 4)], start=1):
        for k in range(20):
            r = 3 if k < 10 else r_head
            labels[k, 20 - r : 20 + r, x - r : x + r] = lab
    assert classical.pick_mc2(labels, (0.25, 0.25, 0.25)) == 1
    assert classical.pick_mc2(labels[:, :, ::-1].copy(), (0.25, 0.25, 0.25)) == 1


def test_classical_segmentation_of_phantoms(cases):
    for i in range(3):
        scan = aim.read_aim(cases / f"PHANTOM_{i:04d}.AIM")
        truth = np.asarray(aim.read_aim(cases / f"PHANTOM_{i:04d}_GT.AIM").data) != 0
        mask, info = classical.segment(scan.data, scan.header.element_size_mm[::-1], scan.calibration)
        assert mask.dtype == np.uint8 and mask.shape == truth.shape
        assert measure.dice(mask, truth) > 0.9, (i, info)
        lo, hi = info["thresholds_mg_ha_cm3"]
        assert 150 < lo < hi < 700


def test_run_with_the_classical_model(cases, tmp_path):
    r = cli_here("run", cases / "PHANTOM_0000.AIM", "-o", tmp_path, "--model", "classical", "--save-prob", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "PHANTOM_0000.json").read_text())
    truth = json.loads((cases / "PHANTOM_0000.truth.json").read_text())
    assert res["model"]["name"] == "classical" and res["backend"]["name"] == "classical"
    assert abs(res["d100_mg_ha_cm3"] - truth["d100_mg_ha_cm3"]) < 15
    assert res["side"] == truth["side"]
    # QC's second reading: the bundled network's mask of the same bone agrees with a good classical contour
    second = res["qc"]["second_reading"]
    assert second["dice_with_network"] >= qc.LIMITS.reading_dice, second
    assert not any("disagree" in r or "differs from the network" in r for r in res["qc"]["reasons"])
    # ... and its D100 difference is what the two results' D100s differ by: the network's mask is brought to the
    # scan's voxels and set on the edge as the network's own run does (on the model grid, kept for the record,
    # it differs a little here and by up to 15 mg HA/cm³ at 60-82 µm)
    r = cli_here("run", cases / "PHANTOM_0000.AIM", "-o", tmp_path / "net", "-q")
    assert r.returncode == 0, r.stderr
    net = json.loads((tmp_path / "net" / "PHANTOM_0000.json").read_text())
    diff = res["d100_mg_ha_cm3"] - net["d100_mg_ha_cm3"]
    assert abs(second["d100_difference_mg_ha_cm3"] - diff) < 0.006, (second, diff)  # rounded to 0.01
    # (on the grid the classical contour is read as drawn, before ``classical.peel_outline`` moves its outline in)
    assert abs(second["d100_difference_on_grid_mg_ha_cm3"] - diff) < 3.0, (second, diff)
    assert abs(second["d100_difference_mg_ha_cm3"]) <= qc.LIMITS.reading_d100_mg
    prob = aim.read_aim(tmp_path / "PHANTOM_0000_PROB.AIM")
    assert prob.header.shape == aim.read_header(cases / "PHANTOM_0000.AIM").shape
    # the classical model's probability is its mask: 100 inside, 0 outside (made in the mask's box only)
    seg = masks.read_mask_file(tmp_path / res["mask"]["file"], aim.read_header(cases / "PHANTOM_0000.AIM"))
    values = np.asarray(prob.data)
    assert set(np.unique(values)) == {0, 100} and np.array_equal(values == 100, seg != 0)
    assert load_model("classical").classical


def test_classical_refuses_an_uncalibrated_scan(cases, tmp_path):
    scan = aim.read_aim(cases / "PHANTOM_0000.AIM")
    bare = tmp_path / "in" / "BARE.AIM"
    bare.parent.mkdir()
    aim.write_aim(bare, np.asarray(scan.data), dataclasses.replace(scan.header, processing_log=""))
    r = cli_here("run", bare, "-o", tmp_path / "out", "--model", "classical", "-q")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "BARE.AIM" in errors[0] and "calibration" in errors[0], r.stderr
    assert not list((tmp_path / "out").glob("BARE*"))
    r = cli_here(
        "run", cases / "PHANTOM_0000.AIM", "-o", tmp_path / "o2", "--model", "classical", "--backend", "onnxruntime"
    )
    assert r.returncode == 2 and "classical" in r.stderr


def test_near_mc2_tracks_its_neighbourhood_only_and_returns_the_same_mask():
    """Given MC2's shaft (the identification stage's), only the bones within NEAR_MM of it are tracked; the
    mask is the one tracking the whole scan gives, placed in the whole scan, its box in scan coordinates."""
    from vbmd_rt.runtime import classical
    from vbmd_rt.synth import phantom

    p = phantom.sample_case(31, "small")
    scan, truth = phantom.render_case(p)
    sp = (p.voxel_mm,) * 3
    zz, yy, xx = np.nonzero(truth[:3])
    near = (float(yy.mean()), float(xx.mean()))
    factor, params = max(1, int(round(0.16 / p.voxel_mm))), classical.Params()
    levels = classical.thresholds(scan, sp, p.cal, params, factor)
    whole, _ = classical._segment(scan, sp, p.cal, params, near, factor, levels)  # every bone tracked
    mask, info = classical.segment(scan, sp, p.cal, near=near)
    assert mask.shape == scan.shape and info["box"] is not None
    z0, z1, y0, y1, x0, x1 = info["box"]
    assert np.count_nonzero(mask[z0:z1, y0:y1, x0:x1]) == np.count_nonzero(mask) > 0
    assert (np.count_nonzero(mask != whole) / np.count_nonzero(whole)) < 0.01


def test_a_second_reading_that_disagrees_is_review():
    """The classical contour and the network's of the same bone: below ``reading_dice`` one of them is wrong."""
    checks = {"shape": {}, "second_reading": {"reader": "net", "dice_with_network": 0.64}}
    v = qc.verdict(checks, {})
    assert any("disagree on the same bone (Dice 0.64)" in r for r in v["reasons"]), v["reasons"]
    checks["second_reading"]["dice_with_network"] = 0.93
    assert not any("disagree" in r for r in qc.verdict(checks, {})["reasons"])


def test_a_second_reading_of_another_d100_is_review():
    """Contours that agree in Dice (0.93) can still read D100s far apart: a voxel wide of the bone all round
    takes soft tissue in. More than ``reading_d100_mg`` apart, one of them is off by more than half of it."""
    lim = qc.LIMITS.reading_d100_mg
    checks = {"shape": {}, "second_reading": {"reader": "net", "dice_with_network": 0.93}}
    for diff, flagged in ((-(lim + 1.0), True), (lim + 1.0, True), (lim - 1.0, False), (0.0, False)):
        checks["second_reading"]["d100_difference_mg_ha_cm3"] = diff
        reasons = qc.verdict(checks, {})["reasons"]
        assert any("differs from the network's reading" in r for r in reasons) == flagged, (diff, reasons)
    checks["second_reading"]["d100_difference_mg_ha_cm3"] = -21.7
    assert any("by -22 mg HA/cm³: one of them is off" in r for r in qc.verdict(checks, {})["reasons"])


def test_a_second_reading_that_fails_leaves_the_classical_result(cases, tmp_path):
    """A damaged reader (its ONNX no longer matches its card) costs the second reading, not the run."""
    import shutil

    from vbmd_rt.runtime import pipeline
    from vbmd_rt.runtime.inference.base import NoNetwork
    from vbmd_rt.runtime.inference.ort_backend import OnnxRuntimeBackend
    from vbmd_rt.runtime.model import default_model_dir

    shutil.copytree(default_model_dir(), tmp_path / "net")
    onnx = tmp_path / "net" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-64] + bytes(64))
    net = load_model(tmp_path / "net")
    backend = NoNetwork((net, OnnxRuntimeBackend(net, "cpu")))
    with backend:
        pipeline.run_scan(cases / "PHANTOM_0000.AIM", tmp_path / "out", load_model("classical"), backend)
    res = json.loads((tmp_path / "out" / "PHANTOM_0000.json").read_text())
    truth = json.loads((cases / "PHANTOM_0000.truth.json").read_text())
    assert abs(res["d100_mg_ha_cm3"] - truth["d100_mg_ha_cm3"]) < 15
    second = res["qc"]["second_reading"]
    assert "dice_with_network" not in second and second["error"].startswith("ModelError"), second
    assert not backend.reader[1].is_active


def test_the_contour_ends_at_the_joint_not_at_a_dip_of_its_cortex():
    """``bone_end`` on the native grid (``tail=None, cup=False``): a noisy cortex that dips for a few slices does
    not end the head (the one-slice rule it replaced ended it at the first slice back up, 63), the phalanx's
    base taken in after the dome still does, and the dome's thin tip is kept."""
    from vbmd_rt.runtime.classical import bone_end

    shaft = np.full(60, 100.0)
    dip = np.concatenate([shaft, [70, 70, 70], shaft])  # 0.25 mm of cortex lost at 82 µm
    assert bone_end(dip, 0.082, tail=None, cup=False) == dip.size
    dome = np.linspace(100, 60, 12)
    phalanx = np.concatenate([shaft, dome, np.full(10, 130.0)])  # the base joins at one slice
    assert bone_end(phalanx, 0.082, tail=None, cup=False) == 72
    held = np.concatenate([shaft, np.full(5, 70.0), np.full(10, 130.0)])  # a flat dome over 0.41 mm, then the base
    assert bone_end(held, 0.082, tail=None, cup=False) == 65
    assert bone_end(np.concatenate([shaft, np.full(3, 70.0), np.full(10, 130.0)]), 0.082, tail=None, cup=False) == 73
    falling = np.concatenate([shaft, [103, 102, 101, 70], shaft])  # a dip after a few falling slices: noise
    assert bone_end(falling, 0.082, tail=None, cup=False) == falling.size
    assert bone_end(falling, 0.49, tail=None, cup=False) == 64  # on the 0.5 mm grid three falling slices do
    tip = np.concatenate([shaft, np.linspace(100, 5, 30), np.zeros(5)])  # a dome to a point
    assert bone_end(tip, 0.082, tail=None, cup=False) == 95
    assert bone_end(tip, 0.082) < 90  # the identification stage's sliver rule would cut it


def test_the_hand_levels_leave_out_a_slice_of_metal_only():
    """``classical.hand_levels``: a slice through a steel ring is left out (its brightest values stand far
    above every bone slice's), and a shaft's thick cortex beside the heads' thin one is no metal."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]

    def hand(cortex: float, metal: float = 0.0) -> np.ndarray:
        s = np.where(np.hypot(yy - 32, xx - 32) < 28, 50.0, -900.0) + rng.normal(0, 10, (64, 64))
        s[np.abs(np.hypot(yy - 32, xx - 24) - 5) < 1.5] = cortex
        if metal:
            s[np.abs(np.hypot(yy - 32, xx - 44) - 5) < 1.0] = metal
        return s

    bones = [hand(1000.0), hand(600.0), hand(1100.0), hand(650.0)]
    want = classical.hand_levels(bones)
    assert want is not None and 900 < want[1] <= 1100
    assert classical.hand_levels([*bones, hand(650.0, metal=5000.0)]) == pytest.approx(want, rel=0.05)


def test_the_classical_outline_lies_on_the_half_level_not_a_voxel_wide(tmp_path):
    """A randomised hand (seed 7000, case 7) whose classical contour was the right bone at Dice 0.95 but a voxel
    wide of it all round: the hysteresis's low threshold took the blurred edge's outer part in, and D100 read 12
    mg HA/cm³ low (soft tissue in), 8.9 from the network's reading of the same bone. ``classical.peel`` sets
    the outline where the smoothed density crosses the half level: the number is right, and QC's second
    reading agrees with it."""
    cases, out = tmp_path / "cases", tmp_path / "out"
    r = cli_here("synth", cases, "--cases", "1", "--start", "7", "--seed", "7000", "--family", "random")
    assert r.returncode == 0, r.stderr
    r = cli_here("run", cases / "PHANTOM_0007.AIM", "-o", out, "-q", "--model", "classical")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "PHANTOM_0007.json").read_text())
    truth = json.loads((cases / "PHANTOM_0007.truth.json").read_text())
    scan = aim.read_aim(cases / "PHANTOM_0007.AIM")
    mine = masks.read_mask_file(out / "PHANTOM_0007_SEG.AIM", scan.header) != 0
    gt = np.asarray(aim.read_aim(cases / "PHANTOM_0007_GT.AIM").data) != 0
    assert measure.dice(mine, gt) > 0.97
    error = res["d100_mg_ha_cm3"] - truth["d100_mg_ha_cm3"]
    diff = res["qc"]["second_reading"]["d100_difference_mg_ha_cm3"]
    assert abs(error) < 3.0 and abs(diff) <= qc.LIMITS.reading_d100_mg, (error, diff)
    assert not any("differs from the network's reading" in x for x in res["qc"]["reasons"]), res["qc"]["reasons"]


SCANCO = Calibration(mu_scaling=8192.0, slope=1603.5, intercept=-391.2)  # an XtremeCT's density equation


def _blurred_disc(radius_vox: float, blur_vox: float, n: int = 64, slices: int = 3, noise: float = 0.0, cy=32, cx=32):
    """Slices of a bone's cross-section: a disc of cortex (1000 mg HA/cm³) in soft tissue (100), blurred, with
    seeded noise, in the stored units of ``SCANCO``."""
    import cv2

    yy, xx = np.mgrid[:n, :n]
    disc = (np.hypot(yy - cy, xx - cx) <= radius_vox).astype(np.float32)
    mg = 100.0 + 900.0 * cv2.GaussianBlur(disc, (0, 0), blur_vox)
    mg = np.repeat(mg[None], slices, axis=0)
    mg += np.random.default_rng(0).normal(0.0, noise, mg.shape).astype(np.float32) if noise else 0.0
    return SCANCO.stored(mg).astype(np.float32), disc.astype(bool)


def _discs(radii, n=64, cy=32, cx=32):
    yy, xx = np.mgrid[:n, :n]
    return np.stack([np.hypot(yy - cy, xx - cx) <= r for r in radii]).astype(np.uint8)


def _peel(mask, data, px=0.082, box=(slice(0, 64), slice(0, 64))):
    return classical.peel(mask, data, SCANCO, 550.0, px, slice(0, mask.shape[0]), *box)


def test_peel_sets_the_outline_on_the_half_level_and_no_deeper_than_a_grid_voxel():
    """Blurred discs drawn one, two and four voxels wide at 82 µm, in a Scanco density equation: the level is
    550 mg HA/cm³, half-way from the soft tissue (100) to the cortex (1000)."""
    import cv2

    data, disc = _blurred_disc(12.0, 1.0)
    grown = _discs((13.0, 14.0, 16.0))
    before = grown.copy()
    removed = _peel(grown, data)
    assert removed == int(before.sum()) - int(grown.sum()) > 0
    for k in (0, 1):  # one and two voxels wide: back on the disc
        assert measure.dice(grown[k], disc) > 0.97, k
    # four voxels wide: PEEL_MM at 82 µm is three 4-neighbour shells, and no more
    three = cv2.erode(before[2], edges._CROSS, iterations=3, borderType=cv2.BORDER_REPLICATE)
    assert np.array_equal(grown[2], three)
    assert np.all(grown[data > SCANCO.stored(700.0)])  # the bone's own voxels stay
    # at 0.246 mm (a voxel of the models' grid): one shell
    wide = _discs((16.0,))
    _peel(wide, data[:1], px=0.246)
    assert np.array_equal(wide[0], cv2.erode(_discs((16.0,))[0], edges._CROSS, borderType=cv2.BORDER_REPLICATE))


def test_peel_keeps_to_its_box_smooths_the_noise_and_leaves_holes_cut_faces_and_small_slices():
    import cv2

    # off centre, in a box that is not square: nothing outside the box changes, and the box is read as it lies
    data, disc = _blurred_disc(8.0, 1.0, cy=20, cx=40)
    grown = _discs((9.0, 9.0, 9.0), cy=20, cx=40)
    grown[:, 50:, :5] = 1  # outside the box, left as it is
    box = (slice(8, 33), slice(28, 53))
    _peel(grown, data, box=box)
    assert np.all(grown[:, 50:, :5] == 1)
    assert all(measure.dice(grown[k][box], disc[box]) > 0.95 for k in range(3))
    # noise (150 mg HA/cm³ sd voxel by voxel) does not decide: the outer ring, dark on average, leaves whole
    noisy, disc = _blurred_disc(12.0, 1.0, noise=150.0)
    grown = _discs((13.0, 13.0, 13.0))
    _peel(grown, noisy)
    assert not np.any(grown & ~_discs((12.5, 12.5, 12.5)))
    # a marrow hole's rim is no outline: a dark marrow (300) inside the cortex keeps its size
    data, _ = _blurred_disc(12.0, 1.0)
    ring = _discs((13.0, 13.0, 13.0))
    marrow, hole = _discs((7.0, 7.0, 7.0)).astype(bool), _discs((4.0, 4.0, 4.0)).astype(bool)
    data[marrow] = SCANCO.stored(300.0)  # dark marrow, round a hole in the mask (a pore the fill left)
    ring[hole] = 0
    _peel(ring, data)
    assert not np.any(ring[hole]) and np.all(ring[marrow & ~hole])
    # a bone cut by the field of view's edge: the cut face is no surface, its dark voxels stay
    cut = np.zeros((1, 64, 64), np.uint8)
    cut[0, 20:44, 0:14] = 1  # a bone's cross-section running off the scan at x = 0
    flat = np.full((1, 64, 64), SCANCO.stored(300.0), np.float32)  # trabecular bone under the level
    flat[0, :, 14:] = SCANCO.stored(100.0)
    _peel(cut, flat)
    assert np.all(cut[0, 23:41, 0:3]), "the cut face was peeled"  # (its top and bottom are surfaces: 3 shells off)
    assert not np.any(cut[0, 20:23]) and np.all(cut[0, 23:41, :11]) and not np.any(cut[0, :, 11:])
    # a dome's last small slice, all outline: left as it is
    tiny = np.zeros((1, 64, 64), np.uint8)
    tiny[0, 10:13, 10:13] = 1
    assert _peel(tiny, np.full((1, 64, 64), SCANCO.stored(100.0), np.float32)) == 0 and tiny.sum() == 9
    del cv2
