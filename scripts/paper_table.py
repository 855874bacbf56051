"""The paper's Table 1 and vBMD agreement, reproduced on held-out phantoms.

    python scripts/paper_table.py --work /tmp/table1 [--cases 54] [--d100-cases 30] [--size small]

Generates the test phantoms (seed 5400: neither the training seed 1000 nor the validation seed 9000),
runs every model on them with `vbmd-rt run --save-prob` (the bundled model on ONNX Runtime, labelled with
the architecture its card names, the classical baseline, and any extra model folders given with --model NAME=FOLDER), evaluates each with
`vbmd-rt eval`, and prints one Markdown table in the form of the paper's Table 1 plus the D100 rows.
Everything goes through the CLI, as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "vbmd_rt", *map(str, args)], check=True)


#: How the table names an architecture of ``runtime.model.ARCHITECTURES`` (a card's ``architecture``).
ARCHITECTURE_LABELS = {"bonewin2d": "one-bone 2D U-Net", "unet2d": "2D U-Net (ResNet34)", "unet3d": "3D U-Net"}


def bundled_label() -> str:
    """The bundled model's row label, from its card: the table must not call a 2D model a 3D U-Net."""
    from vbmd_rt.runtime.model import load_model

    arch = str(load_model(None).architecture)
    return f"{ARCHITECTURE_LABELS.get(arch, arch)} (bundled), ONNX Runtime FP32"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=54)
    ap.add_argument("--d100-cases", type=int, default=30)
    ap.add_argument("--size", default="small")
    ap.add_argument("--seed", type=int, default=5400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", action="append", default=[], help="NAME=FOLDER of another exported model")
    a = ap.parse_args()
    data = a.work / "phantoms"
    if not (data / f"PHANTOM_{a.cases - 1:04d}.truth.json").exists():
        cli("synth", data, "--cases", a.cases, "--seed", a.seed, "--size", a.size, "--workers", a.workers, "-q")
    models = {bundled_label(): None, "classical baseline": "classical"}
    models.update(dict(m.split("=", 1) for m in a.model))
    rows = []
    for label, folder in models.items():
        slug = "".join(ch if ch.isalnum() else "-" for ch in label.lower()).strip("-")
        pred, rep = a.work / f"pred-{slug}", a.work / f"eval-{slug}"
        cli("run", data, "-o", pred, "--save-prob", "-q", *(["--model", folder] if folder else []))
        cli("eval", "--pred", pred, "--truth", data, "-o", rep, "--d100-cases", a.d100_cases, "-q")
        rows.append((label, json.loads((rep / "eval.json").read_text())))
    truths = [json.loads(p.read_text()) for p in sorted(data.glob("*.truth.json"))]
    grades = {g: sum(t["motion_grade"] == g for t in truths) for g in (1, 2, 3)}
    print(
        f"{a.cases} phantom test cases ({a.size}, seed {a.seed}): motion grade 1/2/3 = "
        f"{grades[1]}/{grades[2]}/{grades[3]}, {sum(bool(t['erosions']) for t in truths)} eroded; "
        f"D100 on the first {a.d100_cases}. Mean (SD).\n"
    )
    print(
        "| model | IoU | Dice | accuracy | AUC | HD95 (mm) | D100 Pearson | Spearman | ICC(A,1) | "
        "Bland-Altman bias [95% LoA] | D100 mean (SD) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        s, d = r["segmentation"], r["d100"]
        ba = d["bland_altman"]

        def f(m, n=3):
            return f"{m['mean']:.{n}f} ({m['sd']:.{n}f})" if m.get("mean") is not None else "n/a"

        print(
            f"| {label} | {f(s['iou'])} | {f(s['dice'])} | {f(s['accuracy'], 4)} | {f(s['auc'], 4)} | "
            f"{f(s['hd95_mm'], 2)} | {d['pearson_r']:.4f} | {d['spearman_rho']:.4f} | {d['icc_a1']:.4f} | "
            f"{ba['bias']:+.2f} [{ba['loa_low']:+.2f}, {ba['loa_high']:+.2f}] | {f(d['pred'], 1)} |"
        )
    d = rows[0][1]["d100"]
    print(f"| truth (phantom) | | | | | | | | | | {d['truth']['mean']:.1f} ({d['truth']['sd']:.1f}) |")


if __name__ == "__main__":
    main()
