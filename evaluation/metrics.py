"""Agreement with expert contours, as in the paper's Table 1 and vBMD figures (numpy and scipy only).

Per case (native resolution): Dice, IoU, pixel accuracy, AUC of the probability map, the 95th-percentile
Hausdorff distance (mm). Per cohort: mean (SD) of each; for D100 Pearson and Spearman (with p-values),
the intraclass correlation ICC(A,1) (two-way, absolute agreement, single measurement; McGraw & Wong
1996, = Shrout & Fleiss ICC(2,1)) and ICC(C,1) (consistency), and Bland-Altman bias with 95% limits of
agreement.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, stats

from vbmd_rt.runtime.measure import overlap  # noqa: F401  (one implementation, re-exported)


def auc_from_levels(score: np.ndarray, truth: np.ndarray, levels: int = 101) -> float | None:
    """Area under the ROC curve of an integer score 0..levels-1 against a mask (ties count a half).

    Exact for quantised scores (``run --save-prob`` stores the probability x100): the Mann-Whitney
    statistic from the two histograms. ``None`` when the truth has no inside or no outside.
    """
    pos = np.zeros(levels, np.int64)
    neg = np.zeros(levels, np.int64)
    for k in range(score.shape[0]):
        s = np.clip(np.asarray(score[k]), 0, levels - 1).astype(np.int64).ravel()
        t = (np.asarray(truth[k]) != 0).ravel()
        pos += np.bincount(s[t], minlength=levels)
        neg += np.bincount(s[~t], minlength=levels)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.concatenate([[0], np.cumsum(neg)[:-1]])  # negatives with a lower score than each level
    u = float((pos * below).sum() + 0.5 * (pos * neg).sum())
    return u / (n_pos * n_neg)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx, margin: int = 3) -> float | None:
    """95th-percentile Hausdorff distance in mm between the surfaces of two masks.

    The larger of the two directed 95th percentiles (as MedPy's ``hd95``), computed inside the union's
    bounding box (plus a margin) with the voxel spacing. ``None`` when either mask is empty.
    """
    box = ndimage.find_objects(((np.asarray(pred) != 0) | (np.asarray(truth) != 0)).astype(np.uint8))
    if not box or box[0] is None:
        return None
    sl = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in box[0])
    p, t = np.asarray(pred[sl]) != 0, np.asarray(truth[sl]) != 0
    if not p.any() or not t.any():
        return None
    sp, st = _surface(p), _surface(t)
    d_to_t = ndimage.distance_transform_edt(~st, sampling=spacing_zyx)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing_zyx)
    return float(max(np.percentile(d_to_t[sp], 95), np.percentile(d_to_p[st], 95)))


# --------------------------------------------------------------------------- cohort statistics


def mean_sd(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return {"n": 0, "mean": None, "sd": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def icc(ratings: np.ndarray) -> dict:
    """ICC(A,1) and ICC(C,1) of an (n subjects x k raters) table, from the two-way ANOVA mean squares."""
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    return {
        "icc_a1": float((msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)),
        "icc_c1": float((msr - mse) / (msr + (k - 1) * mse)),
    }


def agreement(pred, truth) -> dict:
    """D100 agreement: Pearson, Spearman (p-values), ICC, Bland-Altman (bias, SD, 95% limits), means."""
    a, b = np.asarray(pred, float), np.asarray(truth, float)
    if a.size < 3:
        return {"n": int(a.size)}
    diff = a - b
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return {
        "n": int(a.size),
        "pearson_r": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "spearman_rho": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
        **icc(np.column_stack([b, a])),
        "icc_form": "ICC(A,1): two-way, absolute agreement, single measurement (Shrout-Fleiss ICC(2,1)); "
        "ICC(C,1): consistency (ICC(3,1))",
        "bland_altman": {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd},
        "pred": mean_sd(a),
        "truth": mean_sd(b),
    }
