"""Paths and globs in ``files`` (and ``copy_untracked``): the one place their meaning lives.

Every pattern is relative to the project root and anchored there:

- ``*``, ``?`` and ``[...]`` stay within one path segment; a ``**`` segment
  spans zero or more segments (``**/*.md`` matches ``README.md`` and
  ``docs/a/b.md``; ``docs/*.md`` matches ``docs/n.md``, not ``docs/sub/n.md``).
- A pattern without wildcards names a file or a directory and covers
  everything below it (``src`` and ``src/`` cover ``src/a.py``).
- A glob names files; ending in ``/`` (or ``/**``) it names directories and
  everything below them (``pkg*/`` covers ``pkg1/a.py``).
- ``./a`` is ``a``, ``a//b`` is ``a/b``, ``.`` is the whole project.

Two patterns overlap when some path could match both; for that, a literal
path whose last name has an extension (``calc/core.py``) is taken to be a
file, not a directory a wildcard could reach into (``**/*.md`` does not
overlap it), unless it is written with a trailing ``/``.

Globs are translated by pathspec's gitignore patterns (each anchored at the
root, and, for a glob naming files, at the end of the path), whole for
matching paths and segment by segment for telling whether two patterns
overlap. Pure: no I/O.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from functools import lru_cache
from typing import Iterable, NamedTuple




@lru_cache(maxsize=None)
def _gitignore():
    """pathspec's gitignore patterns, loaded on first use: runs whose `files` hold no glob never
    pay for importing it."""
    from pathspec.util import lookup_pattern
    return lookup_pattern("gitignore")
_SPECIAL = re.compile(r"[*?\[\\]")     # a backslash escapes the next character, so it makes a glob too
_COMPILE_ABOVE = 100    # candidates from which compiling a whole glob beats walking its segments
_ANY = "**"


class Pattern(NamedTuple):
    """One entry of ``files``, parsed."""

    text: str                    # normalised, without a trailing "/"; "" is the project root
    segments: tuple[str, ...]
    glob: bool
    directory: bool              # names directories: written with a trailing "/" (a glob: or "/**")
    prefix: str                  # the leading segments without wildcards: everything it names is below here
    head: str                    # the text before the first wildcard (see _head), a literal's whole path

    @property
    def base(self) -> tuple[str, ...]:
        """A directory glob's segments naming the directories (without a trailing ``**``)."""
        if self.directory and len(self.segments) > 1 and self.segments[-1] == _ANY:
            return self.segments[:-1]
        return self.segments

    def could_be_directory(self) -> bool:
        return self.directory or _without_extension(self.text)


def could_be_directory(key: str) -> bool:
    """For overlap, could the literal with this ``literal_key`` be a directory? A name with
    an extension (``core.py``) is taken to be a file unless written with a trailing ``/``."""
    return key.endswith("/") or _without_extension(key)


def _without_extension(path: str) -> bool:
    return "." not in path[path.rfind("/") + 1:].lstrip(".")


def literal_key(pattern: str) -> str | None:
    """A pattern without wildcards, tidied to what matters for overlap: its normalised path,
    with a trailing "/" only for a directory named like a file (``v1.2/``); None for a glob."""
    if _SPECIAL.search(pattern):
        return None
    if _tidy(pattern):
        return pattern
    path = normalise(pattern)
    return path + "/" if path and pattern.endswith("/") and not _without_extension(path) else path


def normalise(path: str) -> str:
    """``./src//a.py`` -> ``src/a.py``; the project root (``.`` or ``./``) -> ``""``."""
    if _tidy(path):
        return path
    path = posixpath.normpath(path).strip("/")
    return "" if path == "." else path


def _tidy(path: str) -> bool:
    """Surely unchanged by ``normalise``? (String tests: the planner asks for every entry.)"""
    return not ("//" in path or "/." in path or path.startswith((".", "/")) or path.endswith("/"))


@lru_cache(maxsize=65536)
def parse(pattern: str) -> Pattern:
    text = normalise(pattern)
    segments = tuple(text.split("/")) if text else ()
    if "\\" in text or "[" in text:
        segments = tuple(map(_translatable, segments))
    if "**/**" in text:
        segments = tuple(s for n, s in enumerate(segments) if not (s == _ANY and n and segments[n - 1] == _ANY))
    text = "/".join(segments)
    wildcard = _SPECIAL.search(text)
    if wildcard is None:
        return Pattern(text, segments, False, pattern.endswith("/"), text, text)
    start = text.rfind("/", 0, wildcard.start()) + 1      # of the first segment with a wildcard
    directory = pattern.endswith("/") or (len(segments) > 1 and segments[-1] == _ANY)
    return Pattern(text, segments, True, directory, text[:max(start - 1, 0)], _head(text, start, wildcard.start()))


