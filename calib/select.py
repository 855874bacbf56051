"""Calibration data for INT8: model-space inputs picked from scans (``vbmd-rt calib DATA -o calib.npz``).

The picks are spread over cases, over positions along each scan (shaft, head, joint, phalanx base) and
over motion grades where a scan says its grade (the phantoms' ``NAME.truth.json``): grades take turns,
cases within a grade take turns, and each case's picks are spread over its length. Inputs are made by
the runtime's own preprocessing, so calibration sees what inference sees: for the 2D net single slices;
for the 3D net windows of fixed size (z, y, x multiples of 16) cut around the hand. A share of the cases
is held out: the INT8 gate compares INT8 with FP32 on those, never on what it was calibrated with.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from vbmd_rt.runtime import pipeline, preprocess
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import naming
from vbmd_rt.runtime.io.atomic import atomic_write_bytes
from vbmd_rt.runtime.model import Model

WINDOW_3D = (32, 256, 448)  # (z, y, x) of a 3D calibration window


def _grade(path: Path) -> int | None:
    truth = path.with_name(f"{naming.scan_name(path)}.truth.json")
    try:
        return int(json.loads(truth.read_text())["motion_grade"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan(files: list[Path], count: int, heldout: float = 0.25, seed: int = 0) -> dict:
    """Which case gives which relative slice positions: {"calibration": [(path, [pos...])...], "heldout": [...]}."""
    if len(files) < 2:
        raise VbmdInputError(
            files[0] if files else None,
            "calibration needs at least two scans",
            "give a folder with scans of several cases",
        )
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(files)))
    n_held = max(1, int(round(heldout * len(files))))
    held, calib = [files[i] for i in order[:n_held]], [files[i] for i in order[n_held:]]
    by_grade: dict = {}
    for f in calib:
        by_grade.setdefault(_grade(f), []).append(f)
    queues = [sorted(v) for _, v in sorted(by_grade.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    picks: dict[Path, int] = {}
    i = 0
    while sum(picks.values()) < count:  # grades take turns, then cases within a grade
        q = queues[i % len(queues)]
        f = q[(i // len(queues)) % len(q)]
        picks[f] = picks.get(f, 0) + 1
        i += 1
    spread = {}
    for f, n in picks.items():  # evenly over the scan's length, with a little jitter
        pos = (np.arange(n) + 0.5) / n + rng.uniform(-0.25, 0.25, n) / n
        spread[f] = [float(p) for p in np.clip(pos, 0.0, 1.0)]
    return {"calibration": sorted(spread.items()), "heldout": sorted(held)}


def _fixed(vol: np.ndarray, shape: tuple[int, int, int], centre_z: int) -> np.ndarray:
    """A (z, y, x) window of ``shape`` around ``centre_z``, centred in y/x, padded with the edge value."""
    out = np.full(shape, float(vol.min()), np.float32)
    z0 = int(np.clip(centre_z - shape[0] // 2, 0, max(0, vol.shape[0] - shape[0])))
    src = vol[z0 : z0 + shape[0]]
    sl_src, sl_dst = [], []
    for n_src, n_dst in zip(src.shape[1:], shape[1:], strict=True):
        c = min(n_src, n_dst)
        a, b = (n_src - c) // 2, (n_dst - c) // 2
        sl_src.append(slice(a, a + c))
        sl_dst.append(slice(b, b + c))
    out[: src.shape[0], sl_dst[0], sl_dst[1]] = src[:, sl_src[0], sl_src[1]]
    return out


def samples(model: Model, path: Path, positions: list[float]) -> list[np.ndarray]:
    scan = pipeline.read_scan(path)
    vol, _ = preprocess.to_model(scan.data, model.spec, spacing_zyx=scan.spacing_zyx)
    if model.card.arch.bone_window:  # the runtime's own inputs: identified bone, its window, one slice each
        from vbmd_rt.runtime import bonewin, identify

        vol = bonewin.to_input_units(vol, scan.calibration)
        idt = identify.identify(vol, float(model.spec.spacing_mm), log=scan.header.processing_log, path=path)
        if idt.stack.reversed:  # its region lies on the stack turned end to end
            vol = vol[::-1]
        win = bonewin.place(idt.region, int(round(bonewin.EXTEND_MM / model.spec.spacing_mm)))
        image = bonewin.cut(vol[win.z0 : win.z1], win, float(np.percentile(vol[:, ::8, ::8], 1)))
        pri = bonewin.prior(bonewin.cut(idt.region[win.z0 : win.z1], win, False))
        ks = [int(round(p * (image.shape[0] - 1))) for p in positions]
        return [x for x in bonewin.batch(image, pri, ks, bonewin.odd_slices(image, pri))]  # (CHANNELS, size, size) each
    out = []
    for p in positions:
        k = int(round(p * (vol.shape[0] - 1)))
        if model.architecture == "unet2d":
            out.append(np.ascontiguousarray(vol[k : k + 1]))  # (1, y, x)
        else:
            out.append(_fixed(vol, WINDOW_3D, k)[None])  # (1, z, y, x)
    return out


def collect(
    model: Model, data: list[str | Path], count: int = 64, heldout: float = 0.25, seed: int = 0, log=None
) -> dict:
    if model.classical:
        raise VbmdInputError(None, "the classical model has no network to calibrate", "give an exported model")
    files = naming.expand_inputs(data)
    p = plan(files, count, heldout, seed)
    arrays, meta = [], []
    for f, positions in p["calibration"]:
        for pos, x in zip(positions, samples(model, f, positions), strict=True):
            arrays.append(x)
            meta.append({"case": naming.scan_name(f), "position": round(pos, 4), "motion_grade": _grade(f)})
        if log:
            log(f"{f.name}: {len(positions)} picks")
    held = [(naming.scan_name(f), samples(model, f, [0.25, 0.5, 0.75])) for f in p["heldout"]]
    name = model.card.input.name
    return {
        name: np.stack(arrays).astype(np.float32),
        "heldout": np.stack([x for _, xs in held for x in xs]).astype(np.float32),
        "meta": json.dumps(
            {
                "picks": meta,
                "heldout_cases": [n for n, _ in held],
                "model": model.name,
                "model_sha256": model.sha256("fp32"),
                "input": name,
                "seed": seed,
            }
        ),
    }


def save(arrays: dict, out: str | Path) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)


def load(path: str | Path) -> tuple[dict, dict]:
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return {k: z[k] for k in z.files if k != "meta"}, meta
    except (OSError, ValueError, KeyError) as e:
        raise VbmdInputError(
            path,
            f"is not a calibration file from `vbmd-rt calib` ({type(e).__name__})",
            "make one with `vbmd-rt calib DATA -o calib.npz`",
        ) from None
