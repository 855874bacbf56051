"""A fourth, independent MCP hand phantom generator: smooth signed-distance anatomy in a scanner's hand holder.

    python -m vbmd_rt.bench.fourth_phantoms make OUT [CASE ...]     # the 24 cases of CASES (F4_*), or some
    vbmd-rt run OUT/F4_00_base.AIM -o RUNS [--model classical] ...   # the tool, as a user runs it
    python -m vbmd_rt.bench.fourth_phantoms score OUT RUNS [-o JSON] # Dice, D100 error, QC, identity per case

Written by an independent test campaign (issue 19) to be unlike vbmd_rt.synth (per-slice ellipses),
``bench/independent_phantoms.py`` (implicit superellipse solids, EDT cortex, image-domain scanner) and
``bench/third_phantoms.py`` (ellipsoid bead chains, sinogram artifacts), and closer to a real XtremeCT MCP
scan where those are not:

* anatomy = *signed-distance fields* in a hand frame (u radial->ulnar, v dorsal, w distal), mm: each
  metacarpal is a smooth-min of elliptical round-cone segments along a bowed, fanned centreline (shaft,
  metaphyseal flare), a head ellipsoid with two palmar condyles, and smooth-subtracted collateral-ligament
  fossae on both sides of the head; the proximal phalanx is a base ellipsoid plus a shaft chain along a
  flexed/drifted axis, with its concave cup carved as {sdf_phalanx <= 0} minus {sdf_metacarpal < gap}
  (joint space = gap exactly). Dimensions of an adult hand: MC2 head 13-16 mm wide, shaft 7-9 mm.
* cortex = the shell -c(s) < sdf < 0 with c thinning from 0.8-1.6 mm at the diaphysis to 0.15-0.4 mm at the
  head (s = axial distance from the head centre); partial volume from the SDF itself (voxel occupancy
  clip(0.5 - sdf / h)), so boundaries are anti-aliased without supersampling;
* interior: fatty marrow (about -40 mg HA/cm3) in the diaphysis grading into trabecular bone of 110-320 mg
  HA/cm3 apparent density in the metaphysis and head, textured by an axially elongated correlated noise
  (rod-like, aligned with the bone axis);
* hand = SDF outline (rounded palm slab, optional finger clefts distal of the web, thenar lobe with the
  thumb), skin / subcutaneous fat / muscle by depth below the outline, extensor tendons; a thin plastic or
  carbon hand holder (an elliptical shell aligned with the scanner, not the hand), optionally cut by the
  field of view, optionally a positioning cast conforming to the hand and air pockets between skin and cast;
* scan geometry: the stack starts in the shafts (11-22 mm proximal of MC2's tip), covers MCP2/MCP3 and the
  phalanx bases, 16-26 mm long, made of 110-slice stacks (native slice pitch) with a small in-plane
  misregistration shift of the hand at each stack boundary; the hand is pronated (rolled about its long
  axis), tilted against z by 5-20 degrees (fingers flexed in the holder) and rotated in-plane;
* scanner: density -> linear attenuation (project Calibration), beam hardening as cupping that grows with
  the in-plane thickness of the hand, Gaussian PSF, ramp-coloured (FBP-like) noise per slice, slightly
  correlated between slices and stronger where the hand is thick, stored as int16 round(mu * Mu_Scaling).
  XtremeCT I (82 µm, CAL_XCT1) and XtremeCT II (60.7 µm, CAL_XCT2) calibrations; most cases are rendered at
  0.25 mm (the tool resamples by the header's voxel size), a few at native 82 / 61 µm with a field of view
  cropped around the hand or around MC2/MC3.

Cases named ``D4_*`` are diagnosis variants (not in the default set; ``make OUT D4_...`` writes them): each
changes one feature of a failing case (holder density and distance, joint space x tilt, crops without MC2,
severe osteoporosis at native resolution, an MCP2 arthroplasty spacer) to tell which one causes the failure.

Known differences from a real scan: no real trabecular microstructure (a partial-volumed texture field,
not plates and rods, at every voxel size); no streaks, rings or motion inside a stack; the holder is an
ideal elliptical shell, and the "carbon" one's 380 mg HA/cm3 is probably denser than a real carbon-fibre shell
(closer to a glass-fibre or plaster cast); the soft-tissue outline is a smooth analytic slab (no skin folds, vessels, nails);
sesamoids, thumb and erosions are idealised ellipsoids / spheres; the noise is stationary apart from the
thickness modulation; the processing log is minimal (no patient fields, no scanner ID, no "Side").

Truth = MC2's filled periosteal envelope (sdf_MC2 < 0 at the voxel centres, holes filled) on the output grid;
D100 = mean calibrated density of the stored values inside it (project Calibration equation), so a perfect
mask gives exactly zero error.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from vbmd_rt.bench.independent_phantoms import command_line, log_rows, make_command, write_case
from vbmd_rt.bench.third_phantoms import CAL_XCT1, CAL_XCT2
from vbmd_rt.runtime.io.calibration import Calibration, to_density

STACK_SLICES = 110  # slices per stack of the scanner

# ------------------------------------------------------------------------------------ signed-distance tools


def smin(a, b, k):
    """Polynomial smooth minimum (union) of two distance fields, blend width k mm."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def ssub(a, b, k):
    """Smooth subtraction: a minus b."""
    return -smin(-a, b, k)


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def sd_ellipsoid(P, c, s, R=None):
    """Approximate signed distance to an ellipsoid (centre c, semi-axes s, rows of R its axes; hand frame)."""
    d = [P[i] - c[i] for i in range(3)]
    q = d if R is None else [R[i][0] * d[0] + R[i][1] * d[1] + R[i][2] * d[2] for i in range(3)]
    k0 = np.sqrt((q[0] / s[0]) ** 2 + (q[1] / s[1]) ** 2 + (q[2] / s[2]) ** 2)
    k1 = np.sqrt((q[0] / s[0] ** 2) ** 2 + (q[1] / s[1] ** 2) ** 2 + (q[2] / s[2] ** 2) ** 2)
    return np.where(k0 < 1.0, (k0 - 1.0) * min(s), k0 * (k0 - 1.0) / np.maximum(k1, 1e-6))


