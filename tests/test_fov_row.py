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
