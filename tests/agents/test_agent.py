"""The built-in LLM agent, end to end.

Every test builds a real git repository in ``tmp_path`` holding a tiny Python
package (``pkg/calc.py`` with a bug) and its unittest tests, starts the fake
OpenAI-compatible server of ``fake_llm`` on 127.0.0.1, and runs the real CLI in
a subprocess (``python -m agentrun run w ...``) with ``cwd`` that repository.
Assertions look at what the run recorded (exit code, ``workstreams``,
``llm_calls``, ``runs.fatal_error``), the event journal, what the server
received, and what landed on the integration branch.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import toml_value
from fake_llm import (Burst5xx, ContextLength, DailyQuota, ErrorIn200, FakeLLM, Hang, NotFound, RateLimit, Reply,
                      Slow, Status)
from gitutil import git, init_repo, show

CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
TEST_CALC = ("import unittest\n\nfrom pkg.calc import add, mul\n\n\n"
             "class CalcTest(unittest.TestCase):\n"
             "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n"
             "    def test_mul(self):\n        self.assertEqual(mul(2, 3), 6)\n")
GATE = "python3 -m unittest discover -s tests -t ."


def sr(search: str, replace: str, path: str = "pkg/calc.py") -> str:
    """A SEARCH/REPLACE reply."""
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


FIX = sr("    return a - b\n", "    return a + b\n")
WRONG = sr("    return a - b\n", "    return a * b + 1\n")          # applies, gate still fails
WRONG_AGAIN = sr("    return a * b + 1\n", "    return a * b + 2\n")
FIX_AFTER_WRONG = sr("    return a * b + 1\n", "    return a + b\n")
NO_MATCH = sr("    return a - c\n", "    return a + b\n")           # SEARCH text not in the file
MALFORMED = "pkg/calc.py\n<<<<<<< SEARCH\n    return a - b\n>>>>>>> REPLACE\n"   # no divider

SECRET = "sk-test-SECRET-0123456789abcdefXYZ"
KEY_VARS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "FAKE_API_KEY", "AGENTRUN_CRASH_AT", "AGENTRUN_LLM_LIMITER")


# --- building projects -------------------------------------------------------------------

def model_entry(server_url: str, model_id: str, **extra) -> dict:
    entry = {"id": model_id, "base_url": server_url, "context_window": 8192, "edit_format": "diff",
             "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
    entry.update(extra)
    return {k: v for k, v in entry.items() if v is not None}


def write_config(repo: Path, models: dict[str, dict], budget: dict | None = None,
                 defaults: dict | None = None) -> None:
    lines = []
    if defaults:
        lines.append("[defaults]")
        lines += [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
    for name, fields in models.items():
        lines.append(f"[models.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    if budget:
        lines.append("[budget]")
        lines += [f"{k} = {toml_value(v)}" for k, v in budget.items()]
    (repo / "w" / "agentrun.toml").write_text("\n".join(lines) + "\n")


def write_agent_ws(repo: Path, ws_id: str, **fields) -> None:
    spec = {"title": f"Fix {ws_id}", "agent": "llm", "model": "fake", "files": ["pkg/calc.py"],
            "gates": [GATE]}
    spec.update(fields)
    spec = {k: v for k, v in spec.items() if v is not None}
    (repo / "w" / f"{ws_id}.toml").write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in spec.items()))


def make_repo(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    files = {"pkg/__init__.py": "", "pkg/calc.py": CALC, "tests/__init__.py": "", "tests/test_calc.py": TEST_CALC}
    files.update(extra or {})
    return init_repo(tmp_path / "repo", files)


def project(tmp_path: Path, server: FakeLLM, ws: dict[str, dict] | None = None, models: dict | None = None,
            budget: dict | None = None) -> Path:
    """A repository with one agent workstream per entry of ``ws`` (default: one, ``fix``) on model ``fake``."""
    repo = make_repo(tmp_path)
    write_config(repo, models if models is not None else {"fake": model_entry(server.url, "fake-model")}, budget)
    for ws_id, fields in (ws if ws is not None else {"fix": {}}).items():
        write_agent_ws(repo, ws_id, **fields)
    return repo


# --- running and looking -------------------------------------------------------------------

def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env.update(extra)
    return env


def agentrun(repo: Path, *args, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrun", *map(str, args)], cwd=repo,
                          env=env if env is not None else cli_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run(repo: Path, *args, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return agentrun(repo, "run", "w", "-q", *args, env=env, timeout=timeout)


class Look:
    """The state DB and event journal of the latest run in ``repo``."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.db = sqlite3.connect(f"file:{repo / '.agentrun' / 'state.db'}?mode=ro", uri=True)
        self.db.row_factory = sqlite3.Row
        self.run = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
        self.run_id = self.run["id"]

    def close(self) -> None:
        self.db.close()

    def ws(self, ws_id: str | None = None):
        rows = {r["ws_id"]: r for r in self.db.execute("SELECT * FROM workstreams WHERE run_id = ?",
                                                          (self.run_id,))}
        return rows[ws_id] if ws_id else rows

    def status(self) -> dict[str, str]:
        return {w: r["status"] for w, r in self.ws().items()}

    def calls(self, ws_id: str | None = None, all_runs: bool = False) -> list:
        sql, args = "SELECT * FROM llm_calls WHERE 1 = 1", []
        if not all_runs:
            sql += " AND run_id = ?"
            args.append(self.run_id)
        if ws_id:
            sql += " AND ws_id = ?"
            args.append(ws_id)
        return self.db.execute(sql + " ORDER BY id", args).fetchall()

    def statuses(self, ws_id: str | None = None) -> list[tuple[str, str]]:
        return [(c["model"], c["status"]) for c in self.calls(ws_id)]

    def events(self, type_: str | None = None, ws_id: str | None = None) -> list[dict]:
        path = self.repo / ".agentrun" / "runs" / self.run_id / "events.jsonl"
        out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in out if (type_ is None or e["type"] == type_) and (ws_id is None or e["ws_id"] == ws_id)]

    def conversation(self, ws_id: str, attempt: int = 1) -> list[dict]:
        path = self.repo / ".agentrun" / "runs" / self.run_id / "conversations" / f"{ws_id}.{attempt}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def integrated(self, path: str = "pkg/calc.py") -> str:
        return show(self.repo, f"{self.run['integration_branch']}:{path}")


