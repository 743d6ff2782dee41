"""The DAG planner: waves, critical path, work, bounds, predicted conflicts.

Pure core: no I/O. Estimates come in as a mapping so history from the state
DB can refine them without this module knowing where they came from.
"""

from __future__ import annotations

import difflib
import posixpath
import statistics
from fnmatch import fnmatchcase
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .errors import UsageError
from .spec import PRIORITIES, Workstream

DEFAULT_ESTIMATE = 1.0  # seconds, for workstreams with neither an estimate nor history
_WILDCARDS = "*?["


@dataclass
class Plan:
    workstreams: dict[str, Workstream]
    deps: dict[str, tuple[str, ...]]
    children: dict[str, tuple[str, ...]]
    estimates: dict[str, float]
    estimate_source: dict[str, str]          # "spec", "history" or "default"
    waves: list[list[str]]
    wave_of: dict[str, int]
    rank: dict[str, float]                   # longest path from here to a sink, including itself
    critical_path: list[str]
    conflicts: list[tuple[str, str, str, str]] = field(default_factory=list)  # a, b, pattern a, pattern b
    ignored_deps: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def total_work(self) -> float:
        return sum(self.estimates.values())

    @property
    def critical_length(self) -> float:
        return sum(self.estimates[w] for w in self.critical_path)

    def lower_bound(self, workers: int) -> float:
        return max(self.total_work / max(workers, 1), self.critical_length)

    def best_speedup(self, workers: int) -> float:
        bound = self.lower_bound(workers)
        return self.total_work / bound if bound else 1.0

    def priority_key(self, ws_id: str) -> tuple:
        """Ready-queue order: longest remaining path first, then priority, then id."""
        return (-self.rank[ws_id], PRIORITIES.index(self.workstreams[ws_id].priority), ws_id)

    def exclusion_keys(self) -> dict[str, frozenset[str]]:
        """Resources each workstream holds while running; two holders of a key never overlap."""
        keys: dict[str, set[str]] = {w: set() for w in self.workstreams}
        for a, b, _, _ in self.conflicts:
            key = f"conflict:{a}|{b}"
            keys[a].add(key)
            keys[b].add(key)
        for ws in self.workstreams.values():
            if ws.conflict_group:
                keys[ws.id].add(f"group:{ws.conflict_group}")
        return {w: frozenset(k) for w, k in keys.items()}

    def exclusive(self) -> frozenset[str]:
        return frozenset(w for w, ws in self.workstreams.items() if not ws.parallel_ok)

    def estimated_makespan(self, workers: int) -> float:
        from .scheduler import simulate  # local import: scheduler builds on Plan
        return simulate(self, workers)


def select(workstreams: list[Workstream], ids: Iterable[str], with_deps: bool) -> list[Workstream]:
    """The named workstreams, plus (with_deps) everything they depend on."""
    by_id = {w.id: w for w in workstreams}
    wanted = list(ids)
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        hints = difflib.get_close_matches(unknown[0], list(by_id), n=3)
        extra = f"; did you mean {', '.join(hints)}?" if hints else ""
        raise UsageError(f"--ws-id: unknown workstream '{unknown[0]}'{extra}")
    chosen: set[str] = set()
    stack = list(wanted)
    while stack:
        ws_id = stack.pop()
        if ws_id in chosen:
            continue
        chosen.add(ws_id)
        if with_deps:
            stack.extend(by_id[ws_id].depends_on)
    return [w for w in workstreams if w.id in chosen]


def build_plan(workstreams: list[Workstream], history: Mapping[str, list[float]] | None = None) -> Plan:
    """Plan the given workstreams. Dependencies outside the set count as satisfied."""
    history = history or {}
    by_id = {w.id: w for w in sorted(workstreams, key=lambda w: w.id)}
    deps = {i: tuple(d for d in w.depends_on if d in by_id) for i, w in by_id.items()}
    ignored = {i: tuple(d for d in w.depends_on if d not in by_id) for i, w in by_id.items()}
    ignored = {i: d for i, d in ignored.items() if d}
    children: dict[str, list[str]] = {i: [] for i in by_id}
    for i, ds in deps.items():
        for d in ds:
            children[d].append(i)

    estimates: dict[str, float] = {}
    source: dict[str, str] = {}
    for i, w in by_id.items():
        past = history.get(i)
        if past:
            estimates[i], source[i] = statistics.median(past), "history"
        elif w.estimate is not None:
            estimates[i], source[i] = w.estimate, "spec"
        else:
            estimates[i], source[i] = DEFAULT_ESTIMATE, "default"

    # Kahn's algorithm by levels; ids sorted inside a wave for a deterministic plan.
    indegree = {i: len(ds) for i, ds in deps.items()}
    level = sorted(i for i, n in indegree.items() if n == 0)
    waves: list[list[str]] = []
    wave_of: dict[str, int] = {}
    while level:
        waves.append(level)
        nxt = []
        for i in level:
            wave_of[i] = len(waves) - 1
            for c in children[i]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    nxt.append(c)
        level = sorted(nxt)
    if len(wave_of) != len(by_id):
        raise UsageError("dependency cycle among selected workstreams")  # parse_documents reports it first

    rank: dict[str, float] = {}
    best_child: dict[str, str | None] = {}
    for wave in reversed(waves):
        for i in wave:
            tail, pick = 0.0, None
            for c in sorted(children[i]):
                if rank[c] > tail:
                    tail, pick = rank[c], c
            rank[i] = estimates[i] + tail
            best_child[i] = pick
    path: list[str] = []
    if rank:
        node: str | None = min(rank, key=lambda i: (-rank[i], i))
        while node is not None:
            path.append(node)
            node = best_child[node]

    plan = Plan(by_id, deps, {i: tuple(sorted(c)) for i, c in children.items()}, estimates, source,
                waves, wave_of, rank, path, ignored_deps=ignored)
    plan.conflicts = predict_conflicts(plan)
    return plan


