"""Commands beyond ``info``. Each stays thin: parse, call one library function, print."""

from __future__ import annotations

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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Synthetic HR-pQCT phantoms of MC2 with exact truth: NAME.AIM, NAME_GT.AIM, NAME.truth.json."""
    from rich.progress import Progress

    from vbmd_rt.runtime import phantom

    if size not in phantom.SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(sorted(phantom.SIZES))}")
    with Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task(f"phantoms ({size})", total=cases)
        truths = phantom.synth(out, cases, seed, size, start=start, progress=lambda i: bar.advance(task))
    if not quiet:
        for t in truths:
            typer.echo(f"{t['name']}: D100 {t['d100_mg_ha_cm3']:.1f} mg HA/cm3, {t['slices']} MC2 slices, "
                       f"{t['side']} hand, motion grade {t['motion_grade']}, {len(t['erosions'])} erosions")
    if preview:
        png = phantom.preview(out, Path(out) / "preview.png")
        if not quiet:
            typer.echo(f"preview: {png}")