@pytest.fixture
def server():
    with FakeLLM() as fake:
        yield fake


def last_user(request) -> str:
    return [m for m in request.messages if m["role"] == "user"][-1]["content"]


def assert_fixed(look: Look, ws_id: str = "fix") -> None:
    """The workstream is done and its fix is on the integration branch (and nowhere else)."""
    row = look.ws(ws_id)
    assert row["status"] == "done" and row["integrated_commit"]
    assert "return a + b" in look.integrated()
    assert git(look.repo, "merge-base", "--is-ancestor", row["integrated_commit"],
               look.run["integration_branch"]).returncode == 0
    assert show(look.repo, "main:pkg/calc.py") == CALC          # the user's branch is untouched


# --- 1. edits that apply, a gate that passes -------------------------------------------------

def test_edits_apply_gate_passes_provider_cost(tmp_path, server):
    server.script(Reply(FIX, cost=0.0123, usage={"prompt_tokens": 400, "completion_tokens": 30}))
    repo = project(tmp_path, server)
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.run["status"] == "done"
    assert_fixed(look)
    [call] = look.calls()
    assert (call["status"], call["prompt_tokens"], call["completion_tokens"]) == ("ok", 400, 30)
    assert (call["cost_usd"], call["cost_source"], call["retry"]) == (0.0123, "provider", 0)
    assert call["model"] == "fake" and call["model_id"] == "fake-model"
    [request] = server.chat_requests
    assert request.model == "fake-model"
    assert "return a - b" in last_user(request) and "# Task: Fix fix" in last_user(request)
    assert request.header("Authorization") is None          # a keyless local server gets no key
    kinds = [e["type"] for e in look.events(ws_id="fix")]
    assert "gate_passed" in kinds and "ws_integrated" in kinds and kinds[-1] == "ws_done"
    assert [r["kind"] for r in look.conversation("fix")][-2:] == ["applied", "done"]


def test_cost_from_price_table_and_unknown_price(tmp_path, server):
    """No usage.cost: a priced model's cost comes from the table; an unpriced one's is NULL, never 0."""
    def answer(req):
        if req.model == "free-model":       # creates pkg/other.py from nothing
            return Reply(sr("", "VALUE = 1\n", "pkg/other.py"), usage={"prompt_tokens": 900, "completion_tokens": 20})
        return Reply(FIX, usage={"prompt_tokens": 1000, "completion_tokens": 500})

    server.default = answer
    repo = make_repo(tmp_path)
    write_config(repo, {"fake": model_entry(server.url, "fake-model"),
                        "free": model_entry(server.url, "free-model", input_cost_per_mtok=None,
                                            output_cost_per_mtok=None)})
    write_agent_ws(repo, "priced", model="fake")
    write_agent_ws(repo, "unpriced", model="free", files=["pkg/other.py"], gates=["python3 -c pass"])
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    [priced] = look.calls("priced")
    assert (priced["status"], priced["prompt_tokens"], priced["completion_tokens"]) == ("ok", 1000, 500)
    assert priced["cost_source"] == "table"
    assert priced["cost_usd"] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    [unpriced] = look.calls("unpriced")
    assert (unpriced["status"], unpriced["prompt_tokens"], unpriced["completion_tokens"]) == ("ok", 900, 20)
    assert unpriced["cost_usd"] is None and unpriced["cost_source"] == "unknown"
    assert_fixed(look, "priced")
    assert show(repo, f"{look.run['integration_branch']}:pkg/other.py") == "VALUE = 1\n"
    total = look.db.execute("SELECT SUM(cost_usd), COUNT(*), SUM(cost_usd IS NULL) FROM llm_calls").fetchone()
    assert tuple(total) == (pytest.approx(0.002), 2, 1)             # the unknown cost is not summed as 0


# --- 2. malformed and non-matching edits -------------------------------------------------------

def test_bad_edits_are_sent_back_with_the_closest_lines(tmp_path, server):
    server.script(Reply(NO_MATCH), Reply(MALFORMED), Reply("Sure! I fixed it."), Reply(FIX))
    repo = project(tmp_path, server)
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    first, second, third, fourth = server.chat_requests
    # The non-matching block comes back with the lines of the file closest to it.
    feedback = last_user(second)
    assert "did not match exactly" in feedback and "    return a - b" in feedback and "def add(a, b):" in feedback
    # The conversation so far is resent: the model sees its own bad reply.
    assert second.messages[:3] == first.messages + [{"role": "assistant", "content": NO_MATCH}]
    assert "malformed" in last_user(third)
    assert "no edits" in last_user(fourth)
    assert [c["status"] for c in look.calls()] == ["ok"] * 4
    kinds = [r["kind"] for r in look.conversation("fix")]
    assert kinds.count("edit_problem") == 3 and kinds[-1] == "done"


