#!/usr/bin/env python3
"""Per-workstream overhead of agentrun vs ``make -j``, and the orchestrator's peak memory.

Throughput: N no-op workstreams (``run = ["true"]``, argv form, no shell) as
(a) independent and (b) a seeded random DAG (each node depends on up to 3
random earlier nodes). For --max-workers 2 and 4, time

    agentrun run DIR --parallel --max-workers N -q --state-dir <fresh>

and ``make -j N`` on the same graph as a Makefile (one .PHONY target per
workstream, recipe ``@true``). Wall time covers the whole process (interpreter
start, parsing, planning, the run); "in-run" is agentrun's own run clock
(runs.finished_at - runs.created_at), which leaves out startup and parsing.
Target: agentrun >= 0.5x make's tasks/second.

Memory: 10,000 independent no-op workstreams at 2 workers. Target < 150 MB.

Every agentrun run is checked: exit code 0, run status done, every
workstream and attempt ``done`` in the state DB.

    .venv/bin/python bench/overhead.py [--quick] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (agentrun_cmd, begin, check_run, depth, finish, fmt_table, remove_unless_kept,  # noqa: E402
                    independent_graph, invalid, make_tmp, random_dag, run_process, warm_up,
                    write_makefile, write_workstreams)

THROUGHPUT_TARGET = 0.5      # agentrun tasks/s >= this x make's
MEMORY_TARGET_MB = 150.0
SEED = 1234


STATE_ROOT: Path | None = None  # --state-root: where fresh state dirs go (default: the bench dir)


def fresh_state(root: Path, tag: str) -> Path:
    return (STATE_ROOT or root) / f"state-{tag}"


def time_agentrun(src: Path, root: Path, workers: int, n: int, tag: str) -> tuple[float, float, float]:
    """(wall seconds, in-run seconds, CPU seconds of agentrun + workers + commands)."""
    state = fresh_state(root, tag)
    outcome = run_process([*agentrun_cmd(), "run", str(src), "--parallel", "--max-workers", str(workers),
                           "-q", "--state-dir", str(state)], cwd=root)
    check = check_run(state, outcome, n)
    # State dirs are kept until the end: deleting thousands of files between runs makes the next run's
    # file creation slower on ext4 (it skips recently deleted inodes), which would be charged to agentrun.
    return outcome.wall, check.in_run, outcome.cpu


def time_make(makefile: Path, root: Path, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of make + recipes)."""
    outcome = run_process(["make", "-j", str(workers), "-f", str(makefile), "all"], cwd=root)
    if outcome.returncode != 0:
        invalid(f"make exited {outcome.returncode}: {outcome.stderr[-2000:]}")
    return outcome.wall, outcome.cpu


def throughput(root: Path, n: int, repeat: int, budget: float) -> bool:
    graphs = {"independent": independent_graph(n), "random-dag": random_dag(n, SEED)}
    headers = ["graph", "workers", "tasks", "agentrun s", "agentrun t/s", "in-run t/s", "make s", "make t/s",
               "ratio", f"target >= {THROUGHPUT_TARGET}x", "CPU ms/task agentrun", "make", "runs"]
    rows = []
    ok = True
    for name, graph in graphs.items():
        src = root / name
        write_workstreams(src, graph)
        makefile = root / f"{name}.mk"
        write_makefile(makefile, graph)
        print(f"# {name}: {n} workstreams, {sum(map(len, graph.values()))} dependency edges, "
              f"depth {depth(graph)}", flush=True)
        for workers in (2, 4):
            ar_walls, ar_inrun, ar_cpus, mk_walls, mk_cpus = [], [], [], [], []
            for r in range(repeat):
                if r > 0 and time.perf_counter() > budget:
                    break  # out of time: keep what we have (at least one run per configuration)
                wall, in_run, cpu = time_agentrun(src, root, workers, n, f"{name}-{workers}-{r}")
                ar_walls.append(wall)
                ar_inrun.append(in_run)
                ar_cpus.append(cpu)
                wall, cpu = time_make(makefile, root, workers)
                mk_walls.append(wall)
                mk_cpus.append(cpu)
            ar, inrun, mk, ar_cpu, mk_cpu = (statistics.median(x) for x in
                                             (ar_walls, ar_inrun, mk_walls, ar_cpus, mk_cpus))
            ratio = (n / ar) / (n / mk)
            passed = ratio >= THROUGHPUT_TARGET
            ok &= passed
            rows.append([name, str(workers), str(n), f"{ar:.2f}", f"{n / ar:.0f}", f"{n / inrun:.0f}",
                         f"{mk:.2f}", f"{n / mk:.0f}", f"{ratio:.2f}x", "PASS" if passed else "FAIL",
                         f"{1000 * ar_cpu / n:.2f}", f"{1000 * mk_cpu / n:.2f}", str(len(ar_walls))])
    print()
    print(f"Throughput (median of up to {repeat} runs each, see 'runs'; wall time includes process start "
          "and parsing)")
    print(fmt_table(headers, rows))
    print("CPU ms/task: user+sys from wait4 over the whole process tree (agentrun, its workers and every\n"
          "`true`; make and every `true`), divided by tasks; it barely moves with machine load.")
    return ok


