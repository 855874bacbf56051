"""Native-resolution validation of a model on held-out cases, through the runtime's own pipeline.

Used by ``scripts/validate_model.py`` for the bundled model's card and by ``vbmd-rt eval``: each case
is segmented exactly as ``vbmd-rt run`` does it and compared with its true mask voxel for voxel; D100
is compared with the truth where the case has one. Results are grouped by motion grade and erosion.
"""

from __future__ import annotations

import time

import numpy as np

from vbmd_rt.evaluation import metrics
from vbmd_rt.runtime import measure, pipeline
from vbmd_rt.runtime.inference.base import Backend
from vbmd_rt.runtime.io import aim, dataset
from vbmd_rt.runtime.model import Model


def evaluate(pairs: list[dataset.Pair], model: Model, backend: Backend, log=None) -> dict:
    """Per-case Dice / D100 error at native resolution and a summary by motion grade and erosion."""
    cases = []
    with backend:
        for p in pairs:
            t0 = time.perf_counter()
            scan = aim.read_aim(p.scan)
            truth = dataset.read_mask(p.mask, scan.header)
            mask, info = pipeline.segment(
                scan.data, model, backend, spacing_zyx=scan.spacing_zyx, calibration=scan.calibration
            )
            m = measure.vbmd(scan.data, mask, scan.spacing_zyx, scan.calibration)
            t = measure.vbmd(scan.data, truth, scan.spacing_zyx, scan.calibration)
            case = {
                "name": p.name,
                "dice": measure.dice(mask, truth),
                "voxel_mm": float(scan.header.element_size_mm[0]),
                "motion_grade": p.meta.get("motion_grade"),
                "eroded": bool(p.meta.get("erosions")),
                "side_true": p.meta.get("side"),
                "side_detected": info["side"],
                "d100_pred": m["d100_mg_ha_cm3"],
                "d100_true": t["d100_mg_ha_cm3"],
                "seconds": time.perf_counter() - t0,
            }
            cases.append(case)
            if log:
                log(f"{p.name}: Dice {case['dice']:.4f} grade {case['motion_grade']} side {case['side_detected']}")
    return {"cases": cases, "summary": summarise(cases)}


def summarise(cases: list[dict]) -> dict:
    out = {"all": metrics.mean_sd(c["dice"] for c in cases)}
    for g in sorted({c["motion_grade"] for c in cases if c["motion_grade"] is not None}):
        out[f"grade_{g}"] = metrics.mean_sd(c["dice"] for c in cases if c["motion_grade"] == g)
    out["eroded"] = metrics.mean_sd(c["dice"] for c in cases if c["eroded"])
    for v in sorted({c["voxel_mm"] for c in cases}):
        out[f"voxel_{v:.3f}mm"] = metrics.mean_sd(c["dice"] for c in cases if c["voxel_mm"] == v)
    errs = [c["d100_pred"] - c["d100_true"] for c in cases if c["d100_pred"] is not None and c["d100_true"]]
    out["d100_error_mg_ha_cm3"] = metrics.mean_sd(errs)
    sided = [c for c in cases if c["side_true"]]
    if sided:
        out["side_accuracy"] = float(np.mean([c["side_true"] == c["side_detected"] for c in sided]))
    return out


# --------------------------------------------------------------------------- vbmd-rt eval (outputs vs truth)


def _prob_at_native(prob: np.ndarray, shape) -> np.ndarray:
    """``run --save-prob``'s map (model grid, same physical extent) sampled onto the native grid."""
    import cv2

    nz = prob.shape[0]
    out = np.empty(shape, np.uint8)
    for k in range(shape[0]):
        src = np.asarray(prob[min(nz - 1, int((k + 0.5) * nz / shape[0]))])
        out[k] = cv2.resize(src, (shape[2], shape[1]), interpolation=cv2.INTER_LINEAR)
    return out


