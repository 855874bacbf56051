import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    r = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


# Every module of the lean side: importing all of them must load no torch, TensorRT or Dask.
LEAN_PACKAGES = ("vbmd_rt.runtime", "vbmd_rt.cli", "vbmd_rt.synth", "vbmd_rt.evaluation", "vbmd_rt.cohort")


def test_no_lean_module_imports_torch_tensorrt_or_dask():
    code = (
        "import importlib, pkgutil, sys, vbmd_rt, vbmd_rt.api\n"
        f"names = []\n"
        f"for pkg in {LEAN_PACKAGES!r}:\n"
        "    p = importlib.import_module(pkg)\n"
        "    names += [m.name for m in pkgutil.walk_packages(p.__path__, pkg + '.')]\n"
        "for n in names:\n"
        "    if not n.endswith('__main__'):\n"
        "        importlib.import_module(n)\n"
        "bad = [m for m in ('torch', 'tensorrt', 'tensorrt_rtx', 'dask', 'distributed') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) >= 25  # the walk found the modules (not an empty package list)


def test_no_import_cycles_between_vbmd_rt_modules():
    """Module A imports B and B imports A (at the top or inside a function, as cli.py and commands.py once did): none."""
    import ast

    top: dict[str, set[str]] = {}
    mapping = {
        "runtime": "vbmd_rt.runtime",
        "export": "vbmd_rt.export",
        "calib": "vbmd_rt.calib",
        "bench": "vbmd_rt.bench",
        "synth": "vbmd_rt.synth",
        "evaluation": "vbmd_rt.evaluation",
        "cohort": "vbmd_rt.cohort",
        "vbmd_rt": "vbmd_rt",
    }
    for folder, pkg in mapping.items():
        for f in (ROOT / folder).rglob("*.py"):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            deps = set()
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vbmd_rt"):
                    deps.add(node.module)
                    deps.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.startswith("vbmd_rt"))
            top[name] = deps
    cycles = [
        (a, b)
        for a, deps in top.items()
        for b in deps
        if b in top and b != a and a in top[b] and not a.startswith(b + ".") and not b.startswith(a + ".")
    ]
    assert not cycles, cycles


@pytest.mark.slow  # 10-11 s; `make typecheck` runs the same check, and CI runs -m slow
def test_mypy_is_clean_on_the_runtime():
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy not installed")
    r = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_cli_runs_as_python_m_vbmd_rt_and_python_m_vbmd_rt_cli():
    for mod in ("vbmd_rt", "vbmd_rt.cli"):
        r = subprocess.run([sys.executable, "-m", mod, "run", "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "--out" in r.stdout, (mod, r.stderr)


def test_readme_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "\nmake demo\n" in text and "\nmake test\n" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_python_snippets_run_as_typed(phantoms, tmp_path, monkeypatch):
    """Every ```python block of README.md, run in a folder laid out as after `make demo`."""
    import re

    from tests.conftest import phantom_copies

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    phantom_copies(phantoms, tmp_path / "demo-out" / "scans", 1)
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    assert (tmp_path / "demo-out" / "mask.AIM").is_file()


def test_ruff_format_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    r = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _readme_commands() -> list[list[str]]:
    """Every command in README.md's shell blocks, as argument lists (continuations joined, `&&` split,
    comments dropped)."""
    import shlex

    blocks, lang, cur = [], None, []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, cur = line[3:].strip(), []
            else:
                if lang in ("", "bash", "sh", "shell"):
                    blocks.append("\n".join(cur))
                lang = None
        elif lang is not None:
            cur.append(line)
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                args = shlex.split(part.replace("$SLURM_ARRAY_TASK_ID", "0"), comments=True)
                if args:
                    cmds.append(args)
    return cmds


def test_readme_vbmd_rt_commands_parse_as_typed():
    """Each `vbmd-rt` command of the README goes through the CLI's own parser (options, choices, arguments);
    each script it runs exists; each make target is in the Makefile; installed commands carry their path."""
    import click
    import typer

    from vbmd_rt.cli import app

    root = typer.main.get_command(app)
    cmds = _readme_commands()
    seen = 0
    make = (ROOT / "Makefile").read_text()
    for args in cmds:
        exe = args[0]
        if exe.endswith("vbmd-rt"):
            ctx = click.Context(root, info_name="vbmd-rt")
            sub = root.get_command(ctx, args[1])
            assert sub is not None, f"README: no command {args[1]!r} in {' '.join(args)}"
            try:
                sub.make_context(args[1], list(args[2:]), parent=ctx)
            except click.exceptions.Exit:
                pass
            except click.UsageError as e:
                raise AssertionError(f"README: `{' '.join(args)}` does not parse: {e}") from None
            seen += 1
        elif exe.endswith("python") and len(args) > 1 and args[1].endswith(".py"):
            assert exe.startswith(".venv/bin/"), f"README: `{' '.join(args)}` needs the .venv's python"
            assert (ROOT / args[1]).is_file(), args
        elif exe == "make":
            assert f"\n{args[1]}:" in make or f" {args[1]}" in make.split("\n.PHONY:")[1].split("\n")[0], args
        elif exe in ("python", "python3", "pytest", "ruff", "mypy") and args[1:3] != ["-m", "venv"]:
            raise AssertionError(f"README: `{' '.join(args)}` runs outside .venv (write .venv/bin/{exe})")
    assert seen >= 3


@pytest.mark.slow  # 10-11 s of runs; CI runs -m slow
def test_readme_tour_runs_as_typed_after_make_demo(phantoms, tmp_path, monkeypatch):
    """The README's tour block, each line run for real (the command line as typed, in this process) in a
    folder laid out as after `make demo`."""
    import json
    import re

    from tests.conftest import cli_here, phantom_copies

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## After `make demo`.*?```\n(.*?)```", text, flags=re.S).group(1)
    phantom_copies(phantoms, tmp_path / "demo-out" / "scans", 1)
    monkeypatch.chdir(tmp_path)
    r = cli_here("run", "demo-out/scans/PHANTOM_0000.AIM", "-o", "demo-out/results", "-q")  # what `make demo` did
    assert r.returncode == 0, r.stderr
    for line in block.strip().splitlines():
        args = line.split()
        assert args[0] == ".venv/bin/vbmd-rt", line
        r = cli_here(*args[1:])
        assert r.returncode == 0, f"README: `{line}` failed: {r.stderr}"
    d100 = json.loads((tmp_path / "demo-out/results/PHANTOM_0000.json").read_text())["d100_mg_ha_cm3"]
    assert (tmp_path / "demo-out/slicer/PHANTOM_0000_SEG.nii.gz").is_file()
    assert (tmp_path / "demo-out/cohort-results/summary.csv").is_file()
    assert f"{d100:.1f}" in cli_here(*block.splitlines()[1].split()[1:]).stdout
