"""A row of metacarpals that the field of view cuts short on MC2's side (``identify.past_edge``): MC2 may lie
outside it, so the naming is reviewed."""

import dataclasses
import json

import numpy as np

from tests.conftest import cli_here
from vbmd_rt.runtime.io import aim


def test_a_field_of_view_without_mc2_is_reviewed_and_a_whole_hand_is_not(phantoms, tmp_path):
    s = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data) != 0
    xs = np.flatnonzero(gt.any(axis=(0, 1)))
    data = np.asarray(s.data)
    side = json.loads((phantoms / "PHANTOM_0000.truth.json").read_text())["side"]
    # the field of view ends 3.7 mm before MC2's outline, on its side of the hand: MC3-MC5 are left
    cut = data[:, :, : xs[0] - 15] if xs[0] > data.shape[2] - xs[-1] else data[:, :, xs[-1] + 15 :]
    assert (side == "left") == (xs[0] > data.shape[2] - xs[-1])
    # cut on the far side too, through the hand's soft tissue: the model grid is padded with air past both
    # edges (its box is a multiple of 16 voxels), and the padding is no outline of the hand
    col = cut.astype(np.float32).mean(axis=(0, 1))
    hand = np.flatnonzero(col > col.min() + 0.3 * (col.max() - col.min()))
    both = cut[:, :, hand[0] :] if side == "left" else cut[:, :, : hand[-1]]
    assert both.shape[2] % 16
    for name, arr in (("without", cut), ("both", both)):
        aim.write_aim(tmp_path / f"{name}.AIM", np.ascontiguousarray(arr), dataclasses.replace(s.header))
    scans = (phantoms / "PHANTOM_0000.AIM", tmp_path / "without.AIM", tmp_path / "both.AIM")
    r = cli_here("run", *scans, "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    whole, without, both_cut = (
        json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in ("PHANTOM_0000", "without", "both")
    )
    assert not any("runs out of the field of view" in x for x in whole["qc"]["reasons"])
    for res in (without, both_cut):
        assert res["qc"]["status"] == "review"
        assert any("runs out of the field of view" in x and "MC2 may lie outside" in x for x in res["qc"]["reasons"])


def test_the_identity_error_script_sees_a_row_cut_short_as_the_stage_does(phantoms, tmp_path):
    """``identity_errors.review_checks`` asks ``past_edge`` as ``identify`` does: on the row named first (it
    reads the bone named MC3) and at the field of view's edge that the cached record keeps (``view``), not at
    the air the model grid is padded with. The scan as in the test above, cut through the soft tissue on both
    sides (MC2 out of view): from the cache, the naming is reviewed for it; without ``view``, the padding hides
    the edge."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import identity_errors
    finally:
        sys.path.pop(0)
    from vbmd_rt.runtime import identify

    s = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data)
    xs = np.flatnonzero(gt.any(axis=(0, 1)))
    data = np.asarray(s.data)
    left = xs[0] > data.shape[2] - xs[-1]
    keep = slice(None, xs[0] - 15) if left else slice(xs[-1] + 15, None)
    cut, cut_gt = data[:, :, keep], gt[:, :, keep]
    col = cut.astype(np.float32).mean(axis=(0, 1))
    hand = np.flatnonzero(col > col.min() + 0.3 * (col.max() - col.min()))
    keep = slice(hand[0], None) if left else slice(None, hand[-1])
    for name, arr in (("both", cut[:, :, keep]), ("both_GT", cut_gt[:, :, keep])):
        aim.write_aim(tmp_path / f"{name}.AIM", np.ascontiguousarray(arr), dataclasses.replace(s.header))
    record = identity_errors.cache_case(
        tmp_path / "both.AIM", tmp_path / "both_GT.AIM", phantoms / "PHANTOM_0000.truth.json"
    )
    bones, _ = identity_errors.candidates(record)
    hyps, margin = identify.name(bones, None)
    choice, thumb = hyps[0]["mc2"], hyps[0]["thumb"]
    assert thumb is None
    assert "past_edge" in identity_errors.review_checks(record, bones, choice, thumb, margin)
    assert identity_errors.score_case(record)["named"].endswith(", MC2 in no instance")  # no label under it
    assert all(b.name == "" for b in bones)  # the cached bones are not renamed
    padded = {k: v for k, v in record.items() if k != "view"}
    assert "past_edge" not in identity_errors.review_checks(padded, bones, choice, thumb, margin)
