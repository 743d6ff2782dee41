"""Read the edits a coding model writes in its reply, and write edits the same way.

Two conventions that chat models already know:

* ``"diff"`` -- SEARCH/REPLACE blocks (aider style)::

      src/app.py
      ```python
      <<<<<<< SEARCH
      old lines
      =======
      new lines
      >>>>>>> REPLACE
      ```

  An empty SEARCH section creates a file (or fills an empty one).

* ``"whole"`` -- the path alone on a line, then the complete file in a fenced
  code block.

Pure text in, text out: :func:`parse_edits` turns a reply into edits (plus the
malformed blocks, with a message for the model), :func:`render_edits` is its
inverse. What the edits do to files is in ``patches`` and ``edits``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Union

FORMATS = ("diff", "whole")

_SEARCH = re.compile(r"^<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^={5,9}\s*$")
_REPLACE = re.compile(r"^>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(.*?)\s*$")
_PATH_PREFIX = re.compile(r"^(?:file(?:name)?|path)\s*:\s*", re.IGNORECASE)
_LOOKBACK = 5  # how many lines above a block may hold its path


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Edit:
    """Replace the lines ``search`` with ``replace`` in ``path`` (empty search: create)."""

    path: str
    search: str
    replace: str
    line: int = field(default=0, compare=False)  # 1-based line of the block in the reply


@dataclass(frozen=True)
class WholeFile:
    """Set the complete content of ``path``."""

    path: str
    content: str
    line: int = field(default=0, compare=False)


AnyEdit = Union[Edit, WholeFile]


@dataclass(frozen=True)
class Problem:
    """A malformed block in the reply, with the 1-based line where it starts."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParseResult:
    edits: list[AnyEdit]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def feedback(self) -> str:
        """A message for the model listing the malformed blocks ("" when there are none)."""
        if not self.problems:
            return ""
        lines = ["Some edit blocks in your reply are malformed:"]
        lines += [f"- {p}" for p in self.problems]
        lines.append("Resend them in the required format.")
        return "\n".join(lines)


# --------------------------------------------------------------------------- parsing