def test_more_than_three_bad_replies_fail_the_workstream(tmp_path, server):
    server.script(*[Reply(NO_MATCH)] * 4, Reply(FIX))
    repo = project(tmp_path, server)
    proc = run(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"fix": "failed"}
    assert "could not be applied after 3 corrections" in look.ws("fix")["error"]
    assert len(server.chat_requests) == 4 and server.pending == 1     # the fifth reply was never asked for
    assert look.ws("fix")["integrated_commit"] is None
    assert show(repo, f"{look.run['integration_branch']}:pkg/calc.py") == CALC


# --- 3. failing gates and repairs --------------------------------------------------------------

def test_failing_gate_output_is_sent_back_and_repaired(tmp_path, server):
    server.script(Reply(WRONG), Reply(FIX_AFTER_WRONG))
    repo = project(tmp_path, server)
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    first, second = server.chat_requests
    feedback = last_user(second)
    assert f"The command `{GATE}` failed" in feedback
    assert "FAIL: test_add" in feedback and "AssertionError" in feedback
    assert "return a * b + 1" in second.messages[-2]["content"]          # its own first reply
    gates = [e for e in look.events(ws_id="fix") if e["type"].startswith("gate_")]
    assert [(g["type"], g["phase"]) for g in gates] == [("gate_failed", "agent"), ("gate_passed", "agent"),
                                                         ("gate_passed", "verify")]
    # One commit of the workstream on the integration branch, holding the repaired file only.
    assert look.integrated() == CALC.replace("a - b", "a + b")


def test_repairs_beyond_max_repairs_fail(tmp_path, server):
    server.script(Reply(WRONG), Reply(WRONG_AGAIN), Reply(FIX))
    repo = project(tmp_path, server, ws={"fix": {"max_repairs": 1}})
    proc = run(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"fix": "failed"}
    assert "gate failed after 1 repair(s)" in look.ws("fix")["error"]
    assert len(server.chat_requests) == 2 and server.pending == 1
    assert show(repo, f"{look.run['integration_branch']}:pkg/calc.py") == CALC
    assert "fix" in proc.stdout and "failed" in proc.stdout


# --- 4. API errors: the one retry loop ---------------------------------------------------------

def two_models(server: FakeLLM, **second) -> dict:
    return {"fake": model_entry(server.url, "fake-model"),
            "fake2": model_entry(server.url, "fake-model-2", **second)}


def test_429_with_retry_after_waits_and_retries_the_same_model(tmp_path, server):
    server.script(RateLimit(retry_after="0.3"), Reply(FIX))
    repo = project(tmp_path, server, models=two_models(server), ws={"fix": {"fallbacks": ["fake2"]}})
    started = time.monotonic()
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert [r.model for r in server.chat_requests] == ["fake-model", "fake-model"]   # exactly two requests
    assert [(c["model"], c["status"], c["retry"]) for c in look.calls()] == [
        ("fake", "rate_limit", 0), ("fake", "ok", 1)]
    [limited] = look.events("llm_rate_limited")
    assert limited["model"] == "fake" and limited["retry_in"] == pytest.approx(0.3)
    assert not look.events("llm_rotated") and not look.events("llm_fallback")
    assert time.monotonic() - started >= 0.3


def test_5xx_burst_is_retried_then_rotates_to_the_fallback(tmp_path, server):
    server.script(Burst5xx(3, 502), Reply(FIX))
    repo = project(tmp_path, server, models=two_models(server), ws={"fix": {"fallbacks": ["fake2"]}})
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert [r.model for r in server.chat_requests] == ["fake-model"] * 3 + ["fake-model-2"]
    assert [(c["model"], c["status"], c["retry"]) for c in look.calls()] == [
        ("fake", "server", 0), ("fake", "server", 1), ("fake", "server", 2), ("fake2", "ok", 0)]
    [rotated] = look.events("llm_rotated")
    assert rotated["model"] == "fake" and rotated["because"] == "server"
    [fallback] = look.events("llm_fallback")
    assert fallback["model"] == "fake2"
    assert look.calls()[-1]["cost_source"] == "table"


def test_daily_quota_exhausts_the_model_without_retrying(tmp_path, server):
    server.script(DailyQuota(), Reply(FIX))
    repo = project(tmp_path, server, models=two_models(server), ws={"fix": {"fallbacks": ["fake2"]}})
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert [r.model for r in server.chat_requests] == ["fake-model", "fake-model-2"]
    assert look.statuses() == [("fake", "quota"), ("fake2", "ok")]
    [exhausted] = look.events("llm_exhausted")
    assert exhausted["model"] == "fake" and exhausted["until"] > time.time() + 3000   # the reset, an hour away
    assert look.events("llm_fallback")[0]["model"] == "fake2"
    assert not look.events("llm_rate_limited")
    health = look.db.execute("SELECT state FROM model_health WHERE run_id = ? AND model = 'fake'",
                             (look.run_id,)).fetchone()
    assert health["state"] == "exhausted"


def test_error_in_a_200_response_is_an_error(tmp_path, server):
    server.script(ErrorIn200(502, "Provider returned error"), Reply(FIX))
    repo = project(tmp_path, server)
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert len(server.chat_requests) == 2
    first, second = look.calls()
    assert (first["status"], first["prompt_tokens"], first["cost_usd"]) == ("server", None, None)
    assert "error object in a 200 response" in first["error"]
    assert (second["status"], second["retry"]) == ("ok", 1)
    # the error body was never taken for a reply
    assert [r["kind"] for r in look.conversation("fix")].count("reply") == 1


