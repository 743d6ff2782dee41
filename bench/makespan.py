#!/usr/bin/env python3
"""Schedule quality: makespan / lower bound on seeded random DAGs of sleeps.

Each DAG has 200 workstreams; each runs ``["sleep", "0.XYZ"]`` for a duration
drawn uniformly from 20-200 ms (whole milliseconds) with ``estimate`` set to
that same duration, and depends on 0-3 random earlier workstreams. Runs with
4 workers under the default schedule (eager) and ``--schedule waves``.

    lower bound = max(total work / 4, critical path)      (from the generated durations)
    makespan    = MAX(attempts.finished_at) - MIN(attempts.started_at)   (state DB)

An attempt's interval runs from its claim to its recorded outcome, so
agentrun's per-attempt overhead is part of the makespan. "sim" is agentrun's
own scheduler simulated on the exact durations with zero overhead (what the
policy alone would achieve), shown to separate policy from overhead.
Target: default schedule mean ratio <= 1.15. (Sleeps use no CPU, so 4
workers on 2 cores is fine.)

    .venv/bin/python bench/makespan.py [--quick] [--seeds 3] [--keep]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (agentrun_cmd, begin, check_run, depth, finish, fmt_table, remove_unless_kept,  # noqa: E402
                    make_tmp, random_dag, run_process, warm_up, write_workstreams)

WORKERS = 4
TARGET = 1.15
SCHEDULES = ("eager", "waves")   # eager is agentrun's default


def durations_for(graph, seed: int) -> dict[str, int]:
    rng = random.Random(seed * 7919 + 1)
    return {node: rng.randint(20, 200) for node in graph}


def critical_path_ms(graph, dur_ms) -> int:
    finish: dict[str, int] = {}
    for node, deps in graph.items():   # creation order is topological
        finish[node] = dur_ms[node] + max((finish[d] for d in deps), default=0)
    return max(finish.values())


def simulated(src: Path, dur_ms) -> dict[str, float] | None:
    """agentrun's scheduler on exact durations, zero overhead; None if agentrun is not importable."""
    try:
        from agentrun.plan.planner import build_plan
        from agentrun.plan.scheduler import simulate
        from agentrun.spec.load import load_source
    except ImportError:
        return None
    plan = build_plan(load_source(src).workstreams)
    durations = {w: dur_ms[w] / 1000 for w in plan.workstreams}
    return {mode: simulate(plan, WORKERS, mode, durations) for mode in SCHEDULES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 60 workstreams, 1 seed")
    ap.add_argument("--tasks", type=int, default=None, help="workstreams per DAG (default 200)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files under /tmp")
    args = ap.parse_args()
    n = args.tasks or (60 if args.quick else 200)
    seeds = list(range(1, (args.seeds or (1 if args.quick else 3)) + 1))

    root = make_tmp("agentrun-bench-makespan-")
    t0 = begin(f"agentrun makespan benchmark: {' '.join(agentrun_cmd())}; {n} workstreams, {WORKERS} workers; "
               f"files in {root}",
               consequence="wall-clock throughput is understated; per-attempt latencies grow")
    warm_up(root)
    rows = []
    ratios: dict[str, list[float]] = {s: [] for s in SCHEDULES}
    sim_ratios: dict[str, list[float]] = {s: [] for s in SCHEDULES}
    try:
        for seed in seeds:
            graph = random_dag(n, seed)
            dur_ms = durations_for(graph, seed)
            src = root / f"seed{seed}"
            write_workstreams(src, graph, run={w: ["sleep", f"{d / 1000:.3f}"] for w, d in dur_ms.items()},
                              estimate_ms=dur_ms)
            work = sum(dur_ms.values()) / 1000
            cp = critical_path_ms(graph, dur_ms) / 1000
            bound = max(work / WORKERS, cp)
            sims = simulated(src, dur_ms)
            for schedule in SCHEDULES:
                state = root / f"state-{seed}-{schedule}"
                outcome = run_process([*agentrun_cmd(), "run", str(src), "--parallel", "--max-workers",
                                       str(WORKERS), "--schedule", schedule, "-q", "--state-dir", str(state)],
                                      cwd=root)
                check = check_run(state, outcome, n)
                ratio = check.makespan / bound
                ratios[schedule].append(ratio)
                sim = sims[schedule] if sims else None
                if sim is not None:
                    sim_ratios[schedule].append(sim / bound)
                rows.append([str(seed), schedule, str(depth(graph)), f"{work:.2f}", f"{cp:.2f}", f"{bound:.2f}",
                             f"{check.makespan:.2f}", f"{outcome.wall:.2f}", f"{ratio:.3f}",
                             f"{sim / bound:.3f}" if sim is not None else "-"])
                print(f"  seed {seed} {schedule:<5}: makespan {check.makespan:.2f}s, bound {bound:.2f}s, "
                      f"ratio {ratio:.3f}", flush=True)
    finally:
        remove_unless_kept(root, args.keep)

    print()
    print("Per run (seconds; makespan from the state DB attempts table, wall = whole process)")
    print(fmt_table(["seed", "schedule", "depth", "work", "crit path", "bound", "makespan", "wall",
                     "ratio", "sim ratio"], rows))
    print()
    summary = []
    ok = True
    for schedule in SCHEDULES:
        mean = statistics.mean(ratios[schedule])
        sim = f"{statistics.mean(sim_ratios[schedule]):.3f}" if sim_ratios[schedule] else "-"
        if schedule == "eager":
            passed = mean <= TARGET
            ok &= passed
            verdict = "PASS" if passed else "FAIL"
        else:
            verdict = "(no target)"
        summary.append([f"{schedule}{' (default)' if schedule == 'eager' else ''}", f"{mean:.3f}",
                        f"{min(ratios[schedule]):.3f}", f"{max(ratios[schedule]):.3f}", sim, verdict])
    print(f"makespan / lower bound over {len(seeds)} seed(s), {WORKERS} workers; target: default <= {TARGET}")
    print(fmt_table(["schedule", "mean", "min", "max", "sim mean", f"target <= {TARGET}"], summary))
    return finish(ok, t0)


if __name__ == "__main__":
    sys.exit(main())