def memory(root: Path, n: int) -> bool:
    src = root / "memory"
    write_workstreams(src, independent_graph(n))
    state = fresh_state(root, "memory")
    outcome = run_process([*agentrun_cmd(), "run", str(src), "--parallel", "--max-workers", "2", "-q",
                           "--state-dir", str(state)], cwd=root, sample=True)
    check = check_run(state, outcome, n)
    rss_mb = outcome.maxrss_kb / 1024
    hwm_mb = outcome.vmhwm_kb / 1024
    worker_mb = outcome.worker_vmhwm_kb / 1024
    passed = hwm_mb < MEMORY_TARGET_MB and rss_mb < MEMORY_TARGET_MB
    print()
    print(f"Peak memory: {n} independent no-op workstreams, --max-workers 2 "
          f"(run took {outcome.wall:.1f}s wall, {n / outcome.wall:.0f} t/s, in-run {check.in_run:.1f}s)")
    print(fmt_table(["measure", "MB", f"target < {MEMORY_TARGET_MB:.0f} MB"], [
        ["orchestrator VmHWM (sampled /proc/<pid>/status)", f"{hwm_mb:.1f}",
         "PASS" if hwm_mb < MEMORY_TARGET_MB else "FAIL"],
        ["wait4 ru_maxrss (orchestrator + reaped workers)", f"{rss_mb:.1f}",
         "PASS" if rss_mb < MEMORY_TARGET_MB else "FAIL"],
        ["largest worker VmHWM (sampled, for reference)", f"{worker_mb:.1f}", "-"],
    ]))
    print("note: ru_maxrss from wait4 is the maximum over the orchestrator and the descendants it reaped\n"
          "      (its workers, forked copies of it, which inherit its heap), not the orchestrator alone;\n"
          "      VmHWM is sampled every 10 ms from the orchestrator pid only, so it can miss a last spike.")
    return passed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 tasks, 2,000 for memory, 1 repeat")
    ap.add_argument("--tasks", type=int, default=None, help="workstreams per throughput graph (default 2000)")
    ap.add_argument("--memory-tasks", type=int, default=None, help="workstreams for memory (default 10000)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per configuration, median reported (3)")
    ap.add_argument("--state-root", default=None,
                    help="make the fresh state dirs under this directory, e.g. /dev/shm to take the disk's "
                         "file-creation cost out (default: the benchmark's /tmp dir)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the throughput part; repeats stop when it is spent (default 100, quick 30)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files under /tmp")
    args = ap.parse_args()
    n = args.tasks or (300 if args.quick else 2000)
    mem_n = args.memory_tasks or (2000 if args.quick else 10000)
    repeat = args.repeat or (1 if args.quick else 3)
    if shutil.which("make") is None:
        sys.exit("make is not installed")

    global STATE_ROOT
    root = make_tmp("agentrun-bench-overhead-")
    if args.state_root:
        STATE_ROOT = Path(tempfile.mkdtemp(prefix="agentrun-bench-state-", dir=args.state_root))
    t0 = begin(f"agentrun overhead benchmark: {' '.join(agentrun_cmd())}; files in {root}; "
               f"state dirs in {STATE_ROOT or root}")
    try:
        warm_up(root)
        ok = throughput(root, n, repeat, t0 + (args.budget or (30 if args.quick else 100)))
        ok &= memory(root, mem_n)
    finally:
        remove_unless_kept(root, args.keep)
        if not args.keep and STATE_ROOT is not None:
            shutil.rmtree(STATE_ROOT, ignore_errors=True)
    return finish(ok, t0)


if __name__ == "__main__":
    sys.exit(main())
