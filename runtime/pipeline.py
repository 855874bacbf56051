"""One scan through the stages of ``vbmd-rt run``, each timed: read, preprocess, inference, postprocess,
vbmd, write. ``segment`` (preprocess + inference + postprocess) is also what training's validation and
``vbmd-rt eval`` use, so every number is measured on the path the product runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from vbmd_rt import __version__
from vbmd_rt.runtime import (
    bonewin,
    classical,
    compartments,
    damage,
    edges,
    identify,
    jointspace,
    measure,
    preprocess,
    qc,
    report,
    resources,
)
from vbmd_rt.runtime.errors import CalibrationError, VbmdInputError
from vbmd_rt.runtime.inference.base import Backend, InputShapeError
from vbmd_rt.runtime.inference.window import sliding_window
from vbmd_rt.runtime.io import aim, masks, nifti, outputs, proclog
from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir
from vbmd_rt.runtime.io.calibration import implausible as implausible_calibration
from vbmd_rt.runtime.io.naming import export_names, outputs_for, scan_name
from vbmd_rt.runtime.model import Model
from vbmd_rt.runtime.parallel import each
from vbmd_rt.runtime.postprocess import (
    TIP_FLOOR,
    detect_side,
    fill_holes_slicewise,
    joint_end,
    largest_component,
    postprocess,
    satellites,
    sparse_zeros,
)
from vbmd_rt.runtime.result import Record, model_record
from vbmd_rt.runtime.result import timings as result_timings


class Timer:
    """Wall-clock seconds per stage, in the order the stages ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def segment(
    data: np.ndarray,
    model: Model,
    backend: Backend,
    side: str = "auto",
    timer: Timer | None = None,
    keep_prob: bool = False,
    spacing_zyx=None,
    calibration=None,
    path=None,
    checks: bool = True,
    log: str | None = None,
    lost: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Native (z, y, x) scan -> native uint8 MC2 mask (0/1) and facts (side, identity, components...).

    The bundled one-bone segmenter and ``--model classical`` both take MC2 from the identification stage
    (``runtime.identify``), which raises ``identify.NotAHand`` for scans that hold no metacarpal. With
    ``checks``, the QC checks that need the model grid (identity, agreement with the identified region,
    network confidence) go into ``info["checks"]``. ``log``: the scan's processing log (a hand side it
    states is evidence for the identity).

    Slices the scan lost (one value throughout, ``runtime.damage``) are filled from the slices around them
    in a copy to find and draw the bone, and left out of the mask (``info["lost_slices"]``); too many are
    refused (``VbmdInputError``). ``lost``: ``damage.lost_slices(data)`` where the caller found them already.
    """
    lost = damage.lost_slices(data) if lost is None else lost
    if lost.size:
        if spacing_zyx is not None and (model.classical or model.card.arch.bone_window):
            identify.check_fov((data.shape[1] * spacing_zyx[1], data.shape[2] * spacing_zyx[2]), path)  # a crop
        damage.check(path, lost, data.shape[0], float(spacing_zyx[0]) if spacing_zyx is not None else 0.0)
        data = damage.filled(data, lost)
    mask, info = _segment(data, model, backend, side, timer, keep_prob, spacing_zyx, calibration, path, checks, log)
    if lost.size:  # they hold no density: no mask, no number
        mask[lost] = 0
        info["lost_slices"] = lost.tolist()
    return mask, info


def _segment(data, model, backend, side, timer, keep_prob, spacing_zyx, calibration, path, checks, log):
    """``segment`` on a scan without lost slices."""
    timer = timer or Timer()
    if model.classical or model.card.arch.bone_window:
        return _segment_identified(
            data, model, backend, side, timer, keep_prob, spacing_zyx, calibration, path, checks, log
        )
    spec = model.spec
    with timer("preprocess"):
        vol, geometry = preprocess.to_model(data, spec, side, spacing_zyx=spacing_zyx)
    with timer("inference"):
        prob = sliding_window(vol, backend.infer, model.window)
    with timer("postprocess"):
        mask, info = postprocess(prob, geometry, model.threshold)
        info["contrast"] = qc.bone_contrast(data, mask, spec.std)
        if not info["empty"] and info["contrast"] < qc.MIN_CONTRAST:
            z0, z1, y0, y1, x0, x1 = info["box"]  # the mask is 0 outside its box (postprocess)
            mask[z0:z1, y0:y1, x0:x1] = 0  # instance norm can find "structure" in noise: what is not brighter than its
            info["empty"] = True  # surroundings is not bone
            info["rejected"] = True
        found = side if side != "auto" else detect_side(data, mask)
    if checks and not info["empty"]:
        with timer("qc"):
            info["checks"] = _model_grid_checks(vol, prob, geometry, model, spacing_zyx, calibration)
    info.update(
        {
            "side": found,
            "side_source": "given" if side != "auto" else "detected",
            "model_grid": list(geometry.model_shape),
            "crop": list(geometry.crop),
        }
    )
    if keep_prob:
        info["prob"] = preprocess.from_model(prob, geometry)
        info["geometry"] = geometry
    return mask, info


def _segment_identified(data, model, backend, side, timer, keep_prob, spacing_zyx, calibration, path, checks, log):
    """Identification, then MC2's envelope: the one-bone network in the window over the identified bone, or
    the classical contour of the identified bone."""
    if spacing_zyx is None:
        raise ValueError("the identification stage needs the voxel size (spacing_zyx)")
    if model.classical and calibration is None:
        raise CalibrationError(
            path,
            "has no density calibration, which the classical model needs to threshold",
            "use a network model (the default), or a calibrated scan",
        )
    grid = bonewin.GRID if model.classical else model.spec
    with timer("preprocess"):
        vol, geometry = preprocess.to_model(data, grid, "auto", spacing_zyx=spacing_zyx)
        vol = bonewin.to_input_units(vol, calibration)
    with timer("identify"):
        idt = identify.identify(vol, float(grid.spacing_mm), side, log, path, view=preprocess.in_view(geometry))
    turned = idt.stack.reversed
    if turned:  # the slices run from the fingers to the wrist: the rest works on the stack turned end to end
        data, vol = data[::-1], np.ascontiguousarray(vol[::-1])
    sy, sx = geometry.scale[1], geometry.scale[2]

    def native_yx(y_mm: float, x_mm: float) -> tuple[float, float]:
        """A point of the (cropped) model grid, in mm, as native (y, x) voxel coordinates."""
        return (y_mm / grid.spacing_mm + geometry.crop[0]) * sy, (x_mm / grid.spacing_mm + geometry.crop[2]) * sx

    prob = raw = parted_off = None
    if model.classical:
        mc2 = idt.candidates[idt.choice]
        not_bone = None if idt.shell is None else shell_lookup(idt.shell, geometry)
        with timer("inference"):
            tip_mm = _tip_in(idt, 0.0)  # the dome's tip where the contour's own end does not show it
            tip = None if tip_mm is None else tip_mm / float(grid.spacing_mm)  # model slices
            mask, info = classical.segment(
                data,
                spacing_zyx,
                calibration,
                near=native_yx(mc2.y_mm, mc2.x_mm),
                not_bone=not_bone,
                tip=None if tip is None else tip * geometry.scale[0],  # native slices
            )
        with timer("postprocess"):
            on_grid = preprocess.to_model_mask(mask, geometry, info["box"]) > 0.5
            end = joint_end(on_grid.sum(axis=(1, 2)), float(grid.spacing_mm))
            if end is not None and info["box"] is not None:  # its tracking took in the phalanx's cup
                dome = classical.dome_tip(fill_holes_slicewise(on_grid), on_grid, end, float(grid.spacing_mm), tip=tip)
                keep_tip(mask, info["box"], dome, end, geometry)
                classical.with_tip(on_grid, end, dome)
                info["joint_cut_slice"] = end
            elif info["box"] is not None:  # no joint in its profile: it may have run on across a narrow one
                found = jointspace.part(vol, on_grid, float(grid.spacing_mm), tip_mm)
                if found is not None:
                    parted_off = on_grid & ~found[0]
                    drop_native(mask, info["box"], parted_off, geometry)
                    on_grid = found[0]
                    info["joint_parted"] = found[1]
            classical.peel_outline(mask, data, calibration, info, spacing_zyx)  # the joint settled: the outline
    else:
        with timer("inference"):
            prob, win = bonewin.predict(vol, idt.region, backend.infer, backend.batch_for(model.window.roi_slices))
        with timer("postprocess"):
            end, raw, bodies, parted = one_bone(
                prob, win, idt, model.threshold, float(grid.spacing_mm), keep=checks, vol=vol
            )
            mask, info = postprocess(prob, geometry, model.threshold)
            on_grid = largest_component(prob > model.threshold)
        info["window"] = win.to_dict()
        if bodies:  # slices of the model grid, as ``joint_cut_slice`` (a turned stack's from its proximal end)
            info["small_bones_removed"] = [{**b, "slices": [z + win.z0 for z in b["slices"]]} for b in bodies]
        if end is not None:
            info["joint_cut_slice"] = end
        if parted is not None:
            info["joint_parted"], off = parted
            parted_off = np.zeros(vol.shape, bool)
            win.of(parted_off)[off] = True
    voxel_mm, grid_mm = float(min(spacing_zyx[1:])), float(grid.spacing_mm)  # the edge is read on the grid's scale
    if not info["empty"]:
        with timer("postprocess"):  # the outline on the half level where the scan resolves the edge
            edge = edges.snap(data, mask, info.get("box"), voxel_mm, grid_mm)
        if edge is not None:
            info["box"] = edge.pop("box", info.get("box"))
            info["edge"] = edge
    info["identity"] = idt.to_dict()
    for c, b in zip(info["identity"]["candidates"], idt.candidates, strict=True):  # for the picture
        c["native_yx"] = [round(v, 1) for v in native_yx(b.y_mm, b.x_mm)]
    if calibration is not None and not info["empty"]:
        with timer("qc"):
            found = damage.metal(vol, grid_mm, on_grid, damage.METAL_MG / bonewin.DENSITY_UNIT)
        if found is not None:  # its slices as the file numbers them
            found["slices"] = damage.native_slices(found, geometry.scale[0], data.shape[0], turned)
            info["metal"] = found
    if checks and not info["empty"]:
        with timer("qc"):
            c: dict = {"identity": {"margin": idt.margin, "reasons": idt.reasons}}
            if "metal" in info:
                c["metal"] = info["metal"]
            if "joint_parted" in info:
                c["joint"] = info["joint_parted"]
            region, mine = idt.region, on_grid
            if info.get("joint_cut_slice") is not None:  # where the region ran on into the phalanx, it is no MC2;
                region, mine = region.copy(), on_grid.copy()  # the dome's tip past the cut is left to the mask
                region[info["joint_cut_slice"] :] = mine[info["joint_cut_slice"] :] = False
            if parted_off is not None:  # what was parted off the mask at the joint is the phalanx, no MC2
                region = region & ~parted_off
            c["agreement"] = {"dice_with_identified_region": round(measure.dice(mine, region), 4)}
            if prob is not None:  # the network's output is 0 outside its window; its own, other bones and all
                c["confidence"] = qc.confidence(win.of(prob) if raw is None else raw, model.threshold)
            reading = None
            if model.classical:

                def at_native(theirs: np.ndarray, threshold: float) -> float | None:
                    """The classical D100 minus the network's, both at the scan's voxels as results are."""
                    other, o = postprocess(theirs, geometry, threshold)
                    if o["empty"]:
                        return None
                    edge = edges.snap(data, other, o.get("box"), voxel_mm, grid_mm)
                    box = edge["box"] if edge is not None and "box" in edge else o.get("box")
                    d = [
                        measure.vbmd(data, m, spacing_zyx, calibration, _box(b))["d100_mg_ha_cm3"]
                        for m, b in ((mask, info.get("box")), (other, box))
                    ]
                    return None if None in d else d[0] - d[1]

                reading = second_reading(vol, idt, on_grid, backend, grid_mm, at_native)
            if reading is not None:
                c["second_reading"] = reading
            info["checks"] = c
    info.update(
        {
            "side": idt.side,
            "side_source": idt.side_source if side == "auto" else "given",
            "model_grid": list(geometry.model_shape),
            "crop": list(geometry.crop),
        }
    )
    if keep_prob:  # the classical model's "probability" is its mask, written from it (``_prob_x100``)
        info["prob"] = preprocess.from_model(prob, geometry) if prob is not None else None
        info["geometry"] = geometry if prob is not None else None
    if turned:
        turn_back(mask, info)
    return mask, info


def shell_lookup(shell: np.ndarray, geometry):
    """``classical.segment``'s ``not_bone`` from the identification stage's holder shell (``Identity.shell``:
    bool on the coarse grid, two model voxels a side, of the cropped model grid, in the stack's order as
    segmented), widened by a coarse voxel for its blurred rim: where a native slice's rows and columns lie on
    it."""
    wide = ndimage.binary_dilation(shell, structure=np.ones((1, 3, 3), bool))
    sz, sy, sx = geometry.scale
    y0, x0 = geometry.crop[0], geometry.crop[2]
    nz, ny, nx = wide.shape

    def at(k: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        z = min(max(int(((k + 0.5) / sz - 0.5) // 2), 0), nz - 1)
        iy = (np.floor((ys + 0.5) / sy - 0.5).astype(np.int64) - y0) // 2
        ix = (np.floor((xs + 0.5) / sx - 0.5).astype(np.int64) - x0) // 2
        out = np.zeros((len(ys), len(xs)), bool)
        oky, okx = (iy >= 0) & (iy < ny), (ix >= 0) & (ix < nx)
        out[np.ix_(oky, okx)] = wide[z][np.ix_(iy[oky], ix[okx])]
        return out

    return at


def turn_back(mask: np.ndarray, info: dict) -> None:
    """A mask made on a stack turned end to end back in the scan's slice order (in place), with its box and
    probabilities. The record's other slice numbers (the identity's, the window's, ``joint_cut_slice``) count
    from the proximal end, as the identity's ``stack`` says."""
    nz = mask.shape[0]
    if info.get("box") is None:  # an empty mask
        mask[...] = mask[::-1].copy()
    else:  # the mask is 0 outside its box: only the box moves
        z0, z1, y0, y1, x0, x1 = info["box"]
        part = mask[z0:z1, y0:y1, x0:x1][::-1].copy()
        mask[z0:z1, y0:y1, x0:x1] = 0
        info["box"] = list(turned_box(info["box"], nz))
        mask[info["box"][0] : info["box"][1], y0:y1, x0:x1] = part
    if info.get("prob") is not None:
        info["prob"] = np.ascontiguousarray(info["prob"][::-1])


