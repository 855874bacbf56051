"""The HTML report and the PNG as a person sees them: a real browser (headless Chromium) renders the page
of a run, and the screenshot shows the QC banner, the phantom-only notice and the PNG's band in the first
screenful. Skips where no Chromium is installed (`apt-get install chromium`)."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from .conftest import cli_here, tiny_scan

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")


def _screenshot(html_path, png_path, width=1400, height=1100):
    r = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and png_path.is_file(), r.stderr[-2000:]
    return cv2.imread(str(png_path))


def _share(img, bgr, tol=12) -> float:
    return float(np.all(np.abs(img.astype(int) - np.array(bgr)) <= tol, axis=2).mean())


def test_the_report_of_a_run_shows_verdict_notice_and_picture_in_a_browser(phantoms, tmp_path):
    (tmp_path / "in").mkdir()
    scan = tiny_scan(phantoms / "PHANTOM_0000.AIM", tmp_path / "in" / "T.AIM", slices=40, factor=2)
    out = tmp_path / "out"
    r = cli_here("run", scan, "-o", out, "--report", "html", "-q")
    assert r.returncode == 0, r.stderr
    shot = _screenshot(out / "T.html", tmp_path / "shot.png")
    top = shot[:700]
    # the QC banner (green pass or amber review) and the notice (its light amber box) are in the first screenful
    assert _share(top, (216, 240, 216)) + _share(top, (181, 227, 251)) > 0.002  # .pass / .review backgrounds
    assert _share(top, (214, 244, 255)) > 0.002  # .notice background #fff4d6 (BGR)
    # the PNG's band (grey 32) is shown
    assert _share(top, (32, 32, 32), tol=3) > 0.01


def test_the_png_alone_carries_its_band(phantoms, tmp_path):
    (tmp_path / "in").mkdir()
    scan = tiny_scan(phantoms / "PHANTOM_0000.AIM", tmp_path / "in" / "T.AIM", slices=40, factor=2)
    out = tmp_path / "out"
    assert cli_here("run", scan, "-o", out, "--model", "classical", "-q").returncode == 0
    page = tmp_path / "png.html"
    page.write_text(f'<html><body style="margin:0"><img src="{(out / "T.png").as_uri()}"></body></html>')
    shot = _screenshot(page, tmp_path / "shot.png", width=1920, height=400)
    png = cv2.imread(str(out / "T.png"))
    np.testing.assert_allclose(shot[: png.shape[0], : png.shape[1]].mean(), png.mean(), atol=3)
    assert _share(shot[:58], (32, 32, 32), tol=3) > 0.5  # the band: scan name, D100, QC
