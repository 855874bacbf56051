"""The phantom renderer: a case's parameters (``synth.case.CaseParams``) -> a scan in stored values and its
exact MC2 mask (or compartments), slice by slice.

Each slice is drawn sharp in mg HA/cm³ (soft tissue, the metacarpals' cortices, marrow and trabecular
texture, the joint spaces and phalanx bases, erosions, the family's cross-sections), then the scanner is
modelled: Gaussian point spread in-plane and across slices, correlated noise, cupping, motion ghosts and
streaks, rings; the density is stored through the case's calibration. Left hands are mirror images.
``synth.phantom`` draws the parameters, writes the files and computes the truth.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from vbmd_rt.synth import families
from vbmd_rt.synth.case import Bone, CaseParams

AIR = -356.0 + 0.0  # mu = 0: the stored value 0 is the calibration's intercept
# Labels of the truth bone while rendering: its cortex and the region inside the endosteal outline (the
# trabecular compartment). Scans do not depend on them; ``render_case(labels=True)`` returns them.
CORTEX, TRABECULAR = 1, 2


def _texture_tile(rng: np.random.Generator, n: int, period_vox: float) -> np.ndarray:
    """Periodic band-pass noise in [0, 1]: a trabecular-like sponge when thresholded."""
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(n), indexing="ij", sparse=True)
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    f0 = 1.0 / period_vox
    filt = np.exp(-0.5 * ((r - f0) / (0.35 * f0)) ** 2)
    spec = (rng.standard_normal((n, n, n // 2 + 1)) + 1j * rng.standard_normal((n, n, n // 2 + 1))) * filt
    t = np.fft.irfftn(spec, s=(n, n, n), axes=(0, 1, 2)).astype(np.float32)
    t -= t.min()
    t /= t.max()
    return t


def _profile(b: Bone, z: float) -> tuple[float, float, float] | None:
    """Semi-axes and cortical thickness of the metacarpal at slice z, or None beyond the tip."""
    u = b.tip - z
    if u <= 0:
        return None
    if u < b.dome:
        s = math.sqrt(max(0.0, 1.0 - ((b.dome - u) / b.dome) ** 2))
        a, c = b.head[0] * s, b.head[1] * s
        return a, c, b.cortex_head
    w = min(1.0, (u - b.dome) / b.neck)
    w = 0.5 - 0.5 * math.cos(math.pi * w)  # 0 at the head, 1 at the shaft
    a = b.head[0] + (b.shaft[0] - b.head[0]) * w
    c = b.head[1] + (b.shaft[1] - b.head[1]) * w
    return a, c, b.cortex_head + (b.cortex_shaft - b.cortex_head) * w


def _centre(b: Bone, z: float) -> tuple[float, float]:
    d = z - b.tip
    return b.x0 + b.dx * d + b.curv * d * d, b.y0 + b.dy * d + 0.5 * b.curv * d * d


def _ellipse(img, c, axes, angle, value, px, shift=4):
    """Filled ellipse in mm coordinates (sub-pixel via OpenCV's fixed-point shift)."""
    f = 1 << shift
    cx, cy = int(round(c[0] / px * f)), int(round(c[1] / px * f))
    ax = (max(0, int(round(axes[0] / px * f))), max(0, int(round(axes[1] / px * f))))
    if ax[0] == 0 or ax[1] == 0:
        return
    cv2.ellipse(img, (cx, cy), ax, angle, 0, 360, value, -1, cv2.LINE_8, shift)


def _fill(img, c, axes, angle, value, px, shape=None):
    """A filled ellipse, or the cross-section model ``shape`` (``families.outline``) where one is given."""
    if shape is None:
        _ellipse(img, c, axes, angle, value, px)
    elif axes[0] > 0 and axes[1] > 0:
        families.fill_outline(img, c, families.outline(axes, angle, shape), value, px)


def _local_ellipse(shape, c, axes, angle, px, section=None):
    """Mask of a filled cross-section drawn only inside its bounding box: (box, bool mask) or None."""
    r = max(axes) / px * (1.3 if section else 1.0) + 2
    x0, y0 = max(0, int(c[0] / px - r)), max(0, int(c[1] / px - r))
    x1, y1 = min(shape[1], int(c[0] / px + r) + 2), min(shape[0], int(c[1] / px + r) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(m, (c[0] - x0 * px, c[1] - y0 * px), axes, angle, 1, px, section)
    return (y0, y1, x0, x1), m


def _circle(img, c, r, value, px, shift=4):
    f = 1 << shift
    cv2.circle(
        img,
        (int(round(c[0] / px * f)), int(round(c[1] / px * f))),
        int(round(r / px * f)),
        value,
        -1,
        cv2.LINE_8,
        shift,
    )


class _Renderer:
    def __init__(self, p: CaseParams, truth_bone: str = "MC2"):
        self.p = p
        self.truth_bone = truth_bone
        self.px = p.voxel_mm
        rng = np.random.default_rng([p.seed, 0x746578])
        # Trabecular texture: period about 0.8 mm, sampled at 82 µm whatever the output size.
        fam = p.family
        self.air = AIR if p.calibration is None else p.cal.intercept
        if fam.get("texture", "bandpass") == "bandpass" and "texture_period_mm" not in fam:
            self.tile = _texture_tile(rng, 96, 0.8 / 0.082)
        else:
            period = fam.get("texture_period_mm", 0.8) / 0.082
            self.tile = families.texture_tile(rng, 96, fam["texture"], period, fam.get("texture_aniso", 1.0))
        self.tile_q = {f: float(np.quantile(self.tile, 1.0 - f)) for f in (p.trab_fraction_head, p.trab_fraction_shaft)}
        n = p.nxy
        yy, xx = np.mgrid[:n, :n].astype(np.float32)
        rr = np.hypot(xx - n / 2, yy - n / 2) / (n / 2)
        self.fov = (rr <= 1.0).astype(np.float32)
        # Cupping: the centre of the field reads lower than the rim.
        self.cupping = (p.cupping * (rr**2 - 0.5)).astype(np.float32)
        self.rings = np.zeros((n, n), np.float32)
        if p.rings:
            for _ in range(int(rng.integers(2, 6))):
                r0 = rng.uniform(0.05, 0.9) * n / 2
                self.rings += rng.choice([-1, 1]) * rng.uniform(25, 60) * np.exp(-0.5 * ((rr * n / 2 - r0) / 0.7) ** 2)
        # Correlated noise: a bank of blurred white noise, read through random windows.
        m = n + n // 3
        bank = rng.standard_normal((6, m, m), dtype=np.float32)
        for k in range(bank.shape[0]):
            bank[k] = cv2.GaussianBlur(bank[k], (0, 0), 0.7)
        bank *= p.noise_sd / bank.std()
        self.noise = bank
        self.constant = ((self.cupping + self.rings) * self.fov + self.air * (1 - self.fov)).astype(np.float32)
        # Motion: streaks through the bones, scaled per slice.
        self.streaks = np.zeros((n, n), np.float32)
        if p.motion_grade > 1:
            for b in p.bones[:3]:
                for _ in range(6 * p.motion_grade):
                    th = rng.uniform(0, math.pi)
                    c = (b.x0 / self.px, b.y0 / self.px)
                    d = (math.cos(th) * 2 * n, math.sin(th) * 2 * n)
                    cv2.line(
                        self.streaks,
                        (int(c[0] - d[0]), int(c[1] - d[1])),
                        (int(c[0] + d[0]), int(c[1] + d[1])),
                        float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)),
                        1,
                    )
            self.streaks = cv2.GaussianBlur(self.streaks, (0, 0), 0.8) * (70.0 * (p.motion_grade - 1))
        self.rng = np.random.default_rng([p.seed, 0x736C63])
        self.tile_off = {b.name: rng.integers(0, 96, size=3) for b in p.bones}
        self.pore_q: dict[float, float] = {}

    def _texture(self, b: Bone, z_vox: int, box, fraction: float) -> np.ndarray:
        """Trabecular bone in the box (y0, y1, x0, x1): marrow + trabecular fraction of tissue."""
        p = self.p
        y0, y1, x0, x1 = box
        step = self.px / 0.082
        off = self.tile_off[b.name]
        iz = int(round(z_vox * step + off[0])) % 96
        iy = (np.round(np.arange(y0, y1) * step).astype(np.int64) + off[1]) % 96
        ix = (np.round(np.arange(x0, x1) * step).astype(np.int64) + off[2]) % 96
        t = self.tile[iz][np.ix_(iy, ix)]
        thr = self.tile_q[fraction]
        # Soft threshold: plate/rod-like trabeculae with partial volume at their edges.
        occ = np.clip((t - thr) / 0.04 + 0.5, 0.0, 1.0)
        return p.marrow_density + occ * (p.tissue_density - p.marrow_density)

    def slice(self, z_vox: int) -> tuple[np.ndarray, np.ndarray]:
        """One sharp slice in mg HA/cm³ (float32) and the MC2 truth (uint8: 0, ``CORTEX``, ``TRABECULAR``)."""
        p, px, n = self.p, self.px, self.p.nxy
        z = (z_vox + 0.5) * px
        img = np.full((n, n), self.air, np.float32)
        cx, cy, ha, hb, hang = p.hand
        fat = p.extras.get("fat")
        if fat:  # subcutaneous fat under the skin, muscle and tendons inside
            _ellipse(img, (cx, cy), (ha, hb), hang, fat["density"], px)
            t = fat["thickness_mm"]
            _ellipse(img, (cx, cy), (ha - t, hb - t), hang, p.soft_density, px)
        else:
            _ellipse(img, (cx, cy), (ha, hb), hang, p.soft_density, px)
        th = p.extras.get("thenar")
        if th:  # the soft tissue around the thumb
            _ellipse(img, (th["x"], th["y"]), th["axes"], th["angle"], p.soft_density, px)
        for t in p.extras.get("tendons", ()):
            _ellipse(img, (t["x"], t["y"]), t["axes"], t["angle"], t["density"], px)
        truth = np.zeros((n, n), np.uint8)
        for s in p.extras.get("sesamoids", ()):
            dz = z - s["z"]
            if abs(dz) < s["r"]:
                _circle(img, (s["x"], s["y"]), math.sqrt(s["r"] ** 2 - dz * dz), s["density"], px)
        for b in p.bones:
            self._draw_bone(img, truth if b.name == self.truth_bone else None, b, z, z_vox)
        for e in p.erosions:
            b = next(bb for bb in p.bones if bb.name == e["bone"])
            dz = z - e["z_mm"]
            if abs(dz) >= e["radius_mm"]:
                continue
            prof = _profile(b, e["z_mm"])
            if prof is None:
                continue
            r = math.sqrt(e["radius_mm"] ** 2 - dz * dz)
            c = _centre(b, e["z_mm"])
            th = math.radians(e["angle_deg"])
            # Pit centred a little inside the periosteal surface: it breaks the cortex.
            a, c2 = prof[0], prof[1]
            ang = math.radians(b.angle)
            ex, ey = a * math.cos(th) * 0.92, c2 * math.sin(th) * 0.92
            pc = (c[0] + ex * math.cos(ang) - ey * math.sin(ang), c[1] + ex * math.sin(ang) + ey * math.cos(ang))
            _circle(img, pc, r, p.soft_density, px)
            if b.name == self.truth_bone:
                _circle(truth, pc, r, 0, px)
        return img, truth

    def _draw_metacarpal(self, img, b: Bone, z: float, z_vox: int):
        """Cortex and interior of the metacarpal at slice z; returns (centre, semi-axes) or None."""
        prof = _profile(b, z)
        if prof is None:
            return None
        p = self.p
        a, c, t = prof
        ctr = _centre(b, z)
        w = min(1.0, max(0.0, (b.tip - z - b.dome) / b.neck))
        shape = b.shape_head if w < 0.5 else b.shape_shaft
        _fill(img, ctr, (a, c), b.angle, p.cortex_density, self.px, shape)
        inner = (max(0.0, a - t), max(0.0, c - t))
        if b.porosity > 0:
            self._pores(img, b, z_vox, ctr, (a, c), shape)
        if inner[0] > 0 and inner[1] > 0:
            frac = p.trab_fraction_head if w < 0.5 else p.trab_fraction_shaft
            self._fill_texture(img, b, z_vox, ctr, inner, frac, shape=shape)
        return ctr, (a, c), shape

    def _draw_bone(self, img, truth, b: Bone, z: float, z_vox: int) -> None:
        p, px = self.p, self.px
        outline = self._draw_metacarpal(img, b, z, z_vox)
        if outline is not None and truth is not None:
            _fill(truth, outline[0], outline[1], b.angle, CORTEX, px, outline[2])
            prof = _profile(b, z)  # the region the interior (trabecular bone, marrow) was drawn in
            inner = (prof[0] - prof[2], prof[1] - prof[2])
            if inner[0] > 0 and inner[1] > 0:
                _fill(truth, outline[0], inner, b.angle, TRABECULAR, px, outline[2])
        # Proximal phalanx base: an ellipse beyond the joint, hollowed by the cup around the head.
        zc = b.tip - b.dome  # centre of the head's dome
        start = b.tip + b.gap - b.cup
        if z >= start:
            ctr = _centre(b, b.tip + b.gap)
            rc = b.dome + b.gap
            dz = z - zc
            cup = math.sqrt(rc * rc - dz * dz) if abs(dz) < rc else 0.0
            k = cup / max(rc, 1e-6)
            _fill(img, ctr, b.phalanx, b.angle, p.cortex_density * 0.9, px, b.shape_shaft)
            inner = (b.phalanx[0] - 0.45, b.phalanx[1] - 0.45)
            # Subchondral plate lining the cup, then the joint space inside it.
            hole = (b.head[0] * k + 0.35 * k, b.head[1] * k + 0.35 * k) if cup > 0 else None
            self._fill_texture(img, b, z_vox + 400, ctr, inner, p.trab_fraction_head, hole, b.shape_shaft, b.shape_head)
            if cup > 0:
                _fill(img, ctr, (b.head[0] * k, b.head[1] * k), b.angle, p.soft_density, px, b.shape_head)
                if outline is not None:  # the head inside the cup is drawn again over the joint space
                    self._draw_metacarpal(img, b, z, z_vox)

    def _fill_texture(self, img, b: Bone, z_vox: int, ctr, axes, frac, hole=None, shape=None, hole_shape=None):
        """Fill a cross-section (minus an optional concentric hole) with trabecular bone."""
        got = _local_ellipse(img.shape, ctr, axes, b.angle, self.px, shape)
        if got is None:
            return
        box, m = got
        if hole is not None:
            y0, _, x0, _ = box
            _fill(m, (ctr[0] - x0 * self.px, ctr[1] - y0 * self.px), hole, b.angle, 0, self.px, hole_shape)
        sel = m.astype(bool)
        if not sel.any():
            return
        tex = self._texture(b, z_vox, box, frac)
        img[box[0] : box[1], box[2] : box[3]][sel] = tex[sel]

    def _pores(self, img, b: Bone, z_vox: int, ctr, axes, shape) -> None:
        """Cortical porosity: small marrow-filled pores in the shell (the texture at a third of its scale)."""
        got = _local_ellipse(img.shape, ctr, axes, b.angle, self.px, shape)
        if got is None:
            return
        box, m = got
        y0, y1, x0, x1 = box
        step = 3 * self.px / 0.082
        off = self.tile_off[b.name]
        iz = int(round(z_vox * step + off[0] + 48)) % 96
        iy = (np.round(np.arange(y0, y1) * step).astype(np.int64) + off[1]) % 96
        ix = (np.round(np.arange(x0, x1) * step).astype(np.int64) + off[2]) % 96
        t = self.tile[iz][np.ix_(iy, ix)]
        if b.porosity not in self.pore_q:  # once per porosity (setdefault would take the quantile every slice)
            self.pore_q[b.porosity] = float(np.quantile(self.tile, 1.0 - b.porosity))
        q = self.pore_q[b.porosity]
        sel = m.astype(bool) & (t > q)
        img[y0:y1, x0:x1][sel] = self.p.marrow_density

    def scanner(self, sharp: np.ndarray, z_vox: int) -> np.ndarray:
        """Point spread, motion, cupping, rings and noise on one (z-blurred) sharp slice."""
        p, n = self.p, self.p.nxy
        out = cv2.GaussianBlur(sharp, (0, 0), p.psf_sigma_vox)
        if p.motion_grade > 1:
            # Ghost copy of the slice shifted by the motion, weight and shift growing with grade.
            amp = self.rng.uniform(0.5, 1.0)
            shift = (p.motion_grade - 1) * 2.5 * amp
            th = self.rng.uniform(0, 2 * math.pi)
            M = np.float32([[1, 0, shift * math.cos(th)], [0, 1, shift * math.sin(th)]])
            ghost = cv2.warpAffine(out, M, (n, n), borderMode=cv2.BORDER_REPLICATE)
            wgt = 0.15 * (p.motion_grade - 1) * amp
            out = cv2.addWeighted(out, 1 - wgt, ghost, wgt, 0)
            out += self.streaks * amp
        k = int(self.rng.integers(0, self.noise.shape[0]))
        oy, ox = (int(v) for v in self.rng.integers(0, self.noise.shape[1] - n, size=2))
        out += self.noise[k, oy : oy + n, ox : ox + n]
        # Cupping and rings inside the reconstructed circle; outside it the scanner writes air.
        cv2.multiply(out, self.fov, dst=out)
        out += self.constant
        return out


