"""nnU-Net-style augmentation: image and target stay aligned, intensities change, the seed repeats a run."""

import pytest

torch = pytest.importorskip("torch")

from vbmd_rt.export.augment import AugmentConfig, augment, blur  # noqa: E402

ALL = AugmentConfig(p_rotate=1, p_scale=1, p_elastic=1, p_gamma=1, p_contrast=1, p_noise=1, p_blur=1, p_lowres=1)


def _ball(shape=(24, 48, 64)):
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    inside = ((z - 12) / 9) ** 2 + ((y - 22) / 14) ** 2 + ((x - 38) / 18) ** 2 < 1
    image = torch.where(inside, 2.0, -1.0) + 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return image[None, None], inside.float()[None, None]


@pytest.mark.parametrize("seed", range(6))
def test_spatial_transforms_keep_image_and_target_aligned(seed):
    x, y = _ball()
    g = torch.Generator().manual_seed(seed)
    xa, ya = augment(
        x,
        y,
        g,
        AugmentConfig(p_rotate=1, p_scale=1, p_elastic=1, p_gamma=0, p_contrast=0, p_noise=0, p_blur=0, p_lowres=0),
    )
    bright = xa > 0.5
    sure = ya > 0.5
    dice = 2 * (bright & sure).sum() / (bright.sum() + sure.sum())
    assert dice > 0.93
    assert 0.0 <= float(ya.min()) and float(ya.max()) <= 1.0 + 1e-5


def test_every_transform_changes_the_image_and_a_seed_repeats_it():
    x, y = _ball()
    a = augment(x, y, torch.Generator().manual_seed(3), ALL)
    b = augment(x, y, torch.Generator().manual_seed(3), ALL)
    c = augment(x, y, torch.Generator().manual_seed(4), ALL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == x.shape and not torch.allclose(a[0], x)


def test_blur_keeps_the_mean_and_lowers_the_variance():
    x = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    b = blur(x, 1.0)
    assert float(b.mean()) == pytest.approx(float(x.mean()), abs=0.02)
    assert float(b.std()) < 0.6 * float(x.std())


def test_two_dimensional_batches_work_too():
    x, y = _ball((1, 48, 64))
    xa, ya = augment(x[:, :, 0], y[:, :, 0], torch.Generator().manual_seed(0), ALL)
    assert xa.shape == (1, 1, 48, 64) and ya.shape == (1, 1, 48, 64)