def second_reading(
    vol: np.ndarray, idt, on_grid: np.ndarray, backend, spacing_mm: float, at_native=None
) -> dict | None:
    """The classical mask (``on_grid``, model grid) against the one-bone network's mask of the same
    identified bone (``backend.second_reader()``: model, active backend): where two methods that fail
    differently disagree, at least one is wrong: their Dice (on the model grid, as drawn; calibrated on the
    training families, ``qc.Limits.reading_dice``) and their D100s (``qc.Limits.reading_d100_mg``: the
    accuracy bar and the network's own typical error). ``at_native(prob, threshold)``, where given, gives
    the D100 difference as the results read it: the network's mask brought to the scan's voxels and set on a sharp edge
    (``runtime.edges``) as the classical one was. On the model grid the outlines are as drawn, up to a grid
    voxel off the bone at the scanner's own 60-82 µm, and the D100s of two right masks differed by up to 15
    mg HA/cm³ (seventeenth pass; that difference is kept as ``d100_difference_on_grid_mg_ha_cm3``). None
    without a reader. The reading is QC's aid, not the result: where it fails (a damaged model file, ONNX
    Runtime's error), the record says so and the rest of QC stands."""
    if not hasattr(backend, "second_reader"):
        return None
    name = None
    try:
        reader = backend.second_reader()
        if reader is None:
            return None
        model, net = reader
        name = model.name
        prob, win = bonewin.predict(vol, idt.region, net.infer, net.batch_for(model.window.roi_slices))
        one_bone(prob, win, idt, model.threshold, spacing_mm, vol=vol)
        theirs = largest_component(prob > model.threshold)
    except Exception as e:  # noqa: BLE001 - any failure of the aid leaves the classical result and its QC
        return {"reader": name, "error": _error_line(e)}
    out = {"reader": name, "onnx_sha256": net.onnx_sha256, "dice_with_network": round(measure.dice(on_grid, theirs), 4)}
    if on_grid.any() and theirs.any():  # ``vol`` is calibrated density / DENSITY_UNIT (the classical model needs it)
        diff = float(vol[on_grid].mean(dtype=np.float64) - vol[theirs].mean(dtype=np.float64))
        out["d100_difference_mg_ha_cm3"] = round(diff * bonewin.DENSITY_UNIT, 2)
        out["d100_difference_at"] = "model grid"
        if at_native is not None:
            try:  # where the native reading fails, the grid's numbers stand, and say so
                native = at_native(prob, model.threshold)
            except Exception as e:  # noqa: BLE001
                native, out["native_error"] = None, _error_line(e)
            if native is not None:
                out["d100_difference_on_grid_mg_ha_cm3"] = out["d100_difference_mg_ha_cm3"]
                out["d100_difference_mg_ha_cm3"] = round(native, 2)
                out["d100_difference_at"] = "scan voxels"
    return out