def test_context_length_is_not_resent_to_that_model(tmp_path, server):
    """llama.cpp says the prompt does not fit: the larger-window fallback gets it, and keeps getting the
    rest of the conversation (a repair), instead of the small model being tried again."""
    server.script(ContextLength(n_prompt=9000, n_ctx=4096), Reply(WRONG), Reply(FIX_AFTER_WRONG))
    models = {"fake": model_entry(server.url, "fake-model"),
              "big": model_entry(server.url, "big-model", context_window=65536)}
    repo = project(tmp_path, server, models=models, ws={"fix": {"fallbacks": ["big"]}})
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert [r.model for r in server.chat_requests] == ["fake-model", "big-model", "big-model"]
    assert look.statuses() == [("fake", "context_length"), ("big", "ok"), ("big", "ok")]
    assert look.events("llm_fallback")[0]["model"] == "big"


def test_404_no_endpoints_drops_the_model_for_the_run(tmp_path, server):
    server.script(NotFound(), Reply(FIX), Reply(sr("    return a * b\n", "    return b * a\n")))
    repo = project(tmp_path, server, models=two_models(server),
                   ws={"a-fix": {"fallbacks": ["fake2"]},
                       "b-mul": {"fallbacks": ["fake2"], "depends_on": ["a-fix"]}})
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"a-fix": "done", "b-mul": "done"}
    # one request to the dropped model, ever: the second workstream goes straight to the fallback
    assert [r.model for r in server.chat_requests] == ["fake-model", "fake-model-2", "fake-model-2"]
    assert look.statuses() == [("fake", "not_found"), ("fake2", "ok"), ("fake2", "ok")]
    [dropped] = look.events("llm_dropped")
    assert dropped["model"] == "fake" and dropped["ws_id"] == "a-fix"
    assert {e["ws_id"] for e in look.events("llm_fallback")} == {"a-fix", "b-mul"}
    assert "return b * a" in look.integrated() and "return a + b" in look.integrated()


