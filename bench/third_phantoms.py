"""A third, independent MCP hand phantom generator (does not use vbmd_rt.synth nor the second generator).

    python -m vbmd_rt.bench.third_phantoms make OUT [CASE ...]     # the 22 cases of CASES (C3_*), or some
    vbmd-rt run OUT/C3_00_base.AIM -o RUNS [--model classical] ...   # the tool, as a user runs it
    python -m vbmd_rt.bench.third_phantoms score OUT RUNS           # Dice, D100 error, QC per case

Written by an independent test campaign (issue 19, thirteenth pass) to find what the project's generator and
``bench/independent_phantoms.py`` would not show: arthritic erosions and osteophytes, flexed and
ulnar-deviated fingers, a steel ring with its streaks, motion, thick slices, XtremeCT II. Cases with ``D_``
are diagnosis variants (a ring without streaks, a ring-sized band of bone), not in the default set. Known
difference from a scan: each bone's solid is closed at the stack's first slice (a dense cap there that a
real stack, which starts mid-shaft, has not).

Written from scratch (numpy/scipy only, plus vbmd_rt's AIM writer and Calibration so the tool reads the
files).  Deliberately unlike vbmd_rt.synth (per-slice ellipses) and bench/independent_phantoms.py (implicit
superellipse solids, EDT cortex, Voronoi/gyroid/wave textures, image-domain scanner):

* anatomy = unions of many small *oriented ellipsoids* swept along bent skeletons (a "bead chain"): shaft
  beads, three ridge chains for triangular sections, a head ellipsoid with two palmar condyles, phalanx
  base + shaft chain rotated about the head centre (flexion, ulnar drift, palmar subluxation);
* endosteal surface = the same bead chains with semi-axes shrunk by the local cortical thickness (no EDT);
* trabecular bone = zero-level sheets of band-pass noise (|N| < t, t from the target bone fraction);
* RA pathology: erosion pits carved from the head, marginal osteophyte spurs; metal finger ring;
* soft tissue = distance shell round all bones + palm slab + thenar lobe, smoothed; skin/fat/muscle by
  depth, extensor/flexor tendons;
* scanner: optional z-supersampling (slab integration for thick slices), Gaussian PSF, high-pass
  ("ramp") noise modulated by hand thickness, detector ring artifacts, and *sinogram-domain* artifacts
  (own parallel-beam radon / FBP): metal photon starvation streaks, patient motion.

Truth = MC2's filled periosteal envelope on the output grid; D100 = mean calibrated density of the stored
values inside it (project Calibration equation), so a perfect mask gives exactly zero error.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import erfinv

from vbmd_rt.runtime.io.calibration import Calibration, to_density

CAL_XCT1 = (8192.0, 1441.13599, -356.445007, 0.2464)
CAL_XCT2 = (8192.0, 1603.51904, -391.209015, 0.2409)

# ----------------------------------------------------------------------------------------------- geometry


def rot(axis: str, ang: float) -> np.ndarray:
    c, s = math.cos(ang), math.sin(ang)
    if axis == "u":  # rotation in (v, w): flexion (positive = distal goes palmar, -v)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "v":  # rotation in (u, w): positive = distal goes ulnar (+u)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class Grid:
    def __init__(self, n_xy, n_z, vxy, vz):
        self.nx = self.ny = n_xy
        self.nz = n_z
        self.v = np.array([vxy, vxy, vz], float)  # x, y, z
        self.shape = (n_z, n_xy, n_xy)

    def box(self, c, r):
        """index slices (z, y, x) of the box centre c (x,y,z mm) half-size r mm, and the voxel-centre coords."""
        sl, co = [], []
        for a, n in ((2, self.nz), (1, self.ny), (0, self.nx)):
            lo = max(0, int(math.floor((c[a] - r) / self.v[a] - 0.5)))
            hi = min(n, int(math.ceil((c[a] + r) / self.v[a] + 0.5)))
            if hi <= lo:
                return None, None
            sl.append(slice(lo, hi))
            co.append((np.arange(lo, hi) + 0.5) * self.v[a] - c[a])
        z, y, x = co
        return tuple(sl), (x[None, None, :], y[None, :, None], z[:, None, None])


class Hand:
    """hand frame (u radial->ulnar, v dorsal, w distal) -> world (x, y, z) mm."""

    def __init__(self, centre_xy, phi_deg, left, w0):
        self.c = np.array(centre_xy, float)
        self.phi = math.radians(phi_deg)
        self.m = -1.0 if left else 1.0
        self.w0 = w0
        c, s = math.cos(self.phi), math.sin(self.phi)
        R2 = np.array([[c, -s], [s, c]]) @ np.diag([self.m, 1.0])
        self.L = np.eye(3)
        self.L[:2, :2] = R2

    def pt(self, p):
        p = np.asarray(p, float)
        out = self.L @ p
        out[:2] += self.c
        out[2] -= self.w0
        return out

    def dirs(self, A):  # rows = local axes in hand frame -> in world frame
        return (self.L @ np.asarray(A, float).T).T


def paint(mask, grid, hand, centre_h, axes_h, semi):
    """mask |= ellipsoid (hand-frame centre, rows of axes_h = local axes, semi-axes mm)."""
    semi = np.asarray(semi, float)
    if (semi <= 0.05).any():
        return
    c = hand.pt(centre_h)
    A = hand.dirs(axes_h)
    sl, co = grid.box(c, float(semi.max()))
    if sl is None:
        return
    x, y, z = co
    acc = None
    for a in range(3):
        q = (A[a, 0] * x + A[a, 1] * y + A[a, 2] * z) / semi[a]
        acc = q * q if acc is None else acc + q * q
    mask[sl] |= acc < 1.0


def solid(beads, grid, hand) -> tuple[np.ndarray, np.ndarray]:
    """A bone's outer (periosteal) and inner (endosteal) solids on ``grid``: its bead chain ``beads(inner)``
    painted with and without the cortex's thickness taken off."""
    outer, inner = np.zeros(grid.shape, bool), np.zeros(grid.shape, bool)
    for out, shrink in ((outer, False), (inner, True)):
        for c, A, s in beads(shrink):
            paint(out, grid, hand, c, A, s)
    return outer, inner


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class Bone:
    """A metacarpal (with optional phalanx) as bead chains in the hand frame."""

    def __init__(self, name, u0, v0, tip, shaft, head, **kw):
        self.name, self.u0, self.v0, self.tip = name, u0, v0, tip
        self.shaft, self.head = shaft, head  # (au, av), (hu, hv, hw)
        self.k = dict(
            fan=0.0,
            bow=0.0,
            tri=0.0,
            c_sh=1.0,
            c_hd=0.35,
            hoff=0.9,
            trab=0.32,
            gap=1.2,
            flex=0.0,
            drift=0.0,
            sublux=0.0,
            phal=True,
            phal_len=14.0,
            axis=(0.0, 0.0, 1.0),
            w_start=-60.0,
        )
        self.k.update(kw)

    @property
    def hc(self):  # head centre w
        return self.tip - self.head[2]

    def centre(self, w):
        k = self.k
        t = (w - k["w_start"]) / max(self.hc - k["w_start"], 1.0)
        u = self.u0 + k["fan"] * (self.hc - w)
        v = self.v0 + k["bow"] * math.sin(math.pi * np.clip(t, 0, 1))
        return np.array([u, v, w])

    def cortex(self, w):
        k = self.k
        s = smoothstep((w - (self.hc - 12)) / 9.0)
        return k["c_sh"] * (1 - s) + k["c_hd"] * s

    def beads(self, inner: bool):
        """list of (centre, axes, semi) for the metacarpal (outer or endosteal)."""
        k = self.k
        out = []
        hu, hv, hw = self.head
        au, av = self.shaft
        I3 = np.eye(3)
        w = k["w_start"]
        while w <= self.hc:
            s = smoothstep((w - (self.hc - 13)) / 11.0)
            a = au + (0.80 * hu - au) * s
            b = av + (0.80 * hv - av) * s
            c = self.cortex(w) if inner else 0.0
            ctr = self.centre(w)
            ctr[1] -= k["hoff"] * s  # head sits palmar
            L = 0.9
            out.append((ctr, I3, (a - c, b - c, L - (0.3 if inner else 0))))
            if k["tri"] > 0 and s < 0.7:  # three ridges: dorsal, radio-palmar, ulno-palmar -> rounded triangle
                tr = k["tri"] * (1 - s / 0.7)
                for ang in (90, 215, 325):
                    r = math.radians(ang)
                    off = np.array([math.cos(r), math.sin(r), 0.0]) * (0.55 * min(a, b) + tr)
                    rr = 0.50 * min(a, b)
                    out.append((ctr + off, I3, (rr - c, rr - c, L - (0.3 if inner else 0))))
            w += 0.3
        ch = k["c_hd"] if inner else 0.0
        hcen = self.centre(self.hc)
        hcen[1] -= k["hoff"]
        out.append((hcen, I3, (hu - ch, hv - ch, hw - ch)))
        for sg in (-1, 1):  # palmar condyles
            cc = hcen + np.array([sg * 0.42 * hu, -0.45 * hv, -0.25 * hw])
            out.append((cc, I3, (0.5 * hu - ch, 0.55 * hv - ch, 0.7 * hw - ch)))
        return out

    def head_centre(self):
        h = self.centre(self.hc)
        h[1] -= self.k["hoff"]
        return h

    def phalanx_beads(self, inner: bool):
        k = self.k
        hu, hv, hw = self.head
        hcen = self.head_centre()
        R = rot("v", math.radians(k["drift"])) @ rot("u", math.radians(k["flex"]))
        sub = np.array([0.0, -k["sublux"], 0.0])
        out = []
        pw = 3.0
        d0 = hw + k["gap"] + pw - 1.9  # base ellipsoid centre beyond head centre (cup depth ~1.9 mm)
        cb = 0.45 if inner else 0.0
        base_local = np.array([0.0, 0.3, d0])
        out.append((hcen + R @ base_local + sub, R.T, (1.08 * hu - cb, 0.85 * hv - cb, pw - cb)))
        d = d0
        while d < d0 + k["phal_len"]:
            t = (d - d0) / k["phal_len"]
            a = hu * (0.78 - 0.25 * smoothstep(t * 2))
            b = hv * (0.62 - 0.2 * smoothstep(t * 2))
            c = (0.45 + 0.6 * smoothstep(t * 2)) if inner else 0.0
            out.append((hcen + R @ np.array([0, 0.2, d + 1.0]) + sub, R.T, (a - c, b - c, 1.0 - (0.3 if inner else 0))))
            d += 0.3
        return out


