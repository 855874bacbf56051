"""The mask's outline on the half level where the scan resolves the bone's edge (``runtime.edges``)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from vbmd_rt.runtime import edges, measure


def _disc_stack(n: int = 6, size: int = 64, radius: int = 18, cortex: float = 1000.0, soft: float = 50.0):
    """A bone as a stack of discs: the true mask and the scan, cortex inside and soft tissue around."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
    truth = np.repeat(disc[None], n, axis=0)
    return truth, np.where(truth, cortex, soft).astype(np.float32)


def _box(mask: np.ndarray) -> list[int]:
    zz, yy, xx = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    return [int(zz[0]), int(zz[-1]) + 1, int(yy[0]), int(yy[-1]) + 1, int(xx[0]), int(xx[-1]) + 1]


def _grow(mask: np.ndarray, step: int) -> np.ndarray:
    """One in-plane (4-neighbour) voxel out (step 1) or in (-1)."""
    k = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    op = cv2.dilate if step > 0 else cv2.erode
    return np.stack([op(s.astype(np.uint8), k) for s in mask]).astype(np.uint8)


@pytest.mark.parametrize("step", [1, -1])
def test_a_sharp_edge_puts_a_voxel_too_many_or_too_few_back_on_the_bone(step):
    """A step edge (one voxel from soft tissue to cortex): a mask one voxel wide (or narrow) of it all round
    is set back on the bone's outline, and its box still holds it."""
    truth, scan = _disc_stack()
    mask = _grow(truth, step)
    box = _box(mask)
    rec = edges.snap(scan, mask, box)
    assert rec["sharpness"] > 0.9 and rec["snapped"], rec
    assert np.array_equal(mask != 0, truth), (rec, int((mask != truth).sum()))
    assert (rec["removed"] > 0) == (step > 0) and (rec["added"] > 0) == (step < 0), rec
    z0, z1, y0, y1, x0, x1 = rec["box"]
    assert int(mask[z0:z1, y0:y1, x0:x1].sum()) == int(mask.sum())


def test_a_mask_a_voxel_inside_a_thin_sharp_cortex_gains_it_and_keeps_its_marrow():
    """A cortex one voxel thick round dark marrow, the mask a voxel narrow (its outer shell is marrow): the
    cortex is added, and the marrow under it stays in (no ring of holes); a dome's last small slice, all
    outline, is not taken off; a mask written 0/127 stays 0/127."""
    truth, _ = _disc_stack()
    rim = truth & ~(_grow(truth, -1) != 0)
    scan = np.where(rim, 1000.0, np.where(truth, 20.0, 50.0)).astype(np.float32)
    mask = _grow(truth, -1) * np.uint8(127)
    tip = np.zeros_like(mask)
    mask[-1] = 0
    mask[-1, 31:33, 31:33] = tip[-1, 31:33, 31:33] = 127  # the dome's tip: 2 x 2 voxels of partial volume
    scan[-1] = 50.0
    scan[-1, 31:33, 31:33] = 400.0
    rec = edges.snap(scan, mask, _box(mask))
    assert rec["snapped"] and rec["sharpness"] <= 1.0, rec
    assert np.array_equal(mask[:-1] != 0, truth[:-1]), (rec, int(((mask[:-1] != 0) != truth[:-1]).sum()))
    assert np.array_equal(mask[-1], tip[-1]) and set(np.unique(mask)) == {0, 127}


def test_a_blurred_edge_is_left_as_drawn():
    """Blurred over 1.5 voxels (the project's phantoms: 0.8-1.8), the steepest step holds well under
    ``RESOLVED`` of the rise: the mask is not touched, even one voxel wide."""
    truth, scan = _disc_stack()
    scan = np.stack([cv2.GaussianBlur(s, (0, 0), 1.5) for s in scan])
    mask = _grow(truth, 1)
    before = mask.copy()
    rec = edges.snap(scan, mask, _box(mask))
    assert rec["sharpness"] < edges.RESOLVED and not rec["snapped"], rec
    assert np.array_equal(mask, before)


