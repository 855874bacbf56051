"""`vbmd-rt eval`: each metric and statistic against scipy or hand-computed values, then end to end."""

import json

import numpy as np
import pytest
from scipy import spatial, stats

from tests.conftest import cli_here
from vbmd_rt.evaluation import metrics
from vbmd_rt.runtime import measure
from vbmd_rt.runtime.io import aim


def test_overlap_by_hand():
    p = np.zeros((2, 4, 4), np.uint8)
    t = np.zeros_like(p)
    p[0, :2, :2] = 1  # 4 voxels
    t[0, :2, 1:3] = 1  # 4 voxels, 2 shared
    o = metrics.overlap(p, t)
    assert (o["tp"], o["fp"], o["fn"]) == (2, 2, 2)
    assert o["dice"] == pytest.approx(0.5) and o["iou"] == pytest.approx(2 / 6)
    assert o["accuracy"] == pytest.approx(28 / 32)
    assert o["dice"] == pytest.approx(measure.dice(p, t))


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(3)
    truth = rng.random((3, 20, 20)) < 0.3
    score = np.clip(np.rint(np.where(truth, 60, 40) + rng.normal(0, 15, truth.shape)), 0, 100).astype(np.uint8)
    u = stats.mannwhitneyu(score[truth], score[~truth]).statistic
    assert metrics.auc_from_levels(score, truth) == pytest.approx(u / (truth.sum() * (~truth).sum()), abs=1e-12)
    assert metrics.auc_from_levels(truth.astype(np.uint8) * 100, truth) == 1.0
    assert metrics.auc_from_levels(score, np.zeros_like(truth)) is None


def _brute_hd95(p, t, spacing):
    def surf(m):
        return np.argwhere(metrics._surface(m)) * np.asarray(spacing)

    d = spatial.distance.cdist(surf(p), surf(t))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hd95_against_brute_force():
    zz, yy, xx = np.mgrid[:16, :24, :24]
    a = (zz - 8) ** 2 + (yy - 12) ** 2 + (xx - 11) ** 2 < 36
    b = ((zz - 8) ** 2 + (yy - 12) ** 2 + (xx - 13) ** 2 < 30) | ((zz == 8) & (yy == 12) & (xx > 12) & (xx < 22))
    spacing = (0.5, 0.25, 0.25)
    assert metrics.hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing))
    assert metrics.hd95(a, a, spacing) == 0.0
    assert metrics.hd95(a, np.zeros_like(a), spacing) is None


def test_icc_against_shrout_fleiss():
    # Shrout & Fleiss (1979), Table 2: six targets rated by four judges.
    x = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    r = metrics.icc(x)
    assert r["icc_a1"] == pytest.approx(0.29, abs=0.005)  # ICC(2,1)
    assert r["icc_c1"] == pytest.approx(0.71, abs=0.005)  # ICC(3,1)
    # 95% CIs as pingouin and R's irr give them for Shrout & Fleiss' table
    assert r["icc_a1_ci95"] == pytest.approx([0.02, 0.76], abs=0.005)
    assert r["icc_c1_ci95"] == pytest.approx([0.34, 0.95], abs=0.005)


def test_agreement_by_hand():
    truth = np.array([250.0, 300.0, 280.0, 200.0, 350.0, 310.0])
    pred = truth - 12 + np.array([1.0, -2.0, 0.5, 3.0, -1.5, -1.0])
    a = metrics.agreement(pred, truth)
    diff = pred - truth
    assert a["bland_altman"]["bias"] == pytest.approx(diff.mean())
    assert a["bland_altman"]["loa_high"] - a["bland_altman"]["loa_low"] == pytest.approx(2 * 1.96 * diff.std(ddof=1))
    assert a["pearson_r"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])
    assert a["spearman_rho"] == pytest.approx(1.0)  # the ranks are kept
    assert a["icc_c1"] > a["icc_a1"]  # a 12 mg bias costs absolute agreement, not consistency


@pytest.fixture(scope="module")
def evaluated(phantoms, tmp_path_factory):
    d = phantoms  # the session's phantoms, with their true masks and truth (read only)
    pred = tmp_path_factory.mktemp("pred")
    r = cli_here("run", d, "-o", pred, "--save-prob", "-q")
    assert r.returncode == 0, r.stderr
    rep = tmp_path_factory.mktemp("report")
    r = cli_here("eval", "--pred", pred, "--truth", d, "-o", rep)
    assert r.returncode == 0, r.stderr
    return d, pred, rep, r.stdout


