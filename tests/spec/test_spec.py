"""Workstream files: reading real files, validation, and every error reported at once."""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from agentrun.errors import SpecError
from agentrun.spec.command import Command
from agentrun.spec.documents import MAX_FILE_BYTES, read_document
from agentrun.spec.load import find_cycles, load_source, parse_documents, parse_source, project_problems
from agentrun.spec.workstream import Workstream
from agentrun.spec.values import shown
from conftest import agentrun, state, toml_value
from gitutil import all_refs, init_repo


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def spec_error(docs, config=None) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_documents(docs, config)
    return info.value


def load_error(source) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_source(source)
    return info.value


def only_problem(err: SpecError) -> str:
    assert len(err.problems) == 1, err.problems
    return err.problems[0]


# --- reading files -------------------------------------------------------------

def test_one_workstream_per_file_takes_its_id_from_the_file_stem(tmp_path):
    write(tmp_path, "build-docs.toml", 'run = "make docs"\nestimate = "2m"\npriority = "high"\n')
    write(tmp_path, "lint.toml", 'run = ["ruff", "check", "."]\n')
    source = load_source(tmp_path)
    assert [w.id for w in source.workstreams] == ["build-docs", "lint"]
    docs = source.by_id()["build-docs"]
    assert docs.run == Command(shell="make docs")
    assert docs.estimate == 120.0
    assert docs.priority == "high"
    assert docs.source == str(tmp_path / "build-docs.toml")
    assert source.by_id()["lint"].run.popen_args() == ["ruff", "check", "."]
    assert source.files == [str(tmp_path / "build-docs.toml"), str(tmp_path / "lint.toml")]


def test_an_id_field_overrides_the_file_stem(tmp_path):
    write(tmp_path, "whatever.toml", 'id = "real-id"\nrun = "true"\n')
    assert [w.id for w in load_source(tmp_path).workstreams] == ["real-id"]


def test_several_workstream_tables_in_one_file(tmp_path):
    write(tmp_path, "all.toml", """
[[workstream]]
id = "b"
run = "echo b"
depends_on = ["a"]

[[workstream]]
id = "a"
run = "echo a"
estimate = 90
""")
    workstreams = load_source(tmp_path).workstreams
    assert [w.id for w in workstreams] == ["a", "b"]          # sorted by id
    assert workstreams[1].depends_on == ("a",)
    assert workstreams[0].estimate == 90.0
    assert {w.source for w in workstreams} == {str(tmp_path / "all.toml")}


def test_json_files_hold_one_workstream_or_a_workstream_list(tmp_path):
    write(tmp_path, "solo.json", json.dumps({"run": ["pytest", "-q"], "timeout": "10m"}))
    write(tmp_path, "many.json", json.dumps({"workstream": [{"id": "x", "run": "true", "depends_on": ["solo"]},
                                                            {"id": "y", "run": "false"}]}))
    by_id = load_source(tmp_path).by_id()
    assert set(by_id) == {"solo", "x", "y"}
    assert by_id["solo"].run.argv == ("pytest", "-q")
    assert by_id["solo"].timeout == 600.0
    assert by_id["x"].depends_on == ("solo",)


def test_files_other_than_toml_and_json_are_ignored(tmp_path):
    write(tmp_path, "a.toml", 'run = "true"\n')
    write(tmp_path, "notes.md", "# not a workstream\n")
    write(tmp_path, "b.yaml", "run: true\n")
    assert [w.id for w in load_source(tmp_path).workstreams] == ["a"]


def test_a_single_file_can_be_loaded(tmp_path):
    path = write(tmp_path, "one.toml", 'run = "true"\n')
    write(tmp_path, "two.toml", 'run = "true"\n')
    assert [w.id for w in load_source(path).workstreams] == ["one"]


def test_command_forms(tmp_path):
    write(tmp_path, "a.toml", """
run = { name = "unit tests", run = ["pytest", "-q"] }
gates = ["ruff check .", ["mypy", "src"], { name = "types", run = "pyright" }]
setup = "pip install -e ."
""")
    ws = load_source(tmp_path).workstreams[0]
    assert ws.run == Command(argv=("pytest", "-q"), name="unit tests")
    assert ws.run.display() == "unit tests"
    assert ws.gates == (Command(shell="ruff check ."), Command(argv=("mypy", "src")),
                        Command(shell="pyright", name="types"))
    assert ws.setup == (Command(shell="pip install -e ."),)
    assert Command(shell="echo hi").popen_args() == ["/bin/sh", "-c", "echo hi"]


# --- agentrun.toml [defaults] --------------------------------------------------

def test_config_defaults_apply_and_env_tables_merge(tmp_path):
    write(tmp_path, "agentrun.toml", """
[defaults]
retries = 2
timeout = "5m"
priority = "low"
env = { CI = "1", MODE = "default" }
""")
    write(tmp_path, "a.toml", 'run = "true"\n')
    write(tmp_path, "b.toml", 'run = "true"\npriority = "critical"\nenv = { MODE = "mine", EXTRA = "x" }\n')
    source = load_source(tmp_path)
    a, b = source.by_id()["a"], source.by_id()["b"]
    assert (a.retries, a.timeout, a.priority, a.env) == (2, 300.0, "low", {"CI": "1", "MODE": "default"})
    assert (b.retries, b.timeout, b.priority) == (2, 300.0, "critical")
    assert b.env == {"CI": "1", "MODE": "mine", "EXTRA": "x"}
    # the config file is not itself a workstream
    assert set(source.by_id()) == {"a", "b"}
    assert source.llm.rules.default == "deepseek-chat"


def test_workstreams_do_not_share_the_default_env_dict():
    a, b = parse_documents([("a.toml", {"run": "true"}), ("b.toml", {"run": "true"})],
                           {"defaults": {"env": {"CI": "1"}}})
    a.env["LEAK"] = "yes"
    assert b.env == {"CI": "1"}


def test_a_single_file_uses_the_config_next_to_it(tmp_path):
    write(tmp_path, "agentrun.toml", '[defaults]\nrun = "make"\n')
    path = write(tmp_path, "a.toml", 'estimate = "1s"\n')
    assert load_source(path).workstreams[0].run == Command(shell="make")


def test_defaults_cannot_set_identity_fields():
    err = spec_error([("a.toml", {"run": "true"})], {"defaults": {"depends_on": ["x"], "title": "t"}})
    assert len(err.problems) == 2
    assert all(p.startswith("agentrun.toml [defaults]: field '") and "unknown field" in p for p in err.problems)


