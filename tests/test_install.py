"""Install paths: the plain install runs the main job, and every missing optional part exits 2 with its
``pip install`` line (never 1). Missing packages are simulated in-process: ``sys.modules[name] = None``
makes ``import name`` fail and ``importlib.util.find_spec(name)`` return None, as when it is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vbmd_rt.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hide(monkeypatch):
    """``hide("torch", ...)``: these top-level packages (and their submodules) look uninstalled, and the
    given vbmd-rt modules that import them are imported afresh."""

    def _hide(*names: str, reload: tuple[str, ...] = ()) -> None:
        for name in names:
            for m in [m for m in sys.modules if m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, m)
            monkeypatch.setitem(sys.modules, name, None)
        for m in reload:
            monkeypatch.delitem(sys.modules, m, raising=False)

    return _hide


def cli(capsys, *args) -> tuple[int, str]:
    """``vbmd-rt ARGS`` in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
        raise SystemExit(0)
    code = e.value.code if isinstance(e.value.code, int) else (0 if e.value.code is None else 1)
    return code, capsys.readouterr().err


def assert_exit_2_with(code: int, err: str, pip_line: str) -> None:
    assert code == 2, err
    assert pip_line in err, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err and "Traceback" not in err


def test_onnxruntime_is_a_base_dependency_and_gpu_never_brings_a_second_one():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("onnxruntime>") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert extras["cpu"] == []  # the old command line still works
    for name, reqs in extras.items():
        if name != "int8":  # ModelOpt brings its own onnxruntime-gpu: workstation only, documented
            assert not any(r.startswith(("onnxruntime", "onnxruntime-gpu")) for r in reqs), (name, reqs)


def test_train_without_torch_exits_2_before_importing_the_training_code(hide, capsys, tmp_path):
    hide("torch", reload=("vbmd_rt.export.train",))
    code, err = cli(capsys, "train", tmp_path, "-o", tmp_path / "run")
    assert_exit_2_with(code, err, "pip install 'vbmd-rt[train]'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("missing", ["torch", "onnx", "onnxscript"])
def test_export_of_a_checkpoint_without_the_train_extra_exits_2(hide, capsys, tmp_path, missing):
    hide(missing, reload=("vbmd_rt.export.onnx_export",))
    code, err = cli(capsys, "export", tmp_path / "best.pt", "-o", tmp_path / "m")
    assert_exit_2_with(code, err, "pip install 'vbmd-rt[train]'")


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_run_without_onnxruntime_exits_2_and_creates_nothing(hide, capsys, tmp_path, backend):
    hide("onnxruntime", "tensorrt", "tensorrt_rtx")
    scan = tmp_path / "S.AIM"
    scan.write_bytes(b"\0" * 64)
    code, err = cli(capsys, "run", scan, "-o", tmp_path / "out", "--backend", backend)
    assert_exit_2_with(code, err, "pip install onnxruntime")
    assert not (tmp_path / "out").exists()


def test_run_with_the_classical_model_needs_no_onnxruntime(hide, capsys, tmp_path):
    from vbmd_rt.cli.app import require_backend

    hide("onnxruntime", "tensorrt", "tensorrt_rtx")
    require_backend("auto", "classical")  # no error: no network runs


def test_watch_without_onnxruntime_exits_2(hide, capsys, tmp_path):
    hide("onnxruntime", "tensorrt", "tensorrt_rtx")
    (tmp_path / "in").mkdir()
    code, err = cli(capsys, "watch", tmp_path / "in", "-o", tmp_path / "out", "--once")
    assert_exit_2_with(code, err, "pip install onnxruntime")
    assert not (tmp_path / "out").exists()


def test_bench_without_onnxruntime_exits_2(hide, capsys, tmp_path):
    hide("onnxruntime")
    code, err = cli(capsys, "bench", "--size", "small", "--runs", "1", "--cache", tmp_path / "c")
    assert_exit_2_with(code, err, "pip install onnxruntime")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("args", "pip_line"),
    [
        (["--backend", "torch"], "pip install 'vbmd-rt[train]'"),
        (["--cluster", "local"], "pip install 'vbmd-rt[cluster]'"),
    ],
)
def test_run_options_needing_an_extra_exit_2(hide, capsys, tmp_path, args, pip_line):
    hide("torch", "distributed", "dask")
    scan = tmp_path / "S.AIM"
    scan.write_bytes(b"\0" * 64)
    code, err = cli(capsys, "run", scan, "-o", tmp_path / "out", *args)
    assert_exit_2_with(code, err, pip_line)


@pytest.mark.parametrize(
    ("backends", "pip_line"),
    [("torch", "pip install 'vbmd-rt[train]'"), ("tensorrt-rtx", "pip install 'vbmd-rt[rtx]'")],
)
def test_bench_backends_needing_an_extra_exit_2(hide, capsys, tmp_path, backends, pip_line):
    hide("torch", "tensorrt_rtx")
    code, err = cli(capsys, "bench", "--no-network", "--backends", backends, "--cache", tmp_path / "c")
    assert_exit_2_with(code, err, pip_line)


def test_the_library_refuses_a_missing_onnxruntime_as_bad_input(hide):
    from vbmd_rt.runtime.inference.base import BackendError
    from vbmd_rt.runtime.inference.factory import create
    from vbmd_rt.runtime.model import load_model

    model = load_model(None)
    hide("onnxruntime", "tensorrt", "tensorrt_rtx")
    for name in ("onnxruntime", "auto"):
        with pytest.raises(BackendError, match="pip install onnxruntime"):
            create(name, model, "cpu")


def test_both_onnx_runtimes_installed_is_reported_with_the_swap(monkeypatch):
    from importlib import metadata

    from vbmd_rt.runtime.inference import base

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "1.26.0" if n == "onnxruntime-gpu" else real(n))
    assert "both installed" in base.ort_conflict()
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in base.ORT_GPU_SWAP