def parse_edits(text: str, fmt: str) -> ParseResult:
    """The edits in a model reply, in reply order, plus the malformed blocks."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown edit format {fmt!r}; expected one of {', '.join(FORMATS)}")
    lines = text.replace("\r\n", "\n").split("\n")
    if fmt == "diff":
        return _parse_diff(lines)
    return _parse_whole(lines)


def _path_from_line(line: str) -> str | None:
    """The path on a line meant to name a file, or None if the line is not like that."""
    s = line.strip()
    if not s or _FENCE.match(s) or _SEARCH.match(s) or _DIVIDER.match(s) or _REPLACE.match(s):
        return None
    s = s.lstrip("#").strip().strip("*").strip()
    s = _PATH_PREFIX.sub("", s)
    s = s.rstrip(":").strip()
    quoted = len(s) >= 2 and s[0] == s[-1] and s[0] in "`'\""
    if quoted:
        s = s[1:-1].strip()
    if not s or (not quoted and any(c.isspace() for c in s)) or "`" in s:
        return None
    return s


def _lookback_path(lines: list[str], i: int, *, skip_fences: bool) -> str | None:
    """The path named just above line ``i``: skip blank (and fence) lines, then the
    first other line decides."""
    for j in range(i - 1, max(-1, i - 1 - _LOOKBACK), -1):
        s = lines[j].strip()
        if not s or (skip_fences and _FENCE.match(s)):
            continue
        return _path_from_line(lines[j])
    return None


def _join(section: list[str]) -> str:
    return "".join(line + "\n" for line in section)


def _parse_diff(lines: list[str]) -> ParseResult:
    edits: list[AnyEdit] = []
    problems: list[Problem] = []
    n = len(lines)
    current_path: str | None = None

    def next_search(j: int) -> int:
        while j < n and not _SEARCH.match(lines[j]):
            j += 1
        return j

    i = 0
    while i < n:
        line = lines[i]
        if _REPLACE.match(line):
            problems.append(Problem(i + 1, "found `>>>>>>> REPLACE` without a `<<<<<<< SEARCH` "
                                           "line and `=======` line before it"))
            i += 1
            continue
        if not _SEARCH.match(line):
            i += 1
            continue
        start = i
        path = _lookback_path(lines, i, skip_fences=True)
        explicit = path is not None
        if path is None:
            path = current_path
        j = i + 1
        while j < n and not (_DIVIDER.match(lines[j]) or _SEARCH.match(lines[j])
                             or _REPLACE.match(lines[j])):
            j += 1
        if j >= n or not _DIVIDER.match(lines[j]):
            problems.append(Problem(start + 1, "the `<<<<<<< SEARCH` block has no `=======` line "
                                               "between its SEARCH and REPLACE sections"))
            i = next_search(j if j < n and _SEARCH.match(lines[j]) else j + 1)
            continue
        search = lines[i + 1:j]
        k = j + 1
        while k < n and not (_REPLACE.match(lines[k]) or _SEARCH.match(lines[k])
                             or _DIVIDER.match(lines[k])):
            k += 1
        if k >= n or not _REPLACE.match(lines[k]):
            problems.append(Problem(start + 1, "the `<<<<<<< SEARCH` block does not end with a "
                                               "`>>>>>>> REPLACE` line"))
            i = next_search(k if k < n and _SEARCH.match(lines[k]) else k + 1)
            continue
        replace = lines[j + 1:k]
        i = k + 1
        if path is None:
            problems.append(Problem(start + 1, "the SEARCH/REPLACE block has no file path: put the "
                                               "path alone on the line before it"))
            continue
        if explicit:
            current_path = path
        edits.append(Edit(path, _join(search), _join(replace), line=start + 1))
    return ParseResult(edits, problems)


def _parse_whole(lines: list[str]) -> ParseResult:
    edits: list[AnyEdit] = []
    problems: list[Problem] = []
    n = len(lines)
    i = 0
    while i < n:
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2)
        path = _lookback_path(lines, i, skip_fences=False)
        if path is None:
            # ```python src/x.py  -- a path in the info string
            words = info.split()
            if len(words) >= 2 and ("/" in words[-1] or "." in words[-1]):
                path = _path_from_line(words[-1])
        close = _closing_fence(lines, i + 1, fence)
        if close is None:
            problems.append(Problem(i + 1, f"the code block opened here with {fence} is never "
                                           "closed"))
            break
        if path is None:
            problems.append(Problem(i + 1, "the code block has no file path: put the path alone "
                                           "on the line before the opening fence"))
        else:
            edits.append(WholeFile(path, _join(lines[i + 1:close]), line=i + 1))
        i = close + 1
    return ParseResult(edits, problems)


def _closing_fence(lines: list[str], start: int, fence: str) -> int | None:
    """Index of the fence that closes a block opened with ``fence``.

    Inner blocks opened with a fence at least as long (```` ```python ````) are
    tracked so that a file containing code blocks survives; a longer outer
    fence avoids the question altogether.
    """
    char, size = fence[0], len(fence)
    depth = 0
    for k in range(start, len(lines)):
        s = lines[k].rstrip()
        run = len(s) - len(s.lstrip(char))
        if run < size or run < 3 or s[:1] != char:
            continue
        if s[run:].strip() == "":
            if depth == 0:
                return k
            depth -= 1
        else:
            depth += 1
    return None


def fence_for(text: str) -> str:
    """A backtick fence longer than any backtick run that starts a line of ``text``."""
    longest = 0
    for line in text.split("\n"):
        s = line.strip()
        run = len(s) - len(s.lstrip("`"))
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def with_nl(text: str) -> str:
    """``text`` ending with a newline, unless it is empty."""
    return text if not text or text.endswith("\n") else text + "\n"


def render_edits(edits: Iterable[AnyEdit], fmt: str = "diff") -> str:
    """Write edits the way a model should: the inverse of :func:`parse_edits`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown edit format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = []
    for e in edits:
        if isinstance(e, Edit):
            if fmt != "diff":
                raise ValueError("a SEARCH/REPLACE edit can only be rendered in the diff format")
            out.append(f"{e.path}\n```\n<<<<<<< SEARCH\n{with_nl(e.search)}=======\n"
                       f"{with_nl(e.replace)}>>>>>>> REPLACE\n```\n")
        else:
            content = with_nl(e.content)
            if fmt == "diff":
                out.append(f"{e.path}\n```\n<<<<<<< SEARCH\n=======\n{content}>>>>>>> REPLACE\n```\n")
            else:
                fence = fence_for(content)
                out.append(f"{e.path}\n{fence}\n{content}{fence}\n")
    return "\n".join(out)