def evaluate_case(pair: dataset.Pair, pred_dir, result: dict) -> dict:
    """One case's metrics at native resolution: a ``run`` output folder's mask (and map) against the truth."""
    from pathlib import Path

    pred_dir = Path(pred_dir)
    scan = pipeline.read_scan(pair.scan)
    truth = dataset.read_mask(pair.mask, scan.header)
    pred = dataset.read_mask(pred_dir / result["mask"]["file"], scan.header)
    spacing = scan.spacing_zyx
    case = {
        "name": pair.name,
        **{k: v for k, v in metrics.overlap(pred, truth).items() if k in ("dice", "iou", "accuracy")},
    }
    prob_file = pred_dir / f"{pair.name}_PROB.AIM"
    case["auc"] = (
        metrics.auc_from_levels(_prob_at_native(np.asarray(aim.read_aim(prob_file).data), truth.shape), truth)
        if prob_file.is_file()
        else None
    )
    case["hd95_mm"] = metrics.hd95(pred, truth, spacing)
    t = measure.vbmd(scan.data, truth, scan.spacing_zyx, scan.calibration)
    case.update(
        {
            "d100_pred": result.get("d100_mg_ha_cm3"),
            "d100_true": pair.meta.get("d100_mg_ha_cm3", t["d100_mg_ha_cm3"]),
            "area_pred_mm2": result.get("mean_slice_area_mm2"),
            "area_true_mm2": t["mean_slice_area_mm2"],
            "motion_grade": pair.meta.get("motion_grade"),
            "eroded": bool(pair.meta.get("erosions")),
            "side_true": pair.meta.get("side"),
            "side_pred": result.get("side"),
            "backend": result.get("backend", {}).get("name"),
            "model": result.get("model", {}).get("name"),
        }
    )
    if case["d100_pred"] is not None and case["d100_true"] is not None:
        case["d100_error"] = case["d100_pred"] - case["d100_true"]
    case["compartments"] = compartment_pairs(result.get("compartments"), pair.meta)
    return case


# The compartments a phantom's truth gives (``synth.phantom.compartment_truth``), compared per parameter.
COMPARTMENT_KEYS = ("ct_bmd_mg_ha_cm3", "tb_bmd_mg_ha_cm3", "ct_th_mm", "ct_ar_mm2", "tb_ar_mm2", "tt_ar_mm2")


def compartment_pairs(pred: dict | None, truth_meta: dict) -> dict:
    """{parameter: [measured, true]} for the compartments both the result and the truth JSON have."""
    truth = {
        **(truth_meta.get("compartments") or {}),
        **{k: truth_meta[k] for k in COMPARTMENT_KEYS if k in truth_meta},
    }
    if not pred:
        return {}
    return {k: [pred[k], truth[k]] for k in COMPARTMENT_KEYS if pred.get(k) is not None and truth.get(k) is not None}


def compartment_agreement(cases: list[dict]) -> dict:
    """Per parameter: agreement of measured with true (bias, limits of agreement, ICC, ... as for D100) and the
    largest absolute error."""
    out = {}
    for k in COMPARTMENT_KEYS:
        pairs = [c["compartments"][k] for c in cases if k in (c.get("compartments") or {})]
        if not pairs:
            continue
        a, b = np.array(pairs, dtype=float).T
        out[k] = {**metrics.agreement(a, b), "max_abs_error": float(np.max(np.abs(a - b))), "n": len(pairs)}
    return out


