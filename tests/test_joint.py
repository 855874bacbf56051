"""The joint beyond MC2's head: a mask that ran on into the phalanx's base is ended at the joint."""

import numpy as np
import pytest

from vbmd_rt.runtime import bonewin
from vbmd_rt.runtime.pipeline import cut_native, trim_at_joint
from vbmd_rt.runtime.postprocess import joint_end

MM = 0.246  # model slices


def _profile(*parts):
    return np.concatenate([np.asarray(p, dtype=float) for p in parts])


SHAFT_HEAD = np.linspace(100, 140, 30)  # shaft into the head
DOME = np.linspace(140, 90, 16)  # the dome shrinks over 4 mm
CUP = np.full(30, 135.0)  # the phalanx's base, cupping the dome: the mask grows again


def test_a_mask_that_takes_in_the_phalanx_cup_ends_at_the_narrowest_slice():
    end = joint_end(_profile(SHAFT_HEAD, DOME, CUP), MM)
    assert end is not None and abs(end - (SHAFT_HEAD.size + DOME.size)) <= 2


@pytest.mark.parametrize(
    "area",
    [
        _profile(SHAFT_HEAD, DOME, np.linspace(90, 0, 10), np.zeros(10)),  # the dome ends in view: nothing to cut
        _profile(SHAFT_HEAD, np.full(40, 140.0)),  # the joint beyond the stack
        _profile(SHAFT_HEAD, [140, 100, 95, 100, 140], np.full(30, 142.0)),  # a dip of a few slices is no dome
        _profile(SHAFT_HEAD, np.linspace(140, 40, 6), np.full(5, 40.0), np.full(20, 130.0)),  # fell apart, no cup
        np.zeros(30),
        np.zeros(0),
    ],
    ids=["dome-ends", "joint-out-of-view", "short-dip", "fell-apart", "empty", "no-slices"],
)
def test_no_joint_no_cut(area):
    assert joint_end(area, MM) is None


def _disc_volume(radii, shape=(200, 200)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(yy - 100, xx - 100)
    return np.stack([(d < r).astype(np.float32) for r in radii])


def test_trim_zeroes_the_phalanx_in_the_window_only_beyond_the_joint():
    radii = np.sqrt(_profile(SHAFT_HEAD, DOME, CUP) / np.pi) / MM  # discs of those cross-sections (px)
    prob = np.zeros((radii.size + 10, 200, 200), np.float32)
    prob[5 : 5 + radii.size] = _disc_volume(radii) * 0.9
    win = bonewin.Window(20, 20, 5, 5 + radii.size)
    before = prob.copy()
    end = trim_at_joint(prob, win, 0.5, MM)
    assert end is not None and abs(end - (5 + SHAFT_HEAD.size + DOME.size)) <= 2
    assert not prob[end:].any()
    np.testing.assert_array_equal(prob[:end], before[:end])


def test_trim_leaves_a_mask_whose_head_ends_in_view():
    radii = np.sqrt(_profile(SHAFT_HEAD, DOME, np.linspace(90, 0, 10)) / np.pi) / MM
    prob = _disc_volume(radii) * 0.9
    before = prob.copy()
    assert trim_at_joint(prob, bonewin.Window(20, 20, 0, radii.size), 0.5, MM) is None
    np.testing.assert_array_equal(prob, before)


def test_the_classical_mask_is_cut_at_the_native_slices_of_the_joint():
    """Model slice k covers native slices k*s to (k+1)*s: the cut at model slice 10 (s = 3) zeroes native
    slices 30 on, inside the mask's box; a cut beyond the box changes nothing."""
    mask = np.zeros((60, 20, 20), np.uint8)
    box = (5, 50, 2, 18, 3, 17)
    mask[5:50, 2:18, 3:17] = 1
    before = mask.copy()
    assert cut_native(mask, box, 10, 3.0) == 30
    assert not mask[30:].any()
    np.testing.assert_array_equal(mask[:30], before[:30])
    again = before.copy()
    assert cut_native(again, box, 40, 3.0) == 50  # beyond the box: clipped, nothing to zero
    np.testing.assert_array_equal(again, before)
    assert cut_native(again, box, 1, 3.0) == 5  # before the box: the whole box
    assert not again.any()
