"""Shared helpers for the agentrun benchmarks: graphs, workstream files, runs, checks.

Everything is generated under /tmp (never inside a git repository: agentrun
resolves its project root with ``git rev-parse`` from the working directory)
and every run gets a fresh state directory.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

Graph = dict[str, list[str]]  # ws id -> ids it depends on, in creation order


def ws_id(i: int) -> str:
    return f"w{i:05d}"


def independent_graph(n: int) -> Graph:
    return {ws_id(i): [] for i in range(n)}


def random_dag(n: int, seed: int, max_deps: int = 3) -> Graph:
    """Each node depends on 0..max_deps distinct random earlier nodes."""
    rng = random.Random(seed)
    graph: Graph = {}
    for i in range(n):
        k = rng.randint(0, min(max_deps, i))
        graph[ws_id(i)] = [ws_id(j) for j in sorted(rng.sample(range(i), k))]
    return graph


def depth(graph: Graph) -> int:
    level: dict[str, int] = {}
    for node, deps in graph.items():  # creation order is a topological order
        level[node] = 1 + max((level[d] for d in deps), default=0)
    return max(level.values(), default=0)


def _toml_list(items) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


def write_workstreams(directory: Path, graph: Graph, run: dict[str, list[str]] | None = None,
                      estimate_ms: dict[str, int] | None = None, per_file: int = 1000) -> None:
    """Write the graph as ``[[workstream]]`` tables, ``per_file`` to a file, argv-form commands."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = list(graph)
    for chunk, start in enumerate(range(0, len(ids), per_file)):
        lines = []
        for node in ids[start:start + per_file]:
            lines.append("[[workstream]]")
            lines.append(f'id = "{node}"')
            lines.append(f"run = {_toml_list(run[node] if run else ['true'])}")
            if graph[node]:
                lines.append(f"depends_on = {_toml_list(graph[node])}")
            if estimate_ms is not None:
                lines.append(f'estimate = "{estimate_ms[node]}ms"')
            lines.append("")
        (directory / f"ws{chunk:03d}.toml").write_text("\n".join(lines), encoding="utf-8")


def write_makefile(path: Path, graph: Graph) -> None:
    """One .PHONY target per workstream, its dependencies as prerequisites, recipe ``@true``."""
    ids = list(graph)
    out = [".PHONY: all " + " ".join(ids), "all: " + " ".join(ids), ""]
    for node in ids:
        out.append(f"{node}: {' '.join(graph[node])}".rstrip())
        out.append("\t@true")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def make_tmp(prefix: str) -> Path:
    """A fresh directory under /tmp, checked not to be inside a git work tree."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    probe = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if probe.returncode == 0:
        shutil.rmtree(path, ignore_errors=True)
        sys.exit(f"benchmark dir {path} is inside git work tree {probe.stdout.strip()}; refusing to run")
    return path


def agentrun_cmd() -> list[str]:
    """How to start agentrun: $AGENTRUN (a path) or this interpreter's ``-m agentrun``."""
    exe = os.environ.get("AGENTRUN")
    return [exe] if exe else [sys.executable, "-m", "agentrun"]


PYCACHE = "/tmp/agentrun-bench-pycache"


