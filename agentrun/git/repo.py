"""Thin, typed wrappers over the git command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from agentrun.errors import GitError  # noqa: F401  (re-exported for callers)

if TYPE_CHECKING:
    from filelock import FileLock

# agentrun's own commits must not depend on the user's identity being set, nor
# run their hooks (a hook that edits or rejects would make verification lie).
IDENTITY = {"GIT_AUTHOR_NAME": "agentrun", "GIT_AUTHOR_EMAIL": "agentrun@localhost",
             "GIT_COMMITTER_NAME": "agentrun", "GIT_COMMITTER_EMAIL": "agentrun@localhost"}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(key, None)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def run(cwd: str | Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    # A process group of its own: Ctrl-C at a terminal signals the whole foreground group, and a
    # git killed half-way through an update fails the attempt and leaves its lock files behind.
    # agentrun stops its work itself, between git commands.
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=_env(env),
                          input=input, stdin=None if input is not None else subprocess.DEVNULL, process_group=0)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:3])} failed in {cwd}: {explain(proc)}")
    return proc


def explain(proc: subprocess.CompletedProcess, limit: int = 400) -> str:
    """What git said, on one line: all of it (the reason is often not on the last line, which may
    just say "Aborting"), hints left out."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines()
             if line.strip() and not line.startswith("hint:")]
    text = " ".join(lines) or f"exit code {proc.returncode}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def out(cwd: str | Path, *args: str) -> str:
    return run(cwd, *args).stdout.strip()