def test_401_stops_the_whole_run_with_one_message(tmp_path, server):
    server.script(Status(401, body={"error": {"code": 401, "message": "No auth credentials found"}}))
    server.default = Reply(FIX)
    repo = project(tmp_path, server, ws={f"ws{i}": {} for i in range(4)})
    proc = run(repo, "--parallel", "--max-workers", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.run["status"] == "failed"
    assert "authentication failed" in look.run["fatal_error"]
    # a keyless local model: the message says where a key would go, not to check $OPENROUTER_API_KEY
    assert "[models.fake] names none: set api_key_env" in look.run["fatal_error"]
    assert "OPENROUTER_API_KEY" not in look.run["fatal_error"]
    assert len(server.chat_requests) == 1                           # only the first workstream made a call
    assert look.statuses() == [("fake", "auth")]
    states = look.status()
    assert states["ws0"] == "failed" and sorted(states.values()).count("failed") == 1
    assert all(states[w] == "pending" for w in ("ws1", "ws2", "ws3"))
    assert len(look.events("llm_fatal")) == 1
    assert [e["ws_id"] for e in look.events("ws_started")] == ["ws0"]
    assert proc.stderr.count("authentication failed") == 1, proc.stderr
    assert "error: the run was stopped early: authentication failed" in proc.stderr
    assert look.events("run_finished")[0]["reason"].startswith("fatal")


def test_resume_after_fixing_the_key_finishes_the_run(tmp_path, server):
    def create_file(req):            # workstream wsN creates pkg/mN.py
        n = req.prompt_text.split("# Task: Fix ws", 1)[1][0]
        return Reply(sr("", "X = 1\n", f"pkg/m{n}.py"))

    server.script(Status(401))       # the key is wrong for the first call, fixed afterwards
    server.default = create_file
    repo = project(tmp_path, server, ws={f"ws{i}": {"files": [f"pkg/m{i}.py"], "gates": ["python3 -c pass"]}
                                         for i in range(3)})
    assert run(repo).returncode == 1
    run_id = Look(repo).run_id
    resumed = agentrun(repo, "resume", run_id, "-q")
    look = Look(repo)
    assert look.status() == {"ws0": "failed", "ws1": "done", "ws2": "done"}
    assert resumed.returncode == 1 and "stopped early" not in resumed.stderr

def test_hung_and_slow_responses_time_out(tmp_path, server):
    server.script(Hang(), Slow(30), Reply(FIX))
    repo = project(tmp_path, server, models={"fake": model_entry(server.url, "fake-model", timeout="300ms")})
    started = time.monotonic()
    proc = run(repo)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert [(c["status"], c["retry"]) for c in look.calls()] == [("timeout", 0), ("timeout", 1), ("ok", 2)]
    assert all(c["latency_s"] < 5 for c in look.calls()[:2])
    assert elapsed < 20


# --- 7. concurrency against a server that takes two calls at a time -----------------------------

def test_eight_workers_against_a_server_taking_two_calls(tmp_path):
    n = 8
    extra = {}
    for i in range(n):
        extra[f"pkg/m{i}.py"] = f"def f{i}():\n    return {i} - 1\n"
        extra[f"tests/test_m{i}.py"] = (f"import unittest\n\nfrom pkg.m{i} import f{i}\n\n\n"
                                        f"class T(unittest.TestCase):\n    def test(self):\n"
                                        f"        self.assertEqual(f{i}(), {i} + 1)\n")

    def answer(req):
        """A wrong edit first, the fix when the failing test comes back: two calls per workstream,
        each taking a while, so that calls overlap."""
        for i in range(n):
            if f"# Task: Fix m{i}\n" in req.prompt_text:
                if len(req.messages) == 2:
                    edit = sr(f"    return {i} - 1\n", f"    return {i} * 0\n", f"pkg/m{i}.py")
                else:
                    edit = sr(f"    return {i} * 0\n", f"    return {i} + 1\n", f"pkg/m{i}.py")
                return Slow(0.3, Reply(edit, cost=0.001))
        return Status(500)

    with FakeLLM(default=answer, max_concurrent=2, concurrency_retry_after=0.2) as server:
        repo = make_repo(tmp_path, extra)
        write_config(repo, {"fake": model_entry(server.url, "fake-model")})
        for i in range(n):
            write_agent_ws(repo, f"m{i}", title=f"Fix m{i}", files=[f"pkg/m{i}.py"],
                           gates=[f"python3 -m unittest tests.test_m{i}"])
        proc = run(repo, "--parallel", "--max-workers", str(n))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rejected = [r for r in server.requests if r.rejected]
        served = server.chat_requests
        assert server.max_in_flight <= 2
    look = Look(repo)
    assert look.status() == {f"m{i}": "done" for i in range(n)}
    calls = look.calls()
    ok = [c for c in calls if c["status"] == "ok"]
    limited = [c for c in calls if c["status"] == "rate_limit"]
    assert len(ok) == 2 * n == len(served)
    assert len(limited) == len(rejected) <= 3 * n
    assert {c["status"] for c in calls} <= {"ok", "rate_limit"}
    assert sum(c["cost_usd"] for c in ok) == pytest.approx(0.016)
    assert not look.events("llm_rotated") and not look.events("ws_failed")
    for i in range(n):
        assert f"return {i} + 1" in look.integrated(f"pkg/m{i}.py")
    print(f"429s: {len(rejected)}")


# --- 5. budgets ----------------------------------------------------------------------------------
# Model "fake" costs $1 / $2 per million prompt / completion tokens and may write 4096 tokens, so
# the pre-call estimate of any call here is about $0.0086 (the output bound dominates).

def test_workstream_budget_blocks_the_call_that_would_cross_it(tmp_path, server):
    def answer(req):
        if "# Task: Fix other" in req.prompt_text:
            return Reply(FIX, cost=0.004)
        return Reply(WRONG, cost=0.005)          # the repair this needs would cross $0.012

    server.default = answer
    repo = project(tmp_path, server, ws={"capped": {"max_cost_usd": 0.012},
                                         "other": {"depends_on": ["capped"]}})
    proc = run(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"capped": "failed", "other": "blocked"}
    assert len(server.chat_requests) == 1                    # the repair request was never sent
    ok, blocked = look.calls("capped")
    assert (ok["status"], ok["cost_usd"], ok["cost_source"]) == ("ok", 0.005, "provider")
    assert blocked["status"] == "budget" and blocked["prompt_tokens"] is None and blocked["cost_usd"] is None
    assert "workstream capped budget" in blocked["error"]
    [exceeded] = look.events("budget_exceeded")
    assert exceeded["ws_id"] == "capped" and exceeded["scope"] == "workstream capped"
    assert "budget" in look.ws("capped")["error"] and "the call was not made" in look.ws("capped")["error"]
    assert look.db.execute("SELECT SUM(cost_usd) FROM llm_calls").fetchone()[0] == pytest.approx(0.005)
    assert show(repo, f"{look.run['integration_branch']}:pkg/calc.py") == CALC


def test_run_budget_blocks_the_call_that_would_cross_it(tmp_path, server):
    server.default = lambda req: Reply(sr("    return a * b\n", "    return b * a\n"), cost=0.005) \
        if "# Task: Fix b" in req.prompt_text else Reply(FIX, cost=0.005)
    repo = project(tmp_path, server, ws={"a": {}, "b": {"depends_on": ["a"]}})
    proc = run(repo, "--budget", "0.012")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status()["a"] == "done"
    assert look.status()["b"] == "failed"
    assert [r for r in server.chat_requests if "# Task: Fix b" in r.prompt_text] == []
    assert look.statuses() == [("fake", "ok"), ("fake", "budget")]
    assert "run budget" in look.calls("b")[0]["error"]
    assert [e["scope"] for e in look.events("budget_exceeded")] == ["run"]
    assert look.db.execute("SELECT SUM(cost_usd) FROM llm_calls").fetchone()[0] == pytest.approx(0.005)
    shown = agentrun(repo, "report", "show")
    assert "budget_exceeded (run) b: run budget" in shown.stdout, shown.stdout
    assert "return a + b" in look.integrated() and "return b * a" not in look.integrated()


def test_soft_budget_starts_nothing_new_after_a_refused_call(tmp_path, server):
    server.default = Reply(FIX, cost=0.005)
    repo = project(tmp_path, server, ws={"a": {}, "b": {"files": ["pkg/b.py"]}, "c": {"files": ["pkg/c.py"]}})
    proc = run(repo, "--budget", "0.012", "--budget-mode", "soft")
    assert proc.returncode == 1
    look = Look(repo)
    assert look.status()["a"] == "done" and look.status()["b"] == "failed"
    assert look.statuses() == [("fake", "ok"), ("fake", "budget")]
    assert look.status()["c"] == "pending" and not look.events("ws_started", "c")


def test_warn_at_emits_budget_warning_and_goes_on(tmp_path, server):
    server.default = lambda req: Reply(sr("    return a * b\n", "    return b * a\n"), cost=0.3) \
        if "# Task: Fix b" in req.prompt_text else Reply(FIX, cost=0.6)
    repo = project(tmp_path, server, ws={"a": {}, "b": {"depends_on": ["a"]}},
                   budget={"max_cost_usd": 1.0, "warn_at": 0.5})
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.run["status"] == "done" and look.status() == {"a": "done", "b": "done"}
    warnings = look.events("budget_warning")
    assert warnings and {w["scope"] for w in warnings} == {"run"}
    assert not look.events("budget_exceeded")
    # the first call started below half the budget: no warning before it
    first_warning = warnings[0]["seq"]
    assert first_warning > look.events("ws_started", "a")[0]["seq"]
    assert look.db.execute("SELECT SUM(cost_usd) FROM llm_calls").fetchone()[0] == pytest.approx(0.9)


def run_dir_events(repo: Path) -> list[dict]:
    runs = repo / ".agentrun" / "runs"
    out = []
    for path in runs.glob("*/events.jsonl") if runs.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def wait_until(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def budget_race(tmp_path: Path, server: FakeLLM, b_behaviour) -> Path:
    """Workstreams a, b (in parallel) and c. a's reply costs $0.02, over the $0.01 run budget; it is held
    back until b's request has arrived, so that b is mid-call when the budget is crossed."""
    b_arrived = threading.Event()

    def answer(req):
        if "# Task: Fix b" in req.prompt_text:
            b_arrived.set()
            return b_behaviour(req)
        if "# Task: Fix a" in req.prompt_text:
            assert b_arrived.wait(30)
            return Reply(FIX, cost=0.02)
        return Reply(sr("", "C = 1\n", "pkg/c.py"), cost=0.001)

    server.default = answer
    repo = make_repo(tmp_path)
    write_config(repo, {"fake": model_entry(server.url, "fake-model", timeout="60s",
                                            input_cost_per_mtok=0.5, output_cost_per_mtok=1.0)})
    write_agent_ws(repo, "a")
    write_agent_ws(repo, "b", files=["pkg/b.py"], gates=["python3 -c pass"])
    write_agent_ws(repo, "c", files=["pkg/c.py"], gates=["python3 -c pass"], priority="low")
    return repo


def test_hard_budget_stops_running_work(tmp_path, server):
    repo = budget_race(tmp_path, server, lambda req: Hang())
    started = time.monotonic()
    proc = run(repo, "--parallel", "--max-workers", "2", "--budget", "0.01", "--budget-mode", "hard")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"a": "done", "b": "interrupted", "c": "pending"}
    assert elapsed < 30                                     # b's hung call was abandoned, not waited for
    assert look.run["status"] == "failed"
    [exceeded] = look.events("budget_exceeded")
    assert exceeded["scope"] == "run" and exceeded["mode"] == "hard"
    assert look.events("run_finished")[0]["reason"] == "budget"
    assert not [r for r in server.chat_requests if "# Task: Fix c" in r.prompt_text]
    assert look.db.execute("SELECT SUM(cost_usd) FROM llm_calls").fetchone()[0] == pytest.approx(0.02)
    assert "return a + b" in look.integrated()


def test_soft_budget_lets_running_work_finish_and_starts_nothing_new(tmp_path, server):
    release = threading.Event()

    def b_reply(req):
        assert release.wait(30)
        return Reply(sr("", "B = 1\n", "pkg/b.py"), cost=0.001)

    repo = budget_race(tmp_path, server, b_reply)
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q", "--parallel", "--max-workers",
                             "2", "--budget", "0.01", "--budget-mode", "soft"], cwd=repo, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(e["type"] == "budget_exceeded" for e in run_dir_events(repo)), what="budget_exceeded")
        release.set()
        out, err = proc.communicate(timeout=60)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out + err
    look = Look(repo)
    assert look.status() == {"a": "done", "b": "done", "c": "pending"}
    assert look.events("run_finished")[0]["reason"] == "budget"
    assert not [r for r in server.chat_requests if "# Task: Fix c" in r.prompt_text]
    assert show(repo, f"{look.run['integration_branch']}:pkg/b.py") == "B = 1\n"


