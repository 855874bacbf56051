"""The joint beyond MC2's head: a mask that ran on into the phalanx's base is ended at the joint."""

from types import SimpleNamespace

import numpy as np
import pytest

from vbmd_rt.runtime import bonewin, classical
from vbmd_rt.runtime.pipeline import cut_native, joined_base, one_bone, trim_at_joint
from vbmd_rt.runtime.postprocess import TIP_FLOOR, joint_end

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


TIP = np.linspace(90, 20, 8)  # the dome narrows to its tip
RIM = np.full(10, 120.0)  # past the joint space, the phalanx's base (bridged by blur, or a flexed finger's)


def test_a_network_mask_that_runs_past_the_tip_onto_the_phalanx_ends_after_the_tip():
    """``joint_end(tip=True)``: a dome narrowed to its tip, then the mask grows again to over half the
    largest cross-section (the phalanx's base across the joint space) ends after the tip's narrowest slice;
    without ``tip`` (a tracked region, whose cup holds the dome) that profile is no joint."""
    area = _profile(SHAFT_HEAD, DOME, TIP, RIM)
    assert joint_end(area, MM, tip=True) == SHAFT_HEAD.size + DOME.size + TIP.size
    assert joint_end(area, MM) is None
    assert joint_end(_profile(SHAFT_HEAD, DOME, TIP, np.zeros(10)), MM, tip=True) is None  # the tip in view
    assert joint_end(_profile(SHAFT_HEAD, DOME, TIP, np.full(10, 60.0)), MM, tip=True) is None  # a small piece
    assert joint_end(_profile(SHAFT_HEAD, [140, 100, 95, 100, 140], RIM), MM, tip=True) is None  # a short dip
    # a tip is where the head may end (``tip_from``: the identified region's end less 4 mm, ``trim_at_joint``)
    assert joint_end(area, MM, tip=True, tip_from=SHAFT_HEAD.size + DOME.size + TIP.size) is None


def test_a_head_that_falls_apart_before_its_end_is_not_cut_there():
    """A network mask that falls to a third of the head's cross-section for a millimetre (an erosion) and
    comes back before the head's real dome: no tip there, where the identified region runs on past it
    (``trim_at_joint``'s ``region_end``); without the region's end it would be taken for the tip."""
    area = _profile(
        SHAFT_HEAD, np.linspace(140, 50, 8), np.full(3, 50.0), np.linspace(60, 135, 4), np.full(10, 135.0), DOME, TIP
    )
    radii = np.sqrt(area / np.pi) / MM
    prob = np.zeros((area.size + 10, 200, 200), np.float32)
    prob[5 : 5 + area.size] = _disc_volume(radii) * 0.9
    win = bonewin.Window(20, 20, 5, 5 + area.size)
    before = prob.copy()
    assert trim_at_joint(prob, win, 0.5, MM, region_end=5 + area.size - TIP.size) is None
    np.testing.assert_array_equal(prob, before)
    assert trim_at_joint(prob, win, 0.5, MM) is not None  # where the region's end is not known


