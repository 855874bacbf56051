"""An independent MCP hand phantom generator, to measure how vbmd-rt generalises (does not use vbmd_rt.synth).

    python -m vbmd_rt.bench.independent_phantoms make OUT [CASE ...]     # the 24 cases (CASES), or some
    vbmd-rt run OUT/ALIEN_00.AIM -o RUNS [--model classical] ...           # the tool, as a user runs it
    python -m vbmd_rt.bench.independent_phantoms score OUT RUNS            # Dice, D100 error, QC per case

Written from scratch by a reviewer who read the project's generator only to make this one different, as
the phantoms of issue 19 came from generators that are not the project's. Each case is hand-designed
(``CASES``): head shapes, textures, layouts, rotations, mirrored and reversed stacks, crops, scanners.

Conventions (deliberately not the project's):
* bones are implicit solids evaluated in 3D in mm: a superellipse cross-section modulated by a 3-lobe
  (rounded-triangle) term and an optional D-cut, a head that widens over a cosine neck and ends in one of
  three end profiles (spherical cap, squared superellipse cap, bulbous cap) with an optional oblique tip
  (asymmetric head) and an eccentric head centre;
* cortex = voxels within c(d) mm of the outside by a 3D Euclidean distance transform (end plate included);
* trabecular textures of my own: Voronoi plates (KD-tree 1st/2nd neighbour gap), warped gyroid sheets,
  thresholded sums of random plane waves;
* phalanx base = a cup: everything of the phalanx's solid that is more than `gap` mm from the head's
  envelope and no more than `cup` mm proximal of the tip;
* soft tissue: skin, fat, interosseous muscle, extensor and flexor tendons, optional thenar lobe with the
  thumb's metacarpal (a tube tilted 25-45 deg), optional finger clefts distally, optional plastic cast,
  optional sesamoids;
* scanner: density -> linear attenuation, anisotropic Gaussian PSF, cupping (thickness-weighted),
  correlated noise, stored as int16 round(mu * Mu_Scaling);
* orientation: hands built physically (right hand: radial -x, palmar -y, slice 0 proximal, as the
  tool's model space), then rotated in-plane (incl. palm-up 180 deg / 90 deg), mirrored for left hands,
  optionally reversed in z.

Truth: MC2's filled periosteal envelope on the voxel grid; D100 = mean calibrated density of the stored
values inside it (project Calibration equation).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from vbmd_rt.runtime.io import proclog
from vbmd_rt.runtime.io.aim import AimHeader, write_aim
from vbmd_rt.runtime.io.calibration import Calibration, to_density
from vbmd_rt.runtime.io.masks import MASK_VALUES

# ----------------------------------------------------------------------------- geometry


def centres_mm(vox: float, *ranges: tuple[int, int], sparse: bool = False) -> list[np.ndarray]:
    """The voxel centres in mm along each axis's index ``range`` (start, stop), as ``np.meshgrid`` (ij)."""
    return np.meshgrid(*((np.arange(a, b) + 0.5) * vox for a, b in ranges), indexing="ij", sparse=sparse)


def xs_radius(theta, a, b, n, tri, tri_ph, lob1, lob1_ph):
    """Cross-section radius at polar angle theta: superellipse(a, b, n) * (1 + tri cos3 + lob1 cos1)."""
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    r = (np.power(c / a, n) + np.power(s / b, n)) ** (-1.0 / n)
    return r * (1.0 + tri * np.cos(3 * theta + tri_ph) + lob1 * np.cos(theta + lob1_ph))


def end_profile(q, kind):
    """Radius fraction (0..1) at q = d/L in [0, 1] of the head's end cap."""
    q = np.clip(q, 0.0, 1.0)
    if kind == "sphere":
        return np.sqrt(np.clip(1 - (1 - q) ** 2, 0, 1))
    if kind == "square":
        return np.clip(1 - (1 - q) ** 4.0, 0, 1) ** 0.25
    if kind == "bulb":  # widest a little proximal of the cap's base
        return np.sqrt(np.clip(1 - (1 - q) ** 2, 0, 1)) * (1 + 0.10 * np.sin(np.pi * np.clip(q * 1.3, 0, 1)))
    raise ValueError(kind)


def mc_fields(b, X, Y, Z):
    """Envelope (bool) and the axial distance d from the tip (mm) of metacarpal b at points X, Y, Z (mm)."""
    cx = b["x"] + b["tx"] * (Z - b["tip"])
    cy = b["y"] + b["ty"] * (Z - b["tip"])
    d_ax = b["tip"] - Z
    L, N = b["cap"], b["neck"]
    w = np.where(d_ax < L, 1.0, np.where(d_ax < L + N, 0.5 + 0.5 * np.cos(np.pi * np.clip((d_ax - L) / N, 0, 1)), 0.0))
    ca, sa = math.cos(b["ang"]), math.sin(b["ang"])
    # eccentric head: the head's centre shifts along the local v axis
    ecx, ecy = -sa * b["ecc"], ca * b["ecc"]
    dx = X - cx - w * ecx
    dy = Y - cy - w * ecy
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    d = d_ax - b["asym"] * u  # oblique tip: one side of the head reaches further
    a = b["shaft"][0] + (b["head"][0] - b["shaft"][0]) * w
    bb = b["shaft"][1] + (b["head"][1] - b["shaft"][1]) * w
    tri = b["tri_sh"] + (b["tri_hd"] - b["tri_sh"]) * w
    th = np.arctan2(v, u)
    R = xs_radius(th, a, bb, b["n"], tri, b["tri_ph"], b["lob1"], b["lob1_ph"])
    s = np.where(d < L, end_profile(d / L, b["end"]), 1.0)
    r = np.hypot(u, v)
    env = (d > 0) & (r < R * s)
    if b["dcut"] < 1.0:  # D-shaped: flat palmar (-v) side
        env &= v > -b["dcut"] * bb * s
    return env, d, w


