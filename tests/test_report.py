"""The run's picture and the HTML report a clinician reads: whole-hand context, histogram and profile,
D100 defined, calibration, version, scan date, QC banner; no patient fields, no network."""

import re

import numpy as np
import pytest

from vbmd_rt.runtime import report
from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.runtime.io.proclog import scan_date

CAL = Calibration(mu_scaling=8192.0, slope=1441.13599, intercept=-356.445007, mu_water=0.2464)


def _hand():
    """Two 'bones' in one slice stack: MC2 (the mask) and another one beside it."""
    data = np.zeros((12, 200, 200), np.int16) + 2300
    yy, xx = np.mgrid[:200, :200]
    for cy, cx in ((100, 50), (100, 150)):
        data[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 400] = 5000
    mask = np.zeros(data.shape, np.uint8)
    mask[2:10][:, (yy - 100) ** 2 + (xx - 50) ** 2 < 400] = 1
    return data, mask


def _result(**kw):
    r = {
        "d100_mg_ha_cm3": 301.234,
        "bone_volume_mm3": 1300.0,
        "mean_slice_area_mm2": 120.0,
        "slices": 8,
        "side": "right",
        "backend": {"name": "onnxruntime-cpu"},
        "model": {"name": "default", "sha256": "ab" * 32, "intended_use": "phantoms only"},
        "calibration": {**CAL.to_dict()},
        "timings_s": {"total": 1.0},
        "scan": {"file": "P1.AIM", "date": "2007-07-30"},
        "warnings": [],
        "vbmd_rt_version": "0.2.0",
    }
    r.update(kw)
    return r


def test_the_picture_starts_with_the_whole_hand_and_mc2_highlighted():
    data, mask = _hand()
    img = report.montage(data, mask, CAL, size=160)
    assert img.shape == (160, 6 * 160, 3)  # context, four axial close-ups, coronal
    context = img[:, :160].astype(int)
    orange = (context[..., 2] > 180) & (context[..., 1] > 100) & (context[..., 0] < 90)
    assert orange.any()
    # MC2 (left bone) is tinted, the other bone (right) is not
    assert orange[:, :80].sum() > 10 * max(1, orange[:, 100:].sum())


def test_details_give_histogram_profile_and_browser_slices():
    data, mask = _hand()
    d = report.details(data, mask, CAL, (0.082, 0.082, 0.082))
    assert sum(d["hist"]["counts"]) == int(mask.sum())  # one density here: every voxel in range
    assert d["hist"]["unit"] == "mg HA/cm³"
    zs = [p[0] for p in d["profile"]]
    assert zs == list(range(2, 10))
    area = d["profile"][0][1]
    assert area == pytest.approx(mask[2].sum() * 0.082**2)
    assert d["profile"][0][2] == pytest.approx(CAL.density(5000), abs=0.01)
    assert d["slices"] and all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png in d["slices"])


@pytest.mark.parametrize("status", ["pass", "review"])
def test_html_has_qc_banner_definition_calibration_version_date_and_charts(status):
    data, mask = _hand()
    extra = report.details(data, mask, CAL, (0.082, 0.082, 0.082))
    reasons = [] if status == "pass" else ["mask touches the scan's edge"]
    page = report.html_report(_result(qc={"status": status, "reasons": reasons}), b"\x89PNG", extra)
    assert f'class="qc {status}"' in page
    if status == "review":
        assert "mask touches the scan&#x27;s edge" in page
    assert "mean calibrated density" in page and "periosteal" in page  # D100 in one sentence
    assert "0.17592 mg HA/cm³ per stored unit" in page and "2007-07-30" in page and "0.2.0" in page
    assert page.count("<svg") == 3 and 'type="range"' in page
    assert not re.search(r"(src|href)=\"https?:", page)  # self-contained: nothing from the network


def test_html_without_qc_or_extra_still_renders():
    page = report.html_report(_result(), b"\x89PNG")
    assert "QC:" not in page and "<svg" not in page and "D100" in page


def test_scan_date_is_the_date_alone_from_the_first_time_line():
    log = (
        "Created by  ISQ_TO_AIM (IPL)\nTime                          30-JUL-2007 14:15:08.59\nTime  01-JAN-2020 00:00\n"
    )
    assert scan_date(log) == "2007-07-30"
    assert scan_date("Patient Name  X\n") is None and scan_date("") is None


