"""Apply parsed edits to file texts in memory, and say why one cannot be applied.

:func:`apply_search_replace` applies one SEARCH/REPLACE block to a string
(line-aligned, with tolerance for trailing whitespace and indentation),
:func:`closest_lines` finds what a SEARCH text that did not match was probably
meant to be, :func:`safe_relpath` rejects paths a model may not write, and
:func:`plan_edits` computes the new content of every touched file through a
``read_file`` callback. Pure apart from that callback: the file system is in
``edits``. Every failure carries a message written to be sent back to the model.
"""

from __future__ import annotations

import ast
import difflib
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterable

from agentrun.agents.llm.replies import AnyEdit, Edit, WholeFile, fence_for, with_nl

_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|[\\/]{2})")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Failure:
    """One edit that cannot be applied. ``message`` is ready to send to the model."""

    path: str
    kind: str  # unsafe_path, not_allowed, unreadable, missing_file, file_exists,
    #            no_match, ambiguous, syntax, conflict, write_error
    message: str
    block: int | None = None  # 1-based index of the edit in the reply


@dataclass(frozen=True)
class Region:
    """Lines ``start``..``end`` (1-based, inclusive) of a file, and how similar they were."""

    start: int
    end: int
    text: str
    ratio: float


@dataclass
class Plan:
    """New content per touched path, or the failures that prevent applying anything."""

    contents: dict[str, str]
    originals: dict[str, str | None]
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def changed(self) -> list[str]:
        return [p for p, text in self.contents.items() if text != self.originals.get(p)]

    def feedback(self) -> str:
        return failure_feedback(self.failures)


class UnsafePath(Exception):
    """A path the model may not write; ``str(exc)`` says why."""


class EditFailed(Exception):
    """One SEARCH/REPLACE block cannot be applied to a text."""

    def __init__(self, kind: str, detail: str, *, closest: Region | None = None,
                 lines: tuple[int, ...] = ()):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.closest = closest
        self.lines = lines


# --------------------------------------------------------------------------- matching


def _split(text: str) -> list[str]:
    """Lines with their "\\n" (only "\\n" separates lines, unlike str.splitlines)."""
    if not text:
        return []
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _find(file_lines: list[str], search_lines: list[str], key: Callable[[str], str]) -> list[int]:
    n = len(search_lines)
    want = [key(s) for s in search_lines]
    have = [key(f) for f in file_lines]
    return [i for i in range(len(have) - n + 1) if have[i] == want[0] and have[i:i + n] == want]


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _indent_delta(file_lines: list[str], search_lines: list[str]) -> tuple[str, str] | None:
    """("add", P) if the file has P more indentation on every non-blank line than the
    SEARCH text, ("remove", P) if it has P less, None if the lines differ otherwise."""
    delta = None
    for f, s in zip(file_lines, search_lines):
        fs, ss = f.rstrip(), s.rstrip()
        if not ss or not fs:
            if fs or ss:
                return None
            continue
        fi, si = _indent(fs), _indent(ss)
        if fs[len(fi):] != ss[len(si):]:
            return None
        if fi.endswith(si):
            d = ("add", fi[:len(fi) - len(si)])
        elif si.endswith(fi):
            d = ("remove", si[:len(si) - len(fi)])
        else:
            return None
        if delta is None:
            delta = d
        elif d != delta:
            return None
    return delta


def _reindent(lines: list[str], delta: tuple[str, str]) -> list[str]:
    mode, prefix = delta
    out = []
    for line in lines:
        if not line.strip():
            out.append(line)
        elif mode == "add":
            out.append(prefix + line)
        else:
            k = 0
            while k < len(prefix) and k < len(line) and line[k] == prefix[k]:
                k += 1
            out.append(line[k:])
    return out


def _locate(file_lines: list[str], search_lines: list[str]) -> tuple[list[int], tuple[str, str] | None]:
    """Match positions at the first tolerance level that matches at all, and the
    re-indentation the replacement needs (None: use it as written)."""
    hits = _find(file_lines, search_lines, lambda s: s)
    if hits:
        return hits, None
    hits = _find(file_lines, search_lines, str.rstrip)
    if hits:
        return hits, None
    n = len(search_lines)
    found = []
    for i in range(len(file_lines) - n + 1):
        d = _indent_delta(file_lines[i:i + n], search_lines)
        if d is not None:
            found.append((i, d))
    return [i for i, _ in found], (found[0][1] if found else None)


