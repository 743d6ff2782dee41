"""Property tests: generated workstream sources, valid or broken in every field, are either accepted
(and run) or rejected with one short line per problem, naming the file and the field, and nothing
written. In process for many sources; through the real CLI, in a real directory, for fewer."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrun.errors import SpecError
from agentrun.spec.load import load_source
from agentrun.spec.workstream import workstreams_from_snapshots
from agentrun.spec.values import shown
from conftest import agentrun

LEDGER_COMMAND = 'echo "$AGENTRUN_WS_ID" >> "$LEDGER"'
SECRET = "sk-or-v1-property-test-0123456789"   # OPENROUTER_API_KEY of the runs through the CLI


@dataclass(frozen=True)
class Deep:
    """A value nested ``levels`` deep, written as text: no writer (nor parser) recursion needed."""

    levels: int


@dataclass(frozen=True)
class DottedKey:
    """A key of ``parts`` dotted parts, written as TOML writes it (JSON has no dotted keys: one long name)."""

    parts: int

    @property
    def text(self) -> str:
        return ".".join(["a"] * self.parts)


@dataclass
class Generated:
    """A generated source: its workstreams (and config), and what is broken in it."""

    workstreams: list[dict[str, Any]]
    config: dict[str, dict[str, Any]]
    layout: str                      # "one-per-file" or "list"
    fmt: str                         # "toml" or "json"
    named: list[str] = field(default_factory=list)    # `field '...'` every problem list must name
    texts: list[str] = field(default_factory=list)    # other text some problem must hold
    broken: bool = False
    unreadable: bool = False         # a file cannot be parsed, so its fields are never looked at


# --- values ---------------------------------------------------------------------------------------

LINE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)
NAME = st.from_regex(r"[a-z][a-z0-9_-]{0,7}", fullmatch=True)
PRESETS = ["deepseek-chat", "gemini-flash", "llama-3.3", "qwen-coder", "vendor/some-model"]
COMMANDS = st.sampled_from([LEDGER_COMMAND, ["sh", "-c", LEDGER_COMMAND],
                            {"name": "record", "run": LEDGER_COMMAND}])
QUICK = st.sampled_from(["true", ["true"], {"name": "check", "run": "echo ok"}])

VALID: dict[str, st.SearchStrategy] = {
    "title": LINE,
    "description": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=60),
    "type": st.sampled_from(["unit_test", "refactor", "docs", "codegen", "fix", "other"]),
    "priority": st.sampled_from(["critical", "high", "normal", "low"]),
    "complexity": st.sampled_from(["simple", "moderate", "complex"]),
    "estimate": st.one_of(st.integers(0, 2_592_000), st.sampled_from(["90s", "5m", "1h30m", "250ms", "30d"])),
    "timeout": st.sampled_from(["10m", 600, "1h", "30d", 2_592_000]),
    "retries": st.integers(0, 100),
    "retry_backoff": st.one_of(st.integers(0, 86_400), st.sampled_from(["1s", "1d", "2h"])),
    "tags": st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=20),
                     max_size=3),
    "env": st.dictionaries(st.from_regex(r"W_[A-Z0-9_]{0,6}", fullmatch=True),
                           st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                                   max_size=20), max_size=3),
    "cwd": st.sampled_from([".", "sub", "sub/inner"]),
    "secrets": st.lists(st.sampled_from(["OPENROUTER_API_KEY", "OPENAI_API_KEY", "MY_TOKEN"]), max_size=2),
    "files": st.lists(st.sampled_from(["src/a.py", "docs/**", "*.md", ".github/ci.yml"]), min_size=1, max_size=3,
                      unique=True),
    "copy_untracked": st.lists(st.sampled_from([".env", "config/*.local", "**/.envrc"]), max_size=2),
    "setup": st.lists(QUICK, max_size=2),
    "gates": st.lists(QUICK, max_size=2),
    "isolation": st.sampled_from(["auto", "none"]),
    "expect_changes": st.booleans(),
    "scope": st.sampled_from(["fail", "warn", "off"]),
    "baseline_gates": st.booleans(),
    "gate_after_merge": st.booleans(),
    "on_conflict": st.sampled_from(["fail", "retry"]),
    "merge": st.sampled_from(["rebase", "merge"]),
    "conflict_group": st.sampled_from(["db", "ui", "group with spaces"]),
    "parallel_ok": st.booleans(),
}
AGENT_VALID: dict[str, st.SearchStrategy] = {
    "model": st.sampled_from(PRESETS),
    "fallbacks": st.lists(st.sampled_from(PRESETS), max_size=2),
    "max_repairs": st.integers(0, 20),
    "edit_format": st.sampled_from(["diff", "whole"]),
    "max_cost_usd": st.floats(0, 1_000_000),
    "max_tokens": st.integers(0, 100_000_000),
}

# Each broken in a characteristic way: wrong type, out of range, NUL, lone surrogate, huge, empty,
# into .git, meaningless.
BROKEN: dict[str, list[Any]] = {
    "title": [5, "a\0b", "\ud800", "two\nlines", "x" * 501],
    "description": [["x"], "nul\0", "d" * 100_001, "\udfff"],
    "type": ["feature", 3],
    "priority": ["urgent", None],
    "estimate": [-1, "5x", math.nan, math.inf, "31d", True, 10 ** 30],
    "timeout": [0, "31d", "-1s", math.nan],
    "retries": [-1, 101, 2 ** 63 - 1, "3", True, 1.5],
    "retry_backoff": ["2d", -1],
    "tags": ["tag", [""], ["a\0"], ["t"] * 10_001, [1]],
    "env": [{"1X": "v"}, {"A": 1}, {"A": "v\0"}, {"A": "x" * 32_769}, "A=1", {"A": "\ud800"},
            {f"V{i}": "v" * 30_000 for i in range(9)}],
    "cwd": ["../x", "/abs", ".git", "a\0", 5, "sub/.git/hooks"],
    "secrets": ["OPENAI_API_KEY", ["not a name"], [1], ["A\0"], ["\ud800"]],
    "files": [[".git/config"], ["/etc"], "src", [1], ["../up"], [".gi?/config"], ["[.]git/config"], ["**/.gi?"]],
    "copy_untracked": [["*"], ["**/*"], [".git"], [".*"], ["./*"], ["a**"], ["**/?*"], ["*/**"], ["**/.gi?"]],
    "setup": [[42], [""], ["\0"], 7],
    "gates": [[42], [""], ["x" * 65_537], {"cmd": "x"}],
    "run": ["", [], 42, "echo \0", "x" * 65_537, {"cmd": "x"}, {"run": {"run": "true"}}, ["echo", "\ud800"]],
    "isolation": ["docker"],
    "expect_changes": ["yes", 1],
    "baseline_gates": [0],
    "conflict_group": ["", "   ", "a\nb", 3],
    "parallel_ok": ["no"],
    "model": ["", 5, " "],
    "max_repairs": [21, -1],
    "max_tokens": [10 ** 9, "1000"],
    "max_cost_usd": [math.nan, math.inf, -1, 1e7],
    "edit_format": ["patch"],
    "fallbacks": ["gemini-flash", ["a\nb"]],
}
AGENT_ONLY = sorted(AGENT_VALID)
BAD_IDS = ["Bad", "a\nb", "a..b", "x.lock", "-x", 5, "x" * 101, "a\0"]
UNKNOWN_KEYS = ["priorty", "colour\nred", "k" * 2_000, "\u2028"]
CONFIG_BROKEN = [("defaults", "retries", 10 ** 20), ("defaults", "timeout", "40d"), ("defaults", "title", "t"),
                 ("defaults", "env", {"A": "\0"}), ("budget", "warn_at", 2), ("budget", "max_cost_usd", math.inf),
                 ("budget", "mode", "strict"), ("models", "context_window", 0), ("models", "base_url", "x\ny"),
                 ("models", "timeout", "-5s"), ("models", "api_key_env", "A B")]


@st.composite
def sources(draw, runnable: bool = False) -> Generated:
    """1-3 workstreams, each valid; then 0-2 breaks. ``runnable``: command workstreams only."""
    ids = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    workstreams = []
    for index, ws_id in enumerate(ids):
        ws: dict[str, Any] = {"id": ws_id}
        agent = not runnable and draw(st.booleans())
        if agent:
            ws.update(agent="llm", files=draw(VALID["files"]))
        else:
            ws["run"] = draw(COMMANDS)
        pool = sorted(VALID) + (AGENT_ONLY if agent else [])
        for name in draw(st.lists(st.sampled_from(pool), unique=True, max_size=6)):
            ws[name] = draw(AGENT_VALID[name] if name in AGENT_VALID else VALID[name])
        if index:
            ws["depends_on"] = draw(st.lists(st.sampled_from(ids[:index]), unique=True, max_size=2))
        workstreams.append(ws)
    config: dict[str, dict[str, Any]] = {}
    if draw(st.booleans()):
        config = {"defaults": {"retries": 1, "timeout": "10m", "env": {"D_ENV": "1"}},
                  "budget": {"max_cost_usd": 5, "warn_at": 0.8},
                  "models": {"m": {"id": "vendor/m", "context_window": 8192}}}
    gen = Generated(workstreams, config, draw(st.sampled_from(["one-per-file", "list"])),
                    draw(st.sampled_from(["toml", "json"])))
    for _ in range(draw(st.integers(0, 2))):
        _break(draw, gen, runnable)
    return gen


def _break(draw, gen: Generated, through_cli: bool) -> None:
    commands = [ws for ws in gen.workstreams if "agent" not in ws]
    agents = [ws for ws in gen.workstreams if "agent" in ws]
    kinds = ["field", "field", "field", "id", "unknown", "unknown-dep", "self-dep", "deep", "deep-key", "config"]
    kinds += ["secret"] if through_cli else []   # found by `run` (it reads the environment), not by load_source
    kinds += ["agent-only"] if commands else []
    kinds += ["unknown-model"] if agents else []
    kinds += ["cycle", "duplicate"] if len(gen.workstreams) > 1 else []
    kind = draw(st.sampled_from(kinds))
    ws = draw(st.sampled_from(gen.workstreams))
    gen.broken = True
    if kind == "field":
        # Not over a deep value: the problem it stands for would be gone.
        pool = [f for f in BROKEN if (f not in AGENT_ONLY or "agent" in ws) and not isinstance(ws.get(f), Deep)]
        name = draw(st.sampled_from(pool))
        ws[name] = draw(st.sampled_from(BROKEN[name]))
        gen.named.append(name)
    elif kind == "id":
        ws["id"] = draw(st.sampled_from(BAD_IDS))
        gen.named.append("id")
    elif kind == "unknown":
        key = draw(st.sampled_from(UNKNOWN_KEYS))
        ws[key] = 1
        gen.named.append(key)
    elif kind == "agent-only":
        name = draw(st.sampled_from(AGENT_ONLY))
        draw(st.sampled_from(commands))[name] = draw(AGENT_VALID[name])
        gen.named.append(name)
    elif kind == "unknown-model":
        # Looked up only once the rest of the workstream is valid: named unless another problem hides it.
        draw(st.sampled_from(agents))[draw(st.sampled_from(["model", "fallbacks"]))] = "no-such-model"
    elif kind == "unknown-dep":
        ws["depends_on"] = ["no-such-workstream"]
    elif kind == "self-dep":
        ws["depends_on"] = [ws["id"]]
    elif kind == "cycle":
        first, last = gen.workstreams[0], gen.workstreams[-1]
        first["depends_on"] = [last["id"]]
        last["depends_on"] = [first["id"]]
    elif kind == "duplicate":
        gen.workstreams[-1]["id"] = gen.workstreams[0]["id"]
        gen.named.append("id")
    elif kind == "deep":
        ws["tags"] = Deep(draw(st.sampled_from([3_000, 100_000])))
        if not any(isinstance(key, DottedKey) for other in gen.workstreams for key in other):
            gen.texts.append("nested too deeply")
        gen.unreadable = True
    elif kind == "deep-key":
        ws[DottedKey(draw(st.sampled_from([65, 200_000])))] = 1
        gen.unreadable = True   # in TOML; in JSON, an unknown field
        # A file that cannot be read has one problem: the deep key, or a deep value read after it.
        gen.texts = [text for text in gen.texts if text != "nested too deeply"]
    elif kind == "secret":
        # Refused once the rest is valid: the problem is not named if another one hides it.
        name = draw(st.sampled_from(["title", "description", "tags", "env"]))
        ws[name] = {"title": f"rotate {SECRET}", "description": f"key:\n{SECRET}\n", "tags": [SECRET],
                    "env": {"OLD_KEY": SECRET}}[name]
    else:
        section, key, value = draw(st.sampled_from(CONFIG_BROKEN))
        gen.config.setdefault(section, {})
        if section == "models":
            gen.config["models"] = {"m": {"id": "vendor/m", key: value}}
        else:
            gen.config[section][key] = value
        gen.named.append(key)


# --- writing files --------------------------------------------------------------------------------

class Unrepresentable(Exception):
    """A value TOML cannot write (a lone surrogate, a null): the document goes to JSON."""


def toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise Unrepresentable(text)
        else:
            out.append(ch)
    return "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, Deep):
        return "[" * value.levels + "]" * value.levels
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)   # past 64 bits too: tomllib reads any size, and so must agentrun cope
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise Unrepresentable(value)


def toml_key(key: str | DottedKey) -> str:
    return key.text if isinstance(key, DottedKey) else toml_string(key)


def toml_table(values: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in values.items())


def json_value(value: Any) -> str:
    if isinstance(value, Deep):
        return "[" * value.levels + "]" * value.levels
    if isinstance(value, list):
        return "[" + ", ".join(json_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(getattr(k, 'text', k))}: {json_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_source(gen: Generated, directory: Path) -> None:
    directory.mkdir(parents=True)
    if gen.config:
        (directory / "agentrun.toml").write_text("".join(
            f"[{section}]\n" + toml_table(values) if section != "models" else
            "".join(f"[models.{name}]\n" + toml_table(entry) for name, entry in values.items())
            for section, values in gen.config.items()), encoding="utf-8")
    docs = ([(f"ws{i}", ws) for i, ws in enumerate(gen.workstreams)] if gen.layout == "one-per-file"
            else [("all", {"workstream": gen.workstreams})])
    for stem, doc in docs:
        if gen.fmt == "toml":
            try:
                if "workstream" in doc:
                    text = "".join("[[workstream]]\n" + toml_table(ws) for ws in doc["workstream"])
                else:
                    text = toml_table(doc)
                (directory / f"{stem}.toml").write_text(text, encoding="utf-8")
                continue
            except Unrepresentable:
                pass
        (directory / f"{stem}.json").write_text(json_value(doc), encoding="utf-8", errors="surrogatepass")


# --- the properties -------------------------------------------------------------------------------

def check_problems(problems: list[str], directory: Path, gen: Generated) -> None:
    """One short line each, naming a file of the source; every broken field named somewhere."""
    assert problems
    for problem in problems:
        assert len(problem.splitlines()) == 1 and "\n" not in problem, problem[:500]
        assert len(problem) <= 700, problem[:1000]
        assert problem.startswith(str(directory) + "/"), problem[:500]
    for name in [] if gen.unreadable else gen.named:
        assert any(f"field {shown(name)}" in p for p in problems), (name, problems)
    for text in gen.texts:
        assert any(text in p for p in problems), (text, problems)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sources())
def test_a_source_loads_or_every_problem_is_one_line_naming_file_and_field(gen):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "w"
        write_source(gen, directory)
        try:
            source = load_source(directory)
        except SpecError as exc:
            assert gen.broken, exc.problems   # a valid source is never refused
            check_problems(exc.problems, directory, gen)
        else:
            assert not gen.broken, "a broken source was accepted"
            assert sorted(w.id for w in source.workstreams) == sorted(ws["id"] for ws in gen.workstreams)
            # what a resume rebuilds from the state DB is the workstream that was recorded
            restored = workstreams_from_snapshots([json.loads(w.snapshot()[0]) for w in source.workstreams], "")
            assert [restored[w.id].snapshot() for w in source.workstreams] == [w.snapshot() for w in source.workstreams]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sources(runnable=True))
def test_through_the_cli_a_source_runs_or_is_refused_with_nothing_written(gen):
    base = Path(tempfile.mkdtemp())
    try:
        project = base / "proj"
        write_source(gen, project / "w")
        (project / "sub" / "inner").mkdir(parents=True)
        ledger = base / "ledger"
        ledger.touch()
        proc = agentrun("run", project / "w", "--parallel", "--max-workers", "2", "-q", cwd=project,
                        env={"LEDGER": str(ledger), "OPENROUTER_API_KEY": SECRET}, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert SECRET not in proc.stdout + proc.stderr
        if proc.returncode == 2:
            assert gen.broken, proc.stderr[:3000]
            lines = proc.stderr.splitlines()
            assert lines and all(line.startswith("error: ") for line in lines), lines[:5]
            check_problems([line[len("error: "):] for line in lines], project / "w", gen)
            assert not (project / ".agentrun").exists()
            assert ledger.read_text() == ""
            return
        assert not gen.broken, "a broken source was run"
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        ran = ledger.read_text().split()
        assert sorted(ran) == sorted(ws["id"] for ws in gen.workstreams)
        db = sqlite3.connect(f"file:{project / '.agentrun' / 'state.db'}?mode=ro", uri=True)
        try:
            statuses = [row[0] for row in db.execute("SELECT status FROM workstreams")]
        finally:
            db.close()
        assert statuses == ["done"] * len(gen.workstreams)
    finally:
        shutil.rmtree(base)
