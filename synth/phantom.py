"""Synthetic HR-pQCT scans of the MCP region with an exact MC2 ground truth.

No public HR-pQCT scans of the second metacarpal exist, so training, tests, benchmarks and the
bundled example use phantoms made here. Each case is a hand cross-section scanned from the
metacarpal shafts (proximal, slice 0) through the metacarpal heads, the MCP joint spaces and
the bases of the proximal phalanges, at XtremeCT I geometry (82 µm, 1536 x 1536) or at 246 µm
(512 x 512) for fast tests.

Anatomy (all sizes in mm, varied per case from one seed):

* soft tissue: an ellipse of hand cross-section, 0-100 mg HA/cm³, in air;
* MC2-MC5 side by side along a gently curved arc, each a cortical tube (0.3-1.5 mm,
  700-1200 mg HA/cm³) whose shaft widens into a head that ends in a dome; the shaft is mostly
  marrow, the head filled with trabecular bone (a band-pass texture at trabecular scale,
  150-350 mg HA/cm³ apparent); shapes vary smoothly along z (drift, curvature, eccentricity,
  rotation) and between cases;
* a joint space of 1-2.5 mm, then the concave base of each proximal phalanx, which wraps the
  head dome (the slices where two bones look alike);
* disease: cortical erosions (pits through the shell of MC2 and sometimes of its
  neighbours), osteopenia (thin, less dense cortex, sparse trabeculae);
* left hands are mirror images; the hand moves and rotates in the field of view.

Scanner effects: Gaussian point spread (sigma 1-1.5 voxels in-plane, 0.5-1 across slices),
correlated noise of realistic size, slight cupping, motion graded 1-3 (ghost copies of the
bone edges and streaks, varying from slice to slice), rings in some cases.

The truth (``NAME.truth.json``) is computed from the files as written: D100 is the mean
calibrated density of the stored scan inside the stored true mask. Nothing of the truth goes
into the scan file: its header and log are the same for every case except the dimensions.

The domain-randomised family (``--family random``: other cross-sections, layouts, textures, tissues and
scanners) draws its parameters in ``synth/families.py``; ``synth/render.py`` renders both (the anatomy and
the scanner model, slice by slice); this module draws the standard family's parameters, writes the files and
computes the truth. The preview montage is ``synth/preview.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from vbmd_rt.runtime.io import naming, proclog
from vbmd_rt.runtime.io.aim import AimHeader, write_aim
from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir
from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.runtime.io.masks import MASK_VALUES
from vbmd_rt.synth import families
from vbmd_rt.synth.case import XTREMECT_CALIBRATION, Bone, CaseParams, erosion  # noqa: F401
from vbmd_rt.synth.render import AIR, CORTEX, TRABECULAR, _profile, _Renderer, _zkernel, render_case  # noqa: F401 - re-exported

__all__ = [
    "GENERATOR_VERSION",
    "CaseParams",
    "sample_case",
    "render_case",
    "synth_case",
    "one_at_a_time",
    "synth",
    "XTREMECT_CALIBRATION",
]

GENERATOR_VERSION = "1.2"  # 1.1: the random family; 1.2: the _GT log says its values are objects (scans unchanged)
SIZES = {"full": (0.082, 1536), "small": (0.246, 512)}


def _xtremect_log(cal: Calibration = XTREMECT_CALIBRATION, scanner: str = "XtremeCT", samples: int = 1536) -> str:
    ln, sep = proclog.field_line, proclog.SEPARATOR
    rows = [
        "!",
        "! Processing Log",
        "!",
        sep,
        ln("Created by", "vbmd-rt synth (synthetic phantom)"),
        ln("Patient Name", "PHANTOM"),
        sep,
        ln("Site", 4),
        ln("Scanner ID", 3309),
        ln("Scanner type", 9 if scanner == "XtremeCT" else 10),
        ln("No. samples", samples),
        ln("No. projections per 180", 750),
        ln("Integration time [us]", 100000),
        ln("Energy [V]", 59400),
        ln("Intensity [uA]", 1000),
        ln("Mu_Scaling", int(cal.mu_scaling)),
        ln("Calibration Data", "60kVp, BH: 200 mg HA/ccm, Scaling 8192"),
        ln("Calib. default unit type", "2 (Density)"),
        ln("Density: unit", "mg HA/ccm"),
        ln("Density: slope", f"{cal.slope:.5f}"),
        ln("Density: intercept", f"{cal.intercept:.6f}"),
        ln("HU: mu water", f"{cal.mu_water:.4f}"),
        sep,
    ]
    return "\n".join(rows) + "\n"


def sample_case(seed: int, size: str = "small") -> CaseParams:
    """Draw one case's anatomy and scanner parameters from ``seed`` (deterministic)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    voxel, nxy = SIZES[size]
    rng = np.random.default_rng([seed, 0x6D6332])
    full_slices = int(rng.integers(200, 321))
    slices = full_slices if size == "full" else int(round(full_slices * 0.082 / voxel))
    length = full_slices * 0.082
    fov = nxy * voxel
    osteopenia = bool(rng.random() < 0.3)
    grade = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    cx = fov / 2 + rng.uniform(-9, 9)
    cy = fov / 2 + rng.uniform(-9, 9)
    hand_angle = rng.uniform(-12, 12)
    hand = (cx, cy, rng.uniform(40, 47), rng.uniform(14, 18), hand_angle)
    # Joint line: MC3 reaches furthest, MC2 close, MC4 and MC5 shorter.
    joint = length * rng.uniform(0.58, 0.72)
    spacing = rng.uniform(16.5, 20.0)
    scale = rng.uniform(0.85, 1.15)
    ca, sa = math.cos(math.radians(hand_angle)), math.sin(math.radians(hand_angle))
    bones = []
    for i, (name, rel_size, dz) in enumerate(
        [
            ("MC2", 1.0, rng.uniform(-1.5, 0.5)),
            ("MC3", 1.02, rng.uniform(0.5, 2.0)),
            ("MC4", 0.86, rng.uniform(-2.5, -0.5)),
            ("MC5", 0.8, rng.uniform(-4.0, -1.5)),
        ]
    ):
        # Bones on an arc across the hand, MC2 on the radial side (-x for a right hand).
        u = (i - 1.4) * spacing
        v = -0.012 * u * u + rng.uniform(-1.0, 1.0) - 2.0
        s = scale * rel_size * rng.uniform(0.93, 1.07)
        shaft = (4.8 * s * rng.uniform(0.9, 1.1), 4.3 * s * rng.uniform(0.9, 1.1))
        head = (7.8 * s * rng.uniform(0.92, 1.08), 7.1 * s * rng.uniform(0.92, 1.08))
        tip = joint + dz
        bones.append(
            Bone(
                name=name,
                x0=cx + u * ca - v * sa,
                y0=cy + u * sa + v * ca,
                dx=rng.normal(0, 0.05),
                dy=rng.normal(0, 0.05),
                curv=rng.normal(0, 0.0015),
                shaft=shaft,
                head=head,
                angle=hand_angle + rng.normal(0, 12),
                tip=tip,
                dome=head[0] * rng.uniform(0.75, 0.95),
                neck=rng.uniform(5.0, 9.0),
                cortex_shaft=rng.uniform(0.9, 1.5) * (0.75 if osteopenia else 1.0),
                cortex_head=rng.uniform(0.3, 0.45) if osteopenia else rng.uniform(0.35, 0.6),
                gap=rng.uniform(1.0, 2.5),
                phalanx=(head[0] * rng.uniform(0.95, 1.1), head[1] * rng.uniform(0.9, 1.05)),
                cup=rng.uniform(1.8, 3.2),
            )
        )
    erosions = []
    if rng.random() < 0.35:
        erosions += [erosion(rng, bones[0]) for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.5:
            erosions.append(erosion(rng, bones[int(rng.integers(1, 4))], reach=1.5, radius_mm=2.0))
    # Apparent trabecular density of the head (150-350, lower in osteopenia) sets the fraction.
    marrow = rng.uniform(-20, 60)
    tissue = rng.uniform(850, 1000)
    apparent = rng.uniform(160, 340) * (0.65 if osteopenia else 1.0)
    trab_head = (apparent - marrow) / (tissue - marrow)
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
        cortex_density=rng.uniform(880, 1150) * (0.85 if osteopenia else 1.0),
        tissue_density=tissue,
        trab_fraction_head=trab_head,
        trab_apparent_head=apparent,
        trab_fraction_shaft=trab_head * rng.uniform(0.15, 0.4),
        marrow_density=marrow,
        soft_density=rng.uniform(10, 70),
        noise_sd=rng.uniform(70, 120),
        psf_sigma_vox=rng.uniform(1.0, 1.5),
        psf_sigma_z_vox=rng.uniform(0.5, 1.0),
        cupping=rng.uniform(20, 60),
        hand=hand,
        bones=bones,
        erosions=erosions,
    )