def test_unknown_config_section_suggests_defaults():
    err = spec_error([("a.toml", {"run": "true"})], {"defualts": {"retries": 1}})
    assert only_problem(err) == "agentrun.toml: section 'defualts': unknown section; did you mean 'defaults'?"


def test_invalid_default_run_is_reported_once_not_per_workstream():
    err = spec_error([("a.toml", {}), ("b.toml", {})], {"defaults": {"run": ""}})
    assert only_problem(err) == "agentrun.toml [defaults]: field 'run': the command is empty"


# --- validation errors ---------------------------------------------------------

def test_unknown_field_suggests_the_closest_name():
    problem = only_problem(spec_error([("a.toml", {"run": "true", "priorty": "high"})]))
    assert problem == "a.toml: workstream 'a': field 'priorty': unknown field; did you mean 'priority'?"


def test_unknown_field_without_close_match_lists_known_fields():
    problem = only_problem(spec_error([("a.toml", {"run": "true", "zzzzzz": 1})]))
    assert "field 'zzzzzz': unknown field; known fields:" in problem
    assert "depends_on" in problem and "priority" in problem


def test_bad_choice_suggests_the_closest_value():
    problem = only_problem(spec_error([("a.toml", {"run": "true", "priority": "hihg"})]))
    assert problem.startswith("a.toml: workstream 'a': field 'priority': 'hihg' is not one of critical, high")
    assert problem.endswith("did you mean 'high'?")


@pytest.mark.parametrize("field, value, expected", [
    ("priority", 5, "expected a string, got a number"),
    ("retries", "3", "expected a whole number from 0 to 100, got '3'"),
    ("retries", -1, "-1 is out of range; use a whole number from 0 to 100"),
    ("retries", True, "expected a whole number from 0 to 100, got True"),
    ("depends_on", "b", "got a string; write it as [\"...\"]"),
    ("depends_on", ["b", 3], "expected a list of non-empty strings"),
    ("tags", [""], "expected a list of non-empty strings"),
    ("env", {"A": 1}, "value of A must be a string, got a number"),
    ("env", {"1BAD": "x"}, "'1BAD' is not a valid environment variable name"),
    ("env", "A=1", "expected a table"),
    ("expect_changes", "yes", "expected true or false"),
    ("parallel_ok", 1, "expected true or false"),
    ("files", ["/etc/passwd"], "must be a relative path inside the project"),
    ("cwd", "../elsewhere", "must be a relative path inside the project"),
    ("run", 42, "expected a command string or an argv list, got a number"),
    ("run", [], "an argv list must be non-empty strings"),
    ("run", {"cmd": "x"}, "a command table takes exactly: run (required), name"),
    ("gates", 7, "expected a list of commands, got a number"),
    ("timeout", 0, "must be greater than zero"),
    ("estimate", "5x", "bad duration '5x'"),
    ("retry_backoff", True, "got a boolean"),
    ("isolation", "docker", "is not one of auto, worktree, none"),
])
def test_wrong_types_and_values_name_the_file_and_field(field, value, expected):
    raw = {"run": "true", field: value}
    problem = only_problem(spec_error([("w/a.toml", raw)]))
    assert problem.startswith(f"w/a.toml: workstream 'a': field '{field}': ")
    assert expected in problem


def test_bad_duration_message_shows_how_to_write_one():
    problem = only_problem(spec_error([("a.toml", {"run": "true", "estimate": "ten minutes"})]))
    assert "field 'estimate'" in problem and '"1h30m"' in problem


def test_nan_estimate_is_refused():
    # TOML accepts `estimate = nan`; the planner cannot order by it.
    problem = only_problem(spec_error([("a.toml", {"run": "true", "estimate": float("nan")})]))
    assert "field 'estimate'" in problem and "finite" in problem


def test_duplicate_ids_across_files_name_both_files(tmp_path):
    write(tmp_path / "w", "one.toml", '[[workstream]]\nid = "build"\nrun = "true"\n')
    write(tmp_path / "w", "two.toml", '[[workstream]]\nid = "build"\nrun = "false"\n')
    problem = only_problem(load_error(tmp_path / "w"))
    assert "duplicate id 'build'" in problem
    assert problem.startswith(f"{tmp_path / 'w' / 'two.toml'}: workstream 'build': field 'id'")
    assert problem.endswith(f"also defined in {tmp_path / 'w' / 'one.toml'}")


def test_unknown_dependency_suggests_a_close_id():
    err = spec_error([("a.toml", {"run": "true", "depends_on": ["buidl"]}), ("build.toml", {"run": "true"})])
    assert only_problem(err) == ("a.toml: workstream 'a': field 'depends_on': unknown workstream 'buidl'; "
                                 "did you mean 'build'?")


def test_unknown_dependency_without_close_match_lists_workstreams_not_fields():
    err = spec_error([("a.toml", {"run": "true", "depends_on": ["zzz"]}), ("b.toml", {"run": "true"})])
    assert only_problem(err).endswith("unknown workstream 'zzz'; known workstreams: a, b")


def test_self_dependency_is_refused():
    problem = only_problem(spec_error([("a.toml", {"run": "true", "depends_on": ["a"]})]))
    assert problem == "a.toml: workstream 'a': field 'depends_on': a workstream cannot depend on itself"


def test_cycle_is_reported_as_path():
    err = spec_error([("a.toml", {"run": "true", "depends_on": ["b"]}),
                      ("b.toml", {"run": "true", "depends_on": ["c"]}),
                      ("c.toml", {"run": "true", "depends_on": ["a"]}),
                      ("d.toml", {"run": "true", "depends_on": ["a"]})])
    assert only_problem(err) == "a.toml: workstream 'a': field 'depends_on': dependency cycle a -> b -> c -> a"


def test_two_separate_cycles_are_both_reported():
    err = spec_error([("a.toml", {"run": "true", "depends_on": ["b"]}),
                      ("b.toml", {"run": "true", "depends_on": ["a"]}),
                      ("x.toml", {"run": "true", "depends_on": ["y"]}),
                      ("y.toml", {"run": "true", "depends_on": ["x"]})])
    assert [p.rsplit("cycle ", 1)[1] for p in err.problems] == ["a -> b -> a", "x -> y -> x"]


def test_find_cycles_is_empty_for_a_dag():
    def ws(i, *deps):
        return Workstream(id=i, run=Command(shell="true"), depends_on=deps)
    assert find_cycles([ws("a"), ws("b", "a"), ws("c", "a", "b"), ws("d", "c", "missing")]) == []


