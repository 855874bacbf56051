"""Native-resolution validation of a model on held-out cases, through the runtime's own pipeline.

Used at the end of training (``vbmd-rt train --final-eval``) and for the bundled model's card: each case
is segmented exactly as ``vbmd-rt run`` does it and compared with its true mask voxel for voxel; D100
is compared with the truth where the case has one. Results are grouped by motion grade and erosion.
"""

from __future__ import annotations

import time

import numpy as np
from vbmd_rt.export import data as dataset
from vbmd_rt.runtime import aim, measure, pipeline


def evaluate(pairs: list[dataset.Pair], model, backend, log=None) -> dict:
    """Per-case Dice / D100 error at native resolution and a summary by motion grade and erosion."""
    cases = []
    backend.activate()
    for p in pairs:
        t0 = time.perf_counter()
        scan = aim.read_aim(p.scan)
        truth = dataset.read_mask(p.mask, scan.header)
        mask, info = pipeline.segment(scan.data, model, backend)
        m = measure.vbmd(scan.data, mask, scan.header.element_size_mm, scan.calibration)
        t = measure.vbmd(scan.data, truth, scan.header.element_size_mm, scan.calibration)
        case = {
            "name": p.name, "dice": measure.dice(mask, truth), "voxel_mm": float(scan.header.element_size_mm[0]),
            "motion_grade": p.meta.get("motion_grade"), "eroded": bool(p.meta.get("erosions")),
            "side_true": p.meta.get("side"), "side_detected": info["side"],
            "d100_pred": m["d100_mg_ha_cm3"], "d100_true": t["d100_mg_ha_cm3"],
            "seconds": time.perf_counter() - t0,
        }
        cases.append(case)
        if log:
            log(f"{p.name}: Dice {case['dice']:.4f} grade {case['motion_grade']} side {case['side_detected']}")
    return {"cases": cases, "summary": summarise(cases)}


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min())}


def summarise(cases: list[dict]) -> dict:
    out = {"all": _stats(c["dice"] for c in cases)}
    for g in sorted({c["motion_grade"] for c in cases if c["motion_grade"] is not None}):
        out[f"grade_{g}"] = _stats(c["dice"] for c in cases if c["motion_grade"] == g)
    out["eroded"] = _stats(c["dice"] for c in cases if c["eroded"])
    for v in sorted({c["voxel_mm"] for c in cases}):
        out[f"voxel_{v:.3f}mm"] = _stats(c["dice"] for c in cases if c["voxel_mm"] == v)
    errs = [c["d100_pred"] - c["d100_true"] for c in cases if c["d100_pred"] is not None and c["d100_true"]]
    out["d100_error_mg_ha_cm3"] = _stats(errs)
    sided = [c for c in cases if c["side_true"]]
    if sided:
        out["side_accuracy"] = float(np.mean([c["side_true"] == c["side_detected"] for c in sided]))
    return out