# --------------------------------------------------------------------------- issue 21: what a technician needs


def _qc():
    return {
        "status": "pass",
        "reasons": [],
        "baseline": {"dice": 0.95, "d100_difference_mg_ha_cm3": -3.4, "row_end": True},
        "shape": {
            "pieces_fraction": 0.0,
            "shafts": 1,
            "gap_slices": 0,
            "solidity": 0.97,
            "area_jump": 0.06,
            "length_mm": 13.5,
        },
        "limits": {
            "baseline_dice": 0.5,
            "baseline_d100_mg": 40.0,
            "pieces_fraction": 0.1,
            "solidity": 0.85,
            "area_jump": 0.35,
            "length_mm": [4.0, 45.0],
            "d100_mg": [80.0, 650.0],
        },
    }


def test_the_png_says_what_it_is_when_given_the_result():
    data, mask = _hand()
    r = _result(qc={"status": "review", "reasons": ["mask touches the scan's edge"]})
    r["scan"]["element_size_mm"] = [0.082, 0.082, 0.082]
    plain = report.montage(data, mask, CAL, size=160, element_size_mm=(0.082, 0.082, 0.082))
    img = report.montage(data, mask, CAL, size=160, result=r)
    assert img.shape == (160 + report.HEADER_PX, 6 * 160, 3)  # a band on top of the same pictures
    np.testing.assert_array_equal(img[report.HEADER_PX :], plain)
    band = img[: report.HEADER_PX].astype(int)
    assert (band > 200).any()  # text
    orange_text = (band[..., 2] > 200) & (band[..., 1] > 100) & (band[..., 0] < 100)
    assert orange_text.any()  # the review verdict in its colour
    # each panel has a white scale bar along its bottom left
    for p in range(6):
        strip = plain[-14:-8, p * 160 + 8 : p * 160 + 40]
        assert (strip.min(axis=2) > 200).sum() > 20, p


def test_scale_bar_length_matches_the_voxel_size():
    img = np.zeros((100, 200, 3), np.uint8)
    report._scale_bar(img, 10.0)  # 10 px per mm: at most a third of 200 px -> 5 mm = 50 px
    row = img[-12, :, 0]
    assert int((row > 200).sum()) == pytest.approx(48, abs=2)


def test_html_puts_the_phantom_notice_up_front_and_lists_the_checks_of_a_pass():
    data, mask = _hand()
    extra = report.details(data, mask, CAL, (0.082, 0.082, 0.082))
    r = _result(qc=_qc(), model={"name": "default", "sha256": "ab" * 32, "intended_use": "Trained on phantoms"})
    r["scan"]["element_size_mm"] = [0.082, 0.082, 0.082]
    page = report.html_report(r, b"\x89PNG", extra)
    notice = page.index('class="notice"')
    assert notice < page.index("<img") and "Trained on phantoms only." in page
    assert '<p class="note">' not in page
    checks = page.split("<h2>Quality checks</h2>")[1].split("</table>")[0]
    for words in ("classical baseline", "solidity", "MC2 length", "D100 (mg HA/cm³)"):
        assert words in checks
    shafts = next(r for r in checks.split("<tr>") if "shafts side by side" in r)
    assert "<td>1</td>" in shafts, shafts
    assert "&gt;= 0.5" in checks and "4 to 45" in checks
    assert "Voxel size (mm)</th><td>0.082 x 0.082 x 0.082" in page
    assert "intercept -356.445 mg HA/cm³" in page
    assert "<details><summary>Timings (1.0 s in total)" in page


def test_histogram_marks_d100_and_has_a_y_axis():
    svg = report._svg_hist({"counts": [1, 5, 9, 4], "edges": [100, 200, 300, 400, 500], "unit": "mg HA/cm³"}, 301.2)
    assert 'class="d100"' in svg and "D100 301.2" in svg and ">voxels</text>" in svg and ">9</text>" in svg
    x = float(re.search(r'class="d100" x1="([\d.]+)"', svg).group(1))
    assert 58 + 0.5 * (560 - 58 - 34) == pytest.approx(x, abs=2)  # 301.2 is half-way from 100 to 500


