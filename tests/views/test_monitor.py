"""``agentrun monitor``: real runs of the real CLI, followed from another process."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import agentrun, events, pid_alive, state, wait_for, write_ws


# --- helpers -------------------------------------------------------------------------
def monitor_argv(*args) -> list[str]:
    return [sys.executable, "-m", "agentrun", "monitor", *map(str, args)]


def monitor(*args, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(monitor_argv(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start(argv: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, **kw)


class Output:
    """A child's output collected on a thread, so a test can wait (bounded) for what it prints."""

    def __init__(self, stream):
        self.text = ""
        self.closed = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for chunk in iter(lambda: stream.readline(), ""):
            with self._cond:
                self.text += chunk
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.text):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"output never matched; got:\n{self.text}")
                self._cond.wait(left)
            return self.text

    def wait_closed(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.closed and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self.text


class Pty:
    """Runs a command with its stdout on a pseudo-terminal of a given size; collects what it draws."""

    def __init__(self, argv: list[str], cwd: Path, rows: int = 24, cols: int = 100):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        self.master = master
        self.data = b""
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the slave side is closed
                chunk = b""
            with self._cond:
                if not chunk:
                    self.closed = True
                    self._cond.notify_all()
                    return
                self.data += chunk
                self._cond.notify_all()

    closed = False

    def wait_for(self, predicate, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.data):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"terminal never showed it; got:\n{self.data[-3000:]!r}")
                self._cond.wait(left)
            return self.data

    def finish(self, timeout: float = 60.0) -> tuple[int, bytes]:
        code = self.proc.wait(timeout=timeout)
        with self._cond:
            self._cond.wait_for(lambda: self.closed, timeout=10)
        os.close(self.master)
        return code, self.data




def event_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\d\d:\d\d:\d\d  ", line)]


def waiting_command(release: Path) -> str:
    return f"while [ ! -e {release} ]; do sleep 0.05; done"


def run_live(project: Path, *args, **kw) -> tuple[subprocess.Popen, Output, str]:
    """Start ``agentrun run w ...``; return once a workstream has started (the run is recorded)."""
    proc = start([sys.executable, "-m", "agentrun", "run", "w", *map(str, args)], project, **kw)
    out = Output(proc.stdout)
    out.wait_for(lambda t: "ws_started" in t)
    return proc, out, state(project).latest_run()["id"]


