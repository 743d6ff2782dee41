#!/usr/bin/env python3
"""Crash recovery latency and monitor CPU cost.

Resume latency: N independent no-op workstreams (``run = ["true"]``, all in
one file) are started with

    agentrun run DIR --parallel --max-workers 2 -q --state-dir S

in a session of their own; once about half are ``done`` in the state DB
(polled read-only every 50 ms) the whole process group gets SIGKILL. Then
``agentrun recover RUN_ID`` reconciles the run, and

    agentrun resume RUN_ID -q --state-dir S

is launched while the run's events.jsonl is tailed (from its size at launch,
every 5 ms). Latency = launch -> the first ``ws_started`` event appended after
the launch. Target: < 2 s. Also reported: the time to ``run_resumed``, the
total time for the resume to finish, and checks afterwards: every workstream
``done``, exactly one ``done`` attempt per workstream, and no attempt at all
after the kill for a workstream that was done before it.

Monitor CPU: M workstreams ``run = ["sleep", "0.01"]`` at 4 workers (6,000:
a run of ~25 s on an idle 2-core machine, longer under load); once it runs, ``agentrun monitor RUN_ID`` follows it with stdout
to a pipe that is drained (plain lines: not a TTY). CPU = user+sys of the
monitor process (os.wait4) / its wall time (launch to reap), as a percentage
of one core. Target: < 5 %. Also shown, for information only: the same
without interpreter start-up (from /proc/<pid>/stat, after 2 s), and the
terminal panel (the monitor on a pseudo-terminal, 120x40) following the same
run at the same time.

Everything is generated in fresh directories under /tmp, outside any git
repository (so no worktrees are used).

    .venv/bin/python bench/recovery.py [--quick] [--keep] [--profile]

--profile additionally runs the resume once more under cProfile (on a second
crashed copy of the run) and prints where the time to the first ws_started
goes. Exit status: 0 every target met, 1 a target missed, 2 benchmark invalid.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (agentrun_cmd, begin, bench_env, finish, fmt_table, remove_unless_kept,  # noqa: E402
                    independent_graph, invalid, make_tmp, write_workstreams)

RESUME_TARGET_S = 2.0
MONITOR_TARGET_PCT = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- helpers --------------------------------------------------------------------------
def ro_db(state: Path) -> sqlite3.Connection | None:
    db_path = state / "state.db"
    if not db_path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
        db.execute("PRAGMA query_only = 1")
        return db
    except sqlite3.Error:
        return None


def query(state: Path, sql: str, params=()) -> list[tuple]:
    """A read-only query on a fresh connection (the DB may not exist yet): [] on any error."""
    db = ro_db(state)
    if db is None:
        return []
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


def wait_for_run(state: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(state, "SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")
        if rows:
            return rows[0][0]
        if proc.poll() is not None:
            invalid(f"agentrun run exited with {proc.returncode} before creating its run")
        time.sleep(0.05)
    invalid(f"no run appeared in {state} within {timeout:.0f}s")
    raise AssertionError


def start(argv: list[str], cwd: Path, log: Path, **kw) -> subprocess.Popen:
    fh = open(log, "wb")
    try:
        return subprocess.Popen(argv, cwd=cwd, env=bench_env(), stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, **kw)
    finally:
        fh.close()


def tail_text(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def proc_cpu(pid: int) -> float | None:
    """utime+stime of a live process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14 and 15 of stat(5)


# --- 1. resume latency ------------------------------------------------------------------
@dataclass
class Crashed:
    run_id: str
    state: Path
    done_before: set[str]
    kill_time: float          # time.time() when SIGKILL was sent
    first_run_s: float        # launch -> kill


