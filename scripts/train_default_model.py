"""Recipe of the bundled default model: standard and domain-randomised phantoms -> 3D U-Net -> validation.

    python scripts/train_default_model.py --out RUN [--init vbmd_rt/models/default] [--hold-out texture=rodplate]

Phantoms: ``--train-standard`` standard cases (seed 1000) and ``--train-random`` domain-randomised ones
(``vbmd-rt synth --family random``, seed 1001) without the held-out family; validation (checkpoint
choice) on ``--val-random`` randomised cases of seed 9100, also without it. The held-out family
(``random:<hold-out>``, seed 9200) is never seen: ``scripts/robustness_eval.py`` measures it.
Training: nnU-Net-style augmentation (``export.augment``), warm start from ``--init`` (its
normalisation kept), Dice loss, Adam. Writes RUN/best.pt, RUN/last.pt, RUN/train.json and
RUN/validation.json. Then ``vbmd-rt export RUN/best.pt -o vbmd_rt/models/default --validation
RUN/validation.json`` makes the bundled model. Training, validation and test seeds never overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TRAIN_SEED, RANDOM_SEED, VAL_SEED, HELD_OUT_SEED = 1000, 1001, 9100, 9200


def make(folder: Path, count: int, seed: int, family: str, start: int, workers: int) -> None:
    """``count`` small cases of ``family`` from index ``start``; a folder that has them already is kept."""
    from vbmd_rt.synth import phantom

    have = {p.name for p in folder.glob("*.truth.json")} if folder.exists() else set()
    if all(f"{phantom.case_name(i)}.truth.json" in have for i in range(start, start + count)):
        return
    phantom.synth(folder, count, seed, "small", start=start, workers=workers, family=family)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=None, help="where phantoms go (default OUT/data)")
    ap.add_argument("--train-standard", type=int, default=40)
    ap.add_argument("--train-random", type=int, default=140)
    ap.add_argument("--val-random", type=int, default=16)
    ap.add_argument("--held-out-cases", type=int, default=16)
    ap.add_argument("--hold-out", default="texture=rodplate", help="the family never trained on")
    ap.add_argument("--init", default=str(Path(__file__).resolve().parent.parent / "vbmd_rt/models/default"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--window", type=int, default=48)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", default=None, help="a last.pt to go on from (same data and steps per epoch)")
    a = ap.parse_args()
    out = Path(a.out)
    data = Path(a.data) if a.data else out / "data"
    key, _, value = a.hold_out.partition("=")
    train_family = f"random:{key}!={value}"
    t0 = time.time()
    make(data / "train", a.train_standard, TRAIN_SEED, "standard", 0, a.workers)
    make(data / "train", a.train_random, RANDOM_SEED, train_family, a.train_standard, a.workers)
    make(data / "val", a.val_random, VAL_SEED, train_family, 0, a.workers)
    make(data / "held-out", a.held_out_cases, HELD_OUT_SEED, f"random:{a.hold_out}", 0, a.workers)
    print(f"phantoms: {time.time() - t0:.0f} s", flush=True)

    from vbmd_rt.evaluation.evaluate import evaluate
    from vbmd_rt.export.torch_backend import TorchBackend
    from vbmd_rt.export.train import TrainConfig, train
    from vbmd_rt.runtime.io import dataset
    from vbmd_rt.runtime.model import Model, ModelCard

    cfg = TrainConfig(
        data=str(data / "train"),
        out=str(out),
        arch="unet3d",
        epochs=a.epochs,
        steps_per_epoch=a.steps,
        lr=a.lr,
        schedule="constant",
        seed=0,
        window=a.window,
        val_data=str(data / "val"),
        workers=a.workers,
        device=a.device,
        init=a.init,
        val_every=a.val_every,
    )
    t1 = time.time()
    best = train(cfg, resume=a.resume, log=lambda s: print(s, flush=True))
    print(f"training: {time.time() - t1:.0f} s", flush=True)

    import torch

    from vbmd_rt.export import nets

    ck = torch.load(best, map_location="cpu", weights_only=False)
    net = nets.build("unet3d", ck["card"]["config"])
    net.load_state_dict(ck["model"])
    backend = TorchBackend(net, "cuda" if torch.cuda.is_available() else "cpu", "fp32")
    t2 = time.time()
    report = evaluate(
        dataset.discover(data / "val"),
        Model(ModelCard.from_dict(ck["card"]), out),
        backend,
        log=lambda s: print(s, flush=True),
    )
    report["seconds"] = time.time() - t2
    (out / "validation.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=1), flush=True)


if __name__ == "__main__":
    main()
