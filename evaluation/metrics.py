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


def icc(ratings: np.ndarray, alpha: float = 0.05) -> dict:
    """ICC(A,1) and ICC(C,1) of an (n subjects x k raters) table, from the two-way ANOVA mean squares,
    with their (1 - alpha) confidence intervals: F-based for ICC(C,1), McGraw & Wong's (1996, case 2A)
    approximation for ICC(A,1) (the intervals pingouin and R's irr report)."""
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    df_e = (n - 1) * (k - 1)
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / df_e
    a1 = float((msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n))
    c1 = float((msr - mse) / (msr + (k - 1) * mse))
    q = 1 - alpha / 2
    f_obs = msr / mse if mse > 0 else math.inf
    if math.isfinite(f_obs):
        fl = f_obs / stats.f.ppf(q, n - 1, df_e)
        fu = f_obs * stats.f.ppf(q, df_e, n - 1)
        c1_ci = [float((fl - 1) / (fl + k - 1)), float((fu - 1) / (fu + k - 1))]
    else:
        c1_ci = [1.0, 1.0]
    if a1 < 1 and mse > 0:
        a = k * a1 / (n * (1 - a1))
        b = 1 + k * a1 * (n - 1) / (n * (1 - a1))
        v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / df_e)
        f1, f2 = stats.f.ppf(q, n - 1, v), stats.f.ppf(q, v, n - 1)
        lo = n * (msr - f1 * mse) / (f1 * (k * msc + (k * n - k - n) * mse) + n * msr)
        hi = n * (f2 * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f2 * msr)
        a1_ci = [float(lo), float(hi)]
    else:
        a1_ci = [a1, a1]
    return {"icc_a1": a1, "icc_a1_ci95": a1_ci, "icc_c1": c1, "icc_c1_ci95": c1_ci}


EXACT_MAX_N = 9  # up to 9! = 362880 orderings: the Spearman p-value by enumerating every one


def spearman(a, b) -> dict:
    """Spearman's rho with its two-sided p-value: exact (every permutation of one variable) for
    n <= EXACT_MAX_N, where the t approximation is invalid; the t approximation above."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rho = float(stats.spearmanr(a, b).statistic)
    if a.size <= EXACT_MAX_N:
        import itertools

        ra, rb = stats.rankdata(a), stats.rankdata(b)
        ra, rb = ra - ra.mean(), rb - rb.mean()
        norm = math.sqrt(float((ra**2).sum() * (rb**2).sum())) or 1.0
        perms = np.array(list(itertools.permutations(range(a.size))), dtype=np.int8)
        null = (rb[perms] @ ra) / norm  # rho under every pairing of the cases
        p = float(np.mean(np.abs(null) >= abs(float(ra @ rb) / norm) - 1e-12))
        return {"rho": rho, "p": p, "p_method": f"exact (all {perms.shape[0]} permutations)"}
    return {"rho": rho, "p": float(stats.spearmanr(a, b).pvalue), "p_method": "t approximation"}


def bland_altman(a, b, alpha: float = 0.05) -> dict:
    """Bias, SD of the differences, 95% limits of agreement, and (1 - alpha) confidence intervals of the
    bias and of each limit (Bland & Altman 1999: SE of a limit ~ sd * sqrt(3 / n))."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    n = diff.size
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    t = float(stats.t.ppf(1 - alpha / 2, n - 1))
    se_bias, se_loa = sd / math.sqrt(n), sd * math.sqrt(3.0 / n)
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    return {
        "n": int(n),
        "bias": bias,
        "sd": sd,
        "loa_low": lo,
        "loa_high": hi,
        "bias_ci95": [bias - t * se_bias, bias + t * se_bias],
        "loa_low_ci95": [lo - t * se_loa, lo + t * se_loa],
        "loa_high_ci95": [hi - t * se_loa, hi + t * se_loa],
    }


def agreement(pred, truth) -> dict:
    """D100 agreement: Pearson (p exact under bivariate normality), Spearman (p exact at small n), ICC with
    95% CIs, Bland-Altman (bias, SD, 95% limits with their CIs), means."""
    a, b = np.asarray(pred, float), np.asarray(truth, float)
    if a.size < 3:
        return {"n": int(a.size)}
    pr, sr = stats.pearsonr(a, b), spearman(a, b)
    return {
        "n": int(a.size),
        "pearson_r": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "spearman_rho": sr["rho"],
        "spearman_p": sr["p"],
        "spearman_p_method": sr["p_method"],
        **icc(np.column_stack([b, a])),
        "icc_form": "ICC(A,1): two-way, absolute agreement, single measurement (Shrout-Fleiss ICC(2,1)); "
        "ICC(C,1): consistency (ICC(3,1)); 95% CIs after McGraw & Wong 1996",
        "bland_altman": bland_altman(a, b),
        "pred": mean_sd(a),
        "truth": mean_sd(b),
    }