def test_eval_end_to_end(evaluated):
    d, pred, rep, stdout = evaluated
    report = json.loads((rep / "eval.json").read_text())
    assert len(report["cases"]) == 3 and "| IoU | Dice |" in stdout
    for c in report["cases"]:  # the report's Dice is the mask's Dice at native resolution
        truth = aim.read_aim(d / f"{c['name']}_GT.AIM").data
        mask = aim.read_aim(pred / f"{c['name']}_SEG.AIM").data
        assert c["dice"] == pytest.approx(measure.dice(mask, truth))
        assert 0.5 < c["auc"] <= 1.0 and c["hd95_mm"] >= 0
        true_d100 = json.loads((d / f"{c['name']}.truth.json").read_text())["d100_mg_ha_cm3"]
        assert c["d100_true"] == pytest.approx(true_d100)
    assert report["d100"]["n"] == 3 and "ICC(A,1)" in report["d100"]["icc_form"]
    for f in ("eval.md", "cases.csv", "d100_scatter.png", "bland_altman.png"):
        assert (rep / f).stat().st_size > 0
    assert (rep / "bland_altman.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_with_nothing_to_compare(evaluated, tmp_path):
    d, _, _, _ = evaluated
    r = cli_here("eval", "--pred", tmp_path, "--truth", d, "-o", tmp_path / "rep")
    assert r.returncode == 2 and "no results" in r.stderr and "Traceback" not in r.stderr


def test_spearman_p_is_exact_at_small_n():
    import itertools

    # n = 5 in the same order: exactly 2 of the 120 orderings are as extreme (rho = +1 or -1)
    r = metrics.spearman([1.0, 2, 3, 4, 5], [2.0, 3, 4, 5, 7])
    assert r["rho"] == pytest.approx(1.0) and r["p"] == pytest.approx(2 / 120) and "exact" in r["p_method"]
    from scipy import stats

    rng = np.random.default_rng(1)
    a, b = rng.random(6), rng.random(6)
    rho = stats.spearmanr(a, b).statistic
    null = [stats.spearmanr(a, b[list(p)]).statistic for p in itertools.permutations(range(6))]  # by brute force
    assert metrics.spearman(a, b)["p"] == pytest.approx(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    assert metrics.spearman(np.arange(12.0), np.arange(12.0) ** 2)["p_method"] == "t approximation"


def test_bland_altman_limits_have_confidence_intervals():
    rng = np.random.default_rng(2)
    b = rng.normal(280, 40, 30)
    a = b - 5 + rng.normal(0, 3, 30)
    ba = metrics.bland_altman(a, b)
    for key in ("bias", "loa_low", "loa_high"):
        lo, hi = ba[f"{key}_ci95"]
        assert lo < ba[key] < hi
    # Bland & Altman 1999: the limits' CIs are sqrt(3) times as wide as the bias's
    width = lambda k: ba[f"{k}_ci95"][1] - ba[f"{k}_ci95"][0]  # noqa: E731
    assert width("loa_low") == pytest.approx(np.sqrt(3) * width("bias"))


def test_robustness_eval_reports_where_the_mask_ends_against_the_truth():
    """A mask cut through the head ends short of the truth and wide; the evaluation says by how much."""
    from tests.test_identify import _script

    ev = _script("robustness_eval")
    yy, xx = np.mgrid[:40, :40]
    disc = [(np.hypot(yy - 20, xx - 20) < r) for r in (12, 12, 11, 10, 8, 6, 3)]
    gt = np.zeros((10, 40, 40), bool)
    gt[: len(disc)] = disc
    cut = gt.copy()
    cut[4:] = False  # ends 3 slices early, its last slice 10/12 of the largest radius
    out = ev.distal_end(cut, gt, 0.25)
    assert out["end_error_mm"] == -0.75
    assert out["end_fraction"] == round(float(disc[3].sum() / disc[0].sum()), 3)
    assert ev.distal_end(gt, gt, 0.25)["end_error_mm"] == 0.0
    assert out["end_taper_mm"] == 0.5  # 0.9 of the largest cross-section two slices before its last
    assert ev.distal_end(gt, gt, 0.25)["end_taper_mm"] == 1.25  # the whole dome: five
    none = {"end_error_mm": None, "end_fraction": None, "end_taper_mm": None}
    assert ev.distal_end(np.zeros_like(gt), gt, 0.25) == none
    rows = [
        {"dice": 0.95, "end_error_mm": -0.75, "d100_error": 1.0, "qc": "pass", "seconds": 1.0, "qc_seconds": 0.1},
        {"dice": 0.97, "end_error_mm": 1.5, "d100_error": 1.0, "qc": "pass", "seconds": 1.0, "qc_seconds": 0.1},
        {"dice": 0.0, "end_error_mm": -9.0, "d100_error": 30.0, "qc": "review", "seconds": 1.0, "qc_seconds": 0.1},
    ]
    ends = ev.summary(rows)["end_error_mm_right_bone"]  # another bone's end says nothing about the joint
    assert ends == {"median": 0.38, "over_1mm_short": 0, "over_1mm_long": 1}


def test_robustness_eval_checks_issue_19s_bars():
    """``done_when``: each bar measured on the rows, met or not; None where no case says."""
    from tests.test_identify import _script

    ev = _script("robustness_eval")

    def row(dice, qc, err=1.0, family="random"):
        return {"dice": dice, "qc": qc, "d100_error": err, "family": family, "end_error_mm": 0.0}

    rows = [row(0.97, "pass"), row(0.96, "pass"), row(0.92, "review"), row(0.85, "review"), row(0.0, "review", 40.0)]
    for r in rows:
        r.update(seconds=1.0, qc_seconds=0.1)
    bars = {b["measure"]: b for b in ev.done_when(rows)}
    assert bars["dice_mean"]["value"] == pytest.approx(0.74) and bars["dice_mean"]["met"] is False
    assert bars["right_bone_fraction"]["value"] == 0.8 and bars["right_bone_fraction"]["met"] is False
    assert bars["wrong_bones_passing"]["value"] == 0 and bars["wrong_bones_passing"]["met"] is True
    assert bars["bad_passing"]["value"] == 0 and bars["bad_passing"]["met"] is True
    g = bars["good_flagged_fraction"]
    assert g["value"] == pytest.approx(0.3333, abs=1e-4) and g["met"] is False  # <= 0.10
    assert bars["d100_max_abs_error"]["value"] == 40.0 and bars["d100_max_abs_error"]["met"] is False  # <= 5
    assert bars["standard_dice_min"]["value"] is None and bars["standard_dice_min"]["met"] is None
    rows[3]["qc"] = rows[4]["qc"] = "pass"  # a bad result and a wrong bone that pass
    rows[0]["wrong_bone_qc"] = "pass"  # and the neighbour's mask measured as MC2 (--wrong-bone)
    bars = {b["measure"]: b for b in ev.done_when(rows)}
    assert bars["bad_passing"]["value"] == 2 and bars["bad_passing"]["met"] is False
    assert bars["wrong_bones_passing"]["value"] == 2 and bars["wrong_bones_passing"]["met"] is False
    good = [row(0.99, "pass", family="standard") for _ in range(3)]
    for r in good:
        r.update(seconds=1.0, qc_seconds=0.1)
    bars = {b["measure"]: b for b in ev.done_when(good)}
    assert bars["bad_passing"]["value"] is None and bars["good_flagged_fraction"]["met"] is True
    assert bars["standard_dice_min"]["value"] == 0.99 and bars["standard_dice_min"]["met"] is True
    rep = {"done_when": {"f": ev.done_when(rows)}}
    table = ev.done_when_table(rep).splitlines()
    assert len(table) == 2 and table[1].startswith("f | 0.74 -") and " . " in table[1]


def test_robustness_eval_splits_the_d100_error_into_excess_and_misses():
    """A mask one ring too wide reads high where that ring is dense (a blurred cortex, a neighbour's bone) and
    low where it is soft tissue; one that misses the cortex reads low. The two parts add up to the error."""
    from tests.test_identify import _script
    from vbmd_rt.runtime.io.calibration import Calibration

    ev = _script("robustness_eval")
    cal = Calibration(mu_scaling=2.0, slope=4.0, intercept=-10.0)  # density = 2 * stored - 10
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    gt = np.broadcast_to(r < 10, (6, 40, 40)).copy()
    cortex = (r >= 8) & (r < 10)
    stored = np.where(cortex, 400.0, np.where(r < 8, 100.0, 20.0)).astype(np.float32)
    stored = np.broadcast_to(stored, gt.shape).copy()
    density = 2.0 * stored - 10.0
    truth = float(density[gt].mean())

    def d100(mask):
        return float(density[mask].mean()) - truth

    wide = np.broadcast_to(r < 11, gt.shape).copy()  # one ring of soft tissue too many
    out = ev.boundary_errors(wide, gt, stored, cal)
    assert out["missed_fraction"] == 0.0 and out["d100_error_missed"] == 0.0
    assert out["excess_fraction"] == round(float((wide & ~gt).sum() / gt.sum()), 4) > 0
    assert out["d100_error_excess"] == pytest.approx(d100(wide), abs=0.01) and out["d100_error_excess"] < 0
    stored_dense = stored.copy()
    stored_dense[wide & ~gt] = 400.0  # the same ring, dense: the mask took in bone outside the truth
    assert ev.boundary_errors(wide, gt, stored_dense, cal)["d100_error_excess"] > 0
    inner = np.broadcast_to(r < 8, gt.shape).copy()  # the cortex missed
    out = ev.boundary_errors(inner, gt, stored, cal)
    assert out["excess_fraction"] == 0.0 and out["d100_error_missed"] == pytest.approx(d100(inner), abs=0.01)
    assert out["d100_error_missed"] < 0
    both = wide.copy()
    both[:, 19:21, 19:22] = False  # too wide and a small hole: the parts add up to about the whole error
    out = ev.boundary_errors(both, gt, stored, cal)
    assert out["d100_error_excess"] + out["d100_error_missed"] == pytest.approx(d100(both), rel=0.05)
    assert ev.boundary_errors(np.zeros_like(gt), gt, stored, cal)["excess_fraction"] is None  # another bone
    assert ev.boundary_errors(wide, gt, stored, None)["d100_error_excess"] is None  # no calibration
    rows = [
        {"dice": 0.95, **ev.boundary_errors(wide, gt, stored_dense, cal)},
        {"dice": 0.96, **ev.boundary_errors(inner, gt, stored, cal)},
        {"dice": 0.0, "excess_fraction": None, "missed_fraction": None, "d100_error_excess": None},
    ]
    s = ev._boundary_summary([x for x in rows if x["dice"] >= 0.3])
    assert s["d100_error_excess_over_5"] == int(abs(rows[0]["d100_error_excess"]) > 5)
    assert s["missed_fraction_median"] == pytest.approx(
        np.median([rows[0]["missed_fraction"], rows[1]["missed_fraction"]])
    )


def test_robustness_eval_renders_cases_one_at_a_time_and_deletes_them(tmp_path, monkeypatch):
    """``--render``: each case is made, evaluated as a case of the named folder with the real model, and deleted
    before the next is made (a full-size case is 2-6 GB of disk)."""
    import tempfile

    import vbmd_rt
    from tests.test_identify import _script

    ev = _script("robustness_eval")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def log(line):  # while a case is evaluated, it is the only one on disk
        seen.append(sorted(p.name for p in tmp_path.rglob("*.AIM")))

    with vbmd_rt.Predictor() as predictor:
        rows = ev.render_and_evaluate(predictor, "std", "standard", 2, 11, "small", 1, log)
    assert [(r["folder"], r["case"]) for r in rows] == [("std", "PHANTOM_0000"), ("std", "PHANTOM_0001")]
    assert seen == [["PHANTOM_0000.AIM", "PHANTOM_0000_GT.AIM"], ["PHANTOM_0001.AIM", "PHANTOM_0001_GT.AIM"]]
    assert all(r["dice"] > 0.95 for r in rows) and "wrong_bone_qc" in rows[0] and "wrong_bone_qc" not in rows[1]
    assert not any(tmp_path.iterdir())  # nothing left behind
    refused: list = []  # a scan the memory check refuses is listed, not measured, and the rest go on
    with vbmd_rt.Predictor(max_memory=1 << 20) as small:
        assert ev.render_and_evaluate(small, "std", "standard", 1, 11, "small", 0, log, refused) == []
    assert [(r["folder"], r["case"]) for r in refused] == [("std", "PHANTOM_0000")]
    assert "memory" in refused[0]["reason"] and not any(tmp_path.iterdir())
    monkeypatch.setattr(
        "sys.argv", ["robustness_eval.py", str(tmp_path), "--render", tmp_path.name, "standard", "1", "1", "-o", "x"]
    )
    with pytest.raises(SystemExit) as exc:  # two folders of one name: their summaries would be one
        ev.main()
    assert exc.value.code == 2