def matches(text: str, search: str) -> int:
    """How many places of ``text`` the SEARCH lines match, at the first tolerance
    level (exact, trailing whitespace, uniform indentation) that matches at all."""
    work = with_nl(_unify_newlines(text)[0])
    return len(_locate(_split(work), _split(with_nl(search.replace("\r\n", "\n"))))[0])


def _unify_newlines(text: str) -> tuple[str, bool]:
    crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
    return (text.replace("\r\n", "\n"), True) if crlf else (text, False)


def apply_search_replace(text: str | None, search: str, replace: str) -> str:
    """``text`` with the SEARCH lines replaced by the REPLACE lines.

    ``text`` None means the file does not exist. An empty (or blank) SEARCH
    creates the file or fills an empty one. Matching is line-aligned: exact
    first, then ignoring trailing whitespace, then tolerating a uniform
    indentation difference (the replacement is re-indented to match). The
    file's CRLF line endings and missing final newline are preserved.
    Raises :class:`EditFailed`.
    """
    search = search.replace("\r\n", "\n")
    replace = with_nl(replace.replace("\r\n", "\n"))
    if not search.strip():
        if text is None or not text.strip():
            return replace
        raise EditFailed("file_exists", "the SEARCH section is empty, which means \"create this "
                                        "file\", but the file already exists and is not empty")
    if text is None:
        raise EditFailed("missing_file", "the file does not exist")
    work, crlf = _unify_newlines(text)
    missing_final_nl = not work.endswith("\n")
    work = with_nl(work)
    file_lines = _split(work)
    search_lines = _split(with_nl(search))
    hits, delta = _locate(file_lines, search_lines)
    if not hits:
        raise EditFailed("no_match", "the SEARCH text did not match", closest=closest_lines(work, search))
    if len(hits) > 1:
        raise EditFailed("ambiguous", f"the SEARCH text matches {len(hits)} places",
                         lines=tuple(h + 1 for h in hits))
    i = hits[0]
    new_lines = _split(replace)
    if delta is not None:
        new_lines = _reindent(new_lines, delta)
    result = "".join(file_lines[:i] + new_lines + file_lines[i + len(search_lines):])
    if missing_final_nl and result.endswith("\n"):
        result = result[:-1]
    if crlf:
        result = result.replace("\n", "\r\n")
    return result


def _grams(line: str) -> list[str]:
    s = " ".join(line.split())
    if len(s) < 3:
        return [s] if s else []
    return [s[k:k + 3] for k in range(len(s) - 2)]


_REFINE = 5  # windows re-scored with difflib
_REFINE_CHARS = 2000  # longer SEARCH texts keep the trigram score (difflib is quadratic)


def closest_lines(file_text: str, search: str, context: int = 3) -> Region | None:
    """The region of ``file_text`` most like ``search``, widened by ``context`` lines
    each side; None when the file or the search is empty.

    Windows have as many lines as ``search``. Every window is scored by the
    overlap of character trigrams (maintained incrementally as the window
    slides), then the best few are re-scored with ``difflib.SequenceMatcher``;
    scoring every window with difflib alone takes minutes on a large file.
    Ties go to the earliest window.
    """
    file_lines = _split(file_text.replace("\r\n", "\n"))
    search = with_nl(search.replace("\r\n", "\n"))
    search_lines = _split(search)
    if not file_lines or not search.strip():
        return None
    n = min(len(search_lines), len(file_lines))
    want = Counter(g for line in search_lines for g in _grams(line))
    want_total = sum(want.values())
    file_grams = [_grams(line) for line in file_lines]
    have: Counter = Counter()
    overlap = size = 0

    def move(grams: list[str], step: int) -> None:
        nonlocal overlap, size
        for g in grams:
            size += step
            if g in want:
                if step > 0:
                    overlap += have[g] < want[g]
                    have[g] += 1
                else:
                    have[g] -= 1
                    overlap -= have[g] < want[g]

    for grams in file_grams[:n]:
        move(grams, 1)
    scores = []
    for i in range(len(file_lines) - n + 1):
        if i:
            move(file_grams[i - 1], -1)
            move(file_grams[i + n - 1], 1)
        scores.append(2 * overlap / (size + want_total) if size + want_total else 0.0)
    candidates = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:_REFINE]
    best_ratio, best_i = -1.0, 0
    sm = difflib.SequenceMatcher(None, autojunk=False)
    sm.set_seq2(search)
    for i in sorted(candidates):
        if len(search) <= _REFINE_CHARS:
            sm.set_seq1("".join(file_lines[i:i + n]))
            ratio = sm.ratio()
        else:
            ratio = scores[i]
        if ratio > best_ratio:
            best_ratio, best_i = ratio, i
    lo = max(0, best_i - context)
    hi = min(len(file_lines), best_i + n + context)
    return Region(lo + 1, hi, "".join(file_lines[lo:hi]), best_ratio)