@pytest.mark.parametrize("ws_id, expected", [
    ("Build", "is not a valid id"),
    ("-lead", "is not a valid id"),
    ("has space", "is not a valid id"),
    ("x" * 101, "is not a valid id"),
    ("a..b", "cannot contain '..'"),
    ("ref.lock", "'.lock'"),
    ("trailing.", "end in '.'"),
])
def test_bad_ids_are_refused(ws_id, expected):
    problem = only_problem(spec_error([("w.toml", {"workstream": [{"id": ws_id, "run": "true"}]})]))
    assert f"field 'id': {ws_id!r}" in problem and expected in problem


def test_an_id_from_a_bad_file_name_is_refused(tmp_path):
    write(tmp_path, "My Task.toml", 'run = "true"\n')
    problem = only_problem(load_error(tmp_path))
    assert "field 'id': 'My Task' is not a valid id" in problem


def test_missing_run_says_how_to_write_one():
    problem = only_problem(spec_error([("a.toml", {"estimate": "1m"})]))
    assert problem == ("a.toml: workstream 'a': field 'run': required; give the command to run, "
                       'e.g. run = "pytest -q" (or agent = "llm")')


def test_an_invalid_run_is_reported_once_not_also_as_missing():
    problem = only_problem(spec_error([("a.toml", {"run": "   "})]))
    assert problem == "a.toml: workstream 'a': field 'run': the command is empty"


def test_workstream_table_without_id():
    problem = only_problem(spec_error([("w.toml", {"workstream": [{"run": "true"}]})]))
    assert problem == "w.toml: workstream #1: field 'id': required in a [[workstream]] table"


def test_a_workstream_list_file_holds_nothing_else():
    err = spec_error([("w.toml", {"retries": 1, "workstream": [{"id": "a", "run": "true"}]})])
    assert only_problem(err).startswith("w.toml: field 'retries': a file with [[workstream]] tables holds nothing else")


def test_a_document_must_be_a_table(tmp_path):
    write(tmp_path, "list.json", "[1, 2]")
    assert only_problem(load_error(tmp_path)) == (f"{tmp_path / 'list.json'}: expected a table (one workstream) "
                                                  "or [[workstream]] tables")


def test_invalid_toml_names_the_file(tmp_path):
    write(tmp_path, "broken.toml", 'run = "unterminated\n')
    problem = only_problem(load_error(tmp_path))
    assert problem.startswith(f"{tmp_path / 'broken.toml'}: invalid TOML")


def test_invalid_json_names_the_file_and_line(tmp_path):
    write(tmp_path, "broken.json", '{\n  "run": "true",\n}\n')
    problem = only_problem(load_error(tmp_path))
    assert problem.startswith(f"{tmp_path / 'broken.json'}: invalid JSON at line 3")


def test_invalid_config_toml_names_the_config(tmp_path):
    write(tmp_path, "agentrun.toml", "[defaults\n")
    write(tmp_path, "a.toml", 'run = "true"\n')
    assert only_problem(load_error(tmp_path)).startswith(f"{tmp_path / 'agentrun.toml'}: invalid TOML")


def test_missing_source_and_empty_source(tmp_path):
    assert "no such file or directory" in only_problem(load_error(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "no workstream files (*.toml, *.json) found" in only_problem(load_error(tmp_path / "empty"))


def test_all_errors_are_reported_at_once(tmp_path):
    d = tmp_path / "w"
    write(d, "agentrun.toml", "[defaults]\nretries = -2\n")
    write(d, "a.toml", 'run = "true"\npriorty = "high"\n')
    write(d, "b.toml", 'run = "true"\nestimate = "5x"\ndepends_on = ["nope"]\n')
    write(d, "c.toml", 'estimate = "1m"\n')
    write(d, "d.toml", 'run = [\n')
    write(d, "e.toml", 'run = "true"\ndepends_on = ["e"]\n')
    err = load_error(d)
    expected = [
        (d / "agentrun.toml", "field 'retries'"),
        (d / "a.toml", "field 'priorty'"),
        (d / "b.toml", "field 'estimate'"),
        (d / "c.toml", "field 'run'"),
        (d / "d.toml", "invalid TOML"),
        (d / "e.toml", "field 'depends_on'"),
    ]
    assert len(err.problems) == len(expected), err.problems
    for path, what in expected:
        assert any(p.startswith(str(path)) and what in p for p in err.problems), (path, what, err.problems)
    assert err.lines() == err.problems
    assert str(err) == "\n".join(err.problems)


def test_several_problems_in_one_workstream_are_all_reported():
    err = spec_error([("a.toml", {"run": "true", "retries": "x", "priority": "urgent", "colour": "red"})])
    fields = sorted(p.split("field '")[1].split("'")[0] for p in err.problems)
    assert fields == ["colour", "priority", "retries"]


# --- spec_hash -------------------------------------------------------------------

BASE = {"run": "pytest -q", "estimate": "2m", "env": {"A": "1", "B": "2"}, "files": ["src/a.py"],
        "gates": ["ruff check ."], "depends_on": ["dep"]}


def hash_of(raw: dict, name: str = "w.toml", config=None) -> str:
    docs = [(name, {"workstream": [{"id": "ws", **raw}, {"id": "dep", "run": "true"}]})]
    return {w.id: w for w in parse_documents(docs, config)}["ws"].spec_hash()


def test_spec_hash_is_stable():
    first = hash_of(BASE)
    assert hash_of(dict(BASE)) == first
    assert hash_of({**BASE, "env": {"B": "2", "A": "1"}}) == first     # table order is not content
    assert hash_of({**BASE, "estimate": 120}) == first                 # same value, other spelling
    assert hash_of(BASE, name="elsewhere/other.toml") == first        # moving the file is not a change
    assert len(first) == 16 and int(first, 16) >= 0


@pytest.mark.parametrize("change", [
    {"run": "pytest -x"},
    {"run": ["pytest", "-q"]},
    {"estimate": "3m"},
    {"env": {"A": "1", "B": "3"}},
    {"files": ["src/b.py"]},
    {"gates": ["ruff check src"]},
    {"depends_on": []},
    {"priority": "high"},
    {"retries": 1},
    {"parallel_ok": False},
    {"conflict_group": "db"},
])
def test_spec_hash_changes_when_a_field_changes(change):
    assert hash_of({**BASE, **change}) != hash_of(BASE)


def test_spec_hash_changes_when_a_default_changes():
    assert hash_of(BASE, config={"defaults": {"retries": 3}}) != hash_of(BASE)


def test_snapshot_is_the_canonical_json_of_to_json_byte_for_byte(tmp_path):
    # Hashes recorded by earlier versions must keep matching: the field-by-field snapshot has to
    # give exactly what json.dumps of the whole definition gives, for defaults and for every kind
    # of value (commands, command lists, tables, floats that look like ints, non-ASCII text).
    (tmp_path / "agentrun.toml").write_text('[defaults]\nretries = 2\nenv = { B = "2", A = "1" }\n'
                                            'max_cost_usd = 0.5\nmax_tokens = 1000\n')
    (tmp_path / "ws.toml").write_text('''
[[workstream]]
id = "plain"
run = "true"

[[workstream]]
id = "full"
title = "Grüße \\"quoted\\""
description = "line one\\nline two"
type = "docs"
priority = "high"
complexity = "complex"
depends_on = ["plain"]
estimate = "90s"
files = ["src/*.py", "docs/"]
run = ["python", "-c", "print(1)"]
cwd = "src"
env = { Z = "last", A = "first" }
timeout = "5m"
retry_backoff = "2s"
tags = ["b", "a"]
isolation = "none"
setup = ["make deps", { name = "venv", run = ["python", "-m", "venv", ".v"] }]
gates = [{ name = "tests", run = "pytest -q" }]
expect_changes = false
parallel_ok = false
''')
    for ws in load_source(tmp_path).workstreams:
        expected = json.dumps(ws.to_json(), sort_keys=True, separators=(",", ":"))
        assert ws.snapshot()[0] == expected
    # A value of another type that compares equal to its default (1 == 1.0) is not the default's text.
    odd = Workstream(id="odd", retry_backoff=1, retries=0)
    assert odd.snapshot()[0] == json.dumps(odd.to_json(), sort_keys=True, separators=(",", ":"))
    assert '"retry_backoff":1,' in odd.snapshot()[0]


# --- ranges: every number has one (issue 10, item 14) -------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("retries", 9223372036854775807,
     "9223372036854775807 is out of range; use a whole number from 0 to 100"),
    ("retries", 101, "101 is out of range; use a whole number from 0 to 100"),
    ("timeout", "31d", "'31d' is out of range; use a duration from 0s to 30d"),
    ("estimate", 10 ** 30, "is out of range; use a duration from 0s to 30d"),
    ("retry_backoff", "25h", "'25h' is out of range; use a duration from 0s to 1d"),
])
def test_numbers_out_of_range_say_the_range_and_the_value(field, value, expected):
    problem = only_problem(spec_error([("a.toml", {"run": "true", field: value})]))
    assert problem.startswith(f"a.toml: workstream 'a': field '{field}': ")
    assert problem.endswith(expected)