def _head(text: str, start: int, wildcard: int) -> str:
    """A glob's head: the text before its first wildcard character, at ``wildcard``, in the
    segment from ``start``. Used to index patterns: when ``overlap(a, b)``, one head is a
    prefix of the other (as strings), and a literal whose path is a proper prefix of a
    glob's head is the project root ("") or a directory above that head (the head starts
    with the literal's path and "/").

    Why: up to its first segment with a wildcard, a glob's segments are literal and are
    compared one for one (``**`` is itself a wildcard segment, so nothing shifts before
    it). There ``overlap`` asks of a literal name that the segment's pattern match it (so
    the name starts with the segment's head), of another wildcard segment that their
    heads be prefixes of one another, and of ``**`` nothing (the head ends just before
    it, at a directory boundary, where a literal may end too: ``src/**`` and ``src``
    overlap). A directory glob adds only a trailing ``**``, after its head. Between two
    wildcard segments one of which has a backslash, ``overlap`` does not compare heads,
    so such a glob's head stops where that segment starts.
    """
    segment = text[start:].partition("/")[0]
    return text[:start] if "\\" in segment else text[:wildcard]


def _translatable(segment: str) -> str:
    """A name that pathspec cannot translate (ending in a backslash that escapes nothing) or
    that re rejects (a range such as ``[z-a]``) stands for itself."""
    if "\\" in segment or ("[" in segment and "-" in segment):
        try:
            _segment_regex(segment)
        except (ValueError, re.error):
            return _gitignore().escape(segment)
    return segment


def _compile(text: str, directory: bool) -> re.Pattern:
    regex = _gitignore().pattern_to_regex("/" + text + ("/" if directory else ""))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # re's notice about "[[" in a bracket expression
        # gitignore lets any pattern name a directory too; a glob naming files must match the whole path.
        return re.compile(regex if directory else f"(?:{regex})\\Z")


@lru_cache(maxsize=4096)
def _path_regex(text: str, directory: bool) -> re.Pattern:
    """pathspec's regex for a glob; searched in a path, it matches the path (or, for a
    directory glob, a path below a matching directory)."""
    return _compile(text, directory)


@lru_cache(maxsize=65536)
def _segment_regex(segment: str) -> re.Pattern | None:
    """The regex for one segment of a glob; None for a segment without wildcards."""
    return _compile(segment, False) if _SPECIAL.search(segment) else None


def _segment_matches(glob_segment: str, name: str) -> bool:
    regex = _segment_regex(glob_segment)
    return glob_segment == name if regex is None else regex.search(name) is not None


def _walk(pattern: tuple[str, ...], names: tuple[str, ...] | list[str]) -> bool:
    """Do the segments ``names`` match the glob segments ``pattern`` (``**`` spanning zero or more)?

    Greedy with backtracking to the last ``**``, as for ``*`` in a string: every other
    segment matches exactly one name.
    """
    if _ANY not in pattern:
        return len(pattern) == len(names) and all(map(_segment_matches, pattern, names))
    if pattern[-1] != _ANY and not (names and _segment_matches(pattern[-1], names[-1])):
        return False   # the common quick answer for "**/*.md"
    i = j = 0
    star, mark = -1, 0
    while j < len(names):
        if i < len(pattern) and pattern[i] == _ANY:
            star, mark = i, j
            i += 1
        elif i < len(pattern) and _segment_matches(pattern[i], names[j]):
            i += 1
            j += 1
        elif star >= 0:
            i, mark = star + 1, mark + 1
            j = mark
        else:
            return False
    return all(p == _ANY for p in pattern[i:])


def _covers(p: Pattern, names: tuple[str, ...]) -> bool:
    """Does ``p`` match the path with segments ``names``? (Segment by segment; the same
    answer as ``Matcher``, which a property test checks.)"""
    if not p.glob:
        return names[:len(p.segments)] == p.segments
    if not p.directory:
        return _walk(p.segments, names)
    base = p.base
    return any(_walk(base, names[:k]) for k in range(1, len(names)))


class Matcher:
    """Matches relative paths against a tuple of patterns."""

    def __init__(self, patterns: tuple[str, ...]):
        parsed = [parse(p) for p in patterns]
        self._literals = tuple(p.text for p in parsed if not p.glob)
        self._regexes = tuple(_path_regex(p.text, p.directory) for p in parsed if p.glob)

    def match(self, path: str) -> bool:
        path = normalise(path)
        for literal in self._literals:
            if not literal or path == literal or path.startswith(literal + "/"):
                return True
        return any(regex.search(path) for regex in self._regexes)

    def select(self, paths: Iterable[str]) -> list[str]:
        """The given relative paths that match, in their order."""
        return [path for path in paths if self.match(path)]


@lru_cache(maxsize=1024)
def matcher(patterns: tuple[str, ...]) -> Matcher:
    """The (cached) matcher for a workstream's ``files``: the scope check calls it per changed file."""
    return Matcher(patterns)