# --- 6. the response cache -------------------------------------------------------------------------

def test_resume_after_a_crash_answers_from_the_cache(tmp_path, server):
    server.script(Reply(FIX, cost=0.002))
    server.default = Status(500)                 # any further request would fail the workstream
    repo = project(tmp_path, server)
    # The worker dies (taking its orchestrator with it) in the merge queue, after the reply came back.
    proc = run(repo, env=cli_env(AGENTRUN_CRASH_AT="during-integration"))
    assert proc.returncode < 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.run["status"] == "running" and look.status() == {"fix": "running"}
    run_id = look.run_id
    look.close()
    assert len(server.chat_requests) == 1

    resumed = agentrun(repo, "resume", run_id, "-q")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    look = Look(repo)
    assert look.run_id == run_id and look.run["status"] == "done"
    assert_fixed(look)
    assert len(server.chat_requests) == 1                         # no new request
    assert [(c["attempt"], c["status"], c["cost_usd"], c["cost_source"]) for c in look.calls()] == [
        (1, "ok", 0.002, "provider"), (2, "cached", 0.0, "cache")]
    reply = [r for r in look.conversation("fix", attempt=2) if r["kind"] == "reply"]
    assert [r["cached"] for r in reply] == [True]
    assert look.db.execute("SELECT SUM(cost_usd) FROM llm_calls").fetchone()[0] == pytest.approx(0.002)


