"""Cortical and trabecular compartments of MC2 (issue 22): accuracy against the phantoms' true compartments,
82 vs 60.7 µm, the masks `run` and `measure` write, QC, and nothing partial on failure."""

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import phantom_copies
from vbmd_rt.runtime import compartments, qc
from vbmd_rt.runtime.io import aim, masks
from vbmd_rt.synth import phantom

# The targets, given the true periosteal mask.
TB_BMD_MG, CT_BMD_MG, CT_TH_MM = 10.0, 40.0, 0.1


def _measure(scan, mask, p):
    return compartments.analyse(scan, mask, (p.voxel_mm,) * 3, p.cal)


@pytest.fixture(scope="module")
def small_truth(phantoms):
    """The shared small phantoms (246 µm) with their truth JSON, measured on the true periosteal mask."""
    out = []
    for i in range(3):
        scan = aim.read_aim(phantoms / f"PHANTOM_{i:04d}.AIM")
        gt = np.asarray(aim.read_aim(phantoms / f"PHANTOM_{i:04d}_GT.AIM").data) != 0
        truth = json.loads((phantoms / f"PHANTOM_{i:04d}.truth.json").read_text())
        c = compartments.analyse(scan.data, gt, scan.header.element_size_mm[::-1], scan.calibration)
        out.append((c, truth))
    return out


# At 246 µm a 0.35-0.6 mm head cortex is 1.5-2.5 voxels under a 0.25-0.37 mm blur: two targets are missed
# there (they are met at 82 and 60.7 µm, below).
SMALL_MISSES = {
    "tb_bmd_mg_ha_cm3": "at 246 µm Tb.BMD is off by up to 11.8 mg HA/cm3 (PHANTOM_0001 of seed 77), target 10",
    "ct_th_mm": "at 246 µm Ct.Th is off by up to 0.110 mm (PHANTOM_0000 of seed 77), target 0.1",
}


@pytest.mark.parametrize(
    ("key", "limit"),
    [
        pytest.param(
            k, lim, marks=[pytest.mark.xfail(strict=True, reason=SMALL_MISSES[k])] if k in SMALL_MISSES else []
        )
        for k, lim in (("tb_bmd_mg_ha_cm3", TB_BMD_MG), ("ct_bmd_mg_ha_cm3", CT_BMD_MG), ("ct_th_mm", CT_TH_MM))
    ],
)
def test_small_phantoms_meet_the_targets_given_the_true_mask(small_truth, key, limit):
    errors = [c.values[key] - t[key] for c, t in small_truth]
    assert max(abs(e) for e in errors) <= limit, errors


@pytest.fixture(scope="module")
def resolutions():
    """One standard case cut to MC2's neighbourhood, rendered at 82 and at 60.7 µm (the same anatomy in mm),
    with its true compartments and the compartments measured on the true periosteal mask."""
    seed = int(np.random.SeedSequence([8000, 0]).generate_state(1)[0])
    base = phantom.sample_case(seed, "full")
    out: dict = {"scans": {}}
    for vox in (0.082, 0.0607):
        p = phantom.crop_case(base, vox)
        scan, labels = phantom.render_case(p, labels=True)
        truth = phantom.compartment_truth(scan, labels, p)
        out[vox] = (_measure(scan, labels > 0, p), truth, labels, p)
        out["scans"][vox] = scan
    return out


@pytest.mark.parametrize("vox", [0.082, 0.0607])
@pytest.mark.parametrize(
    ("key", "limit"), [("tb_bmd_mg_ha_cm3", TB_BMD_MG), ("ct_bmd_mg_ha_cm3", CT_BMD_MG), ("ct_th_mm", CT_TH_MM)]
)
def test_hr_pqct_resolution_meets_the_targets_given_the_true_mask(resolutions, vox, key, limit):
    c, truth, _, _ = resolutions[vox]
    assert abs(c.values[key] - truth[key]) <= limit, (c.values[key], truth[key])


def test_82_and_60_7_um_scans_of_one_bone_agree(resolutions):
    a, b = resolutions[0.082][0].values, resolutions[0.0607][0].values
    assert abs(a["ct_th_mm"] - b["ct_th_mm"]) <= CT_TH_MM
    assert abs(a["tb_bmd_mg_ha_cm3"] - b["tb_bmd_mg_ha_cm3"]) <= TB_BMD_MG
    assert abs(a["ct_ar_mm2"] - b["ct_ar_mm2"]) / b["ct_ar_mm2"] < 0.15
    assert a["thresholds_mg_ha_cm3"]["cortical"] == pytest.approx(b["thresholds_mg_ha_cm3"]["cortical"], abs=40)


