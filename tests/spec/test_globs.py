"""One glob semantics for `files`: matching (the scope check) and overlap (conflict prediction)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentrun.spec.globs import matched_files, matcher, parse, patterns_overlap
from conftest import agentrun, write_ws
from gitutil import DB, init_repo, show

# --- matching ---------------------------------------------------------------------------

MATCHES = [
    # pattern, path, matches?
    ("**/*.md", "README.md", True),          # issue 10, item 21: ** spans zero segments
    ("**/*.md", "docs/a/b.md", True),
    ("**/*.md", "calc/core.py", False),
    ("**/*", "a.txt", True),                 # issue 10, item 21
    ("**/*", "a/b/c", True),
    ("**", "a/b", True),
    ("docs/*.md", "docs/n.md", True),
    ("docs/*.md", "docs/sub/n.md", False),   # issue 10, item 21: * stays within a segment
    ("docs/*.md", "docs/x.md/y", False),     # a glob names files, not what is below them
    ("*.md", "README.md", True),             # anchored at the project root
    ("*.md", "docs/a.md", False),
    ("src/*", "src/a.py", True),
    ("src/*", "src/pkg/a.py", False),
    ("src/**", "src/pkg/deep/a.py", True),
    ("src/**", "src", False),
    ("src/**/*.py", "src/a.py", True),
    ("src/**/*.py", "src/a/b/c.py", True),
    ("src/**/*.py", "srcx/a.py", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("src/?.py", "src/a.py", True),
    ("src/?.py", "src/ab.py", False),
    ("src/[ab].py", "src/b.py", True),
    ("src/[ab].py", "src/c.py", False),
    ("src", "src/a.py", True),               # a literal names a file or a directory
    ("src", "src", True),
    ("src/", "src/pkg/a.py", True),
    ("src", "srcx/a.py", False),             # a prefix that is not a directory boundary
    ("src/a.py", "src/a.py", True),
    ("pkg*/", "pkg1/a.py", True),            # a glob ending in / names directories
    ("pkg*/", "pkg1", False),
    ("pkg*", "pkg1/a.py", False),
    ("**/", "a/b", True),
    ("**/", "a", False),
    ("./src/a.py", "src/a.py", True),        # normalised as before
    ("src//a.py", "src/a.py", True),
    ("src/./a.py", "src/a.py", True),
    (".", "any/thing.py", True),             # the project root covers everything
    ("./", "any.py", True),
]


@pytest.mark.parametrize("pattern, path, expected", MATCHES)
def test_matching(pattern, path, expected):
    assert matcher((pattern,)).match(path) is expected


def test_a_matcher_matches_any_of_its_patterns_and_selects_in_order():
    m = matcher(("docs/*.md", "src"))
    assert m.select(["src/a.py", "README.md", "docs/n.md", "docs/sub/n.md", "srcx"]) == ["src/a.py", "docs/n.md"]
    assert matcher(("docs/*.md", "src")) is m     # cached per tuple
    assert matcher(()).select(["a"]) == []


@pytest.mark.parametrize("pattern", ["src/a\\", "[z-a].py", "*\\"])
def test_a_name_that_cannot_be_translated_stands_for_itself(pattern):
    """A backslash escaping nothing, a range re rejects: never an error (fnmatch took them too)."""
    assert matcher((pattern,)).match(pattern)
    assert not matcher((pattern,)).match("a.py")
    assert patterns_overlap(pattern, "**") and not patterns_overlap(pattern, "x/*.txt")


# --- overlap ----------------------------------------------------------------------------

OVERLAPPING = [
    ("**/*.md", "docs/*.md"),
    ("src", "src/**/*.py"),
    ("src", "**/*.py"),                   # a literal without an extension may be a directory
    ("src", "src/a.py"),                  # a directory covers what is below it
    ("src/", "src/pkg/deep/a.py"),
    ("./src/a.py", "src/a.py"),
    ("src/./a.py", "src/a.py"),
    (".", "anything/at/all.py"),          # the project root covers everything
    (".", "*.md"),
    ("src/a.py", "src/a.py"),
    ("src/*.py", "src/a.py"),             # glob vs literal
    ("src/**", "src/a/b/c"),
    ("src", "src/*.py"),                  # a literal directory covers a glob reaching into it
    ("src/sub", "src/*/x.py"),
    ("src/su?/", "src/sub/x.py"),         # a glob naming directories covers what is below them
    ("pkg*/", "pkg1"),
    ("src/*.py", "src/a*.py"),            # glob vs glob
    ("src/[ab].py", "src/?.py"),
    ("**/tests/*.py", "pkg/tests/test_a.py"),
    ("**/*.md", "**/README*"),
    ("v1.2/", "**/*.txt"),                # a directory named like a file, written as one
    ("calc/core.py/*.md", "calc/core.py"),   # ... or named as one by the glob
]

DISJOINT = [
    ("calc/core.py", "**/*.md"),          # issue 10, item 21: a file is not a directory to reach into
    ("docs/*.md", "docs/sub/x.md"),
    ("*.py", "pkg/a.py"),
    ("src/a.py", "src/b.py"),             # siblings
    ("src", "srcx/a.py"),                 # a prefix that is not a directory boundary
    ("src/a.py", "src/a.pyc"),
    ("src/*.py", "src/a.txt"),            # glob vs literal of another kind
    ("src/*.py", "src/*.txt"),            # glob vs glob, different endings
    ("src/*.py", "tests/*.py"),           # glob vs glob, different prefixes
    ("docs/*.md", "src/a/b"),
    ("src/a*", "src/b/c"),
    ("src/*", "src/pkg/a.py"),            # * stays within a segment (fnmatch's crossed "/")
    ("src/su?", "src/sub/x.py"),          # a glob without a trailing / names files only
    ("*.py", "src/*"),
    ("pkg*", "pkg1/a.py"),
    ("docs/*.md", "docs/*/*.md"),
]


@pytest.mark.parametrize("p, q", OVERLAPPING)
def test_patterns_that_overlap(p, q):
    assert patterns_overlap(p, q)
    assert patterns_overlap(q, p)


@pytest.mark.parametrize("p, q", DISJOINT)
def test_patterns_that_do_not_overlap(p, q):
    assert not patterns_overlap(p, q)
    assert not patterns_overlap(q, p)


# --- properties: matching and overlap agree ---------------------------------------------

NAMES = ["a", "b", "a.md", "b.py", "x.md"]                   # what paths are made of
GLOB_SEGMENTS = NAMES + ["*", "?", "a*", "*b", "*.md", "*.py", "[ab]", "x.*", "**"]
names = st.sampled_from(NAMES)


@st.composite
def patterns(draw, glob: bool | None = None):
    segment = st.sampled_from(GLOB_SEGMENTS if glob is not False else NAMES)
    parts = draw(st.lists(segment, min_size=1, max_size=3))
    if glob and not any(parse(p).glob for p in parts):
        parts[draw(st.integers(0, len(parts) - 1))] = draw(st.sampled_from(GLOB_SEGMENTS[len(NAMES):]))
    return draw(st.sampled_from(["", "./"])) + "/".join(parts) + draw(st.sampled_from(["", "/"]))


def below_a_file(pattern: str, path: str) -> bool:
    """Is ``path`` strictly below a literal ``pattern`` named like a file (a case overlap ignores)?"""
    p = parse(pattern)
    return not p.glob and not p.could_be_directory() and path.startswith(p.text + "/")


PROPS = settings(max_examples=300, deadline=None)


@PROPS
@given(patterns(), patterns(), st.lists(names, min_size=1, max_size=5))
def test_two_patterns_matching_one_path_overlap(p, q, segments):
    path = "/".join(segments)
    assume(not below_a_file(p, path) and not below_a_file(q, path))
    if matcher((p,)).match(path) and matcher((q,)).match(path):
        assert patterns_overlap(p, q) and patterns_overlap(q, p)


@PROPS
@given(patterns(glob=False), patterns(glob=True))
def test_overlap_of_a_literal_and_a_glob_is_exact(literal, glob):
    """Overlapping means some path at or below the literal (at most 4 names below, enough for
    globs of 3 segments) is matched by the glob; the literal named like a file excepted."""
    parsed = parse(literal)
    assume(parsed.could_be_directory() or not parse(glob).prefix.startswith(parsed.text))
    below = [""] if not parsed.could_be_directory() else \
        [""] + ["/" + "/".join(rest) for depth in range(1, 5) for rest in itertools.product(NAMES, repeat=depth)]
    g = matcher((glob,))
    assert patterns_overlap(literal, glob) == any(g.match(parsed.text + tail) for tail in below)


@PROPS
@given(patterns(glob=True), st.lists(st.tuples(st.lists(names, max_size=3), st.sampled_from(NAMES[2:])), max_size=8),
       st.integers(0, 120))
def test_matched_files_is_overlap_for_files_below_the_prefix(glob, paths, padding):
    """The same answer below and above the size from which the whole glob is compiled."""
    prefix = parse(glob).prefix
    lead = prefix + "/" if prefix else ""
    files = [lead + "/".join([*directories, name]) for directories, name in paths]
    files += [f"{lead}p{i}.txt" for i in range(padding)]
    expected = [path for path in files if patterns_overlap(glob, path)]
    assert matched_files(parse(glob), files) == expected
    assert expected == [path for path in files if matcher((glob,)).match(path)]


# --- heads: what the planner indexes patterns by -----------------------------------------

HEADS = [
    ("tests/test_m1_*.py", "tests/test_m1_"),   # the text before the first wildcard
    ("src/**", "src/"),
    ("**/*.md", ""),
    ("pkg*/", "pkg"),
    ("./docs//*.md", "docs/"),                  # of the normalised text
    ("src/a.py", "src/a.py"),                   # a literal: its whole path
    ("v1.2/", "v1.2"),
    (".", ""),
    ("x\\y*", ""),             # a backslash: overlap does not compare heads there (it overlaps "zz*")
    ("src/a[b]\\c*/x", "src/"),
]


@pytest.mark.parametrize("pattern, head", HEADS)
def test_head(pattern, head):
    assert parse(pattern).head == head


HEAD_SEGMENTS = NAMES + ["*", "**", "a*", "a.*", "ab*", "b?", "[ab]*", "*.md", "a\\*", "\\a*", "a[z-a]", "a\\", "."]


@st.composite
def indexed_patterns(draw):
    """Patterns whose heads often share a beginning, backslashes and the root included."""
    parts = draw(st.lists(st.sampled_from(HEAD_SEGMENTS), min_size=1, max_size=3))
    return draw(st.sampled_from(["", "./"])) + "/".join(parts) + draw(st.sampled_from(["", "/"]))


@settings(max_examples=1000, deadline=None)
@given(indexed_patterns(), indexed_patterns())
def test_overlapping_patterns_have_heads_one_a_prefix_of_the_other(p, q):
    """What the planner's index relies on (globs._head says why it holds)."""
    if patterns_overlap(p, q):
        short, long = sorted((parse(p), parse(q)), key=lambda pattern: len(pattern.head))
        assert long.head.startswith(short.head)
        if not short.glob and long.glob and short.head != long.head:
            assert short.head == "" or long.head.startswith(short.head + "/")   # a directory above


# --- the scope check, through a real run ------------------------------------------------

def test_the_scope_check_uses_the_same_globs(tmp_path: Path):
    repo = init_repo(tmp_path / "repo", {"README.md": "old\n", "docs/n.md": "n\n", "calc/core.py": "x = 1\n"})
    write_ws(repo / "w", "readme", run="printf 'new\\n' > README.md", files=["**/*.md"])
    write_ws(repo / "w", "deep", run="mkdir -p docs/sub && printf 'deep\\n' > docs/sub/n.md", files=["docs/*.md"])

    proc = agentrun("run", "w", "-q", cwd=repo)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    db = DB(repo)
    try:
        run_row = db.run()
        rows = db.workstreams(run_row["id"])
    finally:
        db.close()
    assert rows["readme"]["status"] == "done"
    assert show(repo, f"{run_row['integration_branch']}:README.md") == "new\n"
    assert rows["deep"]["status"] == "failed"
    assert rows["deep"]["error"] == "scope: changed files outside `files`: docs/sub/n.md"