def test_a_second_identical_request_is_answered_from_the_cache(tmp_path, server):
    server.script(Reply(FIX, cost=0.002))
    server.default = Status(500)
    repo = project(tmp_path, server)
    assert run(repo).returncode == 0
    first = Look(repo).run_id
    proc = run(repo)                                    # a new run, the same task on the same files
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.run_id != first
    assert_fixed(look)
    assert len(server.chat_requests) == 1
    [call] = look.calls()
    assert (call["status"], call["cost_usd"], call["cost_source"]) == ("cached", 0.0, "cache")



def test_a_retried_attempt_asks_the_model_again(tmp_path, server):
    """A failed attempt's replies are not replayed from the cache by its retry."""
    server.script(Reply(WRONG), Reply(FIX))
    repo = project(tmp_path, server, ws={"fix": {"max_repairs": 0, "retries": 1, "retry_backoff": "50ms"}})
    proc = run(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert len(server.chat_requests) == 2
    assert server.chat_requests[0].messages == server.chat_requests[1].messages     # the same question
    assert [(c["attempt"], c["status"]) for c in look.calls()] == [(1, "ok"), (2, "ok")]
    assert [e["attempt"] for e in look.events("ws_retrying")] == [1]


def test_resume_after_a_kill_during_a_call(tmp_path, server):
    """kill -9 while a request is in flight: the resumed run is not held up by the dead call's slot."""
    server.script(Hang(), Reply(FIX))
    repo = project(tmp_path, server)
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=repo, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_until(lambda: len(server.chat_requests) == 1, what="the first request")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    run_id = Look(repo).run_id
    resumed = agentrun(repo, "resume", run_id, "-q", timeout=60)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    look = Look(repo)
    assert look.run_id == run_id
    assert_fixed(look)
    assert len(server.chat_requests) == 2
    assert [(c["attempt"], c["status"]) for c in look.calls()] == [(2, "ok")]
    assert look.db.execute("SELECT COUNT(*) FROM llm_slots").fetchone()[0] == 0

# --- 8. secrets ----------------------------------------------------------------------------------------

def test_the_api_key_never_lands_anywhere(tmp_path, server):
    def echo(code: int, **headers):
        def respond(req):
            auth = req.header("Authorization") or ""
            key = auth.split()[-1]
            body = {"error": {"code": code, "message": f"key {key} rejected; you sent '{auth}'",
                              "metadata": {"raw": f"upstream saw {key}"}}}
            return Status(code, headers={"X-Echo": key, **headers}, body=body)
        return respond

    server.script(echo(500), echo(429, **{"Retry-After": "0.1"}), Reply(FIX),        # a: retried, then done
                  ErrorIn200(502, f"bad key {SECRET}"), echo(401))                     # b: the run stops
    repo = make_repo(tmp_path)
    write_config(repo, {"remote": model_entry(server.url, "vendor/model", api_key_env="OPENROUTER_API_KEY")})
    write_agent_ws(repo, "a", model="remote")
    write_agent_ws(repo, "b", model="remote", files=["pkg/b.py"], depends_on=["a"])
    env = cli_env(OPENROUTER_API_KEY=SECRET)
    proc = run(repo, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"a": "done", "b": "failed"}
    assert "authentication failed" in look.run["fatal_error"] and "OPENROUTER_API_KEY" in look.run["fatal_error"]
    assert look.statuses() == [("remote", "server"), ("remote", "rate_limit"), ("remote", "ok"),
                               ("remote", "server"), ("remote", "auth")]
    # the key was really sent, and really echoed
    assert all(r.header("Authorization") == f"Bearer {SECRET}" for r in server.chat_requests)
    assert "[REDACTED]" in look.run["fatal_error"]
    look.close()
    outputs = [proc.stdout, proc.stderr]
    for args in (["logs", look.run_id, "b"], ["report", "models", look.run_id]):
        extra = agentrun(repo, *args, env=env)
        assert extra.returncode == 0, (args, extra.stderr)
        outputs += [extra.stdout, extra.stderr]
    assert "[REDACTED]" in "".join(outputs)           # the echoed errors are shown, redacted
    for text in outputs:
        assert SECRET not in text
    files = [p for p in (repo / ".agentrun").rglob("*") if p.is_file()]
    assert any(p.name == "state.db" for p in files) and any(p.suffix == ".jsonl" for p in files)
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data, path
        assert SECRET.encode("utf-16-le") not in data, path
    for path in (repo / ".git").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path



def test_a_preset_pointed_elsewhere_does_not_take_the_openrouter_key_there(tmp_path, server):
    server.script(Reply(FIX))
    repo = make_repo(tmp_path)
    write_config(repo, {"deepseek-chat": {"base_url": server.url}})
    write_agent_ws(repo, "fix", model="deepseek-chat")
    proc = run(repo, env=cli_env(OPENROUTER_API_KEY=SECRET))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [request] = server.chat_requests
    assert request.model == "deepseek/deepseek-chat-v3.1" and request.header("Authorization") is None
    [call] = Look(repo).calls()
    assert call["cost_source"] == "table" and call["cost_usd"] > 0        # the preset's prices still apply


def test_a_fallback_without_its_key_is_skipped_not_called(tmp_path, server):
    server.script(DailyQuota())
    models = two_models(server, api_key_env="FAKE_API_KEY")
    repo = project(tmp_path, server, models=models, ws={"fix": {"fallbacks": ["fake2"]}})
    proc = run(repo)                                   # FAKE_API_KEY is not set
    assert proc.returncode == 1, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.status() == {"fix": "failed"}
    assert [r.model for r in server.chat_requests] == ["fake-model"]
    assert look.run["fatal_error"] is None and not look.events("llm_fatal")
    assert "$FAKE_API_KEY is not set" in look.ws("fix")["error"]


def test_a_gate_never_sees_the_models_key_so_cannot_leak_it(tmp_path, server):
    server.script(Reply(WRONG), Reply(FIX_AFTER_WRONG))
    repo = make_repo(tmp_path)
    write_config(repo, {"remote": model_entry(server.url, "vendor/model", api_key_env="OPENROUTER_API_KEY")})
    write_agent_ws(repo, "fix", model="remote", gates=[f'echo "debug: key=$OPENROUTER_API_KEY"; {GATE}'])
    proc = run(repo, env=cli_env(OPENROUTER_API_KEY=SECRET))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    repair = last_user(server.chat_requests[1])
    assert "FAIL: test_add" in repair and "debug: key=\n" in repair  # the gate's environment has no key
    assert all(SECRET not in r.body.decode() for r in server.chat_requests)
    conversation = (repo / ".agentrun" / "runs" / look.run_id / "conversations" / "fix.1.jsonl").read_text()
    assert "debug: key=" in conversation and SECRET not in conversation


def test_a_gate_that_asks_for_the_key_gets_it_and_the_model_sees_it_redacted(tmp_path, server):
    server.script(Reply(WRONG), Reply(FIX_AFTER_WRONG))
    repo = make_repo(tmp_path)
    write_config(repo, {"remote": model_entry(server.url, "vendor/model", api_key_env="OPENROUTER_API_KEY")})
    write_agent_ws(repo, "fix", model="remote", secrets=["OPENROUTER_API_KEY"],
                   gates=[f'echo "debug: key=$OPENROUTER_API_KEY"; {GATE}'])
    proc = run(repo, env=cli_env(OPENROUTER_API_KEY=SECRET))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert_fixed(look)
    assert "debug: key=[REDACTED]\n" in last_user(server.chat_requests[1])
    assert all(SECRET not in r.body.decode() for r in server.chat_requests)


def test_a_reply_that_echoes_the_key_is_redacted_before_its_edits_apply_and_in_the_cache(tmp_path, server):
    server.script(Reply(sr("    return a - b\n", f"    return a + b  # {SECRET}\n")))
    repo = make_repo(tmp_path)
    write_config(repo, {"remote": model_entry(server.url, "vendor/model", api_key_env="OPENROUTER_API_KEY")})
    write_agent_ws(repo, "fix", model="remote")
    proc = run(repo, env=cli_env(OPENROUTER_API_KEY=SECRET))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    look = Look(repo)
    assert look.integrated() == "def add(a, b):\n    return a + b  # [REDACTED]\n\n\ndef mul(a, b):\n    return a * b\n"
    [cached] = [json.loads(r["response"]) for r in look.db.execute("SELECT response FROM llm_cache")]
    assert "# [REDACTED]" in cached["content"] and SECRET not in cached["content"]
    [reply] = [r for r in look.conversation("fix") if r["kind"] == "reply"]
    assert "# [REDACTED]" in reply["content"]


def test_gate_output_is_read_from_its_tail_only(tmp_path):
    import tracemalloc
    from agentrun.agents.llm.agent import GATE_OUTPUT_CHARS, read_new_output
    from agentrun.store.redaction import Secrets
    path = tmp_path / "log"
    with open(path, "wb") as fh:
        fh.write(b"before the gates\n")
        fh.write(b"y" * 30_000_000)
        fh.write(f"\nthe key: {SECRET}\nlast line\n".encode())
    fd = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        output = read_new_output(fd, len(b"before the gates\n"), Secrets([SECRET]))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        os.close(fd)
    assert len(output) == GATE_OUTPUT_CHARS and output.endswith("y\nthe key: [REDACTED]\nlast line\n")
    assert peak < 1_000_000, f"read {peak} bytes to send {GATE_OUTPUT_CHARS} characters"

# --- 9. bad input ----------------------------------------------------------------------------------------

def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)").stdout


