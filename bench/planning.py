#!/usr/bin/env python3
"""Planning time with and without ``files``: what conflict prediction costs.

50,000 workstreams on a seeded random DAG (each depends on 0-3 random earlier
ones, as in bench/overhead.py), planned by ``build_plan`` without ``files`` and
with each of these sets of ``files``:

- realistic: 1-3 entries each:
  - its own module, a distinct literal path (``pkg123/mod_7.py``), always;
  - 40%: its test file (``pkg123/tests/test_mod_7.py``);
  - 8%: its package's tests as a glob (``pkg123/tests/*.py``);
  - 2%: its package's docs (``docs/pkg123/**/*.md``);
  - 24 random workstreams also take ``**/*.md`` and 24 ``shared/config.toml``,
    so that real conflicts exist (the broad glob overlaps every docs glob);
- globs sharing a prefix: one glob each, ``tests/test_m123_*.py`` (one literal
  directory prefix for all: indexed by it, they were compared pairwise);
- literals and globs sharing a prefix: ``tests/test_m123.py`` and
  ``tests/test_m123_*.py`` each (so, too, was every glob with every literal).

The workstreams are built before timing; only ``build_plan`` is timed (no
I/O), each time in a forked child, as a CLI process plans once: no cache warmed
by an earlier repetition. Median of several repetitions, interleaved. Planning
is single-threaded CPU work, so the target is judged on CPU time (wall time,
which other processes on the machine inflate, is shown too). Target: with each
set of ``files`` at most 2.0x the CPU time without.

    .venv/bin/python bench/planning.py [--quick] [--tasks 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import begin, depth, finish, fmt_table, invalid, random_dag  # noqa: E402

from agentrun.plan.planner import build_plan  # noqa: E402
from agentrun.spec.command import Command  # noqa: E402
from agentrun.spec.workstream import Workstream  # noqa: E402

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


def globs_sharing_a_prefix(graph: dict[str, list[str]], seed: int) -> dict[str, tuple[str, ...]]:
    return {node: (f"tests/test_m{i}_*.py",) for i, node in enumerate(graph)}


def literals_and_globs_sharing_a_prefix(graph: dict[str, list[str]], seed: int) -> dict[str, tuple[str, ...]]:
    return {node: (f"tests/test_m{i}.py", f"tests/test_m{i}_*.py") for i, node in enumerate(graph)}


SCENARIOS = {   # name -> files for each workstream of a graph
    "realistic": files_for,
    "globs sharing a prefix": globs_sharing_a_prefix,
    "literals and globs sharing a prefix": literals_and_globs_sharing_a_prefix,
}
WITHOUT = "without files"


def workstreams(graph: dict[str, list[str]], files: dict[str, tuple[str, ...]] | None) -> list[Workstream]:
    return [Workstream(id=node, run=Command(argv=("true",)), depends_on=tuple(deps),
                       files=files[node] if files else ()) for node, deps in graph.items()]


def time_plan(items: list[Workstream]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, predicted conflicts) of ``build_plan`` in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child plans, reports on the pipe and exits: it never returns
        try:
            os.close(read_end)
            gc.collect()   # before the clock: it also copies the pages the parent shares
            wall, cpu = time.perf_counter(), time.process_time()
            plan = build_plan(items)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            os.write(write_end, f"{wall} {cpu} {len(plan.conflicts)}".encode())
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reply = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(reply) != 3:
        invalid(f"the child planning {len(items)} workstreams failed (wait status {status})")
    return float(reply[0]), float(reply[1]), int(reply[2])


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
    print(f"# random DAG: {n} workstreams, {sum(map(len, graph.values()))} dependency edges, depth {depth(graph)}")
    kinds = {WITHOUT: workstreams(graph, None)}
    for name, files_of in SCENARIOS.items():
        files = files_of(graph, SEED)
        entries = sum(map(len, files.values()))
        globs = sum(1 for fs in files.values() for f in fs if "*" in f)
        print(f"# with files, {name}: {entries} `files` entries, {globs} of them globs")
        kinds[f"with files, {name}"] = workstreams(graph, files)

    walls: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpus: dict[str, list[float]] = {kind: [] for kind in kinds}
    conflicts: dict[str, int] = {}
    for _ in range(repeat):   # interleaved, so that load from elsewhere hits every kind alike
        for kind, items in kinds.items():
            wall, cpu, conflicts[kind] = time_plan(items)
            walls[kind].append(wall)
            cpus[kind].append(cpu)
    median = {kind: (statistics.median(walls[kind]), statistics.median(cpus[kind])) for kind in kinds}
    print()
    print(f"build_plan, median of {repeat}:")
    print(fmt_table(["plan", "conflicts", "wall s", "CPU s", "CPU min s", "CPU max s"],
                    [[kind, str(conflicts[kind]), f"{median[kind][0]:.3f}", f"{median[kind][1]:.3f}",
                      f"{min(cpus[kind]):.3f}", f"{max(cpus[kind]):.3f}"] for kind in kinds]))
    print()
    ok = True
    for kind in list(kinds)[1:]:
        ratio = median[kind][1] / median[WITHOUT][1]
        ok = ok and ratio <= TARGET
        print(f"ratio {kind} / {WITHOUT}: {ratio:.2f}x CPU (target <= {TARGET:.1f}x): "
              f"{'target met' if ratio <= TARGET else 'TARGET MISSED'}; "
              f"wall: {median[kind][0] / median[WITHOUT][0]:.2f}x")
    return finish(ok, t0)


if __name__ == "__main__":
    sys.exit(main())
