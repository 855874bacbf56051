"""The ``vbmd-rt`` command line: parse options, call the library, print.

``app`` is defined in ``vbmd_rt.cli.app``; each command module registers its commands on it, and this
package imports them all, so ``vbmd_rt.cli.app`` never imports a command module (no cycle).
"""

from vbmd_rt.cli import models, scans, service, tools  # noqa: F401  (register the commands)
from vbmd_rt.cli.app import app, run_app


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``vbmd-rt``, ``python -m vbmd_rt``, ``python -m vbmd_rt.cli``)."""
    run_app(argv)


__all__ = ["app", "main"]
