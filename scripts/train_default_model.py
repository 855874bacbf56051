"""Recipe of the bundled default model, on 2 CPU cores: phantoms -> one-bone segmenter -> ONNX + model card.

    python scripts/train_default_model.py --data DATA --out RUN [--minutes 60] [--resume]
    python scripts/train_default_model.py --data DATA --out RUN --export vbmd_rt/models/default

Phantoms (small, 0.246 / 0.182 mm voxels), made once with ``vbmd-rt synth`` into DATA and kept:

* ``train_std``: ``--train-standard`` standard cases (seed 2000);
* ``train_rand``: ``--train-random`` domain-randomised cases (seed 1000) of ``random:HOLD_OUT``: by default
  without the rod/plate and blob textures and without two-condyle heads, the three held-out families
  that ``scripts/robustness_eval.py`` measures (seeds 5000-5002, never seen in training);
* with ``--all-families``, ``train_all`` (seed 3000): every family, for a fine-tune of the bundled model
  after the held-out measurement (``--init RUN/last.pt``).

Training (``export.bonewin``): windows around the true MC2 cached once (RUN/cache), 2D samples with
rotation, scale, mirror, intensity and noise augmentation drawn per step, AdamW, Dice + BCE, a cosine
learning rate over the wall-time budget ``--minutes``; RUN/last.pt every 50 steps, and a rerun of the
same command resumes from it. RUN/train.json records steps, wall time and the loss history.
``--export MODEL`` writes MODEL/model.onnx, model.fp16.onnx and model.json from RUN/last.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

HOLD_OUT = "texture!=rodplate|blobs,shape!=condyle"
SEEDS = {"train_std": 2000, "train_rand": 1000, "train_all": 3000}


def make(folder: Path, count: int, seed: int, family: str) -> None:
    """``count`` small cases of ``family``; cases already in ``folder`` are kept (``--start`` extends)."""
    from vbmd_rt.synth import phantom

    have = len(list(folder.glob("*.truth.json"))) if folder.exists() else 0
    if have < count:
        phantom.synth(folder, count - have, seed, "small", start=have, family=family)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="phantom folders go here (made once, kept)")
    ap.add_argument("--out", required=True, help="run folder: cache, last.pt, train.json")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time budget of the training loop")
    ap.add_argument("--train-standard", type=int, default=40)
    ap.add_argument("--train-random", type=int, default=160)
    ap.add_argument("--all-families", type=int, default=0, help="also train on N cases of every family")
    ap.add_argument("--init", default=None, help="warm start from this checkpoint")
    ap.add_argument(
        "--skip-synth",
        action="store_true",
        help="train on what DATA holds now (phantoms made meanwhile join every 300 steps)",
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("VBMD_RT_THREADS", "2")))
    ap.add_argument("--export", default=None, metavar="MODEL", help="export RUN/last.pt to this model folder and stop")
    a = ap.parse_args()
    data, out = Path(a.data), Path(a.out)
    if a.export:
        from vbmd_rt.export.onnx_export import export_bonewin

        export_bonewin(out / "last.pt", Path(a.export), json.loads((out / "train.json").read_text()))
        return
    folders = {"train_std": ("standard", a.train_standard), "train_rand": (f"random:{HOLD_OUT}", a.train_random)}
    if a.all_families:
        folders["train_all"] = ("random", a.all_families)
    if not a.skip_synth:
        for name, (family, count) in folders.items():
            make(data / name, count, SEEDS[name], family)

    from vbmd_rt.export.bonewin import Recipe, train

    recipe = Recipe(
        data=[str(data / n) for n in folders],
        out=str(out),
        cache=str(out / "cache"),
        minutes=a.minutes,
        threads=a.threads,
        init=a.init,
    )
    t0 = time.time()
    last = train(recipe, log=lambda m: print(m, flush=True))
    import torch

    state = torch.load(last, weights_only=False)["state"]
    record = {
        "recipe": "scripts/train_default_model.py",
        "families": {
            n: {"family": f, "cases": len(list((data / n).glob("*_GT.AIM"))), "seed": SEEDS[n]}
            for n, (f, c) in folders.items()
        },
        # With --all-families every family is in training: the held-out numbers come from a run without it.
        "held_out": []
        if a.all_families
        else ["random:texture=rodplate", "random:texture=blobs", "random:shape=condyle"],
        "steps": state["step"],
        "train_minutes": round(state["seconds"] / 60, 1),
        "wall_minutes_this_call": round((time.time() - t0) / 60, 1),
        "cases_used": state["history"][-1].get("cases") if state["history"] else None,
        "hardware": f"{platform.processor() or platform.machine()}, {a.threads} CPU threads, no GPU",
        "history": state["history"],
        "init": a.init,
    }
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("steps", "train_minutes")}))


if __name__ == "__main__":
    main()
