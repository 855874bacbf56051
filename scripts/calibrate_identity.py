"""Fit the identification stage's evidence weights on training-family phantoms (never the held-out ones).

    python scripts/calibrate_identity.py DATA/train_rand DATA/train_std [--out weights.json]
        [--stream 300 --stream-seed 21000 --cache candidates.pkl]

For every case: the model grid, the bone instances and metacarpal candidates of ``runtime.identify``; the
true MC2 is the candidate whose region overlaps the phantom's truth mask. The weights maximise the
likelihood of the true MC2 under a conditional logit over the case's namings (each MC2 candidate summed
over its thumb hypotheses), with a small L2 penalty. Prints the accuracy before and after, and the weights
to paste into ``runtime.identify.WEIGHTS``.

``--stream N``: N more phantoms of the training families (``HOLD_OUT`` of ``train_default_model.py``: never
the held-out textures and shapes), made one at a time into a temporary folder, reduced to their candidates
and deleted (the candidates of 300 cases take 20 minutes and no disk). The bundled weights are this fit on
the 889 training-family phantoms with a naming of ``scripts/identity_errors.py``'s cache (seeds 21000 and
22000, instances made again by the current code: ``identity_errors.py fit --remake``), 91.7 % right.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from vbmd_rt.runtime import bonewin, identify
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.preprocess import to_model_mask


def case_bones(scan_path: Path, gt_path: Path):
    """(metacarpal candidates, index of the true MC2 among them) or None."""
    scan = aim.read_aim(scan_path)
    spacing = scan.spacing_zyx
    vol, geo = bonewin.model_volume(scan.data, spacing, scan.calibration)
    labels, bones = identify.find_candidates(vol, bonewin.GRID.spacing_mm)
    truth = to_model_mask(np.asarray(aim.read_aim(gt_path).data) != 0, geo) > 0.5
    t = identify.reduce2(truth) > 0.5
    z = min(t.shape[0], labels.shape[0])
    overlap = [int((labels[:z] == b.label)[t[:z]].sum()) for b in bones]
    if len(bones) < 2 or max(overlap) == 0:
        return None
    return bones, int(np.argmax(overlap))


def case_features(bones, true):
    """(features per naming, MC2 candidate per naming, index of the true MC2 candidate) or None."""
    feats, owners = [], []
    for mc2, _thumb, f in identify.namings(bones):
        feats.append(f)
        owners.append(mc2)
    if true not in owners:
        return None
    return np.array(feats), np.array(owners), true


def loglik(w, cases, l2=0.05):
    total = 0.0
    for f, owners, true in cases:
        s = f @ w
        total += logsumexp(s[owners == true]) - logsumexp(s)
    return -total + l2 * float(w @ w)


def accuracy(w, cases) -> float:
    right = 0
    for f, owners, true in cases:
        s = f @ w
        per = {o: logsumexp(s[owners == o]) for o in set(owners.tolist())}
        right += max(per, key=per.get) == true
    return right / max(1, len(cases))


#: The sign anatomy gives a feature's weight (+1: evidence for the naming, -1: against; absent: free). The fit
#: keeps to them, so that collinear evidence cannot turn a fact of anatomy around (a thumb next to MC2 made
#: less likely because "beyond MC2" already counts it).
SIGNS = {
    "row2_head": -1,  # of two metacarpals, MC3's head is the larger
    "row3_head": +1,  # of three or more, the far end (MC4, MC5) has the smaller head
    "row2_joint": -1,  # MC3's joint is the more distal
    "row3_joint": +1,
    "thumb_off_row": +1,
    "thumb_beyond": +1,
    "thumb_next_to_mc2": +1,
    "thumb_distance": -1,
    "thumb_joint_off": +1,
    "thumb_lobe": +1,  # the thumb lies in the thenar eminence, a lobe of the hand's outline of its own
    "no_thumb_end_off_row": -1,
    "row_residual": -1,
    "trend_head": +1,
    "trend_joint": +1,
}


def bounds(free: bool = False) -> list[tuple[float | None, float | None]]:
    """Each weight's bounds in the fit: its anatomical sign (``SIGNS``; none with ``free``), and a weight set
    from anatomy rather than fitted (``identify.NOT_FITTED``) held where it is."""

    def one(k: str) -> tuple[float | None, float | None]:
        if k in identify.NOT_FITTED:
            return identify.WEIGHTS[k], identify.WEIGHTS[k]
        if free:
            return None, None
        return (0.0, None) if SIGNS.get(k) == 1 else ((None, 0.0) if SIGNS.get(k) == -1 else (None, None))

    return [one(k) for k in identify.FEATURES]


def inside(w: np.ndarray, box: list[tuple[float | None, float | None]]) -> np.ndarray:
    """``w`` clipped into the bounds ``box`` (``bounds``): a fit's start."""
    return np.clip(w, *np.array([(-np.inf if lo is None else lo, np.inf if hi is None else hi) for lo, hi in box]).T)


