"""Data augmentation in the spirit of nnU-Net's default pipeline, on (N, 1, Z, Y, X) or (N, 1, Y, X) tensors.

Spatial (image and target through one sampling grid, so they stay aligned): mirroring in x and y,
rotation about the bone's axis (+-30 deg) and tilt (+-10 deg, 3D only), scaling (0.8-1.25), elastic
deformation (a coarse random displacement field, smoothly upsampled). Intensity (image only): gamma,
brightness and contrast, Gaussian noise, Gaussian blur, simulated low resolution (down- and upsampled).
Each transform is applied with its own probability, drawn from ``gen`` so that a seed repeats a run.

The target may hold fractions (sub-voxel boundary information); it is resampled linearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vbmd_rt.runtime.preprocess import MODEL_SPACING_MM


@dataclass(frozen=True)
class AugmentConfig:
    p_mirror: float = 0.5
    p_rotate: float = 0.5
    rotate_deg: float = 30.0
    tilt_deg: float = 10.0
    p_scale: float = 0.3
    scale: tuple[float, float] = (0.8, 1.25)
    p_elastic: float = 0.25
    elastic_mm: float = 1.5  # displacement amplitude
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_contrast: float = 0.5
    p_noise: float = 0.3
    p_blur: float = 0.2
    p_lowres: float = 0.2
    spacing_mm: float = MODEL_SPACING_MM


def _u(gen: torch.Generator, a: float, b: float) -> float:
    return float(torch.empty(1).uniform_(a, b, generator=gen))


def _gauss_kernel(sigma: float) -> torch.Tensor:
    h = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-h, h + 1, dtype=torch.float32)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over every spatial axis of (N, 1, ...) ``x``."""
    k = _gauss_kernel(sigma).to(x.device)
    nd = x.dim() - 2
    conv = F.conv3d if nd == 3 else F.conv2d
    for axis in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = k.numel()
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = k.numel() // 2
        x = conv(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def _rotation(gen, cfg: AugmentConfig, nd: int) -> torch.Tensor:
    """A (nd, nd) matrix in (x, y[, z]) grid order: rotation about z, then a small tilt."""
    a = math.radians(_u(gen, -cfg.rotate_deg, cfg.rotate_deg))
    c, s = math.cos(a), math.sin(a)
    if nd == 2:
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float32)
    rz = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float32)
    b = math.radians(_u(gen, -cfg.tilt_deg, cfg.tilt_deg))
    g = math.radians(_u(gen, -cfg.tilt_deg, cfg.tilt_deg))
    rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]], dtype=torch.float32)
    ry = torch.tensor([[math.cos(g), 0, math.sin(g)], [0, 1, 0], [-math.sin(g), 0, math.cos(g)]], dtype=torch.float32)
    return ry @ rx @ rz


def spatial(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig):
    """Mirror, rotate/tilt, scale and deform image and target through one grid."""
    nd = x.dim() - 2
    if _u(gen, 0, 1) < cfg.p_mirror:
        x, y = x.flip(-1), y.flip(-1)
    if _u(gen, 0, 1) < cfg.p_mirror:
        x, y = x.flip(-2), y.flip(-2)
    mat = torch.eye(nd)
    moved = False
    if _u(gen, 0, 1) < cfg.p_rotate:
        mat = _rotation(gen, cfg, nd)
        moved = True
    if _u(gen, 0, 1) < cfg.p_scale:
        mat = mat / _u(gen, *cfg.scale)
        moved = True
    elastic = _u(gen, 0, 1) < cfg.p_elastic
    if not moved and not elastic:
        return x, y
    sizes = list(x.shape[2:])  # (z,) y, x
    # Grid coordinates are normalised per axis; rotate in voxel units so that the rotation is rigid.
    extent = torch.tensor(sizes[::-1], dtype=torch.float32)  # x, y[, z]
    theta = torch.zeros(x.shape[0], nd, nd + 1)
    theta[:, :, :nd] = (mat * extent[None, :]) / extent[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False).to(x.device)
    if elastic:
        coarse = [max(2, s // 16) for s in sizes]
        field = torch.randn([x.shape[0], nd, *coarse], generator=gen)
        field = F.interpolate(field, size=sizes, mode="trilinear" if nd == 3 else "bilinear", align_corners=False)
        amp = cfg.elastic_mm / cfg.spacing_mm * _u(gen, 0.3, 1.0)
        field = field * (2.0 * amp / extent.view(1, nd, *([1] * nd)))
        grid = grid + field.permute(0, *range(2, nd + 2), 1).to(x.device)
    fill = x.amin()
    x = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x, y


def intensity(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Gamma, contrast/brightness, blur, low resolution and noise on the (normalised) image."""
    if _u(gen, 0, 1) < cfg.p_gamma:
        lo, hi = x.amin(), x.amax()
        span = (hi - lo).clamp_min(1e-6)
        x = ((x - lo) / span) ** _u(gen, *cfg.gamma) * span + lo
    if _u(gen, 0, 1) < cfg.p_contrast:
        mean = x.mean()
        x = (x - mean) * _u(gen, 0.75, 1.25) + mean + _u(gen, -0.15, 0.15)
    if _u(gen, 0, 1) < cfg.p_blur:
        x = blur(x, _u(gen, 0.5, 1.2))
    if _u(gen, 0, 1) < cfg.p_lowres:
        size = list(x.shape[2:])
        f = _u(gen, 1.0, 2.0)
        mode = "trilinear" if x.dim() == 5 else "bilinear"
        small = F.interpolate(x, size=[max(1, int(s / f)) for s in size], mode=mode, align_corners=False)
        x = F.interpolate(small, size=size, mode=mode, align_corners=False)
    if _u(gen, 0, 1) < cfg.p_noise:
        sd = _u(gen, 0.0, 0.15)
        x = x + sd * torch.randn(x.shape, generator=gen).to(x.device)
    return x


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig | None = None):
    """Spatial then intensity augmentation of a batch; returns new tensors (x, y)."""
    cfg = cfg or AugmentConfig()
    x, y = spatial(x, y, gen, cfg)
    return intensity(x, gen, cfg), y