def case_name(index: int) -> str:
    return f"PHANTOM_{index:04d}"


def synth_case(out: str | Path, index: int, seed: int, size: str = "small", family: str = "standard") -> dict:
    """Generate one case into ``out``: NAME.AIM, NAME_GT.AIM, NAME.truth.json; return the truth.

    ``family``: ``standard`` (``sample_case``) or a domain-randomised family (``families.parse_family``).
    """
    out = Path(out)
    case_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    if family == "standard":
        p = sample_case(case_seed, size)
    else:
        p = families.sample_random(case_seed, size, families.parse_family(family))
    scan, truth = render_case(p, labels=True)
    compartments = compartment_truth(scan, truth, p)
    np.minimum(truth, 1, out=truth)  # the periosteal mask, in place (a full-size case's labels are 0.7 GB)
    name = case_name(index)
    hdr = AimHeader(
        version=2
        if scan.nbytes < 2**31 - 4096
        else 3,  # v020 counts bytes in int32: a full-size XtremeCT II needs v030
        type_code=0x00020002,
        dim=(1, 1, 1),
        element_size_mm=(p.voxel_mm,) * 3,
        processing_log=_xtremect_log(p.cal, p.scanner, 2304 if p.scanner == "XtremeCT II" else 1536),
    )
    write_aim(out / f"{name}.AIM", scan, hdr, type="int16")
    # The mask's log entry has a fixed time so that a seed always gives the same bytes.
    gt_log = proclog.append_entry(
        hdr.processing_log,
        f"vbmd-rt synth {GENERATOR_VERSION}",
        "synthetic phantom ground truth: MC2 periosteal mask",
        when=0,
    )
    write_aim(
        out / f"{name}{naming.GT_SUFFIX}",
        truth.view(np.int8) * np.int8(127),
        replace(hdr, processing_log=gt_log),
        type="char",
        values=MASK_VALUES,  # read as 0/127 by every reader, ITK's too
    )
    t = truth_of(scan, truth, p)
    t.update(compartments)
    t.update(name=name, seed=seed, case_seed=case_seed, index=index, family=family)
    atomic_write_bytes(out / f"{name}{naming.TRUTH_SUFFIX}", (json.dumps(t, indent=2) + "\n").encode())
    return t