# --------------------------------------------------------------------------- paths


def safe_relpath(path: str) -> str:
    """``path`` normalised ("./a//b" -> "a/b"), or :class:`UnsafePath` if it is
    absolute, climbs with "..", or points into a ``.git`` directory."""
    if not path or not path.strip():
        raise UnsafePath("the path is empty")
    if "\x00" in path:
        raise UnsafePath(f"the path {path!r} contains a NUL byte")
    if path.startswith("/") or _WINDOWS_ABS.match(path):
        raise UnsafePath(f"{path} is an absolute path; use a path relative to the project root")
    parts = [p for p in PurePosixPath(path).parts if p != "."]
    if ".." in parts:
        raise UnsafePath(f"{path} contains '..'; use a path inside the project, relative to its root")
    if any(p.lower() == ".git" for p in parts):
        raise UnsafePath(f"{path} is inside .git; edit project files only")
    if not parts:
        raise UnsafePath(f"{path} does not name a file")
    return "/".join(parts)

# --------------------------------------------------------------------------- planning


def _block_name(index: int, edit: AnyEdit, path: str) -> str:
    what = "SEARCH/REPLACE block" if isinstance(edit, Edit) else "whole-file block"
    return f"The {what} #{index} for {path}"


def _fenced(text: str) -> str:
    fence = fence_for(text)
    return f"{fence}\n{with_nl(text)}{fence}"


def _failure_message(exc: EditFailed, index: int, edit: Edit, path: str, original: str | None,
                     current: str | None) -> str:
    name = _block_name(index, edit, path)
    if exc.kind == "missing_file":
        return (f"{name} failed: {path} does not exist. To create it, use an empty SEARCH section "
                f"and put the whole file in the REPLACE section.")
    if exc.kind == "file_exists":
        return (f"{name} failed: its SEARCH section is empty, which creates a file, but {path} "
                f"already exists and is not empty. To add lines, SEARCH for the lines next to "
                f"where they go and repeat them in the REPLACE section with the new lines.")
    if exc.kind == "ambiguous":
        where = ", ".join(str(n) for n in exc.lines)
        return (f"{name} failed: its SEARCH text matches {len(exc.lines)} places in the file "
                f"(starting at lines {where}). Add a few more lines around it to the SEARCH text "
                f"(and to the REPLACE text) so that it matches exactly one place.")
    parts = [f"{name} did not match exactly."]
    if exc.closest is not None and exc.closest.ratio > 0:
        c = exc.closest
        parts.append(f"The closest lines in the file (lines {c.start}-{c.end}) are:\n{_fenced(c.text)}")
    if original is not None and original != current and matches(original, edit.search):
        parts.append("Its SEARCH text is in the original file, but an earlier block in your reply "
                     "already changed those lines: SEARCH for the lines as they are after the "
                     "earlier blocks, or merge the two blocks.")
    elif edit.replace.strip() and current is not None and matches(current, edit.replace) == 1:
        parts.append("Its REPLACE lines are already in the file: if that change is already made, "
                     "leave this block out.")
    parts.append("Resend the block with SEARCH text copied exactly from the file, "
                 "including whitespace and comments.")
    return "\n".join(parts)


def _syntax_error(text: str) -> SyntaxError | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(text)
    except SyntaxError as exc:
        return exc
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
        return SyntaxError(str(exc))
    return None


