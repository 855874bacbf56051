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
