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


def _beside(body_mm2, tall_mm, main_mm=7.5, n=160):
    """MC2 (a cylinder of ``main_mm`` radius) and beside it, held by a 0.7 mm neck, a short cylinder of
    ``body_mm2`` cross-section and ``tall_mm`` height (0.3 of MC2's cross-section or less: a lobe)."""
    c = n * SPACING / 2
    r = float(np.sqrt(body_mm2 / np.pi))
    zz, yy, xx = _grid(n=n)
    other = (np.hypot(yy - (c + main_mm + 0.8 + r), xx - c) < r) & (zz >= 2.0) & (zz < 2.0 + tall_mm)
    neck = (np.abs(xx - c) < 0.35) & (yy > c + main_mm - 0.5) & (yy < c + main_mm + 1.5) & (zz >= 2.0)
    neck &= zz < 2.0 + tall_mm
    return _bone(n=n, radius_mm=main_mm) | other | neck, other


def test_a_large_body_stays():
    """A body of about 225 mm³ (7.5 mm tall, 30 mm² across) is larger than an MCP sesamoid (3-6 mm): only
    the volume limit keeps it."""
    mask, other = _beside(30.0, 7.5)
    assert 205 < other.sum() * SPACING**3 < 240
    gone, bodies = postprocess.satellites(mask, SPACING)
    assert not gone.any() and bodies == []


def test_a_wide_body_stays():
    """A body 40 mm² across (a disc 7.1 mm wide: a neighbour's shaft or head that the mask took in with MC2)
    but 4 mm tall (160 mm³): only the cross-section limit keeps it."""
    mask, other = _beside(40.0, 4.0)
    assert other.sum() * SPACING**3 < postprocess.SATELLITE_MAX_MM3
    gone, bodies = postprocess.satellites(mask, SPACING)
    assert not gone.any() and bodies == []


def test_mc2s_lobe_is_the_one_that_carries_on():
    """Past the head's widest part MC2's cross-section can be smaller than a sesamoid's beside it: MC2's lobe
    is the one nearest the centre of its cross-section in the slice before, so its end stays (taken for the
    largest lobe, the
    sesamoid made MC2's end a small lobe of its own, and the end went). A sesamoid this large against MC2's
    end is no small lobe there: it stays too."""
    c = 120 * SPACING / 2
    zz, yy, xx = _grid()
    bone = (np.hypot(yy - c, xx - c) < np.where(zz < 5.0, 5.0, 1.6)) & (zz < 7.5)
    other = (np.hypot(yy - (c + 1.6 + 0.6 + 3.0), xx - c) < 3.0) & (zz >= 5.0) & (zz < 7.5)
    neck = (np.abs(xx - c) < 0.35) & (yy > c + 1.3) & (yy < c + 2.5) & (zz >= 5.0) & (zz < 7.5)
    gone, _ = postprocess.satellites(bone | other | neck, SPACING)
    assert not (gone & bone).any()


@pytest.mark.parametrize("radius_mm", [1.0])
def test_a_speck_is_no_lobe(radius_mm):
    """A lobe under 1.2 mm deep is no peak of the distance map: a speck of blur on the outline stays."""
    c = 120 * SPACING / 2
    mask = _bone() | _ball((7.0, c + 5.0 + radius_mm, c), radius_mm)
    gone, _ = postprocess.satellites(mask, SPACING)
    assert not gone.any()