def _error_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def cut_native(mask: np.ndarray, box, end: int, scale_z: float) -> int:
    """Zero the native ``mask`` (in place, inside its ``box`` (z0, z1, y0, y1, x0, x1): it is 0 outside)
    from the first native slice of model slice ``end`` on (``scale_z`` native slices per model slice; z is
    never cropped). Returns that native slice, clipped to the box."""
    z0, z1, y0, y1, x0, x1 = box
    cut = max(z0, min(z1, int(round(end * scale_z))))
    mask[cut:z1, y0:y1, x0:x1] = 0
    return cut


def keep_tip(mask: np.ndarray, box, tip: np.ndarray, end: int, geometry: preprocess.Geometry) -> None:
    """Cut the native ``mask`` (in place; it is 0 outside ``box``) at model slice ``end`` (``cut_native``), but
    for the dome's tip (``classical.dome_tip``: bool cross-sections of model slices ``end`` on, on the cropped
    model grid): in the native slices under them, the mask's voxels that lie in them."""
    z0, z1, y0, y1, x0, x1 = box
    first = int(round(end * geometry.scale[0]))
    last = min(z1, int(round((end + len(tip)) * geometry.scale[0])))
    kept = mask[first:last, y0:y1, x0:x1].copy() if len(tip) and first < last else None
    cut_native(mask, box, end, geometry.scale[0])
    if kept is None:
        return
    inside = preprocess.sample_at_native(  # the tip's slices on the uncropped model grid, in scan orientation
        preprocess.from_model(tip.astype(np.float32), geometry),
        geometry,
        (slice(first, last), slice(y0, y1), slice(x0, x1)),
        origin=(end, 0, 0),
        grid=geometry.model_shape,
    )
    mask[first:last, y0:y1, x0:x1] = kept & (inside >= 0.5)  # (a native slice half in the tip's first is in)


