"""A hand holder's shell or a cast closed round the hand is no bone (``identify.shells``)."""

import dataclasses
import json

import cv2
import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import cli_here
from vbmd_rt.runtime import identify
from vbmd_rt.runtime.io import aim

MM = 0.5  # the coarse grid's voxel


def _ring(shape, centre, axes_px, thick_px) -> np.ndarray:
    """A filled ellipse minus one ``thick_px`` smaller: a closed ring (bool, 2D)."""
    out = np.zeros(shape, np.uint8)
    inner = np.zeros(shape, np.uint8)
    c = (int(centre[1]), int(centre[0]))
    cv2.ellipse(out, c, (int(axes_px[1]), int(axes_px[0])), 0, 0, 360, 1, -1)
    cv2.ellipse(inner, c, (int(axes_px[1] - thick_px), int(axes_px[0] - thick_px)), 0, 0, 360, 1, -1)
    return (out > 0) & ~(inner > 0)


def test_a_shell_round_the_hand_is_marked_and_the_bones_inside_it_are_not():
    shape = (10, 160, 200)
    rows = np.zeros(shape, bool)
    heads = np.zeros(shape, bool)
    for cx in (50, 80, 110, 140):  # four cortex rings of 16 mm (their marrow about 160 mm²), two touching
        ring = _ring(shape[1:], (80, cx if cx != 140 else 126), (16, 16), 2)
        heads[:] |= ring
    shell = _ring(shape[1:], (80, 100), (70, 95), 4)  # 70 x 95 mm round them, 2 mm thick
    rows[:] = heads | shell
    labels, _ = ndimage.label(rows, structure=np.ones((3, 3, 3), bool))
    found = identify.shells(labels, MM)
    assert found[:, shell].all()
    assert not found[:, heads[0]].any()


def test_touching_heads_are_no_shell_though_their_marrows_add_up():
    shape = (10, 160, 200)
    bones = np.zeros(shape, bool)
    for i, cx in enumerate((34, 66, 98, 130, 162)):  # a row of touching heads along an arch, 17 mm wide
        bones[:] |= _ring(shape[1:], (60 + 12 * abs(i - 2), cx), (17, 17), 2)
    bones[:, 60:140, 96:100] = True  # and a phalanx's cortex across: the piece spans over 30 mm both ways
    labels, n = ndimage.label(bones, structure=np.ones((3, 3, 3), bool))
    assert n == 1
    holes = ndimage.binary_fill_holes(bones[0]) & ~bones[0]
    assert holes.sum() * MM * MM > identify.SHELL_ENCLOSED_MM2  # all the marrows together: over the limit
    assert not identify.shells(labels, MM).any()


@pytest.fixture(scope="module")
def in_holder(phantoms, tmp_path_factory):
    """PHANTOM_0000 inside a closed elliptical shell 2 mm thick, 600 mg HA/cm³ (a glass-fibre cast), in
    every slice, clear of the hand."""
    d = tmp_path_factory.mktemp("holder")
    s = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    m, b = s.calibration.density_equation()
    den = np.asarray(s.data, np.float32) * m + b
    vox = float(s.spacing_zyx[1])
    hand = ndimage.binary_fill_holes(cv2.GaussianBlur(den.mean(axis=0), (0, 0), 4) > -150)
    ys, xs = np.nonzero(hand)
    centre = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2)
    axes = ((ys.max() - ys.min()) / 2 * 1.42 + 8, (xs.max() - xs.min()) / 2 * 1.42 + 8)
    assert centre[0] - axes[0] > 0 and centre[0] + axes[0] < den.shape[1], "the shell must fit in the image"
    assert centre[1] - axes[1] > 0 and centre[1] + axes[1] < den.shape[2], "the shell must fit in the image"
    shell = _ring(den.shape[1:], centre, axes, 2.0 / vox)
    assert not (shell & hand).any()
    rng = np.random.default_rng(5)
    data = np.array(s.data)
    for k in range(data.shape[0]):
        data[k][shell] = np.rint((600.0 + rng.normal(0, 60, int(shell.sum())) - b) / m).astype(data.dtype)
    aim.write_aim(d / "held.AIM", data, dataclasses.replace(s.header))
    return d


@pytest.mark.parametrize("model", ["default", "classical"])
def test_a_hand_in_a_dense_holder_is_measured(phantoms, in_holder, tmp_path, model):
    """Both models: the network reads the window over the bone the identification stage found; the classical
    contour thresholds the scan itself and is told where the shell lies (``Identity.shell``)."""
    r = cli_here("run", in_holder / "held.AIM", "-o", tmp_path, "-q", "--model", model)
    assert r.returncode == 0, r.stderr  # before: refused, "holds no metacarpal"
    res = json.loads((tmp_path / "held.json").read_text())
    truth = json.loads((phantoms / "PHANTOM_0000.truth.json").read_text())
    mask = np.asarray(aim.read_aim(tmp_path / "held_SEG.AIM").data) != 0
    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data) != 0
    dice = 2 * (mask & gt).sum() / (mask.sum() + gt.sum())
    assert dice > (0.95 if model == "default" else 0.92)
    assert abs(res["d100_mg_ha_cm3"] - truth["d100_mg_ha_cm3"]) < (5 if model == "default" else 8)