def sd_chain(P, knots, radii):
    """Union of round-cone segments with elliptical cross-sections along a polyline: ``knots`` (n, 3) hand-frame
    points, ``radii`` (n, 2) the (u-ish, v-ish) semi-axes at each knot; the cross-section's u axis is the hand's
    u made perpendicular to the segment."""
    out = None
    for i in range(len(knots) - 1):
        A, B = np.asarray(knots[i], float), np.asarray(knots[i + 1], float)
        ax = B - A
        L2 = float(ax @ ax)
        e3 = ax / math.sqrt(L2)
        eu = np.array([1.0, 0.0, 0.0]) - e3[0] * e3
        eu /= np.linalg.norm(eu)
        ev = np.cross(e3, eu)
        d = [P[j] - A[j] for j in range(3)]
        t = np.clip((d[0] * ax[0] + d[1] * ax[1] + d[2] * ax[2]) / L2, 0.0, 1.0)
        q = [d[j] - t * ax[j] for j in range(3)]
        qa = q[0] * e3[0] + q[1] * e3[1] + q[2] * e3[2]  # non-zero beyond the ends: rounded caps
        qu = q[0] * eu[0] + q[1] * eu[1] + q[2] * eu[2]
        qv = q[0] * ev[0] + q[1] * ev[1] + q[2] * ev[2]
        ru = radii[i][0] + t * (radii[i + 1][0] - radii[i][0])
        rv = radii[i][1] + t * (radii[i + 1][1] - radii[i][1])
        rp = np.sqrt(qu * qu + qv * qv)
        r_e = ru * rv / np.sqrt((rv * qu) ** 2 + (ru * qv) ** 2 + 1e-9) * np.maximum(rp, 1e-6)
        r_e = np.where(rp < 1e-6, np.minimum(ru, rv), r_e)
        dist = np.sqrt(rp * rp + qa * qa) - r_e
        out = dist if out is None else np.minimum(out, dist)
    return out


