"""The one-bone segmenter's inputs: a slice unlike its neighbours is no context for them."""

import numpy as np
import pytest
from scipy import ndimage

from vbmd_rt.runtime import bonewin


def _tube(n: int = 40, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """A windowed volume of one bone's shaft (a cortex ring of ``level`` round marrow at 0.1) and its prior."""
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32)
    img = np.where((d < 12) & (d >= 10), level, np.where(d < 10, 0.1, 0.0)).astype(np.float32)
    image = np.repeat(img[None], n, axis=0)
    pri = np.repeat((d < 12).astype(np.float32)[None], n, axis=0)
    return image, pri


def test_a_filled_end_and_a_slice_of_zeros_are_odd_a_head_widening_is_not():
    image, pri = _tube()
    yy, xx = np.mgrid[:64, :64]
    image[0][np.hypot(yy - 32, xx - 32) < 12] = 0.9  # a bone closed by a disc of cortex in the stack's first slice
    image[20] = 0.0  # a slice lost
    assert np.flatnonzero(bonewin.odd_slices(image, pri)).tolist() == [0, 20]
    ramp, pri = _tube()
    ramp *= np.linspace(1.0, 1.6, ramp.shape[0], dtype=np.float32)[:, None, None]  # a head's level, rising
    assert not bonewin.odd_slices(ramp, pri).any()
    pri[-4:] *= 0.0  # past the joint: no core, nothing judged
    ramp[-4:] = 2.0
    assert not bonewin.odd_slices(ramp, pri).any()


def test_an_odd_context_slice_is_replaced_by_the_one_opposite_or_the_slice_itself():
    image, pri = _tube()
    for k in range(image.shape[0]):
        image[k, 0, 0] = k  # each slice says which it is
    odd = np.zeros(image.shape[0], bool)
    odd[[0, 12]] = True
    x = bonewin.batch(image, pri, [2, 4, 8, 12, 14], odd)
    which = x[:, : len(bonewin.CONTEXT), 0, 0].astype(int).tolist()
    assert bonewin.CONTEXT == (-4, -2, 0, 2, 4)
    assert which[0] == [6, 4, 2, 4, 6]  # slice 2: the stack's first slice (offset -2, and -4 clipped) is odd
    assert which[1] == [8, 2, 4, 6, 8]  # slice 4: offset -4 is slice 0
    assert which[2] == [4, 6, 8, 10, 4]  # slice 8: slice 12 at +4, replaced by slice 4 at -4
    assert which[3] == [8, 10, 12, 14, 16]  # an odd slice's own input is itself, its neighbours as they are
    x0 = bonewin.batch(image, pri, [2, 4, 8, 12, 14])
    assert x0[0, :5, 0, 0].astype(int).tolist() == [0, 0, 2, 4, 6]  # without ``odd``: clipped, as trained
    both = np.zeros(image.shape[0], bool)
    both[[6, 10]] = True
    assert bonewin.batch(image, pri, [8], both)[0, :5, 0, 0].astype(int).tolist() == [4, 8, 8, 8, 12]


@pytest.fixture(scope="module")
def capped():
    """A standard phantom whose MC2 is closed by a disc of cortex in the first slice (a mesh-rendered bone's
    end), on the one-bone grid, and its identification."""
    from vbmd_rt.runtime import identify
    from vbmd_rt.synth import phantom

    p = phantom.sample_case(3, "small")
    scan, truth = phantom.render_case(p)
    t = truth[0] != 0
    scan[0][ndimage.binary_fill_holes(t)] = np.percentile(scan[0][t], 90)
    vol, _ = bonewin.model_volume(scan, (p.voxel_mm,) * 3, p.cal)
    return vol, identify.identify(vol, bonewin.GRID.spacing_mm)