def one_at_a_time(
    family: str, size: str, count: int, seed: int, work: str | Path | None = None, name: str | None = None
) -> Iterator[Path]:
    """Yield a folder holding case ``i`` of ``family`` (``synth_case``), for i in range(count), one at a time:
    each is deleted before the next is made (a full-size case is 2-6 GB of disk, a cohort of them no more). The
    folder lies in a fresh temporary folder under ``work`` (default: the system's) and is that folder, or one
    called ``name`` inside it."""
    for i in range(count):
        tmp = Path(tempfile.mkdtemp(prefix="vbmd_rt_case_", dir=work))
        try:
            folder = tmp / name if name else tmp
            folder.mkdir(exist_ok=True)
            synth_case(folder, i, seed, size, family)
            yield folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def truth_of(scan: np.ndarray, truth: np.ndarray, p: CaseParams) -> dict:
    """Ground-truth numbers computed from the stored scan and mask."""
    m = truth.astype(bool)
    cal = p.cal
    per_slice = m.reshape(m.shape[0], -1).sum(axis=1)
    voxels = int(per_slice.sum())
    stored_mean = float(scan[m].astype(np.float64).mean()) if voxels else float("nan")
    d100 = stored_mean * cal.per_unit + cal.intercept if voxels else None
    px2 = p.voxel_mm * p.voxel_mm
    has = per_slice > 0
    return {
        "d100_mg_ha_cm3": d100,
        "bone_volume_mm3": voxels * px2 * p.voxel_mm,
        "mean_slice_area_mm2": float(per_slice[has].mean() * px2) if has.any() else 0.0,
        "slices": int(has.sum()),
        "scan_slices": int(m.shape[0]),
        "side": p.side,
        "motion_grade": p.motion_grade,
        "erosions": p.erosions,
        "osteopenia": p.osteopenia,
        "rings": p.rings,
        "size": p.size,
        "voxel_mm": p.voxel_mm,
        "generator": "vbmd-rt synth",
        "generator_version": GENERATOR_VERSION,
        "family_params": p.family,
        "params": p.to_dict(),
    }


