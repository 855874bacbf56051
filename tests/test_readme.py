"""README lines that must stay true as typed (issue 21): extras it names exist, tools it tells to run
are installed by an extra, the skip table names the sample-reading tests, the demo prints the truth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_extra_the_readme_names_exists():
    named = set()
    for group in re.findall(r"""(?:\.|vbmd-rt|whl)\[([a-z0-9,]+)\]""", README):
        named.update(group.split(","))
    named.update(re.findall(r"EXTRAS=([a-z0-9,]+)", README)[0].split(",") if "EXTRAS=" in README else [])
    assert named and named <= set(EXTRAS), named - set(EXTRAS)
    for wrong in ("the test extra", "`test` extra", "training extra", "`training`"):
        assert wrong not in README


def test_pre_commit_comes_with_the_dev_extra():
    assert "pre-commit install" in README
    assert any(r.startswith("pre-commit") for r in EXTRAS["dev"])


def test_the_skip_table_names_every_test_that_needs_the_samples():
    table = README.split("| tests | skip when |")[1].split("\n\n")[0]
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        if re.search(r"needs_samples|REFERENCE|SAMPLES|\bsamples\b[,)]", text):
            assert path.stem in table, path.stem


def test_fuzzing_says_where_the_samples_come_from():
    line = next(x for x in README.splitlines() if "bench/fuzz_aim.py" in x)
    assert "VBMD_RT_SAMPLES=" in line


def test_the_tour_names_the_cohort_folders_it_makes():
    tour = README.split("## After `make demo`")[1].split("## ")[0]
    for folder in re.findall(r"synth (demo-out/cohort/\w+)", tour):
        assert f"`{folder}/" in tour, folder


def test_make_demo_prints_the_truth_as_a_number_not_a_grep():
    demo = (ROOT / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "grep" not in demo and "truth.json" in demo and "%.1f" in demo
