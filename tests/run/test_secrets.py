"""API keys: kept out of commands' environments, redacted from everything agentrun writes; logs capped.

The leak test runs the real CLI in a real git repository, with a unique key in
the variable a ``[models.x]`` entry names, against the fake OpenAI-compatible
server of ``fake_llm``, and then looks for the key in every file under
``.agentrun/``, every git object reachable from a ref, and the output of every
command that shows a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import secrets as random_secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agentrun.store import redaction
from agentrun.run.attempt import LOG_HEAD_BYTES, LOG_TAIL_BYTES, Job, RunContext, decide_outcome
from agentrun.store.events import EventLog, read_events
from agentrun.proc.command import ExecResult
from agentrun.store.layout import Layout
from agentrun.spec.models import Model
from agentrun.spec.command import Command
from agentrun.spec.workstream import LLMSettings, Workstream
from agentrun.store.state import StateStore
from conftest import agentrun, running_log, state, toml_value, wait_for, write_ws
from fake_llm import FakeLLM, Reply
from gitutil import git, init_repo, show

KEY_VAR = "LEAKTEST_API_KEY"
CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = ("import unittest\n\nfrom pkg.calc import add\n\n\n"
             "class CalcTest(unittest.TestCase):\n"
             "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n")
GATE = "python3 -m unittest discover -s tests -t ."
# Runs argv[1:] and prints its peak RSS in KiB, last, to stderr.
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any API key it may have, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(extra)
    return env


def cli(cwd: Path, *args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrun", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def write_toml(path: Path, sections: dict[str, dict]) -> None:
    lines = []
    for name, fields in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")


# --- the leak test ---------------------------------------------------------------------------------

def test_an_api_key_appears_nowhere_agentrun_writes_or_prints(tmp_path):
    key = "sk-test-" + random_secrets.token_hex(16)
    repo = init_repo(tmp_path / "repo", {"pkg/__init__.py": "", "pkg/calc.py": CALC, "tests/__init__.py": "",
                                         "tests/test_calc.py": TEST_CALC})
    with FakeLLM() as server:
        # The model's reply echoes the key inside the edit it makes.
        server.script(Reply(f"pkg/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n"
                            f"    return a + b  # {key}\n>>>>>>> REPLACE\n"))
        write_toml(repo / "w" / "agentrun.toml", {"models.x": {
            "id": "fake-model", "base_url": server.url, "api_key_env": KEY_VAR, "context_window": 8192,
            "edit_format": "diff", "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}})
        write_ws(repo / "w", "env-dump", run="env")
        write_ws(repo / "w", "asks", secrets=[KEY_VAR],
                 run=f'echo "given: ${KEY_VAR}"; test -n "${KEY_VAR}"')
        write_ws(repo / "w", "fails", secrets=[KEY_VAR], run=f'echo "the key is ${KEY_VAR}"; exit 3')
        write_ws(repo / "w", "agent", agent="llm", model="x", files=["pkg/calc.py"], gates=[f"env; {GATE}"])
        env = clean_env(**{KEY_VAR: key})
        proc = cli(repo, "run", "w", "--parallel", "--max-workers", "2", env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        requests = server.chat_requests

    # The key did reach the model, and a workstream that asked for it got it.
    assert [r.header("Authorization") for r in requests] == [f"Bearer {key}"]
    db = state(repo)
    run = db.latest_run()
    rows = db.workstreams(run["id"])
    db.close()
    assert {w: r["status"] for w, r in rows.items()} == {"env-dump": "done", "asks": "done", "fails": "failed",
                                                         "agent": "done"}
    assert rows["fails"]["error"] == "exit code 3: the key is [REDACTED]"
    assert "return a + b  # [REDACTED]" in show(repo, f"{run['integration_branch']}:pkg/calc.py")

    outputs = {"run": proc.stdout + proc.stderr}
    for ws_id in rows:
        shown = cli(repo, "logs", run["id"], ws_id, env=env)
        assert shown.returncode == 0, shown.stderr
        outputs[f"logs {ws_id}"] = shown.stdout + shown.stderr
    # Commands run without the variable (not merely with its value redacted).
    assert "AGENTRUN_WS_ID=env-dump" in outputs["logs env-dump"] and KEY_VAR not in outputs["logs env-dump"]
    assert KEY_VAR not in outputs["logs agent"] and "AGENTRUN_WS_ID=agent" in outputs["logs agent"]
    assert "given: [REDACTED]" in outputs["logs asks"]
    html = tmp_path / "run.html"
    for args in (["status"], ["status", run["id"]], ["logs", run["id"], "agent", "--conversation"],
                 ["report", "show", run["id"]], ["report", "export", run["id"], "--format", "json"],
                 ["report", "export", run["id"], "--format", "csv"], ["report", "html", run["id"], "-o", html],
                 ["report", "models", run["id"]], ["monitor", run["id"]]):
        shown = cli(repo, *args, env=env)
        assert shown.returncode in (0, 1), (args, shown.stderr)
        outputs[" ".join(map(str, args))] = shown.stdout + shown.stderr
    outputs["report html file"] = html.read_text()
    assert "[REDACTED]" in outputs["report show " + run["id"]]       # the failure is shown, redacted
    assert "[REDACTED]" in outputs[f"logs {run['id']} agent --conversation"]
    for name, text in outputs.items():
        assert key not in text, name

    files = [p for p in (repo / ".agentrun").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"state.db", "events.jsonl", "agent.1.jsonl", "fails.1.log"} <= names
    for path in files:      # the DB, its WAL, events, logs, conversations, kept worktrees
        data = path.read_bytes()
        assert key.encode() not in data, path
        assert key.encode("utf-16-le") not in data, path

    history = git(repo, "log", "--all", "-p", "--format=%H %s%n%b").stdout
    assert "# [REDACTED]" in history
    assert key not in history
    for ref in git(repo, "for-each-ref", "--format=%(refname)").stdout.split():
        assert key not in git(repo, "show", ref).stdout, ref
    for path in (repo / ".git").rglob("*"):         # refs, logs, config: everything stored uncompressed
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_an_outcome_and_every_event_record_are_redacted_whatever_they_quote(tmp_path):
    """The last lines of defence: whatever text reaches an outcome (an exception's message, say)
    or an event, the DB row and the journal get it redacted."""
    key = "sk-test-" + random_secrets.token_hex(16)
    ws = Workstream("w", run=Command(shell="true"))
    llm = LLMSettings(models={"x": Model("x", "vendor/x", api_key_env=KEY_VAR)})
    ctx = RunContext("r1", tmp_path, Layout(tmp_path / ".agentrun"), {"w": ws}, {"w": 1},
                     base_env={KEY_VAR: key, "PATH": os.defpath}, llm=llm)
    assert ctx.secrets.values == (key,) and KEY_VAR not in ctx.command_env
    store = StateStore(tmp_path / "state.db")
    try:
        outcome = decide_outcome(Job("w", 1), ctx, store, 1,
                                 ExecResult("failed", error=f"internal error: OSError: {key} [Errno 2]"))
    finally:
        store.close()
    assert outcome.finish.error == outcome.completion.error == "internal error: OSError: [REDACTED] [Errno 2]"
    assert outcome.event[3]["error"] == outcome.finish.error

    path = tmp_path / "events.jsonl"
    redaction.use(ctx.secrets)
    try:
        EventLog(path, "r1").emit("ws_failed", "w", 1, error=f"said {key}", nested={"list": [key, "ok"]})
    finally:
        redaction.use(redaction.NO_SECRETS)
    [record], _, bad = read_events(path)
    assert bad == 0 and record["error"] == "said [REDACTED]" and record["nested"]["list"] == ["[REDACTED]", "ok"]
    assert key.encode() not in path.read_bytes()


# --- what a command sees --------------------------------------------------------------------------

def test_commands_see_no_api_key_variable_unless_they_name_it(project):
    write_toml(project / "w" / "agentrun.toml", {"models.mine": {"id": "vendor/m", "api_key_env": "MINE_API_KEY"},
                                                 "models.tiny": {"id": "vendor/t", "api_key_env": "TINY_API_KEY"}})
    write_ws(project / "w", "plain", run="env | sort")
    write_ws(project / "w", "named", run="env | sort", secrets=["MINE_API_KEY", "UNSET_API_KEY"])
    long_key, preset_key = "mine-" + random_secrets.token_hex(8), "or-" + random_secrets.token_hex(8)
    env = clean_env(MINE_API_KEY=long_key, TINY_API_KEY="abc", OPENROUTER_API_KEY=preset_key)
    proc = cli(project, "run", "w", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = state(project).latest_run()["id"]
    plain = cli(project, "logs", run_id, "plain", env=env).stdout
    named = cli(project, "logs", run_id, "named", env=env).stdout
    # A preset's variable and [models.*] variables alike: gone, whatever the length of their value.
    for name in ("MINE_API_KEY", "TINY_API_KEY", "OPENROUTER_API_KEY"):
        assert f"{name}=" not in plain
    assert "AGENTRUN_WS_ID=plain" in plain and "PATH=" in plain
    # Exactly the named ones come back; a value shorter than 8 characters is not redacted.
    assert "MINE_API_KEY=[REDACTED]" in named
    assert "OPENROUTER_API_KEY=" not in named and "TINY_API_KEY=" not in named and "UNSET_API_KEY" not in named


def test_logs_of_an_attempt_still_running_show_no_key(project):
    key = "sk-test-" + random_secrets.token_hex(16)
    write_toml(project / "w" / "agentrun.toml", {"models.x": {"id": "vendor/x", "api_key_env": KEY_VAR}})
    release = project / "release"
    write_ws(project / "w", "slow", secrets=[KEY_VAR],
             run=f'echo "key=${KEY_VAR}"; i=0; while [ ! -e {release} ] && [ $i -lt 1500 ]; do sleep 0.02; '
                 'i=$((i + 1)); done')
    env = clean_env(**{KEY_VAR: key})
    run = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        def spool_with_output():
            """The log of the running attempt, once it has output."""
            spool = running_log(project)
            return spool if spool and spool.stat().st_size else None
        spool = wait_for(spool_with_output)
        assert key.encode() in spool.read_bytes()        # the command got it, and printed it
        run_id = state(project).latest_run()["id"]
        shown = cli(project, "logs", run_id, "slow", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "key=[REDACTED]" in shown.stdout and key not in shown.stdout + shown.stderr
    finally:
        release.touch()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, out + err
    assert "key=[REDACTED]" in cli(project, "logs", run_id, "slow", env=env).stdout


@pytest.mark.parametrize("value, problem", [
    ("OPENROUTER_API_KEY", "expected a list of strings, got a string"),
    (["not a name"], "'not a name' is not a valid environment variable name"),
])
def test_a_bad_secrets_field_is_refused_before_anything_is_written(project, value, problem):
    write_ws(project / "w", "bad", run="true", secrets=value)
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 2
    assert f"bad.toml: workstream 'bad': field 'secrets': {problem}" in proc.stderr
    assert not (project / ".agentrun").exists()


# --- capped logs ------------------------------------------------------------------------------------

def test_a_huge_output_is_kept_as_its_head_a_marker_and_its_tail(project):
    size = 50_000_000
    command = f"echo first-line; head -c {size} /dev/zero | tr '\\0' x; echo; echo last-line; exit 1"
    write_ws(project / "w", "loud", run=command)
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    db = state(project)
    run_id = db.latest_run()["id"]
    [attempt] = db.attempts(run_id)
    db.close()
    assert attempt["error"] == "exit code 1: last-line"
    kept = Path(attempt["log_path"])
    with open(kept, "rb") as fh:
        head = fh.read(LOG_HEAD_BYTES + 300)
        fh.seek(-(LOG_TAIL_BYTES + 200), os.SEEK_END)
        tail = fh.read()
    header = f"[agentrun] work: {command}\n".encode()
    assert head.startswith(header + b"first-line\nxxx")
    output = len("first-line\n") + size + len("\nlast-line\n") + len("[agentrun] exit code 1: last-line\n")
    dropped = output - LOG_HEAD_BYTES - LOG_TAIL_BYTES
    marker = (f"\n[agentrun] ... {dropped / 1e6:.1f} MB of output omitted ({dropped} bytes; a log keeps the "
              f"first 1 MiB and the last 7 MiB of the output) ...\n").encode()
    assert head[len(header) + LOG_HEAD_BYTES:].startswith(marker)
    assert kept.stat().st_size == len(header) + LOG_HEAD_BYTES + len(marker) + LOG_TAIL_BYTES
    assert tail.endswith(b"x\nlast-line\n[agentrun] exit code 1: last-line\n")

    shown = subprocess.run([sys.executable, "-m", "agentrun", "logs", run_id, "loud"], cwd=project,
                           capture_output=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout == kept.read_bytes()


def test_logs_streams_a_log_of_any_size_in_bounded_memory(project):
    write_ws(project / "w", "fails", run="echo something; exit 1")
    assert agentrun("run", "w", cwd=project).returncode == 1
    db = state(project)
    run_id = db.latest_run()["id"]
    [attempt] = db.attempts(run_id)
    db.close()
    # A log kept whole (one left by a worker that was killed mid-attempt is never capped): 200 MB.
    size = 200_000_000
    os.truncate(attempt["log_path"], size)
    # Measured from a small go-between: a child's peak RSS counts whatever it was forked from (here
    # pytest) up to its exec.
    child = subprocess.Popen([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "agentrun", "logs", run_id,
                              "fails"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    printed = 0
    while chunk := child.stdout.read(1 << 20):
        printed += len(chunk)
    peak = int(child.stderr.read().split()[-1]) * 1024
    assert child.wait() == 0 and printed == size
    assert peak < size / 4, f"logs peaked at {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB log"


# --- chunked redaction -------------------------------------------------------------------------------

def test_chunked_redaction_catches_a_secret_across_a_chunk_boundary(tmp_path):
    key, other = "sk-test-" + "a1b2" * 8, "short-but-8"
    secrets = redaction.Secrets([key, other, "tiny"])
    chunk = redaction.CHUNK_BYTES
    data = bytearray(b"." * (3 * chunk))
    spots = {chunk - 5: key, 2 * chunk - len(key) + 1: key, 17: other, 3 * chunk - len(key): key,
             chunk + 100: other}
    for offset, value in spots.items():
        data[offset:offset + len(value)] = value.encode()
    path = tmp_path / "log"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        out: list[bytes] = []
        secrets.copy(fd, 0, len(data), out.append)
        assert max(map(len, out)) <= chunk + len(key)             # a chunk at a time, never the whole
        redacted = b"".join(out)
        assert redacted == secrets.redact_bytes(bytes(data))       # the same as redacting it whole
        assert redacted.count(b"[REDACTED]") == len(spots) and key.encode() not in redacted
        assert b"a1b2" not in redacted and b"short-but" not in redacted
        # Looked for a chunk at a time: the only whole secret in [20, chunk + 90) spans the end of
        # the first chunk read, [20, chunk + 20).
        assert not secrets.found_in(fd, 20, chunk + 20) and secrets.found_in(fd, 20, chunk + 90)
        # A cut inside a secret moves back to where it starts; a tail window takes it whole.
        assert secrets.cut_before(fd, chunk, len(data)) == chunk - 5
        assert secrets.cut_before(fd, chunk - 5, len(data)) == chunk - 5
        assert secrets.tail(fd, 0, chunk + len(key) - 5, 10) == b"[REDACTED]"
        nothing: list[bytes] = []
        redaction.NO_SECRETS.copy(fd, 0, len(data), nothing.append)
        assert b"".join(nothing) == bytes(data)
    finally:
        os.close(fd)
    assert secrets.redact(json.dumps({"v": f'x{key}y'})) == '{"v": "x[REDACTED]y"}'
    quoted = redaction.Secrets(['pa"ss\\wörd-long'])
    assert "pa" not in quoted.redact(json.dumps({"v": 'pa"ss\\wörd-long'}))      # its JSON spelling too
    assert redaction.NO_SECRETS.redact("tiny") == "tiny" and not redaction.NO_SECRETS
    assert redaction.run_secrets(["A", "B", "C"], {"A": "12345678", "B": "1234567"}).values == ("12345678",)


def _printing_key_then_waiting(project: Path, key: str) -> tuple[dict[str, str], Path]:
    write_toml(project / "w" / "agentrun.toml", {"models.x": {"id": "vendor/x", "api_key_env": KEY_VAR}})
    printed = project / "printed"
    write_ws(project / "w", "leaky", secrets=[KEY_VAR],
             run=f'echo "key=${KEY_VAR}"; touch {printed}; exec sleep 300')
    return clean_env(**{KEY_VAR: key}), printed


def _kept_logs(project: Path) -> dict[str, bytes]:
    logs = next((project / ".agentrun" / "runs").glob("*/logs"))
    return {p.name: p.read_bytes() for p in logs.iterdir()}


def test_the_log_of_an_attempt_whose_worker_died_is_kept_redacted(project):
    key = "sk-test-" + random_secrets.token_hex(16)
    env, printed = _printing_key_then_waiting(project, key)
    run = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    wait_for(printed.exists)
    (worker,) = [int(p) for p in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()]
    os.kill(worker, 9)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, out + err
    logs = _kept_logs(project)
    assert list(logs) == ["leaky.1.log"]           # the dead worker's spool is settled, not left behind
    assert b"key=[REDACTED]" in logs["leaky.1.log"] and key.encode() not in logs["leaky.1.log"]
    db = state(project)
    (attempt,) = db.attempts(db.latest_run()["id"])
    assert attempt["status"] == "crashed" and attempt["log_path"].endswith("/leaky.1.log")


def test_recover_keeps_the_log_of_a_lost_attempt_redacted(project):
    key = "sk-test-" + random_secrets.token_hex(16)
    env, printed = _printing_key_then_waiting(project, key)
    run = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           start_new_session=True)
    wait_for(printed.exists)
    os.killpg(run.pid, 9)                          # orchestrator and worker at once
    run.wait(timeout=60)
    recovered = cli(project, "recover", env=env)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    logs = _kept_logs(project)
    assert list(logs) == ["leaky.1.log"]
    assert b"key=[REDACTED]" in logs["leaky.1.log"] and key.encode() not in logs["leaky.1.log"]
    db = state(project)
    (attempt,) = db.attempts(db.latest_run()["id"])
    assert attempt["status"] == "lost" and attempt["log_path"].endswith("/leaky.1.log")


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0 or not (os.path.exists("/usr/bin/setpriv") and os.path.exists(SYSTEM_PYTHON)),
                    reason="needs root, setpriv and a system python3 to run agentrun as another user")
def test_a_command_cannot_read_the_key_from_its_workers_or_orchestrators_process_files():
    # Run as `nobody`, as an ordinary user would: a command of the same user must not find the key
    # in /proc/<pid>/environ of the agentrun processes above it. (Root could: CAP_SYS_PTRACE.)
    key = "sk-test-" + random_secrets.token_hex(16)
    top = Path(tempfile.mkdtemp(prefix="agentrun-nobody-"))   # pytest's tmp_path is root's alone
    project = top / "proj"
    (project / "w").mkdir(parents=True)
    write_toml(project / "w" / "agentrun.toml", {"models.x": {"id": "vendor/x", "api_key_env": KEY_VAR}})
    write_ws(project / "w", "snoop", run='for p in $PPID $(ps -o ppid= -p $PPID); do '
                                        'cat /proc/$p/environ > /dev/null 2>&1 && echo "read $p"; '
                                        'tr "\\0" "\\n" < /proc/$p/environ 2>/dev/null | grep -c LEAKTEST; done; true')
    os.chmod(top, 0o755)
    subprocess.run(["chown", "-R", "65534:65534", str(project)], check=True)
    package = Path(__file__).resolve().parents[2]
    site = next((package / ".venv" / "lib").glob("python3*/site-packages"))
    env = clean_env(**{KEY_VAR: key, "PYTHONPATH": f"{package}:{site}", "HOME": str(project)})
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-m",
                           "agentrun", "run", "w"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = next((project / ".agentrun" / "runs").glob("*/logs/snoop.1.log")).read_text()
    shutil.rmtree(top)
    assert not re.search(r"^read \d+$", log, re.M), log          # neither could be opened
    assert re.findall(r"^\d+$", log, re.M) == ["0", "0"], log     # and no key was seen
