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
