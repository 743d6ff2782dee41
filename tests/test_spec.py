"""Workstream files: reading real files, validation, and every error reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrun.errors import SpecError
from agentrun.spec import Command, Workstream, find_cycles, load_source, parse_documents


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
