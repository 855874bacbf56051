"""Commands on scans: ``info`` (a file's header) and ``run`` (segment MC2 and measure vBMD)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from vbmd_rt.cli.app import app, examples, plain_output, require_backend, require_extra


@app.command(epilog=examples("vbmd-rt info scans/PHANTOM_0000.AIM", "vbmd-rt info scans/PHANTOM_0000.AIM --json"))
def info(
    file: Path = typer.Argument(..., metavar="FILE", help="AIM or ISQ file."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
    show_log: bool = typer.Option(False, "--show-log", help="Also print the processing log (contains patient fields)."),
):
    """Header of an AIM/ISQ file: dimensions, voxel size, type, position, calibration."""
    from vbmd_rt.runtime.io.aim import read_header
    from vbmd_rt.runtime.report import calibration_text

    hdr = read_header(file)
    d = hdr.describe()
    if show_log:
        d["processing_log"] = hdr.processing_log
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    cal = d["calibration"]
    rows = [
        ("format", d["format"]),
        ("type", f"{d['type']} ({d['type_code']}, {d['dtype']})"),
        ("dimensions (x y z)", " x ".join(map(str, d["dimensions_xyz"]))),
        ("voxel size (mm)", " x ".join(f"{v:.6g}" for v in d["element_size_mm"])),
        ("position (x y z)", " ".join(map(str, d["position_xyz"]))),
        ("physical size (mm)", " x ".join(f"{v:.2f}" for v in d["physical_size_mm"])),
        ("calibration", "none (density unavailable)" if cal is None else calibration_text(cal, plain=True)),
    ]
    for k, v in d["scanner"].items():
        rows.append((k, str(v)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
    if show_log:
        typer.echo(hdr.processing_log)


@app.command(
    epilog=examples(
        "vbmd-rt run scans/PHANTOM_0000.AIM -o results",
        "vbmd-rt run scans/ -o results --report html --export nifti",
        "vbmd-rt run cohort/ -o results --recursive   (a folder of per-patient folders)",
        "vbmd-rt run cohort/ -o results --num-parts 4 --part-id $SLURM_ARRAY_TASK_ID",
    )
)
def run(
    scans: list[Path] = typer.Argument(..., metavar="SCAN...", help="Scan files (AIM or ISQ) or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Exported model folder, or classical (default: the bundled network)."
    ),
    backend: Literal["auto", "tensorrt", "tensorrt-rtx", "onnxruntime", "torch"] = typer.Option(
        "auto", "--backend", "-b", help="Inference backend (auto: the fastest one here)."
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", "--device", help="Where the network runs."),
    side: Literal["auto", "left", "right"] = typer.Option("auto", "--side", help="Hand side (auto: detected)."),
    report: Literal["html"] | None = typer.Option(None, "--report", help="Also write a report page."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo scans whose outputs exist (default: skip them)."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write NAME_PROB.AIM (probability x100)."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for ONNX Runtime and vbmd-rt's own stages."
    ),
    max_memory: str | None = typer.Option(
        None, "--max-memory", help="Refuse scans predicted to need more memory, e.g. 16G (default: 3/4 of the RAM)."
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Run on Dask: local, or tcp://HOST:PORT of a scheduler."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes of --cluster local."),
    retries: int = typer.Option(2, "--retries", min=0, help="Retries of a crashed scan on Dask."),
    num_parts: int = typer.Option(
        1, "--num-parts", min=1, help="Split the cohort into N parts (e.g. a SLURM array)..."
    ),
    part_id: int = typer.Option(0, "--part-id", min=0, help="...and run part K (0-based)."),
    mask_format: Literal["rle", "cropped", "char"] = typer.Option(
        "rle",
        "--mask-format",
        help="Mask AIM: rle (binary run-length, full geometry), cropped (char cut to the bone, with its "
        "position) or char (full-size char, the largest).",
    ),
    export: Literal["nifti", "mha", "nii"] | None = typer.Option(
        None,
        "--export",
        help="Also write scan and mask for 3D Slicer/ITK-SNAP: nifti (.nii.gz), nii (.nii, uncompressed) or mha; NIfTI with JSON sidecars (Scanco calibration, units); the NIfTI mask is cropped with --mask-format cropped.",
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take scans in subfolders of a folder."),
    layout: Literal["flat", "bids"] = typer.Option(
        "flat",
        "--layout",
        help="flat: every output in OUT; bids: a BIDS-style derivative, OUT/derivatives/vbmd-rt/ with "
        "dataset_description.json, sub-*/ses-*/ folders (from the inputs' names or folders) and vbmd.tsv "
        "with units (vbmd.json).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Segment MC2 and measure vBMD, fully automatically: OUT/NAME_SEG.AIM, NAME.json, NAME.png, summary.csv.

    Scans whose outputs exist and are valid are skipped (--overwrite redoes them), so a cohort resumes
    where it stopped.
    """
    from rich.progress import Progress

    from vbmd_rt.cohort import runner
    from vbmd_rt.cohort.batch import Job
    from vbmd_rt.runtime import pipeline

    _check_mask_options(mask_format, export)
    mem = _max_memory(max_memory)  # argument checks before anything is created
    if backend == "torch":
        require_extra("torch", "train", "--backend torch")
    else:  # a missing ONNX Runtime: exit 2 with its pip line, OUT not created (Dask workers share it)
        require_backend(backend, model)
    if cluster:
        require_extra("distributed", "cluster", "--cluster")
    plan = runner.plan(scans, out, recursive, layout, cluster, num_parts, part_id, overwrite)
    options = pipeline.RunOptions(
        side=side,
        report_html=report == "html",
        overwrite=overwrite,
        save_prob=save_prob,
        max_memory=mem,
        mask_format=mask_format,
        export=export,
    )
    job = Job(
        model=None if model is None else str(model),
        backend=backend,
        device=device,
        threads=threads,
        options=options,
        backend_factory=torch_backend if backend == "torch" else None,
    )
    files = plan.files
    with Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task("scans", total=len(files))
        echo = typer.echo if plain_output() else bar.console.print  # piped: whole lines, never wrapped

        def on_row(r):
            _print_row(r, quiet, echo)
            bar.advance(task)

        def on_backend(be):
            if not quiet:
                typer.echo(f"backend: {be.name} ({be.precision})" + (f" - {be.reason}" if be.reason else ""), err=True)

        def stage(i, s):
            bar.update(task, description=f"scan {i + 1}/{len(files)}: {s}")

        def on_wait(name):
            if not quiet:
                bar.console.print(f"{name}: another vbmd-rt run on {out} is writing it; waiting for it")

        if cluster and not quiet:
            typer.echo(f"{len(files)} scans on Dask ({cluster})", err=True)
        done = runner.run(plan, job, retries, workers, on_row, stage, on_wait, on_backend)
    if done.table is not None and not quiet:
        typer.echo(f"{'table' if plan.groups is not None else 'summary'}: {done.table}", err=True)
    if done.skipped and not quiet:
        typer.echo(
            f"{done.skipped} of {len(done.rows)} scans skipped: their results match the input, model and options"
            " (--overwrite redoes them)",
            err=True,
        )
    if done.failed:
        if len(files) > 1:  # one scan: its own error line is the one line
            typer.echo(f"vbmd-rt: {len(done.failed)} of {len(files)} scans failed", err=True)
        raise typer.Exit(done.exit_code)


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
    tail = (
        "skipped (done before: same input, model and options)" if r["status"] == "skipped" else f"{r['total_s']:.1f} s"
    )
    echo(
        f"{r['scan']}: D100 {'n/a' if d is None else f'{d:.1f}'} mg HA/cm3, {r['bone_volume_mm3']:.0f} mm3, "
        f"{r['slices']} slices, {r['side'] or '?'} hand, qc {r.get('qc_status') or '?'}, {tail}"
        + "".join(f"\n  warning: {w}" for w in (r["warnings"] or "").split(" | ") if w)
    )


