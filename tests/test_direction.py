"""Which way the stack runs (``runtime.direction``): a stack written from the fingers to the wrist is turned,
measured as the same stack written the usual way, and written back in its own slice order."""

import json

import numpy as np
import pytest

from vbmd_rt.runtime import bonewin, direction, identify
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.preprocess import to_model_mask
from vbmd_rt.synth import phantom

from .conftest import cli


def _grid(scan, spacing, cal):
    return bonewin.model_volume(scan, spacing, cal)


def _on_truth(region, truth, geo) -> float:
    t = to_model_mask(truth, geo) > 0.5
    return float((region & t).sum()) / max(1, int(region.sum()))


def test_the_joints_bulge_towards_the_fingers_in_both_measures():
    """A standard phantom, shafts first: both measures bulge towards the last slice on every bone that says
    anything (most do), and the stack is taken as it is without looking at the reverse; read the other way,
    both turn negative, and identification turns the stack and finds MC2 on it."""
    p = phantom.sample_case(3, "small")
    scan, truth = phantom.render_case(p)
    vol, geo = _grid(scan, (p.voxel_mm,) * 3, p.cal)
    idt = identify.identify(vol, bonewin.GRID.spacing_mm)
    d = idt.stack
    assert not d.reversed and not d.reason and d.reverse is None  # clear: the reverse was not looked at
    assert d.valleys > 2 and d.surfaces > 2, d.to_dict()
    said = [v for _, a, b in d.per_bone for v in (a, b) if v is not None]
    assert len(said) >= len(d.per_bone) and all(v > 0 for v in said), d.per_bone

    back = np.ascontiguousarray(vol[::-1])
    turned = identify.identify(back, bonewin.GRID.spacing_mm)
    t = turned.stack
    assert t.reversed and t.valleys < -2 and t.surfaces < -2 and min(t.reverse) > 2, t.to_dict()
    assert t.to_dict()["slice_order"] == "distal first" and t.to_dict()["turned"]
    assert p.slices % 2 == 1  # an odd count: the coarse grid of the turned stack is not coarse[::-1]
    assert np.array_equal(turned.region, idt.region)  # on the stack turned back: the grid of ``vol``, exactly
    assert _on_truth(turned.region, truth, geo) > 0.7
    assert turned.side == idt.side == p.side
    assert idt.candidates[idt.choice].label >= 1 and not turned.reasons


def test_identification_can_be_told_not_to_look():
    p = phantom.sample_case(3, "small")
    scan, _ = phantom.render_case(p)
    vol, _ = _grid(scan[::-1], (p.voxel_mm,) * 3, p.cal)
    idt = identify.identify(vol, bonewin.GRID.spacing_mm, stack=False)
    assert not idt.stack.reversed and idt.stack.to_dict()["valleys_mm"] == 0.0


@pytest.mark.parametrize(
    ("here", "there", "turned", "review"),
    [
        ((3.0, 2.0), None, False, False),  # clear: taken as it is, the reverse not looked at
        ((-3.0, -2.0), (2.0, 3.0), True, False),  # both measures, both ways: turned
        ((-3.0, -2.0), (2.0, 0.0), False, True),  # the reverse not clear: left, reviewed (it leans)
        ((-3.0, 0.4), (3.0, 2.0), False, True),  # one measure silent here: left, reviewed
        ((0.2, 1.0), (0.1, -0.5), False, False),  # unclear, leaning the usual way: left as it is
        ((0.0, 0.0), (0.0, 0.0), False, False),  # nothing said either way (no joint in view): left
    ],
)
def test_the_stack_is_turned_only_where_both_measures_agree_both_ways(here, there, turned, review):
    looked = []

    def reverse():
        looked.append(True)
        return (*there, [])

    d = direction.decide((*here, []), reverse)
    assert d.reversed is turned
    assert bool(d.reason) is review
    assert bool(looked) is (there is not None)
    if review:
        assert "fingers to the wrist" in d.reason and d.lean < 0


def _reversed_copy(src, dst):
    """The scan and its true mask written with the slices in the other order (the header as it is)."""
    s, gt = aim.read_aim(src), aim.read_aim(str(src).replace(".AIM", "_GT.AIM"))
    aim.write_aim(dst, np.ascontiguousarray(np.asarray(s.data)[::-1]), s.header)
    return np.ascontiguousarray(np.asarray(gt.data)[::-1]) != 0


