"""Model space and back: resampling, crop, orientation round trips, and the shared preprocessing."""

import numpy as np
import pytest

from vbmd_rt.runtime import preprocess
from vbmd_rt.runtime.postprocess import fill_holes_slicewise, largest_component, postprocess
from vbmd_rt.synth import phantom


@pytest.fixture(scope="module")
def small_case():
    p = phantom.sample_case(31, "small")
    scan, truth = phantom.render_case(p)
    return p, scan, truth


@pytest.mark.parametrize("side", ["left", "right", "auto"])
def test_orientation_round_trip_is_identity(small_case, side):
    """raw -> model space -> raw gives back every voxel, for both hands (small scans: same grid)."""
    _, scan, truth = small_case
    spec = preprocess.Spec(size=512)
    vol, geo = preprocess.to_model(scan, spec, side)
    assert geo.flip_x == (side == "left")
    assert vol.shape[1] % 16 == 0 and vol.shape[2] % 16 == 0
    frac = preprocess.to_model_mask(truth, geo)
    back = preprocess.from_model(frac, geo)
    assert back.shape == truth.shape
    np.testing.assert_array_equal(back > 0.5, truth > 0)
    img_back = preprocess.from_model(vol, geo)
    inside = truth > 0
    np.testing.assert_allclose(img_back[inside], scan[inside].astype(np.float32), atol=1e-2)


def test_left_hand_is_mirrored_into_model_space(small_case):
    _, scan, _ = small_case
    spec = preprocess.Spec(size=512, crop=False)
    right, _ = preprocess.to_model(scan, spec, "right")
    left, _ = preprocess.to_model(scan, spec, "left")
    np.testing.assert_array_equal(left, right[..., ::-1])


def test_crop_keeps_the_whole_hand(small_case):
    _, scan, truth = small_case
    vol, geo = preprocess.to_model(scan, preprocess.Spec(size=512))
    y0, y1, x0, x1 = geo.crop
    ys, xs = np.nonzero(truth.any(axis=0))
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
    assert vol.shape[1] * vol.shape[2] < 0.6 * 512 * 512  # air cut away


def test_isotropic_z_and_native_z():
    data = np.zeros((90, 96, 96), np.int16)
    vol, geo = preprocess.to_model(data, preprocess.Spec(size=32, crop=False))
    assert vol.shape == (30, 32, 32) and geo.scale == (3.0, 3.0, 3.0)
    vol, geo = preprocess.to_model(data, preprocess.Spec(size=32, crop=False, z_mode="native"))
    assert vol.shape == (90, 32, 32)


def test_resampling_preserves_means():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (60, 96, 96)).astype(np.float32)
    small = preprocess.resize_slices(data, 32, out=np.empty((60, 32, 32), np.float32))
    z = preprocess.resample_z(small, 20)
    assert z.mean() == pytest.approx(data.mean(), rel=1e-4)
    np.testing.assert_allclose(z[0], data[:3].reshape(3, 32, 3, 32, 3).mean(axis=(0, 2, 4)), rtol=1e-4)


def test_postprocess_upsamples_to_native_and_keeps_largest_component():
    """A model-grid sphere on an 82 µm-like grid (scale 3) comes back as a native sphere, specks dropped."""
    native = (48, 96, 96)
    geo = preprocess.Geometry(native, (16, 32, 32), False, (0, 32, 0, 32))
    zz, yy, xx = np.mgrid[:16, :32, :32]
    prob = ((zz - 8) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 < 36).astype(np.float32)
    prob[2, 2, 2] = 1.0  # a speck far away
    mask, info = postprocess(prob, geo, 0.5)
    assert mask.shape == native and info["components"] == 2 and not info["empty"]
    z, y, x = np.mgrid[:48, :96, :96]
    sphere = ((z + 0.5) / 3 - 8.5) ** 2 + ((y + 0.5) / 3 - 16.5) ** 2 + ((x + 0.5) / 3 - 16.5) ** 2 < 36
    dice = 2 * (mask.astype(bool) & sphere).sum() / (mask.astype(bool).sum() + sphere.sum())
    assert dice > 0.95
    assert mask[:12, :12, :12].sum() == 0


def test_postprocess_of_nothing_is_an_empty_mask():
    geo = preprocess.Geometry((10, 30, 30), (10, 30, 30), False, (0, 32, 0, 32))
    mask, info = postprocess(np.zeros((10, 32, 32), np.float32), geo)
    assert info["empty"] and mask.sum() == 0 and mask.shape == (10, 30, 30)


def test_fill_holes_and_largest_component():
    m = np.zeros((3, 9, 9), bool)
    m[:, 2:7, 2:7] = True
    m[:, 4, 4] = False
    m[0, 0, 0] = True
    filled = fill_holes_slicewise(m)
    assert filled[:, 4, 4].all()
    assert not largest_component(filled)[0, 0, 0]