def test_where_the_region_tells_nothing_of_the_heads_end_a_tip_is_a_dome_narrowed_to_one():
    """The identified region ran on to the stack's end (its joint not found: ``one_bone`` reads the chosen
    candidate's ``joint_in_view``), so its end may not be the head's: a tip further back than ``tip_from``
    is taken too where the dome narrowed to under ``TIP_FLOOR`` of the largest cross-section (a tip narrows to
    nothing), not where a head fell to a third at an erosion and came back, nor at a shallower dip. Where the
    region's end is the head's, a dip short of it stays uncut, as before (held-out condyle 0016 of seed 5102:
    the mask ran on into the phalanx, Dice 0.786; cut at the tip, 0.955)."""
    erosion = (np.linspace(140, 50, 8), np.full(3, 50.0), np.linspace(60, 135, 4), np.full(10, 135.0))
    area = _profile(SHAFT_HEAD, *erosion, DOME, TIP, RIM, RIM)
    at_tip = SHAFT_HEAD.size + sum(e.size for e in erosion) + DOME.size + TIP.size
    n = area.size  # tip_from past every dip: only the floor takes one
    assert joint_end(area, MM, tip=True, tip_from=n) is None
    assert joint_end(area, MM, tip=True, tip_from=n, tip_floor=TIP_FLOOR) == at_tip
    running_off = _profile(SHAFT_HEAD, *erosion, np.full(20, 140.0))  # the erosion, the head beyond the stack
    assert joint_end(running_off, MM, tip=True, tip_from=n, tip_floor=TIP_FLOOR) is None
    shallow = _profile(SHAFT_HEAD, DOME, np.linspace(90, 35, 8), RIM)  # a dip to 0.25 of the head: no tip ...
    assert joint_end(shallow, MM, tip=True, tip_from=shallow.size, tip_floor=TIP_FLOOR) is None
    assert joint_end(shallow, MM, tip=True, tip_floor=TIP_FLOOR) is not None  # ... but within tip_from, as before

    radii = np.sqrt(area / np.pi) / MM
    prob = np.zeros((area.size, 200, 200), np.float32)
    prob[:] = _disc_volume(radii) * 0.9
    win = bonewin.Window(20, 20, 0, area.size)
    region = np.zeros((area.size, 100, 100), bool)  # the identification grid: every slice, to the stack's end
    region[:, 40:60, 40:60] = True
    for in_view, cut in ((False, at_tip), (True, None)):
        idt = SimpleNamespace(candidates=[SimpleNamespace(joint_in_view=in_view)], choice=0, region=region, others=None)
        p = prob.copy()
        end = one_bone(p, win, idt, 0.5, MM)[0]
        assert end == cut
        assert (p[at_tip + round(classical.TIP_MM / MM) :] == 0).all() if cut else (p == prob).all()


def test_where_the_region_ran_on_a_base_that_joined_the_dome_before_its_end_ends_the_mask():
    """The phalanx's base joined the dome before its end (as on the identification grid, ``identify.joint_dip``):
    the network's mask narrowed over 2 mm to 0.84 of the head, short of ``joint_end``'s dome, and grew 1.27x
    at one slice onto the base. Where the identified region ran on to the stack's end, ``joined_base`` reads
    that dip on pairs of slices and ends the mask there (fresh randomised hand 0007 of seed 27000: Dice 0.689,
    +12.4 mg HA/cm³ and `pass`; now 0.937); a dip to a third or a half (an erosion) is no joint, nor one
    where the region's end is the head's."""
    joined = _profile(SHAFT_HEAD, np.linspace(140, 118, 8), np.full(12, 150.0))
    rise = SHAFT_HEAD.size + 8
    assert joint_end(joined, MM, tip=True, tip_floor=TIP_FLOOR) is None
    assert joined_base(joined, 0, joined.size, MM) == rise
    assert joined_base(_profile([100.0], joined), 0, joined.size + 1, MM) == rise + 1  # either slice's pairing
    steep = _profile(SHAFT_HEAD, np.linspace(140, 118, 8), np.full(12, 180.0))  # seen by both pairings: the cut
    for shift in (0, 1):  # at the raw rise, not at the first slice of the pair that holds it
        assert joined_base(_profile([100.0] * shift, steep), 0, steep.size + shift, MM) == rise + shift
    two = _profile(joined, [150.0], np.linspace(150, 126, 8), np.full(12, 160.0))  # a second base at slice 59,
    assert joined_base(two, 0, two.size, MM) == rise  # which only the other pairing sees: the first joint wins
    for eroded in (np.linspace(140, 50, 8), np.linspace(140, 70, 8)):  # to a third, to a half: no joint
        assert joined_base(_profile(SHAFT_HEAD, eroded, np.full(12, 150.0)), 0, 50, MM) is None
    assert joined_base(_profile(SHAFT_HEAD, np.full(20, 140.0)), 0, 50, MM) is None  # no dip
    later = _profile(SHAFT_HEAD, np.linspace(140, 50, 8), np.full(6, 140.0), np.linspace(140, 118, 8), np.full(12, 150))
    assert joined_base(later, 0, later.size, MM) == SHAFT_HEAD.size + 22  # past an erosion, the base that joined
    early = _profile(np.linspace(100, 140, 6), np.linspace(140, 118, 8), np.full(12, 150.0))
    assert joined_base(early, 0, early.size, MM) == 14
    assert joined_base(early, 0, 200, MM) is None  # in the proximal slab of a long stack (30 model slices) ...
    assert joined_base(early, 21, 200, MM) == 14  # ... unless the window starts past most of it

    z0 = 3  # the window from an odd model slice
    prob = np.zeros((z0 + joined.size, 200, 200), np.float32)
    prob[z0:] = _disc_volume(np.sqrt(joined / np.pi) / MM) * 0.9
    win = bonewin.Window(20, 20, z0, z0 + joined.size)
    region = np.zeros((z0 + joined.size, 100, 100), bool)
    region[:, 40:60, 40:60] = True
    for in_view, cut in ((False, z0 + rise), (True, None)):
        idt = SimpleNamespace(candidates=[SimpleNamespace(joint_in_view=in_view)], choice=0, region=region, others=None)
        p = prob.copy()
        assert one_bone(p, win, idt, 0.5, MM)[0] == cut
        if cut:  # past the cut, the dome's tip inside the narrowest slice only
            assert not p[cut + round(classical.TIP_MM / MM) :].any() and (p[:cut] == prob[:cut]).all()
        else:
            assert (p == prob).all()


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
    np.testing.assert_array_equal(prob[:end], before[:end])
    # past the joint, only the dome's tip that the cup holds: narrowing inside the narrowest slice, at most
    # TIP_MM long, with the network's own probabilities
    tip = prob[end:] > 0
    area = tip.sum(axis=(1, 2))
    n = int((area > 0).sum())
    assert 0 < n <= round(classical.TIP_MM / MM) and not area[n:].any()
    assert (np.diff(area[:n]) < 0).all() and not (tip[:n] & ~(before[end - 1] > 0.5)).any()
    np.testing.assert_array_equal(prob[end:][tip], before[end:][tip])


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


