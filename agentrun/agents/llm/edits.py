"""Apply a model's edits to the files of a working tree: all of them, or none.

:func:`apply_edits` plans the edits (``patches``) against the real tree,
keeping every path inside it after symlinks are followed
(:func:`resolve_in_root`), then writes the new contents with
:func:`write_files_atomic`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from agentrun.agents.llm.patches import Failure, UnsafePath, failure_feedback, plan_edits, safe_relpath
from agentrun.agents.llm.replies import AnyEdit


# --------------------------------------------------------------------------- data


@dataclass
class ApplyResult:
    written: list[str]
    created: list[str]
    unchanged: list[str]
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def feedback(self) -> str:
        if self.failures:
            return failure_feedback(self.failures)
        if not self.written:
            return "Your edits changed nothing: every file already had that content."
        return "Applied your edits to: " + ", ".join(self.written) + "."


# --------------------------------------------------------------------------- paths


def resolve_in_root(root: Path, rel: str) -> Path:
    """The real location of ``rel`` under ``root``, following symlinks; :class:`UnsafePath`
    if it lies outside ``root`` or inside its ``.git``."""
    rel = safe_relpath(rel)
    real_root = Path(root).resolve()
    try:
        target = (real_root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafePath(f"{rel} cannot be resolved ({exc})") from None
    if target == real_root or not target.is_relative_to(real_root):
        raise UnsafePath(f"{rel} leads outside the project (through a symlink); edit files inside it")
    if any(p.lower() == ".git" for p in target.relative_to(real_root).parts):
        raise UnsafePath(f"{rel} leads into .git (through a symlink); edit project files only")
    return target


# --------------------------------------------------------------------------- writing


def apply_edits(root: Path, edits: Iterable[AnyEdit], *,
                allowed: Callable[[str], bool] | None = None) -> ApplyResult:
    """Plan ``edits`` against the files under ``root`` and write them all, or none.

    Paths must stay inside ``root`` after symlinks are followed; a symlink inside
    the tree is edited at its target. Writes are atomic per file (temporary file
    in the same directory, fsync, ``os.replace``) and every file is staged before
    any is replaced.
    """
    root = Path(root)
    real_root = root.resolve()

    def read(rel: str) -> str | None:
        target = resolve_in_root(real_root, rel)
        if not target.exists():
            return None
        return target.read_bytes().decode("utf-8")

    plan = plan_edits(read, list(edits), allowed=allowed)
    if not plan.ok:
        return ApplyResult([], [], [], plan.failures)
    changed = plan.changed
    unchanged = [p for p in plan.contents if p not in changed]
    targets: dict[Path, str] = {}
    for rel in changed:
        target = resolve_in_root(real_root, rel)
        if target in targets:
            other = targets[target]
            return ApplyResult([], [], [], [Failure(rel, "conflict", (
                f"{rel} and {other} are the same file (one is a symlink to the other); edit it "
                f"under one name only."))])
        targets[target] = rel
    created = [rel for rel in changed if plan.originals.get(rel) is None]
    try:
        write_files_atomic({t: plan.contents[rel] for t, rel in targets.items()})
    except OSError as exc:
        return ApplyResult([], [], [], [Failure(exc.filename or "", "write_error",
                                                f"Writing the edited files failed: {exc}.")])
    return ApplyResult(changed, created, unchanged, [])


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_files_atomic(files: dict[Path, str]) -> None:
    """Write every file or (barring a failure of ``os.replace`` itself) none.

    Stage 1 writes and fsyncs a temporary file beside each target, keeping an
    existing file's mode; stage 2 renames them all into place. A failure in
    stage 1 removes the temporaries and any directories it created.
    """
    staged: list[tuple[Path, Path]] = []
    made_dirs: list[Path] = []
    try:
        for target, text in files.items():
            missing = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
            for d in reversed(missing):
                d.mkdir()
                made_dirs.append(d)
            tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.chmod(tmp, target.stat().st_mode & 0o7777)
            except FileNotFoundError:
                pass
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for d in reversed(made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    for tmp, target in staged:
        os.replace(tmp, target)
    for directory in {target.parent for _, target in staged}:
        _fsync_dir(directory)