def is_repo(path: Path) -> bool:
    proc = run(path, "rev-parse", "--is-inside-work-tree", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def has_commits(root: Path) -> bool:
    return run(root, "rev-parse", "--verify", "-q", "HEAD", check=False).returncode == 0


def rev(root: Path, ref: str) -> str | None:
    proc = run(root, "rev-parse", "--verify", "-q", ref + "^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def current_branch(root: Path) -> str | None:
    proc = run(root, "symbolic-ref", "-q", "--short", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def dirty_files(root: Path) -> list[str]:
    """Tracked files with uncommitted changes (untracked files do not count)."""
    text = out(root, "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in text.splitlines() if line]


# In a worktree's own git directory: the untracked files agentrun copied into it (copy_untracked),
# one per line. They are never committed, never rescued, never in any ref.
COPIED = "agentrun-copied"


def _own_gitdir(worktree: Path) -> Path | None:
    dotgit = Path(worktree) / ".git"
    if dotgit.is_dir():
        return dotgit
    try:
        text = dotgit.read_text()
    except OSError:
        return None
    return Path(text[len("gitdir: "):].strip()) if text.startswith("gitdir: ") else None


def mark_copied(worktree: Path, paths: list[str]) -> None:
    gitdir = _own_gitdir(worktree)
    if gitdir is None:
        raise GitError(f"{worktree} is not a git worktree")
    (gitdir / COPIED).write_text("".join(p + "\n" for p in paths))


def copied_files(worktree: Path) -> list[str]:
    gitdir = _own_gitdir(worktree)
    try:
        return (gitdir / COPIED).read_text().splitlines() if gitdir else []
    except FileNotFoundError:
        return []


def has_uncommitted(worktree: Path) -> bool:
    copied = [f":(exclude,literal){p}" for p in copied_files(worktree)]
    return bool(out(worktree, "status", "--porcelain", "--", ".", *copied))


def _add_all_but_copied(worktree: Path, env: dict[str, str] | None = None) -> None:
    """``git add -A`` of everything but the copied files. Those not ignored are excluded from the
    add, so that not even an unreachable object of theirs is written (an ignored one is not added
    anyway, and naming it in an exclude makes git refuse the whole add); then any that got into
    the index all the same (a command may un-ignore them) is taken out again."""
    copied = copied_files(worktree)
    ignored = set()
    if copied:
        listed = run(worktree, "check-ignore", "-z", "--stdin", check=False, env=env,
                     input="\0".join(copied) + "\0").stdout
        ignored = set(listed.split("\0"))
    run(worktree, "add", "-A", "--", ".", *[f":(exclude,literal){p}" for p in copied if p not in ignored], env=env)
    if copied:
        run(worktree, "reset", "-q", "--", *[f":(literal){p}" for p in copied], env=env)


def update_ref(root: Path, ref: str, new: str, old: str | None = None) -> None:
    """Compare-and-swap a ref: fails if it no longer points at ``old``."""
    args = ["update-ref", ref, new] + ([old] if old else [])
    run(root, *args)


def commit_all(worktree: Path, message: str) -> str | None:
    """Commit every change (tracked, untracked, deleted) but the copied files; None when there is nothing."""
    _add_all_but_copied(worktree)
    if run(worktree, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return None
    run(worktree, "commit", "-q", "--no-verify", "-m", message, env=IDENTITY)
    return out(worktree, "rev-parse", "HEAD")


def changed_files(root: Path, base: str, head: str) -> list[str]:
    text = out(root, "diff", "--name-only", "--no-renames", f"{base}..{head}")
    return [line for line in text.splitlines() if line]


def snapshot_tree(worktree: Path, message: str) -> str | None:
    """A commit of the worktree's current state (including untracked files), on no branch.

    Uses a private index so the worktree's own index and files stay as they are.
    """
    if not has_uncommitted(worktree):
        return None
    index = Path(out(worktree, "rev-parse", "--git-path", "index"))
    if not index.is_absolute():
        index = worktree / index
    private = index.with_name(index.name + ".agentrun-rescue")
    env = {"GIT_INDEX_FILE": str(private)}
    try:
        if index.exists():
            private.write_bytes(index.read_bytes())
        _add_all_but_copied(worktree, env)
        tree = run(worktree, "write-tree", env=env).stdout.strip()
        parent = rev(worktree, "HEAD")
        args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
        return run(worktree, *args, env={**env, **IDENTITY}).stdout.strip()
    finally:
        private.unlink(missing_ok=True)


_common_dirs: dict[str, Path] = {}


def worktree_lock(root: Path) -> FileLock:
    """Worktree bookkeeping is not safe to run concurrently (``prune`` deletes the
    empty ``worktrees/`` directory another ``add`` is about to use): one at a time."""
    from filelock import FileLock  # only git runs need it; importing it costs ~30 ms at every start

    key = str(root)
    if key not in _common_dirs:
        common = Path(out(root, "rev-parse", "--git-common-dir"))
        _common_dirs[key] = common if common.is_absolute() else root / common
    return FileLock(str(_common_dirs[key] / "agentrun-worktrees.lock"))


def worktree_add(root: Path, path: Path, branch: str, start: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with worktree_lock(root):
        # A worktree registered by a process killed half-way would block the add; one killed
        # inside `git worktree add` itself stays locked ("initializing"), and prune skips it.
        run(root, "worktree", "unlock", str(path), check=False)
        run(root, "worktree", "prune", check=False)
        run(root, "worktree", "add", "-q", "-B", branch, str(path), start)


def worktree_prune(root: Path) -> None:
    with worktree_lock(root):
        run(root, "worktree", "prune", check=False)


def worktree_remove(root: Path, path: Path) -> None:
    with worktree_lock(root):
        run(root, "worktree", "remove", "--force", str(path), check=False)
        run(root, "worktree", "prune", check=False)


def delete_branch(root: Path, branch: str) -> None:
    run(root, "branch", "-D", branch, check=False)


def branches(root: Path, pattern: str) -> list[str]:
    text = out(root, "for-each-ref", "--format=%(refname:short)", f"refs/heads/{pattern}")
    return [line for line in text.splitlines() if line]


def worktree_of_branch(root: Path, branch: str) -> Path | None:
    """The worktree (main or linked) that has ``branch`` checked out, if any."""
    path = None
    for line in out(root, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = Path(line[len("worktree "):])
        elif line == f"branch refs/heads/{branch}":
            return path
    return None


def is_ancestor(root: Path, older: str, newer: str) -> bool:
    return run(root, "merge-base", "--is-ancestor", older, newer, check=False).returncode == 0


def unmerged_files(worktree: Path) -> list[str]:
    text = out(worktree, "diff", "--name-only", "--diff-filter=U")
    return [line for line in text.splitlines() if line]


def exclude_path(root: Path, pattern: str) -> None:
    """Add ``pattern`` to .git/info/exclude (never to a tracked .gitignore)."""
    exclude = Path(out(root, "rev-parse", "--git-path", "info/exclude"))
    if not exclude.is_absolute():
        exclude = root / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    existing = exclude.read_text().splitlines() if exclude.exists() else []
    if pattern not in existing:
        with open(exclude, "a") as fh:
            fh.write(("\n" if existing and existing[-1] else "") + pattern + "\n")
