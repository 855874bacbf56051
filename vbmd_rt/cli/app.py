"""The Typer application, its version option, and the exit-code contract of every command.

Exit codes: 0 ok, 2 bad input (one line on stderr, no traceback), 1 internal error
(the traceback only with ``VBMD_RT_DEBUG=1``).
"""

from __future__ import annotations

import sys

import typer

from vbmd_rt import __version__
from vbmd_rt.runtime.errors import VbmdInputError, debug_enabled


def _flags_without_type() -> None:
    """Help shows ``--overwrite`` as a flag, not ``--overwrite <bool>`` (this Typer labels every option
    with its type; a flag takes no value)."""
    try:
        from typer.core import TyperOption
    except ImportError:  # another Typer: its own display
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_vbmd_rt", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._vbmd_rt = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _arguments_as_named() -> None:
    """Usage lines and help show an argument by its metavar as written (``SCAN...``, ``[OUT]``), not
    this Typer's ``{scans}...`` and ``<list[Path]>``: every argument of vbmd-rt has a metavar, and its
    help text says what it takes."""
    try:
        from typer.core import TyperArgument
    except ImportError:  # another Typer: its own display
        return
    usage = getattr(TyperArgument, "_usage_display_name", None)
    if usage is None or getattr(usage, "_vbmd_rt", False):
        return
    rich_type = TyperArgument.display_type_rich

    def _usage_display_name(self):
        return self.metavar if self.metavar is not None else usage(self)

    def display_type_rich(self, ctx):
        return None if self.metavar is not None else rich_type(self, ctx)

    _usage_display_name._vbmd_rt = True  # type: ignore[attr-defined]
    TyperArgument._usage_display_name = _usage_display_name  # type: ignore[method-assign]
    TyperArgument.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()
_arguments_as_named()


def examples(*lines: str) -> str:
    """A command's help epilog: ``Examples:`` and one command a line (kept as typed, not re-wrapped)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="vbmd-rt",
    help="Fully automatic vBMD of the second metacarpal (MC2) in HR-pQCT hand scans.",
    epilog=examples(
        "vbmd-rt run scan.AIM -o results   (the main job: mask, D100, JSON, PNG)",
        "vbmd-rt run scans/ -o results --report html   (a folder; an HTML report per scan)",
        "vbmd-rt measure scan.AIM corrected_SEG.AIM   (D100 from a given mask)",
        "vbmd-rt info scan.AIM   (the header: geometry, calibration)",
        "vbmd-rt synth phantoms --cases 3 && vbmd-rt run phantoms -o results   (try it on phantoms)",
        "vbmd-rt COMMAND --help   (every command's options and examples)",
    ),
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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """vbmd-rt: read AIM/ISQ scans, segment MC2, report calibrated vBMD (D100)."""


def require_module(module: str, what: str, install: str) -> None:
    """Exit 2 with ``install`` (a pip line) when ``module`` cannot be imported; checked before any work,
    without importing it."""
    from vbmd_rt.runtime.inference.base import installed

    if not installed(module):
        raise VbmdInputError(None, f"{what} needs {module}, which is not installed", install)


def require_extra(module: str, extra: str, what: str) -> None:
    """Exit 2 with the install command when an optional dependency is missing (checked before any work)."""
    from vbmd_rt.runtime.inference.base import installed

    if not installed(module):
        raise VbmdInputError(
            None, f"{what} needs the {extra} extra ({module} is not installed)", f"pip install 'vbmd-rt[{extra}]'"
        )


def require_backend(backend: str, model: object = None) -> None:
    """Before any work (nothing created yet): exit 2 with the pip line when the backend ``backend`` would
    need ONNX Runtime and none is installed (``auto`` falls back to it unless TensorRT is installed)."""
    from vbmd_rt.runtime.inference.base import installed, require_onnxruntime

    if model is not None and str(model) == "classical":
        return
    if backend == "onnxruntime" or (backend == "auto" and not (installed("tensorrt") or installed("tensorrt_rtx"))):
        require_onnxruntime()


def plain_output() -> bool:
    """True when stdout is not a terminal (a pipe, a file, a log): print plain lines, never wrapped."""
    return not sys.stdout.isatty()


def run_app(argv: list[str] | None = None) -> None:
    """Run ``app`` with the project's exit codes: Typer's usage errors exit 2 with its message; a
    :class:`VbmdInputError` becomes one line on stderr and exit 2; anything else is an internal error,
    exit 1, with the traceback only when ``VBMD_RT_DEBUG`` is set."""
    try:
        app(args=argv, prog_name="vbmd-rt")
    except VbmdInputError as e:
        typer.echo(f"vbmd-rt: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("vbmd-rt: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if debug_enabled():
            raise
        typer.echo(f"vbmd-rt: internal error: {type(e).__name__}: {e} (set VBMD_RT_DEBUG=1 for details)", err=True)
        sys.exit(1)