def drop_native(mask: np.ndarray, box, gone: np.ndarray, geometry: preprocess.Geometry) -> None:
    """Take the model voxels ``gone`` (bool, the cropped model grid) off the native ``mask`` (in place; it is 0
    outside ``box``): the native voxels that lie at least half in them, and what that leaves apart from the
    mask's largest component."""
    zs = np.flatnonzero(gone.any(axis=(1, 2)))
    if zs.size == 0:
        return
    za, zb = int(zs[0]), int(zs[-1]) + 1
    z0, z1, y0, y1, x0, x1 = box
    first = max(z0, int(np.floor(za * geometry.scale[0])))
    last = min(z1, int(np.ceil(zb * geometry.scale[0])))
    if first >= last:
        return
    under = preprocess.sample_at_native(
        preprocess.from_model(gone[za:zb].astype(np.float32), geometry),
        geometry,
        (slice(first, last), slice(y0, y1), slice(x0, x1)),
        origin=(za, 0, 0),
        grid=geometry.model_shape,
    )
    mask[first:last, y0:y1, x0:x1][under >= 0.5] = 0
    part = mask[z0:z1, y0:y1, x0:x1]  # what the cut left of the far bone's rim, a voxel thin, goes with it
    part[~largest_component(part != 0)] = 0


def _tip_in(idt, z0_mm: float) -> float | None:
    """The identified MC2's tip (z, mm) in a frame that starts ``z0_mm`` into the model grid; None where its
    joint is not in view."""
    mc2 = idt.candidates[idt.choice]
    return mc2.tip - z0_mm if mc2.joint_in_view else None


def one_bone(
    prob: np.ndarray,
    win: bonewin.Window,
    idt,
    threshold: float,
    spacing_mm: float,
    keep: bool = False,
    vol: np.ndarray | None = None,
) -> tuple[int | None, np.ndarray | None, list[dict], tuple[dict, np.ndarray] | None]:
    """The network's probabilities (in place) held to the identified bone: ended at its joint
    (``trim_at_joint``, on the network's own profile: the other bones taken off first can hide the cup),
    then 0 on the other bones (``idt.others``: a neighbour it touches, a sesamoid, a phalanx), and on small
    bones that its mask holds through a neck (``postprocess.satellites``: a sesamoid inside MC2's own
    instance, or one the other bones' 1 mm rim left to it). Returns the joint's model slice (or None), with
    ``keep`` the window's probabilities as they were before anything was taken off (QC's confidence limit was
    set on the network's own; None where nothing was), the small bones taken off, and where no joint showed
    in the profile and MC2 was parted from the phalanx in 3D at the joint the scan ``vol`` (the model grid)
    shows (``jointspace.part``), its record (slices of the model grid) and what was taken off (bool, the
    window's shape, ``win.of``), else None."""
    zs = np.flatnonzero(idt.region.any(axis=(1, 2)))
    region_end = int(zs[-1]) + 1 if zs.size else None
    # where no joint was found, the region ran on to the stack's end, and its end may not be the head's
    floor = None if idt.candidates[idt.choice].joint_in_view else TIP_FLOOR
    end = trim_at_joint(prob, win, threshold, spacing_mm, region_end, tip_floor=floor)
    raw = win.of(prob).copy() if keep and idt.others is not None else None
    bonewin.exclude(prob, win, idt.others)
    view = win.of(prob)
    gone, bodies = satellites(largest_component(view > threshold), spacing_mm)
    if keep and raw is None and bodies:  # nothing excluded before: the window is still the network's own
        raw = view.copy()
    view[gone] = 0.0
    parted = None
    if end is None and vol is not None:
        mine = largest_component(view > threshold)
        found = jointspace.part(win.of(vol), mine, spacing_mm, _tip_in(idt, win.z0 * spacing_mm))
        if found is not None:
            if keep and raw is None:
                raw = view.copy()
            off = mine & ~found[0]
            view[off] = 0.0
            parted = ({**found[1], "slice": found[1]["slice"] + win.z0}, off)
    return end, raw, bodies, parted


