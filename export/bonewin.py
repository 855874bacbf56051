"""The one-bone segmenter (``bonewin2d``) and its CPU training recipe.

The network sees the MC2-centred window of ``runtime.bonewin`` (39 mm, 0.246 mm, five context slices and
the identified region as a sixth channel) and returns MC2's periosteal envelope in the middle slice. It is
a small 2D U-Net built for 2 CPU cores: a space-to-depth stem (160 x 160 x 6 becomes 80 x 80 x 24 without
a full-resolution convolution), four levels of 24-96 channels, a pixel-shuffle head back to 160 x 160.

Training is the normal path on a CPU:

* phantoms are read once and cached as windows around the true MC2 (``cache``: float16 image, the truth,
  and several degraded versions of the "which bone" prior, as the identification stage gives it: coarser,
  dilated or eroded, shifted, ending up to 4 mm early or late);
* each step draws 2D samples with nnU-Net-style augmentation (rotation, scale, mirror, intensity scale and
  shift, noise, blur) on the fly, which costs milliseconds;
* the learning rate follows a cosine over a *time* budget (``--minutes``), so a run on a slow machine ends
  on time with a finished schedule; ``last.pt`` is written every ``save_every`` steps and a killed run
  resumes from it where it stopped (steps, optimiser, elapsed time, random state).
"""

from __future__ import annotations

import glob
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vbmd_rt.runtime import bonewin, identify
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.preprocess import to_model_mask

CACHE_PX = 200  # cached window: the training window plus room for shifts and rotations
WIDTHS = (16, 32, 48, 64)


# --------------------------------------------------------------------------- the network


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BoneWinNet(nn.Module):
    """(N, CHANNELS, 160, 160) -> (N, 1, 160, 160) logits of MC2's envelope in the middle slice."""

    def __init__(self, in_channels: int = bonewin.CHANNELS, widths=WIDTHS):
        super().__init__()
        self.widths = tuple(int(v) for v in widths)
        self.stem = nn.PixelUnshuffle(2)
        w = list(widths)
        self.enc = nn.ModuleList([_block(in_channels * 4, w[0])])
        for a, b in zip(w[:-1], w[1:], strict=True):
            self.enc.append(_block(a, b, stride=2))
        self.dec = nn.ModuleList([_block(b + a, a) for a, b in zip(w[:-1], w[1:], strict=True)][::-1])
        self.head = nn.Conv2d(w[0], 4, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        skips = []
        y = self.stem(x)
        for i, e in enumerate(self.enc):
            y = e(y)
            if i < len(self.enc) - 1:
                skips.append(y)
        for d in self.dec:
            s = skips.pop()
            y = F.interpolate(y, size=s.shape[-2:], mode="bilinear", align_corners=False)
            y = d(torch.cat([y, s], dim=1))
        return self.shuffle(self.head(y))


# --------------------------------------------------------------------------- the cache


def pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Scan and truth pairs in a phantom folder (``NAME.AIM`` + ``NAME_GT.AIM``), sorted."""
    out = []
    for gt in sorted(folder.glob("*_GT.AIM")):
        scan = gt.with_name(gt.name[: -len("_GT.AIM")] + ".AIM")
        if scan.is_file():
            out.append((scan, gt))
    return out


def degrade(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A truth region (bool, model grid) made to look like the identification stage's coarse region: on a
    2x coarser grid, dilated or eroded by up to 1 mm, shifted by up to 1.5 mm, its distal end moved by up
    to 4 mm either way (extended slices repeat the last one, as a phalanx merged into the head would)."""
    c = identify.reduce2(truth) > 0.5  # the identification stage's coarse grid
    r = int(rng.integers(-2, 3))
    if r:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(r) + 1, 2 * abs(r) + 1))
        op = cv2.dilate if r > 0 else cv2.erode
        c = np.stack([op(s.astype(np.uint8), k) > 0 for s in c])
    if rng.random() < 0.5:
        dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        c = np.roll(c, (dy, dx), axis=(1, 2))
    zs = np.flatnonzero(c.any(axis=(1, 2)))
    if zs.size:
        end = int(zs[-1])
        shift = int(rng.integers(-8, 9))
        if shift < 0:
            c[max(end + 1 + shift, 1) :] = False
        elif shift > 0:
            c[end + 1 : end + 1 + shift] = c[end]
    return identify.expand2(c, truth.shape)