def depends_transitively(deps: Mapping[str, tuple[str, ...]], node: str, target: str) -> bool:
    """Is ``target`` reachable from ``node`` by following dependencies?"""
    seen, stack = set(), [node]
    while stack:
        for d in deps[stack.pop()]:
            if d == target:
                return True
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return False


def predict_conflicts(plan: Plan) -> list[tuple[str, str, str, str]]:
    """Pairs of independent workstreams whose ``files`` may touch the same paths."""
    with_files = [w for w in plan.workstreams.values() if w.files]
    if len(with_files) < 2:
        return []
    found = []
    for index, a in enumerate(with_files):
        for b in with_files[index + 1:]:
            hit = next(((p, q) for p in a.files for q in b.files if paths_overlap(p, q)), None)
            if hit and not (depends_transitively(plan.deps, a.id, b.id)
                            or depends_transitively(plan.deps, b.id, a.id)):
                found.append((a.id, b.id, hit[0], hit[1]))
    return found


def _literal_prefix(pattern: str) -> str:
    cut = min((pattern.find(c) for c in _WILDCARDS if c in pattern), default=len(pattern))
    return pattern[:cut]


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in _WILDCARDS)


def _norm(path: str) -> str:
    """Normalise a path or glob: ./src//a.py -> src/a.py; the project root (. or ./) -> empty."""
    path = posixpath.normpath(path).strip("/")
    return "" if path == "." else path


def _is_dir_prefix(prefix: str, path: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _reaches_into(pattern: str, directory: str) -> bool:
    """Could ``pattern`` name something below ``directory``, segment by segment?

    "src/*/x.py" reaches into "src/sub"; "src/*.py" does not reach into
    "src/a.txt" (read as a file name: "*" stays within one segment here).
    """
    segments, parts = pattern.split("/"), directory.split("/") if directory else []
    for index, part in enumerate(parts):
        if index >= len(segments):
            return False
        if "**" in segments[index]:
            return True
        if not fnmatchcase(part, segments[index]):
            return False
    return len(segments) > len(parts)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


def paths_overlap(p: str, q: str) -> bool:
    """Could the path-or-glob ``p`` name a file that ``q`` also names?

    Conservative (a predicted conflict only serialises work): a directory
    covers everything below it; a glob is compared by its literal prefix and
    its literal suffix.
    """
    p, q = _norm(p), _norm(q)
    wild_p, wild_q = _has_wildcard(p), _has_wildcard(q)
    if not wild_p and not wild_q:
        return _is_dir_prefix(p, q) or _is_dir_prefix(q, p)
    if wild_p and wild_q:
        lp, lq = _literal_prefix(p), _literal_prefix(q)
        if not (lp.startswith(lq) or lq.startswith(lp)):
            return False
        sp, sq = _literal_suffix(p), _literal_suffix(q)
        return sp.endswith(sq) or sq.endswith(sp)
    pattern, literal = (p, q) if wild_p else (q, p)
    # fnmatch's "*" crosses "/", so "src/*" covers the whole tree below src/;
    # a literal directory covers any glob that reaches into it, and a glob
    # that names a directory covers the files below it.
    return (fnmatchcase(literal, pattern) or _is_dir_prefix(literal, _literal_prefix(pattern))
            or _reaches_into(pattern, literal)
            or any(fnmatchcase(parent, pattern) for parent in _ancestors(literal)))


def _literal_suffix(pattern: str) -> str:
    cut = max(pattern.rfind(c) for c in "*?]")
    return pattern[cut + 1:]
