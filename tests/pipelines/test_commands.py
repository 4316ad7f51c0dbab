"""Every command in pyproject's [project.scripts] resolves to a CLI that parses its arguments, and
the installed console scripts run from any folder (no sys.path patches needed)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
EXPECTED = {"read-build-shards", "read-train", "read-evaluate", "read-promote", "read-workflow",
            "read-predict", "read-convert", "read-serve"}


def test_the_documented_commands_are_declared():
    assert set(SCRIPTS) >= EXPECTED


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_command_prints_help_and_exits_0(name, capsys):
    module, function = SCRIPTS[name].split(":")
    cli = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as stopped:
        cli(["--help"])
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_installed_script_runs_outside_the_checkout(tmp_path):
    script = Path(sys.executable).parent / "read-train"
    assert script.is_file(), "run scripts/bootstrap.sh: the project is not installed in this venv"
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout


@pytest.mark.parametrize("path", ["pipelines/train.py", "pipelines/evaluate.py",
                                  "pipelines/workflow.py", "pipelines/build_shards.py"])
def test_scripts_run_as_files_the_way_ray_job_submit_runs_them(path):
    result = subprocess.run([sys.executable, path, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
