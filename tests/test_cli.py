"""The command line contract: exit codes, one-line errors, no patient fields by default."""

import json
import subprocess
import sys

import numpy as np
import pytest

from vbmd_rt import __version__
from vbmd_rt.runtime.io.aim import write_aim

from .conftest import SAMPLES, needs_samples


def run(*args):
    return subprocess.run([sys.executable, "-m", "vbmd_rt", *map(str, args)], capture_output=True, text=True)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vbmd-rt {__version__}"


@needs_samples
def test_info_prints_geometry_and_calibration_but_no_patient_fields():
    r = run("info", SAMPLES / "bonelabdata_aluminum.aim")
    assert r.returncode == 0, r.stderr
    assert "130 x 130 x 100" in r.stdout and "0.17592" in r.stdout
    assert "IGFA_ALUM_01" not in r.stdout  # the patient name field of this file's log
    assert "MICROCT.DATA" not in r.stdout  # nor the original file path


@needs_samples
def test_info_json_has_the_header_fields():
    d = json.loads(run("info", SAMPLES / "aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM", "--json").stdout)
    assert d["format"] == "AIM v030" and d["type"] == "binary-rle"
    assert d["dimensions_xyz"] == [294, 346, 110] and d["position_xyz"] == [567, 630, 0]
    assert d["calibration"]["mg_ha_cm3_per_unit"] == pytest.approx(0.1747661083984375)
    assert "processing_log" not in d


@needs_samples
def test_show_log_prints_the_log_on_request():
    r = run("info", SAMPLES / "bonelabdata_aluminum.aim", "--show-log")
    assert "IGFA_ALUM_01" in r.stdout


@pytest.mark.parametrize("content", [b"", b"hello world, not an aim" * 10])
def test_bad_file_exits_2_with_one_line(tmp_path, content):
    p = tmp_path / "bad.aim"
    p.write_bytes(content)
    r = run("info", p)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and str(p) in r.stderr
    assert "Traceback" not in r.stderr


def test_folder_exits_2(tmp_path):
    r = run("info", tmp_path)
    assert r.returncode == 2 and "folder" in r.stderr


def test_info_on_a_file_we_wrote(tmp_path):
    p = tmp_path / "w.aim"
    write_aim(p, np.zeros((3, 4, 5), np.int16))
    r = run("info", p, "--json")
    assert json.loads(r.stdout)["shape_zyx"] == [3, 4, 5]
    assert json.loads(r.stdout)["calibration"] is None


# --------------------------------------------------------------------------- help, arguments, output (issue 16)

COMMANDS = ["run", "measure", "watch", "health", "info", "synth", "eval", "bench", "train", "export", "calib"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_examples_and_shows_flags_as_flags(command):
    from typer.testing import CliRunner

    from vbmd_rt.cli import app

    r = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "Examples:" in r.output and f"vbmd-rt {command}" in r.output.split("Examples:")[1]
    assert "<bool>" not in r.output


def test_choices_are_shown_as_choices_and_checked():
    from typer.testing import CliRunner

    from vbmd_rt.cli import app

    out = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    for choices in ("auto|left|right", "rle|cropped|char", "nifti|mha", "auto|cpu|cuda"):
        assert choices in out
    r = run("run", "x.AIM", "-o", "out", "--mask-format", "zip")
    assert r.returncode == 2 and "rle" in r.stderr


def test_a_missing_input_creates_no_output_folder(tmp_path):
    r = run("run", tmp_path / "nope.AIM", "-o", tmp_path / "out")
    assert r.returncode == 2 and "nope.AIM" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    r = run("watch", tmp_path / "no-inbox", "-o", tmp_path / "out2", "--once")
    assert r.returncode == 2 and "no-inbox" in r.stderr and not (tmp_path / "out2").exists()


def test_nested_patient_folders_need_and_take_recursive(phantoms, tmp_path):
    from .conftest import tiny_scan

    for p in ("patient1", "patient2"):
        (tmp_path / "cohort" / p).mkdir(parents=True)
        tiny_scan(phantoms / "PHANTOM_0000.AIM", tmp_path / "cohort" / p / f"{p.upper()}_MCP.AIM", slices=12)
    r = run("run", tmp_path / "cohort", "-o", tmp_path / "out", "--model", "classical")
    assert r.returncode == 2 and "--recursive" in r.stderr and not (tmp_path / "out").exists()
    r = run("run", tmp_path / "cohort", "-o", tmp_path / "out", "--model", "classical", "--recursive")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "out").glob("*.json")} >= {"PATIENT1_MCP.json", "PATIENT2_MCP.json"}
    # piped output: one plain line per scan, never wrapped at 80 columns
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PATIENT")]
    assert len(lines) == 2 and all("mg HA/cm3" in ln and ln.rstrip().endswith(" s") for ln in lines), r.stdout


def test_same_scan_names_in_two_folders_are_refused_before_any_work(phantoms, tmp_path):
    from .conftest import tiny_scan

    for p in ("a", "b"):
        (tmp_path / "c" / p).mkdir(parents=True)
        tiny_scan(phantoms / "PHANTOM_0000.AIM", tmp_path / "c" / p / "MCP.AIM", slices=12)
    r = run("run", tmp_path / "c", "-o", tmp_path / "out", "--recursive")
    assert r.returncode == 2 and "same output name" in r.stderr and not (tmp_path / "out").exists()


def test_a_missing_extra_exits_2_with_the_install_command(tmp_path):
    import importlib.util

    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("the int8 extra is installed here")
    r = run("export", "--engine", "trt", "--precision", "int8", "--calib", tmp_path / "c.npz")
    assert r.returncode == 2 and "pip install 'vbmd-rt[int8]'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_watch_takes_o_and_the_old_positional_out(tmp_path):
    (tmp_path / "in").mkdir()
    for args in (["-o", tmp_path / "o1"], [tmp_path / "o2"]):
        r = run("watch", tmp_path / "in", *args, "--once", "--model", "classical")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "o1" / ".vbmd-rt").is_dir() and (tmp_path / "o2" / ".vbmd-rt").is_dir()
    r = run("watch", tmp_path / "in", tmp_path / "o3", "-o", tmp_path / "o4", "--once")
    assert r.returncode == 2 and not (tmp_path / "o3").exists()