@pytest.mark.parametrize("field, value, expected", [
    ("max_repairs", 21, "21 is out of range; use a whole number from 0 to 20"),
    ("max_tokens", 100_000_001, "100000001 is out of range; use a whole number from 0 to 100,000,000"),
    ("max_cost_usd", float("inf"), "inf is out of range; use a number from 0 to 1,000,000"),
    ("max_cost_usd", float("nan"), "nan is out of range; use a number from 0 to 1,000,000"),
    ("max_cost_usd", -0.01, "-0.01 is out of range; use a number from 0 to 1,000,000"),
])
def test_agent_numbers_out_of_range(field, value, expected):
    raw = {"agent": "llm", "files": ["a.py"], field: value}
    assert only_problem(spec_error([("a.toml", raw)])) == f"a.toml: workstream 'a': field '{field}': {expected}"


def test_the_largest_values_in_range_are_accepted():
    raw = {"agent": "llm", "files": ["a.py"], "retries": 100, "max_repairs": 20, "max_tokens": 100_000_000,
           "max_cost_usd": 1_000_000, "timeout": "30d", "estimate": "30d", "retry_backoff": "1d"}
    ws = parse_documents([("a.toml", raw)])[0]
    assert (ws.retries, ws.max_repairs, ws.max_tokens, ws.max_cost_usd) == (100, 20, 100_000_000, 1_000_000.0)
    assert (ws.timeout, ws.estimate, ws.retry_backoff) == (2_592_000.0, 2_592_000.0, 86_400.0)


@pytest.mark.parametrize("section, expected", [
    ({"defaults": {"retries": 10 ** 20}}, "agentrun.toml [defaults]: field 'retries': 100000000000000000000 is "
                                          "out of range; use a whole number from 0 to 100"),
    ({"budget": {"max_cost_usd": 1e300}}, "agentrun.toml [budget]: field 'max_cost_usd': 1e+300 is out of range; "
                                          "use a number from 0 to 1,000,000"),
    ({"budget": {"max_tokens": -1}}, "agentrun.toml [budget]: field 'max_tokens': -1 is out of range; "
                                     "use a whole number from 0 to 100,000,000"),
    ({"budget": {"warn_at": 1.5}}, "agentrun.toml [budget]: field 'warn_at': 1.5 is out of range; "
                                   "use a number from 0 to 1"),
    ({"models": {"m": {"id": "v/m", "context_window": 0}}},
     "agentrun.toml: [models.m] field 'context_window': 0 is out of range; use a whole number from 1 to 100,000,000"),
    ({"models": {"m": {"id": "v/m", "max_output_tokens": 10 ** 9}}},
     "agentrun.toml: [models.m] field 'max_output_tokens': 1000000000 is out of range; "
     "use a whole number from 1 to 100,000,000"),
    ({"models": {"m": {"id": "v/m", "input_cost_per_mtok": float("nan")}}},
     "agentrun.toml: [models.m] field 'input_cost_per_mtok': nan is out of range; use a number from 0 to 10,000"),
    ({"models": {"m": {"id": "v/m", "output_cost_per_mtok": 20_000}}},
     "agentrun.toml: [models.m] field 'output_cost_per_mtok': 20000 is out of range; use a number from 0 to 10,000"),
    ({"models": {"m": {"id": "v/m", "timeout": "31d"}}},
     "agentrun.toml: [models.m] field 'timeout': '31d' is out of range; use a duration from 0s to 30d"),
    ({"models": {"m": {"id": "v/m", "api_key_env": "MY KEY"}}},
     "agentrun.toml: [models.m] field 'api_key_env': 'MY KEY' is not an environment variable name; name the "
     "variable holding the key, or \"\" for none"),
    ({"models": {"m": {"id": "v/m", "base_url": "127.0.0.1:8080"}}},
     "agentrun.toml: [models.m] field 'base_url': '127.0.0.1:8080' is not an http:// or https:// URL, "
     "e.g. \"http://127.0.0.1:8080/v1\""),
    ({"models": {"m": {"id": " "}}},
     "agentrun.toml: [models.m] field 'id': ' ' is blank; give the provider's model id"),
])
def test_config_numbers_and_names_are_checked(section, expected):
    assert only_problem(spec_error([("a.toml", {"run": "true"})], section)) == expected


