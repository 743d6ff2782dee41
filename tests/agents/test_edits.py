"""Model edits: parsing SEARCH/REPLACE and whole-file replies, matching, planning, safe atomic writes."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrun.agents.llm.edits import ApplyResult, apply_edits, resolve_in_root
from agentrun.agents.llm.patches import (
    EditFailed,
    Failure,
    UnsafePath,
    apply_search_replace,
    closest_lines,
    failure_feedback,
    matches,
    plan_edits,
    safe_relpath,
)
from agentrun.agents.llm.replies import Edit, WholeFile, fence_for, parse_edits, render_edits


def block(path: str | None, search: str, replace: str, fence: str | None = "```python") -> str:
    head = (f"{path}\n" if path is not None else "") + (f"{fence}\n" if fence else "")
    tail = "```\n" if fence else ""
    return f"{head}<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n{tail}"


def reader(files: dict[str, str]):
    """A read_file callback over a dict, recording which paths were read."""
    calls: list[str] = []

    def read(rel: str):
        calls.append(rel)
        return files.get(rel)

    read.calls = calls
    return read


# --------------------------------------------------------------------------- parse: diff


def test_diff_block_gives_path_search_and_replace():
    reply = "Here is the fix.\n\n" + block("src/x.py", "a = 1\n", "a = 2\n")
    result = parse_edits(reply, "diff")
    assert result.problems == []
    assert result.edits == [Edit("src/x.py", "a = 1\n", "a = 2\n")]
    assert result.edits[0].line == 5  # the SEARCH marker's line in the reply


@pytest.mark.parametrize("path_line", [
    "src/x.py", "`src/x.py`", "**src/x.py**", "src/x.py:", "### src/x.py", "File: src/x.py",
    "  src/x.py  ", "**`src/x.py`**", "# src/x.py",
])
def test_diff_path_line_decorations_are_stripped(path_line):
    result = parse_edits(block(path_line, "a\n", "b\n"), "diff")
    assert [e.path for e in result.edits] == ["src/x.py"]


def test_diff_path_inside_the_fence_is_found():
    reply = "```python\nsrc/x.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```\n"
    assert parse_edits(reply, "diff").edits == [Edit("src/x.py", "a\n", "b\n")]


def test_diff_block_without_fence_parses():
    assert parse_edits(block("x.txt", "a\n", "b\n", fence=None), "diff").edits == [Edit("x.txt", "a\n", "b\n")]


def test_diff_several_blocks_for_several_files_keep_reply_order():
    reply = (block("a.py", "1\n", "2\n") + "\nThen:\n\n" + block("b.py", "3\n", "4\n")
             + "\n" + block("a.py", "5\n", "6\n"))
    result = parse_edits(reply, "diff")
    assert [(e.path, e.search) for e in result.edits] == [("a.py", "1\n"), ("b.py", "3\n"), ("a.py", "5\n")]
    assert result.problems == []


def test_diff_block_without_path_reuses_the_previous_blocks_path():
    reply = block("a.py", "1\n", "2\n") + "\n" + block(None, "3\n", "4\n")
    assert [e.path for e in parse_edits(reply, "diff").edits] == ["a.py", "a.py"]


def test_diff_first_block_without_path_is_a_problem():
    reply = "Change it like this:\n" + block(None, "1\n", "2\n", fence=None)
    result = parse_edits(reply, "diff")
    assert result.edits == []
    assert len(result.problems) == 1
    assert result.problems[0].line == 2
    assert "no file path" in result.problems[0].message


def test_diff_search_without_divider_is_a_problem_and_later_blocks_still_parse():
    reply = ("a.py\n<<<<<<< SEARCH\nold\n>>>>>>> REPLACE\n\n" + block("b.py", "x\n", "y\n"))
    result = parse_edits(reply, "diff")
    assert [p.line for p in result.problems] == [2]
    assert "=======" in result.problems[0].message
    assert result.edits == [Edit("b.py", "x\n", "y\n")]


def test_diff_search_without_replace_marker_is_a_problem():
    reply = "a.py\n<<<<<<< SEARCH\nold\n=======\nnew\n"
    result = parse_edits(reply, "diff")
    assert result.edits == []
    assert [p.line for p in result.problems] == [2]
    assert ">>>>>>> REPLACE" in result.problems[0].message


def test_diff_search_interrupted_by_next_search_reports_first_and_keeps_second():
    reply = "a.py\n<<<<<<< SEARCH\nold\n=======\nnew\n" + block("b.py", "x\n", "y\n", fence=None)
    result = parse_edits(reply, "diff")
    assert [p.line for p in result.problems] == [2]
    assert result.edits == [Edit("b.py", "x\n", "y\n")]


def test_diff_stray_replace_marker_is_a_problem():
    result = parse_edits("a.py\nold\n=======\nnew\n>>>>>>> REPLACE\n", "diff")
    assert result.edits == []
    assert [p.line for p in result.problems] == [5]


def test_diff_empty_search_section_is_kept_empty():
    assert parse_edits(block("new.py", "", "x = 1\n"), "diff").edits == [Edit("new.py", "", "x = 1\n")]


def test_diff_content_with_fences_and_blank_lines_is_verbatim():
    search = "```\n\n    indented\t\n"
    replace = "~~~\n`x`\n\n"
    assert parse_edits(block("doc.md", search, replace), "diff").edits == [Edit("doc.md", search, replace)]


def test_crlf_reply_parses_like_lf():
    reply = block("a.py", "1\n", "2\n").replace("\n", "\r\n")
    assert parse_edits(reply, "diff").edits == [Edit("a.py", "1\n", "2\n")]


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="unknown edit format"):
        parse_edits("", "udiff")


def test_parse_feedback_lists_problems_with_lines():
    result = parse_edits("a.py\n<<<<<<< SEARCH\nold\n", "diff")
    assert not result.ok
    assert "line 2" in result.feedback()
    assert parse_edits(block("a.py", "1\n", "2\n"), "diff").feedback() == ""


# --------------------------------------------------------------------------- parse: whole


def test_whole_file_block_gives_path_and_content():
    reply = "Updated file:\n\nsrc/x.py\n```python\nimport os\n\nprint(os.name)\n```\n"
    result = parse_edits(reply, "whole")
    assert result.edits == [WholeFile("src/x.py", "import os\n\nprint(os.name)\n")]
    assert result.problems == []


def test_whole_several_files():
    reply = "a.py\n```\na\n```\n\nb/c.txt\n```text\nc\n```\n"
    assert parse_edits(reply, "whole").edits == [WholeFile("a.py", "a\n"), WholeFile("b/c.txt", "c\n")]


def test_whole_empty_block_means_empty_file():
    assert parse_edits("empty.txt\n```\n```\n", "whole").edits == [WholeFile("empty.txt", "")]


def test_whole_code_block_without_path_is_a_problem():
    result = parse_edits("Run this:\n```sh\nmake test\n```\n", "whole")
    assert result.edits == []
    assert [p.line for p in result.problems] == [2]
    assert "no file path" in result.problems[0].message


def test_whole_unterminated_block_is_a_problem():
    result = parse_edits("a.py\n```python\nx = 1\n", "whole")
    assert result.edits == []
    assert [p.line for p in result.problems] == [2]
    assert "never closed" in result.problems[0].message


def test_whole_markdown_file_with_inner_code_blocks_survives():
    content = "# Title\n\n```python\nprint(1)\n```\n\nend\n"
    reply = f"README.md\n```markdown\n{content}```\n"
    assert parse_edits(reply, "whole").edits == [WholeFile("README.md", content)]


def test_whole_longer_outer_fence_contains_bare_fences():
    content = "```\nraw\n```\n"
    assert parse_edits(f"x.md\n````\n{content}````\n", "whole").edits == [WholeFile("x.md", content)]


def test_whole_path_in_fence_info_string():
    assert parse_edits("```python src/x.py\nx = 1\n```\n", "whole").edits == [WholeFile("src/x.py", "x = 1\n")]


# --------------------------------------------------------------------------- render round trips

_MARKER = re.compile(r"^(<{5,9} ?SEARCH|={5,9}|>{5,9} ?REPLACE)\s*$")
paths = st.from_regex(r"[a-z]{1,8}(/[a-z_]{1,8}){0,2}\.(py|txt|md)", fullmatch=True)
lines = st.text(alphabet="ab =<>`~#:()\t_x", max_size=12).filter(lambda s: not _MARKER.match(s))
texts = st.lists(lines, max_size=8).map(lambda ls: "".join(line + "\n" for line in ls))


@given(st.lists(st.builds(Edit, paths, texts, texts), min_size=1, max_size=4))
def test_diff_render_then_parse_gives_back_the_edits(edits):
    result = parse_edits(render_edits(edits, "diff"), "diff")
    assert result.problems == []
    assert result.edits == edits


@given(st.lists(st.builds(WholeFile, paths, texts), min_size=1, max_size=4))
def test_whole_render_then_parse_gives_back_the_files(files):
    result = parse_edits(render_edits(files, "whole"), "whole")
    assert result.problems == []
    assert result.edits == files


_noisy = st.lists(st.sampled_from(["a.py", "```", "```python", "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE",
                                   "x = 1", "", "Here:", "````"]), max_size=25).map("\n".join)


@given(st.one_of(st.text(max_size=300), _noisy), st.sampled_from(["diff", "whole"]))
def test_parser_never_crashes_and_problem_lines_are_in_the_reply(text, fmt):
    result = parse_edits(text, fmt)
    n = len(text.replace("\r\n", "\n").split("\n"))
    assert all(1 <= p.line <= n for p in result.problems)
    assert all(1 <= e.line <= n for e in result.edits)


def test_render_whole_file_in_diff_format_is_a_create_block():
    text = render_edits([WholeFile("n.py", "x = 1\n")], "diff")
    assert parse_edits(text, "diff").edits == [Edit("n.py", "", "x = 1\n")]


def test_render_search_replace_in_whole_format_is_refused():
    with pytest.raises(ValueError):
        render_edits([Edit("a.py", "1\n", "2\n")], "whole")


def test_fence_for_is_longer_than_any_backtick_run_in_the_text():
    assert fence_for("plain\n") == "```"
    assert fence_for("````\n") == "`````"
    assert fence_for("  ```python\n") == "````"


# --------------------------------------------------------------------------- apply_search_replace


def test_exact_match_replaces_only_those_lines():
    text = "a\nb\nc\nd\n"
    assert apply_search_replace(text, "b\nc\n", "B\n") == "a\nB\nd\n"


def test_matching_is_line_aligned_not_substring():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace("max = 1\n", "x = 1\n", "x = 2\n")
    assert exc.value.kind == "no_match"


def test_trailing_whitespace_differences_are_tolerated():
    assert apply_search_replace("a = 1   \nb\n", "a = 1\n", "a = 2\n") == "a = 2\nb\n"


def test_search_missing_indentation_is_reindented_into_the_file():
    text = "class A:\n    def f(self):\n        return 1\n"
    out = apply_search_replace(text, "def f(self):\n    return 1\n", "def f(self):\n    return 2\n")
    assert out == "class A:\n    def f(self):\n        return 2\n"


def test_search_with_extra_indentation_is_dedented_into_the_file():
    text = "def f():\n    return 1\n"
    out = apply_search_replace(text, "    def f():\n        return 1\n", "    def g():\n        return 2\n")
    assert out == "def g():\n    return 2\n"


def test_blank_lines_in_reindented_replacement_stay_blank():
    text = "if x:\n    a = 1\n    b = 2\n"
    out = apply_search_replace(text, "a = 1\nb = 2\n", "a = 1\n\nb = 3\n")
    assert out == "if x:\n    a = 1\n\n    b = 3\n"


def test_non_uniform_indentation_difference_does_not_match():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace("if x:\n    a\n    b\n", "if x:\na\nb\n", "z\n")
    assert exc.value.kind == "no_match"


def test_search_matching_twice_is_ambiguous_with_line_numbers():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace("x\nret\ny\nret\n", "ret\n", "RET\n")
    assert exc.value.kind == "ambiguous"
    assert exc.value.lines == (2, 4)


def test_overlapping_matches_count_as_ambiguous():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace("a\na\na\n", "a\na\n", "b\n")
    assert exc.value.lines == (1, 2)


def test_ambiguity_at_the_tolerant_level_also_fails():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace("  a\n    a\n", "a\n", "b\n")
    assert exc.value.kind == "ambiguous"


def test_exact_match_wins_over_tolerant_matches_elsewhere():
    assert apply_search_replace("    a\na\n", "a\n", "b\n") == "    a\nb\n"


def test_empty_search_creates_a_missing_file():
    assert apply_search_replace(None, "", "new\n") == "new\n"


def test_empty_search_fills_an_empty_file():
    assert apply_search_replace("", "", "x\n") == "x\n"
    assert apply_search_replace("\n\n", "\n", "x\n") == "x\n"


def test_empty_search_on_a_non_empty_file_fails():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace("old\n", "", "new\n")
    assert exc.value.kind == "file_exists"


def test_search_in_a_missing_file_fails():
    with pytest.raises(EditFailed) as exc:
        apply_search_replace(None, "a\n", "b\n")
    assert exc.value.kind == "missing_file"


def test_crlf_line_endings_are_kept():
    assert apply_search_replace("a\r\nb\r\nc\r\n", "b\n", "B\nB2\n") == "a\r\nB\r\nB2\r\nc\r\n"


def test_missing_final_newline_is_kept():
    assert apply_search_replace("a\nb", "b\n", "c\n") == "a\nc"
    assert apply_search_replace("a\nb", "b", "c") == "a\nc"


def test_empty_replace_deletes_the_lines():
    assert apply_search_replace("a\nb\nc\n", "b\n", "") == "a\nc\n"


def test_replace_without_final_newline_still_ends_its_line():
    assert apply_search_replace("a\nb\nc\n", "b", "B") == "a\nB\nc\n"


def test_form_feed_is_not_a_line_break():
    # str.splitlines would split on \x0c; SEARCH lines must not.
    assert apply_search_replace("a\x0cb\nc\n", "a\x0cb\n", "z\n") == "z\nc\n"


def test_matches_counts_places():
    assert matches("a\nb\na\n", "a\n") == 2
    assert matches("a\nb\n", "c\n") == 0


unique_lines = st.lists(st.text(alphabet="abcdefgh(): =", min_size=1, max_size=10), min_size=1,
                        max_size=30, unique=True).filter(
    lambda ls: len({line.strip() for line in ls}) == len(ls) and all(line.strip() for line in ls))


@given(unique_lines, st.data())
def test_search_made_from_any_slice_of_a_file_applies_exactly(file_lines, data):
    i = data.draw(st.integers(0, len(file_lines) - 1))
    j = data.draw(st.integers(i + 1, len(file_lines)))
    new = data.draw(st.lists(st.text(alphabet="xyz ", max_size=5), max_size=4))
    text = "".join(line + "\n" for line in file_lines)
    search = "".join(line + "\n" for line in file_lines[i:j])
    replace = "".join(line + "\n" for line in new)
    expected = "".join(line + "\n" for line in file_lines[:i] + new + file_lines[j:])
    assert apply_search_replace(text, search, replace) == expected


@given(unique_lines, st.data(), st.sampled_from(["    ", "\t", "  "]))
def test_slice_from_an_unindented_copy_applies_to_the_indented_file(file_lines, data, indent):
    i = data.draw(st.integers(0, len(file_lines) - 1))
    j = data.draw(st.integers(i + 1, len(file_lines)))
    flat = [line.strip() for line in file_lines]
    text = "".join(indent + line + "\n" for line in flat)
    search = "".join(line + "\n" for line in flat[i:j])
    out = apply_search_replace(text, search, "NEW\n")
    assert out == "".join(indent + line + "\n" for line in flat[:i] + ["NEW"] + flat[j:])


@given(unique_lines, st.data())
def test_round_trip_render_parse_plan(file_lines, data):
    i = data.draw(st.integers(0, len(file_lines) - 1))
    j = data.draw(st.integers(i + 1, len(file_lines)))
    text = "".join(line + "\n" for line in file_lines)
    edit = Edit("pkg/mod.txt", "".join(line + "\n" for line in file_lines[i:j]), "changed\n")
    parsed = parse_edits(render_edits([edit], "diff"), "diff")
    plan = plan_edits(reader({"pkg/mod.txt": text}), parsed.edits)
    assert plan.ok
    assert plan.contents["pkg/mod.txt"] == "".join(
        line + "\n" for line in file_lines[:i] + ["changed"] + file_lines[j:])


# --------------------------------------------------------------------------- closest_lines


def test_closest_lines_finds_the_region_with_a_typo_and_adds_context():
    text = "".join(f"line {n}\n" for n in range(1, 21))
    region = closest_lines(text, "line 10\nlne 11\nline 12\n", context=2)
    assert (region.start, region.end) == (8, 14)
    assert region.text == "".join(f"line {n}\n" for n in range(8, 15))
    assert 0.8 < region.ratio < 1


def test_closest_lines_context_is_clipped_at_the_file_edges():
    region = closest_lines("alpha\nbeta\ngamma\n", "alpah\n", context=3)
    assert (region.start, region.end) == (1, 3)


def test_closest_lines_with_no_context_is_the_window():
    region = closest_lines("x = 1\ny = 2\ndef foo(a):\n    return a\nz = 3\n",
                           "def foo(b):\n    return b\n", context=0)
    assert region.text == "def foo(a):\n    return a\n"


def test_closest_lines_search_longer_than_file_shows_the_file():
    region = closest_lines("a\nb\n", "a\nb\nc\nd\n")
    assert (region.start, region.end) == (1, 2)


def test_closest_lines_of_empty_file_or_search_is_none():
    assert closest_lines("", "a\n") is None
    assert closest_lines("a\n", "") is None


def test_closest_lines_is_fast_on_a_large_file():
    text = "".join(f"    value_{n} = compute({n}, {n * 7 % 13})\n" for n in range(5000))
    search = "".join(f"    value_{n} = comp({n}, {n * 7 % 13})\n" for n in range(3000, 3030))
    started = time.monotonic()
    region = closest_lines(text, search, context=0)
    assert time.monotonic() - started < 5
    assert region.start == 3001


# --------------------------------------------------------------------------- path safety


@pytest.mark.parametrize("path", [
    "/etc/passwd", "../x.py", "a/../../x.py", "a/../b.py", ".git/config", "sub/.git/HEAD",
    ".GIT/config", "", "   ", ".", "C:\\x.py", "C:/x.py", "a\x00b",
])
def test_unsafe_relative_paths_are_rejected(path):
    with pytest.raises(UnsafePath):
        safe_relpath(path)


@pytest.mark.parametrize("path, normal", [
    ("a.py", "a.py"), ("./a//b.py", "a/b.py"), ("src/./x.py", "src/x.py"), (".github/ci.yml", ".github/ci.yml"),
    ("a.git/x", "a.git/x"),
])
def test_safe_paths_are_normalised(path, normal):
    assert safe_relpath(path) == normal


def test_resolve_rejects_symlink_to_a_file_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    root.mkdir()
    outside.write_text("secret\n")
    (root / "link.txt").symlink_to(outside)
    with pytest.raises(UnsafePath, match="outside"):
        resolve_in_root(root, "link.txt")


def test_resolve_rejects_new_file_under_a_symlinked_directory_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "d").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath):
        resolve_in_root(root, "d/new.py")


def test_resolve_rejects_dangling_symlink_outside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "x.py").symlink_to(tmp_path / "nope.py")
    with pytest.raises(UnsafePath):
        resolve_in_root(root, "x.py")


def test_resolve_rejects_symlink_into_dot_git(tmp_path):
    root = tmp_path / "root"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n")
    (root / "cfg").symlink_to(root / ".git" / "config")
    with pytest.raises(UnsafePath, match=".git"):
        resolve_in_root(root, "cfg")


def test_resolve_follows_symlink_inside_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "real.py").write_text("x\n")
    (root / "alias.py").symlink_to(root / "real.py")
    assert resolve_in_root(root, "alias.py") == (root / "real.py").resolve()


def test_resolve_rejects_symlink_loop(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    with pytest.raises(UnsafePath):
        resolve_in_root(root, "a/x.py")


# --------------------------------------------------------------------------- plan_edits (pure)


def test_plan_applies_blocks_in_order_on_the_evolving_file():
    edits = [Edit("a.txt", "1\n", "2\n"), Edit("a.txt", "2\n", "3\n")]
    plan = plan_edits(reader({"a.txt": "1\n"}), edits)
    assert plan.ok
    assert plan.contents == {"a.txt": "3\n"}
    assert plan.changed == ["a.txt"]


def test_plan_reads_each_file_once_under_its_normalised_path():
    read = reader({"a.txt": "1\n"})
    plan = plan_edits(read, [Edit("./a.txt", "1\n", "2\n"), Edit("a.txt", "2\n", "3\n")])
    assert plan.contents == {"a.txt": "3\n"}
    assert read.calls == ["a.txt"]


def test_plan_reports_every_failure_not_just_the_first():
    edits = [Edit("a.txt", "zzz\n", "y\n"), Edit("b.txt", "b\n", "B\n"), Edit("c.txt", "q\n", "r\n")]
    plan = plan_edits(reader({"a.txt": "a\n", "b.txt": "b\n"}), edits)
    assert not plan.ok
    assert [(f.path, f.kind, f.block) for f in plan.failures] == [
        ("a.txt", "no_match", 1), ("c.txt", "missing_file", 3)]


def test_no_match_message_shows_closest_lines_and_asks_for_an_exact_copy():
    text = "def f():\n    total = 0\n    return total\n"
    plan = plan_edits(reader({"src/x.py": text}), [Edit("src/x.py", "    totl = 0\n", "    total = 1\n")])
    (failure,) = plan.failures
    assert failure.message.startswith("The SEARCH/REPLACE block #1 for src/x.py did not match exactly.")
    assert "The closest lines in the file (lines 1-3) are:\n```\ndef f():\n    total = 0\n" in failure.message
    assert "copied exactly from the file" in failure.message


def test_no_match_message_explains_an_earlier_block_changed_the_lines():
    edits = [Edit("a.txt", "x\n", "y\n"), Edit("a.txt", "x\n", "z\n")]
    (failure,) = plan_edits(reader({"a.txt": "x\nw\n"}), edits).failures
    assert failure.block == 2
    assert "an earlier block in your reply already changed those lines" in failure.message


def test_no_match_message_notices_the_change_is_already_made():
    (failure,) = plan_edits(reader({"a.txt": "new\n"}), [Edit("a.txt", "old\n", "new\n")]).failures
    assert "REPLACE lines are already in the file" in failure.message


def test_ambiguous_message_names_the_lines():
    (failure,) = plan_edits(reader({"a.txt": "x\ny\nx\n"}), [Edit("a.txt", "x\n", "z\n")]).failures
    assert failure.kind == "ambiguous"
    assert "matches 2 places" in failure.message and "lines 1, 3" in failure.message


def test_python_edit_that_breaks_syntax_fails_with_message_and_line():
    text = "def f():\n    return 1\n"
    (failure,) = plan_edits(reader({"m.py": text}), [Edit("m.py", "    return 1\n", "    return (1\n")]).failures
    assert failure.kind == "syntax"
    assert "m.py is no longer valid Python" in failure.message
    assert "line 2" in failure.message


def test_new_python_file_must_parse():
    (failure,) = plan_edits(reader({}), [WholeFile("n.py", "def (:\n")]).failures
    assert failure.kind == "syntax"


def test_python_file_that_did_not_parse_before_is_not_held_to_it():
    plan = plan_edits(reader({"m.py": "def (:\nx = 1\n"}), [Edit("m.py", "x = 1\n", "x = 2\n")])
    assert plan.ok


def test_non_python_files_are_not_syntax_checked():
    assert plan_edits(reader({}), [WholeFile("notes.txt", "def (:\n")]).ok


def test_syntax_is_checked_on_the_final_content_not_between_blocks():
    edits = [Edit("m.py", "x = 1\n", "x = (1\n"), Edit("m.py", "x = (1\n", "x = (1)\n")]
    plan = plan_edits(reader({"m.py": "x = 1\n"}), edits)
    assert plan.ok and plan.contents["m.py"] == "x = (1)\n"


def test_disallowed_path_fails_without_being_read():
    read = reader({"secret.txt": "s\n"})
    plan = plan_edits(read, [Edit("secret.txt", "s\n", "t\n")], allowed=lambda p: p != "secret.txt")
    assert [f.kind for f in plan.failures] == ["not_allowed"]
    assert "may not change secret.txt" in plan.failures[0].message
    assert read.calls == []


def test_unsafe_path_fails_without_being_read():
    read = reader({})
    plan = plan_edits(read, [WholeFile("../x.py", "x = 1\n"), WholeFile(".git/hooks/pre-commit", "x\n")])
    assert [f.kind for f in plan.failures] == ["unsafe_path", "unsafe_path"]
    assert read.calls == []


def test_reader_refusal_is_reported_once_per_path():
    def read(rel):
        raise UnsafePath(f"{rel} leads outside the project")

    plan = plan_edits(read, [Edit("l.txt", "a\n", "b\n"), Edit("l.txt", "b\n", "c\n")])
    assert [(f.kind, f.block) for f in plan.failures] == [("unsafe_path", 1)]
    assert "leads outside the project" in plan.failures[0].message


@pytest.mark.parametrize("error, words", [
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "not a UTF-8 text file"),
    (IsADirectoryError(21, "Is a directory"), "cannot be read"),
])
def test_unreadable_files_fail(error, words):
    def read(rel):
        raise error

    (failure,) = plan_edits(read, [Edit("x", "a\n", "b\n")]).failures
    assert failure.kind == "unreadable" and words in failure.message


def test_whole_file_creates_and_replaces():
    plan = plan_edits(reader({"a.txt": "old\n"}), [WholeFile("a.txt", "new"), WholeFile("b/c.txt", "c\n")])
    assert plan.contents == {"a.txt": "new\n", "b/c.txt": "c\n"}
    assert plan.originals == {"a.txt": "old\n", "b/c.txt": None}


def test_whole_file_keeps_crlf_endings_of_the_file_it_replaces():
    plan = plan_edits(reader({"w.bat": "a\r\nb\r\n"}), [WholeFile("w.bat", "x\ny\n")])
    assert plan.contents["w.bat"] == "x\r\ny\r\n"


def test_unchanged_content_is_not_listed_as_changed():
    plan = plan_edits(reader({"a.txt": "a\n"}), [WholeFile("a.txt", "a\n")])
    assert plan.ok and plan.changed == []


def test_failure_feedback_says_nothing_was_applied_and_to_resend_everything():
    fb = failure_feedback([Failure("a", "no_match", "first problem"), Failure("b", "syntax", "second")])
    assert fb.startswith("None of the edits in your reply were applied, because 2 of them failed")
    assert "1. first problem" in fb and "2. second" in fb
    assert "resend ALL your edit blocks" in fb
    assert failure_feedback([]) == ""


# --------------------------------------------------------------------------- apply_edits (files)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "work"
    (r / "src").mkdir(parents=True)
    (r / "src" / "app.py").write_text("def main():\n    return 1\n")
    (r / "README.md").write_text("# App\n")
    return r


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


def test_apply_writes_edits_and_creates_files_with_directories(root):
    edits = [Edit("src/app.py", "    return 1\n", "    return 2\n"),
             Edit("src/new/util.py", "", "X = 1\n"),
             WholeFile("README.md", "# App\n\nDocs.\n")]
    result = apply_edits(root, edits)
    assert result.ok, result.failures
    assert result.written == ["src/app.py", "src/new/util.py", "README.md"]
    assert result.created == ["src/new/util.py"]
    assert (root / "src/app.py").read_text() == "def main():\n    return 2\n"
    assert (root / "src/new/util.py").read_text() == "X = 1\n"
    assert (root / "README.md").read_text() == "# App\n\nDocs.\n"
    assert leftovers(root) == []
    assert "src/app.py" in result.feedback()


def test_apply_is_all_or_nothing(root):
    before = (root / "src/app.py").read_text()
    edits = [Edit("src/app.py", "    return 1\n", "    return 2\n"),
             Edit("src/new/util.py", "", "X = 1\n"),
             Edit("README.md", "no such line\n", "x\n")]
    result = apply_edits(root, edits)
    assert not result.ok
    assert [f.path for f in result.failures] == ["README.md"]
    assert result.written == []
    assert (root / "src/app.py").read_text() == before
    assert not (root / "src/new").exists()
    assert "None of the edits in your reply were applied" in result.feedback()


def test_apply_refuses_symlink_leading_outside_and_leaves_target_alone(root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    (root / "link.txt").symlink_to(outside)
    result = apply_edits(root, [Edit("link.txt", "keep\n", "owned\n")])
    assert [f.kind for f in result.failures] == ["unsafe_path"]
    assert "outside the project" in result.failures[0].message
    assert outside.read_text() == "keep\n"


def test_apply_refuses_new_file_through_symlinked_directory(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "out").symlink_to(elsewhere, target_is_directory=True)
    result = apply_edits(root, [Edit("out/evil.py", "", "x = 1\n")])
    assert [f.kind for f in result.failures] == ["unsafe_path"]
    assert list(elsewhere.iterdir()) == []


def test_apply_refuses_absolute_dotdot_and_git_paths(root, tmp_path):
    (root / ".git").mkdir()
    victim = tmp_path / "victim.txt"
    edits = [WholeFile(str(victim), "x\n"), WholeFile("../victim.txt", "x\n"),
             WholeFile(".git/config", "x\n"), WholeFile("src/ok.txt", "fine\n")]
    result = apply_edits(root, edits)
    assert [f.kind for f in result.failures] == ["unsafe_path"] * 3
    assert not victim.exists()
    assert not (root / ".git/config").exists()
    assert not (root / "src/ok.txt").exists()


def test_apply_through_inner_symlink_edits_the_target_and_keeps_the_link(root):
    (root / "alias.py").symlink_to(root / "src" / "app.py")
    result = apply_edits(root, [Edit("alias.py", "    return 1\n", "    return 3\n")])
    assert result.ok
    assert (root / "alias.py").is_symlink()
    assert (root / "src/app.py").read_text() == "def main():\n    return 3\n"


def test_apply_two_names_for_one_file_conflict(root):
    (root / "alias.py").symlink_to(root / "src" / "app.py")
    result = apply_edits(root, [WholeFile("alias.py", "a = 1\n"), WholeFile("src/app.py", "b = 1\n")])
    assert [f.kind for f in result.failures] == ["conflict"]
    assert (root / "src/app.py").read_text() == "def main():\n    return 1\n"


def test_apply_keeps_the_file_mode(root):
    script = root / "run.sh"
    script.write_text("echo 1\n")
    script.chmod(0o755)
    assert apply_edits(root, [Edit("run.sh", "echo 1\n", "echo 2\n")]).ok
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert script.read_text() == "echo 2\n"


def test_apply_respects_allowed(root):
    result = apply_edits(root, [WholeFile("README.md", "x\n")], allowed=lambda p: p.startswith("src/"))
    assert [f.kind for f in result.failures] == ["not_allowed"]
    assert (root / "README.md").read_text() == "# App\n"


def test_apply_rejects_breaking_python_syntax_on_disk(root):
    result = apply_edits(root, [Edit("src/app.py", "    return 1\n", "    return 1 +\n")])
    assert [f.kind for f in result.failures] == ["syntax"]
    assert (root / "src/app.py").read_text() == "def main():\n    return 1\n"


def test_apply_unchanged_file_is_not_rewritten(root):
    path = root / "README.md"
    os.utime(path, (1_000_000, 1_000_000))
    result = apply_edits(root, [WholeFile("README.md", "# App\n")])
    assert result.ok and result.written == [] and result.unchanged == ["README.md"]
    assert path.stat().st_mtime == 1_000_000
    assert "changed nothing" in result.feedback()


def test_apply_write_failure_leaves_no_partial_changes_or_temp_files(root):
    (root / "blocker").write_text("a file, not a directory\n")
    edits = [Edit("src/app.py", "    return 1\n", "    return 2\n"), WholeFile("blocker/x.txt", "x\n")]
    result = apply_edits(root, edits)
    assert [f.kind for f in result.failures] == ["write_error"]
    assert (root / "src/app.py").read_text() == "def main():\n    return 1\n"
    assert leftovers(root) == []


def test_apply_to_a_directory_path_fails_as_unreadable(root):
    result = apply_edits(root, [Edit("src", "a\n", "b\n")])
    assert [f.kind for f in result.failures] == ["unreadable"]


def test_apply_result_types(root):
    result = apply_edits(root, [])
    assert isinstance(result, ApplyResult) and result.ok and result.written == []


def test_apply_write_failure_removes_directories_it_created(root):
    (root / "blocker").write_text("a file, not a directory\n")
    edits = [WholeFile("fresh/deep/a.txt", "a\n"), WholeFile("blocker/x.txt", "x\n")]
    result = apply_edits(root, edits)
    assert [f.kind for f in result.failures] == ["write_error"]
    assert not (root / "fresh").exists()