def evaluate_outputs(pred_dir, truth, d100_cases: int | None = None, log=None) -> dict:
    """Every case of ``truth`` (a dataset folder or CSV) that ``pred_dir`` has a result for.

    ``d100_cases``: the D100 statistics use the first N cases by name (the paper: 30 of its 54).
    """
    import json
    from pathlib import Path

    from vbmd_rt.runtime.errors import VbmdInputError

    pred_dir = Path(pred_dir)
    pairs = dataset.discover(truth)
    cases, missing = [], []
    for p in pairs:
        js = pred_dir / f"{p.name}.json"
        if not js.is_file():
            missing.append(p.name)
            continue
        try:
            result = json.loads(js.read_text())
        except ValueError:
            raise VbmdInputError(js, "is not a valid result JSON", "run `vbmd-rt run` again for this scan") from None
        cases.append(evaluate_case(p, pred_dir, result))
        if log:
            c = cases[-1]
            log(
                f"{p.name}: Dice {c['dice']:.4f}, IoU {c['iou']:.4f}, HD95 "
                f"{'n/a' if c['hd95_mm'] is None else format(c['hd95_mm'], '.2f')} mm"
            )
    if not cases:
        raise VbmdInputError(
            pred_dir,
            "has no results for the cases in the truth folder",
            "run `vbmd-rt run TRUTH -o PRED` first (names must match)",
        )
    d100 = [c for c in cases if c.get("d100_error") is not None][: d100_cases or None]
    cohort = {k: metrics.mean_sd(c[k] for c in cases) for k in ("dice", "iou", "accuracy", "auc", "hd95_mm")}
    cohort["area_pred_mm2"] = metrics.mean_sd(c["area_pred_mm2"] for c in cases)
    cohort["area_true_mm2"] = metrics.mean_sd(c["area_true_mm2"] for c in cases)
    groups = {}
    for g in sorted({c["motion_grade"] for c in cases if c["motion_grade"] is not None}):
        groups[f"motion grade {g}"] = metrics.mean_sd(c["dice"] for c in cases if c["motion_grade"] == g)
    if any(c["eroded"] for c in cases):
        groups["eroded"] = metrics.mean_sd(c["dice"] for c in cases if c["eroded"])
    sided = [c for c in cases if c["side_true"]]
    return {
        "pred": str(pred_dir),
        "truth": str(truth),
        "cases": cases,
        "missing": missing,
        "models": sorted({c["model"] for c in cases if c["model"]}),
        "backends": sorted({c["backend"] for c in cases if c["backend"]}),
        "segmentation": cohort,
        "dice_by_group": groups,
        "d100": {
            **metrics.agreement([c["d100_pred"] for c in d100], [c["d100_true"] for c in d100]),
            "cases": [c["name"] for c in d100],
        },
        "side_accuracy": float(np.mean([c["side_true"] == c["side_pred"] for c in sided])) if sided else None,
        "compartments": compartment_agreement(cases),
    }


def _fmt(s: dict, digits: int = 3) -> str:
    return "n/a" if not s or s.get("mean") is None else f"{s['mean']:.{digits}f} ({s['sd']:.{digits}f})"