def test_compartments_partition_the_mask_and_follow_the_true_ones(resolutions):
    c, truth, labels, _ = resolutions[0.082]
    sub = labels[c.box]
    inside = sub > 0
    # cortex and trabecular region are the mask, less the outer voxels darker than the periosteal edge
    assert not (c.labels > 0)[~inside].any()
    peeled = np.count_nonzero(inside & (c.labels == 0))
    assert peeled == pytest.approx(c.values["rim_peeled_fraction"] * inside.sum(), abs=1e-4 * inside.sum())
    assert c.values["rim_peeled_fraction"] < 0.01
    v = c.values
    assert v["tt_ar_mm2"] == pytest.approx(v["ct_ar_mm2"] + v["tb_ar_mm2"], abs=0.01)
    for k in (compartments.CORTEX, compartments.TRABECULAR):
        dice = 2 * np.sum((c.labels == k) & (sub == k)) / (np.sum(c.labels == k) + np.sum(sub == k))
        assert dice > (0.9 if k == compartments.CORTEX else 0.97), (k, dice)
    assert v["tb_bv_tv_derived_1200"] == pytest.approx(v["tb_bmd_mg_ha_cm3"] / 1200, abs=1e-4)


@pytest.mark.parametrize("grow", [1, 2])
def test_a_mask_drawn_wide_of_the_bone_is_peeled_back_to_its_edge(resolutions, grow):
    import cv2

    c, truth, labels, p = resolutions[0.082]
    wide = np.stack([cv2.dilate(s, np.ones((3, 3), np.uint8), iterations=grow) for s in (labels > 0).astype(np.uint8)])
    scan = resolutions["scans"][0.082]
    v = compartments.analyse(scan, wide, (p.voxel_mm,) * 3, p.cal).values
    # within the targets for run's own mask (twice those given the true mask)
    assert abs(v["ct_bmd_mg_ha_cm3"] - truth["ct_bmd_mg_ha_cm3"]) <= 2 * CT_BMD_MG
    assert abs(v["ct_th_mm"] - truth["ct_th_mm"]) <= 2 * CT_TH_MM
    assert v["rim_peeled_fraction"] > 0.015 * grow
    off = compartments.Params(peel_mm=0.0)
    unpeeled = compartments.analyse(scan, wide, (p.voxel_mm,) * 3, p.cal, params=off).values
    assert unpeeled["ct_bmd_mg_ha_cm3"] < truth["ct_bmd_mg_ha_cm3"] - 60  # soft tissue in the cortex
    gain = abs(unpeeled["ct_bmd_mg_ha_cm3"] - truth["ct_bmd_mg_ha_cm3"]) - abs(
        v["ct_bmd_mg_ha_cm3"] - truth["ct_bmd_mg_ha_cm3"]
    )
    assert gain > 30


def test_head_and_shaft_split_at_the_neck(resolutions):
    c, truth, _, p = resolutions[0.082]
    v = c.values
    neck_mm = (v["neck_slice"] - truth["compartments"]["neck_slice_generator"]) * p.voxel_mm
    assert abs(neck_mm) < 2.5  # the area's half-way point vs the middle of the generator's transition
    head, shaft = v["head"], v["shaft"]
    assert head["slices"] + shaft["slices"] == v["slices"]
    assert head["tt_ar_mm2"] > shaft["tt_ar_mm2"]  # the head is the wide end
    assert shaft["ct_th_mm"] > head["ct_th_mm"]  # the shaft's cortex is the thick one (the generator's too)
    assert truth["compartments"]["shaft"]["ct_th_mm"] > truth["compartments"]["head"]["ct_th_mm"]


def test_neck_is_none_without_a_head():
    area = np.full(60, 400)
    assert compartments.neck_slice(area, 0.082) is None
    grow = np.concatenate([np.full(30, 400), np.linspace(400, 1200, 10), np.full(20, 1200), np.linspace(1200, 50, 10)])
    neck, distal = compartments.neck_slice(grow, 0.082)
    assert distal and 33 <= neck <= 37
    neck, distal = compartments.neck_slice(grow[::-1], 0.082)
    assert not distal and 33 <= neck <= 37


def test_phantom_truth_records_the_compartments(phantoms):
    t = json.loads((phantoms / "PHANTOM_0000.truth.json").read_text())
    for k in ("ct_bmd_mg_ha_cm3", "tb_bmd_mg_ha_cm3", "ct_th_mm"):
        assert isinstance(t[k], float), k
    c = t["compartments"]
    assert 300 < t["ct_bmd_mg_ha_cm3"] < 1200 and 50 < t["tb_bmd_mg_ha_cm3"] < 400
    # For the standard family's elliptical shells the measured thickness of the true cortex is the one drawn.
    assert t["ct_th_mm"] == pytest.approx(c["ct_th_nominal_mm"], abs=0.05)
    assert c["tt_ar_mm2"] == pytest.approx(t["mean_slice_area_mm2"], abs=0.01)
    assert c["head"]["slices"] + c["shaft"]["slices"] == t["slices"]