def test_model_fields_within_range_are_taken():
    config = {"models": {"m": {"id": "v/m", "context_window": 100_000_000, "max_output_tokens": 1,
                               "input_cost_per_mtok": 0, "output_cost_per_mtok": 10_000, "timeout": "30d",
                               "api_key_env": "", "base_url": "https://example.test/v1"}}}
    workstreams, settings = parse_source([("a.toml", {"agent": "llm", "files": ["a.py"], "model": "m"})], config)
    model = settings.model_for(workstreams[0])
    assert (model.context_window, model.max_output_tokens, model.timeout) == (100_000_000, 1, 2_592_000.0)
    assert (model.input_cost_per_mtok, model.output_cost_per_mtok, model.api_key_env) == (0.0, 10_000.0, None)


# --- strings: no NUL, valid Unicode, bounded (item 16) ------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("title", "a\0b", "'a\\x00b' contains a NUL character"),
    ("title", "\ud800", "'\\ud800' is not valid Unicode (it holds a lone surrogate)"),
    ("title", "two\nlines", "'two\\nlines' must be one line"),
    ("title", "x" * 501, "is 501 characters long; at most 500 characters"),
    ("description", "d" * 100_001, "is 100,001 characters long; at most 100,000 characters"),
    ("description", "nul\0", "contains a NUL character"),
    ("run", "echo \0", "contains a NUL character"),
    ("run", "x" * 65_537, "is 65,537 bytes long; at most 65,536 bytes"),
    ("run", "é" * 40_000, "is 80,000 bytes long; at most 65,536 bytes"),
    ("run", ["echo", "ok\ud800"], "is not valid Unicode"),
    ("run", ["echo"] + ["y" * 60_000] * 2, "the argv list is 120,007 bytes in all; at most 65,536 bytes"),
    ("run", {"name": "a\nb", "run": "true"}, "'a\\nb' must be one line"),
    ("run", {"run": {"run": "true"}}, "a command table's run is a command string or an argv list"),
    ("gates", ["true"] * 10_001, "10,001 commands; at most 10,000"),
    ("env", {"A": "v" * 32_769}, "value of A: 'vvv"),
    ("env", {"A": "nul\0"}, "value of A: 'nul\\x00' contains a NUL character"),
    ("env", {f"V{i}": "v" * 30_000 for i in range(9)}, "270,036 bytes of names and values in all; "
                                                      "at most 262,144 bytes"),
    ("env", {"A\0": "1"}, "'A\\x00' is not a valid environment variable name"),
    ("tags", ["ok", "no\0"], "contains a NUL character"),
    ("tags", ["t"] * 10_001, "10,001 items; at most 10,000"),
    ("depends_on", ["x" * 1025], "is 1,025 characters long; at most 1,024 characters"),
    ("files", ["src/\ud800.py"], "is not valid Unicode"),
    ("cwd", "a\0", "contains a NUL character"),
    ("conflict_group", "db\n", "must be one line"),
])
def test_strings_no_process_can_carry_are_refused(field, value, expected):
    problem = only_problem(spec_error([("a.json", {"run": "true", field: value})]))
    assert problem.startswith(f"a.json: workstream 'a': field '{field}': ")
    assert expected in problem
    assert len(problem) < 400 and len(problem.splitlines()) == 1


def test_the_env_limit_counts_the_defaults_env_too():
    half = {f"D{i}": "d" * 30_000 for i in range(5)}
    own = {f"W{i}": "w" * 30_000 for i in range(5)}
    assert parse_documents([("a.toml", {"run": "true"})], {"defaults": {"env": half}})[0].env == half
    problem = only_problem(spec_error([("a.toml", {"run": "true", "env": own})], {"defaults": {"env": half}}))
    assert problem == ("a.toml: workstream 'a': field 'env': with the [defaults] env, 300,040 bytes of names "
                       "and values in all; at most 262,144 bytes")


def test_strings_at_their_limits_are_accepted():
    raw = {"run": ["echo", "é" * 32_000], "title": "t" * 500, "description": "line\n" * 20_000,
           "env": {"A": "a" * 32_768, "MULTI": "one\ntwo"}, "gates": "printf 'a\\nb'\n" * 4_000}
    ws = parse_documents([("a.toml", raw)])[0]
    assert ws.run.argv[1] == "é" * 32_000 and len(ws.title) == 500 and ws.env["MULTI"] == "one\ntwo"


# --- settings that mean nothing (item 17) ---------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("model", "deepseek-chat"), ("fallbacks", ["gemini-flash"]), ("max_repairs", 1), ("edit_format", "whole"),
    ("max_cost_usd", 0.5), ("max_tokens", 1000),
])
def test_agent_only_fields_on_a_command_workstream_are_refused(field, value):
    problem = only_problem(spec_error([("a.toml", {"run": "make", field: value})]))
    assert problem == (f"a.toml: workstream 'a': field '{field}': only the built-in agent (agent = \"llm\") reads "
                       "it, and this workstream runs a command; remove it")
    # ... also when the command comes from [defaults]
    assert only_problem(spec_error([("a.toml", {field: value})], {"defaults": {"run": "make"}})) == problem


def test_agent_only_fields_in_defaults_are_for_the_agent_workstreams():
    defaults = {"model": "gemini-flash", "fallbacks": ["llama-3.3"], "max_repairs": 1, "edit_format": "whole",
                "max_cost_usd": 0.5, "max_tokens": 1000}
    by_id = {w.id: w for w in parse_documents([("cmd.toml", {"run": "make"}),
                                               ("llm.toml", {"agent": "llm", "files": ["a.py"]})],
                                              {"defaults": defaults})}
    assert by_id["cmd"].run == Command(shell="make")
    agent = by_id["llm"]
    assert (agent.model, agent.fallbacks, agent.max_repairs, agent.edit_format) == \
        ("gemini-flash", ("llama-3.3",), 1, "whole")
    assert (agent.max_cost_usd, agent.max_tokens) == (0.5, 1000)