# --------------------------------------------------------------------------- the dome's tip inside the cup

PX = 0.25  # mm per pixel and per slice


def _head_in_cup(joint_space: bool, cup_from: int = 30):
    """A shaft, a head whose dome (half an ellipsoid: 5 mm in radius, 4 mm high) ends at slice 35, and the
    phalanx's cup round it from slice ``cup_from`` on (1 mm from the dome, 1.5 mm thick). Returns the tracked region
    (the cup and all inside it filled, as tracking takes them in as one), the bone the tracking saw (the joint
    space dark, or bridged), the true head and the cup."""
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32) * PX
    z = np.arange(50)
    dome = 5.0 * np.sqrt(np.clip(1 - ((z - 20) * PX / 4.0) ** 2, 0, None))
    dome[z < 20] = 5.0
    head = np.stack([d < r for r in dome]) & (z < 37)[:, None, None]
    cup_in = np.where(z >= cup_from, dome + 1.0, 0.0)
    cup_in[z > 36] = 0.0  # past the dome's tip, the cup's floor
    cup = np.stack([(d >= ri) & (d < 7.5) for ri in cup_in]) & (z >= cup_from)[:, None, None]
    region = head | np.stack([d < 7.5 for _ in z]) & (z >= cup_from)[:, None, None]
    bone = (head | cup) if joint_space else region.copy()
    return region, bone, head, cup


@pytest.mark.parametrize("joint_space", [True, False], ids=["joint-space-seen", "joint-space-bridged"])
def test_the_dome_tip_inside_the_cup_is_followed_past_the_cut(joint_space):
    """Cut at the cup's rim (slice 30), the dome is followed to its tip (its last slice, under 15 % of the
    head's largest cross-section, is a sliver's size and left out): as the image shows it where the joint
    space is seen, else by its narrowing; the cup is never taken in."""
    region, bone, head, cup = _head_in_cup(joint_space)
    tip = classical.dome_tip(region, bone, 30, PX)
    true_tip = np.flatnonzero(head.any(axis=(1, 2)))[-1]
    assert true_tip - 1 <= 30 + len(tip) - 1 <= true_tip
    got = np.zeros_like(head)
    got[30 : 30 + len(tip)] = tip
    assert not (got & cup).any()
    covered = (got & head)[30:].sum() / head[30:].sum()
    outside = (got & ~head).sum() / got.sum()
    assert covered >= 0.94 and outside <= (0.0 if joint_space else 0.12)
    assert (np.diff(tip.sum(axis=(1, 2))) < 0).all()  # a dome narrows


