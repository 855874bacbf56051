"""The identification stage's measurements against the phantoms' truth, and its naming, on a cache of instances.

    python scripts/identity_errors.py cache CACHE FOLDERS...          # phantom folders (vbmd-rt synth)
    python scripts/identity_errors.py cache CACHE --stream 300 --stream-seed 21000   # training families
    python scripts/identity_errors.py score CACHE [--group ident qc_rand] [--weights W.json] [--show] [--remake]
    python scripts/identity_errors.py fit CACHE --train stream21000 stream22000 [--out W.json] [--remake]
    python scripts/identity_errors.py sesamoids CACHE [--group stream21000 train6000]

``cache`` keeps, per phantom, what is costly to make: the instance labels of ``identify.find_candidates``
(the 2x coarse grid, pieces joined) and the coarse volume, with the generator's bones (centre, shaft and head
cross-sections, the head's tip) in the same frame and the label under the true MC2 mask. 0.5-1 s a phantom;
``--stream`` makes training-family phantoms one at a time in a temporary folder and deletes them.

``score`` re-runs ``identify.candidates`` and ``identify.name`` on the cached labels (a second a hundred
phantoms; with ``--remake``, the instances too, from the cached coarse volume: a minute for a thousand on two
cores) and prints, per group (the folder's name, or ``streamSEED``): MC2 named right, the margins of the
wrong namings (a naming whose true MC2 is no candidate is wrong: "MC3, MC2 no candidate", or "MC3, MC2 in
no instance" where no instance lies under it; "unnamed" is a phantom with fewer than two candidates or no
consistent naming), right namings under the review margin,
right namings that any of the stage's checks reviews and wrong namings that none does (``review_checks``:
what QC would let through from this stage), and the candidates' measurement errors against the generator:
the joint level minus the head's tip; the estimated tip (``identify.head_tip``, what the naming
compares) minus the head's tip, its spread and the share more than 1.5 mm from its median; shaft and head
cross-section over the truth's ellipse, which for the shaft is its proximal end (the metaphysis reads
larger). A change to ``candidates`` is measured here without re-reading a scan, a change to the instances
with ``--remake``.

``fit`` fits the evidence weights on cached groups (training families only: never a held-out family), as
``calibrate_identity.py`` does, for ``score --weights``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import pickle
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from vbmd_rt.runtime import bonewin, identify, preprocess
from vbmd_rt.runtime.io import aim

HOLD_OUT = "texture!=rodplate|blobs,shape!=condyle"  # as train_default_model.HOLD_OUT


def cache_case(scan: Path, gt: Path, truth_json: Path) -> dict:
    """The cached record of one phantom (see the module's docstring)."""
    grid = float(bonewin.GRID.spacing_mm)
    s = aim.read_aim(scan)
    vol, geo = bonewin.model_volume(s.data, s.spacing_zyx, s.calibration)
    labels, _ = identify.find_candidates(vol, grid)
    truth = identify.reduce2(preprocess.to_model_mask(np.asarray(aim.read_aim(gt).data) != 0, geo) > 0.5) > 0.5
    z = min(truth.shape[0], labels.shape[0])
    under = np.bincount(labels[:z][truth[:z]].ravel(), minlength=int(labels.max()) + 1)
    under[0] = 0
    t = json.loads(truth_json.read_text())
    vx, width = t["voxel_mm"], t["params"]["nxy"] * t["voxel_mm"]
    sy, sx = geo.scale[1], geo.scale[2]
    bones = []
    for b in t["params"]["bones"]:  # generator frame (a right hand; a left one is stored mirrored) -> model grid mm
        x = width - b["x0"] if t["side"] == "left" else b["x0"]
        bones.append(
            {
                "name": b["name"],
                "x": (x / vx / sx - geo.crop[2]) * grid,
                "y": (b["y0"] / vx / sy - geo.crop[0]) * grid,
                "tip": b["tip"],
                "shaft": math.pi * b["shaft"][0] * b["shaft"][1],
                "head": math.pi * b["head"][0] * b["head"][1],
            }
        )
    sesamoids = []
    for e in t["params"].get("extras", {}).get("sesamoids", []):  # the generator's, in the same frame
        x = width - e["x"] if t["side"] == "left" else e["x"]
        sesamoids.append({"x": (x / vx / sx - geo.crop[2]) * grid, "y": (e["y"] / vx / sy - geo.crop[0]) * grid})
    return {
        "labels": labels.astype(np.int16),
        "coarse": identify.reduce2(vol).astype(np.float16),
        "truth": bones,
        "sesamoids": sesamoids,
        "mc2_label": int(under.argmax()) if under.max() > 0 else None,
        "view": preprocess.in_view(geo),  # the model grid's part that holds the scan (``review_checks``)
    }


def _path(cache: Path, key: str) -> Path:
    """The cache file of ``key`` ("group/case"): the group is the file name's part before "__"."""
    return cache / (key.replace("/", "__") + ".pkl.gz")


def _store(cache: Path, key: str, record: dict) -> None:
    dst = _path(cache, key)
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(pickle.dumps(record), 3))
    tmp.replace(dst)