def cache_case(scan_path: Path, gt_path: Path, rng: np.random.Generator, priors: int = 4) -> dict | None:
    """One phantom as training windows: image (z, CACHE_PX, CACHE_PX) float16 in network units, truth uint8,
    ``priors`` degraded prior channels (float16); slices from the first to 8 mm past the joint."""
    scan = aim.read_aim(scan_path)
    spacing = scan.spacing_zyx
    vol, geo = bonewin.model_volume(scan.data, spacing, scan.calibration)
    gt = aim.read_aim(gt_path)
    truth = to_model_mask(np.asarray(gt.data) != 0, geo) > 0.5
    if not truth.any():
        return None
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    extra = int(round(8.0 / bonewin.GRID.spacing_mm))
    z1 = min(truth.shape[0], int(zs[-1]) + 1 + extra)
    win = bonewin.place(truth, 0)
    half = (CACHE_PX - bonewin.WINDOW_PX) // 2
    big = bonewin.Window(win.y0 - half, win.x0 - half, 0, z1, CACHE_PX)
    air = float(np.percentile(vol[:, ::8, ::8], 1))
    img = bonewin.cut(vol[:z1], big, air)
    t = bonewin.cut(truth[:z1], big, False)
    ps = [bonewin.prior(bonewin.cut(degrade(truth, rng)[:z1], big, False)) for _ in range(priors)]
    return {
        "name": scan_path.stem,
        "image": img.astype(np.float16),
        "truth": t.astype(np.uint8),
        "priors": np.stack(ps).astype(np.float16),
    }