def test_no_dome_tip_where_the_region_ends_or_runs_on_without_a_cut():
    region, bone, head, _ = _head_in_cup(True)
    assert len(classical.dome_tip(head, head, 37, PX)) == 0  # the head ended in view: nothing beyond it
    assert len(classical.dome_tip(region, bone, 50, PX)) == 0  # no cut
    assert len(classical.dome_tip(region, bone, 0, PX)) == 0
    shaft = np.zeros_like(region)
    shaft[:, 20:44, 20:44] = True  # a region as wide past the cut as before: not a dome
    assert len(classical.dome_tip(shaft, shaft, 25, PX)) == 0
    on = head.copy()  # a head that narrowed up to the cut, then a region as wide as its last slice: no dome,
    on[30:] = head[29]  # and its narrowing is not carried on either
    assert len(classical.dome_tip(on, on, 30, PX)) == 0


def _dome_at_cut(cut: int = 30, height: int = 8):
    """A head 5 mm in radius that keeps its width up to slice ``cut`` and ends past it in a dome (half an
    ellipsoid ``height`` slices high), with the phalanx's cup round it from ``cut`` on, all taken in as one
    filled disk 7.5 mm in radius (the joint space bridged): neither the image nor the head's narrowing shows
    the dome. Returns the head and the disk."""
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32) * PX
    z = np.arange(50)
    r = np.where(z < cut, 5.0, 5.0 * np.sqrt(np.clip(1 - ((z - cut + 0.5) / height) ** 2, 0, None)))
    head = np.stack([d < ri for ri in r])
    disk = np.stack([d < 7.5 for _ in z]) & (z >= cut)[:, None, None]
    return head, disk


@pytest.mark.parametrize("handed_over", [False, True], ids=["cup-taken-in", "dome-handed-to-the-phalanx"])
def test_an_identified_tip_carries_the_dome_where_the_image_does_not_show_it(handed_over):
    """Where the tracked region past the cut is the cup and all inside it (a disk as wide as the head: no dome
    to see), or ends at the cut because the tracking gave the dome to the phalanx's instance, and the head did
    not narrow before the cut, the dome's tip is lost (1-2.5 mm of the head on the evaluation phantoms). With
    the identification stage's tip (slice units from the stack's first slice: the head's last slice is 37, its
    tip at 38), the dome is carried on to it as a paraboloid, nested in the head (a linear fall of the area
    lies inside this ellipsoidal dome), from the cross-section at the cut; a tip within ``TIP_SHORT_MM`` of
    the cut carries nothing."""
    head, disk = _dome_at_cut()
    bone = head | disk
    region = bone.copy()
    if handed_over:
        region[30:] = False
    assert len(classical.dome_tip(region, bone, 30, PX)) == 0  # without the tip: nothing past the cut
    true_tip = int(np.flatnonzero(head.any(axis=(1, 2)))[-1]) + 1.0
    tip = classical.dome_tip(region, bone, 30, PX, tip=true_tip)
    assert 30 + len(tip) == true_tip - 1  # to the tip, its last sliver (under the floor) left out as the image's
    got = np.zeros_like(head)
    got[30 : 30 + len(tip)] = tip
    assert not (got & ~head).any()  # nested in the dome
    assert (got & head)[30:].sum() / head[30:].sum() >= 0.68
    areas = tip.sum(axis=(1, 2))
    assert (np.diff(areas) < 0).all()
    want = head[29].sum() * (true_tip - np.arange(30, true_tip - 1) - 0.5) / (true_tip - 29.5)  # slices' centres
    np.testing.assert_allclose(areas, want, rtol=0.12)
    assert len(classical.dome_tip(region, bone, 30, PX, tip=30 + classical.TIP_SHORT_MM / PX - 0.5)) == 0
    assert len(classical.dome_tip(region, bone, 30, PX, tip=30 + classical.TIP_SHORT_MM / PX + 1.5)) >= 1
    assert len(classical.dome_tip(region, bone, 30, PX, tip=float("nan"))) == 0


def test_the_identified_tips_dome_keeps_to_the_bone_where_the_region_ended():
    """The dome handed to the phalanx's instance is carried on within the bone the tracking saw: where a wedge
    of it is dark (not bone) past the cut, the dome leaves the wedge out."""
    head, disk = _dome_at_cut()
    bone = head | disk
    wedge = np.zeros_like(bone)
    wedge[30:, :32, :32] = True
    bone &= ~wedge
    region = bone.copy()
    region[30:] = False
    tip = classical.dome_tip(region, bone, 30, PX, tip=38.0)
    assert len(tip) >= 4 and not (tip & wedge[30 : 30 + len(tip)]).any()
    assert (tip & ~wedge[30 : 30 + len(tip)]).sum() > 0