def snapshot_dir(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode()


def add_llm_calls(project: Path, run_id: str, calls: list[tuple[str, int, int, float]]) -> None:
    """Ledger rows as the LLM agent records them (the monitor only reads them)."""
    db = sqlite3.connect(project / ".agentrun" / "state.db")
    db.executemany("INSERT INTO llm_calls (run_id, ws_id, attempt, model, model_id, provider, status, "
                   "prompt_tokens, completion_tokens, cost_usd, started_at) "
                   "VALUES (?, ?, 1, 'm', 'vendor/m', 'fake', 'ok', ?, ?, ?, 0)", [(run_id, *c) for c in calls])
    db.commit()
    db.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- following -------------------------------------------------------------------------
def test_finished_run_prints_its_events_then_the_summary_and_changes_nothing(project):
    write_ws(project / "w", "a", run="true")
    write_ws(project / "w", "b", run="true", depends_on=["a"])
    assert agentrun("run", "w", cwd=project).returncode == 0
    run_id = state(project).latest_run()["id"]
    before = snapshot_dir(project / ".agentrun")
    out = monitor(cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    recorded = events(project, run_id)
    assert len(event_lines(out.stdout)) == len(recorded)
    assert any("ws_done" in line and " b" in line for line in lines)
    assert lines[-1].startswith(f"run {run_id} done in ") and lines[-1].endswith(": 2 done")
    assert out.stderr == ""
    same = monitor(run_id, cwd=project)
    assert same.returncode == 0 and same.stdout == out.stdout
    assert snapshot_dir(project / ".agentrun") == before


def test_live_run_is_followed_until_it_ends(project):
    release = project / "release"
    write_ws(project / "w", "hold1", run=waiting_command(release))
    write_ws(project / "w", "hold2", run=waiting_command(release))
    write_ws(project / "w", "after", run="true", depends_on=["hold1"])
    run, run_out, run_id = run_live(project, "--parallel", "--max-workers", 2)
    mon = start(monitor_argv(run_id), project)
    mon_out = Output(mon.stdout)
    try:
        mon_out.wait_for(lambda t: "ws_started" in t)
        assert mon.poll() is None  # still following: the run has not ended
        assert "run_finished" not in mon_out.text
        release.touch()
        assert mon.wait(timeout=60) == 0, mon_out.wait_closed() + mon.stderr.read()
    finally:
        release.touch()
        run.wait(timeout=60)
    text = mon_out.wait_closed()
    assert run.returncode == 0
    lines = text.splitlines()
    assert lines[-1].startswith(f"run {run_id} done in ") and lines[-1].endswith(": 3 done")
    # Every event exactly once, in order: nothing lost or repeated across the incremental reads.
    recorded = events(project, run_id)
    shown = event_lines(text)
    assert len(shown) == len(recorded)
    assert [line.split()[1] for line in shown] == [e["type"] for e in recorded]
    assert "run_finished" in shown[-1]


def test_dead_orchestrator_is_reported_and_the_run_left_alone(project):
    release = project / "never-created"
    for ws_id in ("stuck1", "stuck2"):
        write_ws(project / "w", ws_id, run=waiting_command(release))
    # Its own session: its workers share its process group, which the test can kill afterwards.
    run, run_out, run_id = run_live(project, "--parallel", "--max-workers", 2, start_new_session=True)
    db = state(project)
    try:
        wait_for(lambda: len([a for a in db.attempts(run_id) if a["pid"]]) == 2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        before = db.latest_run()
        result = monitor(run_id, cwd=project, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        last = result.stdout.splitlines()[-1]
        assert "orchestrator is gone" in last and f"agentrun recover {run_id}" in last
        assert "ws_started" in result.stdout
        after = db.latest_run()
        assert after["status"] == "running" and tuple(after) == tuple(before)
        assert {a["status"] for a in db.attempts(run_id)} == {"running"}
    finally:
        leftovers = []
        for a in db.attempts(run_id):
            if a["pgid"]:
                _kill_group(a["pgid"])
                leftovers.append(a["pid"])
            if a["external_id"] and a["external_id"].startswith("local:"):
                worker = int(a["external_id"].split(":")[1])
                _kill(worker)
                leftovers.append(worker)
        _kill_group(run.pid)
        db.close()
    wait_for(lambda: not any(pid_alive(p) for p in leftovers))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_terminal_panel_is_redrawn_in_place(project):
    release = project / "release"
    write_ws(project / "w", "slow-one", run=waiting_command(release), estimate="30s")
    for i in range(30):
        write_ws(project / "w", f"later{i:02d}", run="true", depends_on=["slow-one"], estimate="2s")
    run, run_out, run_id = run_live(project)
    rows, cols = 16, 72
    term = Pty(monitor_argv(run_id), project, rows=rows, cols=cols)
    try:
        # Two frames drawn: the second starts by moving the cursor up over the first.
        term.wait_for(lambda d: re.search(rb"\x1b\[\d+F", d) is not None)
        release.touch()
        code, data = term.finish()
    finally:
        release.touch()
        run.wait(timeout=60)
    assert code == 0, data[-2000:]
    text = data.decode()
    assert "\x1b[2J" not in text and "\x1b[H" not in text     # no full-screen clear
    frames = re.split(r"\x1b\[\d+F", text)
    assert len(frames) >= 2
    first = frames[0].split("\r\n")
    assert first[0].startswith("\x1b[?25l") and f"run {run_id}" in first[0] and "running" in first[0]
    assert "eta " in first[0]
    assert "slow-one" in frames[0] and "later" in frames[0] and "more:" in frames[0]
    for frame in frames:
        body = [line for line in frame.split("\r\n") if line and not line.startswith("\x1b[J")]
        assert len(body) <= rows
        for line in body:
            visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line)
            assert len(visible) < cols, line
    assert f"run {run_id} done in " in frames[-1]
    assert text.rstrip().endswith("\x1b[?25h")   # the cursor is shown again


# --- one-shot views ------------------------------------------------------------------------
def test_summary_lists_recent_runs(project):
    write_ws(project / "w", "ok", run="true")
    assert agentrun("run", "w", cwd=project).returncode == 0
    first = state(project).latest_run()["id"]
    write_ws(project / "w", "ko", run="exit 4")
    assert agentrun("run", "w", "--parallel", "--max-workers", 3, cwd=project).returncode == 1
    second = state(project).latest_run()["id"]
    out = monitor("--summary", cwd=project)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "wall", "workers", "workstreams"]
    assert lines[1].startswith(second) and lines[2].startswith(first)   # newest first
    # 3 workers asked for, 2 workstreams to run: 2 workers.
    assert lines[1].split()[1:2] == ["failed"] and lines[1].split()[3] == "2" and "1 done, 1 failed" in lines[1]
    assert lines[2].split()[1:2] == ["done"] and lines[2].split()[3] == "1" and "1 done" in lines[2]
    only = monitor("--summary", first, cwd=project)
    assert only.returncode == 0 and len(only.stdout.splitlines()) == 2 and first in only.stdout
    limited = monitor("--summary", "--limit", 1, cwd=project)
    assert limited.returncode == 0 and second in limited.stdout and first not in limited.stdout
    # Following a run that ended: exit 0 whatever its outcome, unless --exit-status asks for it.
    assert monitor(second, cwd=project).returncode == 0
    assert monitor(second, "--exit-status", cwd=project).returncode == 1
    assert monitor(first, "--exit-status", cwd=project).returncode == 0


def test_web_serves_the_page_the_api_and_metrics(project):
    write_ws(project / "w", "alpha", run="true")
    write_ws(project / "w", "beta", run="exit 3")
    agentrun("run", "w", cwd=project)
    run_id = state(project).latest_run()["id"]
    before = snapshot_dir(project / ".agentrun")
    server = start(monitor_argv("--web", "--port", 0), project)
    out = Output(server.stdout)
    try:
        url = out.wait_for(lambda t: "\n" in t).splitlines()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url

        code, ctype, page = get(url)
        assert code == 200 and ctype.startswith("text/html")
        assert run_id in page and "alpha" in page and "beta" in page and "exit code 3" in page
        assert "<script" in page and "http://" not in page.replace(url, "") and "https://" not in page

        code, ctype, body = get(url + "api/runs")
        assert code == 200 and ctype.startswith("application/json")
        runs = json.loads(body)
        assert runs[0]["id"] == run_id and runs[0]["counts"] == {"done": 1, "failed": 1}

        code, _, body = get(url + f"api/runs/{run_id}")
        data = json.loads(body)
        assert code == 200 and data["run"]["id"] == run_id and data["run"]["status"] == "failed"
        assert data["counts"] == {"done": 1, "failed": 1} and data["total"] == 2
        assert {w["ws_id"]: w["status"] for w in data["workstreams"]} == {"alpha": "done", "beta": "failed"}
        assert data["workstreams"][0]["ws_id"] == "beta"          # problems before finished work
        assert data["events"][-1]["type"] == "run_finished" and data["usage"] is None
        assert "tokens" not in data["workstreams"][0]
        assert json.loads(get(url + "api/runs/latest")[2])["run"]["id"] == run_id
        assert get(url + f"runs/{run_id}")[0] == 200

        code, ctype, metrics = get(url + "metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert f'agentrun_workstreams{{run_id="{run_id}",status="done"}} 1' in metrics
        assert f'agentrun_workstreams{{run_id="{run_id}",status="failed"}} 1' in metrics
        assert f'agentrun_run_info{{run_id="{run_id}",status="failed",schedule="eager"}} 1' in metrics
        assert f'agentrun_attempts_total{{run_id="{run_id}",status="done"}} 1' in metrics
        assert "# TYPE agentrun_workstreams gauge" in metrics
        assert "# TYPE agentrun_attempts_total counter" in metrics
        _check_exposition(metrics)

        code, ctype, body = get(url + "api/runs/no-such-run")
        assert code == 404 and ctype.startswith("application/json") and "no-such-run" in json.loads(body)["error"]
        assert get(url + "nope")[0] == 404
        assert get(url + "runs/no-such-run")[0] == 404
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=30)
    assert code == 0
    assert out.wait_closed().splitlines() == [url]      # nothing printed per request
    assert server.stderr.read() == ""
    assert snapshot_dir(project / ".agentrun") == before


def raw_get(port: int, path: str, *hosts: str) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port`` with exactly these Host headers (none: HTTP/1.0)."""
    version = "HTTP/1.1" if hosts else "HTTP/1.0"
    head = f"GET {path} {version}\r\n" + "".join(f"Host: {h}\r\n" for h in hosts) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.encode())
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    return int(data.split(b" ", 2)[1]), data.decode()


def test_web_answers_only_requests_for_loopback_names(project):
    write_ws(project / "w", "alpha", run="true")
    agentrun("run", "w", cwd=project)
    run_id = state(project).latest_run()["id"]
    server = start(monitor_argv("--web", "--port", 0), project)
    out = Output(server.stdout)
    try:
        url = out.wait_for(lambda t: "\n" in t).splitlines()[0]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        for path in ("/", f"/runs/{run_id}", "/api/runs", f"/api/runs/{run_id}", "/metrics"):
            for hosts in (["evil.example.com"], [f"evil.example.com:{port}"], ["127.0.0.1.evil.example.com"],
                          ["localhost@evil.example.com"], ["10.0.0.1"], ["localhost", "evil.example.com"]):
                code, reply = raw_get(port, path, *hosts)
                assert code == 421 and run_id not in reply, (path, hosts)
            for hosts in ([f"127.0.0.1:{port}"], ["localhost"], [f"localhost:{port}"], [f"[::1]:{port}"],
                          ["127.0.0.2"], ["monitor.localhost"], []):
                code, reply = raw_get(port, path, *hosts)
                assert code == 200 and run_id in reply, (path, hosts)
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=30)
    assert code == 0 and server.stderr.read() == ""


def test_web_on_every_interface_still_refuses_foreign_names(project):
    write_ws(project / "w", "alpha", run="true")
    agentrun("run", "w", cwd=project)
    run_id = state(project).latest_run()["id"]
    server = start(monitor_argv("--web", "--port", 0, "--host", "0.0.0.0"), project)
    out = Output(server.stdout)
    try:
        url = out.wait_for(lambda t: "\n" in t).splitlines()[0]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert raw_get(port, "/api/runs", "evil.example.com")[0] == 421
        for host in (f"192.0.2.7:{port}", socket.gethostname(), "localhost"):
            code, reply = raw_get(port, "/api/runs", host)
            assert code == 200 and run_id in reply, host
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert "warning: listening on 0.0.0.0" in server.stderr.read()


@pytest.mark.parametrize("listen, hosts, client, allowed", [
    (None, ["localhost:8765"], "127.0.0.1", True),
    (None, ["LOCALHOST."], "127.0.0.1", True),
    (None, ["127.255.0.1"], "127.0.0.1", True),
    (None, ["[::1]"], "::1", True),
    (None, [], "127.0.0.1", True),
    (None, [], "::ffff:127.0.0.1", True),
    (None, ["evil.example.com"], "127.0.0.1", False),
    (None, ["[::1]x"], "127.0.0.1", False),
    (None, ["localhost:99999999"], "127.0.0.1", False),
    ("192.0.2.7", ["192.0.2.7:8765"], "192.0.2.9", True),
    ("192.0.2.7", ["192.0.2.8:8765"], "192.0.2.9", False),
    ("192.0.2.7", [], "192.0.2.9", False),
    ("monitor.example.org", ["Monitor.Example.Org:8765"], "192.0.2.9", True),
    ("monitor.example.org", ["evil.example.com"], "192.0.2.9", False),
    ("::", ["[2001:db8::1]:8765"], "2001:db8::2", True),
    ("::", ["evil.example.com"], "2001:db8::2", False),
])
def test_host_policy(listen, hosts, client, allowed):
    from agentrun.views.web import HostPolicy
    assert HostPolicy.for_listen(listen).allows(hosts, client) is allowed


def _check_exposition(text: str) -> None:
    """Every line is a comment or ``name{labels} value``; HELP and TYPE come before a family's samples."""
    typed = set()
    sample = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
                        r'(-?[0-9.e+-]+|NaN|[+-]Inf)')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif not line.startswith("# HELP "):
            match = sample.fullmatch(line)
            assert match, line
            assert match.group(1) in typed, line
    assert text.endswith("\n")


def test_llm_usage_appears_only_when_recorded(project):
    write_ws(project / "w", "chat", run="true")
    write_ws(project / "w", "quiet", run="true")
    assert agentrun("run", "w", cwd=project).returncode == 0
    run_id = state(project).latest_run()["id"]
    add_llm_calls(project, run_id, [("chat", 1000, 200, 0.25), ("chat", 500, 100, 0.125)])
    add_llm_calls(project, "another-run", [("chat", 7, 7, 7.0)])
    server = start(monitor_argv("--web", "--port", 0, run_id), project)
    out = Output(server.stdout)
    try:
        url = out.wait_for(lambda t: "\n" in t).splitlines()[0]
        data = json.loads(get(url + f"api/runs/{run_id}")[2])
        by_ws = {w["ws_id"]: w for w in data["workstreams"]}
        assert (by_ws["chat"]["tokens"], by_ws["chat"]["cost_usd"]) == (1800, 0.375)
        assert (by_ws["quiet"]["tokens"], by_ws["quiet"]["cost_usd"]) == (0, 0.0)
        assert data["usage"] == {"tokens": 1800, "cost_usd": 0.375}
        metrics = get(url + "metrics")[2]
        assert f'agentrun_llm_tokens_total{{run_id="{run_id}"}} 1800' in metrics
        assert f'agentrun_llm_cost_usd_total{{run_id="{run_id}"}} 0.375' in metrics
        _check_exposition(metrics)
        add_llm_calls(project, run_id, [("quiet", 10, 5, 0.5)])    # new calls show up on the next look
        data = json.loads(get(url + f"api/runs/{run_id}")[2])
        assert data["usage"] == {"tokens": 1815, "cost_usd": 0.875}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    term = Pty(monitor_argv(run_id), project, rows=20, cols=100)
    code, data = term.finish()
    assert code == 0
    text = data.decode()
    assert "tokens" in text and "cost" in text and "1,800" in text and "$0.38" in text


# --- bad input ------------------------------------------------------------------------------
def test_unknown_run_id_is_a_usage_error(project):
    write_ws(project / "w", "a", run="true")
    agentrun("run", "w", cwd=project)
    before = snapshot_dir(project / ".agentrun")
    for args in (["no-such-run"], ["no-such-run", "--web", "--port", 0], ["no-such-run", "--summary"]):
        out = monitor(*args, cwd=project)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "unknown run id 'no-such-run'" in out.stderr and out.stdout == ""
    bad = monitor("--port", 0, cwd=project)
    assert bad.returncode == 2 and "--web" in bad.stderr
    assert snapshot_dir(project / ".agentrun") == before


def test_missing_or_corrupt_state_db_is_refused_untouched(project):
    out = monitor(cwd=project)
    assert out.returncode == 2 and "no state DB" in out.stderr
    assert not (project / ".agentrun").exists()
    state_dir = project / ".agentrun"
    state_dir.mkdir()
    garbage = os.urandom(64) + b"this is not an SQLite database" * 200
    (state_dir / "state.db").write_bytes(garbage)
    for args in ([], ["--summary"], ["--web", "--port", 0]):
        out = monitor(*args, cwd=project)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("error: ") and "state DB" in out.stderr
        assert "Traceback" not in out.stderr
    assert (state_dir / "state.db").read_bytes() == garbage
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.db"]


# --- cost -----------------------------------------------------------------------------------
def test_following_a_busy_run_costs_little_cpu(project):
    release = project / "release"
    write_ws(project / "w", "gate", run=waiting_command(release))
    for i in range(300):
        write_ws(project / "w", f"n{i:03d}", run=["true"], depends_on=["gate"])
    run, run_out, run_id = run_live(project, "--parallel", "--max-workers", 4)
    plain = start(monitor_argv(run_id), project)
    plain_out = Output(plain.stdout)
    term = Pty(monitor_argv(run_id), project, rows=40, cols=120)
    try:
        plain_out.wait_for(lambda t: "ws_started" in t)
        term.wait_for(lambda d: b"gate" in d)
        t0 = time.monotonic()
        base = {p.pid: cpu_seconds(p.pid) for p in (plain, term.proc)}
        release.touch()
        used = {}
        for p in (plain, term.proc):
            _, status, usage = os.wait4(p.pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            used[p.pid] = usage.ru_utime + usage.ru_stime - base[p.pid]
        wall = time.monotonic() - t0
    finally:
        release.touch()
        run.wait(timeout=120)
    assert len(event_lines(plain_out.wait_closed())) == len(events(project, run_id)) > 900
    for pid, cpu in used.items():
        # The target is a few percent of a core; the bound only catches a busy loop on a loaded machine.
        assert cpu / wall < 0.25, (cpu, wall)


# --- pure parts ------------------------------------------------------------------------------
def test_panel_fits_any_terminal_and_escapes_recorded_text():
    from agentrun.views.monitor import RunView, fit, render_panel

    now = time.time()
    run = {"id": "r1", "status": "running", "created_at": now - 30, "finished_at": None, "max_workers": 2,
           "heartbeat_at": now, "orchestrator_pid": os.getpid(), "orchestrator_start": None}
    rows = [{"ws_id": f"w{i}", "status": "failed", "attempt": 1, "wave": 0, "started_at": now - 9,
             "finished_at": now - 1, "estimate": 1.0, "error": "boom\x1b[31m red\nsecond line"} for i in range(50)]
    view = RunView(run, {"failed": 50, "pending": 950}, rows, 100.0, None, now)
    evs = [{"ts": now, "type": "ws_failed", "ws_id": "w1", "attempt": 1, "error": "x\x1b]0;title\x07y"}]
    for width, height in ((200, 60), (80, 24), (30, 6), (12, 3), (1, 1)):
        lines = render_panel(view, evs, width, height)
        assert 1 <= len(lines) <= max(height - 1, 1)
        assert all(len(line) <= max(width - 1, 10) for line in lines)
        assert not any("\x1b" in line or "\n" in line or "\x07" in line for line in lines)
    lines = render_panel(view, evs, 100, 30)
    assert lines[0].startswith("agentrun monitor  run r1  running") and "eta 50s" in lines[0]
    assert lines[1].startswith("0/1000 done  failed 50  pending 950")
    assert any(line.startswith("... ") and "failed" in line and "pending 950" in line for line in lines)
    assert fit("日本語テキスト", 5) == "日本"


def test_orchestrator_is_gone_only_when_dead_and_silent():
    from agentrun.views import monitor
    from agentrun.views.monitor import orchestrator_state
    from agentrun.run.orchestrator import RUN_HEARTBEAT_SECONDS

    assert monitor.HEARTBEAT_SECONDS == RUN_HEARTBEAT_SECONDS
    now = time.time()
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = {"status": "running", "created_at": now - 100, "orchestrator_start": None}
    assert orchestrator_state({**base, "heartbeat_at": now - 1, "orchestrator_pid": dead.pid}, now)[0] == "alive"
    assert orchestrator_state({**base, "heartbeat_at": now - 60, "orchestrator_pid": dead.pid}, now)[0] == "gone"
    assert orchestrator_state({**base, "heartbeat_at": now - 60, "orchestrator_pid": os.getpid()}, now)[0] == "stale"
    assert orchestrator_state({**base, "heartbeat_at": None, "orchestrator_pid": None}, now)[0] == "gone"
    assert orchestrator_state({**base, "status": "done", "heartbeat_at": 0, "orchestrator_pid": None}, now)[0] == "-"


@pytest.mark.parametrize("value, escaped", [('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb")])
def test_metric_label_values_are_escaped(value, escaped):
    from agentrun.views.web import _label
    assert _label(value) == escaped
