"""What `--help` and the console lines show (issue 21): examples at the top level, `run` first, usage
lines without internal names, one examples block per command, units on the bench table, qc on run's line."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from vbmd_rt.cli import app

COMMANDS = ["run", "measure", "info", "synth", "eval", "train", "export", "calib", "watch", "health", "bench"]


def help_of(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return r.output


def test_top_level_help_has_examples_and_lists_run_first():
    out = help_of()
    assert "Examples:" in out and "vbmd-rt run scan.AIM -o results" in out
    listed = re.findall(r"^│ (\w+)\s{2,}", out.split("Commands")[1], re.M)
    assert listed[0] == "run" and listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_lines_name_arguments_as_a_user_types_them(command):
    out = help_of(command)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage and "[[" not in usage and re.search(r"\b[a-z]+_[a-z]+\b", usage) is None, usage
    assert "<list[" not in out
    assert out.count("Example") == 1  # one "Examples:" block, no second "Example:" in the docstring


def test_run_and_watch_usage():
    assert "Usage: vbmd-rt run [OPTIONS] SCAN..." in help_of("run")
    assert "Usage: vbmd-rt watch [OPTIONS] IN [OUT]" in help_of("watch")
    assert "Usage: vbmd-rt measure [OPTIONS] SCAN MASK" in help_of("measure")


def test_the_bench_table_says_its_units():
    from vbmd_rt.bench.suite import STAGES, table

    cell = {s: 1.0 for s in STAGES} | {"peak_rss_bytes": 3 * 2**30}
    st = {
        "precision": "fp32",
        "median": cell,
        "min": cell,
        "max": cell,
        "ratio_to_paper_3d": 0.2,
        "floor": {"floor_s": 0.5},
        "peak_rss_over_scan": 2.0,
    }
    text = table({"scan": {"size": "small", "slices": 80, "bytes": 2**30}, "stages": {"onnxruntime": st}})
    assert "peak RSS GiB" in text and "RSS/scan" in text and "2.00x" in text and "3.00" in text
    assert "multiple (x) of the scan file's size" in text


@pytest.mark.parametrize("status", ["pass", "review"])
def test_runs_console_line_says_pass_or_review(status):
    from vbmd_rt.cli.scans import _print_row

    lines = []
    row = {
        "status": "done",
        "scan": "S.AIM",
        "d100_mg_ha_cm3": 221.1,
        "bone_volume_mm3": 1786.0,
        "slices": 51,
        "side": "right",
        "total_s": 4.5,
        "warnings": None,
        "qc_status": status,
    }
    _print_row(row, False, lines.append)
    assert f"qc {status}" in lines[0]