def ph_fields(b, X, Y, Z):
    """The proximal phalanx solid (before the cup is carved): bool, and e = distance beyond the MC tip."""
    p = b["ph"]
    cx = b["x"] + (b["tx"] + p["tx"]) * (Z - b["tip"])
    cy = b["y"] + (b["ty"] + p["ty"]) * (Z - b["tip"])
    e = Z - b["tip"]
    ca, sa = math.cos(b["ang"] + p["dang"]), math.sin(b["ang"] + p["dang"])
    dx, dy = X - cx, Y - cy
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    taper = 0.62 + 0.38 * (0.5 + 0.5 * np.cos(np.pi * np.clip((e - 3.0) / 7.0, 0, 1)))
    R = xs_radius(np.arctan2(v, u), p["a"], p["b"], 2.3, 0.04, 0.7, 0.0, 0.0) * taper
    sol = (e > -p["cup"]) & (np.hypot(u, v) < R)
    return sol, e


# ----------------------------------------------------------------------------- textures


def texture(kind, pts_mm, rng, period):
    """Strut field in [0, 1] at points (n, 3) in mm; mean arbitrary."""
    if len(pts_mm) == 0:
        return np.zeros(0, np.float32)
    if kind == "voronoi":
        lo, hi = pts_mm.min(0) - period, pts_mm.max(0) + period
        nseed = int(np.prod(hi - lo) / period**3) + 8
        seeds = rng.uniform(lo, hi, size=(nseed, 3))
        d, _ = cKDTree(seeds).query(pts_mm, k=2, workers=1)
        gap = d[:, 1] - d[:, 0]
        return np.exp(-((gap / (0.22 * period)) ** 2)).astype(np.float32)
    if kind == "gyroid":
        Rm = np.linalg.qr(rng.standard_normal((3, 3)))[0]
        p = pts_mm @ Rm.T
        k = 2 * np.pi / period
        warp = 0.25 * period * np.sin(p[:, [1, 2, 0]] * (k * 0.37) + rng.uniform(0, 6, 3))
        q = (p + warp) * k
        g = np.sin(q[:, 0]) * np.cos(q[:, 1]) + np.sin(q[:, 1]) * np.cos(q[:, 2]) + np.sin(q[:, 2]) * np.cos(q[:, 0])
        return np.exp(-((g / 0.45) ** 2)).astype(np.float32)
    if kind == "waves":
        f = np.zeros(len(pts_mm), np.float32)
        for _ in range(14):
            kv = rng.standard_normal(3)
            kv /= np.linalg.norm(kv)
            lam = rng.uniform(0.7, 1.5) * period
            f += np.cos(pts_mm @ (kv * 2 * np.pi / lam) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        f /= math.sqrt(7.0)
        return (1 / (1 + np.exp(-(f - 0.6) / 0.25))).astype(np.float32)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- one bone into the volume


def render_bone(D, grid, b, rng, case, truth_out=None, label=None):
    """Paint metacarpal b (and its phalanx) into density volume D (z, y, x) in mg HA/cm3."""
    vox, nz, ny, nx = grid
    pad = max(b["head"]) * 1.35 + 3.0
    # bounding box over z: the bone's centre moves with tilt
    zs = np.array([0.0, nz * vox])
    cxs = b["x"] + b["tx"] * (zs - b["tip"])
    cys = b["y"] + b["ty"] * (zs - b["tip"])
    ptx = abs(b["ph"]["tx"]) * nz * vox + 1
    pty = abs(b["ph"]["ty"]) * nz * vox + 1
    x0 = max(0, int((min(cxs) - pad - ptx) / vox))
    x1 = min(nx, int((max(cxs) + pad + ptx) / vox) + 1)
    y0 = max(0, int((min(cys) - pad - pty) / vox))
    y1 = min(ny, int((max(cys) + pad + pty) / vox) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    z1 = nz
    Z, Y, X = centres_mm(vox, (0, z1), (y0, y1), (x0, x1))
    # the envelope is computed inside the field of view only: the distance transform measures to the
    # nearest outside voxel and the array's edge is none, so a bone cut by the edge has no cortex at the cut
    env, d, w = mc_fields(b, X, Y, Z)
    if not env.any():
        return None
    dist_in = ndimage.distance_transform_edt(env, sampling=vox)
    # the FOV edge and the stack's ends are not 'outside' for the EDT: no shell at a cut
    c = b["ct_hd"] + (b["ct_sh"] - b["ct_hd"]) * (1 - w)
    cort = env & (dist_in <= c)
    inner = env & ~cort
    dens = np.zeros(env.shape, np.float32)
    # trabecular region
    app = b["tb_sh"] + (b["tb_hd"] - b["tb_sh"]) * np.clip(w[inner] * 1.2, 0, 1)
    idx = np.nonzero(inner)
    pts = np.stack([X[idx], Y[idx], Z[idx]], 1)
    tex = texture(case["texture"], pts, rng, case["tb_period"])
    mt = float(tex.mean()) + 1e-6
    bv = (app - case["marrow"]) / (case["tissue"] - case["marrow"])
    frac = np.clip(tex / mt * bv, 0, 1)
    dens[idx] = case["marrow"] + (case["tissue"] - case["marrow"]) * frac
    # cortex, with a little porosity in some cases
    cd = b["ct_dens"] * np.ones(int(cort.sum()), np.float32)
    if case["porosity"] > 0:
        cd *= (rng.random(cd.shape) > case["porosity"]).astype(np.float32) * 0.75 + 0.25
    dens[cort] = cd
    sl = (slice(0, z1), slice(y0, y1), slice(x0, x1))
    Dv = D[sl]
    Dv[env] = dens[env]
    # phalanx: cup carved by the gap around the head
    sol, e = ph_fields(b, X, Y, Z)
    if sol.any():
        dist_out = ndimage.distance_transform_edt(~env, sampling=vox)
        ph = sol & (dist_out > b["ph"]["gap"]) & ~env
        if ph.any():
            pd = ndimage.distance_transform_edt(ph, sampling=vox)
            pc = ph & (pd <= b["ph"]["ct"])
            pin = ph & ~pc
            idx = np.nonzero(pin)
            pts = np.stack([X[idx], Y[idx], Z[idx]], 1)
            tex = texture(case["texture"], pts, rng, case["tb_period"])
            bvp = (b["tb_hd"] * 0.9 - case["marrow"]) / (case["tissue"] - case["marrow"])
            Dv[idx] = case["marrow"] + (case["tissue"] - case["marrow"]) * np.clip(
                tex / (tex.mean() + 1e-6) * bvp, 0, 1
            )
            Dv[pc] = b["ct_dens"] * 0.95
    if truth_out is not None:
        truth_out[sl] |= env
    return (x0, x1, y0, y1)


def render_thumb(D, grid, t, case, rng, keep=None):
    """The thumb's metacarpal: a tube along a tilted axis with a rounded distal end (its head); never over
    ``keep`` (MC2's true mask: what the truth holds stays as rendered)."""
    vox, nz, ny, nx = grid
    Z, Y, X = centres_mm(vox, (0, nz), (0, ny), (0, nx), sparse=True)
    # evaluate in a box around the axis
    zc = np.array([0, nz * vox])
    xs = t["x"] + t["dir"][0] / t["dir"][2] * (zc - t["z0"])
    ys = t["y"] + t["dir"][1] / t["dir"][2] * (zc - t["z0"])
    pad = max(t["r"]) / abs(t["dir"][2]) + 3
    x0, x1 = max(0, int((xs.min() - pad) / vox)), min(nx, int((xs.max() + pad) / vox) + 1)
    y0, y1 = max(0, int((ys.min() - pad) / vox)), min(ny, int((ys.max() + pad) / vox) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    Xs, Ys, Zs = X[:, :, x0:x1], Y[:, y0:y1, :], Z
    Xb, Yb, Zb = np.broadcast_arrays(Xs, Ys, Zs)
    p = np.stack([Xb - t["x"], Yb - t["y"], Zb - t["z0"]], -1)
    dv = np.asarray(t["dir"])
    s = p @ dv  # along the axis (distal positive)
    q = p - s[..., None] * dv
    e1 = np.cross(dv, [0, 0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(dv, e1)
    u, v = q @ e1, q @ e2
    rr = np.sqrt((u / t["r"][0]) ** 2 + (v / t["r"][1]) ** 2)
    capw = np.where(
        s > t["end"] - t["capL"], np.sqrt(np.clip(1 - ((s - t["end"] + t["capL"]) / t["capL"]) ** 2, 0, 1)), 1.0
    )
    widen = 1 + 0.3 * np.clip((s - (t["end"] - t["capL"] - 6)) / 6, 0, 1)
    env = (rr < capw * widen) & (s < t["end"])
    if not env.any():
        return None
    di = ndimage.distance_transform_edt(env, sampling=vox)
    cort = env & (di <= t["ct"])
    inner = env & ~cort
    if keep is not None:
        spare = ~keep[:, y0:y1, x0:x1]
        cort &= spare
        inner &= spare
    Dv = D[:, y0:y1, x0:x1]
    Dv[inner] = case["marrow"] + 0.15 * (t["tb"] - case["marrow"]) + rng.normal(0, 40, int(inner.sum()))
    Dv[cort] = t["ct_dens"]
    return True


# ----------------------------------------------------------------------------- soft tissue


def soft_tissue(grid, case, bones, thumb):
    """Density of soft tissue (mg HA/cm3) and a hand mask, slice by slice; air elsewhere (NaN)."""
    vox, nz, ny, nx = grid
    yy, xx = centres_mm(vox, (0, ny), (0, nx))
    H = case["hand"]
    ca, sa = math.cos(H["ang"]), math.sin(H["ang"])
    # hand frame: X radial->ulnar (right hand), Y palmar(-) -> dorsal(+)
    dx, dy = xx - H["cx"], yy - H["cy"]
    hx = dx * ca + dy * sa
    hy = -dx * sa + dy * ca
    if case["side"] == "left":
        hx = -hx
    hx = hx - H["ox"]  # outline centred on the row
    # outline: superellipse, dorsal side arched (follows the row)
    ax_, ay_ = H["w"] / 2, H["t"] / 2
    arch = H["arch"] * (hx / ax_) ** 2
    outline = (np.abs(hx / ax_) ** 3.2 + np.abs((hy + arch) / ay_) ** 2.4) ** (1 / 2.4)
    hand = outline < 1.0
    skin = hand & (outline > 1.0 - H["skin"] / ay_)
    if thumb is not None:
        # thenar lobe around the thumb, elongated along the thumb's obliquity
        tl = (thumb["lobe"][0] - H["ox"], thumb["lobe"][1], thumb["lobe"][2], thumb["lobe"][3])
        lob = ((hx - tl[0]) / tl[2]) ** 2 + ((hy - tl[1]) / tl[3]) ** 2
        hand2 = hand | (lob < 1)
        skin = (skin & ~(lob < 0.8)) | ((lob < 1) & (lob > (1 - 2 * H["skin"] / tl[3])) & ~hand)
        hand = hand2
    D = np.full((nz, ny, nx), np.nan, np.float32)
    base = np.where(hand, case["fat"], np.nan).astype(np.float32)
    base[skin] = case["skin"]
    if case.get("cast"):
        cast = (outline > 1.08) & (outline < 1.08 + 2.0 / ay_) & (hy < ay_ * 0.2)
        base[cast] = case["cast"]
    mc2 = bones[0]
    for k in range(nz):
        z = (k + 0.5) * vox
        sl = base.copy()
        for b in bones:
            bx = b["x"] + b["tx"] * (z - b["tip"])
            by = b["y"] + b["ty"] * (z - b["tip"])
            ddx, ddy = xx - bx, yy - by
            # tendons in the hand frame directions
            bu = ddx * ca + ddy * sa
            bvv = -ddx * sa + ddy * ca
            if case["side"] == "left":
                bu = -bu
            dors = max(b["head"][1], b["shaft"][1]) + 1.8
            ext = ((bu / 2.6) ** 2 + ((bvv - dors) / 1.1) ** 2) < 1
            flex = ((bu / 3.4) ** 2 + ((bvv + dors + 2.2) / 2.4) ** 2) < 1
            sl[ext & np.isfinite(sl)] = case["tendon"]
            sl[flex & np.isfinite(sl)] = case["tendon"] * 0.9
            # interosseous muscle around the shafts, proximal of the heads
            if z < b["tip"] - b["cap"] - 3:
                musc = ((bu / (b["shaft"][0] + 5.5)) ** 2 + (bvv / (b["shaft"][1] + 2.5)) ** 2) < 1
                sl[musc & np.isfinite(sl) & (sl == case["fat"])] = case["muscle"]
        # finger clefts: beyond split level the web opens between the fingers
        if case.get("clefts") and z > mc2["tip"] + case["clefts"]:
            fing = np.zeros_like(hand)
            for b in bones:
                bx = b["x"] + (b["tx"] + b["ph"]["tx"]) * (z - b["tip"])
                by = b["y"] + (b["ty"] + b["ph"]["ty"]) * (z - b["tip"])
                fing |= np.hypot(xx - bx, (yy - by) * 1.2) < max(b["ph"]["a"], b["ph"]["b"]) + 4.0
            if thumb is not None:
                fing |= np.isfinite(sl) & (
                    np.hypot(hx - thumb["lobe"][0] + H["ox"], hy - thumb["lobe"][1]) < thumb["lobe"][2]
                )
            sl[~fing & hand] = np.nan
        D[k] = sl
    return D, hand


# ----------------------------------------------------------------------------- a case


def draw_case(i, traits):
    rng = np.random.default_rng([i, 0xA11E])
    T = dict(traits)
    vox = T.get("vox", float(rng.uniform(0.18, 0.25)))
    nslices = T.get("slices", int(rng.integers(100, 181)))
    L = nslices * vox
    side = T.get("side", "right")
    nmc = T.get("n_mc", 4)
    scale = T.get("scale", rng.uniform(0.9, 1.1))
    _ = rng.uniform(16.5, 19.5) * scale  # drawn and unused: the cases stay those first measured
    rel = {"MC2": 1.0, "MC3": rng.uniform(0.95, 1.05), "MC4": rng.uniform(0.82, 0.9), "MC5": rng.uniform(0.74, 0.84)}
    if T.get("mc3_big"):
        rel["MC2"], rel["MC3"] = rng.uniform(0.86, 0.92), rng.uniform(1.12, 1.22)
    tipz = {"MC2": 0.0, "MC3": rng.uniform(1.0, 2.5), "MC4": rng.uniform(-2.0, -0.5), "MC5": rng.uniform(-5.0, -2.5)}
    joint = L * T.get("joint_frac", rng.uniform(0.6, 0.72))
    names = ["MC2", "MC3", "MC4", "MC5"][:nmc]
    hand_t = rng.uniform(24, 30) * scale * T.get("thick", 1.0)
    arch = rng.uniform(3, 6)
    # bones in the hand frame (right hand: X radial(-) -> ulnar(+), Y palmar(-) -> dorsal(+))
    hb = []
    sizes = {nm: scale * rel[nm] * rng.uniform(0.96, 1.04) for nm in names}
    heads = {nm: (rng.uniform(7.6, 8.6) * sizes[nm], rng.uniform(6.9, 7.9) * sizes[nm]) for nm in names}
    Xs, xcur = [], 0.0
    for j, nm in enumerate(names):
        if j:
            xcur += (heads[names[j - 1]][0] + heads[nm][0]) * (1.12 + T.get("tri", 0)) + rng.uniform(1.5, 3.5)
        Xs.append(xcur)
    Xs = [x - np.mean(Xs) for x in Xs]
    hand_w = (max(Xs) - min(Xs)) + 2 * 8.5 * scale + 2 * rng.uniform(6, 9)
    for j, nm in enumerate(names):
        X = Xs[j]
        Yd = arch * (1 - (X / (hand_w / 2)) ** 2) - 1.0 + rng.uniform(-1, 1)
        s = sizes[nm]
        head = heads[nm]
        shaft = (rng.uniform(4.3, 5.2) * s, rng.uniform(3.8, 4.6) * s)
        cap = (
            head[0] * rng.uniform(0.7, 0.95) if T.get("end", "sphere") != "square" else head[0] * rng.uniform(0.45, 0.6)
        )
        hb.append(
            dict(
                name=nm,
                hX=X,
                hY=Yd,
                tip=joint + tipz[nm],
                head=head,
                shaft=shaft,
                cap=cap,
                neck=rng.uniform(6.0, 9.0),
                end=T.get("end", "sphere"),
                asym=T.get("asym", 0.0) * rng.uniform(0.7, 1.3) * (1 if rng.random() < 0.5 else -1),
                ecc=rng.uniform(-1.0, 1.0) if T.get("asym") else rng.uniform(-0.4, 0.4),
                n=T.get("n", rng.uniform(2.0, 2.5)),
                tri_sh=T.get("tri", 0.0),
                tri_hd=T.get("tri", 0.0) * 0.6,
                tri_ph=rng.uniform(0, 2 * np.pi),
                lob1=rng.uniform(0, 0.05),
                lob1_ph=rng.uniform(0, 2 * np.pi),
                dcut=T.get("dcut", 1.0),
                ct_sh=T.get("ct_sh", rng.uniform(0.9, 1.4)),
                ct_hd=T.get("ct_hd", rng.uniform(0.5, 0.7)),
                ct_dens=T.get("ct_dens", rng.uniform(850, 1100)),
                tb_hd=T.get("tb_hd", rng.uniform(190, 320)),
                tb_sh=rng.uniform(40, 90),
                hang=rng.normal(0, 10),  # cross-section rotation in the hand frame, degrees
                tilt=(rng.normal(0, 0.03) + T.get("tilt", (0, 0))[0], rng.normal(0, 0.03) + T.get("tilt", (0, 0))[1]),
                ph=dict(
                    gap=T.get("gap", rng.uniform(1.0, 1.5)),
                    cup=T.get("cup", rng.uniform(1.6, 2.8)),
                    a=head[0] * rng.uniform(0.92, 1.02),
                    b=head[1] * rng.uniform(0.85, 0.98),
                    ct=rng.uniform(0.45, 0.7),
                    dtilt=(rng.normal(0, 0.05), rng.normal(0, 0.05)),
                    dang=math.radians(rng.normal(0, 8)),
                ),
            )
        )
    # placement: hand frame -> image (mm); mirror for left; rotate by hand angle
    fov_xy = T.get("nxy", None)
    if fov_xy is None:
        span = T["crop"] if T.get("crop") else hand_w + 10 + (25 if T.get("thumb") else 0)
        fov_xy = int(math.ceil(span / vox / 8) * 8)
    nxy = fov_xy
    fov = nxy * vox
    hang = math.radians(T.get("rot", rng.uniform(-25, 25)))
    ca, sa = math.cos(hang), math.sin(hang)
    mir = -1.0 if side == "left" else 1.0
    shift = T.get("shift", (0.0, 0.0))
    # centre the row (or the hand when a thumb is there) in the FOV, plus a shift (mm, in image x/y)
    rowX = float(np.mean([b["hX"] for b in hb]))
    if T.get("crop"):
        cXh = 0.5 * (hb[0]["hX"] + hb[1]["hX"]) - T.get("crop_radial", 0.0)
    else:
        cXh = rowX - (7 if T.get("thumb") else 0)
    cYh = np.mean([b["hY"] for b in hb]) - 2
    Hc = (fov / 2 + shift[0], fov / 2 + shift[1])

    def to_img(Xh, Yh):
        xm = mir * (Xh - cXh)
        ym = Yh - cYh
        return Hc[0] + xm * ca - ym * sa, Hc[1] + xm * sa + ym * ca

    def dir_img(tXh, tYh):
        xm = mir * tXh
        return xm * ca - tYh * sa, xm * sa + tYh * ca

    bones = []
    for b in hb:
        x, y = to_img(b["hX"], b["hY"])
        tx, ty = dir_img(*b["tilt"])
        ptx, pty = dir_img(*b["ph"]["dtilt"])
        # the cross-section's own angle: hand angle + its own, mirrored for the left hand
        ang = hang + mir * math.radians(b["hang"])
        bb = dict(b, x=x, y=y, tx=tx, ty=ty, ang=ang)
        # mirroring flips the local v axis's handedness: keep palmar at -v in the hand frame
        bb["ph"] = dict(b["ph"], tx=ptx, ty=pty)
        bones.append(bb)
    thumb = None
    if T.get("thumb"):
        # radial and palmar of MC2, tilted 25-45 deg (tip distal, pointing radially-palmar)
        X1 = hb[0]["hX"] - rng.uniform(17, 22) * scale
        Y1 = hb[0]["hY"] - rng.uniform(11, 15) * scale
        x, y = to_img(X1, Y1)
        al = math.radians(rng.uniform(20, 35))
        be_h = (-rng.uniform(0.4, 0.9), -rng.uniform(0.3, 0.8))  # radial, palmar in the hand frame
        dxi, dyi = dir_img(*be_h)
        nrm = math.hypot(dxi, dyi)
        dvec = np.array([math.sin(al) * dxi / nrm, math.sin(al) * dyi / nrm, math.cos(al)])
        thumb = dict(
            x=x,
            y=y,
            z0=joint - rng.uniform(10, 14),
            dir=dvec,
            r=(rng.uniform(4.5, 5.5) * scale, rng.uniform(4.0, 5.0) * scale),
            end=rng.uniform(6, 14),
            capL=rng.uniform(4, 6),
            ct=rng.uniform(0.9, 1.3),
            ct_dens=rng.uniform(850, 1050),
            tb=150,
            lobe=(X1 - cXh - 2, Y1 - cYh - 2, rng.uniform(13, 16), rng.uniform(11, 14)),
        )
    hand = dict(cx=Hc[0], cy=Hc[1], ox=rowX - cXh, ang=hang, w=hand_w, t=hand_t, arch=arch, skin=rng.uniform(1.2, 2.0))
    # the soft tissue frame uses the hand centre in the hand frame's origin at (cXh, cYh)
    case = dict(
        index=i,
        name=f"ALIEN_{i:02d}",
        traits=T,
        vox=vox,
        nxy=nxy,
        nz=nslices,
        side=side,
        texture=T.get("texture", str(rng.choice(["voronoi", "gyroid", "waves"]))),
        tb_period=rng.uniform(0.8, 1.3),
        marrow=rng.uniform(-40, 30),
        tissue=rng.uniform(900, 1050),
        porosity=T.get("porosity", 0.0),
        fat=rng.uniform(-110, -70),
        skin=rng.uniform(40, 80),
        muscle=rng.uniform(30, 60),
        tendon=T.get("tendon", rng.uniform(90, 140)),
        cast=T.get("cast", 0.0),
        clefts=T.get("clefts", 0.0),
        hand=hand,
        sesamoid=T.get("sesamoid", False),
        psf=(T.get("psf", rng.uniform(1.0, 1.5)), rng.uniform(0.7, 1.2)),
        noise=T.get("noise", rng.uniform(35, 80)),
        cupping=T.get("cupping", rng.uniform(0.0, 0.05)),
        reverse_z=T.get("reverse_z", False),
        log_side=T.get("log_side", False),
        cal=T.get(
            "cal",
            (8192.0, float(rng.uniform(1380, 1500)), float(rng.uniform(-380, -330)), float(rng.uniform(0.236, 0.252))),
        ),
        version=T.get("version", 2),
        position=T.get("position", (0, 0, 0)),
    )
    return case, bones, thumb, rng


def build(i, traits, out: Path):
    t0 = time.time()
    case, bones, thumb, rng = draw_case(i, traits)
    vox, nz, n = case["vox"], case["nz"], case["nxy"]
    grid = (vox, nz, n, n)
    D, hand = soft_tissue(grid, case, bones, thumb)
    truth = np.zeros((nz, n, n), bool)
    for j in range(len(bones) - 1, -1, -1):  # MC2 last: nothing overwrites it
        render_bone(D, grid, bones[j], rng, case, truth_out=truth if j == 0 else None)
    if thumb is not None:
        render_thumb(D, grid, thumb, case, rng, keep=truth)
    if case["sesamoid"]:  # two small dense ellipsoids palmar of MC2's head
        b = bones[0]
        zz, yy, xx = centres_mm(vox, (0, nz), (0, n), (0, n), sparse=True)
        for sgn in (-1, 1):
            ca, sa = math.cos(b["ang"]), math.sin(b["ang"])
            off_u, off_v = sgn * 3.2, -(b["head"][1] + 2.6)
            sx = b["x"] + off_u * ca - off_v * sa
            sy = b["y"] + off_u * sa + off_v * ca
            sz = b["tip"] - b["cap"] * 0.6
            m = ((xx - sx) / 2.2) ** 2 + ((yy - sy) / 1.8) ** 2 + ((zz - sz) / 3.0) ** 2 < 1
            D[m & ~truth] = 700.0
    air = np.isnan(D)
    cal = Calibration(*case["cal"])
    D[air] = cal.intercept  # mu = 0
    mu = (D - cal.intercept) / cal.slope  # 1/cm
    del D
    # cupping: attenuation lowered in thick parts of the hand (beam hardening)
    if case["cupping"] > 0:
        thick = ndimage.gaussian_filter((~air).astype(np.float32).mean(0), 40 / 2.355 / vox * 2)
        thick /= max(float(thick.max()), 1e-6)
        mu *= (1 - case["cupping"] * thick)[None]
    mu = ndimage.gaussian_filter(mu, (case["psf"][1], case["psf"][0], case["psf"][0]), truncate=3.0)
    nrm = rng.standard_normal(mu.shape).astype(np.float32)
    nrm = ndimage.gaussian_filter(nrm, (0.4, 0.7, 0.7))
    nrm *= 1.0 / nrm.std()
    mu += nrm * (case["noise"] / cal.slope)
    del nrm
    stored = np.rint(mu * cal.mu_scaling)
    del mu
    stored = np.clip(stored, -32768, 32767).astype(np.int16)
    if case["reverse_z"]:
        stored = stored[::-1].copy()
        truth = truth[::-1].copy()
    # --- files
    out.mkdir(parents=True, exist_ok=True)
    rows = log_rows("alien_gen phantom (independent generator)", "alien_gen 0.1", "01-JAN-2024", (n, n, nz), cal)
    if case["log_side"]:
        rows.append(proclog.field_line("Measured hand", case["side"]))
    name = case["name"]
    write_case(out, name, stored, truth, rows, case["version"], (vox,) * 3, case["position"])
    dens = to_density(stored[truth], cal)
    per = truth.reshape(nz, -1).sum(1)
    zs = np.nonzero(per)[0]
    tj = {
        "name": name,
        "d100_mg_ha_cm3": float(dens.astype(np.float64).mean()),
        "bone_volume_mm3": float(truth.sum() * vox**3),
        "slices": [int(zs.min()), int(zs.max())],
        "mean_slice_area_mm2": float(per[per > 0].mean() * vox * vox),
        "side": case["side"],
        "voxel_mm": vox,
        "shape_zyx": list(stored.shape),
        "traits": {k: (list(v) if isinstance(v, tuple) else v) for k, v in traits.items()},
        "texture": case["texture"],
        "n_bones": len(bones),
        "thumb": thumb is not None,
        "calibration": list(case["cal"]),
        "noise": case["noise"],
        "psf": list(case["psf"]),
        "cupping": case["cupping"],
        "mc2_touches_edge": bool(
            truth[:, 0, :].any() or truth[:, -1, :].any() or truth[:, :, 0].any() or truth[:, :, -1].any()
        ),
    }
    (out / f"{name}.truth.json").write_text(json.dumps(tj, indent=2))  # no clock in it: the same bytes each time
    return {**tj, "gen_s": round(time.time() - t0, 1)}


CASES = {
    0: dict(side="right", end="sphere", texture="voronoi"),
    1: dict(side="left", end="square", texture="gyroid"),
    2: dict(side="right", n_mc=3, asym=0.35, texture="waves"),
    3: dict(side="left", texture="voronoi", crop=52.0),
    4: dict(side="right", thumb=True),
    5: dict(side="left", thumb=True, n_mc=3),
    6: dict(side="right", mc3_big=True),
    7: dict(side="left", mc3_big=True, thumb=True),
    8: dict(side="right", dcut=0.6),
    9: dict(side="left", tri=0.12, dcut=0.75),
    10: dict(side="right", tilt=(0.09, 0.06)),
    11: dict(side="left", tilt=(-0.08, 0.07), asym=0.3, end="bulb"),
    12: dict(side="right", shift=(-14.0, 0.0), rot=0.0, edge="mc2"),
    13: dict(side="left", shift=(-16.0, 3.0), rot=5.0, edge="mc5"),
    14: dict(side="right", tendon=220.0, thick=1.25, cast=-30.0, sesamoid=True, clefts=4.0),
    15: dict(side="right", rot=90.0),
    16: dict(side="right", reverse_z=True),
    17: dict(side="left", reverse_z=True, thumb=True),
    18: dict(side="right", vox=0.18, slices=200, rot=180.0),
    19: dict(side="left", vox=0.25, slices=80, log_side=True),
    20: dict(side="right", ct_sh=0.5, ct_hd=0.5, tb_hd=140.0, ct_dens=760.0, porosity=0.08),
    21: dict(side="left", ct_sh=1.5, ct_hd=0.7, noise=110.0, cupping=0.08, psf=1.5, version=3, position=(300, 280, 40)),
    22: dict(side="right", gap=1.0, cup=3.2, end="square", sesamoid=True, log_side=True),
    23: dict(side="left", thumb=True, crop=56.0, crop_radial=6.0),
}


def finalize_traits():
    out = {}
    for i, t in CASES.items():
        t = dict(t)
        t.pop("edge", None)
        out[i] = t
    return out


def log_rows(title: str, creator: str, date: str, dims, cal) -> list[str]:
    """A Scanco-style processing log's header and calibration lines for a phantom (no closing separator)."""
    ln = proclog.field_line
    return [
        "!",
        f"! {title}",
        "!",
        proclog.SEPARATOR,
        ln("Created by", creator),
        ln("Original Creation-Date", f"{date} 12:00:00.00"),
        ln("Orig-ISQ-Dim-p", " ".join(str(d) for d in dims)),
        ln("Mu_Scaling", int(cal.mu_scaling)),
        ln("Density: unit", "mg HA/ccm"),
        ln("Density: slope", f"{cal.slope:.5f}"),
        ln("Density: intercept", f"{cal.intercept:.5f}"),
        ln("HU: mu water", f"{cal.mu_water:.5f}"),
    ]


def write_case(out: Path, name: str, stored, truth, rows: list[str], version, element_size_mm, position=None) -> None:
    """A phantom's scan (``NAME.AIM``, int16) and its truth (``NAME_GT.AIM``, char 0/127), both with the
    processing log ``rows`` (closed here by its separator)."""
    hdr = AimHeader(
        version=version,
        type_code=0x00020002,
        dim=(1, 1, 1),
        element_size_mm=tuple(element_size_mm),
        **({"position": tuple(position)} if position is not None else {}),
        processing_log="\n".join([*rows, proclog.SEPARATOR]) + "\n",
    )
    out.mkdir(parents=True, exist_ok=True)
    write_aim(out / f"{name}.AIM", stored, hdr, type="int16")
    write_aim(out / f"{name}_GT.AIM", truth.view(np.int8) * np.int8(127), hdr, type="char", values=MASK_VALUES)


def score(cases: Path, runs: Path, pattern: str = "ALIEN_*.truth.json") -> list[dict]:
    """Each case of ``cases`` against its result in ``runs`` (``vbmd-rt run``'s NAME.json and NAME_SEG.AIM):
    Dice against the truth, D100 error (tool minus truth), wrong bone (Dice < 0.3), QC verdict and reasons. A
    case without a result (refused, failed, not run) is a row with ``missing`` True and no numbers. ``pattern``:
    the truth files (``bench/third_phantoms.py`` scores its own with this)."""
    from vbmd_rt.runtime import measure
    from vbmd_rt.runtime.io.aim import read_aim
    from vbmd_rt.runtime.io.masks import read_mask_file

    rows = []
    for tj in sorted(cases.glob(pattern)):
        t = json.loads(tj.read_text())
        res, seg = runs / f"{t['name']}.json", runs / f"{t['name']}_SEG.AIM"
        if not (res.exists() and seg.exists()):
            rows.append({"case": t["name"], "traits": t["traits"], "missing": True})
            continue
        scan = read_aim(cases / f"{t['name']}.AIM")
        truth = np.asarray(read_aim(cases / f"{t['name']}_GT.AIM").data) != 0
        mask = read_mask_file(seg, scan.header).astype(bool)
        dice = measure.dice(mask, truth)
        j = json.loads(res.read_text())
        d100 = j.get("d100_mg_ha_cm3")
        rows.append(
            {
                "case": t["name"],
                "traits": t["traits"],
                "missing": False,
                "dice": round(dice, 4),
                "d100_error": None if d100 is None else round(d100 - t["d100_mg_ha_cm3"], 2),
                "wrong_bone": dice < 0.3,
                "qc": j["qc"]["status"],
                "reasons": j["qc"]["reasons"],
                "side": j.get("side"),
                "true_side": t.get("side"),
            }
        )
    return rows


def command_line(argv: list[str] | None, doc: str, cases_help: str, case_type=str):
    """The independent generators' command line (this one's and ``third_phantoms``'): ``make OUT [CASE ...]``
    and ``score OUT RUNS [-o JSON]``; the parsed arguments."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write the cases (NAME.AIM, NAME_GT.AIM, NAME.truth.json) into OUT")
    mk.add_argument("out", type=Path)
    mk.add_argument("cases", type=case_type, nargs="*", help=cases_help)
    sc = sub.add_parser("score", help="compare vbmd-rt's results in RUNS with the truth in OUT")
    sc.add_argument("out", type=Path)
    sc.add_argument("runs", type=Path)
    sc.add_argument("-o", "--json", type=Path, default=None, help="write the rows here")
    return ap.parse_args(argv)


def make_command(a, cases: dict, make_case, tool: str, diagnosis: str) -> None:
    """``make OUT [CASE ...]`` of ``third_phantoms`` and ``fourth_phantoms``: the cases named, or every case of
    ``cases`` but the diagnosis variants (names starting with ``diagnosis``), each with a line of its truth."""
    a.out.mkdir(parents=True, exist_ok=True)
    for n in a.cases or [c for c in cases if not c.startswith(diagnosis)]:
        if n not in cases:
            sys.exit(f"{tool}: no case {n!r} (the cases: {', '.join(cases)})")
        t0 = time.time()
        tj = make_case(n, a.out)
        print(
            f"{n}: D100 {tj['d100_mg_ha_cm3']:.1f} vol {tj['bone_volume_mm3']:.0f} mm3 shape {tj['shape_zyx']} "
            f"slices {tj['slices']} edge {tj['mc2_touches_edge']} ({time.time() - t0:.1f}s)",
            flush=True,
        )


def score_command(a, pattern: str = "ALIEN_*.truth.json") -> None:
    """``score OUT RUNS [-o JSON]``: the rows (written where asked) and the report."""
    rows = score(a.out, a.runs, pattern=pattern)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    report(rows)


def main(argv: list[str] | None = None) -> None:
    a = command_line(argv, __doc__, "case numbers (default: all of CASES)", int)
    if a.cmd == "score":
        score_command(a)
        return
    traits = finalize_traits()
    for i in a.cases or list(CASES):
        tj = build(i, dict(traits[i]), a.out)
        keys = ("name", "d100_mg_ha_cm3", "slices", "shape_zyx", "mc2_touches_edge", "gen_s")
        print(json.dumps({k: tj[k] for k in keys}), flush=True)


def report(rows: list[dict]) -> None:
    """A line per case and the summary line (Dice, wrong bones, right bones' D100 error, bad results passing)."""
    done = [r for r in rows if not r["missing"]]
    for r in rows:
        if r["missing"]:
            print(f"{r['case']} no result (refused, failed or not run)")
            continue
        err = "-" if r["d100_error"] is None else f"{r['d100_error']:+.1f}"
        print(f"{r['case']} Dice {r['dice']:.3f} D100 error {err} QC {r['qc']} {'; '.join(r['reasons'])[:120]}")
    line = f"{len(rows)} cases, {len(rows) - len(done)} without a result"
    if done:
        d = np.array([r["dice"] for r in done])
        e = np.array([abs(r["d100_error"]) for r in done if not r["wrong_bone"] and r["d100_error"] is not None])
        bad = [r["case"] for r in done if r["dice"] < 0.9 and r["qc"] == "pass"]
        line += f"; Dice mean {d.mean():.3f}, min {d.min():.3f}; wrong bone {sum(r['wrong_bone'] for r in done)}"
        if e.size:
            line += f"; right bones' |D100 error| median {np.median(e):.1f}, max {e.max():.1f} mg HA/cm3"
        line += f"; Dice < 0.90 passing QC: {bad}"
    print(line)


if __name__ == "__main__":
    main()