@pytest.mark.parametrize("field, value, expected", [
    ("files", [".git/config"], "'.git/config' reaches into .git"),
    ("files", ["src/.git"], "'src/.git' reaches into .git"),
    ("files", [".GIT/hooks/*"], "'.GIT/hooks/*' reaches into .git"),
    ("cwd", ".git", "'.git' reaches into .git"),
    ("cwd", "./.git/hooks", "'./.git/hooks' reaches into .git"),
    ("copy_untracked", [".git"], "'.git' reaches into .git"),
    ("copy_untracked", [".git/**"], "'.git/**' reaches into .git"),
    ("copy_untracked", ["*"], "'*' matches every file; name the untracked files to copy, e.g. [\".env\"]"),
    ("copy_untracked", ["**"], "'**' matches every file"),
    ("copy_untracked", ["**/*"], "'**/*' matches every file"),
    ("copy_untracked", ["./*"], "'./*' matches every file"),
    ("copy_untracked", ["."], "'.' matches every file"),
    ("copy_untracked", [".*"], "'.*' matches .git, which git and agentrun manage (in a worktree it is a file "
                               "pointing at the repository); name files of the project"),
    ("copy_untracked", [".g?t"], "'.g?t' matches .git"),
    ("copy_untracked", ["**/?*"], "'**/?*' matches every file"),
    ("copy_untracked", ["*/**"], "'*/**' matches every file"),
    ("copy_untracked", ["[!.]*"], "'[!.]*' matches every file"),
    ("copy_untracked", ["**/.gi?"], "'**/.gi?' matches .git (its part '.gi?' does), which git and agentrun manage"),
    ("files", [".gi?/config"], "'.gi?/config' matches .git (its part '.gi?' does), which git and agentrun manage "
                               "(in a worktree it is a file pointing at the repository); name files of the project"),
    ("files", ["[.]git/config"], "'[.]git/config' matches .git (its part '[.]git' does)"),
    ("files", ["**/.gi?"], "'**/.gi?' matches .git (its part '.gi?' does)"),
    ("files", ["src/.G[I]T/hooks"], "'src/.G[I]T/hooks' matches .git (its part '.G[I]T' does)"),
    ("files", [".*/**"], "'.*/**' matches .git (its part '.*' does)"),
    ("copy_untracked", ["config/a**"], "'config/a**': '**' can only be a whole part of the path"),
    ("conflict_group", "", "'' is blank; give a name, or leave the field out"),
    ("conflict_group", "  \t", "'  \\t' is blank"),
    ("conflict_group", "a\rb", "'a\\rb' must be one line"),
    ("conflict_group", "   ", "'   ' is blank"),
])
def test_meaningless_settings_are_refused(field, value, expected):
    problem = only_problem(spec_error([("a.toml", {"run": "true", field: value})]))
    assert problem.startswith(f"a.toml: workstream 'a': field '{field}': {expected}")


def test_sensible_paths_and_patterns_are_accepted():
    files = [".github/workflows/ci.yml", "src/**/*.py", ".", "src/*", "*/README.md", "**/*.md", ".gitignore", "**"]
    untracked = [".env", "config/*.local", "**/.envrc", ".env*", "**/*.md", ".github/ci.yml", "src/**"]
    ws = parse_documents([("a.toml", {"run": "true", "files": files, "cwd": "sub/dir", "copy_untracked": untracked,
                                      "conflict_group": "db"})])[0]
    assert ws.files == tuple(files) and ws.copy_untracked == tuple(untracked) and ws.conflict_group == "db"


def test_a_cwd_naming_a_file_of_the_project_is_a_problem(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "README.md").write_text("hi\n")
    workstreams = parse_documents([("w/a.toml", {"run": "true", "cwd": "README.md"}),
                                   ("w/b.toml", {"run": "true", "cwd": "README.md/sub"}),
                                   ("w/c.toml", {"run": "true", "cwd": "src"}),
                                   ("w/d.toml", {"run": "true", "cwd": "build/out"}),   # made later by a dependency
                                   ("w/e.toml", {"run": "true"})])
    problems = project_problems(workstreams, tmp_path)
    assert problems == [
        f"w/a.toml: workstream 'a': field 'cwd': 'README.md' is a file in {tmp_path}, not a directory; "
        "name the directory to run in",
        f"w/b.toml: workstream 'b': field 'cwd': 'README.md/sub' is a file in {tmp_path}, not a directory; "
        "name the directory to run in"]


# --- files that cannot be read safely (item 15) -------------------------------------

def test_deeply_nested_files_are_one_problem_each(tmp_path):
    write(tmp_path, "deep.json", '{"run": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write(tmp_path, "deep.toml", "run = " + "[" * 5_000 + "]" * 5_000 + "\n")
    write(tmp_path, "agentrun.toml", "[defaults]\nenv = " + "{ A = " * 3_000 + '"x"' + " }" * 3_000 + "\n")
    err = load_error(tmp_path)
    assert sorted(err.problems) == [
        f"{tmp_path / 'agentrun.toml'}: invalid TOML: nested too deeply to read; a workstream file needs a few "
        "levels of tables and lists at most",
        f"{tmp_path / 'deep.json'}: invalid JSON: nested too deeply to read; a workstream file needs a few "
        "levels of tables and lists at most",
        f"{tmp_path / 'deep.toml'}: invalid TOML: nested too deeply to read; a workstream file needs a few "
        "levels of tables and lists at most"]


def test_files_that_are_not_regular_files_are_refused_unopened(tmp_path):
    d = tmp_path / "w"
    write(d, "a.toml", 'run = "true"\n')
    os.mkfifo(d / "pipe.toml")      # in a directory source, only regular files are workstream files
    assert [w.id for w in load_source(d).workstreams] == ["a"]
    os.mkfifo(d / "agentrun.toml")
    assert only_problem(load_error(d)) == (f"{d / 'agentrun.toml'}: not a regular file but a named pipe (FIFO); "
                                           "workstream files and agentrun.toml are plain files")
    (d / "agentrun.toml").unlink()
    (d / "agentrun.toml").mkdir()
    assert only_problem(load_error(d)) == (f"{d / 'agentrun.toml'}: not a regular file but a directory; "
                                           "workstream files and agentrun.toml are plain files")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.toml"))
        assert only_problem(load_error(tmp_path / "s.toml")) == (
            f"{tmp_path / 's.toml'}: not a regular file but a socket; workstream files and agentrun.toml are "
            "plain files")


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_fifo_or_a_device_as_source_never_blocks(tmp_path, command):
    # Without the check, reading the FIFO waits for a writer that never comes, and a device is no workstream file.
    os.mkfifo(tmp_path / "pipe.toml")
    for source, kind in (("pipe.toml", "a named pipe (FIFO)"), ("/dev/null", "a character device")):
        proc = agentrun(command, source, cwd=tmp_path, timeout=30)
        assert proc.returncode == 2
        assert proc.stderr == (f"error: {source}: not a regular file but {kind}; workstream files and "
                               "agentrun.toml are plain files\n")
    assert not (tmp_path / ".agentrun").exists()


def test_a_toml_key_nested_too_deep_is_refused_before_tomllib_reads_it(tmp_path):
    # tomllib's time grows with the square of a key's parts: this 400 KB file kept it busy for minutes.
    line = "a." * 200_000 + "b = 1"
    write(tmp_path / "w", "x.toml", 'run = "true"\n' + line + "\n")
    proc = agentrun("plan", "w", cwd=tmp_path, timeout=20)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: w/x.toml: line 2: a key or table header of more than 64 dotted parts "
                           f"({shown(line)}); nest tables at most 64 deep\n")
    assert not (tmp_path / ".agentrun").exists()