def test_the_scans_voxels_to_one_voxel_of_the_models_grid():
    assert edges.scale(0.082, 0.246) == 3 and edges.scale(0.0607, 0.246) == 4  # XtremeCT I and II
    assert edges.scale(0.246, 0.246) == edges.scale(0.3, 0.246) == edges.scale(None, 0.246) == 1


@pytest.mark.parametrize("wide", [2, -2])
def test_on_fine_voxels_the_edge_is_judged_and_set_on_the_models_grid_scale(wide):
    """82 µm voxels, blurred over one of them (0.08 mm: sharp on the models' 0.246 mm grid, a blur their
    phantoms never had) and a mask two voxels wide or narrow, as an outline drawn on the coarser grid can be.
    Read voxel by voxel the edge looks blurred and is left alone; read as the models' grid sees it (three
    voxels to one), it is resolved, and the outline moves back onto the bone by up to three voxels."""
    truth, scan = _disc_stack(size=96, radius=30)
    scan = np.stack([cv2.GaussianBlur(s, (0, 0), 1.0) for s in scan])
    mask = _grow(_grow(truth, wide // 2), wide // 2)
    before = mask.copy()
    rec = edges.snap(scan, mask, _box(mask))  # no voxel size: one voxel to one
    assert rec["sharpness"] < edges.RESOLVED and not rec["snapped"] and np.array_equal(mask, before), rec
    rec = edges.snap(scan, mask, _box(mask), voxel_mm=0.082, grid_mm=0.246)
    assert rec["voxels_per_grid_voxel"] == 3 and rec["sharpness"] >= edges.RESOLVED and rec["snapped"], rec
    off = int(((mask != 0) != truth).sum())
    assert off <= 0.01 * truth.sum() < int((before != truth).sum()), (rec, off)
    assert (rec["removed"] > 0) == (wide > 0) and (rec["added"] > 0) == (wide < 0), rec
    z0, z1, y0, y1, x0, x1 = rec["box"]
    assert int(mask[z0:z1, y0:y1, x0:x1].sum()) == int(mask.sum())


def test_on_fine_voxels_the_outline_moves_one_grid_voxel_at_most():
    """60.7 µm voxels (four to a grid voxel), seven slices (not a multiple of four), a mask stored 0/127 five
    voxels wide of a sharp edge: it comes back four voxels, no more, and stays 0/127. Through a gap in a thin
    cortex the peel reaches at most those four voxels into the marrow."""
    truth, scan = _disc_stack(n=7, size=96, radius=30)
    mask = truth.astype(np.uint8)
    for _ in range(5):
        mask = _grow(mask, 1)
    mask *= np.uint8(127)
    rec = edges.snap(scan, mask, _box(mask), voxel_mm=0.0607, grid_mm=0.246)
    assert rec["voxels_per_grid_voxel"] == 4 and rec["snapped"], rec
    assert np.array_equal(mask != 0, _grow(truth, 1) != 0) and set(np.unique(mask)) == {0, 127}, rec
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    cortex = (r <= 30) & (r > 29)  # one voxel thick, broken over a few voxels at the top
    gap = cortex & (yy < 30) & (np.abs(xx - 48) <= 2)
    sl = np.where(cortex & ~gap, 1000.0, np.where(r <= 29, 20.0, 50.0)).astype(np.float32)
    scan = np.repeat(sl[None], 7, axis=0)
    mask = truth.astype(np.uint8)
    rec = edges.snap(scan, mask, _box(mask), voxel_mm=0.0607, grid_mm=0.246)
    assert rec["snapped"] and rec["removed"] > 0, rec
    lost = truth & (mask == 0)
    depth = 30 - r[lost[0]]  # how far in from the bone's outline each lost voxel lies
    assert depth.max() < 4.5 and set(np.unique(mask)) == {0, 1}, (rec, depth.max())
    assert lost[:, 48:].sum() == 0  # where the cortex is whole, the marrow under it stays


def test_on_fine_voxels_an_edge_blurred_on_the_models_grid_is_left_as_drawn():
    """The same 82 µm disc blurred over three voxels (0.25 mm, as the project's phantoms are on the models'
    grid): the network learnt that boundary, and the outline stays."""
    truth, scan = _disc_stack(size=96, radius=30)
    scan = np.stack([cv2.GaussianBlur(s, (0, 0), 3.0) for s in scan])
    mask = _grow(truth, 1)
    before = mask.copy()
    rec = edges.snap(scan, mask, _box(mask), voxel_mm=0.082, grid_mm=0.246)
    assert rec["sharpness"] < edges.RESOLVED and not rec["snapped"] and np.array_equal(mask, before), rec


def test_the_sharpness_of_a_profile():
    """Steepest step over the rise from the soft tissue (last shell) to the cortex (brightest shell in)."""
    assert edges.sharpness([900, 900, 900, 60, 50, 50]) == pytest.approx(840 / 850)
    assert edges.sharpness([900, 800, 600, 350, 150, 50]) == pytest.approx(250 / 850)
    assert edges.sharpness([50, 50, 50, 50, 50, 50]) == 0.0
    fine = [900, 900, 900, 890, 850, 700, 450, 200, 90, 60, 50, 50]  # 12 shells: over three of them
    assert edges.sharpness(fine, 3) == pytest.approx((850 - 200) / 850)
    assert edges.sharpness(fine) == pytest.approx(250 / 850)


def test_an_empty_or_tiny_mask_has_no_edge_to_read():
    truth, scan = _disc_stack()
    assert edges.snap(scan, np.zeros(truth.shape, np.uint8), None) is None
    dot = np.zeros(truth.shape, np.uint8)
    dot[2, 32, 32] = 1  # no three shells inside
    assert edges.snap(scan, dot, _box(dot)) is None and dot.sum() == 1


def test_a_sharp_scan_reads_its_true_d100_through_the_pipeline(monkeypatch):
    """A standard phantom rendered sharp (in-plane blur 0.3 voxel, under the 0.8-1.8 the network was
    trained on): the network's mask reads D100 low (soft tissue in, cortex out at the outline) until its
    outline is set on the half level; at the phantom's own blur nothing is snapped."""
    import vbmd_rt
    from vbmd_rt.synth import phantom

    p = phantom.sample_case(7, "small")
    results = {}
    snap, calls = edges.snap, []

    def spy(*args):  # the pipeline says how fine the scan's voxels are against the models' grid
        calls.append(args[3:])
        return snap(*args)

    monkeypatch.setattr(edges, "snap", spy)
    with vbmd_rt.Predictor() as pr:
        for name, params, resolved in (
            ("sharp", dataclasses.replace(p, psf_sigma_vox=0.3), edges.RESOLVED),
            ("sharp, not snapped", dataclasses.replace(p, psf_sigma_vox=0.3), 99.0),
            ("blurred", p, edges.RESOLVED),
        ):
            scan, truth = phantom.render_case(params)
            true_d100 = float(p.cal.density(scan[truth != 0].astype(np.float64)).mean())
            monkeypatch.setattr(edges, "RESOLVED", resolved)
            r = pr.run(scan, spacing=(p.voxel_mm,) * 3, calibration=p.cal)
            results[name] = (measure.dice(r.mask, truth), r.d100_mg_ha_cm3 - true_d100, r.record.mask["edge"])
    dice, err, edge = results["sharp"]
    dice0, err0, _ = results["sharp, not snapped"]
    assert edge["snapped"] and edge["sharpness"] >= 0.6, results
    assert abs(err) < 3.0 < abs(err0) and dice > dice0, results
    assert not results["blurred"][2]["snapped"] and results["blurred"][2]["sharpness"] < 0.5, results
    assert calls == [(p.voxel_mm, 0.246)] * 3, calls