def trim_at_joint(
    prob: np.ndarray,
    win: bonewin.Window,
    threshold: float,
    spacing_mm: float,
    region_end: int | None = None,
    tip_floor: float | None = None,
) -> int | None:
    """The network's MC2 ended where its mask's profile shows the joint (``postprocess.joint_end``): the
    slices beyond it are zeroed in ``prob`` (in place), but for the tip of the head's dome that the cup holds
    (``classical.dome_tip`` of the mask, which takes in the cup there). Returns the joint's model slice (where
    the cut is; the tip's slices follow it), or None. ``region_end``: the identified region's end (model
    slice, exclusive): a mask that ran past the dome's tip onto the phalanx is cut there only from
    ``bonewin.EXTEND_MM`` before it on (a dip further back is the head falling apart, not its tip).
    ``tip_floor`` (``joint_end``'s; ``one_bone`` gives ``TIP_FLOOR`` where the identified MC2's joint was not
    found, so that its region ran on to the stack's end): a tip is also taken further back where the dome
    narrowed to one, and where no tip shows, a base that joined the dome before its end (``joined_base``)."""
    view = win.of(prob)
    if view.size == 0:
        return None
    mask = largest_component(view > threshold)
    back = int(round(bonewin.EXTEND_MM / spacing_mm))
    tip_from = 0 if region_end is None else max(0, region_end - win.z0 - back)
    area = mask.sum(axis=(1, 2))
    end = joint_end(area, spacing_mm, tip=True, tip_from=tip_from, tip_floor=tip_floor)
    if end is None and tip_floor is not None:  # the head's end unknown: the phalanx's base may have joined the dome
        end = joined_base(area, win.z0, prob.shape[0], spacing_mm)
    if end is None:
        return None
    tip = classical.dome_tip(fill_holes_slicewise(mask), mask, end, spacing_mm)  # a dark joint space parts them
    view[end : end + len(tip)][~tip] = 0
    prob[win.z0 + end + len(tip) :] = 0
    return win.z0 + end


#: A network mask's dip on the identification grid that falls under this share of the largest cross-section
#: before it is a head that fell apart (an erosion, a mask that lost its marrow), not a base that joined the
#: dome (``joined_base``): on the identification grid's regions those fall to 0.7-0.9 of the head's
JOINED_FLOOR = 0.6


