"""Training of the 2D and 3D U-Nets (``vbmd-rt train``).

Data go through the runtime's preprocessing (``vbmd_rt.runtime.preprocess``), so what the network
learns from is exactly what it sees at inference. Normalisation statistics come from the training
split only and are stored in the checkpoint and, at export, in the model card.

Defaults follow the paper: Dice loss, Adam, 2D lr 1e-5 batch 4, 3D lr 1e-4 batch 1; nnU-Net-style
augmentation (``export.augment``: mirroring, rotation with tilt, scaling, elastic deformation, gamma,
contrast, noise, blur, low resolution); ``init`` warm-starts from a checkpoint or an exported model
(its FP32 ONNX); a 70/20/10 split by case;
the best checkpoint by validation Dice; resume from ``last.pt``. CUDA runs in mixed precision.
On the CPU a seed gives the same weights (deterministic algorithms).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vbmd_rt import __version__
from vbmd_rt.export import data as dataset
from vbmd_rt.export import nets
from vbmd_rt.export.augment import AugmentConfig, augment
from vbmd_rt.export.torch_backend import TorchBackend
from vbmd_rt.runtime import preprocess
from vbmd_rt.runtime.inference import window as sw
from vbmd_rt.runtime.inference.window import WindowSpec
from vbmd_rt.runtime.io.atomic import atomic_write
from vbmd_rt.runtime.measure import dice
from vbmd_rt.runtime.model import ModelCard, architecture
from vbmd_rt.runtime.postprocess import largest_component

# The paper's optimiser settings; window, multiple and preprocessing come from runtime.model.ARCHITECTURES.
TRAINING_DEFAULTS = {"unet2d": {"lr": 1e-5, "batch": 4}, "unet3d": {"lr": 1e-4, "batch": 1}}


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "unet3d"
    epochs: int = 20
    steps_per_epoch: int = 200
    lr: float | None = None
    batch: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    size: int = 512
    spacing_mm: float = preprocess.MODEL_SPACING_MM
    window: int | None = None
    widths: list[int] | None = None
    init_resnet34: str | None = None
    val_data: str | None = None
    max_val_cases: int = 40
    bce_weight: float = 0.0
    augment: bool = True
    schedule: str = "constant"  # or "poly": lr * (1 - step / steps) ** 0.9
    workers: int = 1
    init: str | None = None  # warm start: a checkpoint (.pt) or an exported model folder (model.onnx)
    val_every: int = 1  # validate every N epochs (and after the last)

    def resolved(self) -> TrainConfig:
        d = TRAINING_DEFAULTS[self.arch]
        c = TrainConfig(**asdict(self))
        c.lr = self.lr if self.lr is not None else d["lr"]
        c.batch = self.batch if self.batch is not None else d["batch"]
        c.window = self.window if self.window is not None else architecture(self.arch).window
        return c


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_net(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.arch == "unet2d":
        kw = {}
        if cfg.widths:
            kw["widths"] = tuple(cfg.widths[:5])
            if len(cfg.widths) > 5:
                kw["decoder"] = tuple(cfg.widths[5:10])
        net = nets.UNet2D(**kw)
        if cfg.init_resnet34:
            nets.load_resnet34(net, cfg.init_resnet34)
        return net
    return nets.UNet3D(widths=tuple(cfg.widths) if cfg.widths else nets.UNET3D_WIDTHS)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch (targets may be fractions)."""
    p = torch.sigmoid(logits.float())
    inter = (p * target).sum()
    return 1.0 - (2.0 * inter + eps) / (p.sum() + target.sum() + eps)


def _load_all(pairs, spec, workers: int) -> list:
    if workers <= 1 or len(pairs) < 2:
        return [dataset.load_case(p, spec) for p in pairs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(dataset.load_case, pairs, [spec] * len(pairs), chunksize=2))


