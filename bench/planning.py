#!/usr/bin/env python3
"""Planning time with and without ``files``: what conflict prediction costs.

50,000 workstreams on a seeded random DAG (each depends on 0-3 random earlier
ones, as in bench/overhead.py), planned by ``build_plan`` twice: once without
``files``, once with 1-3 ``files`` entries each:

- its own module, a distinct literal path (``pkg123/mod_7.py``), always;
- 40%: its test file (``pkg123/tests/test_mod_7.py``);
- 8%: its package's tests as a glob (``pkg123/tests/*.py``);
- 2%: its package's docs (``docs/pkg123/**/*.md``);
- 24 random workstreams also take ``**/*.md`` and 24 ``shared/config.toml``,
  so that real conflicts exist (the broad glob overlaps every docs glob).

The workstreams are built before timing; only ``build_plan`` is timed (in
this process, no I/O), median of several repetitions, interleaved. Planning
is single-threaded CPU work, so the target is judged on CPU time (wall time,
which other processes on the machine inflate, is shown too). Target: with
``files`` at most 2.0x the CPU time without.

    .venv/bin/python bench/planning.py [--quick] [--tasks 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import begin, depth, finish, fmt_table, random_dag  # noqa: E402

from agentrun.planner import build_plan  # noqa: E402
from agentrun.spec import Command, Workstream  # noqa: E402

TARGET = 2.0     # planning with files <= this x planning without
SEED = 1234
BROAD = 24       # workstreams with each broad pattern


def files_for(graph: dict[str, list[str]], seed: int) -> dict[str, tuple[str, ...]]:
    rng = random.Random(seed)
    files: dict[str, tuple[str, ...]] = {}
    for i, node in enumerate(graph):
        package, module = f"pkg{i // 10}", f"mod_{i % 10}"
        entries = [f"{package}/{module}.py"]
        if rng.random() < 0.40:
            entries.append(f"{package}/tests/test_{module}.py")
        if rng.random() < 0.08:
            entries.append(f"{package}/tests/*.py")
        if rng.random() < 0.02:
            entries.append(f"docs/{package}/**/*.md")
        files[node] = tuple(entries[:2])
    chosen = rng.sample(list(graph), 2 * BROAD)
    for k, node in enumerate(chosen):
        files[node] += ("**/*.md" if k < BROAD else "shared/config.toml",)
    return files


def workstreams(graph: dict[str, list[str]], files: dict[str, tuple[str, ...]] | None) -> list[Workstream]:
    return [Workstream(id=node, run=Command(argv=("true",)), depends_on=tuple(deps),
                       files=files[node] if files else ()) for node, deps in graph.items()]


def time_plan(items: list[Workstream]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, the plan)."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    plan = build_plan(items)
    return time.perf_counter() - wall, time.process_time() - cpu, plan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 workstreams, 2 repetitions")
    ap.add_argument("--tasks", type=int, default=None, help="workstreams (default 50000)")
    ap.add_argument("--repeat", type=int, default=None, help="plans of each kind, median reported (default 5)")
    args = ap.parse_args()
    n = args.tasks or (5000 if args.quick else 50000)
    repeat = args.repeat or (2 if args.quick else 5)

    t0 = begin(f"agentrun planning benchmark: build_plan on {n} workstreams, without and with `files`",
               consequence="wall times are inflated; CPU times and their ratio are the steadier numbers")
    graph = random_dag(n, SEED)
    files = files_for(graph, SEED)
    plain, with_files = workstreams(graph, None), workstreams(graph, files)
    entries = sum(map(len, files.values()))
    globs = sum(1 for fs in files.values() for f in fs if "*" in f)
    print(f"# random DAG: {n} workstreams, {sum(map(len, graph.values()))} dependency edges, depth {depth(graph)}; "
          f"{entries} `files` entries, {globs} of them globs")

    walls: dict[str, list[float]] = {"without files": [], "with files": []}
    cpus: dict[str, list[float]] = {"without files": [], "with files": []}
    conflicts = 0
    for _ in range(repeat):   # interleaved, so that load from elsewhere hits both kinds alike
        for kind, items in (("without files", plain), ("with files", with_files)):
            wall, cpu, plan = time_plan(items)
            walls[kind].append(wall)
            cpus[kind].append(cpu)
        conflicts = len(plan.conflicts)
    median = {kind: (statistics.median(walls[kind]), statistics.median(cpus[kind])) for kind in walls}
    ratio = median["with files"][1] / median["without files"][1]
    ok = ratio <= TARGET
    print(f"# predicted conflicts with files: {conflicts}")
    print()
    print(f"build_plan, median of {repeat}:")
    print(fmt_table(["plan", "wall s", "CPU s", "CPU min s", "CPU max s"],
                    [[kind, f"{median[kind][0]:.3f}", f"{median[kind][1]:.3f}", f"{min(cpus[kind]):.3f}",
                      f"{max(cpus[kind]):.3f}"] for kind in walls]))
    print(f"\nratio with/without files: {ratio:.2f}x CPU (target <= {TARGET:.1f}x): "
          f"{'target met' if ok else 'TARGET MISSED'}; "
          f"wall: {median['with files'][0] / median['without files'][0]:.2f}x")
    return finish(ok, t0)


if __name__ == "__main__":
    sys.exit(main())