def fill(cache: Path, folders: list[Path], stream: int, seed: int) -> int:
    cache.mkdir(parents=True, exist_ok=True)
    done = 0
    for folder in folders:
        for tj in sorted(folder.glob("*.truth.json")):
            name = tj.name[: -len(".truth.json")]
            key = f"{folder.name}/{name}"
            if not _path(cache, key).exists():
                _store(cache, key, cache_case(tj.with_name(name + ".AIM"), tj.with_name(name + "_GT.AIM"), tj))
                done += 1
    if stream:
        from vbmd_rt.synth import phantom

        tmp = Path(tempfile.mkdtemp(prefix="vbmd_rt_ident_"))
        try:
            for i in range(stream):
                key = f"stream{seed}/{i:04d}"
                if _path(cache, key).exists():
                    continue
                phantom.synth_case(tmp, i, seed, "small", f"random:{HOLD_OUT}")
                name = phantom.case_name(i)
                _store(cache, key, cache_case(tmp / f"{name}.AIM", tmp / f"{name}_GT.AIM", tmp / f"{name}.truth.json"))
                for f in tmp.glob(name + "*"):
                    f.unlink()
                done += 1
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return done


def records(cache: Path, groups):
    """(group, key, record) of every cached phantom in ``groups`` (all groups when None)."""
    for f in sorted(cache.glob("*.pkl.gz")):
        group = f.name.split("__")[0]
        if groups is None or group in groups:
            yield group, f.name[: -len(".pkl.gz")], pickle.loads(gzip.decompress(f.read_bytes()))


def candidates(record: dict) -> tuple[list, int | None]:
    """The stage's candidates from a record's cached instances, and the index of the true MC2 among them."""
    bones = record.get("bones")  # remade records carry them (made with their coarse volume, left behind)
    if bones is None:
        coarse = record["coarse"].astype(np.float32) if "coarse" in record else None
        bones = identify.candidates(
            record["labels"].astype(np.int32), 2 * float(bonewin.GRID.spacing_mm), coarse=coarse
        )
    return bones, next((i for i, b in enumerate(bones) if b.label == record["mc2_label"]), None)


def score_case(record: dict, weights: dict | None = None) -> dict:
    """One cached phantom: the candidates' errors against their nearest true bone, and the naming."""
    bones, true = candidates(record)
    errors = []
    for b in bones:
        dist = [math.hypot(t["x"] - b.x_mm, t["y"] - b.y_mm) for t in record["truth"]]
        k = int(np.argmin(dist))
        t = record["truth"][k]
        errors.append(
            {
                "truth": t["name"],
                "off_mm": dist[k],
                "joint_mm": b.joint_mm - t["tip"] if b.joint_in_view else None,
                "tip_mm": b.tip - t["tip"] if b.joint_in_view else None,
                "shaft": b.shaft_mm2 / t["shaft"],
                "head": b.head_mm2 / t["head"],
            }
        )
    out: dict = {"errors": errors, "named": None, "margin": None, "review": None}
    if len(bones) >= 2:
        hyps, margin = identify.name(bones, None, weights)
        if hyps:
            choice = hyps[0]["mc2"]
            named = "MC2" if choice == true else errors[choice]["truth"]
            if named == "MC2" and choice != true:
                named = "a piece of MC2"
            if true is None:  # MC2 is no candidate (a shaft in pieces, a head begun past the proximal slab),
                #   or in no instance (out of the field of view: no label under its true mask)
                named += ", MC2 no candidate" if record.get("mc2_label") is not None else ", MC2 in no instance"
            out["named"] = named
            out["margin"] = float(margin)
            out["review"] = review_checks(record, bones, choice, hyps[0]["thumb"], margin, weights)
    return out