def crop_case(p: CaseParams, voxel_mm: float | None = None, margin_mm: float = 3.0, bone: str = "MC2") -> CaseParams:
    """One bone of a case alone in a field of view just larger than its head, at ``voxel_mm`` (default the
    case's): the same anatomy in mm, the scanner's blur kept in mm. Small enough to render at 82 or 60.7 µm
    in seconds (for tests and the resolution study of the compartments); neighbours, tendons and sesamoids
    are left out."""
    voxel = float(voxel_mm or p.voxel_mm)
    b = next(bb for bb in p.bones if bb.name == bone)
    half = max(b.head) * 1.15 + margin_mm
    nxy = int(math.ceil(2 * half / voxel / 8)) * 8
    length = p.slices * p.voxel_mm
    centre = nxy * voxel / 2
    dx, dy = centre - b.x0, centre - b.y0
    moved = replace(b, x0=centre, y0=centre)
    scale = p.voxel_mm / voxel  # blur given in voxels of the case: the same in mm at the new voxel size
    return replace(
        p,
        voxel_mm=voxel,
        nxy=nxy,
        slices=int(round(length / voxel)),
        bones=[moved],
        erosions=[e for e in p.erosions if e["bone"] == bone],
        hand=(centre, centre, half * 2, half * 2, 0.0),
        extras={},
        psf_sigma_vox=p.psf_sigma_vox * scale,
        psf_sigma_z_vox=p.psf_sigma_z_vox * scale,
        rings=False,
        motion_grade=1,
        family={**p.family, "cropped_from": [round(dx, 3), round(dy, 3)]},
    )