def crash_half(root: Path, src: Path, n: int, tag: str) -> Crashed:
    """Start the run, SIGKILL its process group once about half is done, then ``agentrun recover``."""
    state = root / f"state-{tag}"
    log = root / f"run-{tag}.log"
    t0 = time.perf_counter()
    proc = start([*agentrun_cmd(), "run", str(src), "--parallel", "--max-workers", "2", "-q",
                  "--state-dir", str(state)], root, log, start_new_session=True)
    try:
        run_id = wait_for_run(state, proc, 120)
        half = n // 2
        deadline = time.monotonic() + 600
        while True:
            rows = query(state, "SELECT COUNT(*) FROM workstreams WHERE run_id = ? AND status = 'done'", (run_id,))
            if rows and rows[0][0] >= half:
                break
            if proc.poll() is not None:
                invalid(f"agentrun run exited with {proc.returncode} before half was done\n{tail_text(log)}")
            if time.monotonic() > deadline:
                invalid("the run did not get half done within 600 s")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        kill_time = time.time()
        first_run = time.perf_counter() - t0
        proc.wait()
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    # Everything in the group is gone (the orchestrator and its forked workers); commands ran in groups of
    # their own but `true` exits at once. What was done is final now.
    done_before = {r[0] for r in query(state, "SELECT ws_id FROM workstreams WHERE run_id = ? AND status = 'done'",
                                       (run_id,))}
    rec = subprocess.run([*agentrun_cmd(), "recover", run_id, "--state-dir", str(state)], cwd=root,
                         env=bench_env(), capture_output=True, text=True)
    if rec.returncode != 0:
        invalid(f"agentrun recover exited with {rec.returncode}\n{rec.stdout[-2000:]}\n{rec.stderr[-2000:]}")
    status = query(state, "SELECT status FROM runs WHERE id = ?", (run_id,))
    if not status or status[0][0] != "interrupted":
        invalid(f"after recover the run's status is {status}, expected interrupted")
    return Crashed(run_id, state, done_before, kill_time, first_run)


@dataclass
class Resumed:
    to_resumed: float | None   # launch -> run_resumed event
    to_started: float          # launch -> first new ws_started event
    total: float               # launch -> exit
    returncode: int


def timed_resume(root: Path, c: Crashed, argv_prefix: list[str] | None = None, tag: str = "resume") -> Resumed:
    """Launch ``resume`` and tail the events file from its size at launch, every 5 ms."""
    events = c.state / "runs" / c.run_id / "events.jsonl"
    if not events.is_file():
        invalid(f"no event log at {events}")
    log = root / f"{tag}.log"
    offset = events.stat().st_size
    argv = [*(argv_prefix or agentrun_cmd()), "resume", c.run_id, "-q", "--state-dir", str(c.state)]
    t0 = time.perf_counter()
    proc = start(argv, root, log)
    to_resumed = to_started = None
    buf = b""
    with open(events, "rb") as fh:
        fh.seek(offset)
        while to_started is None:
            chunk = fh.read()
            if chunk:
                now = time.perf_counter() - t0
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        kind = json.loads(line).get("type")
                    except ValueError:
                        continue
                    if kind == "run_resumed" and to_resumed is None:
                        to_resumed = now
                    elif kind == "ws_started":
                        to_started = now
                        break
                continue
            if proc.poll() is not None:
                invalid(f"resume exited with {proc.returncode} before any ws_started\n{tail_text(log)}")
            if time.perf_counter() - t0 > 300:
                proc.kill()
                invalid("no ws_started within 300 s of the resume")
            time.sleep(0.005)
    code = proc.wait()
    total = time.perf_counter() - t0
    if code != 0:
        invalid(f"resume exited with {code}\n{tail_text(log)}")
    return Resumed(to_resumed, to_started, total, code)


