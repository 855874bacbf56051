import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("VBMD_RT_SAMPLES", ROOT.parent / "shared" / "aim-samples"))


def _reference() -> dict:
    ref = SAMPLES / "reference.json"
    return json.loads(ref.read_text()) if ref.exists() else {}


REFERENCE = _reference()
needs_samples = pytest.mark.skipif(not REFERENCE, reason=f"sample AIM files not found in {SAMPLES}")


#: The modules whose tests take longest (test time summed per module, ``--durations=0`` on two cores: 65 s to
#: 15 s), collected first. ``make test`` hands whole modules to its workers (``--dist loadscope``) in collection
#: order (``--no-loadscope-reorder``): a long module that starts last keeps one core busy while the other
#: idles. The other modules follow in their usual order.
LONGEST_FIRST = (
    "test_identify",
    "test_export",
    "test_issue23",
    "test_service",
    "test_outputs",
    "test_cohort",
    "test_lint",
    "test_classical",
    "test_families",
    "test_bench",
    "test_phantom",
    "test_eval",
    "test_cli",
    "test_direction",
)


def pytest_configure(config):
    """Under pytest-xdist (``-n``), one thread per worker for the numerical libraries that size their pools from
    the machine (OpenMP's: torch's; OpenBLAS's, MKL's), unless the environment says otherwise: the
    workers fill the cores already, and each worker's pools (and those of the scans it runs) on every core
    made two workers on two cores spend 599 s of test time against 529-558 s this way (``--durations=0``;
    wall 320 s against 282-298 s). The workers and their subprocesses inherit it; what the runtime sizes itself
    (ONNX Runtime's ``--threads``, ``runtime.parallel``) is unchanged."""
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: within a module as written


@pytest.fixture
def samples() -> Path:
    if not REFERENCE:
        pytest.skip(f"sample AIM files not found in {SAMPLES}")
    return SAMPLES


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """Three small phantoms (seed 77: PHANTOM_0000..0002 with _GT masks and truth) made once per session.
    Tests read them and copy what they change (``phantom_copies``); nothing writes into this folder."""
    from vbmd_rt.synth import phantom

    d = tmp_path_factory.mktemp("phantoms77")
    phantom.synth(d, 3, seed=77)
    return d


def phantom_copies(src: Path, dst: Path, count: int) -> Path:
    """The first ``count`` cases of ``src`` (scan, mask, truth) copied into ``dst`` (created)."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        for f in sorted(src.glob(f"PHANTOM_{i:04d}*")):
            shutil.copy2(f, dst / f.name)
    return dst


def tiny_scan(src: Path, dst: Path, slices: int = 24, factor: int = 4) -> Path:
    """A small real scan made from a phantom: the first ``slices`` slices, ``factor`` x coarser in-plane
    (header, calibration and log kept). Fast to process; for tests of batches and the service."""
    import dataclasses

    import cv2
    import numpy as np

    from vbmd_rt.runtime.io import aim

    s = aim.read_aim(src)
    data = np.asarray(s.data[:slices], dtype=np.float32)
    small = (
        np.stack(
            [cv2.resize(k, (k.shape[1] // factor, k.shape[0] // factor), interpolation=cv2.INTER_AREA) for k in data]
        )
        .round()
        .astype(np.int16)
    )
    el = s.header.element_size_mm
    hdr = dataclasses.replace(s.header, element_size_mm=(el[0] * factor, el[1] * factor, el[2]))
    aim.write_aim(dst, small, hdr)
    return dst


def cli(*args):
    """``vbmd-rt ARGS`` in a fresh interpreter; the CompletedProcess (text stdout/stderr).

    For what only a process shows: the installed entry point, a kill, signals, environment variables read
    at start-up. Everything else: ``cli_here`` (the same command line, seconds faster)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "vbmd_rt", *map(str, args)], capture_output=True, text=True)


class _App:
    """The console entry point (``vbmd_rt.cli.main``: Typer app plus the exit-code contract) as a command
    click's CliRunner can invoke."""

    name = "vbmd-rt"

    def main(self, args=(), prog_name=None, **extra):
        from vbmd_rt.cli import main

        main(list(args))


def cli_here(*args, env: dict | None = None):
    """``vbmd-rt ARGS`` in this process (click's CliRunner around the console entry point, so the exit codes
    and the one-line errors are the command's own); returns ``returncode``, ``stdout``, ``stderr`` as the
    CompletedProcess of ``cli`` does. stdout and stderr are not terminals, as in ``cli``."""
    import types

    from click.testing import CliRunner

    r = CliRunner().invoke(_App(), [str(a) for a in args], env=env, catch_exceptions=True)  # type: ignore[arg-type]
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # an exception run_app did not turn into an exit code: a bug in the test or the CLI
    return types.SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


class PeakMemory:
    """The process's peak resident size (VmHWM), reset on entering: ``with PeakMemory() as pm: ...; pm.grown``
    is how far the peak rose above the resident size at the start. Skips where /proc cannot reset it."""

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    def __enter__(self):
        try:  # Linux 4.0 on
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pytest.skip("the peak resident size cannot be reset here")
        self.start = self._status("VmRSS")
        if self._status("VmHWM") - self.start > 64 * 2**20:  # the reset was taken and did nothing
            pytest.skip("the peak resident size is not reset here")
        return self

    def __exit__(self, *exc) -> None:
        self.grown = self._status("VmHWM") - self.start