def review_checks(
    record: dict, bones: list, choice: int, thumb: int | None, margin: float, weights: dict | None = None
) -> list:
    """Which of the identification stage's checks put the naming up for review (``identify.identify``'s
    reasons, as far as the cache holds what they read): ``instances`` and ``cut`` (``identify.doubts``),
    ``margin`` (under ``REVIEW_MARGIN``), ``end_off_row`` (a thumbless row of three whose far end lies off the row),
    ``far_gap`` (a thumbless row of four whose far end lies far from, or close to, its neighbour), ``wide_pair``
    (two bones, one head over ``WIDE_PAIR`` times the other's), ``thumb_end`` (a thumbless row of three or four
    whose far end, taken for the thumb, trails by under ``THUMB_END``; these four are ``identify.ROW_CHECKS``,
    asked by ``identify.row_reasons`` without a side, as on phantoms, whose logs tell none),
    ``row_goes_on`` (on the cached instances), ``past_edge`` (without a thumb, where the record keeps its coarse
    volume: a remade record does not; the row named first, as the stage names it, and the field of view's edge
    where the record keeps it, ``view``, since this pass; an older record's grid edge is the padded one, where
    a row that runs off the image is not seen: fewer reviews). The stack's direction is not checked (it reads the model grid): the phantoms' stacks all run
    from the wrist. A wrong naming with none of them passes the stage. ``weights``: as ``identify.name``'s."""
    out = [key for key, _ in identify.doubts(bones, choice, margin, None, weights)]
    if margin < identify.REVIEW_MARGIN:
        out.append("margin")
    out.extend(key for key, _ in identify.row_reasons(bones, choice, thumb, margin, None, weights))
    cs = 2 * float(bonewin.GRID.spacing_mm)
    named = copy.deepcopy(bones)  # past_edge and row_goes_on read the names (MC3); the cached bones stay
    identify._name_row(named, choice, thumb)
    if thumb is None and "coarse" in record:
        view = record.get("view")
        half = tuple(v // 2 for v in view) if view is not None else None
        if identify.past_edge(record["coarse"].astype(np.float32), cs, named, choice, half):
            out.append("past_edge")
    if "labels" in record and identify.row_goes_on(record["labels"].astype(np.int32), cs, named, choice):
        out.append("row_goes_on")
    return out


def pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 2) if a.size else None


def spread(a: np.ndarray) -> dict:
    return {"p10": pct(a, 10), "median": pct(a, 50), "p90": pct(a, 90)}


def remake(record: dict) -> dict:
    """The record with its instances made again from its cached coarse volume by the current code (a change
    to the instances measured without re-reading a scan). The true MC2 is then the candidate whose region
    holds the generator's MC2 centre in the proximal slices (the cached label was the instance under the true
    mask; a bone merged with its neighbour still counts as MC2, as there), else the candidate nearest it
    within 6 mm, else the instance (no candidate) met most often along its centre through all slices (a shaft
    in pieces, a head begun past the proximal slab: "MC2 no candidate"), else None ("MC2 in no instance")."""
    cs = 2 * float(bonewin.GRID.spacing_mm)
    labels, bones = identify.coarse_candidates(record["coarse"].astype(np.float32), cs)
    mc2 = next(t for t in record["truth"] if t["name"] == "MC2")
    y, x = int(round(mc2["y"] / cs)), int(round(mc2["x"] / cs))
    inside = 0 <= y < labels.shape[1] and 0 <= x < labels.shape[2]
    column = labels[: identify.reach(labels.shape[0], cs), y, x] if inside else np.zeros(0, labels.dtype)
    out = {k: v for k, v in record.items() if k != "coarse"}  # what naming needs: light to pass between processes
    out["labels"] = labels.astype(np.int16)
    out["bones"] = bones
    held = [b.label for b in bones if b.label in column]
    if held:  # the one under the centre in most proximal slices
        out["mc2_label"] = max(held, key=lambda lab: int((column == lab).sum()))
        return out
    near = [(math.hypot(b.x_mm - mc2["x"], b.y_mm - mc2["y"]), b.label) for b in bones]
    best = min(near, default=(math.inf, None))
    if best[0] < 6.0:
        out["mc2_label"] = best[1]
        return out
    line = labels[:, y, x] if inside else np.zeros(0, labels.dtype)  # MC2's centre line, all slices
    pieces = line[(line > 0) & ~np.isin(line, [b.label for b in bones])]  # a candidate there is another bone
    out["mc2_label"] = int(np.bincount(pieces).argmax()) if pieces.size else None
    return out


