"""Commands beyond ``info``. Each stays thin: parse, call one library function, print."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from vbmd_rt.cli import app


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Output folder (created if missing)."),
    cases: int = typer.Option(1, "--cases", "-n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed; the same seed and version give the same files."),
    size: str = typer.Option("small", "--size", help="full: 82 µm, 1536 x 1536; small: 246 µm, 512 x 512."),
    start: int = typer.Option(0, "--start", min=0, help="Index of the first case (to extend a cohort)."),
    preview: bool = typer.Option(False, "--preview", help="Also write OUT/preview.png, a montage of slices."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Processes (the files do not depend on it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Synthetic HR-pQCT phantoms of MC2 with exact truth: NAME.AIM, NAME_GT.AIM, NAME.truth.json."""
    from rich.progress import Progress

    from vbmd_rt.runtime import phantom

    if size not in phantom.SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(sorted(phantom.SIZES))}")
    with Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task(f"phantoms ({size})", total=cases)
        truths = phantom.synth(out, cases, seed, size, start=start, progress=lambda i: bar.advance(task),
                                workers=workers)
    if not quiet:
        for t in truths:
            typer.echo(f"{t['name']}: D100 {t['d100_mg_ha_cm3']:.1f} mg HA/cm3, {t['slices']} MC2 slices, "
                       f"{t['side']} hand, motion grade {t['motion_grade']}, {len(t['erosions'])} erosions")
    if preview:
        png = phantom.preview(out, Path(out) / "preview.png")
        if not quiet:
            typer.echo(f"preview: {png}")


