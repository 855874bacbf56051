"""The workstation service: ``watch`` a folder, ``health`` for the container."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import typer

from vbmd_rt.cli.app import app, examples, require_backend


@app.command(
    epilog=examples(
        "vbmd-rt watch /data/in -o /data/out",
        "vbmd-rt watch /scanner/export -o /srv/vbmd/out --report html --move-done /scanner/done",
        "vbmd-rt watch inbox -o results --once   (process what is there, then exit)",
    )
)
def watch(
    in_dir: Path = typer.Argument(..., metavar="IN", help="Folder the scanner writes scans into."),
    out_arg: Path | None = typer.Argument(
        None, metavar="[OUT]", help="Output folder, as -o (kept for older command lines).", show_default=False
    ),
    out_opt: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (results, failed/, .vbmd-rt/ journal and health)."
    ),
    model: Path | None = typer.Option(
        None, "--model", "-m", envvar="VBMD_RT_MODEL", help="Exported model folder, or classical."
    ),
    backend: Literal["auto", "tensorrt", "tensorrt-rtx", "onnxruntime"] = typer.Option(
        "auto", "--backend", "-b", help="Inference backend (auto: the fastest one here)."
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", "--device", help="Where the network runs."),
    report: Literal["html"] | None = typer.Option(None, "--report", help="Also write a report page."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write NAME_PROB.AIM."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for ONNX Runtime and vbmd-rt's own stages."
    ),
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
    mask_format: Literal["rle", "cropped", "char"] = typer.Option(
        "rle", "--mask-format", help="Mask AIM: rle, cropped or char (see `run`)."
    ),
    export: Literal["nifti", "mha", "nii"] | None = typer.Option(
        None, "--export", help="Also write scan and mask as nifti (.nii.gz), nii (.nii) or mha."
    ),
):
    """Serve a folder: every scan that arrives in IN is processed exactly once into OUT (SIGTERM stops)."""
    from vbmd_rt.cli.scans import _check_mask_options, _max_memory
    from vbmd_rt.cohort import batch as cohort
    from vbmd_rt.runtime import pipeline, service
    from vbmd_rt.runtime.errors import VbmdInputError

    if out_arg is not None and out_opt is not None and out_arg != out_opt:
        raise typer.BadParameter(f"two output folders given ({out_arg} and -o {out_opt}): give one, with -o")
    out = out_opt or out_arg
    if out is None:
        raise typer.BadParameter("give the output folder with -o OUT")
    if not in_dir.is_dir():  # checked before anything is created
        raise VbmdInputError(in_dir, "is not a folder", "give the folder the scanner writes into")

    _check_mask_options(mask_format, export)
    require_backend(backend, model)
    # No overwrite: a re-exported scan replaces only what vbmd-rt wrote for it (the old result goes to
    # history); a file at an output's name that vbmd-rt did not write sends the scan to failed/.
    options = pipeline.RunOptions(
        report_html=report == "html",
        overwrite=False,
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
            lambda p: pipeline.run_scan(p, out, predictor.model, predictor.backend, options),
            stable_for=stable_for,
            backend_info={**predictor.backend.describe(), "device": service.device_of(predictor.backend.name)},
            poll=poll,
            move_done=move_done,
            log=log,
        )
        w.install_signal_handlers()
        be = predictor.backend
        log(
            f"vbmd-rt watch: {in_dir} -> {out}; device {service.device_of(be.name)}, backend {be.name} "
            f"({be.precision}); model {predictor.model.name}"
        )
        counts = w.run(once=once)
    log(f"stopped: {counts.done} done, {counts.failed} failed, {counts.recovered} recovered")


@app.command(epilog=examples("vbmd-rt health /data/out", "vbmd-rt health /data/out --max-age 60"))
def health(
    out: Path = typer.Argument(..., metavar="OUT", help="The output folder of a running `vbmd-rt watch`."),
    max_age: float = typer.Option(120.0, "--max-age", help="Seconds after which a silent service counts as dead."),
):
    """Exit 0 when the watch service on OUT is alive (for a container HEALTHCHECK), 1 otherwise."""
    from vbmd_rt.runtime.service import health as check

    ok, msg = check(out, max_age)
    typer.echo(msg, err=not ok)
    raise typer.Exit(0 if ok else 1)
