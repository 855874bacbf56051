"""Models: ``train``, ``export`` (ONNX, engines) and ``calib`` (INT8 calibration data)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from vbmd_rt.cli.app import app, examples, require_extra


@app.command(
    epilog=examples(
        "vbmd-rt synth phantoms --cases 40 --seed 1 && vbmd-rt train phantoms -o run1 --epochs 20",
        "vbmd-rt train annotated/ -o run2 --arch unet2d --val-data held-out/",
        "vbmd-rt train annotated/ -o run2 --resume run2/last.pt",
    )
)
def train(
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Folder of scan + mask pairs (e.g. from `vbmd-rt synth`) or a CSV."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: best.pt, last.pt, train.json."),
    arch: Literal["unet3d", "unet2d", "bonewin2d"] = typer.Option(
        "unet3d", "--arch", help="Network: the paper's 3D or 2D U-Net, or the one-bone segmenter (CPU recipe)."
    ),
    minutes: float = typer.Option(60.0, "--minutes", help="bonewin2d: wall-time budget (a rerun resumes)."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Passes over --steps batches."),
    steps: int = typer.Option(200, "--steps", min=1, help="Steps per epoch."),
    lr: float | None = typer.Option(None, "--lr", help="Default: 1e-5 (2D), 1e-4 (3D), as the paper."),
    batch: int | None = typer.Option(None, "--batch", help="Default: 4 (2D), 1 (3D)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the sampling and the weights."),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", "--device", help="Where to train."),
    val_data: Path | None = typer.Option(None, "--val-data", help="Held-out folder instead of the 20% split."),
    init_resnet34: Path | None = typer.Option(None, "--init-resnet34", help="ImageNet ResNet34 state dict (2D)."),
    schedule: Literal["constant", "poly"] = typer.Option("constant", "--schedule", help="Learning-rate schedule."),
    resume: Path | None = typer.Option(None, "--resume", help="Go on from a last.pt."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes for loading cases."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Train the 2D or 3D U-Net on scan/mask pairs; the best checkpoint goes to OUT/best.pt.

    ``--arch bonewin2d`` trains the one-bone segmenter on 2 CPU cores within ``--minutes`` (OUT/last.pt,
    resumed by the same command); DATA is a folder of NAME.AIM + NAME_GT.AIM pairs."""
    require_extra("torch", "train", "vbmd-rt train")  # before importing export.train, which imports torch
    from rich.progress import Progress

    from vbmd_rt.export.train import TrainConfig
    from vbmd_rt.export.train import train as do_train

    if arch == "bonewin2d":
        from vbmd_rt.export import bonewin

        recipe = bonewin.Recipe(data=[str(data)], out=str(out), cache=str(out / "cache"), minutes=minutes, seed=seed)
        last = bonewin.train(recipe, log=(lambda m: None) if quiet else typer.echo)
        typer.echo(f"last checkpoint: {last} (export: vbmd-rt export {last} -o MODEL)")
        return
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        arch=arch,
        epochs=epochs,
        steps_per_epoch=steps,
        lr=lr,
        batch=batch,
        seed=seed,
        device=device,
        val_data=str(val_data) if val_data else None,
        init_resnet34=str(init_resnet34) if init_resnet34 else None,
        schedule=schedule,
        workers=workers,
    )
    with Progress(disable=quiet, transient=True) as bar:
        best = do_train(
            cfg,
            resume=str(resume) if resume else None,
            progress=bar,
            log=(lambda s: None) if quiet else bar.console.print,
        )
    typer.echo(f"best checkpoint: {best}\nexport it with: vbmd-rt export {best} -o MODEL")


