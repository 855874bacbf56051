"""Per-parameter errors of MC2's compartments (issue 22) on held-out phantoms: given the true periosteal mask,
and given the mask of `vbmd-rt run` (the bundled model, in this process).

Usage::

    python scripts/compartments_eval.py DIR [DIR ...]            # folders from `vbmd-rt synth`
    python scripts/compartments_eval.py --generate standard:full:2:8000 \\
        --generate 'random:scanner=xct2:full:2:8010' --work /tmp/cases   # make, measure, delete one at a time
    python scripts/compartments_eval.py --resolutions standard:3:8000 --resolutions random:3:8030
    options: --no-run (true mask only), --json FILE (every case's numbers); --resolutions: one MC2 cut out
    and rendered at 82 and at 60.7 µm, the two measured given their true masks

Every case needs its truth JSON with the compartments (``vbmd-rt synth`` of this version). Prints, per
group (family, voxel size), the mean error (bias), the largest absolute error and the issue's target for
Tb.BMD, Ct.BMD and Ct.Th, then the same pooled over all cases; for run's mask also over the cases where run
outlined the right bone (Dice >= 0.9 with the truth: a wrong bone is identification's failure, for QC). The targets: Tb.BMD 10 mg HA/cm³, Ct.BMD 40
mg HA/cm³ and Ct.Th 0.1 mm given the true mask; twice those given run's mask.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEYS = {"tb_bmd_mg_ha_cm3": 10.0, "ct_bmd_mg_ha_cm3": 40.0, "ct_th_mm": 0.1}
MASKS = {"true mask": 1.0, "run's mask": 2.0}  # the target's factor


def measure_case(pair, predictor) -> dict:
    from vbmd_rt.runtime import compartments, pipeline
    from vbmd_rt.runtime.io import dataset

    scan = pipeline.read_scan(pair.scan)
    truth_mask = dataset.read_mask(pair.mask, scan.header)
    spacing = scan.spacing_zyx
    t0 = time.perf_counter()
    given = compartments.analyse(scan.data, truth_mask, spacing, scan.calibration)
    seconds = time.perf_counter() - t0
    meta = pair.meta
    if meta.get("ct_th_mm") is None:
        raise SystemExit(f"{pair.scan}: its truth JSON has no compartments (made by an older vbmd-rt synth)")
    case = {
        "name": pair.name,
        "family": meta.get("family", "?"),
        "voxel_mm": round(float(spacing[1]), 4),
        "truth": {k: meta[k] for k in KEYS},
        "true mask": {k: given.values[k] for k in KEYS},
        "seconds_true_mask": round(seconds, 3),
    }
    if predictor is not None:
        r = predictor.run(pair.scan)
        comp = r.compartments or {}
        case["run's mask"] = {k: comp.get(k) for k in KEYS}
        case["run_dice"] = _dice(r.mask, truth_mask)
        case["qc"] = r.qc.get("status")
    return case


def _dice(a, b) -> float:
    from vbmd_rt.runtime import measure

    return round(measure.dice(a, b), 4)


RIGHT_BONE_DICE = 0.9  # run's mask on the right bone, outlined well; below: identification or segmentation failed


def table(cases: list[dict], title: str) -> list[str]:
    lines = [f"{title} ({len(cases)} cases)"]
    views = {**MASKS, "run's mask, right bone (Dice >= 0.9)": MASKS["run's mask"]}
    for view, factor in views.items():
        which = "run's mask" if view.startswith("run's") else view
        got = [c for c in cases if which in c]
        if view != which:
            got = [c for c in got if c.get("run_dice", 0) >= RIGHT_BONE_DICE]
        if not got:
            continue
        cells = []
        for k, target in KEYS.items():
            errs = np.array(
                [c[which][k] - c["truth"][k] for c in got if c[which][k] is not None and c["truth"][k] is not None]
            )
            if errs.size == 0:
                cells.append(f"{k}: n/a")
                continue
            worst = float(np.max(np.abs(errs)))
            ok = "ok" if worst <= factor * target else "MISSED"
            cells.append(
                f"{k}: bias {errs.mean():+.3f}, max |err| {worst:.3f} (target {factor * target:g}: {ok}, n {errs.size})"
            )
        lines.append(f"  given {view}: " + "; ".join(cells))
    return lines


def generated(specs: list[str], work: Path):
    """Yield (folder, pairs) for each case of ``FAMILY:SIZE:N:SEED`` specs, one case at a time (deleted after)."""
    from vbmd_rt.runtime.io import dataset
    from vbmd_rt.synth import phantom

    for spec in specs:
        family, size, n, seed = spec.rsplit(":", 3)
        for folder in phantom.one_at_a_time(family, size, int(n), int(seed), work):
            yield dataset.discover(folder)


def resolution_pairs(specs: list[str]) -> list[str]:
    """The same anatomy (MC2 cut out, ``phantom.crop_case``) at 82 and at 60.7 µm, measured given its true mask:
    the differences between the two scans, and each against its truth. ``FAMILY:N:SEED`` specs."""
    from vbmd_rt.runtime import compartments
    from vbmd_rt.synth import families, phantom

    lines, worst = [], dict.fromkeys(KEYS, 0.0)
    for spec in specs:
        family, n, seed = spec.rsplit(":", 2)
        for i in range(int(n)):
            cs = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
            base = (
                phantom.sample_case(cs, "full")
                if family == "standard"
                else families.sample_random(cs, "full", families.parse_family(family))
            )
            got = {}
            for vox in (0.082, 0.0607):
                p = phantom.crop_case(base, vox)
                scan, labels = phantom.render_case(p, labels=True)
                truth = phantom.compartment_truth(scan, labels, p)
                v = compartments.analyse(scan, labels > 0, (vox,) * 3, p.cal).values
                got[vox] = (v, truth)
            diff = {k: got[0.082][0][k] - got[0.0607][0][k] for k in KEYS}
            for k in KEYS:
                worst[k] = max(worst[k], abs(diff[k]))
            lines.append(
                f"{family} {seed}/{i}: 82 - 60.7 um: "
                + ", ".join(f"{k} {diff[k]:+.3f}" for k in KEYS)
                + "; vs truth at 82 / 60.7: "
                + ", ".join(
                    f"{k} {got[0.082][0][k] - got[0.082][1][k]:+.3f} / {got[0.0607][0][k] - got[0.0607][1][k]:+.3f}"
                    for k in KEYS
                )
            )
            print(lines[-1], flush=True)
    lines.append("largest |82 - 60.7 um|: " + ", ".join(f"{k} {w:.3f}" for k, w in worst.items()))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--generate", action="append", default=[], help="FAMILY:SIZE:N:SEED, e.g. standard:full:2:8000")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--no-run", action="store_true", help="only the true mask (no model)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--resolutions", action="append", default=[], help="FAMILY:N:SEED: the same MC2 at 82 and 60.7 um")
    a = ap.parse_args(argv)
    if a.resolutions:
        print("\n".join(resolution_pairs(a.resolutions)[-1:]))
        if not a.folders and not a.generate:
            return 0
    from vbmd_rt.runtime.io import dataset

    predictor = None
    if not a.no_run:
        from vbmd_rt.api import Predictor

        predictor = Predictor()
    batches = [dataset.discover(f) for f in a.folders]
    cases = []
    for pairs in itertools.chain(batches, generated(a.generate, a.work)):
        for pair in pairs:
            c = measure_case(pair, predictor)
            cases.append(c)
            print(
                f"{pair.scan.parent.name}/{pair.name} {c['family']} {c['voxel_mm']} mm"
                + (f" (run Dice {c['run_dice']:.3f}, qc {c['qc']})" if "run_dice" in c else "")
                + ": "
                + ", ".join(
                    f"{w} " + " ".join(f"{c[w][k] - c['truth'][k]:+.3f}" for k in KEYS if c[w][k] is not None)
                    for w in MASKS
                    if w in c
                ),
                flush=True,
            )
    if not cases:
        print("no cases", file=sys.stderr)
        return 2
    groups: dict[tuple, list] = {}
    for c in cases:
        groups.setdefault((c["family"], c["voxel_mm"]), []).append(c)
    print("\nerrors (measured - true) per group; Tb.BMD and Ct.BMD in mg HA/cm3, Ct.Th in mm")
    for (fam, vox), cs in sorted(groups.items()):
        print("\n".join(table(cs, f"{fam} at {vox} mm")))
    print("\n".join(table(cases, "all")))
    if a.json:
        a.json.write_text(json.dumps(cases, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
