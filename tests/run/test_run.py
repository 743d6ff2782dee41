"""Real runs of the real CLI in scratch directories: the runner's promises."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from agentrun.spec.durations import parse_duration
from agentrun.store.layout import new_run_id
from conftest import agentrun, events, pid_alive, start_tiny_run, state, statuses, wait_for, write_ws


def _max_overlap(attempts) -> int:
    points = []
    for a in attempts:
        points.append((a["started_at"], 1))
        points.append((a["finished_at"], -1))
    running = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_parallelism_reaches_max_workers_and_never_exceeds_it(project):
    barrier = project / "barrier"
    barrier.mkdir()
    # Each command waits until three workstreams have arrived: with fewer than
    # three running at once the first ones would wait until their timeout.
    wait = (f"touch {barrier}/$AGENTRUN_WS_ID; n=0; "
            f"while [ $(ls {barrier} | wc -l) -lt 3 ] && [ $n -lt 2000 ]; do sleep 0.01; n=$((n+1)); done; "
            f"[ $(ls {barrier} | wc -l) -ge 3 ]")
    for i in range(7):
        write_ws(project / "w", f"t{i}", run=wait, timeout="30s")
    proc = agentrun("run", "w", "--parallel", "--max-workers", 3, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = state(project)
    run = db.latest_run()
    assert all(r["status"] == "done" for r in db.workstreams(run["id"]).values())
    attempts = db.attempts(run["id"])
    assert len(attempts) == 7
    assert _max_overlap(attempts) == 3


def test_without_parallel_one_runs_at_a_time(project):
    for i in range(4):
        write_ws(project / "w", f"s{i}", run="true")
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 0
    db = state(project)
    assert _max_overlap(db.attempts(db.latest_run()["id"])) == 1


def test_dependencies_start_only_after_they_finish(project):
    write_ws(project / "w", "a", run="echo a > a.out")
    write_ws(project / "w", "b", run="test -f a.out && echo b > b.out", depends_on=["a"])
    write_ws(project / "w", "c", run="test -f a.out && echo c > c.out", depends_on=["a"])
    write_ws(project / "w", "d", run="test -f b.out && test -f c.out", depends_on=["b", "c"])
    proc = agentrun("run", "w", "--parallel", "--max-workers", 4, cwd=project)
    assert proc.returncode == 0, proc.stdout
    db = state(project)
    by_ws = {a["ws_id"]: a for a in db.attempts(db.latest_run()["id"])}
    for child, parents in {"b": ["a"], "c": ["a"], "d": ["b", "c"]}.items():
        for parent in parents:
            assert by_ws[child]["started_at"] >= by_ws[parent]["finished_at"]


def test_timeout_kills_the_whole_process_tree(project):
    pidfile = project / "grandchild.pid"
    write_ws(project / "w", "slow", timeout="1s",
             run=f"sh -c 'sleep 300 & echo $! > {pidfile}; wait' ; sleep 300")
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 1
    db = state(project)
    run_id = db.latest_run()["id"]
    ws = db.workstreams(run_id)["slow"]
    assert ws["status"] == "failed"
    (attempt,) = db.attempts(run_id)
    assert attempt["status"] == "timeout"
    assert "timed out" in attempt["error"]
    grandchild = int(pidfile.read_text())
    assert not pid_alive(grandchild)
    assert not pid_alive(attempt["pid"])


def test_retry_then_success(project):
    write_ws(project / "w", "flaky", retries=2, retry_backoff="0.1s",
             run='echo "attempt $AGENTRUN_ATTEMPT"; [ "$AGENTRUN_ATTEMPT" -ge 2 ]')
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 0, proc.stdout
    db = state(project)
    run_id = db.latest_run()["id"]
    assert [a["status"] for a in db.attempts(run_id)] == ["failed", "done"]
    assert db.workstreams(run_id)["flaky"]["attempt"] == 2
    kinds = [e["type"] for e in events(project, run_id) if e["ws_id"] == "flaky"]
    assert kinds == ["ws_ready", "ws_started", "ws_retrying", "ws_ready", "ws_started", "ws_done"]
    log2 = agentrun("logs", run_id, "flaky", cwd=project)
    assert "attempt 2" in log2.stdout
    log1 = agentrun("logs", run_id, "flaky", "--attempt", 1, cwd=project)
    assert "attempt 1" in log1.stdout and "exit code 1" in log1.stdout


def test_failure_blocks_dependents_and_nothing_else(project):
    write_ws(project / "w", "bad", run="exit 3")
    write_ws(project / "w", "child", run="true", depends_on=["bad"])
    write_ws(project / "w", "grandchild", run="true", depends_on=["child"])
    write_ws(project / "w", "other", run="true")
    write_ws(project / "w", "after-other", run="true", depends_on=["other"])
    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, cwd=project)
    assert proc.returncode == 1
    db = state(project)
    run = db.latest_run()
    statuses = {w: r["status"] for w, r in db.workstreams(run["id"]).items()}
    assert statuses == {"bad": "failed", "child": "blocked", "grandchild": "blocked", "other": "done",
                        "after-other": "done"}
    assert run["status"] == "failed"
    assert "bad: exit code 3" in proc.stdout


def test_fail_fast_stops_starting_new_work(project):
    write_ws(project / "w", "a-bad", run="exit 1", priority="critical")
    for i in range(5):
        write_ws(project / "w", f"later{i}", run="true", priority="low")
    proc = agentrun("run", "w", "--fail-fast", cwd=project)
    assert proc.returncode == 1
    db = state(project)
    statuses = {w: r["status"] for w, r in db.workstreams(db.latest_run()["id"]).items()}
    assert statuses["a-bad"] == "failed"
    assert all(statuses[f"later{i}"] == "pending" for i in range(5))




def test_sigint_stops_everything_and_leaves_no_process(project):
    pids = project / "pids"
    pids.mkdir()
    for i in range(2):
        write_ws(project / "w", f"long{i}",
                 run=f"sh -c 'sleep 300 & echo $! > {pids}/$AGENTRUN_WS_ID.gc; wait' & "
                     f"echo $$ > {pids}/$AGENTRUN_WS_ID.sh; wait")
    write_ws(project / "w", "never", run="true", depends_on=["long0"])
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "--parallel", "--max-workers", "2"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(pids.glob("*.gc"))) == 2 and all(p.read_text().strip() for p in pids.iterdir()))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    for pidfile in pids.iterdir():
        assert not pid_alive(int(pidfile.read_text())), pidfile.name
    db = state(project)
    run = db.latest_run()
    assert run["status"] == "interrupted"
    statuses = {w: r["status"] for w, r in db.workstreams(run["id"]).items()}
    assert statuses == {"long0": "interrupted", "long1": "interrupted", "never": "pending"}
    assert all(a["status"] == "cancelled" for a in db.attempts(run["id"]))
    assert events(project, run["id"])[-1]["type"] == "run_interrupted"


def test_sigint_among_reserved_work_hands_it_back_and_resume_finishes_it(project):
    # Tiny commands: workers hold batches of reserved work when Ctrl-C arrives. What they had
    # not started goes back unstarted (pending), nothing is left reserved or running, and
    # resume does the rest, each workstream recorded done exactly once.
    proc, ledger, ids, workers = start_tiny_run(project)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert not any(pid_alive(pid) for pid in workers)
    db = state(project)
    run_id = db.latest_run()["id"]
    rows = db.workstreams(run_id)
    assert {r["status"] for r in rows.values()} <= {"done", "pending", "interrupted"}
    assert all(r["reserved_by"] is None and r["queue_seq"] is None for r in rows.values())
    assert "pending" in {r["status"] for r in rows.values()}
    resumed = agentrun("resume", run_id, "-q", cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = sorted(a["ws_id"] for a in db.attempts(run_id) if a["status"] == "done")
    assert done == ids
    assert sorted(set(ledger.read_text().split())) == ids


def test_eight_workers_lose_no_state_and_no_event(project):
    for i in range(120):
        write_ws(project / "w", f"n{i:03d}", run=["true"])
    proc = agentrun("run", "w", "--parallel", "--max-workers", 8, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "locked" not in proc.stdout + proc.stderr
    db = state(project)
    run_id = db.latest_run()["id"]
    assert {r["status"] for r in db.workstreams(run_id).values()} == {"done"}
    evs = events(project, run_id)
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(1, len(evs) + 1))
    for kind in ("ws_ready", "ws_started", "ws_done"):
        assert sorted(e["ws_id"] for e in evs if e["type"] == kind) == [f"n{i:03d}" for i in range(120)]
    lanes = {a["lane"] for a in db.attempts(run_id)}
    assert lanes <= set(range(8)) and len(lanes) > 1


def test_ws_id_runs_only_the_selection(project):
    write_ws(project / "w", "base", run="echo base > base.out")
    write_ws(project / "w", "top", run="true", depends_on=["base"])
    write_ws(project / "w", "unrelated", run="true")
    proc = agentrun("run", "w", "--ws-id", "top", cwd=project)
    assert proc.returncode == 0
    db = state(project)
    assert set(db.workstreams(db.latest_run()["id"])) == {"top"}
    proc = agentrun("run", "w", "--ws-id", "top", "--with-deps", cwd=project)
    assert proc.returncode == 0
    assert set(db.workstreams(db.latest_run()["id"])) == {"base", "top"}


def test_argv_commands_run_without_a_shell(project):
    write_ws(project / "w", "argv", run=[sys.executable, "-c", "import sys; print('$HOME', sys.argv)", "x y"])
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 0
    db = state(project)
    run_id = db.latest_run()["id"]
    log = agentrun("logs", run_id, "argv", cwd=project).stdout
    assert "$HOME ['-c', 'x y']" in log


def test_a_silent_success_keeps_no_log_and_everything_else_does(project):
    write_ws(project / "w", "quiet", run="true")
    write_ws(project / "w", "chatty", run="echo said something")
    write_ws(project / "w", "broken", run="exit 3")
    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, cwd=project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    db = state(project)
    run_id = db.latest_run()["id"]
    logs = {a["ws_id"]: a["log_path"] for a in db.attempts(run_id)}
    assert logs["quiet"] is None
    assert open(logs["chatty"]).read().endswith("said something\n")
    assert "exit code 3" in open(logs["broken"]).read()
    quiet = agentrun("logs", run_id, "quiet", cwd=project)
    assert quiet.returncode == 0 and quiet.stdout == "" and "printed nothing" in quiet.stderr
    # The files are the kept logs and nothing else: the workers' spool files are gone.
    assert sorted(p.name for p in (project / ".agentrun" / "runs" / run_id / "logs").iterdir()) == \
        ["broken.1.log", "chatty.1.log"]


def test_a_long_attempt_among_tiny_ones_does_not_hold_the_others_up(project):
    # Tiny attempts make workers hold back their reports and the orchestrator release work
    # ahead; the long one in the middle waits for the last tiny one, which only runs if the
    # other worker keeps being fed while the long one runs.
    marker = project / "last-ran"
    for i in range(120):
        write_ws(project / "w", f"w{i:03d}", run="true" if i < 119 else f"touch {marker}")
    write_ws(project / "w", "w060-long", timeout="60s",
             run=f"for i in $(seq 600); do [ -f {marker} ] && exit 0; sleep 0.1; done; exit 1")
    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, cwd=project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    db = state(project)
    attempts = {a["ws_id"]: a for a in db.attempts(db.latest_run()["id"])}
    assert all(a["finished_at"] <= attempts["w060-long"]["finished_at"] for a in attempts.values())


def test_environment_and_cwd_reach_the_command(project):
    (project / "sub").mkdir()
    write_ws(project / "w", "envy", cwd="sub", env={"GREETING": "hi"},
             run='echo "$GREETING $AGENTRUN_WS_ID $AGENTRUN_ATTEMPT $(basename $PWD)"; test -d "$TMPDIR"')
    assert agentrun("run", "w", cwd=project).returncode == 0
    db = state(project)
    run_id = db.latest_run()["id"]
    assert "\nhi envy 1 sub\n" in agentrun("logs", run_id, "envy", cwd=project).stdout


def test_non_tty_output_is_one_line_per_event_and_a_summary(project):
    write_ws(project / "w", "a", run="true")
    write_ws(project / "w", "b", run="true", depends_on=["a"])
    proc = agentrun("run", "w", cwd=project)
    lines = proc.stdout.splitlines()
    run_id = state(project).latest_run()["id"]
    n_events = len(events(project, run_id))
    event_lines = [line for line in lines if line[:2].isdigit() and line[2] == ":"]
    assert len(event_lines) == n_events
    assert any(line.startswith(f"run {run_id} done") for line in lines)
    assert f"agentrun status {run_id}" in proc.stdout


def test_status_shows_counts_and_rows(project):
    write_ws(project / "w", "ok", run="true")
    write_ws(project / "w", "ko", run="exit 2")
    agentrun("run", "w", cwd=project)
    out = agentrun("status", cwd=project)
    assert out.returncode == 0
    assert "done 1" in out.stdout and "failed 1" in out.stdout
    assert any(line.startswith("ko") and "exit code 2" in line for line in out.stdout.splitlines())


def test_history_refines_estimates_in_plan(project):
    write_ws(project / "w", "x", run="true", estimate="9m")
    assert agentrun("run", "w", cwd=project).returncode == 0
    plan = agentrun("plan", "w", "--format", "json", cwd=project)
    data = json.loads(plan.stdout)
    (entry,) = data["workstreams"]
    assert entry["estimate_source"] == "history"
    assert entry["estimate_s"] < 60


def test_dry_run_prints_plan_and_writes_nothing(project):
    write_ws(project / "w", "a", run="true", estimate="2s")
    write_ws(project / "w", "b", run="true", depends_on=["a"], estimate="3s")
    proc = agentrun("run", "w", "--dry-run", "--parallel", "--max-workers", 2, cwd=project)
    assert proc.returncode == 0
    assert "critical path: a -> b" in proc.stdout
    assert "lower bound" in proc.stdout
    assert not (project / ".agentrun").exists()


def test_eager_schedule_beats_waves_on_uneven_chains(project):
    # A(long) -> B(short) and C(short) -> D(long): waves wait for A before D can start.
    for ws_id, secs, deps in (("a", 0.6, []), ("b", 0.05, ["a"]), ("c", 0.05, []), ("d", 0.6, ["c"])):
        write_ws(project / "w", ws_id, run=f"sleep {secs}", estimate=f"{secs}s", depends_on=deps)
    spans = {}
    for mode in ("eager", "waves"):
        assert agentrun("run", "w", "--parallel", "--max-workers", 2, "--schedule", mode,
                        cwd=project).returncode == 0
        db = state(project)
        attempts = {a["ws_id"]: a for a in db.attempts(db.latest_run()["id"])}
        spans[mode] = attempts
    # Ordering facts rather than timings: in waves mode d starts after a finished;
    # eagerly it starts as soon as c is done, while a still runs.
    assert spans["waves"]["d"]["started_at"] >= spans["waves"]["a"]["finished_at"]
    assert spans["eager"]["d"]["started_at"] < spans["eager"]["a"]["finished_at"]


def test_worker_death_is_recorded_crashed_and_retried(project):
    # The command kills its worker (its parent's parent is the sh, whose parent is the worker).
    marker = project / "killed-once"
    write_ws(project / "w", "victim", retries=1, retry_backoff="0s",
             run=f'if [ ! -f {marker} ]; then touch {marker}; kill -9 $PPID; fi; true')
    proc = agentrun("run", "w", cwd=project)
    db = state(project)
    run_id = db.latest_run()["id"]
    statuses = [a["status"] for a in db.attempts(run_id)]
    # The shell is the process-group leader; $PPID is the worker process.
    assert statuses == ["crashed", "done"], (statuses, proc.stdout)
    assert proc.returncode == 0
    assert any(e["type"] == "ws_crashed" for e in events(project, run_id))


def test_a_worker_killed_among_reserved_work_charges_no_other_workstream(project):
    # With hundreds of tiny workstreams, workers reserve several at a time and record them with
    # their next claim. One kills its worker the first time it runs: what that worker had run or
    # reserved without recording it goes back to the queue. Each workstream ends done exactly
    # once, and none but the killer has an attempt that is not done.
    marker = project / "killed-once"
    ids = [f"n{i:03d}" for i in range(300)]
    for ws_id in ids:
        write_ws(project / "w", ws_id, run=["true"])
    write_ws(project / "w", "n200-killer", retries=1, retry_backoff="0s",
             run=f"if [ ! -f {marker} ]; then touch {marker}; kill -9 $PPID; fi; true")
    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, cwd=project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert marker.exists()
    db = state(project)
    run_id = db.latest_run()["id"]
    attempts = db.attempts(run_id)
    done = sorted(a["ws_id"] for a in attempts if a["status"] == "done")
    assert done == sorted(ids + ["n200-killer"])
    assert {a["ws_id"] for a in attempts if a["status"] != "done"} <= {"n200-killer"}
    assert sorted(e["ws_id"] for e in events(project, run_id) if e["type"] == "ws_done") == done
    # (A crashed attempt ends when the orchestrator records it, after its worker's replacement started.)
    assert _max_overlap([a for a in attempts if a["status"] == "done"]) <= 2


def test_events_log_torn_tail_is_repaired_by_next_writer(tmp_path):
    from agentrun.store.events import EventLog, read_events
    path = tmp_path / "events.jsonl"
    log = EventLog(path, "r1")
    log.emit("run_started")
    with open(path, "ab") as fh:
        fh.write(b'{"seq": 2, "type": "ws_sta')
    records, _, bad = read_events(path)
    assert [r["seq"] for r in records] == [1] and bad == 0
    other = EventLog(path, "r1")
    other.emit("ws_started", "x", 1)
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    assert os.path.getsize(path) == sum(len(line) + 1 for line in lines)


def test_event_writers_taking_turns_continue_each_others_sequence(tmp_path):
    # Each writer learns the last number from the file's tail, also when the last record is
    # longer than the tail it reads first.
    from agentrun.store.events import TAIL_BYTES, EventLog
    path = tmp_path / "events.jsonl"
    writers = [EventLog(path, "r1"), EventLog(path, "r1")]
    for i in range(6):
        big = {"error": "x" * (3 * TAIL_BYTES)} if i in (2, 3) else {}
        writers[i % 2].emit_all([("ws_done", f"w{i}", 1, {}), ("ws_failed", f"v{i}", 1, big)])
    assert [json.loads(line)["seq"] for line in path.read_bytes().splitlines()] == list(range(1, 13))


def _shift_back(project, seconds: float) -> None:
    """Move every recorded time of every run back by ``seconds``: as if the run had ended that
    long before the command that reads it back."""
    db = sqlite3.connect(project / ".agentrun" / "state.db")
    with db:
        db.execute("UPDATE runs SET created_at = created_at - ?, finished_at = finished_at - ?, "
                   "heartbeat_at = heartbeat_at - ?", (seconds,) * 3)
        for table in ("workstreams", "attempts"):
            db.execute(f"UPDATE {table} SET started_at = started_at - ?, finished_at = finished_at - ?",
                       (seconds,) * 2)
    db.close()


def _status_rows(text: str) -> dict[str, tuple[str, float]]:
    """``agentrun status`` rows: ws_id -> (status, seconds in the time column)."""
    table = text.split("\n\n", 1)[1].splitlines()[1:]
    return {f[0]: (f[1], parse_duration(f[4])) for f in (line.split() for line in table)}




def test_a_closed_stdout_never_stops_the_run(project):
    release = project / "release"
    for i in range(6):
        write_ws(project / "w", f"q{i}", run="true")
    write_ws(project / "w", "last", run=f"while [ ! -e {release} ]; do sleep 0.02; done",
             depends_on=[f"q{i}" for i in range(6)])
    # head takes 3 lines and exits; its group then closes the pipe and only then releases the last
    # workstream: every line printed after that (its events, the summary) meets a closed pipe.
    pipeline = (f"{{ {sys.executable} -m agentrun run w --parallel -j 2; echo $? > code; }} | "
                f"{{ head -3; exec <&-; touch {release}; }}")
    proc = subprocess.run(["sh", "-c", pipeline], cwd=project, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert len(proc.stdout.splitlines()) == 3
    for noise in ("Traceback", "Exception ignored", "BrokenPipe", "Broken pipe", "error"):
        assert noise not in proc.stderr, proc.stderr
    assert (project / "code").read_text() == "0\n"
    db = state(project)
    run = db.latest_run()
    assert run["status"] == "done" and run["finished_at"] is not None
    assert {w: r["status"] for w, r in db.workstreams(run["id"]).items()} == {
        **{f"q{i}": "done" for i in range(6)}, "last": "done"}
    assert events(project, run["id"])[-1]["type"] == "run_finished"


def test_commands_whose_reader_goes_away_exit_quietly(project):
    # Enough rows that status and report outgrow a pipe's buffer while head has long gone.
    (project / "w" / "many.toml").write_text("".join(f'[[workstream]]\nid = "n{i:04d}"\nrun = "true"\n\n'
                                                     for i in range(1500)))
    assert agentrun("run", "w", "-j", 2, "-q", cwd=project).returncode == 0
    # monitor stops following once nobody reads, and says so with its exit code.
    for command, code in (("status", 0), ("report show", 0), ("plan w", 0), ("monitor", 1)):
        pipeline = f"{{ {sys.executable} -m agentrun {command}; echo $? > code; }} | head -1"
        proc = subprocess.run(["sh", "-c", pipeline], cwd=project, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert len(proc.stdout.splitlines()) == 1, command
        assert proc.stderr == "", (command, proc.stderr)
        assert (project / "code").read_text() == f"{code}\n", command


def test_max_workers_alone_runs_in_parallel_with_no_more_workers_than_work(project):
    barrier = project / "barrier"
    barrier.mkdir()
    release = project / "release"
    for ws_id in ("a", "b"):
        write_ws(project / "w", ws_id, run=f"touch {barrier}/$AGENTRUN_WS_ID; "
                                           f"while [ ! -e {release} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "--max-workers", "300", "-q"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(barrier.iterdir())) == 2)  # both at once: no --parallel needed
        workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    finally:
        release.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert len(workers) == 2
    db = state(project)
    run = db.latest_run()
    assert run["max_workers"] == 2
    assert {a["lane"] for a in db.attempts(run["id"])} == {0, 1}
    assert "workers 2" in agentrun("status", cwd=project).stdout.splitlines()[0]


def test_j_is_short_for_max_workers_and_parallel_alone_is_one_worker_per_cpu(project):
    for i in range(4):
        write_ws(project / "w", f"s{i}", run="true")
    assert "4 workstreams, 1 wave, 3 workers" in agentrun("plan", "w", "-j", 3, cwd=project).stdout
    assert agentrun("run", "w", "--parallel", "-j", 1, cwd=project).returncode == 0
    db = state(project)
    run = db.latest_run()
    assert run["max_workers"] == 1 and _max_overlap(db.attempts(run["id"])) == 1
    assert agentrun("run", "w", "--parallel", cwd=project).returncode == 0
    assert db.latest_run()["max_workers"] == min(os.cpu_count(), 4)


def test_status_of_an_interrupted_run_stops_its_clock_at_the_end(project):
    release = project / "release"
    write_ws(project / "w", "quick", run="true")
    write_ws(project / "w", "slow", run=f"while [ ! -e {release} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-j", "2"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: statuses(project) == {"quick": "done", "slow": "running"})
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    run_id = state(project).latest_run()["id"]
    assert state(project).workstreams(run_id)["slow"]["finished_at"] is None
    _shift_back(project, 3600)  # read back an hour after it ended
    text = agentrun("status", cwd=project).stdout
    assert text.startswith(f"run {run_id}  interrupted  ")
    assert parse_duration(text.split()[3]) < 60
    rows = _status_rows(text)
    assert rows["slow"][0] == "interrupted" and rows["slow"][1] < 60


def test_status_of_a_run_whose_orchestrator_died_says_so_and_stops_its_clock(project):
    release = project / "release"
    write_ws(project / "w", "wait", run=f"while [ ! -e {release} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: statuses(project) == {"wait": "running"})
        os.killpg(proc.pid, signal.SIGKILL)  # orchestrator and worker; the command lives on in its own group
        proc.wait()
        run_id = state(project).latest_run()["id"]
        _shift_back(project, 3600)
        text = agentrun("status", cwd=project).stdout
    finally:
        release.touch()
    assert text.startswith(f"run {run_id}  running (orchestrator gone: agentrun recover {run_id})  ")
    rows = _status_rows(text)
    assert rows["wait"][0] == "running" and rows["wait"][1] < 60


def test_run_ids_sort_by_creation_within_a_second():
    shape = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
    made = [new_run_id() for _ in range(20)]
    assert made == sorted(made)
    chained = [new_run_id()]
    for _ in range(50):
        chained.append(new_run_id(after=chained[-1]))
    assert chained == sorted(chained) and len(set(chained)) == len(chained)
    assert all(shape.fullmatch(i) for i in made + chained)
    # A clock that stepped back behind the latest recorded id: the new one still sorts after it.
    assert new_run_id(after="20991231-235959-ffff") == "21000101-000000-0000"


def test_runs_started_back_to_back_sort_by_creation(project):
    write_ws(project / "w", "a", run="true")
    for _ in range(4):
        assert agentrun("run", "w", "-q", cwd=project).returncode == 0
    ids = [r["id"] for r in state(project).db.execute("SELECT id FROM runs ORDER BY created_at")]
    assert len(ids) == 4 and ids == sorted(ids)


def _worker_count(project) -> int:
    db = state(project)
    return len({a["external_id"] for a in db.attempts(db.latest_run()["id"])})


def test_a_chain_or_a_conflict_group_starts_one_worker_however_many_are_allowed(project):
    for i in range(8):
        write_ws(project / "w", f"c{i}", run="true", depends_on=[f"c{i - 1}"] if i else [])
    assert agentrun("run", "w", "-j", 300, cwd=project).returncode == 0
    assert _worker_count(project) == 1
    for i in range(8):
        write_ws(project / "w", f"c{i}", run="true", conflict_group="db")
    assert agentrun("run", "w", "-j", 300, cwd=project).returncode == 0
    assert _worker_count(project) == 1


def test_a_signal_to_one_worker_alone_interrupts_its_attempt_and_the_run_goes_on(project):
    release, started = project / "release", project / "started"
    started.mkdir()
    write_ws(project / "w", "slow", run=f"touch {started}/$AGENTRUN_ATTEMPT; while [ ! -e {release} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (started / "1").exists())
    (worker,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(worker, signal.SIGINT)
    wait_for(lambda: (started / "2").exists())     # run again, by a new worker
    release.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    db = state(project)
    run_id = db.latest_run()["id"]
    assert [a["status"] for a in db.attempts(run_id)] == ["cancelled", "done"]
    assert db.latest_run()["status"] == "done"