def _syntax_message(path: str, exc: SyntaxError) -> str:
    where = f" at line {exc.lineno}" if exc.lineno else ""
    msg = f"After your edits, {path} is no longer valid Python: {exc.msg}{where}"
    if exc.text and exc.text.strip():
        msg += f":\n    {exc.text.strip()}"
    return msg + "\nFix the edits for this file so that it still parses."


def plan_edits(read_file: Callable[[str], str | None], edits: Iterable[AnyEdit], *,
               allowed: Callable[[str], bool] | None = None) -> Plan:
    """The new content of every file the edits touch, applying them in order.

    ``read_file(rel)`` returns the current text, or None if the file does not
    exist; it may raise :class:`UnsafePath`, ``OSError`` or
    ``UnicodeDecodeError``. ``allowed(rel)`` False forbids a path. Every edit is
    tried so that all failures are reported at once; a ``.py`` file that parsed
    before must still parse after. Pure apart from ``read_file``.
    """
    current: dict[str, str | None] = {}
    originals: dict[str, str | None] = {}
    failures: list[Failure] = []
    bad_paths: set[str] = set()
    failed_paths: set[str] = set()

    def fail(path: str, kind: str, message: str, index: int) -> None:
        failures.append(Failure(path, kind, message, index))
        failed_paths.add(path)

    for index, edit in enumerate(edits, 1):
        try:
            rel = safe_relpath(edit.path)
        except UnsafePath as exc:
            fail(edit.path, "unsafe_path", f"{_block_name(index, edit, edit.path)} cannot be "
                                           f"applied: {exc}.", index)
            continue
        if rel in bad_paths:
            continue
        if allowed is not None and not allowed(rel):
            bad_paths.add(rel)
            fail(rel, "not_allowed", f"{_block_name(index, edit, rel)} cannot be applied: this task "
                                     f"may not change {rel}. Leave it alone, or reach the goal by "
                                     f"editing other files.", index)
            continue
        if rel not in current:
            try:
                text = read_file(rel)
            except UnsafePath as exc:
                bad_paths.add(rel)
                fail(rel, "unsafe_path", f"{_block_name(index, edit, rel)} cannot be applied: {exc}.",
                     index)
                continue
            except UnicodeDecodeError:
                bad_paths.add(rel)
                fail(rel, "unreadable", f"{_block_name(index, edit, rel)} cannot be applied: {rel} is "
                                        f"not a UTF-8 text file.", index)
                continue
            except OSError as exc:
                bad_paths.add(rel)
                fail(rel, "unreadable", f"{_block_name(index, edit, rel)} cannot be applied: {rel} "
                                        f"cannot be read ({exc.strerror or exc}).", index)
                continue
            current[rel] = originals[rel] = text
        if isinstance(edit, WholeFile):
            content = with_nl(edit.content.replace("\r\n", "\n"))
            if current[rel] is not None and _unify_newlines(current[rel])[1]:
                content = content.replace("\n", "\r\n")  # keep the file's CRLF endings
            current[rel] = content
            continue
        try:
            current[rel] = apply_search_replace(current[rel], edit.search, edit.replace)
        except EditFailed as exc:
            fail(rel, exc.kind, _failure_message(exc, index, edit, rel, originals[rel], current[rel]),
                 index)

    for rel, text in current.items():
        if rel in failed_paths or text is None or not rel.endswith((".py", ".pyi")):
            continue
        before = originals[rel]
        if before is not None and _syntax_error(before) is not None:
            continue  # it did not parse before: do not hold the edit to it
        err = _syntax_error(text)
        if err is not None:
            failures.append(Failure(rel, "syntax", _syntax_message(rel, err)))
    contents = {rel: text for rel, text in current.items() if text is not None}
    return Plan(contents, originals, failures)


def failure_feedback(failures: list[Failure]) -> str:
    """One message for the model: what failed, and that nothing was applied."""
    if not failures:
        return ""
    head = (f"None of the edits in your reply were applied, because {len(failures)} of them "
            f"failed:" if len(failures) > 1 else
            "None of the edits in your reply were applied, because one of them failed:")
    body = "\n\n".join(f"{n}. {f.message}" for n, f in enumerate(failures, 1))
    return (f"{head}\n\n{body}\n\nFix these, then resend ALL your edit blocks, including the ones "
            f"that were fine: nothing from the previous reply was applied.")