# ------------------------------------------------------------------------------------------- scanner tools


def radon(img, th):
    n = img.shape[0]
    cc = (n - 1) / 2.0
    s = np.arange(n) - cc
    out = np.empty((len(th), n), np.float32)
    S, T = np.meshgrid(s, s, indexing="ij")
    for i, a in enumerate(th):
        ca, sa = math.cos(a), math.sin(a)
        x = S * ca - T * sa + cc
        y = S * sa + T * ca + cc
        out[i] = ndimage.map_coordinates(img, [y, x], order=1, mode="constant").sum(1)
    return out


def fbp(sino, th, n):
    nd = sino.shape[1]
    pad = int(2 ** math.ceil(math.log2(2 * nd)))
    f = np.abs(np.fft.fftfreq(pad)) * 2
    q = np.real(np.fft.ifft(np.fft.fft(sino, pad, axis=1) * f[None], axis=1))[:, :nd]
    cc = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n] - cc
    img = np.zeros((n, n))
    s = np.arange(nd) - (nd - 1) / 2.0
    for i, a in enumerate(th):
        img += np.interp(xx * math.cos(a) + yy * math.sin(a), s, q[i], left=0, right=0)
    return img * math.pi / (2 * len(th))


# ----------------------------------------------------------------------------------------------- the cases

