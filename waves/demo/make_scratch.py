#!/usr/bin/env python3
"""Create the demo's scratch git repository: ``python waves/demo/make_scratch.py DEST``.

DEST gets a copy of waves/demo/project/ (the sample package textkit) plus the
demo's workstream files under DEST/waves/demo/, committed once on branch main.
DEST must not exist yet (or be an empty directory). Standard library only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "dist", ".agentrun")


def git(dest: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=dest, check=True)


def make_scratch(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SystemExit(f"make_scratch: {dest} already exists and is not empty; remove it first "
                         f"(make demo does `rm -rf {dest}`)")
    shutil.copytree(PROJECT, dest, ignore=JUNK, dirs_exist_ok=True)
    waves = dest / "waves" / "demo"
    waves.mkdir(parents=True)
    for spec in sorted(HERE.glob("*.toml")):
        shutil.copy2(spec, waves / spec.name)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.name", "agentrun demo")
    git(dest, "config", "user.email", "demo@agentrun.invalid")
    git(dest, "config", "commit.gpgsign", "false")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "demo: initial sample project")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python waves/demo/make_scratch.py DEST", file=sys.stderr)
        return 2
    dest = Path(argv[0])
    try:
        make_scratch(dest)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"make_scratch: {exc}", file=sys.stderr)
        return 1
    count = len(list((dest / "waves" / "demo").glob("*.toml"))) - 1
    print(f"scratch repo ready at {dest.resolve()} (textkit + {count} workstreams in waves/demo/)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