# --------------------------------------------------------------------------- model space in millimetres

MM = preprocess.Spec(size=512, spacing_mm=0.246)


@pytest.mark.parametrize(
    ("shape", "voxel_mm", "grid"),
    [
        ((320, 1536, 1536), 0.082, (107, 512, 512)),  # XtremeCT I, the whole field of view
        ((320, 768, 768), 0.082, (107, 256, 256)),  # the same scan cropped around the hand: bones stay their size
        ((168, 512, 512), 0.246, (168, 512, 512)),  # the small phantoms: no resampling at all
        ((168, 2304, 2304), 0.0607, (41, 569, 569)),  # XtremeCT II geometry: by millimetres, not by pixels
        ((15625, 1, 1), 0.082, (5208, 1, 1)),  # a lying header: the grid follows the physical size
    ],
)
def test_the_model_grid_follows_the_voxel_size_not_the_pixel_count(shape, voxel_mm, grid):
    assert preprocess.model_grid(shape, MM, (voxel_mm,) * 3)[0] == grid


def test_old_cards_keep_the_pixel_count_grid():
    assert preprocess.model_grid((320, 768, 768), preprocess.Spec(size=512), None)[0] == (320 * 512 // 768, 512, 512)


def test_millimetre_model_space_needs_the_voxel_size():
    with pytest.raises(ValueError, match="voxel size"):
        preprocess.to_model(np.zeros((4, 8, 8), np.int16), MM)
    with pytest.raises(ValueError, match="positive"):
        preprocess.to_model(np.zeros((4, 8, 8), np.int16), MM, spacing_zyx=(0.1, float("nan"), 0.1))


def test_a_crop_is_the_same_window_of_model_space(small_case):
    """At the model's spacing a crop is resampled not at all: its model volume is the whole scan's, cut."""
    _, scan, truth = small_case
    ys, xs = np.nonzero(truth.any(axis=0))
    y0, x0 = max(0, (ys.min() + ys.max()) // 2 - 100), max(0, (xs.min() + xs.max()) // 2 - 100)
    crop = scan[:, y0 : y0 + 200, x0 : x0 + 200]
    spec = preprocess.Spec(size=512, spacing_mm=0.246, crop=False)
    whole, gw = preprocess.to_model(scan, spec, spacing_zyx=(0.246,) * 3)
    part, gp = preprocess.to_model(crop, spec, spacing_zyx=(0.246,) * 3)
    assert gp.model_shape == (gw.model_shape[0], 200, 200) and gp.scale == pytest.approx((1.0, 1.0, 1.0))
    a = preprocess.from_model(whole, gw)[:, y0 : y0 + 200, x0 : x0 + 200]
    np.testing.assert_allclose(preprocess.from_model(part, gp), a, atol=1e-5)


def test_round_trip_on_a_non_square_finer_grid(small_case):
    """An anisotropic, non-square native grid (e.g. 60.7 µm in-plane) maps to model space and back exactly."""
    _, _, truth = small_case
    t = truth[:40, 100:400, 60:460]
    fine = np.repeat(np.repeat(t, 2, axis=1), 2, axis=2)  # 0.123 mm in-plane, 0.246 mm slices
    vol, geo = preprocess.to_model(fine.astype(np.int16) * 1000, MM, spacing_zyx=(0.246, 0.123, 0.123))
    assert geo.model_shape == (40, 300, 400)
    model = preprocess.from_model(preprocess.to_model_mask(fine, geo), geo)  # the uncropped model grid
    np.testing.assert_array_equal(model > 0.5, t > 0)
    native = preprocess.sample_at_native(model, geo, (slice(0, 40), slice(0, 600), slice(0, 800)))
    assert native.shape == fine.shape
    assert np.mean((native > 0.5) != (fine > 0)) < 0.002  # linear interpolation moves only boundary voxels


def _postprocess_on_the_whole_grid(prob, geometry, threshold=0.5):
    """The postprocess before it worked in boxes only (issue 20): the reference the boxed one must equal."""
    from scipy import ndimage

    from vbmd_rt.runtime.postprocess import _bbox

    full = preprocess.from_model(prob, geometry)
    labels, n = ndimage.label(full > threshold, structure=np.ones((3, 3, 3), dtype=bool))  # the whole grid
    keep = labels == int(np.argmax(np.bincount(labels.ravel())[1:]) + 1) if n else labels > 0
    mask = np.zeros(geometry.native_shape, dtype=np.uint8)
    if n == 0:
        return mask, {"components": 0, "model_voxels": 0, "box": None, "empty": True}
    region = ndimage.binary_dilation(keep, iterations=2)
    box = preprocess.native_box(_bbox(region), geometry)
    p = preprocess.sample_at_native(np.where(region, full, np.float32(0)), geometry, box)
    native = largest_component(fill_holes_slicewise(p > threshold))
    mask[box] = native
    b = [box[0].start, box[0].stop, box[1].start, box[1].stop, box[2].start, box[2].stop]
    return mask, {"components": int(n), "model_voxels": int(keep.sum()), "box": b, "empty": not native.any()}


@pytest.mark.parametrize(
    "native, crop, flip, centre",
    [
        ((48, 96, 96), (0, 32, 0, 32), False, (8, 16, 16)),  # scale 3, no crop
        ((48, 96, 96), (4, 28, 6, 30), True, (8, 14, 12)),  # a crop inside the grid, a left hand
        ((48, 96, 96), (-5, 27, 10, 42), False, (8, 3, 25)),  # a crop past the edges; the bone at one
        ((12, 24, 24), (-3, 29, -2, 30), True, (6, 20, 2)),  # native coarser than the model (scale 0.75)
        ((40, 70, 110), (2, 30, 0, 32), True, (15, 13, 30)),  # anisotropic scales, the bone at the crop's edge
    ],
)
def test_postprocess_in_boxes_equals_the_whole_grid(native, crop, flip, centre):
    """Working inside boxes only changes no voxel and no fact: the same mask and info as on the whole grid."""
    geo = preprocess.Geometry(native, (16, 32, 32), flip, crop)
    rng = np.random.default_rng(sum(native) + crop[0])
    shape = (16, crop[1] - crop[0], crop[3] - crop[2])
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx = centre
    prob = np.clip(1.2 - ((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / 30.0, 0, 1).astype(np.float32)
    prob += rng.uniform(0, 0.3, shape).astype(np.float32)  # noise: specks above threshold here and there
    prob[1, shape[1] // 2 : shape[1] // 2 + 2, shape[2] // 2 : shape[2] // 2 + 2] = 0.9  # a second component
    got, info = postprocess(prob, geo, 0.5)
    want, info_want = _postprocess_on_the_whole_grid(prob, geo, 0.5)
    assert info == info_want
    np.testing.assert_array_equal(got, want)
    assert info["components"] >= 2 and not info["empty"]


def test_largest_component_in_its_box_breaks_ties_as_on_the_whole_volume():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    m = np.zeros((20, 40, 40), bool)
    m[3:8, 5:30, 6:33] = rng.uniform(size=(5, 25, 27)) > 0.7  # many components, some of equal size
    m[12, 10, 10] = m[15, 30, 20] = True  # two single voxels: a tie far apart
    labels, n = ndimage.label(m, structure=np.ones((3, 3, 3), dtype=bool))
    want = labels == int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    np.testing.assert_array_equal(largest_component(m), want)
    ties = np.zeros_like(m)
    ties[12, 10, 10] = ties[15, 30, 20] = True
    got = largest_component(ties)
    assert got.sum() == 1 and got[12, 10, 10]  # the first in raster order, as ndimage.label numbers them
    assert not largest_component(np.zeros_like(m)).any()


def _whole_grid_then_crop(data, spec, side, spacing):
    """The reference: every slice resampled over the whole field of view, then the hand's box cut."""
    (mz, my, mx), _ = preprocess.model_grid(data.shape, spec, spacing)
    vol = preprocess.resample_z(
        preprocess.resize_slices(data, (my, mx), out=np.empty((data.shape[0], my, mx), np.float32)), mz
    )
    vol = preprocess.orient(vol, preprocess.flip_for(side))
    return (vol - spec.mean) / spec.std


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("radius", [15, 70])  # a hand inside the field of view; one that fills it (the box is padded)
def test_resampling_the_hands_box_alone_equals_the_whole_grid_cropped(side, radius):
    """At an integer in-plane factor only the native voxels under the hand's box are resampled (82 µm to
    0.246 mm: a quarter of a full scan's field of view); each model voxel is the same average as on the
    whole grid, and the box is the hand's on the whole grid."""
    rng = np.random.default_rng(3)
    data = rng.normal(100, 20, (60, 99, 99)).astype(np.int16)  # a grid of 33 x 33: the box is 40 (multiple 8)
    yy, xx = np.mgrid[:99, :99]
    data[:, (yy - 40) ** 2 + (xx - 58) ** 2 < radius**2] += 2000
    spec = preprocess.Spec(spacing_mm=0.246, mean=50.0, std=400.0, multiple=8, margin=2)
    spacing = (0.082, 0.082, 0.082)
    vol, geo = preprocess.to_model(data, spec, side, spacing_zyx=spacing)
    ref = _whole_grid_then_crop(data, spec, side, spacing)
    assert geo.crop == preprocess.hand_box(ref, spec.multiple, spec.margin)
    y0, y1, x0, x1 = geo.crop
    _, my, mx = geo.model_shape
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, my), max(x0, 0), min(x1, mx)
    assert vol.shape == (geo.model_shape[0], y1 - y0, x1 - x0)
    inside = vol[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    np.testing.assert_allclose(inside, ref[:, cy0:cy1, cx0:cx1], rtol=0, atol=1e-5)
    if radius > 48:  # the box leaves the grid: air there, below the hand
        assert (y0, y1, x0, x1) != (cy0, cy1, cx0, cx1)
        outside = np.ones(vol.shape, bool)
        outside[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = False
        assert np.all(vol[outside] < inside.mean())


def test_a_mask_held_for_its_box_reads_and_measures_as_a_whole_one():
    """postprocess's native mask (``sparse_zeros``) is an ordinary zero array; ``measure.vbmd`` given the box
    reads inside it only and gives what the whole array gives."""
    from vbmd_rt.runtime import measure
    from vbmd_rt.runtime.io.calibration import Calibration
    from vbmd_rt.runtime.postprocess import sparse_zeros

    big = sparse_zeros((40, 1024, 1024))  # 40 MB: the memory-mapped kind
    small = sparse_zeros((4, 8, 8))
    assert big.shape == (40, 1024, 1024) and big.dtype == np.uint8 and big.flags.writeable and not big.any()
    assert isinstance(small, np.ndarray) and not small.any()

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024

    before = rss_mb()
    wide = sparse_zeros((64, 2048, 2048))  # 256 MB, read whole and written in a box: a few MB taken
    wide[10:20, 100:200, 100:300] = 1
    assert np.count_nonzero(wide) == 10 * 100 * 200
    assert rss_mb() - before < 32
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, big.shape, dtype=np.int16)
    big[5:30, 400:460, 500:580] = rng.random((25, 60, 80)) > 0.3
    cal = Calibration(mu_scaling=8192.0, slope=1603.5, intercept=-391.2)
    whole = measure.vbmd(data, big, (0.082,) * 3, cal)
    boxed = measure.vbmd(data, big, (0.082,) * 3, cal, (0, 40, 390, 470, 480, 600))
    assert boxed == whole and whole["voxels"] == int(np.count_nonzero(big))


def test_fill_holes_2d_is_scipys_fill_holes():
    """The flood-fill hole filling gives scipy's pixels on random masks of every density and size."""
    from scipy import ndimage

    from vbmd_rt.runtime.postprocess import fill_holes_2d

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        np.testing.assert_array_equal(fill_holes_2d(m), ndimage.binary_fill_holes(m))
        np.testing.assert_array_equal(fill_holes_2d(m.astype(np.uint8) * 127), ndimage.binary_fill_holes(m))


def test_the_hands_box_is_the_whole_grids_when_bones_come_and_go_along_z():
    """The box is found on the mean over every slice, as on the whole grid: a bone on a sixth of the
    slices, bright enough to count in that mean, is inside it; the box is the whole grid's."""
    rng = np.random.default_rng(4)
    data = rng.normal(100, 20, (90, 192, 192)).astype(np.int16)
    yy, xx = np.mgrid[:192, :192]
    data[:, (yy - 60) ** 2 + (xx - 60) ** 2 < 20**2] += 2000  # the hand
    data[41:56, (yy - 150) ** 2 + (xx - 150) ** 2 < 12**2] += 9000  # a bone on 15 of 90 slices
    spec = preprocess.Spec(spacing_mm=0.246, multiple=8, margin=1)
    spacing = (0.082, 0.082, 0.082)
    for side in ("right", "left"):
        _, geo = preprocess.to_model(data, spec, side, spacing_zyx=spacing)
        assert geo.crop == preprocess.hand_box(_whole_grid_then_crop(data, spec, side, spacing), 8, 1)
    y0, y1, x0, x1 = preprocess.to_model(data, spec, "right", spacing_zyx=spacing)[1].crop
    assert y1 * 3 >= 150 + 12 and x1 * 3 >= 150 + 12  # the bone of a few slices is in


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_mask_to_model_space_in_its_box_is_the_whole_scans(side):
    """to_model_mask given the mask's box resamples the model voxels over it only: the same fractions."""
    rng = np.random.default_rng(0)
    m = np.zeros((60, 99, 99), np.uint8)
    m[10:40, 31:62, 20:71] = rng.random((30, 31, 51)) > 0.3
    data = (rng.normal(100, 20, m.shape) + m * 2000.0).astype(np.int16)
    _, geo = preprocess.to_model(
        data, preprocess.Spec(spacing_mm=0.246, multiple=8, margin=2), side, spacing_zyx=(0.082,) * 3
    )
    whole = preprocess.to_model_mask(m, geo)
    boxed = preprocess.to_model_mask(m, geo, (10, 40, 31, 62, 20, 71))
    assert whole.sum() > 100
    np.testing.assert_allclose(boxed, whole, rtol=0, atol=1e-6)
