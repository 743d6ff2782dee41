"""`agentrun report models`: a real run of the real CLI, a ledger of realistic calls inserted into a copy of
its state DB, and the numbers read back through the command."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import agentrun, state, write_ws

from agentrun.views import report_models as core

COLUMNS = ("run_id", "ws_id", "attempt", "model", "model_id", "provider", "status", "prompt_tokens",
           "completion_tokens", "cost_usd", "started_at", "latency_s")

# alpha: the first choice of a and c. Ten ok calls (two of unknown cost), three rate limited (one of them
# a daily quota), one server error, a cache hit and a budget refusal: neither of the last two was sent.
ALPHA_OK_LATENCIES = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 10.0]
ALPHA_P50 = 2.75      # sorted, rank (10 - 1) * 0.50 = 4.5: halfway between 2.5 and 3.0
ALPHA_P95 = 7.525     # rank 9 * 0.95 = 8.55: 4.5 + 0.55 * (10.0 - 4.5)


def _ledger(run_id: str) -> list[tuple]:
    rows = []
    t = 1_700_000_000.0
    for i, latency in enumerate(ALPHA_OK_LATENCIES):
        ws = "a" if i % 2 == 0 else "c"
        cost = None if i in (3, 7) else 0.001
        rows.append((run_id, ws, 1, "alpha", "vendor/alpha", "openrouter.ai", "ok", 1000, 100, cost, t + i, latency))
    rows += [
        (run_id, "a", 1, "alpha", "vendor/alpha", "openrouter.ai", "rate_limit", None, None, None, t + 20, 0.05),
        (run_id, "c", 1, "alpha", "vendor/alpha", "openrouter.ai", "rate_limit", None, None, None, t + 21, 0.04),
        (run_id, "c", 1, "alpha", "vendor/alpha", "openrouter.ai", "quota", None, None, None, t + 22, 0.03),
        (run_id, "a", 1, "alpha", "vendor/alpha", "openrouter.ai", "server", None, None, None, t + 23, 30.0),
        (run_id, "c", 1, "alpha", "vendor/alpha", "openrouter.ai", "cached", None, None, 0.0, t + 24, 0.0),
        (run_id, "a", 1, "alpha", "vendor/alpha", "openrouter.ai", "budget", None, None, None, t + 25, None),
        # beta: a's fallback (two answers and a timeout), and e's first choice (one answer).
        (run_id, "a", 1, "beta", "vendor/beta", "openrouter.ai", "ok", 800, 80, 0.002, t + 30, 0.7),
        (run_id, "a", 1, "beta", "vendor/beta", "openrouter.ai", "timeout", None, None, None, t + 31, 120.0),
        (run_id, "a", 2, "beta", "vendor/beta", "openrouter.ai", "ok", 900, 90, 0.002, t + 32, 0.9),
        (run_id, "e", 1, "beta", "vendor/beta", "openrouter.ai", "ok", 100, 10, 0.0005, t + 33, 0.3),
        # gamma (a local server without prices): b's first choice; answers whose cost nobody knows.
        (run_id, "b", 1, "gamma", "local", "127.0.0.1:8080", "ok", None, None, None, t + 40, 2.0),
        (run_id, "b", 2, "gamma", "local", "127.0.0.1:8080", "ok", None, None, None, t + 41, 4.0),
        (run_id, "b", 2, "gamma", "local", "127.0.0.1:8080", "context_length", None, None, None, t + 42, 0.1),
        # Another run's calls never count.
        ("20000101-000000-dead", "a", 1, "alpha", "vendor/alpha", "openrouter.ai", "ok", 9999, 9999, 9.0, t, 99.0),
    ]
    return rows


PRIMARY = {"a": "alpha", "c": "alpha", "e": "beta", "b": "gamma"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """a, c, e done; b fails; d blocked behind b. Types: unit_test a b, docs c, fix d, other e."""
    project = tmp_path_factory.mktemp("models") / "proj"
    w = project / "w"
    write_ws(w, "a", run="true", type="unit_test")
    write_ws(w, "b", run="exit 3", type="unit_test")
    write_ws(w, "c", run="true", type="docs")
    write_ws(w, "d", run="true", type="fix", depends_on=["b"])
    write_ws(w, "e", run="true")
    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, "-q", cwd=project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    db = state(project)
    run_id = db.latest_run()["id"]
    db.close()
    return project, run_id


def _copy_with_ledger(project: Path, run_id: str, dst: Path, rows: list[tuple] | None = None,
                      primary: dict[str, str] | None = None) -> Path:
    """A copy of the state DB (and so a state dir without the run's event log) with ledger rows, and the
    first-choice model written into the workstream snapshots as the agent's validation does."""
    dst.mkdir(parents=True)
    source = sqlite3.connect(f"file:{project / '.agentrun' / 'state.db'}?mode=ro", uri=True)
    target = sqlite3.connect(dst / "state.db")
    source.backup(target)
    source.close()
    target.executemany(f"INSERT INTO llm_calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                       _ledger(run_id) if rows is None else rows)
    for ws_id, model in (PRIMARY if primary is None else primary).items():
        target.execute("UPDATE workstreams SET spec = json_set(spec, '$.model', ?) WHERE run_id = ? AND ws_id = ?",
                       (model, run_id, ws_id))
    target.commit()
    target.close()
    return dst


def models_cmd(project: Path, *args):
    return agentrun("report", "models", *args, cwd=project)


def models_json(project: Path, *args) -> dict:
    proc = models_cmd(project, *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_per_model_numbers(finished, tmp_path):
    project, run_id = finished
    state_dir = _copy_with_ledger(project, run_id, tmp_path / "s")
    rep = models_json(project, run_id, "--state-dir", state_dir)
    assert rep["schema"] == "agentrun.models/1"
    assert rep["run"]["id"] == run_id and rep["llm_recorded"] is True
    models = {m["model"]: m for m in rep["models"]}
    assert list(models) == ["alpha", "beta", "gamma"]

    alpha = models["alpha"]
    assert (alpha["calls"], alpha["ok"], alpha["cached"], alpha["budget"], alpha["sent"]) == (16, 10, 1, 1, 14)
    # ok / calls sent: the cache hit and the budget refusal are neither successes nor failures.
    assert alpha["success_rate"] == pytest.approx(10 / 14, abs=1e-4)
    # Only ok calls' latencies: the 30 s server error and the 0 s cache hit stay out.
    assert alpha["latency_p50_s"] == pytest.approx(ALPHA_P50)
    assert alpha["latency_p95_s"] == pytest.approx(ALPHA_P95)
    assert (alpha["prompt_tokens"], alpha["completion_tokens"]) == (10_000, 1_000)
    # Eight known costs of $0.001 (the cache hit's $0 adds nothing); two answers of unknown cost, not $0.
    assert alpha["cost_usd"] == pytest.approx(0.008)
    assert alpha["unknown_cost_calls"] == 2
    assert alpha["rate_limit_hits"] == 3
    assert alpha["errors"] == {"quota": 1, "rate_limit": 2, "server": 1}
    assert alpha["fallbacks"] == 0 and alpha["off_primary_calls"] == 0
    assert alpha["model_ids"] == ["vendor/alpha"]

    beta = models["beta"]
    assert (beta["calls"], beta["ok"], beta["sent"]) == (4, 3, 4)
    assert beta["success_rate"] == pytest.approx(0.75)
    assert beta["latency_p50_s"] == pytest.approx(0.7)
    assert beta["latency_p95_s"] == pytest.approx(0.7 + 0.9 * (0.9 - 0.7))   # rank 2 * 0.95 = 1.9
    assert beta["cost_usd"] == pytest.approx(0.0045) and beta["unknown_cost_calls"] == 0
    assert beta["errors"] == {"timeout": 1} and beta["rate_limit_hits"] == 0
    # No event log in the copied state dir: fallbacks are a's answers from beta (its first choice is alpha).
    assert rep["fallback_source"] == "ledger"
    assert beta["fallbacks"] == 2 and beta["off_primary_calls"] == 3

    gamma = models["gamma"]
    assert gamma["cost_usd"] is None and gamma["unknown_cost_calls"] == 2      # unknown, never $0
    assert gamma["prompt_tokens"] is None and gamma["completion_tokens"] is None
    assert gamma["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert (gamma["latency_p50_s"], gamma["latency_p95_s"]) == (pytest.approx(3.0), pytest.approx(3.9))
    assert gamma["errors"] == {"context_length": 1}

    totals = rep["totals"]
    assert (totals["calls"], totals["sent"], totals["ok"]) == (23, 21, 15)
    assert totals["cost_usd"] == pytest.approx(0.0125) and totals["unknown_cost_calls"] == 4
    assert totals["rate_limit_hits"] == 3 and totals["fallbacks"] == 2


def test_per_type_numbers(finished, tmp_path):
    project, run_id = finished
    state_dir = _copy_with_ledger(project, run_id, tmp_path / "s")
    types = {t["type"]: t for t in models_json(project, run_id, "--state-dir", state_dir)["types"]}
    assert list(types) == ["docs", "fix", "other", "unit_test"]
    ut = types["unit_test"]                   # a done, b failed
    assert (ut["workstreams"], ut["done"], ut["finished"]) == (2, 1, 2)
    assert ut["counts"] == {"done": 1, "failed": 1}
    assert ut["success_rate"] == pytest.approx(0.5)
    # a: alpha's even-numbered ok calls (i = 0, 2, 4, 6, 8: all $0.001), the cache hit and beta's $0.004;
    # b: gamma only, two answers of unknown cost.
    assert ut["llm_calls"] == 5 + 3 + 3 + 3
    assert ut["cost_usd"] == pytest.approx(0.005 + 0.004) and ut["unknown_cost_calls"] == 2
    docs = types["docs"]                      # c: alpha's odd ok calls, two of them (i = 3, 7) unknown
    assert (docs["workstreams"], docs["done"], docs["success_rate"]) == (1, 1, 1.0)
    assert docs["cost_usd"] == pytest.approx(0.003) and docs["unknown_cost_calls"] == 2
    fix = types["fix"]                        # d: blocked behind b, never ran, no call
    assert fix["counts"] == {"blocked": 1} and fix["success_rate"] == 0.0
    assert (fix["llm_calls"], fix["cost_usd"], fix["unknown_cost_calls"]) == (0, 0.0, 0)
    assert types["other"]["cost_usd"] == pytest.approx(0.0005)


def test_fallbacks_from_the_event_log(finished, tmp_path):
    """With the run's events.jsonl present, fallbacks are its llm_fallback events per model."""
    project, run_id = finished
    state_dir = _copy_with_ledger(project, run_id, tmp_path / "s")
    log = state_dir / "runs" / run_id / "events.jsonl"
    log.parent.mkdir(parents=True)
    records = [
        {"seq": 1, "ts": 1.0, "run_id": run_id, "type": "llm_rate_limited", "ws_id": "a", "attempt": 1,
         "model": "alpha", "retry_in": 0.5},
        {"seq": 2, "ts": 2.0, "run_id": run_id, "type": "llm_fallback", "ws_id": "a", "attempt": 1,
         "model": "beta", "detail": "primary unavailable: alpha: rate_limit"},
        {"seq": 3, "ts": 3.0, "run_id": run_id, "type": "llm_rotated", "ws_id": "a", "attempt": 1,
         "model": "alpha", "because": "server"},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"seq": 4, "type": "llm_fallb')  # torn tail
    rep = models_json(project, run_id, "--state-dir", state_dir)
    assert rep["fallback_source"] == "events"
    models = {m["model"]: m for m in rep["models"]}
    assert (models["alpha"]["fallbacks"], models["beta"]["fallbacks"], models["gamma"]["fallbacks"]) == (0, 1, 0)
    assert models["beta"]["off_primary_calls"] == 3     # from the ledger either way
    assert rep["totals"]["fallbacks"] == 1
    text = models_cmd(project, run_id, "--state-dir", state_dir).stdout
    assert "event log is missing" not in text


def test_text_output(finished, tmp_path):
    project, run_id = finished
    state_dir = _copy_with_ledger(project, run_id, tmp_path / "s")
    proc = models_cmd(project, "--state-dir", state_dir)    # default: the latest run
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"run {run_id}  failed")
    # model  calls  cached  success  p50  p95  prompt  completion  cost  429s  fallbacks
    assert re.search(r"^  alpha\s+16\s+1\s+71%\s+2\.75s\s+7\.53s\s+10,000\s+1,000\s+\$0\.0080 \(\+2 unknown\)"
                     r"\s+3\s+0$", text, re.M), text
    assert re.search(r"^  beta\s+4\s+0\s+75%\s+700ms\s+880ms\s+1,800\s+180\s+\$0\.0045\s+0\s+2$", text, re.M), text
    assert re.search(r"^  gamma\s+3\s+0\s+67%\s+3\.00s\s+3\.90s\s+-\s+-\s+- \(\+2 unknown\)\s+0\s+0$", text, re.M), text
    assert re.search(r"^  alpha: quota 1, rate_limit 2, server 1$", text, re.M)
    assert re.search(r"^  beta: timeout 1$", text, re.M)
    assert "not counted as $0" in text
    assert "event log is missing" in text
    assert re.search(r"^  unit_test\s+2\s+1\s+50%\s+14\s+\$0\.0090 \(\+2 unknown\)$", text, re.M), text
    assert re.search(r"^  fix\s+1\s+0\s+0%\s+0\s+\$0\.0000$", text, re.M), text
    assert re.search(r"^LLM calls\s+23 \(21 sent, 15 ok, success 71%\), cost \$0\.0125 \(\+4 unknown\), "
                     r"rate-limited 3, fallbacks 2$", text, re.M), text


def test_run_without_llm_calls(finished):
    project, run_id = finished
    proc = models_cmd(project, run_id)
    assert proc.returncode == 0, proc.stderr
    assert "no LLM calls recorded" in proc.stdout
    assert re.search(r"^  unit_test\s+2\s+1\s+50%\s+0\s+\$0\.0000$", proc.stdout, re.M), proc.stdout
    rep = models_json(project)
    assert rep["llm_recorded"] is False and rep["models"] == []
    assert rep["fallback_source"] == "events"       # the real run's log is there
    assert rep["totals"]["success_rate"] is None and rep["totals"]["cost_usd"] is None


def test_unknown_run_and_missing_state(finished, tmp_path):
    project, _ = finished
    proc = models_cmd(project, "20990101-000000-beef")
    assert proc.returncode == 2 and "unknown run id" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = agentrun("report", "models", cwd=empty)
    assert proc.returncode != 0 and proc.stderr.startswith("error:")
    assert "Traceback" not in proc.stderr


def test_percentile_matches_linear_interpolation():
    assert core.percentile([], 50) is None
    assert core.percentile([4.0], 95) == 4.0
    assert core.percentile([3, 1, 2], 50) == 2
    assert core.percentile(range(1, 21), 50) == pytest.approx(10.5)
    assert core.percentile(range(1, 21), 95) == pytest.approx(19.05)
    assert core.percentile(range(1, 21), 100) == 20


# --- a real agent run against the fake endpoint ------------------------------------------

def test_a_real_agent_run(tmp_path):
    """The agent's first choice answers 404 (dropped), its fallback is rate limited once, then edits; a plain
    command workstream of another type alongside. The report agrees with the ledger and the event log."""
    from fake_llm import FakeLLM, NotFound, RateLimit, Reply
    from gitutil import init_repo

    repo = init_repo(tmp_path / "repo", {"pkg/calc.py": "def add(a, b):\n    return a - b\n"})
    fix = "pkg/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n"
    beta_requests = []

    def answer(req):
        if req.model == "alpha-id":
            return NotFound()
        beta_requests.append(req)
        return RateLimit(retry_after="0.1") if len(beta_requests) == 1 else Reply(content=fix, cost=0.00025)

    with FakeLLM(default=answer) as server:
        lines = []
        for name in ("alpha", "beta"):
            lines += [f"[models.{name}]", f'id = "{name}-id"', f'base_url = "{server.url}"', 'api_key_env = ""',
                      "context_window = 8192", 'edit_format = "diff"', ""]
        (repo / "w" / "agentrun.toml").write_text("\n".join(lines))
        write_ws(repo / "w", "fix-add", agent="llm", model="alpha", fallbacks=["beta"], type="fix",
                 files=["pkg/calc.py"], gates=["grep -q 'a + b' pkg/calc.py"])
        write_ws(repo / "w", "notes", run="echo notes > NOTES", type="docs", files=["NOTES"])
        proc = agentrun("run", "w", "--parallel", "--max-workers", 2, "-q", cwd=repo,
                        env={"AGENTRUN_LLM_LIMITER": ""})
        assert proc.returncode == 0, proc.stdout + proc.stderr

    db = sqlite3.connect(repo / ".agentrun" / "state.db")
    ledger = db.execute("SELECT model, status, latency_s, prompt_tokens, cost_usd FROM llm_calls "
                        "ORDER BY id").fetchall()
    db.close()
    assert [(m, s) for m, s, *_ in ledger] == [("alpha", "not_found"), ("beta", "rate_limit"), ("beta", "ok")]
    ok_latency, ok_prompt = ledger[2][2], ledger[2][3]

    rep = models_json(repo)
    assert rep["fallback_source"] == "events"
    models = {m["model"]: m for m in rep["models"]}
    alpha, beta = models["alpha"], models["beta"]
    assert (alpha["calls"], alpha["sent"], alpha["success_rate"]) == (1, 1, 0.0)
    assert alpha["errors"] == {"not_found": 1} and alpha["latency_p50_s"] is None
    assert alpha["cost_usd"] == 0.0 and alpha["unknown_cost_calls"] == 0   # a refused call costs nothing
    assert (beta["calls"], beta["ok"], beta["success_rate"], beta["rate_limit_hits"]) == (2, 1, 0.5, 1)
    assert beta["fallbacks"] == 1 and beta["off_primary_calls"] == 2
    assert beta["latency_p50_s"] == beta["latency_p95_s"] == pytest.approx(ok_latency, abs=0.001)
    assert beta["prompt_tokens"] == ok_prompt
    assert beta["cost_usd"] == pytest.approx(0.00025) and beta["unknown_cost_calls"] == 0
    types = {t["type"]: t for t in rep["types"]}
    assert (types["fix"]["done"], types["fix"]["success_rate"], types["fix"]["llm_calls"]) == (1, 1.0, 3)
    assert types["fix"]["cost_usd"] == pytest.approx(0.00025)
    assert (types["docs"]["llm_calls"], types["docs"]["cost_usd"]) == (0, 0.0)