@pytest.mark.parametrize("model", ["default", pytest.param("classical", marks=pytest.mark.slow)])
def test_a_stack_written_from_the_fingers_is_measured_as_the_usual_one(phantoms, tmp_path, model):
    """A phantom (an odd slice count) and the same phantom with its slices in the other order: the same D100
    and QC; every mask written in each file's own slice order, voxel for voxel the original's turned; the
    record says it turned, the report labels z 0 the distal end; ``vbmd-rt measure`` of the mask agrees."""
    from vbmd_rt.runtime.io.masks import read_mask_file
    from vbmd_rt.runtime.measure import dice

    src = phantoms / "PHANTOM_0001.AIM"
    back = tmp_path / "BACK.AIM"
    truth_back = _reversed_copy(src, back)
    assert aim.read_aim(src).data.shape[0] % 2 == 1
    extra = ["--report", "html"] + ([] if model == "default" else ["--model", "classical"])
    for f in (src, back):
        r = cli("run", str(f), "-o", str(tmp_path / "out"), "-q", *extra)
        assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "out/PHANTOM_0001.json").read_text())
    b = json.loads((tmp_path / "out/BACK.json").read_text())
    assert not a["identity"]["stack"]["turned"] and b["identity"]["stack"]["turned"]
    assert b["d100_mg_ha_cm3"] == pytest.approx(a["d100_mg_ha_cm3"], abs=1e-6)
    assert a["qc"]["status"] == b["qc"]["status"] and a["qc"]["reasons"] == b["qc"]["reasons"], (a["qc"], b["qc"])
    # the network's reasons are the identity's alone (its lead, 3.48, over the naming that takes MC5 for a thumb
    # is under ``identify.THUMB_END``); the classical contour of this hand reads +5.4, 7.4 from the network's
    # -2.0: `review`
    reasons = a["qc"]["reasons"]
    assert model == "classical" or (reasons and all("may be the thumb" in r for r in reasons)), reasons
    header = aim.read_aim(back).header
    for suffix in ("SEG", "CORT_MASK", "TRAB_MASK"):
        forward = read_mask_file(tmp_path / f"out/PHANTOM_0001_{suffix}.AIM", header)
        turned = read_mask_file(tmp_path / f"out/BACK_{suffix}.AIM", header)
        assert turned.any() and np.array_equal(turned, forward[::-1]), suffix
    mask = read_mask_file(tmp_path / "out/BACK_SEG.AIM", header).astype(bool)
    assert dice(mask, truth_back) > 0.93
    html = (tmp_path / "out/BACK.html").read_text()
    assert html.index("(distal)</text>") < html.index("(proximal)</text>")  # the profile runs from z 0: distal
    forward_html = (tmp_path / "out/PHANTOM_0001.html").read_text()
    assert forward_html.index("(proximal)</text>") < forward_html.index("(distal)</text>")
    if model == "default":  # the same mask given to ``measure``: the same verdict, read from the shaft
        r = cli("measure", str(back), str(tmp_path / "out/BACK_SEG.AIM"), "-o", str(tmp_path / "given"))
        assert r.returncode == 0, r.stderr
        g = json.loads((tmp_path / "given/BACK.json").read_text())
        assert g["qc"]["stack"]["turned"] and g["qc"]["status"] == "pass", g["qc"]["reasons"]
        assert g["d100_mg_ha_cm3"] == pytest.approx(b["d100_mg_ha_cm3"], abs=1e-6)


def _tube_and_head(nz: int = 60, n: int = 41):
    """A bone mask: a tube (a phalanx's base, hollow at the bone level) from slice 0 to 24, and beyond it a
    head whose rounded end (a sphere of radius 9 voxels) faces the tube, its shaft running on to the end."""
    z, y, x = np.mgrid[:nz, :n, :n]
    r = np.hypot(y - n // 2, x - n // 2)
    tube = (z <= 24) & (r >= 8) & (r <= 10)
    head = ((r <= 9) & (z >= 36)) | (np.hypot(r, z - 36) <= 9)
    return tube | head, tube, r[0] <= 10


def test_a_hollow_base_gives_its_far_surface_all_across():
    """Read fingers first, the near piece is a hollow base: it has no surface inside its rim, but the head
    beyond it bulges towards the first slice over all of its own columns. Read the other way, the head is the
    near piece and bulges towards the last slice. The same size both ways (a sagitta of 3 voxels)."""
    bone, tube, cols = _tube_and_head()
    there = direction.surface_bulge(bone, tube, cols, top=8, spacing_mm=0.5)
    back = direction.surface_bulge(bone[::-1], bone[::-1] & ~tube[::-1], cols, top=8, spacing_mm=0.5)
    assert there == -1.5 and back == 1.5


def test_the_far_surface_is_the_bone_met_first_not_the_largest():
    """Beyond a head's dome, a phalanx in two pieces: its base, cupped round the dome, then (past a gap) a
    larger shaft. The far surface is the base's cup, met first above the dome, not the shaft's flat end: the
    cup adds its own bulge to the dome's."""
    nz, n = 70, 41
    z, y, x = np.mgrid[:nz, :n, :n]
    r = np.hypot(y - n // 2, x - n // 2)
    head = ((r <= 9) & (z <= 20)) | (np.hypot(r, z - 20) <= 9)  # the dome's top at slice 29
    base = (r <= 10) & (z >= 26) & (z <= 36) & (np.hypot(r, z - 20) > 11)  # its cup: slice 31 at the centre
    shaft = (r <= 10) & (z >= 42)
    cols = r[0] <= 10
    assert shaft.sum() > base.sum()
    dome = direction.surface_bulge(head | shaft, head, cols, top=8, spacing_mm=0.5)
    both = direction.surface_bulge(head | base | shaft, head, cols, top=8, spacing_mm=0.5)
    assert dome is not None and dome > 1.0
    assert both is not None and both > dome + 1.0