def render_case(p: CaseParams, truth_bone: str = "MC2", labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render a case: the stored int16 scan and the uint8 0/1 mask of ``truth_bone`` (MC2; another bone's
    mask is a realistic wrong answer for testing QC), both (z, y, x). With ``labels`` the mask holds the
    compartments instead: ``CORTEX`` (1) between the periosteal and endosteal outlines the generator drew,
    ``TRABECULAR`` (2) inside the endosteal outline (the scan is the same either way)."""
    r = _Renderer(p, truth_bone)
    n, nz = p.nxy, p.slices
    scan = np.empty((nz, n, n), np.int16)
    truth = np.empty((nz, n, n), np.uint8)
    w = _zkernel(p.psf_sigma_z_vox)
    h = len(w) // 2
    m_, b_ = p.cal.density_equation()
    inv_m, off = np.float32(1.0 / m_), np.float32(-b_ / m_)
    inside = r.fov > 0  # the truth ends where the reconstructed field of view does
    jitter = p.family.get("jitter_mm", 0.0) / p.voxel_mm
    walk = np.zeros(2)
    jrng = np.random.default_rng([p.seed, 0x6A6974])
    window: dict[int, np.ndarray] = {}
    for z in range(-h, nz + h):
        zz = min(max(z, 0), nz - 1)
        if zz not in window:
            window[zz], truth[zz] = r.slice(zz)
        zc = z - h
        if 0 <= zc < nz:
            acc = window[min(max(zc - h, 0), nz - 1)] * np.float32(w[0])
            for i in range(1, len(w)):
                cv2.scaleAdd(window[min(max(zc - h + i, 0), nz - 1)], float(w[i]), acc, dst=acc)
            dens = r.scanner(acc, zc)
            # mg HA/cm³ -> stored values, in float32 in place (exact for |v| < 2**23).
            dens *= inv_m
            dens += off
            np.rint(dens, out=dens)
            np.clip(dens, -32768, 32767, out=dens)
            if jitter > 0:  # the hand moves between slices: image and truth move together
                walk = 0.9 * walk + jrng.normal(0, jitter, 2)
                M = np.float32([[1, 0, walk[0]], [0, 1, walk[1]]])
                dens = cv2.warpAffine(dens, M, (n, n), borderMode=cv2.BORDER_REPLICATE)
                truth[zc] = cv2.warpAffine(truth[zc], M, (n, n), flags=cv2.INTER_NEAREST)
            truth[zc] *= inside
            scan[zc] = dens
            for old in [k for k in window if k < zc - h]:
                del window[old]
    if not labels:
        np.minimum(truth, 1, out=truth)
    if p.side == "left":
        scan = np.ascontiguousarray(scan[:, :, ::-1])
        truth = np.ascontiguousarray(truth[:, :, ::-1])
    return scan, truth


def _zkernel(sigma: float) -> np.ndarray:
    h = max(1, int(math.ceil(2.0 * sigma)))
    x = np.arange(-h, h + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()