def test_an_identified_tip_leaves_a_dome_the_image_shows_unless_it_lies_well_beyond():
    """Where the joint space shows the dome to its last sliver (slice 35, its tip at 36), a tip identified there
    or within ``TIP_AGREE_MM`` beyond changes nothing. One further on takes the sliver for a piece of the cup's
    rim and carries the dome on, nested in its last cross-section: what an identified tip too far costs."""
    region, bone, head, cup = _head_in_cup(True)
    alone = classical.dome_tip(region, bone, 30, PX)
    true_tip = int(np.flatnonzero(head.any(axis=(1, 2)))[-1]) + 1.0
    assert 30 + len(alone) == true_tip - 1  # the last sliver, under the floor, left out
    sliver = true_tip - 1  # its slice, from whose start the identified tip is measured
    for given in (true_tip, sliver + classical.TIP_AGREE_MM / PX - 0.1):
        np.testing.assert_array_equal(classical.dome_tip(region, bone, 30, PX, tip=given), alone)
    beyond = classical.dome_tip(region, bone, 30, PX, tip=sliver + classical.TIP_AGREE_MM / PX + 0.1)
    assert len(beyond) > len(alone)
    np.testing.assert_array_equal(beyond[: len(alone)], alone)
    assert not (beyond[len(alone)] & ~alone[-1]).any()  # nested in the slice before


def test_the_classical_path_gives_the_dome_the_identified_tip_in_each_grids_slices(tmp_path, monkeypatch):
    """``--model classical``: ``classical.segment`` gets the identification stage's tip (mm on the model grid
    of 0.246 mm) in its own slices, the native grid's (an XtremeCT II phantom's 0.182 mm); so does the cut on the
    model grid where the pipeline makes one (its tracking took the cup in: not on this phantom)."""
    import json

    from vbmd_rt.runtime import pipeline
    from vbmd_rt.runtime.inference.base import NoNetwork
    from vbmd_rt.runtime.model import load_model
    from vbmd_rt.synth import phantom

    phantom.synth_case(tmp_path, 3, 6000, "small", "random:scanner=xct2")
    scan = tmp_path / f"{phantom.case_name(3)}.AIM"

    seen = []
    original = classical.dome_tip

    def spy(region, bone, end, spacing_mm, p=classical.Params(), tip=None):
        seen.append((spacing_mm, tip))
        return original(region, bone, end, spacing_mm, p, tip)

    monkeypatch.setattr(classical, "dome_tip", spy)
    with NoNetwork(None) as backend:
        pipeline.run_scan(scan, tmp_path / "out", load_model("classical"), backend)
    res = json.loads((tmp_path / "out" / scan.with_suffix(".json").name).read_text())
    mc2 = res["identity"]["candidates"][res["identity"]["choice"]]
    assert mc2["joint_in_view"] and {round(s, 3) for s, _ in seen} >= {0.182}, seen
    for spacing_mm, tip in seen:  # within the model grid's rounding of the stack's length, and JSON's 0.1 mm
        assert tip is not None and abs(tip * spacing_mm - mc2["tip_mm"]) < 0.15, (seen, mc2["tip_mm"])