KEY_64 = ".".join(f"k{i}" for i in range(64))


@pytest.mark.parametrize("text, line", [
    (f"{KEY_64}.k64 = 1\n", 1),
    (f'run = "true"\n[{KEY_64}.k64]\n', 2),
    (f"[[{KEY_64}.k64]]\n", 1),
    (f'x = 1\ny = {{ {KEY_64}.k64 = 1 }}\n', 2),
    (f'"quoted.part" . {KEY_64} = 1\n', 1),
    (f'd = """\n{KEY_64}\n"""\n# {KEY_64}\n{KEY_64}.k64 = 1\n', 5),
])
def test_keys_of_more_than_64_parts_are_refused_at_their_line(tmp_path, text, line):
    path = write(tmp_path, "deep.toml", text)
    with pytest.raises(ValueError) as info:
        read_document(path)
    assert str(info.value).startswith(f"line {line}: a key or table header of more than 64 dotted parts (")


def test_keys_of_64_parts_and_dots_in_values_strings_and_comments_load(tmp_path):
    dots = ".".join("v" * 100)
    text = "\n".join([f"{KEY_64} = 1",
                      "[x]",
                      f'"a.b".c = "{dots}"',
                      f"d = '{dots}'",
                      'e = """',
                      dots,
                      '"""',
                      f"f = '''{dots}'''",
                      "g = [1.5, 2.5, 1979-05-27T07:32:00.999]",
                      f'h = """He said "{dots}""""',
                      f"# {dots}", ""])
    doc = read_document(write(tmp_path, "a.toml", text))
    assert doc["x"] == {"a.b": {"c": dots}, "d": dots, "e": dots + "\n", "f": dots, "h": f'He said "{dots}"',
                        "g": [1.5, 2.5, datetime.datetime(1979, 5, 27, 7, 32, 0, 999000)]}
    for part in KEY_64.split(".")[:-1]:
        doc = doc[part]
    assert doc == {"k63": 1}


def test_ordinary_dotted_keys_still_load(tmp_path):
    d = tmp_path / "w"
    write(d, "agentrun.toml", '[models.x]\nid = "vendor/x-1.5"\ncontext_window = 8192\n[defaults]\nenv.A = "1"\n')
    write(d, "a.toml", f'run = "true"\nenv.B = "2"\ndescription = "see https://{".".join("x" * 80)}/"\n')
    source = load_source(d)
    assert source.llm.models["x"].id == "vendor/x-1.5"
    assert source.workstreams[0].env == {"A": "1", "B": "2"}


def test_a_file_over_the_size_limit_is_refused(tmp_path):
    big = write(tmp_path, "big.toml", 'run = "true"\n' + "# padding\n" * (MAX_FILE_BYTES // 10))
    assert only_problem(load_error(tmp_path)) == f"{big}: larger than 10,485,760 bytes; split it into several files"


def test_text_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('run = "true"\ntitle = "café"\n'.encode("latin-1"))
    assert only_problem(load_error(tmp_path)) == f"{path}: not UTF-8 text (byte 0xe9 at offset 25); save it as UTF-8"


def test_crlf_files_hash_like_lf_files(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "a.toml", 'run = "true"\ndescription = """\nfirst\nsecond\n"""\n')
    (two / "a.toml").parent.mkdir()
    (two / "a.toml").write_bytes(b'run = "true"\r\ndescription = """\r\nfirst\r\nsecond\r\n"""\r\n')
    assert load_source(one).workstreams[0].spec_hash() == load_source(two).workstreams[0].spec_hash()


# --- every problem on one short line (item 5) ----------------------------------------

@pytest.mark.parametrize("doc, expected", [
    ({"workstream": [{"id": "a\nb", "run": "true"}]},
     "w.json: workstream 'a\\nb': field 'id': 'a\\nb' must be one line"),
    ({"run": "true", "colour\nred": 1}, "w.json: workstream 'w': field 'colour\\nred': unknown field"),
    ({"run": "true", "x" * 5_000_000: 1}, "w.json: workstream 'w': field 'xxxxxxxxxx"),
    ({"run": "true", "priority": "\n" * 5_000_000}, "w.json: workstream 'w': field 'priority': '\\n\\n\\n"),
    ({"run": "true", "retries": ["\n"] * 1_000_000}, "w.json: workstream 'w': field 'retries': expected a whole "
                                                     "number from 0 to 100, got ['\\n', '\\n', '\\n', '\\n', ...]"),
    ({"run": "true", "depends_on": ["nope\u2028"]}, "w.json: workstream 'w': field 'depends_on': 'nope\\u2028' "
                                                   "must be one line"),
    ({"workstream": [{"id": "b" * 200, "run": "true"}]}, "w.json: workstream 'bbbbbbbbbb"),
    ({"workstream": [{"id": ["a"] * 10, "run": "true"}]}, "w.json: workstream ['a', 'a', 'a', 'a', ...]: field 'id'"),
])
def test_every_problem_stays_on_one_short_line(doc, expected):
    problem = only_problem(spec_error([("w.json", doc)]))
    assert problem.startswith(expected)
    assert len(problem.splitlines()) == 1 and len(problem) < 600, problem[:1000]


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path):
    write(tmp_path, "bad\nname.toml", 'run = "true"\n')
    problem = only_problem(load_error(tmp_path))
    assert problem.startswith(f"{tmp_path}/bad\\nname.toml: workstream 'bad\\nname': field 'id': ")


def test_unknown_dependency_lists_few_of_many_workstreams():
    docs = [("w.toml", {"workstream": [{"id": f"task-{i:05d}", "run": "true"} for i in range(10_000)]
                        + [{"id": "last", "run": "true", "depends_on": ["zzz"]}]})]
    problem = only_problem(spec_error(docs))
    assert problem.startswith("w.toml: workstream 'last': field 'depends_on': unknown workstream 'zzz'; "
                              "known workstreams: last, task-00000, task-00001")
    assert problem.endswith("... (10,001 in all)") and len(problem) < 700


# --- nothing written: through the real CLI, in a real git repository (item 6) -------

REJECTED = {
    "range": 'run = "true"\nretries = 9223372036854775807\n',
    "nul": 'run = "true"\ntitle = "a\\u0000b"\n',
    "huge-env": 'run = "true"\nenv = { BIG = "' + "x" * 200_000 + '" }\n',
    "deep": "run = " + "[" * 3_000 + "]" * 3_000 + "\n",
    "agent-only": 'run = "true"\nmodel = "deepseek-chat"\n',
    "into-git": 'run = "true"\nfiles = [".git/config"]\n',
    "copy-all": 'run = "true"\ncopy_untracked = ["**/*"]\n',
    "copy-all-by-meaning": 'run = "true"\ncopy_untracked = ["**/?*"]\n',
    "into-git-by-glob": 'run = "true"\nfiles = [".gi?/config"]\n',
    "deep-key": 'run = "true"\n' + "a." * 64 + "b = 1\n",
    "blank-group": 'run = "true"\nconflict_group = ""\n',
    "cwd-file": 'run = "true"\ncwd = "README.md"\n',
    "newline-id": '[[workstream]]\nid = "a\\nb"\nrun = "true"\n',
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_a_rejected_source_writes_nothing(tmp_path, kind):
    repo = init_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "w" / "ws.toml").write_text(REJECTED[kind])
    before = all_refs(repo)
    # A cwd naming a file is found by `prepare` (it needs the project): every command goes through it.
    commands = ([["plan", "w"], ["run", "w", "--dry-run"], ["run", "w"]] if kind == "cwd-file"
                else [["run", "w", "--parallel"]])
    for args in commands:
        proc = agentrun(*args, cwd=repo)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr[:2000])
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: w/ws.toml: "), lines
        assert len(lines[0]) < 400 and "Traceback" not in proc.stderr
    assert not (repo / ".agentrun").exists()
    assert all_refs(repo) == before and "agentrun/" not in before