def sd_rounded_rect(x, y, hx, hy, r):
    """2D signed distance to a rectangle of half-sizes (hx, hy) with corner radius r."""
    qx, qy = np.abs(x) - hx + r, np.abs(y) - hy + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def rotation(axis: int, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


# ------------------------------------------------------------------------------------------------ anatomy

# head centre (u, v), tip w (MC3's tip = 0), shaft radii (ru, rv), head semi-axes (hu, hv, hw), fan du/dw
ANAT = {
    "MC2": dict(u=0.0, v=0.0, tip=-1.5, shaft=(4.0, 3.8), head=(7.2, 6.4, 6.0), fan=-0.10),
    "MC3": dict(u=16.0, v=1.2, tip=0.0, shaft=(4.0, 4.0), head=(7.0, 6.7, 6.2), fan=0.0),
    "MC4": dict(u=29.8, v=-0.6, tip=-2.8, shaft=(3.2, 3.4), head=(5.7, 5.8, 5.3), fan=0.07),
    "MC5": dict(u=42.0, v=-3.8, tip=-6.0, shaft=(3.3, 3.2), head=(5.6, 5.5, 5.1), fan=0.14),
}


class Finger:
    """A metacarpal and its proximal phalanx as signed-distance fields in the hand frame."""

    def __init__(self, name, sp, rng):
        a = dict(ANAT[name])
        a.update(sp["anat"].get(name, {}))
        self.name = name
        self.u, self.v, self.tip = a["u"], a["v"], a["tip"]
        self.shaft, self.head, self.fan = a["shaft"], a["head"], a["fan"]
        self.hc = np.array([self.u, self.v, self.tip - self.head[2]])
        k = dict(sp["bone"])
        if name == "MC2":
            k.update(sp["mc2"])
        self.k = k
        hu, hv, hw = self.head
        # shaft axis: dorsal of the head centre, fanned and bowed (dorsally convex)
        self.knots, self.radii = [], []
        for s, f in ((2.0, 1.30), (8.0, 1.10), (15.0, 1.0), (26.0, 1.0), (40.0, 1.06), (70.0, 1.2)):
            self.knots.append(
                self.hc + np.array([-self.fan * s, 1.0 + 0.8 * k["bow"] * math.sin(s / 70 * math.pi), -s])
            )
            self.radii.append((self.shaft[0] * f, self.shaft[1] * f))
        # phalanx axis (flexion about u, ulnar drift about v, both at the head centre)
        self.R = rotation(1, k["drift"]) @ rotation(0, -k["flex"])
        self.pb = 3.2  # base semi-length
        self.base_c = self.hc + self.R @ np.array([0.0, 0.3, hw + k["gap"] + self.pb - 2.0])
        pk = [self.base_c + self.R @ np.array([0.0, 0.2, d]) for d in (0.0, 6.0, 16.0)]
        self.ph_knots, self.ph_radii = pk, [(0.74 * hu, 0.58 * hv), (0.62 * hu, 0.47 * hv), (0.55 * hu, 0.42 * hv)]
        self.pits = []
        for _ in range(k["pits"]):  # erosions in the head's radial and dorsal bare areas
            th = rng.uniform(math.radians(60), math.radians(200))
            ph = rng.uniform(-0.35, 0.5)
            d = np.array([math.cos(th) * math.cos(ph), math.sin(th) * math.cos(ph), math.sin(ph)])
            t = 1.0 / math.sqrt((d[0] / hu) ** 2 + (d[1] / hv) ** 2 + (d[2] / hw) ** 2)
            depth, r = rng.uniform(1.0, 2.8), rng.uniform(0.9, 1.8)
            self.pits.append((self.hc + d * (t - depth + r), r))

    def box(self, w_lo):
        """hand-frame bounds (lo, hi) of the finger from w_lo to beyond the phalanx base."""
        hu, hv, _ = self.head
        flex = 12.0 * math.sin(math.radians(abs(self.k["flex"])))
        lo = np.array([self.u - hu - 4 - abs(self.fan) * (self.tip - w_lo), self.v - hv - 5 - flex, w_lo])
        hi = np.array([self.u + hu + 4 + abs(self.fan) * (self.tip - w_lo), self.v + hv + 5, self.tip + 22.0])
        return lo, hi

    def sdf_mc(self, P):
        hu, hv, hw = self.head
        shaft = sd_chain(P, self.knots[::-1], self.radii[::-1])
        head = sd_ellipsoid(P, self.hc, (0.92 * hu, 0.86 * hv, hw))
        for sg in (-1, 1):  # palmar condyles
            c = self.hc + np.array([sg * 0.45 * hu, -0.42 * hv, -0.2 * hw])
            head = smin(head, sd_ellipsoid(P, c, (0.52 * hu, 0.56 * hv, 0.78 * hw)), 1.0)
        d = smin(shaft, head, 2.5)
        for sg in (-1, 1):  # collateral-ligament fossae
            c = self.hc + np.array([sg * (0.92 * hu + 1.3), 0.2 * hv, -0.2 * hw])
            d = ssub(d, np.sqrt((P[0] - c[0]) ** 2 + (P[1] - c[1]) ** 2 + (P[2] - c[2]) ** 2) - 2.3, 0.6)
        for c, r in self.pits:
            d = ssub(d, np.sqrt((P[0] - c[0]) ** 2 + (P[1] - c[1]) ** 2 + (P[2] - c[2]) ** 2) - r, 0.25)
        if self.k["resect"]:  # arthroplasty: the head resected this far proximal of the head centre
            d = np.maximum(d, P[2] - (self.hc[2] - self.k["resect"]))
        return d

    def sdf_implant(self, P):
        """a silicone hinge spacer (Swanson type): a block in the joint, stems in both medullary canals."""
        c = self.hc + np.array([0.0, 0.3, 2.0 - self.k["resect"]])
        body = sd_ellipsoid(P, c, (5.0, 3.2, 3.0))
        stem = sd_chain(P, [self.knots[3], c], [(1.6, 1.3), (2.2, 1.8)])
        tip = self.base_c + self.R @ np.array([0.0, 0.0, 10.0])
        return smin(smin(body, stem, 1.0), sd_chain(P, [c, tip], [(2.0, 1.6), (1.2, 1.0)]), 1.0)

    def sdf_ph(self, P, d_mc):
        hu, hv, _ = self.head
        base = sd_ellipsoid(P, self.base_c, (1.02 * hu, 0.82 * hv, self.pb), self.R.T)
        d = smin(base, sd_chain(P, self.ph_knots, self.ph_radii), 2.0)
        return np.maximum(d, -(d_mc - self.k["gap"]))  # the cup: nothing within `gap` of the metacarpal

    def s_mc(self, P):
        """axial distance proximal of the head centre (mm)."""
        return self.hc[2] - P[2]

    def s_ph(self, P):
        a = self.R[:, 2]
        return (P[0] - self.base_c[0]) * a[0] + (P[1] - self.base_c[1]) * a[1] + (P[2] - self.base_c[2]) * a[2]


# ------------------------------------------------------------------------------------------------- scene


class Scene:
    """World grid (z, y, x) and the hand's placement: world = M @ mirror(hand) + T + stack shift(z)."""

    def __init__(self, sp, rng):
        self.vox = sp["vox"]
        self.M = rotation(2, sp["rot"]) @ rotation(0, -sp["tilt"]) @ rotation(2, sp["roll"])
        self.mir = np.array([-1.0 if sp["side"] == "left" else 1.0, 1.0, 1.0])
        self.T = np.zeros(3)
        self.sp = sp
        self.rng = rng

    def to_world(self, p):
        return self.M @ (self.mir * np.asarray(p, float)) + self.T

    def place(self, fingers, w0):
        """fit the field of view: z = 0 at the hand frame's w0 on MC2's axis; x, y from the hand's outline."""
        sp = self.sp
        self.T = -self.to_world(np.array([0.0, 0.0, w0]))  # MC2's axis at w0 -> world origin
        L = sp["length"]
        us = [f.u for f in fingers]
        ex = 28.0 if sp["thumb"] else 15.0  # the thenar lobe lies radial and palmar
        pts = []
        for w in np.linspace(w0 - 10, w0 + L + 10, 9):
            for u in (min(us) - ex, max(us) + 14):
                for v in (-21.0 - (ex - 15), 15.0):
                    pts.append(self.to_world((u, v, w)))
        pts = np.array(pts)
        zin = (pts[:, 2] > -2) & (pts[:, 2] < L + 2)  # only the points within the stack's z range matter
        pts = pts[zin] if zin.sum() >= 4 else pts
        lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
        # the holder: an elliptical shell round the hand's box, aligned with the scanner
        self.holder_c = (lo + hi) / 2
        self.holder_ax = (hi - lo) / 2 * 1.3 + sp["holder_gap"]
        if sp["holder_cut"]:
            self.holder_c = self.holder_c + np.array([0.0, 0.5 * self.holder_ax[1]])
        elif sp["holder"] != "none":
            lo, hi = self.holder_c - self.holder_ax - 1.0, self.holder_c + self.holder_ax + 1.0
        if sp["crop"]:  # a field of view cropped to a hand-frame box (u_lo, u_hi, v_lo, v_hi)
            u0, u1, v0, v1 = sp["crop"]
            c = [self.to_world((u, v, w)) for u in (u0, u1) for v in (v0, v1) for w in (w0, w0 + L)]
            lo, hi = np.array(c)[:, :2].min(0), np.array(c)[:, :2].max(0)
        margin = sp["margin"]
        self.T[:2] += margin - lo
        self.holder_c = self.holder_c + margin - lo
        n = np.ceil((hi - lo + 2 * margin) / self.vox).astype(int)
        self.nx, self.ny = int(n[0]), int(n[1])
        self.nz = int(round(L / self.vox))
        self.shape = (self.nz, self.ny, self.nx)
        # stack misregistration: a shift of the hand per 110-slice stack (the first stack is the reference)
        stack_mm = STACK_SLICES * sp["native_mm"]
        zc = (np.arange(self.nz) + 0.5) * self.vox
        sid = (zc // stack_mm).astype(int)
        shifts = np.zeros((sid.max() + 1, 2))
        shifts[1:] = self.rng.normal(0.0, sp["stack_shift"], size=(sid.max(), 2))
        self.shift = shifts[sid]  # (nz, 2) world mm
        self.stack_shifts = shifts

    def box(self, lo, hi):
        """index slices (z, y, x) covering the hand-frame box [lo, hi]; None when outside."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        wc = np.array([self.to_world(p) for p in corners])
        s = float(np.abs(self.stack_shifts).max()) + 2 * self.vox
        wlo, whi = wc.min(0) - s, wc.max(0) + s
        sl = []
        for a, n in ((2, self.nz), (1, self.ny), (0, self.nx)):
            i0 = max(0, int(math.floor(wlo[a] / self.vox)))
            i1 = min(n, int(math.ceil(whi[a] / self.vox)) + 1)
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def hand_coords(self, sl):
        """hand-frame coordinates (u, v, w) of the voxel centres in sl (float32 arrays, broadcast shape)."""
        v = self.vox
        z = ((np.arange(sl[0].start, sl[0].stop) + 0.5) * v).astype(np.float32)[:, None, None]
        y = ((np.arange(sl[1].start, sl[1].stop) + 0.5) * v).astype(np.float32)[None, :, None]
        x = ((np.arange(sl[2].start, sl[2].stop) + 0.5) * v).astype(np.float32)[None, None, :]
        sh = self.shift[sl[0]].astype(np.float32)
        x = x - self.T[0] - sh[:, 0, None, None]
        y = y - self.T[1] - sh[:, 1, None, None]
        z = z - self.T[2]
        Mi = self.M.T
        P = [(Mi[i, 0] * x + Mi[i, 1] * y + Mi[i, 2] * z) * self.mir[i] for i in range(3)]
        return [
            np.broadcast_to(p, (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start, sl[2].stop - sl[2].start)).astype(
                np.float32
            )
            for p in P
        ]


def texture(shape, vox, rng, corr_mm, axial_mm, amp):
    """mean-1 rod-like texture: correlated noise elongated along z (about the bones' axis)."""
    g = rng.standard_normal(shape).astype(np.float32)
    g = ndimage.gaussian_filter(g, (axial_mm / vox, corr_mm / vox, corr_mm / vox))
    g /= max(float(g.std()), 1e-6)
    return np.maximum(1.0 + amp * g, 0.0)


def blend(D, sl, occ, dens):
    """D[sl] = D[sl] * (1 - occ) + dens * occ where occ > 0."""
    sub = D[sl]  # a view
    m = occ > 0
    dens = np.broadcast_to(np.asarray(dens, np.float32), occ.shape)
    sub[m] = sub[m] * (1.0 - occ[m]) + dens[m] * occ[m]


# ----------------------------------------------------------------------------------------------- the cases

BASE = dict(
    side="right",
    vox=0.25,
    native_mm=0.082,  # slice pitch of the scanner (stack height = 110 of these)
    cal=CAL_XCT1,
    version=3,
    length=20.0,  # mm along z
    start=15.0,  # the stack starts this far proximal of MC2's tip (hand frame)
    tilt=8.0,  # degrees against z (flexed fingers)
    rot=6.0,  # in-plane
    roll=6.0,  # pronation about the hand's long axis
    margin=4.0,
    crop=None,  # (u_lo, u_hi, v_lo, v_hi): a field of view cropped to this hand-frame box
    bones=("MC2", "MC3", "MC4", "MC5"),
    anat={},
    bone=dict(flex=12.0, drift=0.0, gap=1.1, bow=1.2, c_shaft=1.15, c_head=0.3, tb=210.0, pits=0, resect=0.0),
    mc2={},
    dens_cort=1000.0,
    marrow_fat=-40.0,
    holder="plastic",  # plastic | carbon | none
    holder_gap=0.0,  # mm added to the holder's semi-axes (an ellipse round the hand's box, 1.3 x its half-size)
    holder_cut=False,  # the holder partly outside the field of view
    holder_dens=None,  # mg HA/cm3 (None: 380 carbon/glass-fibre, 140 plastic)
    cast=False,
    air_pockets=0,
    thumb=False,
    sesamoids=False,
    sesamoid_off=2.6,  # sesamoid centre palmar of the head's palmar extent (mm)
    thumb_shift=(0.0, 0.0),  # (u, v) mm added to the thumb's axis
    cleft=None,  # w of the finger web (fingers separate distal of it), None: no clefts in the stack
    fat=3.5,  # subcutaneous fat depth (mm)
    stack_shift=0.08,  # sd of each stack's in-plane misregistration (mm)
    noise=30.0,  # sd mg HA/cm3 at the output voxel size
    psf=0.10,  # Gaussian sigma mm
    bh=0.03,  # cupping: fractional loss of mu at the hand's thickest
)

OP = dict(c_shaft=0.6, c_head=0.15, tb=115.0)  # osteoporotic

#: An XtremeCT I stack at its native 82 µm (a cut holder; the field of view cropped round the hand with a 3 mm
#: margin), and one 17 mm long tilted 15 degrees.
NATIVE82 = dict(holder_cut=True, vox=0.082, margin=3.0, noise=90.0, psf=0.11)
NATIVE82_TILT15 = dict(NATIVE82, length=17.0, start=12.5, tilt=15.0)

CASES = {
    "F4_00_base": dict(),
    "F4_01_tilt20": dict(tilt=20.0),
    "F4_02_pronated_rot35": dict(rot=35.0, roll=22.0),
    "F4_03_carbon_holder_cut": dict(holder="carbon", holder_gap=3.0, holder_cut=True),
    "F4_04_cast_air": dict(cast=True, air_pockets=8, holder="none"),
    "F4_05_stack_shift": dict(stack_shift=0.4),
    "F4_06_osteoporotic": dict(dens_cort=830.0, bone=dict(BASE["bone"], **OP)),
    "F4_07_ra_erosions": dict(mc2=dict(pits=6, gap=0.4)),
    "F4_08_ra_elderly": dict(
        dens_cort=850.0, bone=dict(BASE["bone"], **OP, gap=0.35), mc2=dict(pits=5, gap=0.3), noise=55.0
    ),
    "F4_09_narrow_joints": dict(bone=dict(BASE["bone"], gap=0.3)),
    "F4_10_wide_flexed": dict(bone=dict(BASE["bone"], gap=2.0, flex=35.0)),
    "F4_11_long26": dict(length=26.0, start=22.0),
    "F4_12_short16_metaphysis": dict(length=16.0, start=11.0),
    "F4_13_thumb": dict(thumb=True),
    "F4_14_sesamoids": dict(sesamoids=True),
    "F4_15_left": dict(side="left", rot=-10.0),
    "F4_16_xct2": dict(cal=CAL_XCT2, native_mm=0.0607, vox=0.2428, noise=40.0, psf=0.08),
    "F4_17_small_mc2_big_mc3": dict(
        anat=dict(MC2=dict(head=(6.5, 6.0, 5.6), shaft=(3.6, 3.5)), MC3=dict(head=(7.8, 7.2, 6.6), shaft=(4.4, 4.3)))
    ),
    "F4_18_dense": dict(dens_cort=1150.0, bone=dict(BASE["bone"], c_shaft=1.6, c_head=0.4, tb=320.0)),
    "F4_19_native82": dict(NATIVE82, length=18.0, start=13.0),
    "F4_20_native82_ra_tilt15": dict(NATIVE82_TILT15, mc2=dict(pits=5, gap=0.5)),
    "F4_21_native61_crop": dict(
        vox=0.0607,
        native_mm=0.0607,
        cal=CAL_XCT2,
        crop=(-10, 25, -10, 10),
        margin=1.0,
        noise=110.0,
        psf=0.08,
        length=16.0,
        start=12.0,
    ),
    "F4_22_clefts_drift": dict(cleft=3.0, bone=dict(BASE["bone"], drift=18.0)),
    "F4_23_holder_tight": dict(holder="carbon", holder_gap=-6.0, fat=1.5, roll=-8.0),
    # diagnosis variants (not in the default set): which feature of a failing case causes it
    "D4_carbon_closed": dict(holder="carbon"),
    "D4_plastic_tight": dict(holder="plastic", holder_gap=-6.0, fat=1.5, roll=-8.0),
    "D4_carbon_tight_nofatchange": dict(holder="carbon", holder_gap=-6.0),
    "D4_plastic_cut": dict(holder="plastic", holder_gap=3.0, holder_cut=True),
    "D4_carbon_cut_far": dict(holder="carbon", holder_gap=12.0, holder_cut=True),
    "D4_gap03_mc2_only": dict(mc2=dict(gap=0.3)),
    "D4_gap05": dict(bone=dict(BASE["bone"], gap=0.5)),
    "D4_gap07": dict(bone=dict(BASE["bone"], gap=0.7)),
    "D4_gap09": dict(bone=dict(BASE["bone"], gap=0.9)),
    "D4_pits_gap11": dict(mc2=dict(pits=6)),
    "D4_native82_tilt15_pits_gap11": dict(NATIVE82_TILT15, mc2=dict(pits=5)),
    "D4_crop_025": dict(crop=(-10, 25, -10, 10), margin=1.0),
    "D4_no_mc2_in_view": dict(crop=(9.5, 52, -14, 12), margin=0.0, holder_cut=True),
    "D4_mc2_half_cut": dict(crop=(-1.0, 52, -14, 12), margin=0.0, holder_cut=True),
    "D4_closed_ring_200": dict(holder="carbon", holder_dens=200.0),
    "D4_closed_ring_260": dict(holder="carbon", holder_dens=260.0),
    "D4_closed_ring_320": dict(holder="carbon", holder_dens=320.0),
    "D4_ra_tilt15_025": dict(length=17.0, start=12.5, tilt=15.0, mc2=dict(pits=5, gap=0.5)),
    "D4_gap05_mc2_tilt15_025": dict(length=17.0, start=12.5, tilt=15.0, mc2=dict(gap=0.5)),
    "D4_sesamoid_touching": dict(sesamoids=True, sesamoid_off=1.6),
    "D4_thumb_close": dict(thumb=True, thumb_shift=(5.0, 4.0)),
    "D4_thumb_in_row": dict(thumb=True, thumb_shift=(-2.0, 8.0)),
    "D4_stack_shift_1mm": dict(stack_shift=1.0),
    "D4_start8_head": dict(start=8.0, length=16.0),
    "D4_rot90": dict(rot=90.0),
    "D4_rot180_palm_up": dict(rot=180.0),
    "D4_left_thumb_tilt15": dict(side="left", thumb=True, tilt=15.0, rot=-20.0),
    "D4_shafts_only": dict(start=34.0, length=20.0),
    "D4_too_distal": dict(start=4.0, length=16.0),
    "D4_native82_op2": dict(
        NATIVE82,
        length=18.0,
        start=13.0,
        dens_cort=780.0,
        bone=dict(BASE["bone"], c_shaft=0.5, c_head=0.13, tb=95.0),
    ),
    "D4_mcp2_arthroplasty": dict(mc2=dict(resect=1.5)),
    "D4_gap08": dict(bone=dict(BASE["bone"], gap=0.8)),
    "D4_gap05_tilt0": dict(tilt=0.0, bone=dict(BASE["bone"], gap=0.5)),
    "D4_gap08_tilt15": dict(tilt=15.0, bone=dict(BASE["bone"], gap=0.8)),
    "D4_gap11_tilt15": dict(tilt=15.0),
}


def case_spec(name):
    s = dict(BASE)
    s.update(CASES[name])
    return s


def features(name) -> list[str]:
    """The case's departures from the base case, as short words."""
    sp = case_spec(name)
    out = []
    for k, v in CASES[name].items():
        if k == "bone":
            out += [f"{kk}={vv}" for kk, vv in v.items() if BASE["bone"].get(kk) != vv]
        elif k in ("mc2", "anat"):
            out.append(f"{k}:{v}")
        elif k == "cal":
            out.append("CAL_XCT2" if v == CAL_XCT2 else "CAL_XCT1")
        else:
            out.append(f"{k}={v}")
    return out or [f"tilt={sp['tilt']}", f"rot={sp['rot']}", f"holder={sp['holder']}"]


# -------------------------------------------------------------------------------------------------- render


def make_case(name, outdir: Path):
    sp = case_spec(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    cal = Calibration(*sp["cal"])
    fingers = [Finger(b, sp, rng) for b in sp["bones"]]
    mc2 = fingers[0]
    w0 = mc2.tip - sp["start"]
    sc = Scene(sp, rng)
    sc.place(fingers, w0)
    shape, vox = sc.shape, sc.vox
    air = cal.intercept  # mu = 0
    D = np.full(shape, air, np.float32)

    # ---- holder (world frame, aligned with z) and the hand's outline
    full = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    P = sc.hand_coords(full)
    us = [f.u for f in fingers]
    u_lo, u_hi = min(us) - 12.0, max(us) + 10.0
    pc = np.array([(u_lo + u_hi) / 2, -3.0])
    palm = sd_rounded_rect(P[0] - pc[0], P[1] - pc[1], (u_hi - u_lo) / 2, 14.0, 10.0)
    if sp["cleft"] is not None:  # fingers distal of the web
        palm = ssub(palm, sp["cleft"] - P[2], 2.0)  # keep only proximal of the web
        for f in fingers:
            a = f.R[:, 2]
            c0 = f.hc
            t = np.maximum((P[0] - c0[0]) * a[0] + (P[1] - c0[1]) * a[1] + (P[2] - c0[2]) * a[2], 0)
            rr = np.sqrt(
                (P[0] - c0[0] - t * a[0]) ** 2 + (P[1] - c0[1] - t * a[1]) ** 2 + (P[2] - c0[2] - t * a[2]) ** 2
            )
            palm = smin(palm, rr - (f.head[0] + 3.0), 2.5)
    if sp["thumb"]:
        palm = smin(palm, sd_ellipsoid(P, (-13.0, -12.0, w0 - 2.0), (10.0, 9.0, 30.0)), 5.0)
    outline = palm
    _, yc, xc = [(np.arange(n) + 0.5) * vox for n in shape]
    hand_in = outline < 0
    traits = {}
    if sp["holder"] != "none":
        (cx, cy), (ax_h, ay_h) = sc.holder_c, sc.holder_ax
        X, Y = xc[None, :] - cx, yc[:, None] - cy
        sd_h = (np.sqrt((X / ax_h) ** 2 + (Y / ay_h) ** 2) - 1.0) * math.sqrt(ax_h * ay_h)  # approximate
        th = 1.8
        shell = np.clip(0.5 - (np.abs(sd_h + th / 2) - th / 2) / vox, 0, 1).astype(np.float32)
        dens_h = sp["holder_dens"] or (380.0 if sp["holder"] == "carbon" else 140.0)
        D[:] = D * (1 - shell[None]) + dens_h * shell[None]
        traits["holder_fraction_of_ellipse_in_view"] = round(
            float(shell.sum() * vox / (2 * math.pi * math.sqrt(ax_h * ay_h)) / th), 2
        )
    # cast: a 2.5 mm shell 1.5-4 mm off the skin, with air pockets between skin and cast
    if sp["cast"]:
        occ = np.clip(0.5 - (np.abs(outline - 2.75) - 1.25) / vox, 0, 1)
        D[:] = D * (1 - occ) + 260.0 * occ
        foam = (outline > 0) & (outline < 1.5)
        D[foam] = -250.0
        for _ in range(sp["air_pockets"]):
            c = np.array([rng.uniform(u_lo, u_hi), rng.choice([-17.7, 11.7]), w0 + rng.uniform(0, sp["length"])])
            r = rng.uniform(1.5, 3.5)
            pocket = (np.sqrt((P[0] - c[0]) ** 2 + (P[1] - c[1]) ** 2 + (P[2] - c[2]) ** 2) < r) & foam
            D[pocket] = air
    # soft tissue by depth below the outline
    depth = -outline
    occ = np.clip(0.5 + depth / vox, 0, 1)
    soft = np.where(depth < 1.2, 60.0, np.where(depth < 1.2 + sp["fat"], -75.0, 38.0)).astype(np.float32)
    D[:] = D * (1 - occ) + soft * occ
    thick = ndimage.gaussian_filter(hand_in.mean(0).astype(np.float32), 6.0 / vox)
    thick /= max(float(thick.max()), 1e-6)
    del P, palm, outline, depth, occ, soft, hand_in

    # ---- bones
    truth = np.zeros(shape, bool)
    h = vox
    cort_dens = sp["dens_cort"]
    for f in fingers:
        sl = sc.box(*f.box(w0))
        if sl is None:
            continue
        P = sc.hand_coords(sl)
        d_mc = f.sdf_mc(P)
        # extensor tendon (dorsal, flat) over the metacarpal
        k0 = f.knots[3] + np.array([0.0, f.radii[3][1] + 1.4, 0.0])
        k1 = f.hc + np.array([0.0, 0.86 * f.head[1] + 1.3, 2.0])
        ten = sd_chain(P, [k0, k1], [(2.8, 0.9), (3.2, 0.9)])
        blend(D, sl, np.clip(0.5 - ten / h, 0, 1) * (d_mc > 0.1), 88.0)
        tex = texture(d_mc.shape, vox, rng, 0.35, 0.9, 0.55 if vox > 0.15 else 0.9)
        for part in ("mc", "ph"):
            if part == "mc":
                d, s = d_mc, f.s_mc(P)
                c = f.k["c_head"] + (f.k["c_shaft"] - f.k["c_head"]) * smoothstep((s - 3.0) / 12.0)
                tb = sp["marrow_fat"] + (f.k["tb"] - sp["marrow_fat"]) * (1 - smoothstep((s - 8.0) / 10.0))
            else:
                d, s = f.sdf_ph(P, d_mc), f.s_ph(P)
                c = 0.28 + 0.45 * smoothstep((s - 2.0) / 10.0)
                tb = sp["marrow_fat"] + (0.9 * f.k["tb"] - sp["marrow_fat"]) * (1 - smoothstep((s - 6.0) / 8.0))
            o = np.clip(0.5 - d / h, 0, 1)
            oi = np.clip(0.5 - (d + c) / h, 0, 1)
            inner = sp["marrow_fat"] + (tb - sp["marrow_fat"]) * tex
            dens = np.where(o > 0, (cort_dens * (o - oi) + inner * oi) / np.maximum(o, 1e-6), 0.0)
            blend(D, sl, o, dens.astype(np.float32))
            if f.name == "MC2" and part == "mc":
                truth[sl] |= d < 0
        del P, d_mc, tex
    if mc2.k["resect"]:  # MC2's arthroplasty spacer (silicone)
        sl = sc.box(*mc2.box(w0))
        P = sc.hand_coords(sl)
        d = mc2.sdf_implant(P)
        blend(D, sl, np.clip(0.5 - d / h, 0, 1) * (mc2.sdf_mc(P) > 0), 220.0)
        del P, d
    if sp["sesamoids"]:  # radial sesamoid of MCP2, ulnar of MCP5, palmar of the heads
        for f, sg in ((fingers[0], -1), (fingers[-1], 1)):
            c = f.hc + np.array([sg * 0.45 * f.head[0], -f.head[1] - sp["sesamoid_off"], 0.3 * f.head[2]])
            sl = sc.box(c - 4, c + 4)
            P = sc.hand_coords(sl)
            d = sd_ellipsoid(P, c, (1.7, 1.4, 2.3))
            o = np.clip(0.5 - d / h, 0, 1)
            oi = np.clip(0.5 - (d + 0.3) / h, 0, 1)
            blend(D, sl, o, ((cort_dens * (o - oi) + 250.0 * oi) / np.maximum(o, 1e-6)).astype(np.float32))
    if sp["thumb"]:  # the thumb's proximal phalanx / MC1 head crossing obliquely, palmar-radial
        off = np.array([*sp["thumb_shift"], 0.0])
        k0 = np.array([-9.0, -13.0, w0 - 15.0]) + off
        k1 = np.array([-19.0, -17.0, w0 + sp["length"] + 10]) + off
        sl = sc.box(np.minimum(k0, k1) - 6, np.maximum(k0, k1) + 6)
        P = sc.hand_coords(sl)
        d = sd_chain(P, [k0, (k0 + k1) / 2, k1], [(5.0, 4.4), (6.4, 5.6), (4.6, 4.0)])
        o = np.clip(0.5 - d / h, 0, 1)
        oi = np.clip(0.5 - (d + 0.9) / h, 0, 1)
        blend(D, sl, o, ((cort_dens * (o - oi) + 190.0 * oi) / np.maximum(o, 1e-6)).astype(np.float32))
        truth[sl] &= ~(d < 0)
    truth = ndimage.binary_fill_holes(truth)

    # ---- scanner: attenuation, beam hardening (cupping), PSF, ramp-coloured noise; chunks of slices
    mu = (D - cal.intercept) / cal.slope
    del D
    mu *= (1.0 - sp["bh"] * thick)[None]
    if sp["psf"] > 0:
        mu = ndimage.gaussian_filter(mu, sp["psf"] / vox)
    amp = (0.8 + 0.45 * thick)[None] * (sp["noise"] / cal.slope)
    fy = np.fft.fftfreq(shape[1])[:, None]
    fx = np.fft.rfftfreq(shape[2])[None, :]
    fr = np.sqrt(fx * fx + fy * fy)
    filt = (np.sqrt(fr) * np.exp(-((fr / 0.35) ** 2))).astype(np.float32)
    prev = None
    for z0 in range(0, shape[0], 32):
        z1 = min(shape[0], z0 + 32)
        w = rng.standard_normal((z1 - z0, shape[1], shape[2])).astype(np.float32)
        w = np.fft.irfft2(np.fft.rfft2(w) * filt, s=shape[1:]).astype(np.float32)
        w /= max(float(w.std()), 1e-6)
        for i in range(z1 - z0):  # AR(1) along z: mild correlation between neighbouring slices
            last = w[i - 1] if i else prev
            if last is not None:
                w[i] = 0.954 * w[i] + 0.3 * last
        prev = w[-1].copy()
        mu[z0:z1] += w * amp
    stored = np.clip(np.rint(mu * cal.mu_scaling), -32768, 32767).astype(np.int16)
    del mu

    # ---- files
    outdir.mkdir(parents=True, exist_ok=True)
    rows = log_rows("fourth_phantoms (an independent generator)", "gen4 0.1", "06-DEC-2026", shape[::-1], cal)
    write_case(outdir, name, stored, truth, rows, sp["version"], (vox, vox, vox))
    dens = to_density(stored[truth], cal).astype(np.float64) if truth.any() else np.full(1, np.nan)
    zs = np.nonzero(truth.any(axis=(1, 2)))[0]
    tj = dict(
        name=name,
        d100_mg_ha_cm3=float(dens.mean()),
        bone_volume_mm3=float(truth.sum() * vox**3),
        slices=[int(zs.min()), int(zs.max())] if zs.size else None,
        shape_zyx=list(stored.shape),
        voxel_mm=[vox, vox, vox],
        side=sp["side"],
        bones=list(sp["bones"]) + (["thumb"] if sp["thumb"] else []) + (["sesamoids"] if sp["sesamoids"] else []),
        calibration=list(sp["cal"]),
        features=features(name),
        traits=dict(traits, stack_shifts_mm=np.round(sc.stack_shifts, 3).tolist(), pits=len(mc2.pits)),
        mc2_touches_edge=bool(truth[:, 0].any() or truth[:, -1].any() or truth[:, :, 0].any() or truth[:, :, -1].any()),
        mc2_in_first_slice=bool(truth[0].any()),
        mc2_in_last_slice=bool(truth[-1].any()),
    )
    (outdir / f"{name}.truth.json").write_text(json.dumps(tj, indent=2))
    return tj


# --------------------------------------------------------------------------------------------------- score


def score(cases: Path, runs: Path) -> list[dict]:
    """Each case against ``vbmd-rt run``'s result in ``runs``: Dice, D100 error (tool minus truth), whether the
    right bone was picked (Dice >= 0.2), QC verdict and reasons, identity (choice, margin), and where the mask
    differs from the truth: mm3 outside the truth (excess) and of the truth missed, and its first/last slices
    against the truth's (a distal end that stops short or runs into the joint)."""
    from vbmd_rt.runtime import measure
    from vbmd_rt.runtime.io.aim import read_aim
    from vbmd_rt.runtime.io.masks import read_mask_file

    rows = []
    for tj in sorted(cases.glob("*.truth.json")):
        t = json.loads(tj.read_text())
        name = t["name"]
        res, seg = runs / f"{name}.json", runs / f"{name}_SEG.AIM"
        row = {"case": name, "features": t["features"], "true_d100": round(t["d100_mg_ha_cm3"], 1)}
        if not (res.exists() and seg.exists()):
            err = runs / f"{name}.error.json"
            row.update(missing=True, error=json.loads(err.read_text()) if err.exists() else None)
            rows.append(row)
            continue
        scan = read_aim(cases / f"{name}.AIM")
        truth = np.asarray(read_aim(cases / f"{name}_GT.AIM").data) != 0
        mask = read_mask_file(seg, scan.header).astype(bool)
        v3 = float(np.prod(scan.header.element_size_mm))
        j = json.loads(res.read_text())
        d100 = j.get("d100_mg_ha_cm3")
        ident = j.get("identity") or {}
        zt = np.nonzero(truth.any(axis=(1, 2)))[0]
        zm = np.nonzero(mask.any(axis=(1, 2)))[0]
        row.update(
            missing=False,
            dice=round(measure.dice(mask, truth), 4),
            d100=None if d100 is None else round(d100, 1),
            d100_error=None if d100 is None else round(d100 - t["d100_mg_ha_cm3"], 2),
            right_bone=bool(measure.dice(mask, truth) >= 0.2),
            qc=j["qc"]["status"],
            reasons=j["qc"]["reasons"],
            identity_margin=ident.get("margin"),
            side=j.get("side"),
            true_side=t["side"],
            excess_mm3=round(float((mask & ~truth).sum()) * v3, 1),
            missed_mm3=round(float((truth & ~mask).sum()) * v3, 1),
            slices_truth=[int(zt.min()), int(zt.max())] if zt.size else None,
            slices_mask=[int(zm.min()), int(zm.max())] if zm.size else None,
        )
        rows.append(row)
    return rows


def report(rows: list[dict]) -> None:
    for r in rows:
        if r["missing"]:
            print(f"{r['case']} no result {r.get('error') or ''}")
            continue
        e = "-" if r["d100_error"] is None else f"{r['d100_error']:+.1f}"
        print(
            f"{r['case']:28s} Dice {r['dice']:.3f} D100 {r['d100']} err {e} margin {r['identity_margin']} "
            f"QC {r['qc']} excess {r['excess_mm3']} missed {r['missed_mm3']} z {r['slices_mask']} vs "
            f"{r['slices_truth']} | {'; '.join(r['reasons'])[:160]}"
        )
    done = [r for r in rows if not r["missing"]]
    if done:
        bad = [r["case"] for r in done if r["qc"] == "pass" and (r["dice"] < 0.9 or abs(r["d100_error"] or 0) > 5)]
        print(
            f"{len(rows)} cases, {len(rows) - len(done)} without a result; Dice mean "
            f"{np.mean([r['dice'] for r in done]):.3f}; wrong bone {sum(not r['right_bone'] for r in done)}; "
            f"bad results passing QC: {bad}"
        )


def main(argv: list[str] | None = None) -> None:
    a = command_line(argv, __doc__, "case names (default: every F4_* case)")
    if a.cmd == "score":
        rows = score(a.out, a.runs)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1) + "\n")
        report(rows)
        return
    make_command(a, CASES, make_case, "fourth_phantoms", "D4_")


if __name__ == "__main__":
    main()