def _reaches_below(glob: Pattern, literal: Pattern) -> bool:
    """Could ``glob`` match something strictly below the directory ``literal``?

    True when the literal matches a leading part of the glob that more segments follow;
    for a directory glob, its whole directory part will do.
    """
    base = glob.base
    stop = len(base) + 1 if glob.directory else len(base)
    return any(_walk(base[:k], literal.segments) for k in range(stop))


@lru_cache(maxsize=65536)
def _segments_overlap(a: str, b: str) -> bool:
    """Could one path segment match both segment patterns? Exact if one is literal."""
    wild_a, wild_b = _SPECIAL.search(a) is not None, _SPECIAL.search(b) is not None
    if not wild_a or not wild_b:
        return _segment_matches(a, b) if wild_a else _segment_matches(b, a)
    if "\\" in a or "\\" in b:
        return True   # escaped characters: the literal text below is not what the glob means
    head_a, head_b = re.split(r"[*?\[]", a, 1)[0], re.split(r"[*?\[]", b, 1)[0]
    tail_a, tail_b = re.split(r"[*?\]]", a)[-1], re.split(r"[*?\]]", b)[-1]
    return (head_a.startswith(head_b) or head_b.startswith(head_a)) and \
        (tail_a.endswith(tail_b) or tail_b.endswith(tail_a))


def _sequences_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Could one path match both segment sequences, ``**`` absorbing any number of segments?"""
    if a[-1] != _ANY and b[-1] != _ANY and not _segments_overlap(a[-1], b[-1]):
        return False   # the common quick answer: "*.py" and "*.md" name different files
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == _ANY:
            stack.append((i + 1, j))
            if j < len(b):
                stack.append((i, j + 1))
        elif j < len(b) and b[j] == _ANY:
            stack.append((i, j + 1))
            if i < len(a):
                stack.append((i + 1, j))
        elif i < len(a) and j < len(b) and _segments_overlap(a[i], b[j]):
            stack.append((i + 1, j + 1))
    return False


def patterns_overlap(p: str, q: str) -> bool:
    """Could some path be matched by both ``p`` and ``q``?

    Exact when one side is a literal path, except that a literal named like a
    file (``calc/core.py``) is not taken to be a directory that a wildcard
    could reach into. Between two globs, conservative: segments are compared
    by their literal beginnings and endings.
    """
    return overlap(parse(p), parse(q))


def overlap(a: Pattern, b: Pattern) -> bool:
    """``patterns_overlap`` for parsed patterns."""
    if not a.glob and not b.glob:
        short, long = sorted((a.segments, b.segments), key=len)
        return long[:len(short)] == short
    if a.glob and b.glob:
        return _sequences_overlap(a.segments + ((_ANY,) if a.directory else ()),
                                  b.segments + ((_ANY,) if b.directory else ()))
    glob, literal = (a, b) if a.glob else (b, a)
    return _covers(glob, literal.segments) or _reaches_into(glob, literal)


def _reaches_into(glob: Pattern, literal: Pattern) -> bool:
    named_inside = glob.prefix == literal.text or glob.prefix.startswith(literal.text + "/")
    return (named_inside or literal.could_be_directory()) and _reaches_below(glob, literal)


def matched_files(glob: Pattern, files: list[str]) -> list[str]:
    """The literal paths among ``files`` that ``glob`` matches: for literals below its literal
    prefix that are taken to be files (not ``could_be_directory``), that is ``overlap``."""
    if len(files) <= _COMPILE_ABOVE:
        return [path for path in files if _covers(glob, tuple(path.split("/")))]
    # A match ends in the glob's last literal characters: a cheap test before the regex.
    ending = "" if glob.directory else re.split(r"[*?\]]", glob.segments[-1])[-1]
    if "\\" in ending:
        ending = ""
    search = _path_regex(glob.text, glob.directory).search
    return [path for path in files if path.endswith(ending) and search(path)]


# Names nobody lists on purpose: a pattern that matches them matches any name.
_ANY_NAMES = ("zq9", ".zq9")


def matches_any_file(pattern: str) -> bool:
    """Does ``pattern`` match files whatever their names: any name at the top level (``*``, ``.``), or
    any path some directories down (``**/?*``, ``*/**``)?"""
    match = matcher((pattern,)).match
    return any(match(name) or match("zq7/zq8/" + name) for name in _ANY_NAMES)


def git_segment(pattern: str) -> str | None:
    """The first segment of ``pattern`` that singles out ``.git`` (in any case, as some file systems
    ignore case): that matches it but not any name, as ``*`` and ``**`` do. ``.gi?``, ``[.]git``
    and ``.*`` single it out; ``src/*`` does not."""
    for segment in parse(pattern).segments:
        if _segment_matches(segment.lower(), ".git") and not _segment_matches(segment, _ANY_NAMES[0]):
            return segment
    return None


def in_scope(path: str, patterns: tuple[str, ...]) -> bool:
    """Is the changed file ``path`` one that ``files`` (``patterns``) allows?"""
    return matcher(tuple(patterns)).match(path)