def _ci(ci, digits: int = 2) -> str:
    return "" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def markdown(report: dict) -> str:
    seg, d = report["segmentation"], report["d100"]
    lines = [
        f"# Evaluation: {', '.join(report['models']) or 'model'} ({', '.join(report['backends'])})",
        "",
        f"{len(report['cases'])} cases, native resolution; mean (SD).",
        "",
        "| IoU | Dice | Accuracy | AUC | HD95 (mm) |",
        "|---|---|---|---|---|",
        f"| {_fmt(seg['iou'])} | {_fmt(seg['dice'])} | {_fmt(seg['accuracy'], 4)} | {_fmt(seg['auc'], 4)} | "
        f"{_fmt(seg['hd95_mm'], 2)} |",
        "",
    ]
    if report["dice_by_group"]:
        lines += ["| group | n | Dice |", "|---|---|---|"]
        lines += [f"| {g} | {s['n']} | {_fmt(s)} |" for g, s in report["dice_by_group"].items()] + [""]
    if d.get("n", 0) >= 3:
        ba = d["bland_altman"]
        lines += [
            f"D100 on {d['n']} cases: reference {_fmt(d['truth'], 2)}, automatic {_fmt(d['pred'], 2)} mg HA/cm³; "
            f"Pearson r {d['pearson_r']:.4f} (p {d['pearson_p']:.2g}), Spearman ρ {d['spearman_rho']:.4f} "
            f"(p {d['spearman_p']:.2g}, {d.get('spearman_p_method', 't approximation')}), "
            f"ICC(A,1) {d['icc_a1']:.4f} {_ci(d.get('icc_a1_ci95'), 3)}, "
            f"ICC(C,1) {d['icc_c1']:.4f} {_ci(d.get('icc_c1_ci95'), 3)}; "
            f"Bland-Altman bias {ba['bias']:+.2f} {_ci(ba.get('bias_ci95'))}, 95% limits of agreement "
            f"{ba['loa_low']:+.2f} {_ci(ba.get('loa_low_ci95'))} to {ba['loa_high']:+.2f} {_ci(ba.get('loa_high_ci95'))} "
            "(95% CIs in brackets).",
            "",
        ]
    lines.append(
        f"Mean slice area: reference {_fmt(seg['area_true_mm2'], 2)}, automatic {_fmt(seg['area_pred_mm2'], 2)} mm²."
    )
    comp = report.get("compartments") or {}
    if comp:
        lines += [
            "",
            "Compartments (measured on the run's mask against the phantom's true compartments):",
            "",
            "| parameter | n | bias | 95% limits of agreement | ICC(A,1) | largest error |",
            "|---|---|---|---|---|---|",
        ]
        for k, a in comp.items():
            ba = a.get("bland_altman")
            if not ba:
                lines.append(f"| {k} | {a['n']} | | | | {a['max_abs_error']:.3f} |")
                continue
            lines.append(
                f"| {k} | {a['n']} | {ba['bias']:+.3f} | {ba['loa_low']:+.3f} to {ba['loa_high']:+.3f} | "
                f"{a['icc_a1']:.3f} | {a['max_abs_error']:.3f} |"
            )
    if report["missing"]:
        lines += ["", f"No result for {len(report['missing'])} truth cases: {', '.join(report['missing'][:10])}"]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plots(report: dict) -> dict[str, bytes]:
    """D100 scatter and Bland-Altman plots as PNG bytes (matplotlib, the ``eval`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    cases = [c for c in report["cases"] if c["name"] in set(report["d100"].get("cases", []))]
    if len(cases) < 3:
        return {}
    a = np.array([c["d100_pred"] for c in cases])
    b = np.array([c["d100_true"] for c in cases])
    d, out = report["d100"], {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(b, a, s=14, color="#1f77b4")
    lo, hi = float(min(a.min(), b.min())) - 10, float(max(a.max(), b.max())) + 10
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="reference D100 (mg HA/cm³)",
        ylabel="automatic D100 (mg HA/cm³)",
        title=f"n = {len(cases)}, r = {d['pearson_r']:.4f}\n"
        f"ICC(A,1) = {d['icc_a1']:.3f} {_ci(d.get('icc_a1_ci95'), 3)} (95% CI)",
    )
    ax.text(
        0.03,
        0.97,
        f"Spearman ρ {d['spearman_rho']:.3f}, p {d['spearman_p']:.2g}\n({d.get('spearman_p_method', '')})",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )
    out["d100_scatter.png"] = _png(fig)
    ba = d["bland_altman"]
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    ax.axhline(0, color="0.6", lw=0.8, zorder=0)  # no difference
    for key in ("bias", "loa_low", "loa_high"):
        ci = ba.get(f"{key}_ci95")
        if ci:
            ax.axhspan(ci[0], ci[1], color="#1f77b4" if key == "bias" else "#d62728", alpha=0.12, lw=0)
    ax.scatter((a + b) / 2, a - b, s=14, color="#1f77b4")
    for y, style in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
        ax.axhline(y, color="k", ls=style, lw=0.8)
    ax.set(
        xlabel="mean of the two D100 (mg HA/cm³)",
        ylabel="automatic − reference (mg HA/cm³)",
        title=f"n = {len(cases)}: bias {ba['bias']:+.2f} {_ci(ba.get('bias_ci95'))}\n"
        f"95% limits {ba['loa_low']:+.2f} / {ba['loa_high']:+.2f} (shaded: their 95% CIs)",
    )
    out["bland_altman.png"] = _png(fig)
    return out


def write_report(report: dict, out) -> list:
    """REPORT/eval.json, eval.md, cases.csv and the two plots, each written atomically."""
    import csv
    import io
    import json
    from pathlib import Path

    from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir

    out = check_writable_dir(Path(out))
    files = {"eval.json": (json.dumps(report, indent=2) + "\n").encode(), "eval.md": markdown(report).encode()}
    buf = io.StringIO()
    keys = list(report["cases"][0])
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for c in report["cases"]:
        w.writerow({k: "" if c.get(k) is None else c[k] for k in keys})
    files["cases.csv"] = buf.getvalue().encode()
    files.update(plots(report))
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    return [out / n for n in files]