def load_cases(folders, found: dict) -> tuple[list, int]:
    cases, skipped = [], 0
    for folder in folders:
        for gt in sorted(folder.glob("*_GT.AIM")):
            key = str(gt)
            if key not in found:
                found[key] = case_bones(gt.with_name(gt.name[: -len("_GT.AIM")] + ".AIM"), gt)
            c = None if found[key] is None else case_features(*found[key])
            if c is None:
                skipped += 1
            else:
                cases.append(c)
    return cases, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="keep the candidates here (a refit is then instant)")
    ap.add_argument("--stream", type=int, default=0, help="also N phantoms of the training families, made and deleted")
    ap.add_argument("--stream-seed", type=int, default=21000)
    ap.add_argument("--free", action="store_true", help="fit without the anatomical signs (SIGNS), to compare")
    ap.add_argument("--test", type=Path, nargs="*", default=[], help="folders only scored, never fitted on")
    a = ap.parse_args()
    found = pickle.loads(a.cache.read_bytes()) if a.cache and a.cache.exists() else {}
    cases, skipped = load_cases(a.folders, found)
    if a.stream:
        from train_default_model import HOLD_OUT

        from vbmd_rt.synth import phantom

        tmp = Path(tempfile.mkdtemp(prefix="vbmd_rt_calib_"))
        try:
            for i in range(a.stream):
                key = f"stream/{a.stream_seed}/{i}"
                if key not in found:
                    phantom.synth_case(tmp, i, a.stream_seed, "small", f"random:{HOLD_OUT}")
                    name = phantom.case_name(i)
                    found[key] = case_bones(tmp / f"{name}.AIM", tmp / f"{name}_GT.AIM")
                    for f in tmp.glob(name + "*"):
                        f.unlink()
                c = None if found[key] is None else case_features(*found[key])
                if c is None:
                    skipped += 1
                else:
                    cases.append(c)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if a.cache:  # before the fit: the candidates are the costly part
        a.cache.write_bytes(pickle.dumps(found))
    w0 = np.array([identify.WEIGHTS[k] for k in identify.FEATURES])
    print(f"{len(cases)} cases ({skipped} without a named choice: one candidate, or MC2 not a candidate)")
    print(f"accuracy with the current weights: {accuracy(w0, cases):.3f}")
    start = inside(w0, bounds(a.free))
    res = minimize(loglik, start, args=(cases,), method="L-BFGS-B", bounds=bounds(a.free))
    w = res.x
    print(f"accuracy after fitting: {accuracy(w, cases):.3f} (log-likelihood {-res.fun:.1f})")
    for k in range(5):  # five-fold: how well the fit carries to cases it did not see
        train = [c for i, c in enumerate(cases) if i % 5 != k]
        held = [c for i, c in enumerate(cases) if i % 5 == k]
        wk = minimize(loglik, start, args=(train,), method="L-BFGS-B", bounds=bounds(a.free)).x
        print(f"  fold {k}: {accuracy(wk, held):.3f} on {len(held)} unseen cases")
    if a.test:
        test, _ = load_cases(a.test, found)
        if a.cache:
            a.cache.write_bytes(pickle.dumps(found))
        print(
            f"test folders ({len(test)} cases, not fitted on): current weights {accuracy(w0, test):.3f}, fitted {accuracy(w, test):.3f}"
        )
    weights = {k: round(float(v), 2) for k, v in zip(identify.FEATURES, w, strict=True)}
    print(json.dumps(weights))
    if a.out:
        a.out.write_text(json.dumps(weights, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