def verify_resumed(c: Crashed, n: int) -> list[str]:
    """Problems found in the state DB after the resume (empty: all good)."""
    problems = []
    counts = dict(query(c.state, "SELECT status, COUNT(*) FROM workstreams WHERE run_id = ? GROUP BY status",
                        (c.run_id,)))
    if counts != {"done": n}:
        problems.append(f"workstream statuses {counts}, expected {{'done': {n}}}")
    run = query(c.state, "SELECT status FROM runs WHERE id = ?", (c.run_id,))
    if not run or run[0][0] != "done":
        problems.append(f"run status {run}, expected done")
    done_attempts = query(c.state, "SELECT ws_id, COUNT(*) FROM attempts WHERE run_id = ? AND status = 'done' "
                                   "GROUP BY ws_id", (c.run_id,))
    per_ws = dict(done_attempts)
    if len(per_ws) != n:
        problems.append(f"{len(per_ws)} workstreams have a done attempt, expected {n}")
    twice = [w for w, k in per_ws.items() if k != 1]
    if twice:
        problems.append(f"{len(twice)} workstreams have more than one done attempt, e.g. {twice[:5]}")
    rows = query(c.state, "SELECT ws_id, attempt, status, started_at FROM attempts WHERE run_id = ?", (c.run_id,))
    by_ws: dict[str, list[tuple]] = {}
    for ws, attempt, status, started in rows:
        by_ws.setdefault(ws, []).append((attempt, status, started))
    rerun = sorted(w for w in c.done_before if any(s > c.kill_time for _, _, s in by_ws.get(w, [])))
    if rerun:
        problems.append(f"{len(rerun)} workstreams done before the kill were started again, e.g. {rerun[:5]}")
    extra = sorted(w for w in c.done_before if len(by_ws.get(w, [])) != 1)
    if extra:
        problems.append(f"{len(extra)} workstreams done before the kill have more than one attempt, e.g. {extra[:5]}")
    return problems


def resume_latency(root: Path, n: int, profile: bool) -> tuple[list[list[str]], bool]:
    src = root / "noop"
    write_workstreams(src, independent_graph(n), per_file=n)   # one file, as asked
    print(f"\n[1] resume latency: {n} no-op workstreams, 2 workers, SIGKILL at ~{n // 2} done", flush=True)
    c = crash_half(root, src, n, "resume")
    lost = query(c.state, "SELECT COUNT(*) FROM attempts WHERE run_id = ? AND status = 'lost'", (c.run_id,))[0][0]
    print(f"    run {c.run_id}: killed after {c.first_run_s:.1f}s with {len(c.done_before)} done, "
          f"{lost} attempt(s) marked lost by recover", flush=True)
    r = timed_resume(root, c)
    problems = verify_resumed(c, n)
    if problems:
        invalid("after the resume:\n  " + "\n  ".join(problems))
    left = n - len(c.done_before)
    print(f"    resume: run_resumed after {r.to_resumed:.3f}s, first ws_started after {r.to_started:.3f}s, "
          f"finished {left} workstreams in {r.total:.1f}s; checks passed (all {n} done, one done attempt each, "
          f"nothing done before the kill ran again)", flush=True)
    ok = r.to_started < RESUME_TARGET_S
    rows = [["resume -> first ws_started", f"{r.to_started:.3f} s", f"< {RESUME_TARGET_S:.0f} s",
             "PASS" if ok else "FAIL"],
            ["resume -> run_resumed", f"{r.to_resumed:.3f} s" if r.to_resumed is not None else "-", "-", "info"],
            [f"resume total ({left} left)", f"{r.total:.1f} s", "-", "info"],
            ["resume integrity checks", "ok", "ok", "PASS"]]
    if profile or not ok:
        profile_resume(root, src, n)
    return rows, ok