@app.command()
def run(
    scans: list[Path] = typer.Argument(..., help="Scan files (AIM or ISQ) or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Exported model folder, or classical (default: the bundled network)."),
    backend: str = typer.Option("auto", "--backend", "-b", help="auto, tensorrt, tensorrt-rtx, onnxruntime or torch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    side: str = typer.Option("auto", "--side", help="auto (detected), left or right."),
    report: str | None = typer.Option(None, "--report", help="Also write a report: html."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo scans whose outputs exist (default: skip them)."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write NAME_PROB.AIM (probability x100)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for ONNX Runtime."),
    cluster: str | None = typer.Option(None, "--cluster", help="Run on Dask: local, or tcp://HOST:PORT of a scheduler."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes of --cluster local."),
    retries: int = typer.Option(2, "--retries", min=0, help="Retries of a crashed scan on Dask."),
    num_parts: int = typer.Option(1, "--num-parts", min=1, help="Split the cohort into N parts (e.g. a SLURM array)..."),
    part_id: int = typer.Option(0, "--part-id", min=0, help="...and run part K (0-based)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Segment MC2 and measure vBMD, fully automatically: OUT/NAME_SEG.AIM, NAME.json, NAME.png, summary.csv.

    Scans whose outputs exist and are valid are skipped (--overwrite redoes them), so a cohort resumes
    where it stopped.
    """
    from rich.progress import Progress

    from vbmd_rt.runtime import cohort, pipeline
    from vbmd_rt.runtime.atomic import check_writable_dir
    from vbmd_rt.runtime.errors import VbmdInputError

    if report not in (None, "html"):
        raise typer.BadParameter("--report takes html")
    if side not in ("auto", "left", "right"):
        raise typer.BadParameter("--side must be auto, left or right")
    check_writable_dir(out)
    files = pipeline.expand_inputs(scans)
    if not files:
        raise VbmdInputError(scans[0], "holds no scan files (*.AIM, *.ISQ)", "give scan files or a folder of them")
    files = cohort.shard(files, num_parts, part_id)
    options = pipeline.RunOptions(side=side, report_html=report == "html", overwrite=overwrite, save_prob=save_prob)
    job = cohort.Job(model=None if model is None else str(model), backend=backend, device=device, threads=threads,
                     options=options, backend_factory=torch_backend if backend == "torch" else None)

    with Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task("scans", total=len(files))

        def on_row(r):
            _print_row(r, quiet, bar.console.print)
            bar.advance(task)

        if cluster:
            if not quiet:
                typer.echo(f"{len(files)} scans on Dask ({cluster})", err=True)
            rows = cohort.run_dask(files, out, job, cluster, retries=retries, workers=workers, on_row=on_row)
        else:
            mdl, be = cohort.load_job(job)
            if not quiet:
                typer.echo(f"backend: {be.name} ({be.precision})" + (f" - {be.reason}" if be.reason else ""), err=True)

            def stage(i, s):
                bar.update(task, description=f"scan {i + 1}/{len(files)}: {s}")

            rows = cohort.run_local(files, out, mdl, be, options, on_row=on_row, stage=stage)
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = sum(r["status"] == "skipped" for r in rows)
    if len(rows) > 1 or cluster or num_parts > 1:  # a cohort; one scan's summary is its NAME.json
        csv_path, _ = cohort.write_summary(out, rows, num_parts, part_id)
        if not quiet:
            typer.echo(f"summary: {csv_path}", err=True)
    if skipped and not quiet:
        typer.echo(f"{skipped} of {len(rows)} scans skipped: their outputs exist (--overwrite redoes them)", err=True)
    if failed:
        typer.echo(f"vbmd-rt: {len(failed)} of {len(files)} scans failed", err=True)
        raise typer.Exit(1 if any(r["error_kind"] == "internal" for r in failed) else 2)


def _print_row(r: dict, quiet: bool, echo) -> None:
    if r["status"] == "failed":
        prefix = "error" if r["error_kind"] == "input" else f"internal error on {r['scan']}"
        typer.echo(f"vbmd-rt: {prefix}: {r['error']}", err=True)
        if r["error_kind"] == "internal":
            _debug_traceback()
        return
    if quiet:
        return
    d = r["d100_mg_ha_cm3"]
    tail = "skipped (outputs exist)" if r["status"] == "skipped" else f"{r['total_s']:.1f} s"
    echo(f"{r['scan']}: D100 {'n/a' if d is None else f'{d:.1f}'} mg HA/cm3, {r['bone_volume_mm3']:.0f} mm3, "
         f"{r['slices']} slices, {r['side'] or '?'} hand, {tail}"
         + "".join(f"\n  warning: {w}" for w in (r["warnings"] or "").split(" | ") if w))


def torch_backend(model, device):
    """``--backend torch``: PyTorch on the exported weights (train extra); the runtime never imports it."""
    from vbmd_rt.export.torch_backend import TorchBackend

    return TorchBackend.from_model(model, device)


def _debug_traceback() -> None:
    import os
    import traceback

    if os.environ.get("VBMD_RT_DEBUG"):
        traceback.print_exc()


@app.command()
def train(
    data: Path = typer.Argument(..., help="Folder of scan + mask pairs (e.g. from `vbmd-rt synth`) or a CSV."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: best.pt, last.pt, train.json."),
    arch: str = typer.Option("unet3d", "--arch", help="unet3d or unet2d."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    steps: int = typer.Option(200, "--steps", min=1, help="Steps per epoch."),
    lr: float | None = typer.Option(None, "--lr", help="Default: 1e-5 (2D), 1e-4 (3D), as the paper."),
    batch: int | None = typer.Option(None, "--batch", help="Default: 4 (2D), 1 (3D)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    val_data: Path | None = typer.Option(None, "--val-data", help="Held-out folder instead of the 20% split."),
    init_resnet34: Path | None = typer.Option(None, "--init-resnet34", help="ImageNet ResNet34 state dict (2D)."),
    schedule: str = typer.Option("constant", "--schedule", help="constant or poly."),
    resume: Path | None = typer.Option(None, "--resume", help="Go on from a last.pt."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes for loading cases."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train the 2D or 3D U-Net on scan/mask pairs; the best checkpoint goes to OUT/best.pt."""
    from rich.progress import Progress

    from vbmd_rt.export.train import TrainConfig
    from vbmd_rt.export.train import train as do_train

    if arch not in ("unet3d", "unet2d"):
        raise typer.BadParameter("--arch must be unet3d or unet2d")
    cfg = TrainConfig(data=str(data), out=str(out), arch=arch, epochs=epochs, steps_per_epoch=steps, lr=lr,
                      batch=batch, seed=seed, device=device, val_data=str(val_data) if val_data else None,
                      init_resnet34=str(init_resnet34) if init_resnet34 else None, schedule=schedule, workers=workers)
    with Progress(disable=quiet, transient=True) as bar:
        best = do_train(cfg, resume=str(resume) if resume else None, progress=bar,
                        log=(lambda s: None) if quiet else bar.console.print)
    typer.echo(f"best checkpoint: {best}\nexport it with: vbmd-rt export {best} -o MODEL")


@app.command()
def export(
    checkpoint: Path | None = typer.Argument(None, help="A best.pt from `vbmd-rt train` (default: the bundled model)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for model.onnx, model.fp16.onnx, model.json."),
    validation: Path | None = typer.Option(None, "--validation", help="A validation JSON to put in the card."),
    name: str | None = typer.Option(None, "--name", help="Model name in the card."),
    engine: str | None = typer.Option(None, "--engine", help="Also build an engine: rtx (TensorRT-RTX, any machine) "
                                      "or trt (classic TensorRT, on this GPU)."),
    sm: str = typer.Option("75", "--sm", help="TensorRT-RTX target compute capability (75: RTX 2080)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Build the engine for this exported model "
                                      "(default: what -o holds, else the bundled model)."),
    precision: str = typer.Option("fp16", "--precision", help="fp16, or int8 (needs `vbmd-rt calib` data: --calib)."),
    calib: Path | None = typer.Option(None, "--calib", help="Calibration slices from `vbmd-rt calib` (INT8)."),
    batch: str = typer.Option("1,16,32", "--batch", help="2D profile: min,opt,max slices per batch."),
):
    """Export to ONNX (FP32, FP16) with a model card, checked with ONNX Runtime; optionally build an engine.

    With --engine and no checkpoint, only the engine is built, for --model (or the bundled model).
    """
    import json

    from vbmd_rt.runtime import engines
    from vbmd_rt.runtime.model import load_model

    if engine not in (None, "rtx", "trt"):
        raise typer.BadParameter("--engine takes rtx or trt")
    if precision not in ("fp16", "int8"):
        raise typer.BadParameter("--precision takes fp16 or int8")
    target = model
    if checkpoint is not None or engine is None:
        from vbmd_rt.export.onnx_export import export as do_export

        out = out or Path("model")
        extra = {"validation": json.loads(validation.read_text())} if validation else None
        card = do_export(checkpoint, out, extra_card=extra, name=name)
        c = card["export_checks"]
        typer.echo(f"{out}: {card['architecture']}, {card['parameters']} parameters; ONNX FP32 vs torch max "
                   f"{c['fp32_vs_torch_max_abs']:.1e}, FP16 vs FP32 mask Dice {c['fp16_vs_fp32_mask_dice_min']:.5f}")
        target = out
    elif target is None and out is not None and (out / "model.json").exists():
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
    engines.build(mdl, engine, sm=sm, precision=precision, profile=engines.default_profile(mdl, sizes),
                  onnx_path=onnx, log=typer.echo)


@app.command()
def watch(
    in_dir: Path = typer.Argument(..., help="Folder the scanner writes scans into."),
    out: Path = typer.Argument(..., help="Output folder (results, failed/, .vbmd-rt/ journal and health)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Exported model folder, or classical."),
    backend: str = typer.Option("auto", "--backend", "-b", help="auto, tensorrt, tensorrt-rtx or onnxruntime."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    report: str | None = typer.Option(None, "--report", help="Also write a report: html."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write NAME_PROB.AIM."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for ONNX Runtime."),
    stable_for: float = typer.Option(10.0, "--stable-for", help="Seconds a file's size must stay the same before "
                                     "it counts as arrived (0: only a NAME.AIM.done marker counts)."),
    poll: float = typer.Option(2.0, "--poll", min=0.05, help="Seconds between looks at the input folder."),
    move_done: Path | None = typer.Option(None, "--move-done", help="Move finished scans (and markers) here."),
    once: bool = typer.Option(False, "--once", help="Process what is in the folder, then exit."),
):
    """Serve a folder: every scan that arrives in IN is processed exactly once into OUT (SIGTERM stops)."""
    from vbmd_rt.runtime import cohort, pipeline, service

    if report not in (None, "html"):
        raise typer.BadParameter("--report takes html")
    options = pipeline.RunOptions(report_html=report == "html", overwrite=True, save_prob=save_prob)
    job = cohort.Job(model=None if model is None else str(model), backend=backend, device=device, threads=threads,
                     options=options)
    mdl, be = cohort.load_job(job)

    def log(msg: str) -> None:
        typer.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}", err=True)

    w = service.Watcher(in_dir, out, lambda p: pipeline.run_scan(p, out, mdl, be, options), options,
                        stable_for=stable_for, poll=poll, move_done=move_done, log=log)
    w.install_signal_handlers()
    log(f"vbmd-rt watch: {in_dir} -> {out}; backend {be.name} ({be.precision}); model {mdl.name}")
    be.activate()
    try:
        counts = w.run(once=once)
    finally:
        be.deactivate()
    log(f"stopped: {counts.done} done, {counts.failed} failed, {counts.recovered} recovered")


@app.command()
def health(
    out: Path = typer.Argument(..., help="The output folder of a running `vbmd-rt watch`."),
    max_age: float = typer.Option(120.0, "--max-age", help="Seconds after which a silent service counts as dead."),
):
    """Exit 0 when the watch service on OUT is alive (for a container HEALTHCHECK), 1 otherwise."""
    from vbmd_rt.runtime.service import health as check

    ok, msg = check(out, max_age)
    typer.echo(msg, err=not ok)
    raise typer.Exit(0 if ok else 1)


@app.command(name="eval")
def eval_(
    pred: Path = typer.Option(..., "--pred", help="Output folder of `vbmd-rt run` (NAME.json, NAME_SEG.AIM, NAME_PROB.AIM)."),
    truth: Path = typer.Option(..., "--truth", help="Scans with expert masks (NAME.AIM + NAME_GT.AIM/_MASK/.GOBJ) or a CSV."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder: eval.json, eval.md, cases.csv, plots."),
    d100_cases: int | None = typer.Option(None, "--d100-cases", min=3, help="D100 statistics on the first N cases."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Agreement with expert contours: Dice, IoU, accuracy, AUC, HD95; D100 Pearson/Spearman/ICC/Bland-Altman."""
    from vbmd_rt.export.evaluate import evaluate_outputs, markdown, write_report

    report = evaluate_outputs(pred, truth, d100_cases=d100_cases, log=None if quiet else (lambda s: typer.echo(s, err=True)))
    files = write_report(report, out)
    if not quiet:
        typer.echo(markdown(report))
        if not any(f.suffix == ".png" for f in files):
            typer.echo("(plots need matplotlib: pip install 'vbmd-rt[eval]')", err=True)


@app.command()
def bench(
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the results as JSON here."),
    size: str = typer.Option("full", "--size", help="full (1536 x 1536, the paper's setting) or small."),
    runs: int = typer.Option(5, "--runs", min=1, help="Measured runs per backend (after the warm-up)."),
    warmup: int = typer.Option(1, "--warmup", min=0),
    backends: str | None = typer.Option(None, "--backends", help="Comma list, e.g. onnxruntime,classical (default: all here)."),
    model2d: Path | None = typer.Option(None, "--model2d", help="An exported 2D model for the per-slice latency."),
    no_network: bool = typer.Option(False, "--no-network", help="Skip the network-only latency and FLOPs."),
    no_2d: bool = typer.Option(False, "--no-2d", help="Skip the 2D net (exporting an untrained one needs torch)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for ONNX Runtime."),
    cache: Path = typer.Option(Path(".cache/bench"), "--cache", help="Where the phantom (and the 2D net) are kept."),
):
    """Latency per stage vs the paper's 33 s, network-only latency, the physical floor, peak memory."""
    from vbmd_rt.bench import suite

    if size not in ("full", "small"):
        raise typer.BadParameter("--size must be full or small")
    suite.run(out, size=size, runs=runs, warmup=warmup, cache=cache,
              backends=backends.split(",") if backends else None, model2d=model2d, network=not no_network,
              threads=threads, net2d=not no_2d, log=lambda s: typer.echo(s))


@app.command()
def calib(
    data: list[Path] = typer.Argument(..., help="Scans (or folders of them) to take calibration inputs from."),
    out: Path = typer.Option(..., "--out", "-o", help="The calibration file (.npz)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Exported model folder (default: the bundled one)."),
    count: int = typer.Option(64, "--count", "-n", min=1, help="Calibration inputs (slices for 2D, windows for 3D)."),
    heldout: float = typer.Option(0.25, "--heldout", min=0.05, max=0.9, help="Share of cases kept out for the INT8 gate."),
    seed: int = typer.Option(0, "--seed"),
):
    """INT8 calibration inputs picked over cases, slice positions and motion grades (for export --precision int8)."""
    from vbmd_rt.calib import select
    from vbmd_rt.runtime.model import load_model

    arrays = select.collect(load_model(model), data, count=count, heldout=heldout, seed=seed, log=typer.echo)
    select.save(arrays, out)
    name = next(k for k in arrays if k not in ("heldout", "meta"))
    typer.echo(f"{out}: {arrays[name].shape[0]} inputs of {arrays[name].shape[1:]}, "
               f"{arrays['heldout'].shape[0]} held out")
