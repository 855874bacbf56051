"""Domain-randomised phantoms: every part of a case drawn from several structurally different models.

The standard generator (``phantom.sample_case``) draws one anatomy with smoothly varied sizes, one
trabecular texture and one scanner: a network trained on it learns that look, not the bone. The
``random`` family draws each part from several models instead, so that what stays constant across cases
is only what is constant in real hands (MC2 is the radial end of the metacarpal row, a cortical shell
around trabecular bone, a joint and a phalanx beyond its head):

* cross-sections: ellipses, Fourier-perturbed outlines (egg-shaped, triangular shafts, asymmetric),
  a flattened palmar side, heads with two condyles (D-shaped);
* layout: two to five bones on an arc with varying spacing, depth and size (MC2 is not always the
  largest, MC3 often is), sometimes the thumb's metacarpal or phalanx radial to MC2, sesamoids;
* texture (``TEXTURES``): band-pass sponge, multi-scale Gaussian random field, rod/plate networks,
  anisotropic (elongated along the bone), blobs; periods 0.5-1.2 mm; continuous in 3D;
* densities over wide ranges, cortical porosity, soft tissue with fat, muscle and tendons;
* geometry: XtremeCT I (82 µm) or XtremeCT II (60.7 µm, its calibration), other fields of view, where
  the head falls in the stack, bones touching the field-of-view edge, short stacks;
* motion: ghosts and streaks (graded 1-3), slice-to-slice jitter, extra blur.

Families for leave-one-family-out evaluation are named by a filter: ``random`` draws everything,
``random:texture=blobs`` only blob textures, ``random:texture!=blobs`` everything else;
``shape=`` (``ellipse``, ``fourier``, ``condyle``) and ``scanner=`` (``xct1``, ``xct2``) work the same way,
several joined by commas. Each case's family and parameters go into its truth JSON.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.synth.case import Bone, CaseParams, erosion

TEXTURES = ("bandpass", "grf", "rodplate", "aniso", "blobs")
SHAPES = ("ellipse", "fourier", "condyle")
SCANNERS = {
    # name: (native voxel mm, native matrix, calibration, log's scanner name)
    "xct1": (0.082, 1536, Calibration(8192.0, 1441.13599, -356.445007, 0.2464), "XtremeCT"),
    "xct2": (0.0607, 2304, Calibration(8192.0, 1603.51904, -391.209015, 0.2409), "XtremeCT II"),
}
CHOICES = {"texture": TEXTURES, "shape": SHAPES, "scanner": tuple(SCANNERS)}


def parse_family(spec: str) -> dict[str, tuple[str, ...]]:
    """``random[:key=a|b,key!=c]`` -> the allowed choices per key; ValueError naming what is wrong."""
    name, _, rest = spec.partition(":")
    if name != "random":
        raise ValueError(f"unknown family {spec!r}: use 'standard' or 'random[:texture=...,shape=...]'")
    allowed = dict(CHOICES)
    for term in filter(None, (t.strip() for t in rest.split(","))):
        neg = "!=" in term
        key, _, values = term.partition("!=" if neg else "=")
        key = key.strip()
        if key not in CHOICES:
            raise ValueError(f"unknown family key {key!r} in {spec!r}: use one of {', '.join(CHOICES)}")
        vals = tuple(v.strip() for v in values.split("|") if v.strip())
        bad = [v for v in vals if v not in CHOICES[key]]
        if bad or not vals:
            raise ValueError(f"{key} must be among {', '.join(CHOICES[key])} in {spec!r}")
        allowed[key] = tuple(v for v in allowed[key] if (v not in vals) == neg)
        if not allowed[key]:
            raise ValueError(f"{spec!r} leaves no {key} to draw")
    return allowed


# --------------------------------------------------------------------------- textures


def texture_tile(rng: np.random.Generator, n: int, kind: str, period_vox: float, aniso: float = 1.0) -> np.ndarray:
    """A periodic (n, n, n) texture in [0, 1] (z, y, x); thresholding at a quantile gives the trabeculae."""
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(n), indexing="ij", sparse=True)
    f0 = 1.0 / period_vox
    white = rng.standard_normal((n, n, n // 2 + 1)) + 1j * rng.standard_normal((n, n, n // 2 + 1))
    if kind == "blobs":
        t = np.zeros((n, n, n), np.float32)
        count = int(3.0 * n**3 / period_vox**3)
        centres = rng.integers(0, n, size=(count, 3))
        radii = rng.uniform(0.2, 0.45, size=count) * period_vox
        for (cz, cy, cx), r in zip(centres, radii, strict=True):
            ri = int(math.ceil(r))
            zz, yy, xx = np.ogrid[-ri : ri + 1, -ri : ri + 1, -ri : ri + 1]
            ball = ((zz * zz + yy * yy + xx * xx) <= r * r).astype(np.float32)
            iz = (np.arange(cz - ri, cz + ri + 1) % n)[:, None, None]
            iy = (np.arange(cy - ri, cy + ri + 1) % n)[None, :, None]
            ix = (np.arange(cx - ri, cx + ri + 1) % n)[None, None, :]
            t[iz, iy, ix] += ball
        t = cv2.GaussianBlur(t.reshape(n, -1), (0, 0), 0.8).reshape(n, n, n)
        t += 0.05 * rng.standard_normal(t.shape).astype(np.float32)
    else:
        if kind == "aniso":  # long along z (the bone's axis): lower frequencies along z
            r = np.sqrt((kz * aniso) ** 2 + ky**2 + kx**2)
        else:
            r = np.sqrt(kz**2 + ky**2 + kx**2)
        if kind == "grf":  # several scales at once: a power law with a cut-off below the period
            filt = (1.0 + (r / f0) ** 2) ** -1.5 * np.exp(-((r / (3 * f0)) ** 2))
            filt[0, 0, 0] = 0
        else:
            filt = np.exp(-0.5 * ((r - f0) / (0.35 * f0)) ** 2)
        t = np.fft.irfftn(white * filt, s=(n, n, n), axes=(0, 1, 2)).astype(np.float32)
        if kind == "rodplate":  # the zero crossings of a band-pass field: thin plates joined by rods
            t = -np.abs(t)
    t -= t.min()
    t /= max(float(t.max()), 1e-12)
    return t


# --------------------------------------------------------------------------- cross-sections


def outline(axes, angle_deg: float, shape: dict | None, points: int = 96) -> np.ndarray:
    """Outline of a cross-section around (0, 0) in mm, (points, 2) x/y: an ellipse with the semi-axes
    ``axes``, perturbed by ``shape``: ``fourier`` [(k, amplitude, phase)...], ``flat`` (the palmar side,
    -y, cut at that fraction of the semi-axis), ``condyle`` (depth of the notch between two condyles)."""
    th = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = np.ones_like(th)
    for k, amp, ph in shape.get("fourier", ()):
        r += amp * np.cos(k * th + ph)
    x = axes[0] * r * np.cos(th)
    y = axes[1] * r * np.sin(th)
    flat = shape.get("flat", 1.0)
    if flat < 1.0:
        y = np.maximum(y, -flat * axes[1])
    notch = shape.get("condyle", 0.0)
    if notch > 0:
        y = np.where(y < 0, y + notch * axes[1] * np.exp(-((x / (0.35 * axes[0])) ** 2)), y)
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return np.stack([x * ca - y * sa, x * sa + y * ca], axis=1)


def fill_outline(img: np.ndarray, centre, pts_mm: np.ndarray, value, px: float, shift: int = 4) -> None:
    """Fill an outline (mm, relative to ``centre``) into ``img`` with sub-pixel accuracy."""
    f = 1 << shift
    p = np.round((pts_mm + np.asarray(centre, np.float64)) / px * f).astype(np.int32)
    cv2.fillPoly(img, [p], value, cv2.LINE_8, shift)


def shape_for(kind: str, rng: np.random.Generator, head: bool) -> dict | None:
    """A cross-section model of one family for a shaft or a head; None is the plain ellipse."""
    if kind == "ellipse":
        return None
    s: dict = {
        "fourier": [
            (1, float(rng.uniform(0, 0.08)), float(rng.uniform(0, 2 * np.pi))),
            (3, float(rng.uniform(0, 0.12 if not head else 0.06)), float(rng.uniform(0, 2 * np.pi))),
            (4, float(rng.uniform(0, 0.04)), float(rng.uniform(0, 2 * np.pi))),
        ],
        "flat": float(rng.uniform(0.55, 1.0)),
    }
    if kind == "condyle" and head:
        s["condyle"] = float(rng.uniform(0.12, 0.35))
        s["flat"] = float(rng.uniform(0.45, 0.75))
    return s


# --------------------------------------------------------------------------- a case


def sample_random(seed: int, size: str, allowed: dict[str, tuple[str, ...]]):
    """One domain-randomised case (``phantom.CaseParams``) from ``seed``, drawn from ``allowed`` choices."""

    rng = np.random.default_rng([seed, 0x72616E64])
    texture = str(rng.choice(allowed["texture"]))
    shape_kind = str(rng.choice(allowed["shape"]))
    scanner = str(rng.choice(allowed["scanner"]))
    native, native_n, cal, scanner_name = SCANNERS[scanner]
    voxel = native if size == "full" else native * 3
    full_fov = native * native_n
    fov = full_fov if rng.random() < 0.6 or size == "full" else full_fov * rng.uniform(0.65, 1.0)
    nxy = int(round(fov / voxel / 16)) * 16
    fov = nxy * voxel
    length = float(rng.uniform(10.0, 27.0))  # mm of stack: 120-330 slices at 82 µm
    slices = int(round(length / voxel))
    osteopenia = bool(rng.random() < 0.3)
    grade = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    count = int(rng.choice([2, 3, 4, 4, 4], p=[0.1, 0.2, 0.3, 0.2, 0.2]))
    spacing = float(rng.uniform(14.0, 22.0))
    scale = float(rng.uniform(0.75, 1.25))
    hand_angle = float(rng.uniform(-25, 25))
    # The row's centre: MC2 may come close to the edge of the field of view, but stays inside it.
    span = (count - 1) * spacing
    cx = fov / 2 + rng.uniform(-0.2, 0.2) * fov * 0.5
    cy = fov / 2 + rng.uniform(-0.15, 0.15) * fov * 0.5
    ca, sa = math.cos(math.radians(hand_angle)), math.sin(math.radians(hand_angle))
    joint = length * float(rng.uniform(0.45, 0.85))
    rel = {"MC2": rng.uniform(0.85, 1.15), "MC3": rng.uniform(0.85, 1.25), "MC4": rng.uniform(0.7, 1.0)}
    rel["MC5"] = rng.uniform(0.6, 0.95)
    dz = {"MC2": rng.uniform(-2.0, 1.0), "MC3": rng.uniform(-0.5, 2.5), "MC4": rng.uniform(-3, 0)}
    dz["MC5"] = rng.uniform(-5, -1)
    arc = float(rng.uniform(-0.012, 0.0))  # the transverse arch: a few mm deep
    bones = []
    names = ["MC2", "MC3", "MC4", "MC5"][:count]
    cortex = float(rng.uniform(650, 1250)) * (0.85 if osteopenia else 1.0)
    for i, name in enumerate(names):
        u = i * spacing - span / 2
        v = arc * u * u + rng.uniform(-2.5, 2.5)
        s = scale * rel[name]
        head_shape = shape_for(shape_kind, rng, head=True)
        shaft_shape = shape_for(shape_kind, rng, head=False)
        shaft = (4.6 * s * rng.uniform(0.85, 1.15), 4.2 * s * rng.uniform(0.8, 1.15))
        head = (7.6 * s * rng.uniform(0.88, 1.12), 7.0 * s * rng.uniform(0.85, 1.12))
        bones.append(
            _bone(Bone, rng, name, cx, cy, ca, sa, u, v, hand_angle, shaft, head, joint + dz[name], osteopenia)
        )
        bones[-1].shape_head, bones[-1].shape_shaft = head_shape, shaft_shape
        bones[-1].porosity = float(rng.uniform(0.0, 0.25)) if rng.random() < 0.6 else 0.0
    if rng.random() < 0.3:  # the thumb's metacarpal or proximal phalanx, radial to MC2 and palmar
        u = -span / 2 - spacing * rng.uniform(0.8, 1.3)
        mc2_v = arc * (span / 2) ** 2
        v = mc2_v + rng.uniform(8.0, 18.0)  # the thumb lies palmar to MC2 (the thenar side)
        s = scale * rng.uniform(0.7, 1.0)
        tip = float(rng.uniform(0.3, 1.4)) * length
        thumb = _bone(
            Bone,
            rng,
            "T1",
            cx,
            cy,
            ca,
            sa,
            u,
            v,
            hand_angle + rng.uniform(-40, 40),
            (4.3 * s, 3.8 * s),
            (6.5 * s, 5.8 * s),
            tip,
            osteopenia,
        )
        thumb.shape_head, thumb.shape_shaft = shape_for(shape_kind, rng, True), shape_for(shape_kind, rng, False)
        bones.append(thumb)
        thenar = {
            "x": thumb.x0,
            "y": thumb.y0,
            "axes": [thumb.head[0] + 6.0, thumb.head[1] + 5.0],
            "angle": thumb.angle,
        }
    marrow = float(rng.uniform(-50, 80))
    tissue = float(rng.uniform(750, 1050))
    apparent = float(rng.uniform(120, 400)) * (0.7 if osteopenia else 1.0)
    trab_head = float(np.clip((apparent - marrow) / (tissue - marrow), 0.05, 0.6))
    soft = float(rng.uniform(0, 90))
    hand = (cx, cy, span / 2 + rng.uniform(14, 24) * scale, rng.uniform(12, 19) * scale, hand_angle)
    extras: dict = {"tendons": [], "sesamoids": []}
    if any(b.name == "T1" for b in bones):
        extras["thenar"] = thenar
    if rng.random() < 0.7:
        extras["fat"] = {"density": float(rng.uniform(-120, -30)), "thickness_mm": float(rng.uniform(1.5, 5.0))}
    for b in bones:
        if b.name == "T1":
            continue
        for side, prob in ((-1, 0.7), (1, 0.7)):  # dorsal extensor, palmar flexors
            if rng.random() < prob:
                off = side * (b.shaft[1] + rng.uniform(1.2, 4.0))
                ang = math.radians(b.angle)
                extras["tendons"].append(
                    {
                        "x": b.x0 - off * math.sin(ang),
                        "y": b.y0 + off * math.cos(ang),
                        "axes": [float(rng.uniform(1.0, 3.0)), float(rng.uniform(0.6, 1.6))],
                        "angle": b.angle,
                        "density": soft + float(rng.uniform(20, 90)),
                    }
                )
    if rng.random() < 0.3:  # a sesamoid on the palmar side of MC2's head
        b = bones[0]
        r = float(rng.uniform(1.5, 2.8))
        off = b.head[1] + r + rng.uniform(0.3, 1.5)
        ang = math.radians(b.angle + rng.uniform(-30, 30))
        extras["sesamoids"].append(
            {
                "x": b.x0 - off * math.sin(ang),
                "y": b.y0 + off * math.cos(ang),
                "z": b.tip - b.dome * float(rng.uniform(0.2, 0.9)),
                "r": r,
                "density": float(rng.uniform(350, 800)),
            }
        )
    erosions = [erosion(rng, bones[0]) for _ in range(int(rng.integers(1, 4)))] if rng.random() < 0.35 else []
    period = float(rng.uniform(0.5, 1.2))
    return CaseParams(
        seed=seed,
        size=size,
        voxel_mm=voxel,
        nxy=nxy,
        slices=slices,
        side="left" if rng.random() < 0.5 else "right",
        motion_grade=grade,
        rings=bool(rng.random() < 0.25),
        osteopenia=osteopenia,
        cortex_density=cortex,
        tissue_density=tissue,
        trab_fraction_head=trab_head,
        trab_apparent_head=apparent,
        trab_fraction_shaft=trab_head * float(rng.uniform(0.05, 0.5)),
        marrow_density=marrow,
        soft_density=soft,
        noise_sd=float(rng.uniform(45, 150)) * (voxel / 0.246) ** -0.5 * (0.5 if size == "full" else 1.0),
        psf_sigma_vox=float(rng.uniform(0.8, 1.8)),
        psf_sigma_z_vox=float(rng.uniform(0.4, 1.2)),
        cupping=float(rng.uniform(0, 70)),
        hand=hand,
        bones=bones,
        erosions=erosions,
        family={
            "name": "random",
            "texture": texture,
            "shape": shape_kind,
            "scanner": scanner,
            "texture_period_mm": period,
            "texture_aniso": float(rng.uniform(2.0, 4.0)),
            "jitter_mm": float(rng.uniform(0.01, 0.06)) if rng.random() < 0.3 else 0.0,
            "bones": [b.name for b in bones],
        },
        calibration=(cal.mu_scaling, cal.slope, cal.intercept, cal.mu_water),
        scanner=scanner_name,
        extras=extras,
    )


def _bone(Bone, rng, name, cx, cy, ca, sa, u, v, angle, shaft, head, tip, osteopenia):
    return Bone(
        name=name,
        x0=cx + u * ca - v * sa,
        y0=cy + u * sa + v * ca,
        dx=float(rng.normal(0, 0.07)),
        dy=float(rng.normal(0, 0.07)),
        curv=float(rng.normal(0, 0.002)),
        shaft=tuple(float(v) for v in shaft),
        head=tuple(float(v) for v in head),
        angle=float(angle + rng.normal(0, 15)),
        tip=float(tip),
        dome=float(head[0] * rng.uniform(0.65, 1.0)),
        neck=float(rng.uniform(4.0, 10.0)),
        cortex_shaft=float(rng.uniform(0.6, 1.8)) * (0.75 if osteopenia else 1.0),
        cortex_head=float(rng.uniform(0.25, 0.45) if osteopenia else rng.uniform(0.3, 0.7)),
        gap=float(rng.uniform(0.8, 3.0)),
        phalanx=(float(head[0] * rng.uniform(0.9, 1.15)), float(head[1] * rng.uniform(0.85, 1.1))),
        cup=float(rng.uniform(1.5, 3.5)),
    )