def test_the_bundled_network_keeps_the_slices_after_a_closed_end(capped, monkeypatch):
    from vbmd_rt.runtime.inference.ort_backend import OnnxRuntimeBackend
    from vbmd_rt.runtime.model import load_model

    vol, idt = capped
    with OnnxRuntimeBackend(load_model(), "cpu") as backend:
        prob, _ = bonewin.predict(vol, idt.region, backend.infer)
        area = (prob > 0.5).sum(axis=(1, 2))
        assert area[:5].min() > 0.85 * area[5]
        monkeypatch.setattr(bonewin, "odd_slices", lambda image, pri: np.zeros(image.shape[0], bool))
        blind, _ = bonewin.predict(vol, idt.region, backend.infer)
        assert (blind > 0.5).sum(axis=(1, 2))[:5].min() < 0.6 * area[5]  # what the network does with it as context


def _envelope(pit: bool) -> tuple[np.ndarray, np.ndarray]:
    """A tilted oval shaft, 160 x 160, and, with ``pit``, an erosion's disc cut through its edge."""
    import cv2

    env = np.zeros((160, 160), np.uint8)
    cv2.ellipse(env, (80, 80), (40, 26), 33, 0, 360, 1, -1)
    hole = np.zeros_like(env)
    if pit:
        a = np.radians(33)
        cv2.circle(hole, (int(80 + 37 * np.cos(a)), int(80 + 37 * np.sin(a))), 7, 1, -1)
    return (env > 0) & (hole == 0), hole > 0


def test_the_recipe_weighs_an_erosions_pit_and_nothing_else_on_a_convex_envelope():
    pytest.importorskip("torch")
    from vbmd_rt.export.bonewin import notch, notched_slices

    plain, _ = _envelope(False)
    assert not notch(plain).any()  # the rasterised edge of a convex shaft leaves only slivers: none weigh
    eroded, pit = _envelope(True)
    found = notch(eroded)
    inside = pit & ndimage.binary_fill_holes(plain)
    assert found.sum() >= 0.7 * inside.sum() and not (found & ~ndimage.binary_dilation(pit, iterations=2)).any()
    stack = np.stack([plain, eroded, plain, eroded]).astype(np.uint8)
    assert notched_slices(stack).tolist() == [1, 3]


def test_a_recipe_sample_weighs_the_notch_and_draws_notched_slices_at_its_share():
    pytest.importorskip("torch")
    import torch

    from vbmd_rt.export import bonewin as recipe

    plain, _ = _envelope(False)
    eroded, _ = _envelope(True)
    truth = np.stack([plain] * 9 + [eroded]).astype(np.uint8)
    big = np.zeros((10, recipe.CACHE_PX, recipe.CACHE_PX), np.uint8)
    big[:, 20:180, 20:180] = truth
    case = {
        "image": big.astype(np.float16),
        "truth": big,
        "priors": big[None].astype(np.float16),
        "notched": recipe.notched_slices(big),
    }
    assert case["notched"].tolist() == [9]
    rng = np.random.default_rng(0)
    drawn = [recipe.sample(case, rng, notch_weight=4.0, notch_share=1.0) for _ in range(6)]
    for x, y, w in drawn:  # every draw is the eroded slice (rotated, scaled, mirrored), its pit weighing 5
        assert x.shape == (bonewin.CHANNELS, 160, 160) and set(np.unique(w)) == {1.0, 5.0}
        assert (w > 1).sum() > 20 and not y[w > 1].any()
    share = [recipe.sample(case, rng, 4.0, 0.25)[2].max() > 1 for _ in range(400)]
    assert 0.25 < np.mean(share) < 0.40  # a quarter drawn from the notched slices, and a tenth of the rest
    x, y, w = recipe.sample(case, np.random.default_rng(1))  # the defaults: no weights, any slice
    assert (w == 1).all()
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    flat = recipe.dice_bce(logits, target)
    assert torch.allclose(flat, recipe.dice_bce(logits, target, torch.full_like(target, 3.0)))
    heavy = torch.ones_like(target)
    heavy[0, 0, 0, 0] = 50.0
    assert not torch.allclose(flat, recipe.dice_bce(logits, target, heavy))