def test_unknown_model_names_the_closest_preset(tmp_path, server):
    repo = project(tmp_path, server, ws={"fix": {"model": "deepsek-chat"}})
    before = refs(repo)
    proc = run(repo, env=cli_env(OPENROUTER_API_KEY=SECRET))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown model 'deepsek-chat'" in proc.stderr and "deepseek-chat" in proc.stderr
    assert "fix.toml" in proc.stderr and "model" in proc.stderr
    assert not (repo / ".agentrun").exists() and refs(repo) == before
    assert server.requests == []


def test_missing_api_key_stops_before_the_run(tmp_path, server):
    repo = project(tmp_path, server, ws={"fix": {"model": "deepseek-chat"}})
    before = refs(repo)
    proc = run(repo)                                   # no OPENROUTER_API_KEY in the environment
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "OPENROUTER_API_KEY is not set" in proc.stderr and "fix" in proc.stderr
    assert not (repo / ".agentrun").exists() and refs(repo) == before


def test_endpoint_that_does_not_answer_stops_before_the_run(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    repo = make_repo(tmp_path)
    write_config(repo, {"fake": model_entry(url, "fake-model")})
    write_agent_ws(repo, "fix")
    before = refs(repo)
    started = time.monotonic()
    proc = run(repo)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"model endpoint {url} does not answer" in proc.stderr and "connection refused" in proc.stderr
    assert not (repo / ".agentrun").exists() and refs(repo) == before
    assert time.monotonic() - started < 20
