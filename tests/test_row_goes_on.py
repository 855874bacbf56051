"""A bone that is no metacarpal candidate lies in the row past the bone named MC2 (``identify.row_goes_on``):
MC2's shaft was found in pieces, or its head begins past the proximal slab, and the row's new end was named
MC2 in its place. The naming is reviewed."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from tests.conftest import cli_here
from vbmd_rt.runtime import bonewin, identify
from vbmd_rt.runtime.io import aim

SPACING = 0.5  # mm per pixel of the synthetic instances below


def _row(pieces, shape=(20, 80, 200)):
    """Three metacarpals (labels 1-3, discs of 4 mm radius through every slice) at x = 40, 60, 80 mm, y = 20 mm,
    the first named MC2, and ``pieces``: (label, x_mm, y_mm, radius_mm, first slice) discs that are no
    candidates. Returns the labels and the named bones."""
    yy, xx = np.mgrid[: shape[1], : shape[2]] * SPACING
    labels = np.zeros(shape, np.int32)
    bones = []
    for lab, x, name in ((1, 40.0, "MC2"), (2, 60.0, "MC3"), (3, 80.0, "MC4")):
        labels[:, np.hypot(yy - 20.0, xx - x) < 4.0] = lab
        bones.append(identify.Bone(lab, x, 20.0, 50.0, 80.0, 9.0, True, 9.0, False, name=name))
    for lab, x, y, r, z0 in pieces:
        labels[z0:, np.hypot(yy - y, xx - x) < r] = lab
    return labels, bones


def test_a_bone_one_spacing_past_mc2_in_the_rows_line_is_reviewed_and_nothing_else_is():
    def asks(pieces):
        labels, bones = _row(pieces)
        return identify.row_goes_on(labels, SPACING, bones, 0)

    assert asks([]) == ""
    # MC2's head (an instance from mid-stack on, as large in cross-section): one spacing past the named bone
    reason = asks([(4, 20.0, 20.0, 4.0, 10)])
    assert "MC2 not clearly identified" in reason and "candidate 1" in reason and "(20 mm)" in reason
    assert "0.50 times the volume" in reason  # half the stack, the same cross-section
    # the row's line is where it is looked for: half a spacing off it, and it is a thumb's or a phalanx's
    assert asks([(4, 20.0, 20.0 + 0.55 * 20.0, 4.0, 10)]) == ""
    assert asks([(4, 20.0, 20.0 + 0.45 * 20.0, 4.0, 10)]) != ""
    # a piece over MC2 itself (a phalanx's, its own condyle's), and one past the row's other end
    assert asks([(4, 34.0, 20.0, 4.0, 10)]) == ""
    assert asks([(4, 100.0, 20.0, 4.0, 10)]) == ""
    assert asks([(4, 60.0, 20.0, 4.0, 10)]) == ""  # over MC3 (its phalanx): behind MC2, not past it
    assert asks([(4, 60.0, 29.0, 4.0, 10)]) == ""  # MC3's side of MC2, 0.45 spacings off the line
    # from 0.7 to 1.5 spacings past it; beyond: another hand's bone, or none of this row
    assert asks([(4, 40.0 - 0.6 * 20.0, 20.0, 4.0, 10)]) == ""
    assert asks([(4, 40.0 - 0.75 * 20.0, 20.0, 4.0, 10)]) != ""
    assert asks([(4, 40.0 - 1.4 * 20.0, 20.0, 4.0, 10)]) != ""
    assert asks([(4, 40.0 - 1.6 * 20.0, 20.0, 4.0, 10)]) == ""
    # small pieces (a sesamoid) are not; pieces of one bone count together
    assert asks([(4, 22.0, 20.0, 2.0, 5)]) == ""
    assert asks([(4, 20.0, 20.0, 4.0, 16)]) == ""  # 0.22 of MC2's volume (a quarter is needed)
    assert asks([(4, 20.0, 20.0, 4.0, 14)]) != ""  # 0.33
    assert asks([(4, 22.0, 17.0, 2.0, 5), (5, 18.0, 23.0, 2.0, 5)]) != ""  # 0.19 each, 0.38 together
    # a candidate there (the thumb, where it lies on the row's line) is a bone the naming has weighed
    labels, bones = _row([(4, 20.0, 20.0, 4.0, 10)])
    bones.append(identify.Bone(4, 20.0, 20.0, 50.0, 80.0, 9.0, True, 9.0, False, name="thumb"))
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""
    # ... and so are its head and phalanx in pieces about it, however large
    labels, bones = _row([(4, 18.0, 20.0, 3.0, 10), (5, 26.0, 20.0, 3.0, 10)])
    bones.append(identify.Bone(6, 22.0, 20.0, 50.0, 80.0, 9.0, True, 9.0, False, name="thumb"))
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""
    labels, bones = _row([(4, 20.0, 20.0, 4.0, 10)])  # ROW_ON_OWN: 0.4 spacings from a candidate's centre
    bones.append(identify.Bone(6, 20.0, 20.0 + 0.35 * 20.0, 50.0, 80.0, 9.0, True, 9.0, False, name="thumb"))
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""
    bones[-1].y_mm = 20.0 + 0.45 * 20.0
    assert identify.row_goes_on(labels, SPACING, bones, 0) != ""
    # the background is no bone: a grid whose middle lies one spacing past MC2
    labels, bones = _row([], shape=(20, 80, 80))
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""
    # a candidate's own instance is no bone past it, wherever its centre was measured (its proximal slices)
    labels, bones = _row([(4, 20.0, 20.0, 4.0, 0)])
    bones.append(identify.Bone(4, 20.0, 40.0, 50.0, 80.0, 9.0, True, 9.0, False, name="thumb"))
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""
    # an empty grid, or one that holds no instance of the bone named MC2, asks nothing
    assert identify.row_goes_on(np.zeros((0, 0, 0), np.int32), SPACING, bones, 0) == ""
    labels, bones = _row([(4, 20.0, 20.0, 4.0, 10)])
    bones[0].label = 99
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""
    # a row without a bone named MC3 (MC2 alone) asks nothing
    labels, bones = _row([(4, 20.0, 20.0, 4.0, 10)])
    bones[1].name = ""
    assert identify.row_goes_on(labels, SPACING, bones, 0) == ""


def _shaft_gone(phantoms: Path, case: str, out: Path, share: float = 0.35) -> Path:
    """The scan with MC2 (its true mask, one voxel wider) made soft tissue in the proximal ``share`` of its
    slices: its shaft is missing from the slices that make a bone a candidate, its head stays. Written to ``out``
    with the true mask beside it (``*_GT.AIM``)."""
    s = aim.read_aim(phantoms / f"{case}.AIM")
    gt = np.asarray(aim.read_aim(phantoms / f"{case}_GT.AIM").data) != 0
    data = np.asarray(s.data).copy()
    n = int(share * data.shape[0])
    near = ndimage.binary_dilation(gt[:n], iterations=6) & ~ndimage.binary_dilation(gt[:n], iterations=3)
    data[:n][ndimage.binary_dilation(gt[:n])] = np.median(data[:n][near])
    aim.write_aim(out, np.ascontiguousarray(data), dataclasses.replace(s.header))
    aim.write_aim(out.with_name(out.stem + "_GT.AIM"), np.ascontiguousarray(gt.astype(np.uint8)), s.header)
    return out


def test_a_metacarpal_whose_shaft_is_no_candidate_leaves_its_neighbour_named_and_reviewed(phantoms, tmp_path):
    """Both sides: PHANTOM_0000 and _0002 hold MC2 at opposite ends of the row. Whole, they pass; with MC2's
    shaft gone from the proximal slices, the stage names MC3 and reviews it for the bone past it, and so does
    QC in ``run``."""
    grid = float(bonewin.GRID.spacing_mm)
    for case in ("PHANTOM_0000", "PHANTOM_0002"):
        cut = _shaft_gone(phantoms, case, tmp_path / f"{case}_cut.AIM")
        whole = aim.read_aim(phantoms / f"{case}.AIM")
        idt = identify.identify(bonewin.model_volume(whole.data, whole.spacing_zyx, whole.calibration)[0], grid)
        assert not any("no metacarpal candidate" in r for r in idt.reasons), case
        s = aim.read_aim(cut)
        idt = identify.identify(bonewin.model_volume(s.data, s.spacing_zyx, s.calibration)[0], grid)
        assert len(idt.candidates) == 3, case  # MC3-MC5: MC2 is no candidate
        assert any("no metacarpal candidate" in r for r in idt.reasons), case
    r = cli_here("run", tmp_path / "PHANTOM_0000_cut.AIM", "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "PHANTOM_0000_cut.json").read_text())
    assert res["qc"]["status"] == "review"
    assert any("no metacarpal candidate" in x for x in res["qc"]["reasons"])


def test_the_identity_error_script_counts_a_naming_without_mc2_among_the_candidates(phantoms, tmp_path):
    """``identity_errors``: a naming whose true MC2 is no candidate is a wrong naming (it was left out of the
    wrong ones as "unnamed"), and ``review_checks`` reads the cached instances for ``row_goes_on``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import identity_errors
    finally:
        sys.path.pop(0)
    cut = _shaft_gone(phantoms, "PHANTOM_0000", tmp_path / "cut.AIM")
    record = identity_errors.cache_case(cut, tmp_path / "cut_GT.AIM", phantoms / "PHANTOM_0000.truth.json")
    scored = identity_errors.score_case(record)
    assert scored["named"] == "MC3, MC2 no candidate"
    assert "row_goes_on" in scored["review"]
    # instances made again from the cached volume (``score --remake``): MC2's head is still an instance
    remade = identity_errors.score_case(identity_errors.remake(record))
    assert remade["named"] == "MC3, MC2 no candidate"
    assert "row_goes_on" in remade["review"]
    assert "row_goes_on" not in identity_errors.review_checks(
        {k: v for k, v in record.items() if k != "labels"}, *_naming(identity_errors, record)
    )


def _naming(identity_errors, record):
    bones, _ = identity_errors.candidates(record)
    hyps, margin = identify.name(bones, None)
    return bones, hyps[0]["mc2"], hyps[0]["thumb"], margin
