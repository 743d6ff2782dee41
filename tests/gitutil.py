"""Helpers for tests that drive agentrun against real git repositories."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

TRAILER = "Agentrun-Workstream"

# A file barrier for workstream commands: `sh BARRIER DIR N` registers the
# caller in DIR and waits (bounded) until N callers have registered. It
# synchronises on a condition, never on elapsed time.
BARRIER_SH = """\
dir=$1; n=$2
: > "$dir/$AGENTRUN_WS_ID.$AGENTRUN_ATTEMPT"
i=0
while :; do
  set -- "$dir"/*
  [ "$#" -ge "$n" ] && break
  i=$((i + 1))
  if [ "$i" -gt 1500 ]; then echo "barrier: gave up waiting for $n in $dir" >&2; exit 99; fi
  sleep 0.02
done
"""


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def out(repo: Path, *args: str) -> str:
    return git(repo, *args).stdout.strip()


def rev(repo: Path, ref: str) -> str | None:
    proc = git(repo, "rev-parse", "--verify", "-q", ref + "^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def init_repo(path: Path, files: dict[str, str]) -> Path:
    """A repository on `main` with one commit holding ``files``; `w/` (workstream specs) is ignored."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Test"), ("user.email", "test@example.com"), ("commit.gpgsign", "false"),
                       ("core.hooksPath", "/dev/null")):
        git(path, "config", key, value)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    with open(path / ".git" / "info" / "exclude", "a") as fh:
        fh.write("/w/\n")
    (path / "w").mkdir()
    return path


def all_refs(repo: Path) -> str:
    """Every ref and where it points: to prove that nothing moved."""
    return out(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def show(repo: Path, rev_path: str) -> str:
    return out(repo, "show", rev_path) + "\n"


def exists_at(repo: Path, rev_path: str) -> bool:
    return git(repo, "cat-file", "-e", rev_path, check=False).returncode == 0


def commits(repo: Path, base: str, tip: str) -> list[dict]:
    """Commits in base..tip, oldest first: sha, parents, subject, workstream trailers, files touched."""
    text = out(repo, "log", "--reverse", "--format=%H%x1f%P%x1f%B%x1e", f"{base}..{tip}")
    result = []
    for record in filter(None, (r.strip() for r in text.split("\x1e"))):
        sha, parents, body = record.split("\x1f")
        trailers = [line.split(":", 1)[1].strip() for line in body.splitlines()
                    if line.startswith(TRAILER + ":")]
        files = out(repo, "show", "--no-renames", "--name-only", "--format=", sha).split()
        result.append({"sha": sha, "parents": parents.split(), "subject": body.splitlines()[0],
                       "trailers": trailers, "files": files})
    return result


def worktree_paths(repo: Path) -> list[Path]:
    text = out(repo, "worktree", "list", "--porcelain")
    return [Path(line.split(" ", 1)[1]) for line in text.splitlines() if line.startswith("worktree ")]


def rescue_refs(repo: Path, prefix: str = "refs/agentrun/rescue/") -> list[str]:
    text = out(repo, "for-each-ref", "--format=%(refname)", prefix)
    return [line for line in text.splitlines() if line]


class DB:
    """Plain sqlite3 look at .agentrun/state.db."""

    def __init__(self, repo: Path):
        self.db = sqlite3.connect(f"file:{repo / '.agentrun' / 'state.db'}?mode=ro", uri=True)
        self.db.row_factory = sqlite3.Row

    def run(self):
        return self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()

    def workstreams(self, run_id: str) -> dict:
        rows = self.db.execute("SELECT * FROM workstreams WHERE run_id = ?", (run_id,)).fetchall()
        return {r["ws_id"]: r for r in rows}

    def attempts(self, run_id: str, ws_id: str) -> list:
        return self.db.execute("SELECT * FROM attempts WHERE run_id = ? AND ws_id = ? ORDER BY attempt",
                               (run_id, ws_id)).fetchall()

    def gates(self, run_id: str, ws_id: str) -> list:
        return self.db.execute("SELECT * FROM gate_results WHERE run_id = ? AND ws_id = ? ORDER BY id",
                               (run_id, ws_id)).fetchall()

    def close(self) -> None:
        self.db.close()


def json_col(value):
    return json.loads(value) if value else None