def torch_backend(model, device):
    """``--backend torch``: PyTorch on the exported weights (train extra); the runtime never imports it."""
    from vbmd_rt.export.torch_backend import TorchBackend

    return TorchBackend.from_model(model, device)


def _debug_traceback() -> None:
    import os
    import traceback

    if os.environ.get("VBMD_RT_DEBUG"):
        traceback.print_exc()


def _max_memory(text: str | None) -> int | None:
    """``--max-memory 16G`` -> bytes (None: the default, three quarters of the RAM)."""
    from vbmd_rt.runtime.resources import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError:
        raise typer.BadParameter(f"--max-memory takes a size such as 16G or 512M, not {text!r}") from None


def _check_mask_options(mask_format: str, export: str | None) -> None:
    from vbmd_rt.runtime.io.masks import MASK_FORMATS
    from vbmd_rt.runtime.io.nifti import EXPORT_FORMATS

    if mask_format not in MASK_FORMATS:
        raise typer.BadParameter(f"--mask-format takes {', '.join(MASK_FORMATS)}, not {mask_format!r}")
    if export is not None and export not in EXPORT_FORMATS:
        raise typer.BadParameter(f"--export takes {', '.join(EXPORT_FORMATS)}, not {export!r}")


@app.command(
    epilog=examples(
        "vbmd-rt measure scans/PHANTOM_0000.AIM results/PHANTOM_0000_SEG.AIM",
        "vbmd-rt measure scans/P1.AIM corrected/P1_SEG.nii.gz -o remeasured --report html",
        "vbmd-rt measure scans/P1.AIM P1_MC2.GOBJ --json",
    )
)
def measure(
    scan: Path = typer.Argument(..., metavar="SCAN", help="The scan (AIM or ISQ) the mask was drawn on."),
    mask: Path = typer.Argument(
        ...,
        metavar="MASK",
        help="The MC2 mask: AIM of any type (char, run-length, cropped with its position), GOBJ or NIfTI.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write NAME.json and NAME.png here (default: print)."),
    export: Literal["nifti", "mha", "nii"] | None = typer.Option(
        None, "--export", help="Also write scan and mask as nifti (.nii.gz), nii (.nii) or mha."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs in OUT."),
    report: Literal["html"] | None = typer.Option(None, "--report", help="Also write the HTML report (needs -o)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
):
    """D100 from a given (e.g. corrected) mask: the same measurement and JSON as `run`, no network.

    The mask must lie on the scan's grid (same voxel size; cropped masks are placed by their position)
    and hold voxels, else exit 2. A mask far from an MC2 (size, density, contrast) is measured and
    flagged (qc status review).
    """
    from vbmd_rt.runtime.remeasure import measure_mask

    _check_mask_options("rle", export)
    if (export is not None or report is not None) and out is None:
        raise typer.BadParameter("--export and --report need -o OUT")
    r = measure_mask(scan, mask, out, export=export, overwrite=overwrite, report_html=report == "html")
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    d = r["d100_mg_ha_cm3"]
    typer.echo(
        f"{r['scan']['file']}: D100 {'n/a' if d is None else f'{d:.1f}'} mg HA/cm3, {r['bone_volume_mm3']:.0f} mm3, "
        f"{r['slices']} slices, {r['side'] or '?'} hand, mask {r['mask']['file']}, qc {r['qc']['status']}"
    )
    for w in r["warnings"]:
        typer.echo(f"  warning: {w}")
