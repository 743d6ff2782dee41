"""`agentrun report`: real runs of the real CLI, then reports read back from their state DB."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import agentrun, state, wait_for, write_ws

from agentrun.views import report_data
from agentrun.views.report import CSV_COLUMNS
FAIL_TEXT = 'b is failing: <&> "quoted"'


def report_cmd(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return agentrun("report", *args, cwd=cwd, timeout=timeout)


def run_workstreams(project: Path, *extra) -> subprocess.CompletedProcess:
    return agentrun("run", "w", "--parallel", "--max-workers", 2, "-q", *extra, cwd=project)


def _write_graph(project: Path) -> None:
    """a -> b (fails twice: one retry), a -> c -> e, b -> d (blocked), f alone."""
    w = project / "w"
    write_ws(w, "a", run="echo a-out; sleep 0.3")
    write_ws(w, "b", run=f"echo '{FAIL_TEXT}'; echo attempt $AGENTRUN_ATTEMPT; exit 3", depends_on=["a"],
             retries=1, retry_backoff="0.05s")
    write_ws(w, "c", run="sleep 0.3", depends_on=["a"])
    write_ws(w, "d", run="true", depends_on=["b"])
    write_ws(w, "e", run="true", depends_on=["c"])
    write_ws(w, "f", run="true")


DEPS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b"], "e": ["c"], "f": []}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    project = tmp_path_factory.mktemp("report") / "proj"
    _write_graph(project)
    proc = run_workstreams(project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    db = state(project)
    run_id = db.latest_run()["id"]
    db.close()
    return project, run_id


def _export_json(project: Path, run_id: str, *extra) -> dict:
    proc = report_cmd("export", run_id, "--format", "json", *extra, cwd=project)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _deciding_durations(attempts) -> dict[str, float]:
    """Per workstream: the duration of its successful attempt, else of its last one."""
    by_ws: dict[str, list] = {}
    for a in attempts:
        by_ws.setdefault(a["ws_id"], []).append(a)
    out = {}
    for ws_id, rows in by_ws.items():
        rows.sort(key=lambda a: a["attempt"])
        done = [a for a in rows if a["status"] == "done"]
        pick = done[-1] if done else rows[-1]
        out[ws_id] = pick["finished_at"] - pick["started_at"]
    return out


def _all_chains(deps: dict[str, list[str]]) -> list[list[str]]:
    """Every dependency chain (in dependency order), by brute force."""
    children: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            children[d].append(node)
    chains = []

    def walk(path):
        chains.append(path)
        for c in children[path[-1]]:
            walk(path + [c])

    for node in deps:
        walk([node])
    return chains


# --- show ------------------------------------------------------------------------

def test_show_numbers_are_consistent(finished):
    project, run_id = finished
    proc = report_cmd("show", cwd=project)  # default: the latest run
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"run {run_id}  failed")

    db = state(project)
    run = db.latest_run()
    attempts = db.attempts(run_id)
    db.close()
    wall = run["finished_at"] - run["created_at"]
    work = sum(a["finished_at"] - a["started_at"] for a in attempts)

    rep = _export_json(project, run_id)["run"]
    assert rep["wall_s"] == pytest.approx(wall, abs=0.002)
    assert rep["work_s"] == pytest.approx(work, abs=0.002)
    assert rep["workers"] == 2
    assert 0 < rep["efficiency"] <= 1
    assert rep["efficiency"] == pytest.approx(work / (wall * 2), abs=0.001)
    shown = int(re.search(r"^efficiency\s+(\d+)%", text, re.M).group(1))
    assert shown == round(rep["efficiency"] * 100)
    assert re.search(rf"^total work\s+\S+ in {len(attempts)} attempts$", text, re.M)
    assert re.search(r"^retries\s+1\s+\(b 1\)$", text, re.M)

    # The critical path is a real dependency chain, and the longest one by actual durations.
    path = rep["critical_path"]
    assert path and all(prev in DEPS[node] for prev, node in zip(path, path[1:]))
    weights = _deciding_durations(attempts)
    ran = {n: [d for d in ds if d in weights] for n, ds in DEPS.items() if n in weights}
    longest = max(sum(weights[n] for n in chain) for chain in _all_chains(ran))
    assert rep["critical_path_s"] == pytest.approx(longest, abs=0.002)
    assert rep["critical_path_s"] == pytest.approx(sum(weights[n] for n in path), abs=0.002)
    assert rep["critical_path_s"] <= rep["wall_s"]
    assert path[0] == "a" and len(path) >= 2  # a sleeps: every longest chain starts there
    assert f"critical path  {' -> '.join(path)}  (" in text


def test_show_rows_and_failure_log_tail(finished):
    project, run_id = finished
    text = report_cmd("show", run_id, cwd=project).stdout
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line[:1] in "abcdef" and len(line.split()) >= 5 and line.split()[0] in DEPS}
    assert rows["a"][1:5] == ["done", "1", "0", "1"]           # status, tries, retries, wave
    assert rows["b"][1:5] == ["failed", "2", "1", "2"]
    assert rows["d"][1:5] == ["blocked", "0", "0", "3"]
    assert "dependency 'b' failed" in text
    failures = text.split("\nfailures\n", 1)[1]
    assert failures.startswith("  b: failed after 2 attempts: exit code 3")
    assert "log: " in failures and "b.2.log" in failures
    assert f"    | {FAIL_TEXT}" in failures
    assert "    | attempt 2" in failures and "attempt 1" not in failures  # the last attempt's log
    assert "tokens" not in text  # no llm_calls table: no cost section


# --- export ----------------------------------------------------------------------

def test_export_json_fields_are_present_documented_and_match_the_db(finished, tmp_path):
    project, run_id = finished
    out = tmp_path / "report.json"
    proc = report_cmd("export", run_id, "--format", "json", "-o", out, cwd=project)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data == {**_export_json(project, run_id), "generated_at": data["generated_at"]}
    assert data["schema"] == "agentrun.report/1"
    assert {"run", "workstreams", "attempts"} <= set(data)

    documented = set(re.findall(r"[a-z_]+", report_data.FIELDS_DOC))
    for obj in [data, data["run"], *data["workstreams"], *data["attempts"]]:
        assert set(obj) <= documented, set(obj) - documented

    db = state(project)
    ws_rows = db.workstreams(run_id)
    attempts = db.attempts(run_id)
    db.close()
    assert data["run"]["id"] == run_id and data["run"]["status"] == "failed"
    assert data["run"]["attempts"] == len(attempts) == len(data["attempts"])
    assert {(a["ws_id"], a["attempt"], a["status"]) for a in data["attempts"]} == \
        {(a["ws_id"], a["attempt"], a["status"]) for a in attempts}
    by_ws = {w["ws_id"]: w for w in data["workstreams"]}
    assert set(by_ws) == set(ws_rows)
    for ws_id, row in ws_rows.items():
        assert by_ws[ws_id]["status"] == row["status"]
        assert by_ws[ws_id]["wave"] == row["wave"] + 1
        assert by_ws[ws_id]["depends_on"] == DEPS[ws_id]
    assert by_ws["b"]["attempts"] == 2 and by_ws["b"]["exit_code"] == 3
    assert FAIL_TEXT in by_ws["b"]["log_tail"]
    assert by_ws["a"]["log_tail"] is None
    assert by_ws["d"]["attempts"] == 0 and by_ws["d"]["duration_s"] is None
    assert data["run"]["llm_recorded"] is False and data["run"]["cost_usd"] is None


def test_export_csv_has_fixed_columns_and_parses_back(finished, tmp_path):
    project, run_id = finished
    proc = report_cmd("export", run_id, "--format", "csv", cwd=project)
    assert proc.returncode == 0, proc.stderr
    reader = csv.DictReader(io.StringIO(proc.stdout))
    assert tuple(reader.fieldnames) == CSV_COLUMNS == (
        "run_id", "ws_id", "status", "attempts", "wave", "started_at", "finished_at", "duration_s", "exit_code",
        "error", "integrated_commit", "integration_seq")
    rows = {r["ws_id"]: r for r in reader}
    db = state(project)
    ws_rows = db.workstreams(run_id)
    db.close()
    assert set(rows) == set(ws_rows)
    for ws_id, r in rows.items():
        assert r["run_id"] == run_id
        assert r["status"] == ws_rows[ws_id]["status"]
        assert int(r["wave"]) == ws_rows[ws_id]["wave"] + 1
    assert rows["b"]["attempts"] == "2" and rows["b"]["exit_code"] == "3"
    assert rows["b"]["error"] == ws_rows["b"]["error"] and rows["b"]["error"].startswith("exit code 3")
    a = rows["a"]
    assert float(a["finished_at"]) - float(a["started_at"]) == pytest.approx(float(a["duration_s"]), abs=0.002)
    assert rows["d"]["started_at"] == "" and rows["d"]["duration_s"] == ""
    out = tmp_path / "r.csv"
    assert report_cmd("export", run_id, "--format", "csv", "-o", out, cwd=project).returncode == 0
    assert out.read_text() == proc.stdout


# --- html ------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictChecker(HTMLParser):
    """Collects problems: unbalanced tags, external references; and every element with its attributes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.decl = None

    def handle_decl(self, decl):
        self.decl = decl

    def handle_starttag(self, tag, attrs):
        self._element(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._element(tag, attrs)

    def _element(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        for name in ("src", "href", "xlink:href"):
            if name in attrs:
                self.problems.append(f"external reference {name}={attrs[name]}")
        if tag in ("script", "link", "iframe", "img"):
            self.problems.append(f"<{tag}> element")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check_html(text: str) -> StrictChecker:
    checker = StrictChecker()
    checker.feed(text)
    checker.close()
    assert checker.decl and checker.decl.lower() == "doctype html"
    assert checker.problems == []
    assert checker.stack == []
    tags = [t for t, _ in checker.elements]
    for main in ("html", "head", "body", "style", "title", "svg", "table"):
        assert main in tags
    return checker


def test_html_is_self_contained_valid_and_has_every_attempt(finished, tmp_path):
    project, run_id = finished
    out = tmp_path / "report.html"
    proc = report_cmd("html", run_id, "-o", out, cwd=project)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    checker = _check_html(text)
    assert "http:" not in text and "https:" not in text and "url(" not in text.replace("url(#arrow", "")

    db = state(project)
    attempts = db.attempts(run_id)
    db.close()
    bars = [a for t, a in checker.elements if t == "rect" and "data-attempt" in a]
    assert len(bars) == len(attempts) == 6  # a, b twice, c, e, f
    assert sorted(b["data-attempt"] for b in bars) == sorted(f"{a['ws_id']}:{a['attempt']}" for a in attempts)
    colors = {b["data-attempt"]: (b["data-status"], b["fill"]) for b in bars}
    assert colors["b:1"] == ("failed", "#d64541") and colors["a:1"] == ("done", "#2e9e4f")
    # Each bar has a tooltip.
    assert text.count("<title>") >= len(attempts) + 1

    rep = _export_json(project, run_id)
    critical = [a["data-ws"] for t, a in checker.elements if t == "g" and "critical" in a.get("class", "")]
    assert sorted(critical) == sorted(rep["run"]["critical_path"])
    nodes = {a["data-ws"] for t, a in checker.elements if t == "g" and "data-ws" in a}
    assert nodes == set(DEPS)
    edges = {a["data-edge"] for t, a in checker.elements if t == "path" and "data-edge" in a}
    assert edges == {f"{d}->{n}" for n, ds in DEPS.items() for d in ds}

    # Text from the run is escaped: it comes back verbatim as data, never as markup.
    assert FAIL_TEXT in "".join(checker.text)
    assert FAIL_TEXT not in text
    assert "b is failing: &lt;&amp;&gt; &quot;quoted&quot;" in text


# --- compare ---------------------------------------------------------------------

def test_compare_two_runs(project):
    w = project / "w"
    write_ws(w, "base", run="true")
    write_ws(w, "flip", run="test -f ok", depends_on=["base"])
    write_ws(w, "old", run="true")
    assert run_workstreams(project).returncode == 1
    db = state(project)
    first = db.latest_run()["id"]
    db.close()
    (project / "ok").touch()
    (w / "old.toml").unlink()
    write_ws(w, "new", run="true")
    assert run_workstreams(project).returncode == 0
    db = state(project)
    second = db.latest_run()["id"]
    db.close()
    assert first != second

    proc = report_cmd("compare", first, second, cwd=project)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"A: run {first}  failed" in text and f"B: run {second}  done" in text
    flip = next(line for line in text.splitlines() if line.startswith("flip "))
    assert "failed -> done" in flip
    base = next(line for line in text.splitlines() if line.startswith("base "))
    assert "->" in base and "failed" not in base
    assert "only in A (1): old" in text and "only in B (1): new" in text
    assert re.search(r"^status\s+failed\s+done\s+changed$", text, re.M)

    cmp = json.loads(report_cmd("compare", first, second, "--format", "json", cwd=project).stdout)
    rows = {r["ws_id"]: r for r in cmp["workstreams"]}
    assert set(rows) == {"base", "flip"}
    assert rows["flip"]["status_a"] == "failed" and rows["flip"]["status_b"] == "done"
    assert rows["flip"]["status_changed"] and not rows["base"]["status_changed"]
    assert rows["flip"]["duration_delta_s"] == pytest.approx(
        rows["flip"]["duration_b_s"] - rows["flip"]["duration_a_s"], abs=1e-6)
    assert cmp["only_in_a"] == ["old"] and cmp["only_in_b"] == ["new"]
    assert cmp["totals"]["workstreams"] == {"a": 3, "b": 3, "delta": 0}
    assert cmp["cost_recorded"] is False and "cost_usd" not in cmp["totals"]


# --- git: conflicts, gates, integration ----------------------------------------------

def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, stdin=subprocess.DEVNULL)


def test_conflicts_gates_and_integration(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Test"), ("user.email", "t@example.com"), ("commit.gpgsign", "false"),
                       ("core.hooksPath", "/dev/null")):
        _git(repo, "config", key, value)
    (repo / "a.txt").write_text("base\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    with open(repo / ".git" / "info" / "exclude", "a") as fh:
        fh.write("/w/\n")
    meet = tmp_path / "meet"
    meet.mkdir()
    # Both edit a.txt and wait for each other, so neither sees the other's result: one conflicts.
    both = f"touch {meet}/$AGENTRUN_WS_ID; while [ $(ls {meet} | wc -l) -lt 2 ]; do sleep 0.02; done"
    write_ws(repo / "w", "left", run=f"echo left > a.txt; {both}", gates=["true"])
    write_ws(repo / "w", "right", run=f"echo right > a.txt; {both}", gates=["true"])
    write_ws(repo / "w", "gated", run="echo x > g.txt", gates=[{"name": "check <g>", "run": "exit 4"}])
    proc = agentrun("run", "w", "--parallel", "--max-workers", 3, "-q", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr

    db = state(repo)
    run_id = db.latest_run()["id"]
    db.close()
    data = _export_json(repo, run_id)
    rows = {w["ws_id"]: w for w in data["workstreams"]}
    loser, winner = sorted(("left", "right"), key=lambda w: rows[w]["status"] != "conflict")
    assert (rows[loser]["status"], rows[winner]["status"]) == ("conflict", "done")
    assert rows[loser]["conflict_files"] == ["a.txt"] and rows[loser]["conflict_with"] == [winner]
    assert rows[winner]["integrated_commit"] and rows[winner]["integration_seq"] == 1
    assert data["run"]["conflicts"] == 1 and data["run"]["integration_branch"]
    gates = {(g["ws_id"], g["gate"]): g for g in data["gates"]}
    assert gates[("gated", "check <g>")]["status"] == "failed" and gates[("gated", "check <g>")]["exit_code"] == 4
    assert gates[(winner, "true")]["status"] == "passed"

    text = report_cmd("show", cwd=repo).stdout
    assert re.search(r"^conflicts\s+1$", text, re.M)
    assert f"\nconflicts\n  {loser}: files a.txt; with {winner}\n" in text
    assert re.search(r"^gates\s+1 failed, 2 passed$", text, re.M)
    assert "  gated #1 verify: check <g>: failed (exit 4)" in text
    assert f"  {loser}: conflict after 1 attempt" in text

    csv_rows = {r["ws_id"]: r for r in csv.DictReader(io.StringIO(
        report_cmd("export", data["run"]["id"], "--format", "csv", cwd=repo).stdout))}
    assert csv_rows[winner]["integrated_commit"] == rows[winner]["integrated_commit"]
    assert csv_rows[winner]["integration_seq"] == "1" and csv_rows[loser]["integration_seq"] == ""

    out = tmp_path / "git.html"
    assert report_cmd("html", data["run"]["id"], "-o", out, cwd=repo).returncode == 0
    html_text = _html_text(out)
    assert 'id="conflicts"' in html_text and 'id="gates"' in html_text
    assert "check &lt;g&gt;" in html_text and "check <g>" not in html_text


# --- tokens and cost ---------------------------------------------------------------

def _copy_db(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst_dir / "state.db")
    source.backup(target)
    source.close()
    return dst_dir / "state.db"


def test_cost_section_only_with_llm_calls(finished, tmp_path):
    project, run_id = finished
    copy = _copy_db(project / ".agentrun" / "state.db", tmp_path / "with-llm")
    db = sqlite3.connect(copy)
    db.executemany("INSERT INTO llm_calls (run_id, ws_id, attempt, model, model_id, provider, status, "
                   "prompt_tokens, completion_tokens, cost_usd, started_at) "
                   "VALUES (?, ?, 1, 'm', 'vendor/m', 'fake', 'ok', ?, ?, ?, 0)",
                   [(run_id, "a", 1000, 200, 0.01), (run_id, "a", 500, 100, 0.005), (run_id, "b", 40, 2, 0.0001),
                    (run_id, "e", 10, 1, None), ("another-run", "a", 9999, 9999, 9.0)])
    db.commit()
    db.close()
    state_dir = str(copy.parent)
    text = report_cmd("show", run_id, "--state-dir", state_dir, cwd=project).stdout
    assert "tokens and cost" in text
    assert re.search(r"^tokens\s+1,550 prompt, 303 completion, \$0\.0151$", text, re.M)
    assert re.search(r"^\s+a\s+2\s+1,500\s+300\s+\$0\.0150$", text, re.M)
    assert re.search(r"^\s+c\s+0\s+0\s+0\s+\$0\.0000$", text, re.M)  # no call
    assert re.search(r"^\s+e\s+1\s+10\s+1\s+-$", text, re.M)  # cost not reported: unknown, not $0

    data = _export_json(project, run_id, "--state-dir", state_dir)
    assert data["run"]["llm_recorded"] is True
    assert (data["run"]["prompt_tokens"], data["run"]["completion_tokens"]) == (1550, 303)
    assert data["run"]["cost_usd"] == pytest.approx(0.0151)
    assert {w["ws_id"]: w["llm_calls"] for w in data["workstreams"]} == {"a": 2, "b": 1, "c": 0, "d": 0, "e": 1,
                                                                         "f": 0}
    html_out = tmp_path / "cost.html"
    assert report_cmd("html", run_id, "-o", html_out, "--state-dir", state_dir, cwd=project).returncode == 0
    assert 'id="cost"' in _html_text(html_out)
    assert 'id="cost"' not in _html_text(tmp_path / "plain.html", project, run_id)

    # The ledger without rows for this run: no section.
    empty = _copy_db(project / ".agentrun" / "state.db", tmp_path / "empty-llm")
    assert "tokens" not in report_cmd("show", run_id, "--state-dir", str(empty.parent), cwd=project).stdout


def _html_text(path: Path, project: Path | None = None, run_id: str | None = None) -> str:
    if project is not None:
        assert report_cmd("html", run_id, "-o", path, cwd=project).returncode == 0
    text = path.read_text()
    _check_html(text)
    return text


# --- a run still going -------------------------------------------------------------



def test_report_on_a_running_run(project, tmp_path):
    gate = project / "release"
    write_ws(project / "w", "quick", run="true")
    write_ws(project / "w", "hold", run=f"touch {project}/started; while [ ! -f {gate} ]; do sleep 0.02; done",
             depends_on=["quick"])
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "--parallel", "--max-workers", "2", "-q"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (project / "started").exists())
        shown = report_cmd("show", cwd=project)
        assert shown.returncode == 0, shown.stderr
        assert "not finished" in shown.stdout
        assert re.search(r"^hold\s+running\s+1\s+0\s+2\s", shown.stdout, re.M)
        data = json.loads(report_cmd("export", shown.stdout.split()[1], cwd=project).stdout)
        assert data["run"]["finished"] is False and data["run"]["finished_at"] is None
        running = [a for a in data["attempts"] if a["status"] == "running"]
        assert [a["ws_id"] for a in running] == ["hold"] and running[0]["duration_s"] >= 0
        assert data["run"]["wall_s"] >= data["run"]["critical_path_s"] > 0
        out = tmp_path / "live.html"
        assert report_cmd("html", data["run"]["id"], "-o", out, cwd=project).returncode == 0
        checker = _check_html(out.read_text())
        assert [a["data-attempt"] for t, a in checker.elements
                if t == "rect" and a.get("data-status") == "running"] == ["hold:1"]
    finally:
        gate.touch()
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_report_on_a_crashed_run_before_and_after_recover(project, tmp_path):
    write_ws(project / "w", "quick", run="true")
    write_ws(project / "w", "hold", run=f"touch {project}/started; sleep 300", depends_on=["quick"])
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (project / "started").exists())
    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and its worker; the command lives on
    proc.wait()
    crashed = report_cmd("show", cwd=project)
    assert crashed.returncode == 0, crashed.stderr
    assert re.search(r"^hold\s+running\s", crashed.stdout, re.M)
    run_id = crashed.stdout.split()[1]
    assert agentrun("recover", run_id, cwd=project).returncode == 0  # also stops the orphaned sleep
    data = json.loads(report_cmd("export", run_id, cwd=project).stdout)
    assert data["run"]["status"] == "interrupted"
    assert {w["ws_id"]: w["status"] for w in data["workstreams"]} == {"quick": "done", "hold": "lost"}
    assert [a["status"] for a in data["attempts"] if a["ws_id"] == "hold"] == ["lost"]


# --- errors and read-only ------------------------------------------------------------

@pytest.mark.parametrize("args", [("show", "no-such-run"), ("export", "no-such-run"),
                                  ("html", "no-such-run", "-o", "x.html"), ("compare", "{run}", "no-such-run")])
def test_unknown_run_id_is_a_usage_error_naming_recent_runs(finished, args):
    project, run_id = finished
    proc = report_cmd(*[a.format(run=run_id) for a in args], cwd=project)
    assert proc.returncode == 2
    assert "error: unknown run id 'no-such-run'" in proc.stderr and run_id in proc.stderr
    assert proc.stdout == ""
    assert not (project / "x.html").exists()


def test_garbage_state_db_is_a_state_error_and_stays_untouched(project):
    state_dir = project / ".agentrun"
    state_dir.mkdir()
    garbage = b"this is not sqlite\x00\x01\x02" * 200
    (state_dir / "state.db").write_bytes(garbage)
    for args in (("show",), ("export", "x"), ("compare", "x", "y"), ("html", "x", "-o", "out.html")):
        proc = report_cmd(*args, cwd=project)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "not a usable agentrun state DB" in proc.stderr
    assert (state_dir / "state.db").read_bytes() == garbage
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.db"]
    assert not (project / "out.html").exists()


def test_missing_state_db_is_a_state_error(project):
    proc = report_cmd("show", cwd=project)
    assert proc.returncode == 2
    assert "no state DB here" in proc.stderr
    assert not (project / ".agentrun").exists()


def test_reports_do_not_modify_the_state_db(finished, tmp_path):
    project, run_id = finished
    files = [project / ".agentrun" / name for name in ("state.db", "state.db-wal")]
    before = {f: f.read_bytes() for f in files if f.exists()}
    for args in (("show",), ("export", run_id, "--format", "csv"), ("compare", run_id, run_id),
                 ("html", run_id, "-o", tmp_path / "x.html")):
        assert report_cmd(*args, cwd=project).returncode == 0
    assert {f: f.read_bytes() for f in files if f.exists()} == before
    refused = report_cmd("export", run_id, "-o", project / ".agentrun" / "state.db", cwd=project)
    assert refused.returncode == 2 and "is the state DB" in refused.stderr
    assert {f: f.read_bytes() for f in files if f.exists()} == before


# --- the pure core -----------------------------------------------------------------

def test_critical_path_is_the_heaviest_chain_and_deterministic():
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "x": []}
    assert report_data.critical_path(deps, {"a": 1, "b": 5, "c": 2, "d": 1, "x": 6.5}) == (["a", "b", "d"], 7)
    # A tie goes to the smaller id: b before c.
    assert report_data.critical_path(deps, {"a": 1, "b": 2, "c": 2, "d": 1, "x": 1}) == (["a", "b", "d"], 4)
    assert report_data.critical_path(deps, {"a": 1, "b": 1, "c": 1, "d": 1, "x": 9}) == (["x"], 9)
    # Workstreams never attempted (no weight) are left out; their dependencies still count.
    assert report_data.critical_path(deps, {"a": 1, "c": 3}) == (["a", "c"], 4)
    assert report_data.critical_path({}, {}) == ([], 0.0)