def build_cache(folders: list[Path], out: Path, seed: int = 0, log=print) -> list[Path]:
    """Cache every pair of ``folders`` under ``out`` (``FOLDER__NAME.npz``; existing files are kept). The
    cache is enough: a cached phantom whose scan was deleted since (a small phantom takes 30-100 MB, its
    cached windows a third of that) stays in the returned list as long as its truth (``NAME_GT.AIM``) is
    there."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for folder in folders:
        for f in sorted(out.glob(f"{glob.escape(folder.name)}__*.npz")):
            name = f.name[len(folder.name) + 2 : -len(".npz")]
            if not f.name.endswith(".tmp.npz") and (folder / f"{name}_GT.AIM").is_file() and f not in files:
                files.append(f)  # a phantom deleted on purpose (its truth too) leaves training
        for scan, gt in pairs(folder):
            f = out / f"{folder.name}__{scan.stem}.npz"
            if f in files:
                continue
            if not f.exists():
                try:  # degraded priors seeded by the file's name: the same whatever else was made or deleted
                    case = cache_case(scan, gt, np.random.default_rng([seed, zlib.crc32(f.name.encode())]))
                except (OSError, ValueError) as e:  # a phantom still being written: next time
                    log(f"skipped {scan.name}: {e}")
                    continue
                if case is None:
                    continue
                tmp = f.with_suffix(".tmp.npz")
                np.savez(tmp, image=case["image"], truth=case["truth"], priors=case["priors"])
                tmp.replace(f)
                log(f"cached {f.name} {case['image'].shape}")
            files.append(f)
    return files


# --------------------------------------------------------------------------- sampling and augmentation

_OPEN = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
NOTCH_SLICE_PX = 20  # a cached slice whose envelope has a notch this large (1.2 mm^2) is drawn more often


def notch(target: np.ndarray) -> np.ndarray:
    """What the convex hull of a 2D envelope (bool) holds outside it, without 1-pixel slivers: an erosion's pit
    through the cortex, the groove between two condyles. The envelope follows the pit (the pit's soft tissue
    is not bone), and a network that sees the bone's density more than its outline fills it: these pixels
    can weigh more in training (``Recipe.notch_weight``)."""
    if not target.any():
        return np.zeros(target.shape, bool)
    hull = np.zeros(target.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero(target.astype(np.uint8))), 1)
    hull[target > 0] = 0
    return cv2.morphologyEx(hull, cv2.MORPH_OPEN, _OPEN) > 0


def notched_slices(truth: np.ndarray) -> np.ndarray:
    """Indices of the slices of a cached truth (z, y, x) whose envelope has a notch (``notch``) of at least
    ``NOTCH_SLICE_PX`` pixels."""
    return np.flatnonzero([notch(t > 0).sum() >= NOTCH_SLICE_PX for t in truth])


def sample(
    case: dict, rng: np.random.Generator, notch_weight: float = 0.0, notch_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented (CHANNELS, 160, 160) input, its (160, 160) target and the target's pixel weights (1, and
    ``1 + notch_weight`` in the envelope's notches) from a cached case. With ``notch_share``, that share of
    the draws takes a slice with a notch (``case["notched"]``, where the case has one)."""
    img, truth, priors = case["image"], case["truth"], case["priors"]
    n = img.shape[0]
    notched = case.get("notched")
    if notch_share and notched is not None and len(notched) and rng.random() < notch_share:
        k = int(notched[int(rng.integers(0, len(notched)))])
    else:
        k = int(rng.integers(0, n))
    idx = np.clip(k + np.asarray(bonewin.CONTEXT), 0, n - 1)
    chans = [img[j].astype(np.float32) for j in idx]
    chans.append(priors[int(rng.integers(0, priors.shape[0]))][k].astype(np.float32))
    target = truth[k].astype(np.float32)
    size = bonewin.WINDOW_PX
    angle = float(rng.uniform(0, 360))
    scale = float(rng.uniform(0.85, 1.18))
    c = CACHE_PX / 2.0
    shift = rng.uniform(-14, 14, size=2)
    m = cv2.getRotationMatrix2D((c, c), angle, scale)
    m[:, 2] += (size / 2.0 - c) + shift  # the cache window's centre to the training window's, jittered
    if rng.random() < 0.5:  # a left hand
        m = np.array([[-1, 0, size - 1], [0, 1, 0]], np.float64) @ np.vstack([m, [0, 0, 1]])
    warp = [
        cv2.warpAffine(ch, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for ch in chans[:-1]
    ]
    warp.append(cv2.warpAffine(chans[-1], m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0))
    tgt = cv2.warpAffine(target, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0) > 0.5
    x = np.stack(warp)
    im = x[:-1]
    im *= np.float32(rng.uniform(0.7, 1.35))  # SynthSeg-like: the densities are not what is learnt
    im += np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        s = float(rng.uniform(0.4, 1.2))
        for j in range(im.shape[0]):
            im[j] = cv2.GaussianBlur(im[j], (0, 0), s)
    if rng.random() < 0.5:
        im += rng.normal(0, rng.uniform(0.01, 0.08), im.shape).astype(np.float32)
    if rng.random() < 0.1:  # no usable prior: the bone at the centre
        x[-1] = 0.0
    weight = np.ones(tgt.shape, np.float32)
    if notch_weight:
        weight[notch(tgt)] += np.float32(notch_weight)
    return x, tgt.astype(np.float32), weight


# --------------------------------------------------------------------------- training


@dataclass
class Recipe:
    data: list[str]  # phantom folders (NAME.AIM + NAME_GT.AIM)
    out: str
    cache: str
    minutes: float = 60.0  # wall-time budget of the training loop; the learning rate follows it
    batch: int = 24
    lr: float = 2e-3
    threads: int = 2
    save_every: int = 50
    refresh_every: int = 300  # steps between looks for phantoms added to the data folders meanwhile
    seed: int = 0
    widths: tuple[int, ...] = WIDTHS
    init: str | None = None  # warm start from a checkpoint (a fine-tune on more families)
    # Extra BCE weight of the envelope's notches (erosions' pits), and the share of draws from notched slices.
    # Off: 4.0 and 0.25 (the recipe from scratch, 85 min, 7,578 steps) left the eroded standard phantoms'
    # Dice where it was (seed 9100's 22: 0.9800 against the bundled model's 0.9801; thirty-sixth pass).
    notch_weight: float = 0.0
    notch_share: float = 0.0
    notes: dict = field(default_factory=dict)


#: The recipe's fields that decide what a step does: a resumed run whose checkpoint has other values says so.
RESUME_KEEPS = ("batch", "lr", "widths", "seed", "notch_weight", "notch_share")


def dice_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice per sample plus BCE, whose pixels weigh ``weight`` (normalised to a mean of 1 per batch, so a
    weighted batch's loss stays on the scale of an unweighted one)."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    if weight is not None:
        weight = weight / weight.mean()
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight) + dice.mean()


def train(r: Recipe, log=print) -> Path:
    """Train (or resume) a ``bonewin2d`` network; returns ``OUT/last.pt``. Stops when the time budget is spent."""
    torch.set_num_threads(r.threads)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    cases: dict[Path, dict] = {}

    def refresh() -> list[dict]:
        for f in build_cache([Path(d) for d in r.data], Path(r.cache), r.seed, log):
            if f not in cases:
                with np.load(f) as z:
                    cases[f] = {k: z[k] for k in ("image", "truth", "priors")}
                if r.notch_share:  # the notched slices are looked for only where draws are taken from them
                    cases[f]["notched"] = notched_slices(cases[f]["truth"])
        slices = sum(c["image"].shape[0] for c in cases.values())
        notched = sum(len(c.get("notched", ())) for c in cases.values())
        log(
            f"{len(cases)} cases, {slices} slices"
            + (f", {notched} with a notch in the envelope" if r.notch_share else "")
        )
        return [cases[f] for f in sorted(cases)]  # the same order fresh or resumed: the rng draws from it

    pool = refresh()
    net = BoneWinNet(widths=r.widths).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=1e-4)
    state = {"step": 0, "seconds": 0.0, "history": []}
    last = out / "last.pt"
    if last.exists():
        ck = torch.load(last, weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        rng = np.random.default_rng()
        rng.bit_generator.state = ck["rng"]
        log(f"resumed at step {state['step']} ({state['seconds'] / 60:.1f} min)")
        then, now = ck.get("recipe", {}), asdict(r)
        changed = [k for k in RESUME_KEEPS if then.get(k) != now[k]]
        if changed:  # a checkpoint of another recipe (or of an older version of this one) trains on with this one
            log("the checkpoint's recipe differs: " + ", ".join(f"{k} {then.get(k)} -> {now[k]}" for k in changed))
    else:
        rng = np.random.default_rng(r.seed)
        if r.init:
            net.load_state_dict(torch.load(r.init, weights_only=False)["net"])
    budget = r.minutes * 60.0
    net.train()
    losses: list[float] = []
    t_mark = time.perf_counter()
    while state["seconds"] < budget:
        lr = r.lr * 0.5 * (1 + math.cos(math.pi * min(state["seconds"] / budget, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        if r.refresh_every and state["step"] and state["step"] % r.refresh_every == 0:
            pool = refresh()
            t_mark = time.perf_counter()  # caching is not training time
        drawn = [
            sample(pool[int(rng.integers(0, len(pool)))], rng, r.notch_weight, r.notch_share) for _ in range(r.batch)
        ]
        xs, ys, ws = zip(*drawn, strict=True)
        x = torch.from_numpy(np.stack(xs)).to(memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack(ys))[:, None]
        loss = dice_bce(net(x), y, torch.from_numpy(np.stack(ws))[:, None] if r.notch_weight else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        now = time.perf_counter()
        state["seconds"] += now - t_mark
        t_mark = now
        state["step"] += 1
        if state["step"] % r.save_every == 0 or state["seconds"] >= budget:
            entry = {"step": state["step"], "minutes": round(state["seconds"] / 60, 2), "loss": float(np.mean(losses))}
            entry["cases"] = len(pool)
            state["history"].append(entry)
            losses = []
            log(json.dumps(entry))
            tmp = out / "last.pt.tmp"
            torch.save(
                {
                    "net": net.state_dict(),
                    "opt": opt.state_dict(),
                    "state": state,
                    "rng": rng.bit_generator.state,
                    "recipe": asdict(r),
                },
                tmp,
            )
            tmp.replace(last)
            t_mark = time.perf_counter()  # saving is not training time
    return last