BASE = dict(
    side="right",
    rot=0.0,
    vxy=0.25,
    vz=0.25,
    supz=1,
    fov=72.0,
    w_lo=-27.0,
    w_hi=10.0,
    cal=CAL_XCT1,
    bones=("MC2", "MC3", "MC4", "MC5"),
    thumb=False,
    noise=30.0,
    psf=0.11,
    rings=0.0,
    metal=False,
    motion=0.0,
    mc2={},
    allbones={},
    pits=0,
    spurs=0,
    dens_cort=1000.0,
    version=3,
    centre_shift=(0.0, 0.0),
)

CASES = {
    "C3_00_base": dict(),
    "C3_01_erosions": dict(pits=6, allbones=dict(c_hd=0.4)),
    "C3_02_osteophytes": dict(spurs=5),
    "C3_03_osteoporotic": dict(dens_cort=780.0, allbones=dict(c_sh=0.33, c_hd=0.18, trab=0.12)),
    "C3_04_tri_bowed": dict(allbones=dict(tri=1.3, bow=2.2)),
    "C3_05_flexed35": dict(allbones=dict(flex=35.0)),
    "C3_06_narrow_joint": dict(allbones=dict(gap=0.5)),
    "C3_07_head_touching": dict(mc2=dict(gap=0.0), allbones=dict(gap=0.6)),
    "C3_08_mc3_touching": dict(touch=True),
    "C3_09_noise_rings": dict(noise=85.0, rings=140.0),
    "C3_10_metal_ring": dict(metal=True, w_hi=13.0),
    "C3_11_aniso041": dict(vz=0.41, supz=2),
    "C3_12_start_metaphysis": dict(w_lo=-13.0),
    "C3_13_end_before_tip": dict(w_hi=-3.2),
    "C3_14_xct2_018": dict(cal=CAL_XCT2, vxy=0.18, vz=0.18, fov=64.0, w_lo=-22.0, w_hi=8.0, noise=40.0, psf=0.08),
    "C3_15_left": dict(side="left"),
    "C3_16_rot40": dict(rot=40.0, fov=84.0),
    "C3_17_two_mc": dict(bones=("MC2", "MC3"), fov=48.0),
    "C3_18_thumb_030": dict(thumb=True, vxy=0.30, vz=0.30, fov=90.0, centre_shift=(7.0, 5.0)),
    "C3_19_motion": dict(motion=0.45),
    "C3_20_ulnar_drift_sublux": dict(allbones=dict(drift=25.0), mc2=dict(sublux=3.5, drift=25.0, flex=15.0)),
    # diagnosis variants (not in the main table; written to diag/)
    "D_metal_nostreak": dict(metal=True, w_hi=13.0, streaks=False),
    "D_ring_only_proximal": dict(metal=False, w_hi=13.0),
    "C3_21_ra_elderly": dict(
        pits=4,
        dens_cort=850.0,
        allbones=dict(c_sh=0.5, c_hd=0.22, trab=0.18, gap=0.5),
        noise=60.0,
        vxy=0.30,
        vz=0.30,
        thumb=True,
        fov=88.0,
        left_thumb=False,
        centre_shift=(7.0, 5.0),
    ),
}