@pytest.mark.parametrize("flip", [False, True])
def test_the_classical_cut_keeps_the_dome_tip_on_the_native_grid(flip):
    """``keep_tip``: the native slices under the tip's model slices keep the mask's voxels inside the tip's
    cross-sections (on a cropped, mirrored model grid 3x coarser in z, 2x in-plane); the rest past the
    joint is cut."""
    from vbmd_rt.runtime.pipeline import keep_tip
    from vbmd_rt.runtime.preprocess import Geometry

    geo = Geometry(native_shape=(60, 80, 80), model_shape=(20, 40, 40), flip_x=flip, crop=(4, 36, 6, 38))
    mask = np.zeros(geo.native_shape, np.uint8)
    box = (0, 60, 0, 80, 0, 80)
    mask[:, 10:70, 10:70] = 1  # a square bone all along, cup and all
    tip = np.zeros((2, 32, 32), bool)  # model slices 12 and 13, cropped grid: a block off-centre
    tip[:, 10:20, 14:24] = True
    before = mask.copy()
    keep_tip(mask, box, tip, 12, geo)
    np.testing.assert_array_equal(mask[:36], before[:36])
    assert not mask[42:].any()
    x0, x1 = (6 + 14) * 2, (6 + 24) * 2  # the block on the uncropped grid, native
    if flip:
        x0, x1 = 80 - x1, 80 - x0
    y0, y1 = (4 + 10) * 2, (4 + 20) * 2
    outer = np.zeros((80, 80), bool)  # the block, give or take its edge (interpolated)
    outer[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = True
    for k in range(36, 42):
        assert not (mask[k].astype(bool) & ~outer).any() and mask[k][y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].all()


def test_the_network_tip_is_the_dome_its_mask_parts_from_the_cup():
    """A network mask that leaves the joint space dark (the dome a disc inside the cup's ring): the cut at the
    joint keeps exactly the dome's cross-sections past it, as the mask shows them (an oblique tip, off the
    centre that a shrinking cross-section would keep)."""
    region, bone, head, cup = _head_in_cup(True, cup_from=32)  # the dome narrows over 2 mm before the cup
    for k in range(33, 37):  # the tip leans 0.25 mm a slice (it stays clear of the cup)
        head[k] = np.roll(head[k], k - 32, axis=1)
    prob = np.zeros((60, 64, 64), np.float32)
    prob[5:55] = (head | cup) * 0.9  # the dome and the cup, the joint space between them dark
    win = bonewin.Window(0, 0, 5, 55, size=64)
    end = trim_at_joint(prob, win, 0.5, PX)
    assert end is not None and abs(end - (5 + 32)) <= 1
    kept = prob[end:] > 0.5
    n = int(kept.any(axis=(1, 2)).sum())
    assert n >= 2 and not kept[n:].any() and end - 5 + n >= 35  # to the tip's last slice but one (the floor)
    np.testing.assert_array_equal(kept[:n], head[end - 5 : end - 5 + n])


def test_the_window_grows_while_the_mask_reaches_its_end():
    """``bonewin.predict``: a head that runs on past the identified region's end (an erosion stopped its
    tracking) is predicted to its end: the window grows by ``EXTEND_MM`` while the mask's last slice holds a
    good part of the bone, and the slices whose context the old end clipped are predicted again (a network
    that needs its neighbours above and below sees them)."""
    grid = (120, 60, 60)
    z = np.arange(grid[0], dtype=np.float32)[:, None, None]
    bone = np.zeros(grid, np.float32)
    bone[:90, 20:40, 20:40] = 1.0  # the bone ends at slice 90
    bone *= 1.0 + z / 1000  # each slice's own value: a clipped context slice shows
    region = np.zeros(grid, bool)
    region[:30, 20:40, 20:40] = True  # the region ended early
    centre, ahead = bonewin.CONTEXT.index(0), bonewin.CONTEXT.index(max(bonewin.CONTEXT))
    step = max(bonewin.CONTEXT) / 1000

    def infer(x):  # bone where the slice and its last context slice are (0.7; 0.6 where that was clipped)
        c, a = x[:, centre], x[:, ahead]
        out = np.where(np.abs(a - c - step) < 1e-4, 0.7, 0.6) * ((c > 0.5) & (a > 0.5))
        return out.astype(np.float32)[:, None]

    prob, win = bonewin.predict(bone, region, infer)
    got = np.flatnonzero((prob > 0.5).any(axis=(1, 2)))
    assert got[0] == 0 and got[-1] == 90 - 1 - max(bonewin.CONTEXT)  # to the bone's end
    assert set(np.unique(prob[prob > 0])) == {np.float32(0.7)}  # every slice with its whole context
    assert win.z1 < grid[0]  # it stopped growing where the mask ended
    short = bone.copy()
    short[40:] = 0  # a bone that ends within the first window: no growth
    _, w = bonewin.predict(short, region, infer)
    assert w.z1 == 30 + int(round(bonewin.EXTEND_MM / bonewin.GRID.spacing_mm))
    # ... nor where another bone, apart from it, is marked at the window's last slice (a neighbour's head):
    # only the bone asked for (the mask's largest piece) grows the window
    beside = short.copy()
    beside[35:70, 45:55, 45:55] = 1.0 + z[35:70] / 1000  # a quarter of the bone's cross-section
    _, w = bonewin.predict(beside, region, infer)
    assert w.z1 == 30 + int(round(bonewin.EXTEND_MM / bonewin.GRID.spacing_mm))