def _remade(item):
    group, key, record = item
    return group, key, remake(record)


def _on_every_core(fn, items) -> list:
    """``fn`` over ``items`` in worker processes forked from this one (they see this module as imported,
    also from a test's temporary path), as many as cores."""
    import multiprocessing
    import os

    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        return list(pool.imap(fn, items, chunksize=4))


def _scored(item):
    group, key, record, weights, again = item
    return group, key, score_case(remake(record) if again else record, weights)


def score(cache: Path, groups: list[str] | None, weights: dict | None, show: bool, again: bool = False) -> dict:
    by: dict[str, list] = defaultdict(list)
    items = ((g, k, r, weights, again) for g, k, r in records(cache, groups or None))
    scored = _on_every_core(_scored, items) if again else map(_scored, items)  # remade: a second a phantom
    for group, key, result in scored:
        by[group].append((key, result))
    table = {}
    for group, rows in sorted(by.items()):
        right = [r for _, r in rows if r["named"] == "MC2"]
        wrong = [(k, r) for k, r in rows if r["named"] not in (None, "MC2")]
        errs = [e for _, r in rows for e in r["errors"] if e["off_mm"] < 6.0]
        joint = np.array([abs(e["joint_mm"]) for e in errs if e["joint_mm"] is not None])
        tip = np.array([e["tip_mm"] for e in errs if e["tip_mm"] is not None])
        table[group] = {
            "cases": len(rows),
            "right": len(right),
            "unnamed": len(rows) - len(right) - len(wrong),
            "right_under_review_margin": sum(r["margin"] < identify.REVIEW_MARGIN for r in right),
            "right_reviewed": sum(bool(r["review"]) for r in right),  # by any of the stage's checks
            "wrong_margins": sorted(round(r["margin"], 2) for _, r in wrong),
            "wrong_passing": sorted(k for k, r in wrong if not r["review"]),  # none of the stage's checks fired
            "joint_abs_error_mm": {
                "median": pct(joint, 50),
                "p90": pct(joint, 90),
                "over_2mm": round(float((joint > 2).mean()), 3) if joint.size else None,
            },
            "tip_error_mm": {  # the head's tip (``identify.head_tip``), what the naming compares
                **spread(tip),
                "over_1_5mm": round(float((np.abs(tip - np.median(tip)) > 1.5).mean()), 3) if tip.size else None,
            },
            "shaft_ratio": spread(np.array([e["shaft"] for e in errs])),
            "head_ratio": spread(np.array([e["head"] for e in errs])),
        }
        if show:
            for key, r in wrong:
                why = ", ".join(r["review"]) or "passes the stage"
                print(f"  {key}: named {r['named']} (margin {r['margin']:.2f}; {why})")
    return table


