"""Data and measurement tools: ``synth`` (phantoms), ``eval`` (agreement) and ``bench`` (latency)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from vbmd_rt.cli.app import app, examples, require_extra


@app.command(
    epilog=examples(
        "vbmd-rt synth demo-out/scans --cases 1 --seed 7",
        "vbmd-rt synth phantoms --cases 20 --size full --workers 2 --preview",
        "vbmd-rt synth phantoms --cases 20 --family random --seed 1 --preview",
    )
)
def synth(
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder (created if missing)."),
    cases: int = typer.Option(1, "--cases", "-n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed; the same seed and version give the same files."),
    size: Literal["small", "full"] = typer.Option(
        "small", "--size", help="full: 82 µm, 1536 x 1536; small: 246 µm, 512 x 512."
    ),
    start: int = typer.Option(0, "--start", min=0, help="Index of the first case (to extend a cohort)."),
    preview: bool = typer.Option(False, "--preview", help="Also write OUT/preview.png, a montage of slices."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Processes (the files do not depend on it)."),
    family: str = typer.Option(
        "standard",
        "--family",
        help="standard, or random (domain-randomised: shapes, layouts, textures, tissues, XtremeCT I/II); "
        "filters name held-out families, e.g. random:texture=blobs or random:texture!=blobs,shape!=condyle.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Synthetic HR-pQCT phantoms of MC2 with exact truth: NAME.AIM, NAME_GT.AIM, NAME.truth.json."""
    from rich.progress import Progress

    from vbmd_rt.synth import phantom

    if size not in phantom.SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(sorted(phantom.SIZES))}")
    if family != "standard":
        from vbmd_rt.synth import families

        try:
            families.parse_family(family)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--family") from None
    with Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task(f"phantoms ({size})", total=cases)
        truths = phantom.synth(
            out, cases, seed, size, start=start, progress=lambda i: bar.advance(task), workers=workers, family=family
        )
    if not quiet:
        for t in truths:
            typer.echo(
                f"{t['name']}: D100 {t['d100_mg_ha_cm3']:.1f} mg HA/cm3, {t['slices']} MC2 slices, "
                f"{t['side']} hand, motion grade {t['motion_grade']}, {len(t['erosions'])} erosions"
            )
    if preview:
        from vbmd_rt.runtime.io.naming import PREVIEW_NAME
        from vbmd_rt.synth.preview import preview as montage

        png = montage(out, Path(out) / PREVIEW_NAME)
        if not quiet:
            typer.echo(f"preview: {png}")


@app.command(
    name="eval",
    epilog=examples(
        "vbmd-rt run phantoms -o pred --save-prob && vbmd-rt eval --pred pred --truth phantoms -o report",
        "vbmd-rt eval --pred pred --truth experts.csv -o report --d100-cases 30",
    ),
)
def eval_(
    pred: Path = typer.Option(
        ..., "--pred", help="Output folder of `vbmd-rt run` (NAME.json, NAME_SEG.AIM, NAME_PROB.AIM)."
    ),
    truth: Path = typer.Option(
        ..., "--truth", help="Scans with expert masks (NAME.AIM + NAME_GT.AIM/_MASK/.GOBJ) or a CSV."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder: eval.json, eval.md, cases.csv, plots."),
    d100_cases: int | None = typer.Option(None, "--d100-cases", min=3, help="D100 statistics on the first N cases."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
):
    """Agreement with expert contours: Dice, IoU, accuracy, AUC, HD95; D100 Pearson/Spearman/ICC/Bland-Altman."""
    from vbmd_rt.evaluation.evaluate import evaluate_outputs, markdown, write_report

    report = evaluate_outputs(
        pred, truth, d100_cases=d100_cases, log=None if quiet else (lambda s: typer.echo(s, err=True))
    )
    files = write_report(report, out)
    if not quiet:
        typer.echo(markdown(report))
        if not any(f.suffix == ".png" for f in files):
            typer.echo("(plots need matplotlib: pip install 'vbmd-rt[eval]')", err=True)


@app.command(
    epilog=examples(
        "vbmd-rt bench --size full --runs 5 -o bench.json",
        "vbmd-rt bench --size small --runs 1 --backends onnxruntime --no-2d",
        "vbmd-rt bench --backends tensorrt,onnxruntime   (on the GPU workstation)",
        "vbmd-rt bench --train   (training steps/s per architecture; needs torch)",
    )
)
def bench(
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the results as JSON here."),
    size: Literal["full", "small"] = typer.Option(
        "full", "--size", help="full (1536 x 1536, the paper's setting) or small."
    ),
    runs: int = typer.Option(5, "--runs", min=1, help="Measured runs per backend (after the warm-up)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Unmeasured runs first (page cache, JIT)."),
    backends: str | None = typer.Option(
        None, "--backends", help="Comma list, e.g. onnxruntime,classical (default: all here)."
    ),
    model2d: Path | None = typer.Option(None, "--model2d", help="An exported 2D model for the per-slice latency."),
    no_network: bool = typer.Option(False, "--no-network", help="Skip the network-only latency and FLOPs."),
    no_2d: bool = typer.Option(False, "--no-2d", help="Skip the 2D net (exporting an untrained one needs torch)."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for ONNX Runtime and vbmd-rt's own stages."
    ),
    cache: Path = typer.Option(Path(".cache/bench"), "--cache", help="Where the phantom (and the 2D net) are kept."),
    train: bool = typer.Option(False, "--train", help="Training throughput per architecture instead (needs torch)."),
):
    """Latency per stage vs the paper's 33 s, network-only latency, the physical floor, peak memory."""
    if train:
        require_extra("torch", "train", "benchmarking training")
        import json

        from vbmd_rt.bench import train_speed

        report = train_speed.run(threads=threads or 2, log=lambda s: typer.echo(s))
        if out:
            out.write_text(json.dumps(report, indent=2) + "\n")
        return
    from vbmd_rt.bench import suite

    if size not in ("full", "small"):
        raise typer.BadParameter("--size must be full or small")
    names = backends.split(",") if backends else None
    if not no_network or names is None or "onnxruntime" in names:  # the network latency runs on ONNX Runtime
        from vbmd_rt.runtime.inference.base import require_onnxruntime

        require_onnxruntime()
    if names is not None and "torch" in names:
        require_extra("torch", "train", "--backends torch")
    if names is not None and "tensorrt" in names:
        require_extra("tensorrt", "trt", "--backends tensorrt")
    if names is not None and "tensorrt-rtx" in names:
        require_extra("tensorrt_rtx", "rtx", "--backends tensorrt-rtx")
    suite.run(
        out,
        size=size,
        runs=runs,
        warmup=warmup,
        cache=cache,
        backends=names,
        model2d=model2d,
        network=not no_network,
        threads=threads,
        net2d=not no_2d,
        log=lambda s: typer.echo(s),
    )