def test_truth_labels_leave_the_scan_unchanged():
    p = phantom.sample_case(8003, "small")
    p = replace(p, slices=20)
    scan_a, mask = phantom.render_case(p)
    scan_b, labels = phantom.render_case(p, labels=True)
    assert np.array_equal(scan_a, scan_b)
    assert np.array_equal(mask, (labels > 0).astype(np.uint8)) and set(np.unique(labels)) <= {0, 1, 2}


# --------------------------------------------------------------------------- QC


def _ring(cortex_mg=1000.0, interior_mg=150.0, gap_deg=0.0, solid=False, px=0.082, slices=30):
    """A tube of bone (radius 4 mm, cortex 0.6 mm) with an interior, optionally a gap through its cortex."""
    n = int(round(12 / px))
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2) * px
    ang = np.degrees(np.arctan2(yy - n / 2, xx - n / 2))
    img = np.where(r <= 4.0, cortex_mg if solid else interior_mg, 20.0).astype(np.float32)
    img[(r <= 4.0) & (yy % round(0.5 / px) < 2)] = 800.0 if not solid else cortex_mg  # plates across the interior
    if not solid:
        shell = (r <= 4.0) & (r > 3.4) & ~(np.abs(ang) < gap_deg / 2)
        img[shell] = cortex_mg
    dens = np.repeat(img[None], slices, axis=0)
    mask = np.repeat((r <= 4.0)[None], slices, axis=0).astype(np.uint8)
    return compartments.of_density(dens, mask, (px, px, px))


def test_an_intact_tube_passes_its_compartment_checks():
    c = _ring()
    assert qc.compartment_reasons(qc.compartment_facts(c, (0.082,) * 3)) == []
    assert c.values["ct_th_mm"] == pytest.approx(0.6, abs=0.1)


def test_a_broken_cortex_is_a_review_reason():
    c = _ring(gap_deg=120)
    reasons = qc.compartment_reasons(qc.compartment_facts(c, (0.082,) * 3))
    assert any("cortex is broken" in r for r in reasons), reasons
    # at 246 µm a 0.3 mm cortex is not resolved: its breaks are not judged
    facts = {**qc.compartment_facts(c, (0.082,) * 3), "voxel_mm": 0.246}
    assert not any("broken" in r for r in qc.compartment_reasons(facts))


def test_a_solid_cross_section_is_a_cortex_thicker_than_the_radius():
    reasons = qc.compartment_reasons(qc.compartment_facts(_ring(solid=True), (0.082,) * 3))
    assert any("as thick as the bone's radius" in r for r in reasons), reasons


def test_tb_bv_tv_outside_its_range_is_a_review_reason():
    facts = qc.compartment_facts(_ring(), (0.082,) * 3)
    facts["tb_bv_tv"] = 0.85
    assert any("Tb.BV/TV 0.85" in r for r in qc.compartment_reasons(facts))
    v = qc.verdict({"shape": {"slices": 0}, "compartments": facts}, {})
    assert v["status"] == "review" and any("Tb.BV/TV" in r for r in v["reasons"])
    # at 246 µm a trabecula is under a voxel: thresholded Tb.BV/TV is partial volume, its range not judged
    assert not any("Tb.BV/TV" in r for r in qc.compartment_reasons({**facts, "voxel_mm": 0.246}))