class Trainer:
    def __init__(self, cfg: TrainConfig, progress=None, log=print):
        self.cfg = cfg.resolved()
        self.device = _device(self.cfg.device)
        self.progress = progress
        self.log = log
        self.out = Path(self.cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        a = architecture(self.cfg.arch)
        self.spec = preprocess.Spec(
            size=self.cfg.size, spacing_mm=self.cfg.spacing_mm, z_mode=a.z_mode, multiple=a.multiple, crop=a.crop
        )
        self.window_spec = WindowSpec(a.window_mode, self.cfg.window, a.overlap, a.multiple)

    # ----------------------------------------------------------------------------------- data
    def load(self) -> None:
        pairs = dataset.discover(self.cfg.data)
        parts = dataset.split(pairs, self.cfg.seed)
        if self.cfg.val_data:  # an independent held-out set (e.g. phantoms of other seeds)
            parts["val"] = dataset.discover(self.cfg.val_data)
        if not parts["train"]:
            raise dataset.DatasetError(self.cfg.data, "has too few cases to train on", "add cases (3 or more)")
        self.parts = parts
        raw = preprocess.Spec(**{**self.spec.to_dict(), "mean": 0.0, "std": 1.0})
        self.train_cases = _load_all(parts["train"], raw, self.cfg.workers)
        init = self._init_card()
        if init is not None:  # a warm start keeps the normalisation its weights were trained with
            mean, std = float(init.preprocessing.mean), float(init.preprocessing.std)
        else:
            sample = np.concatenate([img[:, ::4, ::4].ravel() for img, _ in self.train_cases])
            mean, std = float(sample.mean()), float(sample.std()) or 1.0
        self.spec = preprocess.Spec(**{**raw.to_dict(), "mean": mean, "std": std})
        for img, _ in self.train_cases:
            img -= np.float32(mean)
            img *= np.float32(1.0 / std)
        # Half precision in memory (a normalised image needs no more); batches go back to float32.
        self.train_cases = [(img.astype(np.float16), tgt.astype(np.float16)) for img, tgt in self.train_cases]
        self.val_pairs = parts["val"][: self.cfg.max_val_cases]
        self.val_cases = _load_all(self.val_pairs, self.spec, self.cfg.workers)

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if cfg.arch == "unet3d":
            img, tgt = self.train_cases[int(rng.integers(len(self.train_cases)))]
            z = img.shape[0]
            win, before = sw.fit_window(z, cfg.window, self.spec.multiple)
            if before is not None:
                img, tgt = sw.pad_z(img, win, before), sw.pad_z(tgt, win, before)
                s = 0
            else:
                s = int(rng.integers(0, z - win + 1))
            x = np.ascontiguousarray(img[None, None, s : s + win], dtype=np.float32)
            y = np.ascontiguousarray(tgt[None, None, s : s + win], dtype=np.float32)
        else:
            xs, ys = [], []
            for _ in range(cfg.batch):
                img, tgt = self.train_cases[int(rng.integers(len(self.train_cases)))]
                k = int(rng.integers(img.shape[0]))
                xs.append(img[k])
                ys.append(tgt[k])
            x, y = np.stack(xs)[:, None].astype(np.float32), np.stack(ys)[:, None].astype(np.float32)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    # ----------------------------------------------------------------------------------- loop
    def validate(self, net) -> dict:
        scores = []
        with TorchBackend(net, self.device.type, "fp16" if self.device.type == "cuda" else "fp32") as backend:
            for img, tgt in self.val_cases:
                prob = sw.sliding_window(img, backend.infer, self.window_spec)
                scores.append(dice(largest_component(prob > 0.5), tgt > 0.5))
        # Dice of the largest component, as the runtime keeps it, at model resolution.
        return {"dice_model_space": float(np.mean(scores)) if scores else float("nan"), "cases": len(scores)}

    def fit(self, resume: str | None = None) -> Path:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.load()
        net = build_net(cfg)
        if cfg.init and not resume:
            self._warm_start(net, cfg.init)
        net = net.to(self.device)
        self.net_config = net.config
        aug = AugmentConfig(spacing_mm=cfg.spacing_mm)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        rng = np.random.default_rng([cfg.seed, 0x7A1])
        gen = torch.Generator().manual_seed(cfg.seed)
        start_epoch, best, history = 0, -1.0, []
        if resume:
            ck = torch.load(resume, map_location="cpu", weights_only=False)
            net.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
            rng.bit_generator.state = ck["rng"]
            gen.set_state(ck["torch_rng"])
            self.log(f"resumed from {resume} at epoch {start_epoch}")
        amp = cfg.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        task = (
            self.progress.add_task(
                "training", total=cfg.epochs * cfg.steps_per_epoch, completed=start_epoch * cfg.steps_per_epoch
            )
            if self.progress
            else None
        )
        net.train()
        total = cfg.epochs * cfg.steps_per_epoch
        for epoch in range(start_epoch, cfg.epochs):
            t0, losses = time.time(), []
            for step in range(cfg.steps_per_epoch):
                if cfg.schedule == "poly":
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr * (1 - (epoch * cfg.steps_per_epoch + step) / total) ** 0.9
                x, y = self.batch(rng)
                if cfg.augment:
                    x, y = augment(x, y, gen, aug)
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp):
                    logits = net(x)
                loss = dice_loss(logits, y)
                if cfg.bce_weight:
                    loss = loss + cfg.bce_weight * F.binary_cross_entropy_with_logits(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(float(loss.detach()))
                if task is not None:
                    self.progress.update(task, advance=1, description=f"epoch {epoch + 1} loss {np.mean(losses):.4f}")
            last = epoch == cfg.epochs - 1
            val = (
                self.validate(net)
                if last or (epoch + 1) % cfg.val_every == 0
                else {"dice_model_space": -1.0, "cases": 0}
            )
            entry = {"epoch": epoch, "loss": float(np.mean(losses)), **val, "seconds": time.time() - t0}
            history.append(entry)
            improved = val["dice_model_space"] > best
            if improved:
                best = val["dice_model_space"]
            ck = {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "rng": rng.bit_generator.state,
                "torch_rng": gen.get_state(),
                "card": self.card(best, history),
            }
            self._save(ck, self.out / "last.pt")
            if improved:
                self._save({"model": net.state_dict(), "card": ck["card"], "epoch": epoch}, self.out / "best.pt")
            self.log(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss']:.4f}, "
                f"val Dice {val['dice_model_space']:.4f} ({val['cases']} cases){' *' if improved else ''}"
            )
        return self.out / "best.pt"

    def _init_card(self) -> ModelCard | None:
        """The card of the warm start's model or checkpoint, if any."""
        if not self.cfg.init:
            return None
        path = Path(self.cfg.init)
        if path.is_dir():
            return ModelCard.from_dict(json.loads((path / "model.json").read_text()))
        return ModelCard.from_dict(torch.load(path, map_location="cpu", weights_only=False)["card"])

    def _warm_start(self, net, init: str) -> None:
        """Weights from a checkpoint or an exported model folder; the architecture must match."""
        path = Path(init)
        if path.is_dir():
            from vbmd_rt.export.torch_backend import load_onnx_weights

            load_onnx_weights(net, path / "model.onnx")
        else:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
        self.log(f"warm start from {init}")

    @staticmethod
    def _save(obj, path: Path) -> None:
        with atomic_write(path, overwrite=True) as f:
            torch.save(obj, f)

    def card(self, best: float, history: list) -> dict:
        cfg = self.cfg
        return ModelCard(
            cfg.arch,
            self.spec,
            config=self.net_config,
            window_slices=cfg.window,
            training={
                "data": str(cfg.data),
                "val_data": cfg.val_data,
                "cases": {k: len(v) for k, v in self.parts.items()},
                "train_cases": [p.name for p in self.parts["train"]],
                "config": asdict(cfg),
                "vbmd_rt_version": __version__,
                "torch_version": torch.__version__,
                "device": self.device.type,
                "best_val_dice_model_space": best,
                "history": history,
            },
        ).to_dict()


def train(cfg: TrainConfig, resume: str | None = None, progress=None, log=print) -> Path:
    """Train and return the best checkpoint's path (``OUT/best.pt``); writes ``OUT/train.json`` too."""
    trainer = Trainer(cfg, progress, log)
    best = trainer.fit(resume)
    ck = torch.load(best, map_location="cpu", weights_only=False)
    with atomic_write(Path(cfg.out) / "train.json", overwrite=True) as f:
        f.write(json.dumps(ck["card"], indent=2).encode())
    return best
