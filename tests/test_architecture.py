"""The package's layers (``.importlinter``) hold, and breaking one is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_parent), "HOME": str(cwd)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    result = lint(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_an_import_from_a_higher_layer_or_with_side_effects_breaks_a_contract(tmp_path):
    shutil.copytree(ROOT / "agentrun", tmp_path / "agentrun", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    planner = tmp_path / "agentrun" / "plan" / "planner.py"
    planner.write_text(planner.read_text() + "\nfrom agentrun.store import state  # noqa\nimport sqlite3  # noqa\n")
    result = lint(tmp_path, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "agentrun.plan is not allowed to import agentrun.store" in result.stdout
    assert "agentrun.plan is not allowed to import sqlite3" in result.stdout
    assert "2 kept, 1 broken" in result.stdout or "1 kept, 2 broken" in result.stdout