ANAT = {  # u0 at head, v0, tip w (MC3 tip = 0), shaft (au, av), head (hu, hv, hw), fan
    "MC2": (0.0, -2.0, -1.0, (4.1, 4.3), (6.3, 7.2, 6.0), 0.13),
    "MC3": (14.6, 0.0, 0.0, (3.9, 4.2), (6.0, 7.0, 6.0), 0.03),
    "MC4": (27.8, -1.6, -3.2, (3.2, 3.6), (5.1, 6.0, 5.2), -0.05),
    "MC5": (39.8, -5.0, -6.5, (3.5, 3.7), (5.2, 6.0, 5.2), -0.13),
}


def case_spec(name):
    s = dict(BASE)
    s.update(CASES[name])
    return s


def make_case(name, outdir: Path, seed=None):
    sp = case_spec(name)
    rng = np.random.default_rng(seed if seed is not None else zlib.crc32(name.encode()))  # the same each run
    rng = np.random.default_rng(sum(map(ord, name)) * 7919)
    vxy, vz, supz = sp["vxy"], sp["vz"], sp["supz"]
    n_xy = int(round(sp["fov"] / vxy))
    n_z = int(round((sp["w_hi"] - sp["w_lo"]) / vz))
    gz = vz / supz
    grid = Grid(n_xy, n_z * supz, vxy, gz)
    # hand centre: middle of the row, put at the FOV centre
    us = [ANAT[b][0] for b in sp["bones"]]
    uc = (min(us) + max(us)) / 2
    cx = sp["fov"] / 2 + sp["centre_shift"][0]
    cy = sp["fov"] / 2 + 1.0 + sp["centre_shift"][1]
    hand = Hand((0, 0), sp["rot"], sp["side"] == "left", sp["w_lo"])
    # translate so hand point (uc, -2, .) lands at (cx, cy)
    p = hand.L[:2, :2] @ np.array([uc, -2.0])
    hand.c = np.array([cx, cy]) - p

    bones = []
    for bn in sp["bones"]:
        u0, v0, tip, shaft, head, fan = ANAT[bn]
        kw = dict(fan=fan, w_start=sp["w_lo"] - 3)
        kw.update(sp["allbones"])
        if bn == "MC2":
            kw.update(sp["mc2"])
        if sp.get("touch") and bn == "MC3":
            # MC3 moved radially so that shafts and heads touch MC2 (overlap ~0.3 mm)
            u0 = ANAT["MC2"][0] + ANAT["MC2"][4][0] + head[0] - 0.3
            kw["fan"] = ANAT["MC2"][5]
        if bn == "MC5":
            kw["trab"] = kw.get("trab", 0.32)
        bones.append(Bone(bn, u0, v0, tip, shaft, head, **kw))
    shape = grid.shape
    # ---- solids
    outer, inner = {}, {}
    for b in bones:
        o, i_ = solid(b.beads, grid, hand)
        outer[b.name], inner[b.name] = o, i_ & ndimage.binary_erosion(o)
    mc2 = next(b for b in bones if b.name == "MC2")
    traits = {}
    # erosions: pits carved into MC2's head (radial / dorsal bare areas and articular margin)
    pit_mask = np.zeros(shape, bool)
    if sp["pits"]:
        hc = mc2.head_centre()
        hu, hv, hw = mc2.head
        pits = []
        for _ in range(sp["pits"]):
            th = rng.uniform(math.radians(100), math.radians(260))  # radial half (u<0), dorsal to palmar
            ph = rng.uniform(math.radians(-35), math.radians(35))  # around the head's equator, distal part
            d = np.array([math.cos(th) * math.cos(ph), math.sin(th) * math.cos(ph), math.sin(ph) + 0.25])
            d /= np.linalg.norm(d)
            # surface point along d from head centre (ellipsoid)
            t = 1.0 / math.sqrt((d[0] / hu) ** 2 + (d[1] / hv) ** 2 + (d[2] / hw) ** 2)
            depth = rng.uniform(1.0, 3.0)
            r = rng.uniform(0.8, 1.5)
            cen = hc + d * (t - depth + r)
            paint(pit_mask, grid, hand, cen, np.eye(3), (r, r, r))
            pits.append(dict(depth_mm=round(depth, 2), radius_mm=round(r, 2)))
        traits["pits"] = pits
    spur_mask = np.zeros(shape, bool)
    if sp["spurs"]:
        hc = mc2.head_centre()
        hu, hv, hw = mc2.head
        for _ in range(sp["spurs"]):
            th = rng.uniform(math.radians(20), math.radians(240))  # dorsal + radial rim
            d = np.array([math.cos(th), math.sin(th), 0.0])
            t = 1.0 / math.sqrt((d[0] / hu) ** 2 + (d[1] / hv) ** 2)
            base = hc + d * t + np.array([0, 0, rng.uniform(-1.5, 1.5)])
            L = rng.uniform(1.5, 3.0)
            ax = d * 0.8 + np.array([0, 0, 0.6])
            ax /= np.linalg.norm(ax)
            # local axes: ax, and two perpendiculars
            p1 = np.cross(ax, [0, 0, 1.0]) if abs(ax[2]) < 0.95 else np.array([1.0, 0, 0])
            p1 /= np.linalg.norm(p1)
            p2 = np.cross(ax, p1)
            paint(spur_mask, grid, hand, base + ax * (L * 0.5), np.array([ax, p1, p2]), (L, 0.9, 0.7))
        traits["spurs"] = sp["spurs"]
    o2 = outer["MC2"]
    o2 |= spur_mask
    o2 &= ~pit_mask
    inner["MC2"] &= ~pit_mask
    # neighbours never overlap MC2
    for b in bones:
        if b.name != "MC2":
            outer[b.name] &= ~o2
            inner[b.name] &= ~o2
    truth_f = ndimage.binary_fill_holes(o2)
    # phalanges (cup: phalanx solid minus head dilated by the joint gap)
    mc_all = np.zeros(shape, bool)
    for b in bones:
        mc_all |= outer[b.name]
    phal_o, phal_i = {}, {}
    for b in bones:
        po, pi = solid(b.phalanx_beads, grid, hand)
        if not po.any():
            continue
        g = b.k["gap"]
        if g > 0:
            dist = ndimage.distance_transform_edt(~mc_all, sampling=(gz, vxy, vxy))
            keep = dist > g
        else:
            keep = ~mc_all
        po &= keep
        pi &= po
        phal_o[b.name], phal_i[b.name] = po, ndimage.binary_erosion(pi) if g > 0 else pi
    # thumb (MC1): oblique tube, palmar-radial, in its own lobe
    thumb_o = np.zeros(shape, bool)
    thumb_i = np.zeros(shape, bool)
    if sp["thumb"]:
        d = np.array([-0.32, -0.22, 0.92])
        d /= np.linalg.norm(d)
        p0 = np.array([-9.5, -11.0, sp["w_lo"] - 4])
        # orthonormal frame
        e1 = np.cross(d, [0, 1.0, 0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        A = np.array([e1, e2, d])
        for t in np.arange(0, 30, 0.3):
            paint(thumb_o, grid, hand, p0 + d * t, A, (3.6, 3.3, 1.0))
            paint(thumb_i, grid, hand, p0 + d * t, A, (2.6, 2.3, 0.7))
        paint(thumb_o, grid, hand, p0 + d * 30, A, (5.5, 5.0, 5.0))
        paint(thumb_i, grid, hand, p0 + d * 30, A, (5.1, 4.6, 4.6))
        thumb_o &= ~o2
        thumb_i &= thumb_o
    # ---- soft tissue
    allb = mc_all | thumb_o
    for k in phal_o:
        allb |= phal_o[k]
    dist_b = ndimage.distance_transform_edt(~allb, sampling=(gz, vxy, vxy))
    soft = dist_b < 4.5
    # palm slab (only proximal of the finger web) + thenar lobe
    palm = np.zeros(shape, bool)
    zw = min(int((-4.0 - sp["w_lo"]) / gz), shape[0])
    if zw > 0:
        umin = min(b.u0 for b in bones) - 4
        umax = max(b.u0 for b in bones) + 4
        nb = (umax - umin) / 2
        cen_u = (umax + umin) / 2
        for w in np.arange(sp["w_lo"], -4.0, 1.5):
            paint(palm, grid, hand, (cen_u, -7.5, w), np.eye(3), (nb + 2, 10.0, 1.0))
            if sp["thumb"]:
                paint(palm, grid, hand, (-10.0, -12.0, w), np.eye(3), (8.0, 7.5, 1.0))
    dist_th = ndimage.distance_transform_edt(~thumb_o, sampling=(gz, vxy, vxy)) if thumb_o.any() else None
    if dist_th is not None:
        soft |= dist_th < 7.0
    soft |= palm
    soft = ndimage.gaussian_filter(soft.astype(np.float32), (1.5 / gz, 1.5 / vxy, 1.5 / vxy)) > 0.5
    soft |= allb
    depth = ndimage.distance_transform_edt(soft, sampling=(gz, vxy, vxy))
    del dist_b
    D = np.full(shape, np.nan, np.float32)
    D[soft] = 45.0  # muscle
    D[soft & (depth < 3.0)] = -35.0  # subcutaneous fat
    D[soft & (depth < 0.8)] = 70.0  # skin
    # tendons: extensor (dorsal) and flexor (palmar) of each metacarpal
    tend = np.zeros(shape, bool)
    for b in bones:
        for w in np.arange(sp["w_lo"], b.tip + 6, 1.0):
            c = b.centre(min(w, b.hc))
            c[2] = w
            av = b.shaft[1] if w < b.hc - 10 else b.head[1]
            paint(tend, grid, hand, c + np.array([0, av + 1.3, 0]), np.eye(3), (2.4, 0.9, 0.8))
            paint(tend, grid, hand, c + np.array([0, -av - 3.2, 0]), np.eye(3), (2.6, 2.1, 0.8))
    D[tend & soft] = 95.0
    # ---- bones
    noise3 = rng.standard_normal(shape).astype(np.float32)
    bp = ndimage.gaussian_filter(noise3, (0.32 / gz, 0.32 / vxy, 0.32 / vxy)) - ndimage.gaussian_filter(
        noise3, (0.85 / gz, 0.85 / vxy, 0.85 / vxy)
    )
    bp /= bp.std()
    absn = np.abs(bp)
    del noise3, bp
    zc = (np.arange(shape[0]) + 0.5) * gz + sp["w_lo"]  # w of each slice (hand frame; rotation is in-plane)
    cort_var = 1.0 + 0.04 * ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 6)
    cort_var = (cort_var - 1) / max(float(cort_var.std()), 1e-6) * 0.04 + 1

    def fill_bone(o, i_, hc, trab, dens_c, head_w_from):
        cort = o & ~i_
        D[cort] = (dens_c * cort_var)[cort]
        f = trab * smoothstep((zc - head_w_from) / 10.0) ** 1.3  # fraction per slice
        t = np.sqrt(2) * erfinv(np.clip(f, 0, 0.95))
        sheets = absn < t[:, None, None]
        D[i_] = 25.0
        D[i_ & sheets] = 700.0

    for b in bones:
        if b.name == "MC2":
            continue
        fill_bone(outer[b.name], inner[b.name], b.hc, b.k["trab"], sp["dens_cort"], b.hc - 14)
    for nm, po in phal_o.items():
        fill_bone(po, phal_i[nm], 0, 0.30, sp["dens_cort"] * 0.95, -100)
    if thumb_o.any():
        fill_bone(thumb_o, thumb_i, 0, 0.25, sp["dens_cort"], sp["w_lo"] + 8)
    D[pit_mask & soft & ~allb] = 60.0  # synovial pannus in the pits
    fill_bone(o2, inner["MC2"], mc2.hc, mc2.k["trab"], sp["dens_cort"], mc2.hc - 14)
    D[spur_mask & o2 & ~inner["MC2"]] = 0.85 * sp["dens_cort"]
    # metal ring on the ring finger's proximal phalanx
    metal = np.zeros(shape, bool)
    if sp["metal"] and "MC4" in sp["bones"]:
        b4 = next(b for b in bones if b.name == "MC4")
        hcen = b4.head_centre()
        for w in np.arange(sp["w_hi"] - 5.0, sp["w_hi"] - 1.5, 0.2):
            for ang in np.arange(0, 2 * math.pi, 0.15):
                rr = 7.6
                c = np.array([hcen[0] + rr * math.cos(ang), hcen[1] + 0.6 + 6.2 * math.sin(ang), w])
                paint(metal, grid, hand, c, np.eye(3), (0.75, 0.75, 0.2))
        metal &= ~allb
        D[metal] = 5000.0
        traits["metal_ring_slices"] = int(metal.any(axis=(1, 2)).sum())
    # ---- scanner
    cal = Calibration(*sp["cal"])
    air = np.isnan(D)
    D[air] = cal.intercept
    mu = (D - cal.intercept) / cal.slope  # 1/cm
    mu = ndimage.gaussian_filter(mu, (sp["psf"] / gz, sp["psf"] / vxy, sp["psf"] / vxy))
    truth_g = truth_f
    if supz > 1:  # slab integration for thick slices, truth by majority
        mu = mu.reshape(n_z, supz, n_xy, n_xy).mean(1)
        truth_g = truth_f.reshape(n_z, supz, n_xy, n_xy).mean(1) >= 0.5
        soft = soft.reshape(n_z, supz, n_xy, n_xy).any(1)
        metal = metal.reshape(n_z, supz, n_xy, n_xy).any(1)
    truth_g = ndimage.binary_fill_holes(truth_g)
    # sinogram-domain artifacts
    if sp["metal"] and metal.any() and sp.get("streaks", True):
        th = np.linspace(0, math.pi, 180, endpoint=False)
        px_cm = vxy / 10
        for z in np.nonzero(metal.any(axis=(1, 2)))[0]:
            m = mu[z].astype(np.float64)
            m_phys = m + metal[z] * 20.0  # steel ~ 20 /cm at 60 kVp (the image saturates anyway)
            p = radon(m_phys, th) * px_cm
            p0 = radon(m, th) * px_cm
            n0 = 2.0e4
            cnt = rng.poisson(n0 * np.exp(-p)).astype(np.float64)
            pm = -np.log(np.maximum(cnt, 0.5) / n0)
            pm = pm - 0.04 * pm**2  # beam hardening
            art = fbp((pm - p) / px_cm, th, n_xy)  # error sinogram only
            mu[z] += art.astype(np.float32)
            _ = p0
    if sp["motion"] > 0:
        th = np.linspace(0, math.pi, 120, endpoint=False)
        h = n_xy // 2
        shift_px = sp["motion"] / (2 * vxy)
        for z in range(n_z):
            sm = mu[z, : 2 * h, : 2 * h].reshape(h, 2, h, 2).mean((1, 3)).astype(np.float64)
            sh = np.roll(ndimage.shift(sm, (shift_px * 0.6, shift_px), order=1), 0)
            p_clean = radon(sm, th)
            p_mov = radon(sh, th)
            wgt = smoothstep((np.arange(len(th)) - 60) / 30.0)[:, None]  # moved during the second half
            art = fbp(wgt * (p_mov - p_clean), th, h)
            mu[z, : 2 * h, : 2 * h] += ndimage.zoom(art, 2, order=1).astype(np.float32)
    # noise: high-pass (FBP-like), stronger in thick parts of the hand
    thick = ndimage.gaussian_filter(soft.astype(np.float32).mean(0), 6.0 / vxy)
    thick /= max(float(thick.max()), 1e-6)
    amp = (0.75 + 0.6 * thick)[None] * (sp["noise"] / cal.slope)
    nz_ = rng.standard_normal(mu.shape).astype(np.float32)
    nz_ = nz_ - 0.55 * ndimage.gaussian_filter(nz_, (0, 1.2, 1.2))
    nz_ = ndimage.gaussian_filter(nz_, (0.5, 0.35, 0.35))
    nz_ /= nz_.std()
    mu += nz_ * amp
    del nz_
    if sp["rings"] > 0:
        yy, xx = np.mgrid[0:n_xy, 0:n_xy]
        r = np.hypot(xx - (n_xy - 1) / 2 + 3.3, yy - (n_xy - 1) / 2 - 2.1)
        ring = np.zeros((n_xy, n_xy))
        for _ in range(25):
            rk = rng.uniform(5, n_xy * 0.6)
            ring += rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) * np.exp(-0.5 * ((r - rk) / 0.7) ** 2)
        ring = ring / np.abs(ring).max() * (sp["rings"] / cal.slope)
        mu += ring[None].astype(np.float32)
    stored = np.clip(np.rint(mu * cal.mu_scaling), -32768, 32767).astype(np.int16)
    del mu
    # ---- files
    outdir.mkdir(parents=True, exist_ok=True)
    from vbmd_rt.bench.independent_phantoms import log_rows, write_case

    rows = log_rows("third_phantoms (an independent generator)", "gen3 0.1", "05-DEC-2026", (n_xy, n_xy, n_z), cal)
    write_case(outdir, name, stored, truth_g, rows, sp["version"], (vxy, vxy, vz))
    dens = to_density(stored[truth_g], cal).astype(np.float64)
    per = truth_g.reshape(n_z, -1).sum(1)
    zs = np.nonzero(per)[0]
    tj = dict(
        name=name,
        d100_mg_ha_cm3=float(dens.mean()),
        bone_volume_mm3=float(truth_g.sum() * vxy * vxy * vz),
        slices=[int(zs.min()), int(zs.max())],
        shape_zyx=list(stored.shape),
        voxel_mm=[vxy, vxy, vz],
        side=sp["side"],
        rot_deg=sp["rot"],
        bones=list(sp["bones"]) + (["MC1"] if sp["thumb"] else []),
        calibration=list(sp["cal"]),
        noise=sp["noise"],
        traits=traits,
        mc2_touches_edge=bool(
            truth_g[:, 0].any() or truth_g[:, -1].any() or truth_g[:, :, 0].any() or truth_g[:, :, -1].any()
        ),
        mc2_in_first_slice=bool(truth_g[0].any()),
        mc2_in_last_slice=bool(truth_g[-1].any()),
    )
    (outdir / f"{name}.truth.json").write_text(json.dumps(tj, indent=2))
    return tj


def main(argv: list[str] | None = None) -> None:

    from vbmd_rt.bench import independent_phantoms

    a = independent_phantoms.command_line(argv, __doc__, "case names (default: every C3_* case)")
    if a.cmd == "score":
        independent_phantoms.score_command(a, pattern="C3_*.truth.json")
        return
    independent_phantoms.make_command(a, CASES, make_case, "third_phantoms", "D_")


if __name__ == "__main__":
    main()
