"""The DAG planner: waves, critical path, work, bounds, predicted conflicts.

Pure core: no I/O. Estimates come in as a mapping so history from the state
DB can refine them without this module knowing where they came from.
"""

from __future__ import annotations

import difflib
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from agentrun.spec import globs
from agentrun.errors import UsageError
from agentrun.spec.fields import PRIORITIES
from agentrun.spec.workstream import Workstream

DEFAULT_ESTIMATE = 1.0  # seconds, for workstreams with neither an estimate nor history


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


_INDEX_BITS = 32    # an index in a workstream's files fits below this bit


def predict_conflicts(plan: Plan) -> list[tuple[str, str, str, str]]:
    """Pairs of independent workstreams whose ``files`` may touch the same paths.

    Each pair comes once, ids in order, with the first pattern of each (in
    ``files`` order) that overlaps one of the other's. Only the candidates
    that ``_PatternIndex`` finds are compared.
    """
    ids = sorted(plan.workstreams)
    index = _PatternIndex([plan.workstreams[i].files for i in ids])
    found: dict[int, int] = {}             # pair of ordinals (a * len(ids) + b) -> first pair of indexes
    for p, q in index.overlapping():
        _record_pairs(found, index.holder, index.more_holders, len(ids), p, q)

    pairs = {key: (ids[key // len(ids)], ids[key % len(ids)]) for key in found}
    ordered = _ordered_pairs(plan, pairs.values())
    conflicts = []
    for key in sorted(found):
        (a, b), (i, j) = pairs[key], divmod(found[key], 1 << _INDEX_BITS)
        if (a, b) not in ordered:
            conflicts.append((a, b, plan.workstreams[a].files[i], plan.workstreams[b].files[j]))
    return conflicts


class _PatternIndex:
    """The distinct patterns of the workstreams' ``files``, who holds each, and which overlap.

    A literal is keyed by ``globs.literal_key``, a glob by its text. Two patterns can
    only overlap when one's head (``globs.Pattern.head``) is a prefix of the other's, so
    all are sorted by head, a glob before a literal with the same head, and:

    - a literal is compared with the literals at its path and at the directories above it;
    - a glob, with the patterns after it whose head starts with its own (a run: the globs
      whose head its own starts with come before it and find it in theirs), and with the
      literals at the directories above its head (a literal shorter than the head overlaps
      only from there).

    Holders are ints (workstream ordinal << _INDEX_BITS | index in its files) and the index
    is flat lists: tens of thousands of small containers would set off the garbage
    collector's full scans.
    """

    def __init__(self, files_per_workstream: list[tuple[str, ...]]):
        self.holder: dict[str, int] = {}            # key -> its first holder
        self.more_holders: dict[str, list[int]] = {}
        glob_keys: list[str] = []
        parsed_globs: list[globs.Pattern] = []
        literal_keys: list[str] = []
        for ordinal, files in enumerate(files_per_workstream):
            for index, pattern in enumerate(files):
                literal = globs.literal_key(pattern)
                key = pattern if literal is None else literal
                if key in self.holder:
                    self.more_holders.setdefault(key, [self.holder[key]]).append(ordinal << _INDEX_BITS | index)
                    continue
                self.holder[key] = ordinal << _INDEX_BITS | index
                if literal is None:
                    glob_keys.append(pattern)
                    parsed_globs.append(globs.parse(pattern))
                else:
                    literal_keys.append(literal)
        # Globs first, so that the stable sort leaves each before the literals with its head.
        heads = [glob.head for glob in parsed_globs] + [key.rstrip("/") for key in literal_keys]
        keys = glob_keys + literal_keys
        parsed: list[globs.Pattern | None] = [*parsed_globs, *[None] * len(literal_keys)]
        order = sorted(range(len(heads)), key=heads.__getitem__)
        self.heads = [heads[i] for i in order]
        self.keys = [keys[i] for i in order]
        self.globs = [parsed[i] for i in order]     # None for a literal
        self._above: dict[str, list[str]] = {}      # directory -> keys of the literals at it and above it

    def overlapping(self) -> Iterator[tuple[str, str]]:
        """Pairs of keys whose patterns overlap; a key with itself when it has several holders."""
        yield from ((key, key) for key in self.more_holders)
        yield from self._literal_pairs()
        for n, glob in enumerate(self.globs):
            if glob is not None:
                yield from self._glob_pairs(n, glob)

    def _literals_above(self, path: str) -> list[str]:
        """The keys of the literals at the directories above ``path`` (the root is above any other path)."""
        if not path:
            return []
        directory = path.rpartition("/")[0]
        if directory not in self._above:   # computed once per directory: many paths share one
            here = [key for key in (directory, directory + "/") if key in self.holder]
            self._above[directory] = self._literals_above(directory) + here
        return self._above[directory]

    def _literal_pairs(self) -> Iterator[tuple[str, str]]:
        """Each literal with the literals at its path (once) and at the directories above it."""
        for key, glob in zip(self.keys, self.globs):
            if glob is None:
                path = key.rstrip("/")
                if key != path and path in self.holder:
                    yield path, key                 # "v1.2" and "v1.2/" name the same path
                for above in self._literals_above(path):
                    yield above, key

    def _glob_pairs(self, n: int, glob: globs.Pattern) -> Iterator[tuple[str, str]]:
        """The pairs of the ``n``th pattern, a glob, with the patterns after it and the literals above it."""
        head, key = self.heads[n], self.keys[n]
        files = []       # literals taken to be files overlap a glob only by being matched: one regex for many
        for m in range(n + 1, _run_end(self.heads, n + 1, head)):
            other = self.keys[m]
            if self.globs[m] is not None:
                if globs.overlap(glob, self.globs[m]):
                    yield key, other
            elif not globs.could_be_directory(other):
                files.append(other)
            elif globs.overlap(glob, globs.parse(other)):
                yield key, other
        for path in globs.matched_files(glob, files):
            yield key, path
        for other in self._literals_above(head):
            if globs.overlap(glob, globs.parse(other)):
                yield key, other


def _run_end(strings: list[str], start: int, prefix: str) -> int:
    """Where the run of sorted ``strings`` from ``start`` that begin with ``prefix`` ends."""
    end = start
    while end < len(strings) and strings[end].startswith(prefix):
        end += 1
    return end


def _record_pairs(found: dict[int, int], holder: dict[str, int], more_holders: dict[str, list[int]],
                  count: int, p: str, q: str) -> None:
    """Note that the holders of ``p`` and of ``q`` overlap, keeping per pair of workstreams
    the earliest pair of ``files`` indexes."""
    for x in more_holders.get(p) or (holder[p],):
        a, i = divmod(x, 1 << _INDEX_BITS)
        for y in more_holders.get(q) or (holder[q],):
            b, j = divmod(y, 1 << _INDEX_BITS)
            if a == b:
                continue
            key, indexes = (a * count + b, i << _INDEX_BITS | j) if a < b else (b * count + a, j << _INDEX_BITS | i)
            if indexes < found.get(key, indexes + 1):
                found[key] = indexes


_TARGETS_PER_PASS = 4096   # bits per ancestor bitset: bounds memory at workstreams x 512 bytes


def _ordered_pairs(plan: Plan, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The pairs in which one workstream depends, perhaps transitively, on the other.

    Only a workstream in a later wave can depend on one in an earlier wave, and
    only on one that something depends on. Those earlier members get a bit
    each; one pass along the waves ORs every workstream's dependencies' bits
    into its own ancestor bitset.
    """
    wave, children = plan.wave_of, plan.children
    queries: dict[str, list[tuple[str, tuple[str, str]]]] = {}   # earlier -> (later, pair)
    for a, b in pairs:
        if wave[a] != wave[b]:
            earlier, later = (a, b) if wave[a] < wave[b] else (b, a)
            if children[earlier]:
                queries.setdefault(earlier, []).append((later, (a, b)))
    targets = sorted(queries, key=lambda t: (wave[t], t))   # a pass starts at its earliest target's wave
    ordered = set()
    for start in range(0, len(targets), _TARGETS_PER_PASS):
        bit = {t: 1 << k for k, t in enumerate(targets[start:start + _TARGETS_PER_PASS])}
        last = max(wave[later] for t in bit for later, _ in queries[t])
        reach = dict(bit)   # workstream -> bits of the targets among it and its ancestors
        get, deps = reach.get, plan.deps
        asked = {later for t in bit for later, _ in queries[t]}
        for level in plan.waves[min(wave[t] for t in bit) + 1:last + 1]:
            for node in level:
                if not children[node] and node not in asked:
                    continue   # nothing reads its bitset
                mask = get(node, 0)
                for d in deps[node]:
                    mask |= get(d, 0)
                if mask:
                    reach[node] = mask
        for t, mask in bit.items():
            ordered.update(pair for later, pair in queries[t] if reach.get(later, 0) & mask)
    return ordered
