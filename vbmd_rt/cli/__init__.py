"""The ``vbmd-rt`` command line: parse options, call the library, print.

``app`` is defined in ``vbmd_rt.cli.app``; each command module registers its commands on it, and this
package imports them all, so ``vbmd_rt.cli.app`` never imports a command module (no cycle).
"""

from vbmd_rt.cli import models, scans, service, tools  # noqa: F401  (register the commands)
from vbmd_rt.cli.app import app, run_app

# --help lists the commands in this order: the main job first, then measuring, data, models, the service.
ORDER = ("run", "measure", "info", "synth", "eval", "train", "export", "calib", "watch", "health", "bench")


def _name(cmd) -> str:
    return cmd.name or cmd.callback.__name__.rstrip("_").replace("_", "-")


app.registered_commands.sort(key=lambda c: ORDER.index(_name(c)) if _name(c) in ORDER else len(ORDER))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``vbmd-rt``, ``python -m vbmd_rt``, ``python -m vbmd_rt.cli``)."""
    run_app(argv)


__all__ = ["app", "main"]