@app.command(
    epilog=examples(
        "vbmd-rt export run1/best.pt -o model1",
        "vbmd-rt export --engine rtx --sm 75   (the bundled model; the plan goes to the engine cache)",
        "vbmd-rt export --engine trt --model model1   (on the workstation's GPU; beside model1)",
        "vbmd-rt export --engine trt --precision int8 --calib calib.npz   (int8 extra)",
    )
)
def export(
    checkpoint: Path | None = typer.Argument(
        None, metavar="[CHECKPOINT]", help="A best.pt from `vbmd-rt train` (default: the bundled model)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for model.onnx, model.fp16.onnx, model.json."),
    validation: Path | None = typer.Option(None, "--validation", help="A validation JSON to put in the card."),
    name: str | None = typer.Option(None, "--name", help="Model name in the card."),
    engine: Literal["rtx", "trt"] | None = typer.Option(
        None,
        "--engine",
        help="Also build an engine: rtx (TensorRT-RTX, any machine) or trt (classic TensorRT, on this GPU). "
        "Plans go beside a model folder you name (--model, -o), else to $VBMD_RT_CACHE/engines.",
    ),
    sm: str = typer.Option("75", "--sm", help="TensorRT-RTX target compute capability (75: RTX 2080)."),
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Build the engine for this exported model (default: what -o holds, else the bundled model).",
    ),
    precision: Literal["fp16", "int8"] = typer.Option(
        "fp16", "--precision", help="Engine precision; int8 needs `vbmd-rt calib` data (--calib) and the int8 extra."
    ),
    calib: Path | None = typer.Option(None, "--calib", help="Calibration slices from `vbmd-rt calib` (INT8)."),
    batch: str = typer.Option("1,16,32", "--batch", help="2D profile: min,opt,max slices per batch."),
):
    """Export to ONNX (FP32, FP16) with a model card, checked with ONNX Runtime; optionally build an engine.

    With --engine and no checkpoint, only the engine is built, for --model (or the bundled model).
    """
    import json

    from vbmd_rt.runtime.inference import engines
    from vbmd_rt.runtime.model import CARD_NAME, load_model

    if precision == "int8":  # every argument and extra checked before any work
        if engine is None:
            raise typer.BadParameter("--precision int8 is for engines: add --engine trt")
        if calib is None:
            raise typer.BadParameter("--precision int8 needs --calib CALIB.npz from `vbmd-rt calib`")
        require_extra("modelopt", "int8", "--precision int8")
    if engine is not None:
        require_extra("tensorrt_rtx" if engine == "rtx" else "tensorrt", engine, f"--engine {engine}")
    target = model
    if checkpoint is not None or engine is None:
        require_extra("torch", "train", "exporting a checkpoint")
        require_extra("onnx", "train", "exporting a checkpoint")
        require_extra("onnxscript", "train", "exporting a checkpoint")
        from vbmd_rt.export.onnx_export import export as do_export

        out = out or Path("model")
        extra = {"validation": json.loads(validation.read_text())} if validation else None
        card = do_export(checkpoint, out, extra_card=extra, name=name)
        c = card["export_checks"]
        typer.echo(
            f"{out}: {card['architecture']}, {card['parameters']} parameters; ONNX FP32 vs torch max "
            f"{c['fp32_vs_torch_max_abs']:.1e}, FP16 vs FP32 mask Dice {c['fp16_vs_fp32_mask_dice_min']:.5f}"
        )
        target = out
    elif target is None and out is not None and (out / CARD_NAME).exists():
        target = out
    if engine is None:
        return
    mdl = load_model(target)
    sizes = tuple(int(v) for v in batch.split(","))
    if len(sizes) != 3 or not 1 <= sizes[0] <= sizes[1] <= sizes[2]:
        raise typer.BadParameter("--batch takes min,opt,max with 1 <= min <= opt <= max")
    onnx = None
    if precision == "int8":
        from vbmd_rt.calib.quantize import int8_onnx

        if calib is None:
            raise typer.BadParameter("--precision int8 needs --calib CALIB.npz from `vbmd-rt calib`")
        onnx = int8_onnx(mdl, calib, log=typer.echo)
        if onnx is None:
            raise typer.Exit(1)
    engines.build(
        mdl,
        engine,
        sm=sm,
        precision=precision,
        profile=engines.default_profile(mdl, sizes),
        onnx_path=onnx,
        log=typer.echo,
    )


@app.command(
    epilog=examples(
        "vbmd-rt calib phantoms/ -o calib.npz -n 64",
        "vbmd-rt calib scans/ -o calib.npz && vbmd-rt export --engine trt --precision int8 --calib calib.npz",
    )
)
def calib(
    data: list[Path] = typer.Argument(
        ..., metavar="DATA...", help="Scans (or folders of them) to take calibration inputs from."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The calibration file (.npz)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Exported model folder (default: the bundled one)."),
    count: int = typer.Option(64, "--count", "-n", min=1, help="Calibration inputs (slices for 2D, windows for 3D)."),
    heldout: float = typer.Option(
        0.25, "--heldout", min=0.05, max=0.9, help="Share of cases kept out for the INT8 gate."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the choice of inputs."),
):
    """INT8 calibration inputs picked over cases, slice positions and motion grades (for export --precision int8)."""
    from vbmd_rt.calib import select
    from vbmd_rt.runtime.model import load_model

    arrays = select.collect(load_model(model), data, count=count, heldout=heldout, seed=seed, log=typer.echo)
    select.save(arrays, out)
    name = next(k for k in arrays if k not in ("heldout", "meta"))
    typer.echo(
        f"{out}: {arrays[name].shape[0]} inputs of {arrays[name].shape[1:]}, {arrays['heldout'].shape[0]} held out"
    )
