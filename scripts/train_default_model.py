"""Recipe of the bundled default model: phantoms -> 3D U-Net -> native-resolution validation.

    python scripts/train_default_model.py --out RUN [--train-small 240 --train-full 40 ...]

Writes RUN/best.pt, RUN/last.pt, RUN/train.json and RUN/validation.json (per case and per motion
grade, at native resolution, through the runtime's own pipeline). Then
``vbmd-rt export RUN/best.pt -o vbmd_rt/models/default --validation RUN/validation.json`` makes the
bundled model. Training seeds and validation seeds never overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TRAIN_SEED, VAL_SEED = 1000, 9000


def make(folder: Path, seed: int, small: int, full: int, workers: int) -> None:
    """``full`` full-size cases (indices 0..) then ``small`` small ones, all from ``seed``."""
    from vbmd_rt.synth import phantom

    phantom.synth(folder, full, seed, "full", workers=workers)
    phantom.synth(folder, small, seed, "small", start=full, workers=workers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=None, help="where phantoms go (default OUT/data)")
    ap.add_argument("--train-small", type=int, default=240)
    ap.add_argument("--train-full", type=int, default=40)
    ap.add_argument("--val-small", type=int, default=24)
    ap.add_argument("--val-full", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--window", type=int, default=80)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", default=None, help="a last.pt to go on from (same data and steps per epoch)")
    a = ap.parse_args()
    out = Path(a.out)
    data = Path(a.data) if a.data else out / "data"
    t0 = time.time()
    make(data / "train", TRAIN_SEED, a.train_small, a.train_full, a.workers)
    make(data / "val", VAL_SEED, a.val_small, a.val_full, a.workers)
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
        schedule="poly",
        seed=0,
        window=a.window,
        val_data=str(data / "val"),
        workers=a.workers,
        device=a.device,
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
