import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    r = subprocess.run([ruff, "check", "vbmd_rt", "runtime", "export", "calib", "bench", "tests"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_runtime_never_imports_torch():
    code = ("import sys, vbmd_rt.cli, vbmd_rt.commands, vbmd_rt.runtime.aim, vbmd_rt.runtime.phantom;"
            "bad=[m for m in ('torch','tensorrt','tensorrt_rtx','dask') if m in sys.modules];"
            "assert not bad, bad")
    import sys

    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_readme_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "\nmake demo\n" in text and "\nmake test\n" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