def test_no_calibration_no_compartments():
    assert compartments.analyse(np.zeros((4, 8, 8), np.int16), np.ones((4, 8, 8), np.uint8), (1, 1, 1), None) is None
    assert compartments.of_density(np.zeros((4, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8), (1, 1, 1)) is None


# --------------------------------------------------------------------------- run, measure, files


@pytest.fixture(scope="module")
def run_result(phantoms, tmp_path_factory):
    from vbmd_rt.api import Predictor

    scans = phantom_copies(phantoms, tmp_path_factory.mktemp("cscans"), 1)
    out = tmp_path_factory.mktemp("cout")
    pred = Predictor()
    res = pred.run_to(scans / "PHANTOM_0000.AIM", out)
    return scans, out, res, pred


def test_run_writes_the_compartment_masks_beside_the_seg_mask(run_result):
    scans, out, res, _ = run_result
    comp = res["compartments"]
    for k in compartments.PARAMETERS:
        assert comp[k] is not None and math.isfinite(comp[k]), k
    assert comp["head"] and comp["shaft"]
    hdr = aim.read_header(scans / "PHANTOM_0000.AIM")
    seg = masks.read_mask_file(out / "PHANTOM_0000_SEG.AIM", hdr)
    cort = masks.read_mask_file(out / "PHANTOM_0000_CORT_MASK.AIM", hdr)
    trab = masks.read_mask_file(out / "PHANTOM_0000_TRAB_MASK.AIM", hdr)
    assert not ((cort | trab) & ~seg).any() and not (cort & trab).any()
    assert (cort | trab).sum() == pytest.approx(seg.sum(), rel=0.02)  # all but the peeled rim
    assert int(cort.sum()) == res["mask"]["compartments"]["cort"]["voxels"] > 0
    for name in ("PHANTOM_0000_CORT_MASK.AIM", "PHANTOM_0000_TRAB_MASK.AIM"):
        h = aim.read_header(out / name)
        assert h.type_name == aim.read_header(out / "PHANTOM_0000_SEG.AIM").type_name  # the SEG mask's format
        assert name in res["outputs"]  # in the transaction's manifest


def test_measure_recomputes_the_compartments_from_a_given_mask(run_result, tmp_path):
    from vbmd_rt.runtime import remeasure

    scans, out, res, _ = run_result
    again = remeasure.measure_mask(scans / "PHANTOM_0000.AIM", out / "PHANTOM_0000_SEG.AIM", tmp_path / "m")
    for k in compartments.PARAMETERS:
        assert again["compartments"][k] == res["compartments"][k], k
    assert (tmp_path / "m" / "PHANTOM_0000_CORT_MASK.AIM").is_file()
    # an edited mask (one voxel peeled off the outline) gives other compartments, and its masks
    import cv2

    hdr = aim.read_header(scans / "PHANTOM_0000.AIM")
    seg = masks.read_mask_file(out / "PHANTOM_0000_SEG.AIM", hdr)
    edited = np.stack([cv2.erode(s, np.ones((3, 3), np.uint8)) for s in seg])
    masks.write_mask(tmp_path / "EDIT_SEG.AIM", edited, hdr, "rle")
    e = remeasure.measure_mask(scans / "PHANTOM_0000.AIM", tmp_path / "EDIT_SEG.AIM", tmp_path / "e")
    assert e["compartments"]["tt_ar_mm2"] < res["compartments"]["tt_ar_mm2"]
    assert e["compartments"]["ct_ar_mm2"] < res["compartments"]["ct_ar_mm2"]
    cort = masks.read_mask_file(tmp_path / "e" / "PHANTOM_0000_CORT_MASK.AIM", hdr)
    assert not (cort & ~edited.astype(bool)).any()


def test_summary_and_eval_report_the_compartments(run_result, tmp_path):
    from vbmd_rt.cohort import batch
    from vbmd_rt.evaluation import evaluate

    scans, out, res, _ = run_result
    row = batch.row(scans / "PHANTOM_0000.AIM", "done", res)
    assert row["ct_bmd_mg_ha_cm3"] == res["compartments"]["ct_bmd_mg_ha_cm3"]
    assert row["head_tb_bmd_mg_ha_cm3"] == res["compartments"]["head"]["tb_bmd_mg_ha_cm3"]
    assert {"ct_th_mm", "tb_bv_tv_derived_1200", "shaft_ct_po"} <= set(batch.ROW_FIELDS)
    rep = evaluate.evaluate_outputs(out, scans)
    got = rep["compartments"]["tb_bmd_mg_ha_cm3"]
    assert got["n"] == 1 and got["max_abs_error"] < 2 * TB_BMD_MG  # the run's own mask: twice the target
    assert "| ct_th_mm | 1 |" in evaluate.markdown(rep)


def test_cohort_summary_csv_has_the_compartment_columns(run_result, tmp_path):
    from vbmd_rt.cohort import batch

    scans, out, res, _ = run_result
    rows = [batch.row(scans / "PHANTOM_0000.AIM", "done", res)]
    path = tmp_path / "summary.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=batch.ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    got = next(csv.DictReader(open(path)))
    assert float(got["tb_bmd_mg_ha_cm3"]) == res["compartments"]["tb_bmd_mg_ha_cm3"]


def test_a_failure_while_writing_a_compartment_mask_leaves_nothing(run_result, tmp_path, monkeypatch):
    from vbmd_rt.runtime import pipeline

    scans, _, _, pred = run_result
    real = masks.write_mask

    def failing(path, *a, **k):
        if str(path).endswith("_TRAB_MASK.AIM"):
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(masks, "write_mask", failing)
    out = tmp_path / "o"
    with pytest.raises(OSError):
        pipeline.run_scan(scans / "PHANTOM_0000.AIM", out, pred.model, pred.backend)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
