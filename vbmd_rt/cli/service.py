"""The workstation service: ``watch`` a folder, ``health`` for the container."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from vbmd_rt.cli.app import app


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
    max_memory: str | None = typer.Option(
        None, "--max-memory", help="Refuse scans predicted to need more memory, e.g. 16G (default: 3/4 of the RAM)."
    ),
    stable_for: float = typer.Option(
        10.0,
        "--stable-for",
        help="Seconds a file's size must stay the same before "
        "it counts as arrived (0: only a NAME.AIM.done marker counts).",
    ),
    poll: float = typer.Option(2.0, "--poll", min=0.05, help="Seconds between looks at the input folder."),
    move_done: Path | None = typer.Option(None, "--move-done", help="Move finished scans (and markers) here."),
    once: bool = typer.Option(False, "--once", help="Process what is in the folder, then exit."),
    mask_format: str = typer.Option("rle", "--mask-format", help="Mask AIM: rle, cropped or char (see `run`)."),
    export: str | None = typer.Option(None, "--export", help="Also write scan and mask as nifti or mha."),
):
    """Serve a folder: every scan that arrives in IN is processed exactly once into OUT (SIGTERM stops)."""
    from vbmd_rt.cohort import batch as cohort
    from vbmd_rt.runtime import pipeline, service

    if report not in (None, "html"):
        raise typer.BadParameter("--report takes html")
    from vbmd_rt.cli.scans import _check_mask_options, _max_memory

    _check_mask_options(mask_format, export)
    options = pipeline.RunOptions(
        report_html=report == "html",
        overwrite=True,
        save_prob=save_prob,
        max_memory=_max_memory(max_memory),
        mask_format=mask_format,
        export=export,
    )
    job = cohort.Job(
        model=None if model is None else str(model), backend=backend, device=device, threads=threads, options=options
    )

    def log(msg: str) -> None:
        typer.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}", err=True)

    with cohort.load_job(job) as predictor:
        w = service.Watcher(
            in_dir,
            out,
            lambda p: predictor.run_to(p, out, options),
            stable_for=stable_for,
            backend_info=predictor.backend.describe(),
            poll=poll,
            move_done=move_done,
            log=log,
        )
        w.install_signal_handlers()
        be = predictor.backend
        log(f"vbmd-rt watch: {in_dir} -> {out}; backend {be.name} ({be.precision}); model {predictor.model.name}")
        counts = w.run(once=once)
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