# --- the command line's numbers, and secrets written into files ---------------------

@pytest.mark.parametrize("args, expected", [
    (["run", "w", "--budget", "nan"], "--budget: 'nan' is not a number from 0 to 1,000,000"),
    (["run", "w", "--budget", "inf"], "--budget: 'inf' is not a number from 0 to 1,000,000"),
    (["run", "w", "--budget", "1e400"], "--budget: '1e400' is not a number from 0 to 1,000,000"),
    (["run", "w", "--budget", "2000000"], "--budget: '2000000' is not a number from 0 to 1,000,000"),
    (["run", "w", "--budget=-1"], "--budget: '-1' is not a number from 0 to 1,000,000"),
    (["run", "w", "-j", "0"], "--max-workers: '0' is not a whole number from 1 to 1,024"),
    (["run", "w", "--parallel", "--max-workers", "1025"],
     "--max-workers: '1025' is not a whole number from 1 to 1,024"),
    (["plan", "w", "-j", "2.5"], "--max-workers: '2.5' is not a whole number from 1 to 1,024"),
    (["resume", "20260101-000000-abcd", "-j", "99999999999999999999"],
     "--max-workers: '99999999999999999999' is not a whole number from 1 to 1,024"),
])
def test_numbers_on_the_command_line_out_of_range_are_one_line_and_nothing_runs(tmp_path, args, expected):
    repo = init_repo(tmp_path / "repo", {"README.md": "hi\n"})
    ledger = tmp_path / "ledger"
    (repo / "w" / "ws.toml").write_text(f'run = "echo ran >> {ledger}"\n')
    proc = agentrun(*args, cwd=repo)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, f"error: {expected}\n", "")
    assert not ledger.exists() and not (repo / ".agentrun").exists()


def test_numbers_on_the_command_line_at_their_limits_are_taken(tmp_path):
    repo = init_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "w" / "ws.toml").write_text('run = "true"\n')
    assert agentrun("plan", "w", "-j", "1024", cwd=repo).returncode == 0
    proc = agentrun("run", "w", "--budget", "1000000", "--max-workers", "1024", "-q", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    db = state(repo)
    try:
        assert json.loads(db.latest_run()["options"])["llm"]["budget"]["max_cost_usd"] == 1_000_000
    finally:
        db.close()


@pytest.mark.parametrize("field, value", [
    ("title", "rotate {key}"),
    ("description", "the old key was\n{key}\n"),
    ("env", {"TOKEN": "{key}"}),
    ("tags", ["key-{key}"]),
    ("run", "curl -H 'Authorization: Bearer {key}' https://example.com"),
])
def test_a_secret_written_into_a_workstream_file_is_refused_and_never_shown(tmp_path, field, value):
    key = f"sk-or-v1-{uuid.uuid4().hex}"
    repo = init_repo(tmp_path / "repo", {"README.md": "hi\n"})
    before = all_refs(repo)
    filled = json.loads(json.dumps(value).replace("{key}", key))
    rest = "" if field == "run" else 'run = "true"\n'
    (repo / "w" / "ws.toml").write_text(f"{field} = {toml_value(filled)}\n{rest}")
    for args in (["run", "w"], ["plan", "w"]):
        proc = agentrun(*args, cwd=repo, env={"OPENROUTER_API_KEY": key})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f"error: w/ws.toml: workstream 'ws': field '{field}': holds the value of OPENROUTER_API_KEY (an API key "
            "in agentrun's environment), which would be stored in the state DB and commit messages; remove it and "
            "reference the key by name with secrets = [\"OPENROUTER_API_KEY\"]"]
        assert key not in proc.stdout + proc.stderr
    assert not (repo / ".agentrun").exists() and all_refs(repo) == before


def test_a_key_referenced_by_name_runs_and_is_stored_nowhere(tmp_path):
    key = f"sk-or-v1-{uuid.uuid4().hex}"
    repo = init_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "w" / "agentrun.toml").write_text('[models.mine]\nid = "vendor/m"\napi_key_env = "MY_KEY"\n')
    (repo / "w" / "ws.toml").write_text(f'title = "rotate {key}"\nrun = "true"\n')
    proc = agentrun("run", "w", cwd=repo, env={"MY_KEY": key})   # a [models.*] entry's variable counts too
    assert proc.returncode == 2 and "holds the value of MY_KEY" in proc.stderr and key not in proc.stderr
    (repo / "w" / "ws.toml").write_text('title = "rotate the key"\nrun = ["sh", "-c", "test -n \\"$MY_KEY\\""]\n'
                                        'secrets = ["MY_KEY"]\n')
    proc = agentrun("run", "w", "-q", cwd=repo, env={"MY_KEY": key})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = [p for p in (repo / ".agentrun").rglob("*") if p.is_file()]
    assert kept and not [p for p in kept if key.encode() in p.read_bytes()]