def profile_resume(root: Path, src: Path, n: int) -> None:
    """Crash a second copy of the run and resume it under cProfile; print the top of the profile."""
    print("\n    profiling the resume (cProfile, a second crashed run) ...", flush=True)
    c = crash_half(root, src, n, "profile")
    prof = root / "resume.prof"
    r = timed_resume(root, c, [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "agentrun"], "resume-prof")
    print(f"    under cProfile: first ws_started after {r.to_started:.3f}s, total {r.total:.1f}s")
    import pstats
    stats = pstats.Stats(str(prof))
    wanted = ("prepare_resume", "_compare_source", "load_source", "workstreams_from_snapshots", "build_plan",
              "read_history", "Orchestrator.__init__", "__post_init__", "recover", "Scheduler.__init__",
              "_make_ready", "run_processes", "workstreams", "_repair_git")
    print(f"    {'cumulative s':>12}  {'calls':>8}  function")
    for (file, line, func), (cc, nc, tt, ct, callers) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3]):
        if "agentrun" in file and any(func == w.split(".")[-1] for w in wanted):
            print(f"    {ct:12.3f}  {nc:8d}  {Path(file).name}:{line}({func})")
    print("    top 25 by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)


# --- 2. monitor CPU ------------------------------------------------------------------------
@dataclass
class MonitorCost:
    cpu: float
    wall: float
    steady_cpu: float | None
    steady_wall: float | None
    lines: int
    returncode: int

    @property
    def pct(self) -> float:
        return 100 * self.cpu / self.wall

    @property
    def steady_pct(self) -> float | None:
        if self.steady_cpu is None or not self.steady_wall:
            return None
        return 100 * self.steady_cpu / self.steady_wall


class Watched:
    """A monitor process whose output is drained by a thread; reaped with os.wait4."""

    def __init__(self, argv: list[str], cwd: Path, *, tty: bool):
        self.lines = 0
        self.t0 = time.perf_counter()
        env = bench_env()
        if tty:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            env["TERM"] = "xterm-256color"
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                                         stderr=slave, start_new_session=True)
            os.close(slave)
            self.fd = master
        else:
            r, w = os.pipe()
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=w,
                                         stderr=subprocess.DEVNULL)
            os.close(w)
            self.fd = r
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        self.mark: tuple[float, float] | None = None   # (perf_counter, cpu seconds) after start-up

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:   # EIO on a pty whose other side closed
                break
            if not data:
                break
            self.lines += data.count(b"\n")

    def sample_after_startup(self) -> None:
        if self.mark is None:
            cpu = proc_cpu(self.proc.pid)
            if cpu is not None:
                self.mark = (time.perf_counter(), cpu)

    def reap(self, timeout: float) -> MonitorCost:
        deadline = time.monotonic() + timeout
        last_cpu = None
        while True:
            cpu = proc_cpu(self.proc.pid)   # just before it exits: the steady-state window ends here
            if cpu is not None:
                last_cpu = (time.perf_counter(), cpu)
            pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == self.proc.pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.02)
        wall = time.perf_counter() - self.t0
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.reader.join(5)
        os.close(self.fd)
        steady_cpu = steady_wall = None
        if self.mark and last_cpu and last_cpu[0] - self.mark[0] > 1.0:
            steady_wall = last_cpu[0] - self.mark[0]
            steady_cpu = last_cpu[1] - self.mark[1]
        return MonitorCost(ru.ru_utime + ru.ru_stime, wall, steady_cpu, steady_wall, self.lines,
                           self.proc.returncode)