def compartment_truth(scan: np.ndarray, labels: np.ndarray, p: CaseParams) -> dict:
    """The true compartments of MC2 from the generator's own geometry (``render_case(labels=True)``).

    Densities, areas and the cortical thickness are measured as ``runtime.compartments`` measures them, on
    the true compartments instead of the autocontour's: mean calibrated density of the stored scan in each
    (as D100's truth is inside the true mask), mean areas over the bone's slices, and the distance-transform
    thickness of the true cortex (for an elliptical shell the thickness the generator drew, within a few
    µm; the outlines' offset as drawn is ``ct_th_nominal_mm``). ``tb_bv_tv`` and ``ct_po`` are the
    generator's trabecular bone fraction and cortical pore fraction. ``head`` and ``shaft`` split at the
    neck found on the true mask's area profile; ``neck_slice_generator`` is the middle of the generator's
    shaft-to-head transition.
    """
    from vbmd_rt.runtime import compartments

    bone = next(b for b in p.bones if b.name == "MC2")
    cal, px = p.cal, p.voxel_mm
    k_, b_ = cal.density_equation()
    got = compartments._compartments(
        scan, labels, (px, px, px), (np.float32(k_), np.float32(b_)), None, compartments.PARAMS, labels
    )
    if got is None:
        return {"ct_bmd_mg_ha_cm3": None, "tb_bmd_mg_ha_cm3": None, "ct_th_mm": None, "compartments": None}
    v = got.values
    nominal, weights, fraction, tb_vox = [], [], [], []
    for k in range(labels.shape[0]):
        lab = labels[k]
        n_ct, n_tb = int(np.count_nonzero(lab == CORTEX)), int(np.count_nonzero(lab == TRABECULAR))
        if n_ct + n_tb == 0:
            continue
        z = (k + 0.5) * px
        prof = _profile(bone, z)
        w = min(1.0, max(0.0, (bone.tip - z - bone.dome) / bone.neck))
        if prof is not None and n_tb > 0 and n_ct > 0:
            nominal.append(prof[2])
            weights.append(n_ct)
        fraction.append(p.trab_fraction_head if w < 0.5 else p.trab_fraction_shaft)
        tb_vox.append(n_tb)
    keep = ("ct_bmd_mg_ha_cm3", "tb_bmd_mg_ha_cm3", "ct_th_mm", "ct_th_sd_mm", "ct_ar_mm2", "tb_ar_mm2", "tt_ar_mm2")
    generator = {
        "tb_bv_tv": float(np.average(fraction, weights=tb_vox)) if sum(tb_vox) else None,
        "ct_po": float(bone.porosity),
        "ct_th_nominal_mm": float(np.average(nominal, weights=weights)) if weights else None,
    }

    def region(r):
        return None if r is None else {**{k: r[k] for k in keep}, "slices": r["slices"]}

    neck_mm = bone.tip - bone.dome - 0.5 * bone.neck
    return {
        "ct_bmd_mg_ha_cm3": v["ct_bmd_mg_ha_cm3"],
        "tb_bmd_mg_ha_cm3": v["tb_bmd_mg_ha_cm3"],
        "ct_th_mm": v["ct_th_mm"],
        "compartments": {
            **region(v),
            "tb_bv_tv_derived_1200": v["tb_bv_tv_derived_1200"],
            **generator,
            "neck_slice": v["neck_slice"],
            "neck_slice_generator": int(min(max(math.ceil(neck_mm / px - 0.5), 0), labels.shape[0])),
            "head": region(v["head"]),
            "shaft": region(v["shaft"]),
        },
    }


def synth(
    out: str | Path,
    cases: int,
    seed: int,
    size: str = "small",
    start: int = 0,
    progress=None,
    workers: int = 1,
    family: str = "standard",
) -> list[dict]:
    """Generate ``cases`` phantoms (indices start..start+cases-1) into ``out``, in ``workers`` processes.

    Each case depends only on (seed, index), so the files are the same for any number of workers.
    """
    if family != "standard":
        families.parse_family(family)  # a bad family name fails before any work
    out = check_writable_dir(out)
    indices = range(start, start + cases)
    n = len(indices)
    with contextlib.ExitStack() as stack:
        if workers > 1 and n > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = stack.enter_context(ProcessPoolExecutor(min(workers, n)))
            results = pool.map(synth_case, [out] * n, indices, [seed] * n, [size] * n, [family] * n)
        else:
            results = (synth_case(out, i, seed, size, family) for i in indices)
        truths = []
        for i, truth in zip(indices, results, strict=True):
            truths.append(truth)
            if progress:
                progress(i)
    return truths
