"""The layers of shared/ARCHITECTURE.md hold: imports only go down, pipelines never import each
other, tracking never calls a stage. The contracts live in pyproject.toml ([tool.importlinter])."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["schemas", "streams", "agents", "gpu_agent"]


def lint_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
            " sys.exit(lint_imports_command())", "--no-cache"]


def run_lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(lint_command(), cwd=tree, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tree)})


def test_the_code_keeps_every_layer_contract():
    result = run_lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_that_goes_up_breaks_the_build(tmp_path):
    """The check is live: a schema that imports the worker is reported with its chain."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "schemas" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport streams.worker  # noqa\n")

    result = run_lint(tmp_path)

    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert "schemas.errors -> streams.worker" in result.stdout