def bench_env() -> dict[str, str]:
    """The environment for measured commands.

    No crash points. Bytecode is cached (under /tmp, never in the source tree) even where
    PYTHONDONTWRITEBYTECODE is set, as it is in some sandboxes: an installed agentrun has its
    .pyc files, and compiling every module at each start is not agentrun's cost.
    """
    env = dict(os.environ)
    env.pop("AGENTRUN_CRASH_AT", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", PYCACHE)
    return env


def warm_up(root: Path) -> None:
    """One tiny run before measuring: fills the bytecode cache and the OS file cache."""
    src = root / "warm-up"
    write_workstreams(src, {"w00000": [], "w00001": ["w00000"]})
    outcome = run_process([*agentrun_cmd(), "run", str(src), "--parallel", "--max-workers", "2", "-q",
                           "--state-dir", str(root / "state-warm-up")], cwd=root)
    check_run(root / "state-warm-up", outcome, 2)


@dataclass
class RunOutcome:
    wall: float                 # seconds, process start to reap
    returncode: int
    cpu: float                  # wait4 user+sys seconds of the process and every descendant it reaped
    maxrss_kb: int              # wait4 ru_maxrss: max over the process and the children it reaped
    vmhwm_kb: int               # sampled VmHWM of the orchestrator process itself (0 if not sampled)
    worker_vmhwm_kb: int        # largest sampled VmHWM among its direct children (the workers)
    stdout: str
    stderr: str


def _vmhwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def run_process(argv: list[str], cwd: Path, *, sample: bool = False, interval: float = 0.01,
                timeout: float = 600.0) -> RunOutcome:
    """Run ``argv``, reap it with ``os.wait4``; optionally sample VmHWM of it and its children."""
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=bench_env(), stdin=subprocess.DEVNULL, stdout=out_f,
                            stderr=err_f)
    pid = proc.pid
    hwm = worker_hwm = 0
    deadline = t0 + timeout
    while True:
        if sample:
            hwm = max(hwm, _vmhwm(pid))
            for child in _children(pid):
                worker_hwm = max(worker_hwm, _vmhwm(child))
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(interval)
        else:
            wpid, status, ru = os.wait4(pid, 0)
            break
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping again
    out_f.seek(0)
    err_f.seek(0)
    return RunOutcome(wall, proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, hwm, worker_hwm,
                      out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace"))


EXIT_TARGET_MISSED = 1   # the benchmark ran, a target was not met
EXIT_INVALID = 2         # the benchmark cannot be trusted: a run failed or left work undone


def invalid(msg: str) -> None:
    print(f"BENCHMARK INVALID: {msg}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INVALID)


@dataclass
class RunCheck:
    run_id: str
    in_run: float               # runs.finished_at - runs.created_at
    makespan: float             # MIN(attempts.started_at) .. MAX(attempts.finished_at)


def check_run(state_dir: Path, outcome: RunOutcome, expected: int) -> RunCheck:
    """Fail loudly unless the run exited 0 and every workstream (and one attempt each) is done."""
    def fail(msg: str) -> None:
        invalid(f"{msg}\n--- stdout ---\n{outcome.stdout[-2000:]}\n--- stderr ---\n{outcome.stderr[-2000:]}")

    if outcome.returncode != 0:
        fail(f"agentrun exited with {outcome.returncode}")
    db_path = state_dir / "state.db"
    if not db_path.is_file():
        fail(f"no state DB at {db_path}")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        runs = db.execute("SELECT id, status, created_at, finished_at FROM runs").fetchall()
        if len(runs) != 1:
            fail(f"expected 1 run in a fresh state dir, found {len(runs)}")
        run_id, run_status, created, finished = runs[0]
        if run_status != "done":
            fail(f"run {run_id} has status {run_status!r}")
        counts = dict(db.execute("SELECT status, COUNT(*) FROM workstreams WHERE run_id = ? GROUP BY status",
                                 (run_id,)).fetchall())
        if counts != {"done": expected}:
            fail(f"workstream statuses {counts}, expected {{'done': {expected}}}")
        attempts = dict(db.execute("SELECT status, COUNT(*) FROM attempts WHERE run_id = ? GROUP BY status",
                                   (run_id,)).fetchall())
        if attempts != {"done": expected}:
            fail(f"attempt statuses {attempts}, expected {{'done': {expected}}}")
        first, last = db.execute("SELECT MIN(started_at), MAX(finished_at) FROM attempts WHERE run_id = ?",
                                 (run_id,)).fetchone()
    finally:
        db.close()
    return RunCheck(run_id, finished - created, last - first)


def load_note(consequence: str = "wall-clock throughput is understated; CPU ms/task is the steadier number"
              ) -> str | None:
    """A warning when other work competes for the CPUs (wall-clock numbers are then noisy)."""
    load1 = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load1 > 0.5 * cpus:
        return (f"warning: load average {load1:.1f} on {cpus} CPUs before this benchmark: other work competes "
                f"for the CPUs, {consequence}")
    return None


def begin(title: str, **note) -> float:
    """The opening lines every benchmark prints (its title, the load, a warning if loaded);
    returns the start time for ``finish``."""
    print(title)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    warning = load_note(**note)
    if warning:
        print(warning)
    return time.perf_counter()


def remove_unless_kept(root: Path, keep: bool) -> None:
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def finish(ok: bool, t0: float) -> int:
    """The closing lines every benchmark prints; returns its exit code."""
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(includes this benchmark's own processes)")
    print(f"overall: {'PASS' if ok else 'FAIL'} (benchmark took {time.perf_counter() - t0:.0f}s)")
    return 0 if ok else EXIT_TARGET_MISSED