def joined_base(area: np.ndarray, z0: int, nz: int, spacing_mm: float) -> int | None:
    """Where a network mask whose identified region ran on to the stack's end (its joint not found) took in
    the phalanx's base before the dome's end (a narrow joint space, or a flexed finger's base beside the
    head): the joint ``identify.joint_dip`` finds on the mask's own profile (``area``, window slices from
    model slice ``z0`` of ``nz``), read as the identification stage reads a region's: on its grid (two model
    slices to one, both pairings, so that a rise is read whichever slice it falls on) and past its proximal
    slab. ``joint_end`` misses such a dip where it stays above its dome's 0.8 of the smoothed largest
    cross-section (on the identification grid's regions such dips fall to 0.7-0.9) or narrows for less than
    its dome's length from there. A dip that falls under ``JOINED_FLOOR`` of the largest
    cross-section before it (read on the model slices) is passed over for the next. Returns the first window
    slice past the joint (the raw rise's, as ``joint_end``'s), or None."""
    a = np.asarray(area, dtype=np.float64)
    found = []
    for o in (0, 1):  # the two pairings of model slices
        pairs = a[o : o + (a.size - o) // 2 * 2].reshape(-1, 2).sum(axis=1)
        k = max(0, identify.reach(nz // 2, 2 * spacing_mm) - (z0 + o) // 2)
        while (k := identify.joint_dip(pairs, 2 * spacing_mm, k)) < pairs.size:
            first = o + 2 * k  # the rise's pair: the raw rise is at its first slice or inside it
            rise = first if a[first] / max(a[first - 1], 1.0) >= a[first + 1] / max(a[first], 1.0) else first + 1
            if a[first - 2 : rise].min() >= JOINED_FLOOR * a[:rise].max():  # the dip, read on the slices
                found.append(rise)
                break
            k += 1
    return min(found) if found else None


def _model_grid_checks(vol, prob, geometry, model: Model, spacing_zyx, calibration) -> dict:
    """The network's confidence and its agreement with the classical baseline, on the model grid."""
    checks: dict = {"confidence": qc.confidence(prob, model.threshold)}
    if calibration is not None and spacing_zyx is not None:
        spec = model.spec
        stored = vol * np.float32(spec.std)
        stored += np.float32(spec.mean)
        grid_mm = tuple(float(s) * f for s, f in zip(spacing_zyx, geometry.scale, strict=True))
        checks["baseline"] = qc.baseline(stored, largest_component(prob > model.threshold), grid_mm, calibration)
    return checks


@dataclass
class Analysis:
    """What one scan gave: the native mask (uint8 0/1), its measures, facts and warnings."""

    mask: np.ndarray
    measures: dict  # measure.vbmd: d100_mg_ha_cm3, bone_volume_mm3, mean_slice_area_mm2, slices, voxels
    info: dict  # segment's facts: side, side_source, components, contrast, box...
    warnings: list[str]
    compartments: compartments.Compartments | None = None  # cortex and trabecular region (None: no calibration)


def analyse(
    data: np.ndarray,
    spacing_zyx,
    calibration,
    model: Model,
    backend: Backend,
    side: str = "auto",
    timer: Timer | None = None,
    keep_prob: bool = False,
    path=None,
    max_memory: int | None = None,
    log: str | None = None,
) -> Analysis:
    """Segment and measure one (z, y, x) scan already in memory (or memory-mapped): no files written.

    Before any voxel is touched, the memory the scan needs is predicted from its shape and voxel size and
    refused past ``max_memory`` bytes (default: three quarters of the RAM) with a ``VbmdInputError``.
    """
    spec, one_bone = _memory_model(model)
    resources.check_memory(path, data.shape, spacing_zyx, spec, max_memory, one_bone)
    timer = timer or Timer()
    warnings: list[str] = []
    if calibration is None:
        warnings.append("scan has no density calibration in its header: vBMD not computed (mask still written)")
    lost = damage.lost_slices(data)
    if lost.size:  # ``segment`` fills them in a copy of the scan: its memory too
        resources.check_memory(path, data.shape, spacing_zyx, spec, max_memory, one_bone, data.itemsize)
    mask, info = segment(
        data,
        model,
        backend,
        side,
        timer,
        keep_prob=keep_prob,
        spacing_zyx=spacing_zyx,
        calibration=calibration,
        path=path,
        log=log,
        lost=lost,
    )
    if info.get("rejected"):
        warnings.append(
            f"the network's output is not brighter than its surroundings (contrast {info['contrast']:.2f}):"
            " no bone found, the mask is empty (is this an MCP scan of the hand?)"
        )
    elif info["empty"]:
        warnings.append("no MC2 found in this scan: the mask is empty (is this an MCP scan of the hand?)")
    with timer("vbmd"):
        m = measure.vbmd(data, mask, spacing_zyx, calibration, _box(info.get("box")))
        comp = (
            None if info["empty"] else compartments.analyse(data, mask, spacing_zyx, calibration, _box(info.get("box")))
        )
    with timer("qc"):
        checks = dict(info.pop("checks", {}))
        seen, box, bridged = proximal_first(mask, info, lost)
        checks["shape"] = qc.plausibility(seen, spacing_zyx, box, bridged=bridged)
        checks["compartments"] = qc.compartment_facts(comp, spacing_zyx)
        info["qc"] = qc.verdict(checks, m)
        if calibration is None:  # no D100 without a calibration: never a pass
            info["qc"] = {**info["qc"], "status": "review", "reasons": [*info["qc"]["reasons"], NO_CALIBRATION]}
        near = damage.near(lost, mask)
        if near:  # MC2 drawn across slices of no image: never a pass
            info["qc"] = {**info["qc"], "status": "review", "reasons": [*info["qc"]["reasons"], damage.reason(lost)]}
    if lost.size and not near:
        warnings.append(damage.reason(lost, near=False))
    if info.get("metal") and not info["metal"]["in_mc2_slices"]:
        warnings.append(damage.metal_reason(info["metal"], near=False))
    if info["qc"]["status"] == "review":
        warnings.append("QC: review before use: " + "; ".join(info["qc"]["reasons"]))
    return Analysis(mask, m, info, warnings, comp)


def proximal_first(mask: np.ndarray, info: dict, slices: np.ndarray):
    """``mask``, its box (``_box``) and the slice numbers ``slices`` (a list) with the slices from the
    proximal end: QC's area profile reads the shaft first and the dome last. A stack that ran from the
    fingers (``Identity.stack``) is viewed turned."""
    box = _box(info.get("box"))
    if not info.get("identity", {}).get("stack", {}).get("turned"):
        return mask, box, slices.tolist()
    nz = mask.shape[0]
    return mask[::-1], None if box is None else turned_box(box, nz), (nz - 1 - slices).tolist()


def turned_box(box, nz: int) -> tuple[int, ...]:
    """A box (z0, z1, y0, y1, x0, x1) on a stack of ``nz`` slices, on the same stack turned end to end."""
    z0, z1, *rest = box
    return (nz - z1, nz - z0, *rest)


def record_of(
    a: Analysis,
    model: Model,
    backend: Backend,
    calibration,
    path: Path | None = None,
    scan: aim.Scan | None = None,
    fingerprint: dict | None = None,
    options: RunOptions | None = None,
    mask_file: str | None = None,
) -> Record:
    """The result record (``runtime.result``) of an analysis: what ``OUT/NAME.json`` and ``vbmd_rt.Result``
    are made from. ``scan``: the file it came from (None: an array); ``options``: those it ran with (its ``run_key``)."""
    options = options or RunOptions()
    return Record.of_run(
        path,
        scan,
        fingerprint,
        calibration,
        a.measures,
        a.info,
        compartments.record(a.compartments),
        a.warnings,
        model_record(model, backend),
        backend.describe(),
        run_key(model, backend, options),
        mask_file,
    )


def _box(box):
    """A native work box (z0, z1, y0, y1, x0, x1) from segment's facts, or None for the whole scan."""
    return None if not box else tuple(int(v) for v in box)


@dataclass
class RunOptions:
    side: str = "auto"
    report_html: bool = False
    overwrite: bool = False
    save_prob: bool = False
    max_memory: int | None = None  # bytes; None: three quarters of the RAM (resources.default_max_memory)
    mask_format: str = "rle"  # rle | cropped | char (runtime.io.masks)
    export: str | None = None  # nifti | nii | mha: scan and mask for 3D Slicer as well (runtime.io.nifti)


# Voxel sizes vbmd-rt measures: HR-pQCT (XtremeCT I 82 µm, II 60.7 µm) and its downsampled AIMs, with margins.
# Outside them a header lies (or the scan is no HR-pQCT of a hand), and resampling it would take gigabytes.
SCAN_VOXEL_MM = (0.02, 1.0)
NO_CALIBRATION = "no usable density calibration in the header: D100 not computed"
MIN_SLICE_MM = 1.0  # a slice narrower than this is no image of a bone (MC2: 8-12 mm across)
MIN_SLICE_PIXELS = 16  # the smallest slice the model's window and the classical contouring take


def check_scan(path: Path, header: aim.AimHeader | None = None) -> aim.AimHeader:
    """Refuse from the header alone, before any voxel is read or decoded: a mask, an ISQ that is not one,
    a voxel size outside ``SCAN_VOXEL_MM``, a density calibration outside physical ranges. Returns the header."""
    path = Path(path)
    if header is None:
        if not path.exists():
            raise VbmdInputError(path, "no such file", "check the path")
        if path.is_dir():
            raise VbmdInputError(path, "is a folder", "give scan files or a folder of them")
        header = aim.read_header(path)
    if header.is_mask:
        raise VbmdInputError(
            path,
            f"is a segmentation mask ({header.type_name}), not a greyscale scan",
            "pass the scan itself (int16 AIM or ISQ)",
        )
    if path.suffix.lower() == ".isq" and header.version != 4:
        raise VbmdInputError(path, "is named .ISQ but is not an ISQ file", "rename it to .AIM")
    if min(header.shape) < 1:
        raise VbmdInputError(path, "holds no voxels", "pass a complete scan")
    lo, hi = SCAN_VOXEL_MM
    el = header.element_size_mm
    if any(not lo * (1 - 1e-6) <= float(e) <= hi * (1 + 1e-6) for e in el):  # float32 in the header
        raise VbmdInputError(
            path,
            f"has a voxel size of {' x '.join(f'{float(e):.6g}' for e in el)} mm, outside the {lo * 1000:g} µm "
            f"to {hi:g} mm that vbmd-rt measures",
            "check the header (vbmd-rt info): HR-pQCT scans have 0.06-0.25 mm voxels",
        )
    nx, ny = header.dim[0], header.dim[1]
    if min(nx, ny) < MIN_SLICE_PIXELS or min(nx * el[0], ny * el[1]) < MIN_SLICE_MM:
        raise VbmdInputError(
            path,
            f"has slices of {nx} x {ny} voxels ({nx * el[0]:.3g} x {ny * el[1]:.3g} mm), too small to hold an MC2 "
            f"and its surroundings (at least {MIN_SLICE_PIXELS} voxels and {MIN_SLICE_MM:g} mm a side)",
            "pass the whole scan of the hand, not a cut-out (check the header: vbmd-rt info)",
        )
    cal = header.calibration
    why = None if cal is None else implausible_calibration(cal)
    if why:
        raise CalibrationError(
            path,
            f"has an impossible density calibration in its header: {why}",
            "check the scan's processing log (vbmd-rt info), or export it again from the scanner",
        )
    return header


def read_scan(path: Path, check=None) -> aim.Scan:
    """Read a greyscale scan (AIM or ISQ) into memory once, its whole content hashed in the same pass
    (``scan.fingerprint``, which ``scan.settle()`` or ``outputs.fingerprint_of`` completes: the hash's last
    chunks go on while the scan is analysed); refuse masks and impossible headers (``check_scan``, and ``check(header)``)
    before any voxel is read. A file that changes while it is read is refused, never a signal."""
    path = Path(path)
    if not path.exists():
        raise VbmdInputError(path, "no such file", "check the path")
    if path.is_dir():
        raise VbmdInputError(path, "is a folder", "give scan files or a folder of them")

    def checks(header):
        check_scan(path, header)
        if check is not None:
            check(header)

    try:
        return aim.read_whole(path, check=checks, hash_behind=True)  # run_scan takes the fingerprint at the end
    except PermissionError:
        raise VbmdInputError(path, "cannot be read (permission denied)", "check the file's permissions") from None


def model_sha(model: Model, backend: Backend) -> str | None:
    """The sha256 of the ONNX the backend runs (None for the weightless classical model)."""
    return backend.onnx_sha256 or model.sha256("fp32")


def run_key(model: Model, backend: Backend, options: RunOptions) -> dict:
    """What, besides the input, decides a result: a result is reused only when this matches."""
    sha = model_sha(model, backend)
    return {
        "model": model.name,
        "model_sha256": sha or f"{model.name}-{__version__}",  # the classical model is its code's version
        "precision": backend.precision,
        "side": options.side,
    }


def read_for_run(path: str | Path, model: Model, options: RunOptions | None = None) -> aim.Scan:
    """``read_scan`` with ``run``'s refusals from the header, before any voxel is read: ``check_scan`` and
    the memory the scan would need with this model (``resources.check_memory``). One open, one pass."""
    return read_scan(Path(path), check=_memory_check(path, model, options or RunOptions()))


def _memory_check(path: str | Path, model: Model, options: RunOptions):
    """``header -> None``: refuses a scan whose processing with this model would pass ``--max-memory``."""
    spec, one_bone = _memory_model(model)
    extra = resources.output_bytes_per_voxel(options.save_prob and model.classical, options.mask_format, options.export)

    def memory(h: aim.AimHeader) -> None:
        resources.check_memory(path, h.shape, h.spacing_zyx, spec, options.max_memory, one_bone, extra)

    return memory


def _memory_model(model: Model) -> tuple:
    """What ``resources.check_memory`` needs to know of a model: its preprocessing (None: the classical
    contour) and whether it draws one bone in a window round it."""
    return (None, True) if model.classical else (model.spec, bool(model.card.arch.bone_window))


def run_scan(
    path: str | Path,
    out: str | Path,
    model: Model,
    backend: Backend,
    options: RunOptions | None = None,
    stage=None,
    scan: aim.Scan | None = None,
    timer: Timer | None = None,
) -> dict:
    """Process one scan into ``out``; return the result written to ``OUT/NAME.json``.

    All of the scan's files appear together or not at all (``outputs.Transaction``), under the scan's lock
    in ``out``; files at the outputs' names that vbmd-rt did not write are refused without ``overwrite``.
    Raises ``VbmdInputError`` for problems the user must fix; then nothing of this scan changed in ``out``.
    ``scan``: the file already read (``read_for_run``, e.g. by a cohort that needed its fingerprint), so that
    it is not read again; ``timer`` then holds the time that read took.

    The file is opened once: read whole and hashed in one pass (``read_for_run``), its header checked before
    any voxel is read, so bad input is refused before anything is created in OUT.
    """
    options = options or RunOptions()
    timer = timer or Timer()
    if scan is None:
        with timer("read"):
            scan = read_for_run(path, model, options)
    else:  # read (and its header checked) by the caller: checked again from the header in memory, no open
        check_scan(Path(path), scan.header)
        _memory_check(path, model, options)(scan.header)
    with outputs.scan_lock(out, scan_name(Path(path))):
        return _run_scan(path, out, model, backend, options, stage, scan, timer)


def _run_scan(
    path, out, model: Model, backend: Backend, options: RunOptions, stage, scan: aim.Scan, timer: Timer
) -> dict:
    path, out = Path(path), Path(out)
    t_start = time.perf_counter() - sum(timer.seconds.values())  # what the caller timed for this scan counts
    name = scan_name(path)
    targets = [f.name for f in outputs_for(name, out, options.report_html, options.save_prob, options.export).values()]
    with outputs.Transaction(out, name, targets, options.overwrite) as txn:  # the JSON last
        files = outputs_for(name, txn.staging, options.report_html, options.save_prob, options.export)
        try:
            return _process(path, out, model, backend, options, stage, timer, t_start, files, txn, scan)
        except InputShapeError as e:  # a geometry the header allows but the model's engine cannot take
            raise VbmdInputError(
                path,
                f"its geometry does not fit the model ({e})",
                "check the dimensions and voxel size in the header (vbmd-rt info)",
            ) from None


def _process(path, out, model, backend, options, stage, timer, t_start, files, txn, scan=None) -> dict:
    stage = stage or (lambda s: None)
    stage("read")
    if scan is None:
        with timer("read"):
            scan = read_scan(path)
    stage("segment")
    a = analyse(
        scan.data,
        scan.spacing_zyx,
        scan.calibration,
        model,
        backend,
        options.side,
        timer,
        keep_prob=options.save_prob,
        path=path,
        max_memory=options.max_memory,
        log=scan.header.processing_log,
    )
    mask, info, m, cal = a.mask, a.info, a.measures, scan.calibration
    with timer("read"):  # the end of the read's hash, which went on in a second thread while the scan was analysed
        fp = outputs.fingerprint_of(scan)
    stage("write")
    rec = record_of(a, model, backend, cal, path, scan, fp, options, files["mask"].name)
    box = info.get("box")  # the network's work region bounds its mask
    written: list[Path] = []
    try:
        with timer("write"):
            check_writable_dir(out)
            entry = (
                f"MC2 periosteal mask by vbmd-rt ({model.name}, {backend.name}); "
                f"D100 {'n/a' if m['d100_mg_ha_cm3'] is None else format(m['d100_mg_ha_cm3'], '.1f')} mg HA/ccm"
            )
            comp = a.compartments
            written.extend((files["mask"], files["cort"], files["trab"], files["png"]))  # removed on failure
            done: dict = {}

            def seg():
                done["seg"] = masks.write_mask(
                    files["mask"], mask, scan.header, options.mask_format, entry, box, m["voxels"]
                )

            def compartment_masks():  # same format, same transaction as the SEG mask
                done["compartments"] = masks.write_compartments(
                    files,
                    None if comp is None else comp.labels,
                    None if comp is None else comp.box,
                    scan.header,
                    options.mask_format,
                    f"model {model.name}",
                )

            def picture(result=rec.to_json()):  # the picture shows the measures, QC and identity, not the files
                done["png"] = report.png_bytes(
                    report.montage(scan.data, mask, cal, box=box, result=result, compartments=comp)
                )
                atomic_write_bytes(files["png"], done["png"], overwrite=True)

            # Separate files, side by side; char masks (full-size arrays each) one after the other.
            each(lambda write: write(), (seg, compartment_masks, picture), 1 if options.mask_format == "char" else None)
            # the files written, then what the record already says of the mask (voxels, how its outline was set)
            rec.mask = {**done["seg"], **{k: v for k, v in rec.mask.items() if k != "file"}}
            rec.mask["compartments"] = done["compartments"]
            png = done["png"]
            if options.save_prob:
                prob = _prob_x100(info.get("prob"), mask, box)
                grid = _model_grid_header(scan.header, info["geometry"])  # its log without patient fields:
                grid = dataclasses.replace(grid, processing_log=proclog.public_log(grid.processing_log))
                aim.write_aim(
                    files["prob"],
                    prob,
                    grid,
                    type="char",
                    log_entry="MC2 probability x100 on the model grid",
                    values=masks.PROB_VALUES,
                    overwrite=True,
                )
                written.append(files["prob"])
            if options.export:  # into the staging folder: part of the scan's transaction
                name, staging = scan_name(path), files["mask"].parent
                written.extend(staging / n for n in export_names(name, options.export))
                cropped = options.mask_format == "cropped"
                nifti.export_pair(staging, name, scan, mask, options.export, cropped=cropped, box=box)
                if options.export != "mha":  # NAME.json is also the scan NIfTI's sidecar (runtime.io.nifti)
                    rec.extra.update(nifti.scan_sidecar(scan, options.export))
        rec.timings_s = result_timings(timer.seconds, STAGES, time.perf_counter() - t_start)
        if options.report_html:
            extra = report.details(scan.data, mask, cal, scan.spacing_zyx, box)
            atomic_write_bytes(
                files["html"],
                report.html_report(rec.to_json(), png, extra).encode("utf-8", "backslashreplace"),
                overwrite=True,
            )
            written.append(files["html"])
        if not outputs.unchanged_since(path, fp):
            raise outputs.InputChanged(
                path, "changed while it was being processed (still being copied?)", "run it again once complete"
            )
        rec.extra["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        result = rec.to_json()
        txn.commit(result)  # the staged files into OUT, the JSON last: all of them or none
    except BaseException:
        for f in written:  # nothing partial: a scan's outputs exist together or not at all
            with contextlib.suppress(OSError):
                f.unlink()
        raise
    return result


def _prob_x100(prob: np.ndarray | None, mask: np.ndarray, box) -> np.ndarray:
    """The probability file's values (uint8, 0-100): the network's probabilities on the model grid, or (None:
    the classical model) its native mask as 0/100, made in the mask's box only (the rest zero pages never
    written: a float copy of a full XtremeCT II stack was 8 GB)."""
    if prob is not None:
        return np.clip(np.rint(prob * 100), 0, 100).astype(np.uint8)
    out = sparse_zeros(mask.shape)
    sl = masks.bounding_box(mask, box)
    if sl is not None:
        np.multiply(mask[sl] != 0, np.uint8(100), out=out[sl], casting="unsafe")
    return out


def _model_grid_header(header: aim.AimHeader, geometry) -> aim.AimHeader:
    if geometry is None:  # the classical model's "probability" is its mask on the native grid
        return header
    scale = geometry.scale  # native voxels per model voxel (z, y, x)
    el = tuple(float(e) * s for e, s in zip(header.element_size_mm, scale[::-1], strict=True))
    return dataclasses.replace(header, element_size_mm=el, offset=(0, 0, 0))


STAGES = ("read", "preprocess", "identify", "inference", "postprocess", "vbmd", "qc", "write")