class Logit:
    """The conditional logit of ``calibrate_identity.py`` (each case: its namings' features, the true MC2's
    namings), vectorised with its gradient: 900 cases fit in seconds rather than minutes."""

    def __init__(self, cases):
        self.f = np.concatenate([f for f, _, _ in cases])
        self.case = np.concatenate([np.full(len(f), i) for i, (f, _, _) in enumerate(cases)])
        self.true = np.concatenate([owners == true for _, owners, true in cases])
        self.n = len(cases)

    def _lse(self, s: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per case: log-sum-exp of ``s`` over ``rows``, and each row's softmax weight within its case."""
        top = np.full(self.n, -np.inf)
        np.maximum.at(top, self.case[rows], s[rows])
        e = np.where(rows, np.exp(s - top[self.case]), 0.0)
        total = np.bincount(self.case, weights=e, minlength=self.n)
        return np.log(total) + top, e / total[self.case]

    def loss(self, w: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
        s = self.f @ w
        lt, pt = self._lse(s, self.true)
        la, pa = self._lse(s, np.ones_like(self.true))
        grad = -(pt - pa) @ self.f + 2 * l2 * w
        return float(-(lt - la).sum() + l2 * w @ w), grad


def fit(cache: Path, train: list[str], l2: float, again: bool = False) -> dict:
    """Evidence weights fitted on the cached ``train`` groups, as ``calibrate_identity.py`` fits them (the
    conditional logit with the anatomical signs), with their five-fold accuracy on those groups. ``again``:
    on instances made again from the cached coarse volumes (``remake``)."""
    from scipy.optimize import minimize

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import calibrate_identity as ci
    finally:
        sys.path.pop(0)

    cases = []
    listed = _on_every_core(_remade, records(cache, train)) if again else records(cache, train)
    for _, _, record in listed:
        bones, true = candidates(record)
        c = ci.case_features(bones, true) if true is not None and len(bones) >= 2 else None
        if c is not None:
            cases.append(c)
    w0 = np.array([identify.WEIGHTS[k] for k in identify.FEATURES])
    box = ci.bounds()
    start = ci.inside(w0, box)

    def solve(part):
        return minimize(Logit(part).loss, start, args=(l2,), jac=True, method="L-BFGS-B", bounds=box).x

    w = solve(cases)
    folds = [
        round(
            ci.accuracy(
                solve([c for i, c in enumerate(cases) if i % 5 != k]), [c for i, c in enumerate(cases) if i % 5 == k]
            ),
            3,
        )
        for k in range(5)
    ]
    return {
        "cases": len(cases),
        "accuracy": round(ci.accuracy(w, cases), 3),
        "five_fold": folds,
        "weights": {k: round(float(v), 2) for k, v in zip(identify.FEATURES, w, strict=True)},
    }


def sesamoid_detection(cache: Path, groups: list[str] | None) -> dict:
    """How ``identify.sesamoids`` finds the generator's sesamoids (the records made since the twenty-fourth
    pass hold them; the generator draws one beside MC2, or none), on the phantoms whose MC2 is a candidate:
    the share of MC2s with one drawn where it finds exactly one (``found``; ``row_sesamoid`` counts an end
    with one), of MC2s without one where it does, and of the other candidates where it does (``false``):
    the inputs of ``identify.sesamoid_weight``."""
    n = {"cases": 0, "drawn": 0, "found": 0, "mc2_without_found": 0, "others": 0, "others_found": 0}
    for _, _, record in records(cache, groups):
        if "sesamoids" not in record:
            continue
        bones, true = candidates(record)
        if true is None:
            continue
        drawn, at_mc2 = bool(record["sesamoids"]), bones[true].sesamoids == 1  # as ``row_sesamoid`` counts
        n["cases"] += 1
        n["drawn"] += drawn
        n["found"] += drawn and at_mc2
        n["mc2_without_found"] += (not drawn) and at_mc2
        n["others"] += len(bones) - 1
        n["others_found"] += sum(b.sesamoids == 1 for i, b in enumerate(bones) if i != true)
    n["found_share"] = round(n["found"] / max(n["drawn"], 1), 3)
    n["false_share"] = round(n["others_found"] / max(n["others"], 1), 4)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("cache", type=Path)
    c.add_argument("folders", nargs="*", type=Path)
    c.add_argument("--stream", type=int, default=0)
    c.add_argument("--stream-seed", type=int, default=21000)
    s = sub.add_parser("score")
    s.add_argument("cache", type=Path)
    s.add_argument("--group", nargs="*", default=None)
    s.add_argument("--weights", type=Path, default=None, help="a JSON of weights (calibrate_identity.py --out)")
    s.add_argument("--show", action="store_true", help="list the wrong namings")
    s.add_argument(
        "--remake", action="store_true", help="make the instances again from the cached coarse volumes (current code)"
    )
    f = sub.add_parser("fit")
    f.add_argument("cache", type=Path)
    f.add_argument("--train", nargs="+", required=True, help="the groups to fit on (training families only)")
    f.add_argument("--l2", type=float, default=0.05)
    f.add_argument("--out", type=Path, default=None, help="write the weights here (for score --weights)")
    f.add_argument("--remake", action="store_true", help="on instances made again from the coarse volumes")
    d = sub.add_parser("sesamoids")
    d.add_argument("cache", type=Path)
    d.add_argument("--group", nargs="*", default=None)
    a = ap.parse_args()
    if a.cmd == "sesamoids":
        print(json.dumps(sesamoid_detection(a.cache, a.group)))
    elif a.cmd == "fit":
        result = fit(a.cache, a.train, a.l2, a.remake)
        print(json.dumps(result))
        if a.out:
            a.out.write_text(json.dumps(result["weights"], indent=2) + "\n")
    elif a.cmd == "cache":
        print(f"{fill(a.cache, a.folders, a.stream, a.stream_seed)} phantoms cached in {a.cache}")
    else:
        weights = json.loads(a.weights.read_text()) if a.weights else None
        print(json.dumps(score(a.cache, a.group, weights, a.show, a.remake), indent=1))


if __name__ == "__main__":
    sys.exit(main())
