"""``postprocess.satellites``: a small bone that a neck joins to MC2's mask (a sesamoid beside the head) is
taken off it; a bump without a neck, two condyles and a large body are not."""

import numpy as np
import pytest

from vbmd_rt.runtime import postprocess

SPACING = 0.246  # the one-bone grid's voxel (mm)


def _grid(nz=60, n=120):
    zz, yy, xx = np.mgrid[:nz, :n, :n].astype(np.float32) * SPACING
    return zz, yy, xx


def _bone(nz=60, n=120, radius_mm=5.0):
    """MC2 as a cylinder of ``radius_mm`` along z, centred in the slice."""
    zz, yy, xx = _grid(nz, n)
    c = n * SPACING / 2
    return np.hypot(yy - c, xx - c) < radius_mm


def _ball(centre_mm, radius_mm, nz=60, n=120):
    zz, yy, xx = _grid(nz, n)
    z, y, x = centre_mm
    return (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < radius_mm**2


def test_a_sesamoid_held_by_a_neck_is_taken_off():
    """A ball of 2.2 mm radius, 0.8 mm off the bone's surface, bridged to it by a 0.7 mm neck (a blurred joint
    space): its voxels leave the mask, the bone's stay, and the record says how much and where."""
    c = 120 * SPACING / 2
    bone = _bone()
    ball = _ball((7.0, c + 5.0 + 0.8 + 2.2, c), 2.2)
    zz, yy, xx = _grid()
    neck = (np.abs(xx - c) < 0.35) & (yy > c + 4.5) & (yy < c + 6.5) & (np.abs(zz - 7.0) < 1.0)
    mask = bone | ball | neck
    gone, bodies = postprocess.satellites(mask, SPACING)
    assert len(bodies) == 1
    assert (gone & ball).sum() >= 0.9 * ball.sum()  # its poles too, which show no neck
    assert not (gone & bone).any()
    assert 30 <= bodies[0]["volume_mm3"] <= 60  # the ball is 44.6 mm³
    z0, z1 = bodies[0]["slices"]
    assert z0 * SPACING < 7.0 - 1.5 and z1 * SPACING > 7.0 + 1.5


def test_a_sesamoid_on_a_wide_neck_is_taken_off():
    """A neck 3.4 mm wide under a ball 4.4 mm across (a sesamoid lying close, blurred into the head): cut where
    the neck is under 0.9 of the ball's depth (``SATELLITE_NECK``; touching shafts are cut under 0.75)."""
    c = 120 * SPACING / 2
    bone = _bone()
    ball = _ball((7.0, c + 5.0 + 0.8 + 2.2, c), 2.2)
    zz, yy, xx = _grid()
    neck = (np.abs(xx - c) < 1.7) & (yy > c + 4.5) & (yy < c + 6.5) & (np.abs(zz - 7.0) < 1.0)
    gone, bodies = postprocess.satellites(bone | ball | neck, SPACING)
    assert len(bodies) == 1 and (gone & ball).sum() >= 0.8 * ball.sum() and not (gone & bone).any()


def test_a_bump_without_a_neck_stays():
    """An osteophyte: a ball fused into the bone's surface (no neck) is MC2's own."""
    c = 120 * SPACING / 2
    mask = _bone() | _ball((7.0, c + 5.5, c), 2.2)
    gone, bodies = postprocess.satellites(mask, SPACING)
    assert not gone.any() and bodies == []


def test_two_condyles_stay():
    """A head of two lobes of a size joined by a neck: neither is under a third of the other."""
    c = 120 * SPACING / 2
    mask = _ball((7.0, c, c - 4.0), 3.5) | _ball((7.0, c, c + 4.0), 3.2)
    zz, yy, xx = _grid()
    mask |= (np.abs(yy - c) < 0.6) & (np.abs(xx - c) < 1.5) & (np.abs(zz - 7.0) < 2.0)
    gone, _ = postprocess.satellites(mask, SPACING)
    assert not gone.any()


def test_a_tall_body_stays():
    """A neighbour's shaft held by a neck over 10 mm of the stack (80 mm³) is no sesamoid: QC reviews that
    mask."""
    c = 120 * SPACING / 2
    zz, yy, xx = _grid()
    other = (np.hypot(yy - (c + 7.3), xx - c) < 1.6) & (zz < 10.0)
    neck = (np.abs(xx - c) < 0.35) & (yy > c + 4.5) & (yy < c + 6.5) & (zz < 10.0)
    gone, bodies = postprocess.satellites(_bone() | other | neck, SPACING)
    assert not gone.any() and bodies == []


def test_a_large_body_stays():
    """A body of 230 mm³ within 8 mm of the stack is larger than an MCP sesamoid (3-6 mm across)."""
    n = 160
    c = n * SPACING / 2
    bone = _bone(n=n, radius_mm=8.5)
    ball = _ball((7.0, c + 8.5 + 0.8 + 3.8, c), 3.8, n=n)
    zz, yy, xx = _grid(n=n)
    neck = (np.abs(xx - c) < 0.35) & (yy > c + 8.0) & (yy < c + 10.0) & (np.abs(zz - 7.0) < 1.0)
    gone, bodies = postprocess.satellites(bone | ball | neck, SPACING)
    assert not gone.any() and bodies == []


@pytest.mark.parametrize("radius_mm", [1.0])
def test_a_speck_is_no_lobe(radius_mm):
    """A lobe under 1.2 mm deep is no peak of the distance map: a speck of blur on the outline stays."""
    c = 120 * SPACING / 2
    mask = _bone() | _ball((7.0, c + 5.0 + radius_mm, c), radius_mm)
    gone, _ = postprocess.satellites(mask, SPACING)
    assert not gone.any()