def test_profiles_start_at_zero_and_say_proximal_and_distal():
    svg = report._svg_profile([(2, 120.0, 300.0), (3, 118.0, 290.0), (9, 60.0, 310.0)], 2, "mean density", "#000")
    assert "z 2 (proximal)" in svg and "z 9 (distal)" in svg
    assert re.search(r">0</text>", svg)


def test_info_and_report_write_the_calibration_alike():
    text = report.calibration_text(CAL.to_dict(), plain=True)
    assert text.startswith("mg HA/cm3 = 0.17592 x stored value - 356.445") and "intercept -356.445 mg HA/cm3" in text


def test_html_lists_the_identity_agreement_and_second_reading_checks():
    """The checks that decide most verdicts of the one-bone models are in the report's table with limits."""
    data, mask = _hand()
    q = _qc()
    q["identity"] = {"margin": 1.24, "reasons": ["MC2 not clearly identified"]}
    q["agreement"] = {"dice_with_identified_region": 0.83}
    q["second_reading"] = {"reader": "net", "dice_with_network": 0.91}
    q["limits"].update(identity_margin=2.0, region_dice=0.6, reading_dice=0.87)
    page = report.html_report(_result(qc=q), b"\x89PNG", report.details(data, mask, CAL, (0.082, 0.082, 0.082)))
    checks = page.split("<h2>Quality checks</h2>")[1].split("</table>")[0]
    for words, value, limit in (
        ("identity margin", "1.24", "&gt;= 2"),
        ("the identified bone", "0.83", "&gt;= 0.6"),
        ("bundled network on the same bone", "0.91", "&gt;= 0.87"),
    ):
        row = next(r for r in checks.split("<tr>") if words in r)
        assert value in row and limit in row, row


def test_html_lists_the_dome_and_run_on_checks_only_where_the_verdict_asks_them():
    """The end of the mask is judged by its dome's length (``end_taper_mm``) and halving (``end_halving_mm``)
    and, where its last slice holds a quarter or more of the largest cross-section, by whether its last 1 or 2
    mm narrow (``qc.verdict``'s run-on check): all are rows of the table, the last only where the verdict asks
    it."""
    data, mask = _hand()
    extra = report.details(data, mask, CAL, (0.082, 0.082, 0.082))

    def rows(**shape):
        q = _qc()
        q["shape"].update(shape)
        q["limits"].update(end_taper_mm=1.0, run_on_fraction=0.25, end_halving_mm=1.0, end_fraction=0.5)
        page = report.html_report(_result(qc=q), b"\x89PNG", extra)
        return page.split("<h2>Quality checks</h2>")[1].split("</table>")[0].split("<tr>")

    def row(table, words):
        return next((r for r in table if words in r), None)

    runs_on = rows(end_fraction=0.44, end_narrows=False, end_narrows_2mm=False, end_taper_mm=3.5, end_halving_mm=2.2)
    dome = row(runs_on, "dome length")
    assert dome is not None and "<td>3.5</td>" in dome and "&gt;= 1" in dome, dome
    halving = row(runs_on, "dome halving")
    assert halving is not None and "<td>2.2</td>" in halving and "&gt;= 1" in halving, halving
    shaft = row(runs_on, "narrows over its last 1 or 2 mm")
    assert shaft is not None and "<td>no</td>" in shaft and "<td>yes</td>" in shaft and "25%" in shaft, shaft
    for narrow in ({"end_narrows": True}, {"end_narrows_2mm": True}):
        table = rows(end_fraction=0.44, **{"end_narrows": False, "end_narrows_2mm": False, **narrow})
        assert "<td>yes</td><td>yes</td>" in row(table, "narrows over its last 1 or 2 mm").replace("\n", "")
    wide = rows(end_fraction=0.6, end_narrows=False, end_narrows_2mm=False)  # the verdict's reason: an abrupt end
    assert row(wide, "narrows over its last 1 or 2 mm") is None
    thin = rows(end_fraction=0.12, end_narrows=False, end_narrows_2mm=False, end_taper_mm=2.0)
    assert row(thin, "narrows over its last 1 or 2 mm") is None  # a dome's tip: the verdict does not ask
    assert row(rows(), "narrows over its last 1 or 2 mm") is None  # no end recorded (the stack's last slice)