def monitor_cpu(root: Path, m: int, quick: bool) -> tuple[list[list[str]], bool]:
    src = root / "sleepers"
    write_workstreams(src, independent_graph(m), run={w: ["sleep", "0.01"] for w in independent_graph(m)},
                      per_file=1000)
    state = root / "state-monitor"
    log = root / "run-monitor.log"
    print(f"\n[2] monitor CPU: {m} workstreams `sleep 0.01`, 4 workers; monitor on a pipe "
          f"(and, for information, on a pty)", flush=True)
    t0 = time.perf_counter()
    run = start([*agentrun_cmd(), "run", str(src), "--parallel", "--max-workers", "4", "-q",
                 "--state-dir", str(state)], root, log, start_new_session=True)
    try:
        run_id = wait_for_run(state, run, 120)
        argv = [*agentrun_cmd(), "monitor", run_id, "--state-dir", str(state)]
        piped = Watched(argv, root, tty=False)
        panel = Watched(argv, root, tty=True)
        time.sleep(2.0)
        piped.sample_after_startup()
        panel.sample_after_startup()
        code = run.wait(timeout=600)
        run_wall = time.perf_counter() - t0
        pipe_cost = piped.reap(30)
        panel_cost = panel.reap(30)
    except BaseException:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        raise
    if code != 0:
        invalid(f"the monitored run exited with {code}\n{tail_text(log)}")
    counts = dict(query(state, "SELECT status, COUNT(*) FROM workstreams GROUP BY status"))
    if counts != {"done": m}:
        invalid(f"monitored run: workstream statuses {counts}, expected {{'done': {m}}}")
    for name, cost in (("pipe", pipe_cost), ("pty", panel_cost)):
        if cost.returncode != 0:
            invalid(f"monitor ({name}) exited with {cost.returncode}")
    events = sum(1 for _ in open(state / "runs" / run_id / "events.jsonl", "rb"))
    if pipe_cost.lines < events:
        invalid(f"the piped monitor printed {pipe_cost.lines} lines for {events} events: it did not keep up")
    print(f"    run took {run_wall:.1f}s ({events} events); piped monitor: {pipe_cost.cpu:.2f}s CPU over "
          f"{pipe_cost.wall:.1f}s, {pipe_cost.lines} lines; panel monitor: {panel_cost.cpu:.2f}s CPU over "
          f"{panel_cost.wall:.1f}s", flush=True)
    if run_wall < 10:
        print(f"    note: the run lasted only {run_wall:.1f}s: interpreter start-up weighs more in the percentage")
    ok = pipe_cost.pct < MONITOR_TARGET_PCT
    verdict = "PASS" if ok else "FAIL"
    if quick:   # a run of a few seconds: the monitor's interpreter start-up dominates the percentage
        verdict, ok = f"({verdict}: --quick, not judged)", True
    fmt = lambda v: f"{v:.2f} %" if v is not None else "-"
    rows = [["monitor CPU, pipe (user+sys / wall)", fmt(pipe_cost.pct), f"< {MONITOR_TARGET_PCT:.0f} %", verdict],
            ["monitor CPU, pipe, after start-up", fmt(pipe_cost.steady_pct), "-", "info"],
            ["monitor CPU, pty panel", fmt(panel_cost.pct), "-", "info"],
            ["monitor CPU, pty panel, after start-up", fmt(panel_cost.steady_pct), "-", "info"]]
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 no-ops, 1,500 sleepers; the monitor "
                    "CPU target is not judged (start-up dominates a run of a few seconds)")
    ap.add_argument("--tasks", type=int, default=None, help="no-op workstreams for the resume (default 10000)")
    ap.add_argument("--monitor-tasks", type=int, default=None,
                    help="sleep workstreams for the monitored run (default 6000)")
    ap.add_argument("--profile", action="store_true", help="also profile a resume under cProfile")
    ap.add_argument("--keep", action="store_true", help="keep the generated files under /tmp")
    args = ap.parse_args()
    n = args.tasks or (1000 if args.quick else 10000)
    m = args.monitor_tasks or (1500 if args.quick else 6000)
    if n < 10 or m < 10:
        sys.exit("need at least 10 workstreams")

    root = make_tmp("agentrun-bench-recovery-")
    t0 = begin(f"agentrun recovery benchmark: {' '.join(agentrun_cmd())}; files in {root}")
    try:
        rows1, ok1 = resume_latency(root, n, args.profile)
        rows2, ok2 = monitor_cpu(root, m, args.quick)
    finally:
        remove_unless_kept(root, args.keep)
    print()
    print(fmt_table(["measure", "value", "target", "result"], rows1 + rows2))
    ok = ok1 and ok2
    return finish(ok, t0)


if __name__ == "__main__":
    sys.exit(main())
