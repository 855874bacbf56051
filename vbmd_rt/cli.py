"""The ``vbmd-rt`` command line: parse options, call one library function, print.

Exit codes: 0 ok, 2 bad input (one line on stderr, no traceback), 1 internal error.
Set ``VBMD_RT_DEBUG=1`` to see the traceback of an internal error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from vbmd_rt import __version__
from vbmd_rt.runtime.errors import VbmdInputError

app = typer.Typer(
    name="vbmd-rt",
    help="Fully automatic vBMD of the second metacarpal (MC2) in HR-pQCT hand scans.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"vbmd-rt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """vbmd-rt: read AIM/ISQ scans, segment MC2, report calibrated vBMD (D100)."""


@app.command()
def info(
    file: Path = typer.Argument(..., help="AIM or ISQ file."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
    show_log: bool = typer.Option(False, "--show-log", help="Also print the processing log (contains patient fields)."),
):
    """Header of an AIM/ISQ file: dimensions, voxel size, type, position, calibration."""
    from vbmd_rt.runtime.aim import read_header

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
        (
            "calibration",
            "none (density unavailable)"
            if cal is None
            else f"{cal['mg_ha_cm3_per_unit']:.6g} mg HA/cm3 per unit {cal['intercept']:+.6g} "
            f"(Mu_Scaling {cal['mu_scaling']:g}, slope {cal['slope']:g})",
        ),
    ]
    for k, v in d["scanner"].items():
        rows.append((k, str(v)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
    if show_log:
        typer.echo(hdr.processing_log)


def _register_optional_commands() -> None:
    """Commands whose modules live in other files; each registers itself on ``app``."""
    from vbmd_rt import commands  # noqa: F401  (import for side effect: @app.command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point with the project's exit-code contract.

    Usage errors are Typer's own (exit 2 with its message); a :class:`VbmdInputError` from
    the library becomes one line on stderr and exit 2; anything else is an internal error,
    exit 1, with the traceback only when ``VBMD_RT_DEBUG`` is set.
    """
    _register_optional_commands()
    try:
        app(args=argv, prog_name="vbmd-rt")
    except VbmdInputError as e:
        typer.echo(f"vbmd-rt: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("vbmd-rt: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if os.environ.get("VBMD_RT_DEBUG"):
            raise
        typer.echo(f"vbmd-rt: internal error: {type(e).__name__}: {e} (set VBMD_RT_DEBUG=1 for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
