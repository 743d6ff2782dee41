"""The DAG planner: waves, critical path, bounds, selection, estimates, predicted conflicts, rendering."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrun.spec import globs
from agentrun.errors import UsageError
from agentrun.spec.globs import patterns_overlap
from agentrun.plan.planner import DEFAULT_ESTIMATE, build_plan, predict_conflicts, select
from agentrun.views.plan import FORMATS, plan_summary, render_plan
from agentrun.plan.scheduler import WAVES, simulate
from agentrun.spec.command import Command
from agentrun.spec.fields import PRIORITIES
from agentrun.spec.load import parse_documents
from agentrun.spec.workstream import Workstream

EPS = 1e-9


def ws(ws_id: str, *deps: str, estimate: float | None = None, **kw) -> Workstream:
    return Workstream(id=ws_id, run=Command(shell="true"), depends_on=tuple(deps), estimate=estimate, **kw)


# --- random DAGs -----------------------------------------------------------------

@st.composite
def dags(draw, max_nodes: int = 8):
    """Workstreams whose edges only go from a lower to a higher creation index (so acyclic).

    Ids are a random permutation, so id order says nothing about topological order.
    """
    n = draw(st.integers(1, max_nodes))
    names = draw(st.permutations([f"w{i}" for i in range(n)]))
    estimates = draw(st.lists(st.integers(0, 20).map(float) | st.floats(0, 20, allow_nan=False),
                              min_size=n, max_size=n))
    priorities = draw(st.lists(st.sampled_from(PRIORITIES), min_size=n, max_size=n))
    out = []
    for j in range(n):
        parents = draw(st.sets(st.integers(0, j - 1), max_size=3)) if j else set()
        out.append(ws(names[j], *sorted(names[i] for i in parents), estimate=estimates[j],
                      priority=priorities[j]))
    return out


def all_paths(workstreams):
    """Every dependency path (as a list of ids, dependency first), by brute-force enumeration."""
    children = {w.id: [c.id for c in workstreams if w.id in c.depends_on] for w in workstreams}
    paths = []

    def extend(path):
        paths.append(path)
        for c in children[path[-1]]:
            extend(path + [c])
    for w in workstreams:
        extend([w.id])
    return paths


def longest_path_dp(workstreams) -> float:
    """Longest finish time over all chains: finish(w) = est(w) + max finish(dep)."""
    est = {w.id: w.estimate for w in workstreams}
    deps = {w.id: w.depends_on for w in workstreams}
    finish: dict[str, float] = {}

    def f(i):
        if i not in finish:
            finish[i] = est[i] + max((f(d) for d in deps[i]), default=0.0)
        return finish[i]
    return max(f(i) for i in est)


PROPS = settings(max_examples=150, deadline=None)


@PROPS
@given(dags())
def test_every_workstream_is_in_exactly_one_wave(workstreams):
    plan = build_plan(workstreams)
    flat = [w for wave in plan.waves for w in wave]
    assert sorted(flat) == sorted(w.id for w in workstreams)
    assert all(wave for wave in plan.waves)
    for index, wave in enumerate(plan.waves):
        assert wave == sorted(wave)
        assert all(plan.wave_of[w] == index for w in wave)


@PROPS
@given(dags())
def test_no_workstream_is_in_a_wave_at_or_before_a_dependency(workstreams):
    plan = build_plan(workstreams)
    for w in workstreams:
        for d in w.depends_on:
            assert plan.wave_of[w.id] > plan.wave_of[d]
        # and as early as that allows: waves are dependency levels
        expected = 1 + max((plan.wave_of[d] for d in w.depends_on), default=-1)
        assert plan.wave_of[w.id] == expected


@PROPS
@given(dags(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_input_order(workstreams, rnd):
    first = build_plan(workstreams)
    shuffled = list(workstreams)
    rnd.shuffle(shuffled)
    again = build_plan(shuffled)
    assert again.waves == first.waves
    assert again.critical_path == first.critical_path
    assert again.rank == first.rank
    assert list(again.workstreams) == list(first.workstreams)
    assert simulate(again, 3) == simulate(first, 3)


@PROPS
@given(dags())
def test_critical_path_is_a_real_dependency_path_of_maximal_length(workstreams):
    plan = build_plan(workstreams)
    path = plan.critical_path
    assert path, "a non-empty plan has a critical path"
    assert len(set(path)) == len(path)
    for before, after in zip(path, path[1:]):
        assert before in plan.deps[after]
    lengths = [sum(plan.estimates[i] for i in p) for p in all_paths(workstreams)]
    assert plan.critical_length == pytest.approx(max(lengths))
    assert plan.critical_length == pytest.approx(longest_path_dp(workstreams))


@PROPS
@given(dags())
def test_rank_is_the_longest_remaining_path(workstreams):
    plan = build_plan(workstreams)
    for w in workstreams:
        tails = [sum(plan.estimates[i] for i in p) for p in all_paths(workstreams) if p[0] == w.id]
        assert plan.rank[w.id] == pytest.approx(max(tails))


@PROPS
@given(dags(), st.integers(1, 5))
def test_lower_bound_is_max_of_work_share_and_critical_path(workstreams, workers):
    plan = build_plan(workstreams)
    work = sum(w.estimate for w in workstreams)
    assert plan.total_work == pytest.approx(work)
    assert plan.lower_bound(workers) == pytest.approx(max(work / workers, longest_path_dp(workstreams)))


@PROPS
@given(dags(), st.integers(1, 5))
def test_eager_makespan_lies_between_lower_bound_and_grahams_bound(workstreams, workers):
    plan = build_plan(workstreams)
    makespan = simulate(plan, workers)
    work, cp = plan.total_work, plan.critical_length
    assert makespan >= plan.lower_bound(workers) - EPS
    assert makespan <= work / workers + (1 - 1 / workers) * cp + EPS


@PROPS
@given(dags())
def test_eager_makespan_extremes(workstreams):
    plan = build_plan(workstreams)
    assert simulate(plan, 1) == pytest.approx(plan.total_work)                 # one worker: all the work
    assert simulate(plan, len(workstreams)) == pytest.approx(plan.critical_length)  # enough workers: the path


@PROPS
@given(dags(), st.integers(1, 4))
def test_waves_makespan_respects_barriers(workstreams, workers):
    plan = build_plan(workstreams)
    makespan = simulate(plan, workers, WAVES)
    longest_per_wave = [max(plan.estimates[w] for w in wave) for wave in plan.waves]
    per_wave_graham = [sum(plan.estimates[w] for w in wave) / workers + (1 - 1 / workers) * longest
                       for wave, longest in zip(plan.waves, longest_per_wave)]
    assert makespan >= sum(longest_per_wave) - EPS
    assert makespan >= plan.lower_bound(workers) - EPS
    assert makespan <= sum(per_wave_graham) + EPS


@PROPS
@given(dags(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_simulate_follows_actual_durations_not_estimates(workstreams, workers, rnd):
    plan = build_plan(workstreams)
    actual = {w.id: float(rnd.randint(0, 9)) for w in workstreams}
    truth = build_plan([ws(w.id, *w.depends_on, estimate=actual[w.id]) for w in workstreams])
    makespan = simulate(plan, workers, durations=actual)
    assert makespan >= truth.lower_bound(workers) - EPS
    assert makespan <= truth.total_work / workers + (1 - 1 / workers) * truth.critical_length + EPS


# --- examples: shape of a plan ---------------------------------------------------

def test_plan_of_a_diamond():
    plan = build_plan([ws("d", "b", "c", estimate=1), ws("c", "a", estimate=5), ws("b", "a", estimate=2),
                       ws("a", estimate=3)])
    assert plan.waves == [["a"], ["b", "c"], ["d"]]
    assert plan.critical_path == ["a", "c", "d"]
    assert plan.critical_length == 9
    assert plan.total_work == 11
    assert plan.rank == {"a": 9, "b": 3, "c": 6, "d": 1}
    assert plan.children == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}
    assert plan.lower_bound(2) == 9
    assert plan.best_speedup(2) == pytest.approx(11 / 9)


def test_empty_plan():
    plan = build_plan([])
    assert plan.waves == [] and plan.critical_path == [] and plan.total_work == 0
    assert plan.lower_bound(4) == 0 and plan.best_speedup(4) == 1.0
    assert simulate(plan, 4) == 0.0


def test_a_cycle_among_direct_workstreams_is_a_usage_error():
    with pytest.raises(UsageError, match="cycle"):
        build_plan([ws("a", "b"), ws("b", "a")])


def test_dependencies_outside_the_selection_count_as_done():
    plan = build_plan([ws("b", "a", "x"), ws("c", "b")])
    assert plan.deps == {"b": (), "c": ("b",)}
    assert plan.ignored_deps == {"b": ("a", "x")}
    assert plan.waves == [["b"], ["c"]]


def test_history_medians_override_spec_estimates():
    plan = build_plan([ws("a", estimate=100), ws("b", estimate=7), ws("c"), ws("d")],
                      history={"a": [4.0, 10.0, 6.0], "c": [1.0, 3.0], "d": [], "zzz": [9.0]})
    assert plan.estimates == {"a": 6.0, "b": 7.0, "c": 2.0, "d": DEFAULT_ESTIMATE}
    assert plan.estimate_source == {"a": "history", "b": "spec", "c": "history", "d": "default"}


# --- select ----------------------------------------------------------------------

CHAIN = parse_documents([("w.toml", {"workstream": [
    {"id": "setup", "run": "true"},
    {"id": "build", "run": "true", "depends_on": ["setup"]},
    {"id": "test", "run": "true", "depends_on": ["build"]},
    {"id": "docs", "run": "true"},
]})])


def test_select_without_deps_takes_only_the_named():
    assert [w.id for w in select(CHAIN, ["test", "docs"], with_deps=False)] == ["docs", "test"]


def test_select_with_deps_takes_everything_they_need():
    assert [w.id for w in select(CHAIN, ["test"], with_deps=True)] == ["build", "setup", "test"]
    assert [w.id for w in select(CHAIN, ["build"], with_deps=True)] == ["build", "setup"]


def test_select_unknown_id_suggests_a_close_one():
    with pytest.raises(UsageError) as info:
        select(CHAIN, ["test", "biuld"], with_deps=False)
    assert str(info.value) == "--ws-id: unknown workstream 'biuld'; did you mean build?"


def test_select_unknown_id_without_close_match():
    with pytest.raises(UsageError) as info:
        select(CHAIN, ["qqqqqq"], with_deps=True)
    assert str(info.value) == "--ws-id: unknown workstream 'qqqqqq'"


# --- predicted conflicts ---------------------------------------------------------------

def test_predict_conflicts_pairs_independent_workstreams_with_overlapping_files():
    plan = build_plan([ws("a", files=("src/*.py",)), ws("b", files=("docs/x.md", "src/util.py")),
                       ws("c", files=("docs/y.md",)), ws("d")])
    assert plan.conflicts == [("a", "b", "src/*.py", "src/util.py")]
    keys = plan.exclusion_keys()
    assert keys["a"] == keys["b"] == frozenset({"conflict:a|b"})
    assert keys["c"] == keys["d"] == frozenset()


def test_predict_conflicts_ignores_pairs_ordered_by_dependencies():
    plan = build_plan([ws("a", files=("src",)), ws("b", "a", files=("src/b.py",)),
                       ws("c", "b", files=("src/c.py",)), ws("d", files=("src/d.py",))])
    # a < b < c are ordered (c depends on a only transitively); d is independent of all three.
    assert [(x, y) for x, y, _, _ in plan.conflicts] == [("a", "d")]
    assert predict_conflicts(plan) == plan.conflicts


FILES = ["src", "src/", "./src", "src/a.py", "src/b.py", "src/*.py", "src/*/x.py", "src/**", "src/su?/",
         "docs", "docs/*.md", "docs/sub/n.md", "**/*.md", "*.md", "README.md", "v1.2", "v1.2/", "v1.2/x.txt",
         "**/*.txt", "pkg*/", "pkg1/a.py", ".", "[z-a].py", "src/a\\"]


def depends(workstreams, a: str, b: str) -> bool:
    deps = {w.id: w.depends_on for w in workstreams}
    stack, seen = [a], set()
    while stack:
        for d in deps[stack.pop()]:
            if d == b:
                return True
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return False


def brute_force_conflicts(workstreams):
    """Every pair, every pair of patterns, in order: what the index must find."""
    found = []
    ordered = sorted(workstreams, key=lambda w: w.id)
    for n, a in enumerate(ordered):
        for b in ordered[n + 1:]:
            hit = next(((p, q) for p in a.files for q in b.files if patterns_overlap(p, q)), None)
            if hit and not depends(workstreams, a.id, b.id) and not depends(workstreams, b.id, a.id):
                found.append((a.id, b.id, *hit))
    return found


@settings(max_examples=300, deadline=None)
@given(dags(max_nodes=10), st.data())
def test_predicted_conflicts_are_the_brute_force_ones(workstreams, data):
    with_files = [ws(w.id, *w.depends_on, files=tuple(data.draw(st.lists(st.sampled_from(FILES), max_size=3))))
                  for w in workstreams]
    assert build_plan(with_files).conflicts == brute_force_conflicts(with_files)


def test_predicted_conflicts_on_a_larger_random_plan():
    """Many holders per pattern, deeper dependency chains, dependencies ruling pairs out."""
    rnd = random.Random(3)
    workstreams = [ws(f"w{i:03d}", *sorted({f"w{rnd.randrange(i):03d}" for _ in range(rnd.randint(0, 2))} if i else ()),
                      files=tuple(rnd.sample(FILES, rnd.randint(0, 3)))) for i in range(150)]
    conflicts = build_plan(workstreams).conflicts
    assert conflicts == brute_force_conflicts(workstreams)
    assert len(conflicts) > 1000 and any(depends(workstreams, w.id, v.id) and set(w.files) & set(v.files)
                                         for w in workstreams for v in workstreams)


# Shapes the index must get right: many globs with one literal prefix, globs and literals
# whose heads share a beginning, nested directories, ** in the middle, literal directories
# above globs, the project root, escapes.
SHARED_HEADS = ["tests/test_m1_*.py", "tests/test_m1*.py", "tests/test_m12_*.py", "tests/test_m1.py",
                "tests/test_m1_a.py", "tests/test_m12.py", "tests/test_m*", "tests/*_m1_*.py", "tests/test_m1_*/",
                "tests", "tests/", "tests/sub", "tests/sub/test_m1_b.py", "tests/**/test_m1_*.py", "tests/**/x",
                "tests/sub/**", "**/test_m1_*.py", "tests/test_m1_x.py/y", "tests/test_m1_x.py", ".",
                "./tests//test_m1_*.py", "tests/test_m1_[ab].py", "tests/test_m1_\\*.py", "tests/test_m1_\\",
                "te*", "v1.2", "v1.2/", "v1.2/*.txt", "v1.2/x.txt"]


@settings(max_examples=300, deadline=None)
@given(dags(max_nodes=10), st.data())
def test_predicted_conflicts_are_the_brute_force_ones_for_shared_heads(workstreams, data):
    with_files = [ws(w.id, *w.depends_on,
                     files=tuple(data.draw(st.lists(st.sampled_from(SHARED_HEADS), max_size=3))))
                  for w in workstreams]
    assert build_plan(with_files).conflicts == brute_force_conflicts(with_files)


def test_predicted_conflicts_on_a_larger_plan_with_shared_heads():
    rnd = random.Random(5)
    shapes = ["tests/test_m{k}_*.py", "tests/test_m{k}.py", "tests/sub{k}/test_m{k}.py", "tests/**/test_m{k}_*.py",
              "tests/sub{k}", "tests/sub{k}/*", "docs/**/m{k}.md", "tests/test_m{k}*"]
    workstreams = [ws(f"w{i:03d}", *sorted({f"w{rnd.randrange(i):03d}" for _ in range(rnd.randint(0, 2))} if i else ()),
                      files=tuple(rnd.choice(shapes).format(k=rnd.randrange(12)) for _ in range(rnd.randint(1, 3))))
                   for i in range(200)]
    workstreams[17] = ws("w017", files=("tests",))
    workstreams[42] = ws("w042", files=(".",))
    conflicts = build_plan(workstreams).conflicts
    assert conflicts == brute_force_conflicts(workstreams)
    assert len(conflicts) > 500


def test_globs_sharing_a_prefix_are_not_compared_pairwise(monkeypatch):
    """The tester's shape: no two of these patterns overlap, and no pair need be compared.

    ``overlap`` and ``matched_files`` are watched, not replaced: they still give every answer.
    """
    compared = []
    overlap, matched_files = globs.overlap, globs.matched_files
    monkeypatch.setattr(globs, "overlap", lambda a, b: compared.append((a, b)) or overlap(a, b))
    monkeypatch.setattr(globs, "matched_files", lambda glob, files: compared.extend(files) or matched_files(glob, files))
    workstreams = [ws(f"w{i:04d}", files=(f"tests/test_m{i}.py", f"tests/test_m{i}_*.py")) for i in range(2000)]
    workstreams.append(ws("w9999", files=("tests/test_m7_a.py",)))

    assert build_plan(workstreams).conflicts == [("w0007", "w9999", "tests/test_m7_*.py", "tests/test_m7_a.py")]
    assert len(compared) <= len(workstreams)    # all pairs: 2,000,000


def test_conflict_groups_and_exclusive_workstreams():
    plan = build_plan([ws("a", conflict_group="db"), ws("b", conflict_group="db"), ws("c", parallel_ok=False),
                       ws("d")])
    keys = plan.exclusion_keys()
    assert keys["a"] == keys["b"] == frozenset({"group:db"})
    assert plan.exclusive() == frozenset({"c"})


# --- rendering -----------------------------------------------------------------------

def render_fixture():
    return build_plan([ws("a", estimate=3), ws("b-x", "a", estimate=2), ws("c.y", "a", estimate=5),
                       ws("d", "b-x", "c.y", estimate=1, files=("src/d.py",)), ws("e", files=("src",))],
                      history={"e": [2.0]})


def test_render_text_shows_waves_path_and_bounds():
    text = render_plan(render_fixture(), 2, "text", title="demo")
    lines = text.splitlines()
    assert lines[0] == "Plan for demo: 5 workstreams, 3 waves, 2 workers"
    assert lines[1] == "  wave 1: a (3.0s), e (2.0sh)"
    assert lines[2] == "  wave 2: b-x (2.0s), c.y (5.0s)"
    assert "critical path: a -> c.y -> d  (9.0s)" in text
    assert "d <-> e  (src/d.py overlaps src)" in text
    assert "lower bound: max(work/2 = 6.5s, critical path = 9.0s) = 9.0s" in text


def test_render_json_parses_and_matches_the_plan():
    plan = render_fixture()
    data = json.loads(render_plan(plan, 2, "json"))
    assert data == json.loads(json.dumps(plan_summary(plan, 2)))
    assert data["waves"] == [["a", "e"], ["b-x", "c.y"], ["d"]]
    assert data["critical_path"] == ["a", "c.y", "d"]
    assert data["critical_path_s"] == 9.0 and data["total_work_s"] == 13.0
    assert data["lower_bound_s"] == 9.0 and data["estimated_makespan_s"] >= 9.0
    assert {w["id"]: w["depends_on"] for w in data["workstreams"]}["d"] == ["b-x", "c.y"]
    assert data["predicted_conflicts"] == [{"a": "d", "b": "e", "files_a": "src/d.py", "files_b": "src"}]


def test_render_dot_contains_every_edge():
    dot = render_plan(render_fixture(), 2, "dot")
    assert dot.startswith("digraph agentrun {") and dot.endswith("}")
    for edge in ['"a" -> "b-x";', '"a" -> "c.y" [color=red', '"b-x" -> "d";', '"c.y" -> "d" [color=red']:
        assert edge in dot
    assert '"d" -> "e" [dir=none, style=dashed' in dot
    assert dot.count(" -> ") == 5


def test_render_mermaid_contains_every_edge_with_distinct_node_ids():
    plan = build_plan([ws("a"), ws("x-y", "a"), ws("x_y", "a"), ws("x.y", "x-y", "x_y")])
    lines = render_plan(plan, 2, "mermaid").splitlines()
    assert lines[0] == "graph LR"
    nodes = {line.split("[")[0].strip(): line for line in lines if '["' in line}
    assert len(nodes) == 4, "different workstream ids must be different mermaid nodes"
    node_of = {w: next(n for n, line in nodes.items() if f'["{w} (' in line) for w in plan.workstreams}
    edges = {tuple(line.split(" --> ")) for line in (line.strip() for line in lines) if " --> " in line}
    assert edges == {(node_of[d], node_of[w]) for w in plan.workstreams for d in plan.deps[w]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_a_random_plan(fmt):
    rnd = random.Random(7)
    workstreams = [ws(f"w{i}", *sorted({f"w{rnd.randrange(i)}" for _ in range(rnd.randint(0, 2))} if i else ()),
                      estimate=float(rnd.randint(1, 9))) for i in range(12)]
    out = render_plan(build_plan(workstreams), 3, fmt)
    assert out
    if fmt == "json":
        assert len(json.loads(out)["workstreams"]) == 12
    if fmt in ("dot", "mermaid"):
        arrow = " -> " if fmt == "dot" else " --> "
        assert out.count(arrow) == sum(len(w.depends_on) for w in workstreams)
