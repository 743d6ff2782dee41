"""Scheduling decisions: ready-queue order, wave barriers, failures, exclusion, retries; retry policy."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrun.plan import retry as policy
from agentrun.plan.planner import build_plan
from agentrun.plan.scheduler import (EAGER, RESERVE_MAX, SHORT_ATTEMPT_SECONDS, WAVES, Scheduler, lookahead, simulate,
                                to_release, to_reserve)
from agentrun.spec.command import Command
from agentrun.spec.fields import PRIORITIES
from agentrun.spec.workstream import Workstream


def ws(ws_id: str, *deps: str, estimate: float | None = 1.0, **kw) -> Workstream:
    return Workstream(id=ws_id, run=Command(shell="true"), depends_on=tuple(deps), estimate=estimate, **kw)


def sched_of(*workstreams: Workstream, mode: str = EAGER, **kw) -> Scheduler:
    return Scheduler(build_plan(list(workstreams)), mode, **kw)


# --- ready-queue order ---------------------------------------------------------

def test_priority_order_is_longest_path_then_priority_then_id():
    s = sched_of(
        ws("head", estimate=1), ws("tail", "head", estimate=10),       # head: remaining path 11
        ws("big", estimate=5, priority="low"),                          # 5
        ws("zz-crit", priority="critical"), ws("b-high", priority="high"), ws("a-high", priority="high"),
        ws("norm"), ws("low", priority="low"),                          # all 1
    )
    expected = ["head", "big", "zz-crit", "a-high", "b-high", "norm", "low"]
    assert s.initially_ready == sorted(expected)
    assert s.queued() == expected
    assert s.pending() == ["head", "tail", "big", "zz-crit", "a-high", "b-high", "norm", "low"]
    assert s.take(3) == expected[:3]
    assert s.take(10) == expected[3:]
    assert s.take(10) == []


def test_take_respects_free_slots():
    s = sched_of(ws("a"), ws("b"), ws("c"))
    assert s.take(0) == []
    assert s.take(2) == ["a", "b"]
    assert s.running == {"a", "b"}
    assert s.queued() == ["c"]


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        sched_of(ws("a"), mode="fastest")


# --- eager vs waves: the A(10)->B(1), C(1)->D(10) example ------------------------------

def two_chains():
    return build_plan([ws("a", estimate=10), ws("b", "a", estimate=1), ws("c", estimate=1), ws("d", "c", estimate=10)])


def test_eager_starts_work_as_soon_as_its_dependencies_are_done():
    plan = two_chains()
    assert simulate(plan, 2) == 11
    s = Scheduler(plan, EAGER)
    assert s.take(2) == ["a", "c"]
    assert s.mark_done("c") == ["d"]
    assert s.take(1) == ["d"]          # d does not wait for a
    assert s.mark_done("a") == ["b"]
    assert s.take(1) == ["b"]


def test_waves_mode_waits_for_the_whole_wave():
    plan = two_chains()
    assert plan.waves == [["a", "c"], ["b", "d"]]
    assert simulate(plan, 2, WAVES) == 20
    s = Scheduler(plan, WAVES)
    assert s.take(2) == ["a", "c"]
    assert s.mark_done("c") == ["d"]   # ready, but behind the barrier
    assert s.take(1) == []
    assert s.wave == 0
    s.mark_done("a")
    assert s.wave == 1
    assert s.take(2) == ["d", "b"]


def test_waves_barrier_opens_when_the_rest_of_the_wave_fails():
    s = sched_of(ws("a"), ws("x"), ws("b", "a"), mode=WAVES)
    assert s.take(2) == ["a", "x"]
    s.mark_done("a")
    assert s.take(1) == []
    s.mark_failed("x")
    assert s.take(1) == ["b"]


# --- failures --------------------------------------------------------------------

def test_mark_failed_blocks_transitive_dependents_and_nothing_else():
    # a -> b -> c <- e,  a -> d,  f -> g,  d2 depends on d (two levels below a)
    s = sched_of(ws("a"), ws("b", "a"), ws("c", "b", "e"), ws("d", "a"), ws("d2", "d"), ws("e"), ws("f"),
                 ws("g", "f"))
    started = s.take(10)
    assert set(started) == {"a", "e", "f"}
    assert s.mark_failed("a") == ["b", "c", "d", "d2"]
    assert s.blocked == {"b", "c", "d", "d2"}
    assert s.failed == {"a"}
    assert s.mark_done("e") == []       # c is blocked: it never becomes ready
    assert s.mark_done("f") == ["g"]
    assert s.take(10) == ["g"]
    s.mark_done("g")
    assert s.finished()
    assert s.done == {"e", "f", "g"}
    assert s.pending() == []


def test_mark_failed_in_a_diamond_blocks_each_dependent_once():
    s = sched_of(ws("a"), ws("b", "a"), ws("c", "a"), ws("d", "b", "c"), mode=WAVES)
    s.take(1)
    assert s.mark_failed("a") == ["b", "c", "d"]
    assert s.finished()
    assert s._unfinished_in_wave == [0, 0, 0]


def test_a_dependent_already_done_is_not_blocked():
    s = sched_of(ws("a"), ws("b"), ws("c", "a"), ws("d", "c", "b"), completed=["a", "c"])
    assert s.initially_ready == ["b"]
    assert s.take(1) == ["b"]
    assert s.mark_failed("b") == ["d"]
    assert s.done == {"a", "c"}


def test_resume_with_completed_work():
    s = sched_of(ws("a"), ws("b", "a"), ws("c", "b"), ws("x"), completed=["a", "x"], mode=WAVES)
    assert s.initially_ready == ["b"]
    assert s.wave == 1
    assert s.take(2) == ["b"]


def test_blocked_at_start_blocks_its_dependents_too():
    s = sched_of(ws("a"), ws("b", "a"), ws("c", "b"), ws("x"), mode=WAVES, blocked=["a"])
    assert s.blocked == {"a", "b", "c"}
    assert s.take(5) == ["x"]
    s.mark_done("x")
    assert s.finished()
    assert s.pending() == []


# --- exclusion -----------------------------------------------------------------------

def test_same_conflict_group_never_runs_together():
    s = sched_of(ws("a", conflict_group="db"), ws("b", conflict_group="db"), ws("c"))
    assert s.take(3) == ["a", "c"]
    assert s.take(3) == []
    s.mark_done("a")
    assert s.take(3) == ["b"]


def test_predicted_file_conflicts_never_run_together():
    s = sched_of(ws("a", files=("src/*.py",)), ws("b", files=("src/util.py",)), ws("c", files=("docs",)))
    assert s.take(3) == ["a", "c"]
    s.mark_done("c")
    assert s.take(3) == []
    s.mark_done("a")
    assert s.take(3) == ["b"]


def test_a_workstream_that_is_not_parallel_ok_runs_alone():
    s = sched_of(ws("x", estimate=5, parallel_ok=False), ws("a"), ws("b"))
    assert s.take(3) == ["x"]
    assert s.take(3) == []
    s.mark_done("x")
    assert s.take(3) == ["a", "b"]


def test_an_exclusive_best_candidate_drains_the_workers():
    s = sched_of(ws("a", estimate=9), ws("x", estimate=5, parallel_ok=False), ws("b"), ws("c"))
    assert s.take(3) == ["a"]           # x is next best: nothing else starts meanwhile
    assert s.take(2) == []
    s.mark_done("a")
    assert s.take(3) == ["x"]
    s.mark_done("x")
    assert s.take(3) == ["b", "c"]


def test_an_exclusive_candidate_drains_in_waves_mode_despite_later_waves_in_the_queue():
    # p (wave 0) unlocks r (wave 1), which outranks x but sits behind the barrier.
    s = sched_of(ws("p", estimate=1), ws("r", "p", estimate=100), ws("s", estimate=50),
                 ws("x", estimate=5, parallel_ok=False), ws("y"), mode=WAVES)
    assert s.take(2) == ["p", "s"]
    assert s.mark_done("p") == ["r"]
    assert s.take(1) == []              # x is the best of its wave: y must not overtake it
    s.mark_done("s")
    assert s.take(2) == ["x"]


# --- retries: defer / requeue / release -----------------------------------------------

def test_defer_and_requeue_for_a_retry():
    s = sched_of(ws("a"), ws("b", "a"), ws("c", conflict_group="g"), ws("d", conflict_group="g"), mode=WAVES)
    assert s.take(2) == ["a", "c"]
    s.defer("a")                        # attempt 1 failed; waiting out its back-off
    assert s.waiting == {"a"} and "a" not in s.running
    assert not s.finished()
    s.defer("c")                        # deferring frees its conflict group
    assert s.take(5) == ["d"]
    s.requeue("a")
    assert s.waiting == {"c"}
    assert s.take(5) == ["a"]
    assert s.mark_done("a") == ["b"]
    assert s.take(5) == []              # wave 0 not settled: c is still to be retried
    s.mark_done("d")
    s.requeue("c")
    assert s.take(5) == ["c"]
    s.mark_done("c")
    assert s.take(5) == ["b"]


def test_requeue_of_an_interrupted_running_workstream_frees_its_exclusion_keys():
    s = sched_of(ws("a", conflict_group="g"), ws("b", conflict_group="g"))
    assert s.take(2) == ["a"]
    s.requeue("a")
    assert s.running == set()
    assert s.take(2) == ["a"]
    s.mark_done("a")
    assert s.take(2) == ["b"]


def test_release_frees_the_slot_without_an_outcome():
    s = sched_of(ws("a", parallel_ok=False), ws("b"))
    assert s.take(2) == ["a"]
    s.release("a")
    assert s.running == set()
    assert "a" in s.pending() and "a" not in s.done
    assert s.take(2) == ["b"]


def test_mark_failed_of_a_deferred_workstream_settles_it():
    s = sched_of(ws("a"), ws("b", "a"))
    s.take(1)
    s.defer("a")
    assert s.mark_failed("a") == ["b"]
    assert s.finished()


# --- invariants on random DAGs under random outcomes ---------------------------------

@st.composite
def scenarios(draw, exclusion: bool = True):
    n = draw(st.integers(1, 9))
    names = [f"w{i}" for i in range(n)]
    out = []
    for j in range(n):
        parents = draw(st.sets(st.integers(0, j - 1), max_size=3)) if j else set()
        extra = {}
        if exclusion:
            extra = dict(conflict_group=draw(st.sampled_from([None, None, "g1", "g2"])),
                         parallel_ok=draw(st.sampled_from([True] * 6 + [False])),
                         files=draw(st.sampled_from([(), (), ("src/a.py",), ("src",), ("docs/*.md",)])))
        out.append(ws(names[j], *(names[i] for i in sorted(parents)), estimate=float(draw(st.integers(0, 9))),
                      priority=draw(st.sampled_from(PRIORITIES)), **extra))
    outcomes = {w: draw(st.sampled_from(["done", "done", "done", "failed", "retry"])) for w in names}
    return out, outcomes, draw(st.integers(1, 4)), draw(st.sampled_from([EAGER, WAVES]))


def descendants(plan, roots):
    seen, stack = set(), list(roots)
    while stack:
        for c in plan.children[stack.pop()]:
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def drive(plan, mode, workers, outcomes, check_start):
    """Run the scheduler to the end on the plan's estimates; 'retry' fails once, then succeeds."""
    s = Scheduler(plan, mode)
    clock, events, retried, starts = 0.0, [], set(), []
    while True:
        for w in s.take(workers - len(s.running)):
            check_start(s, w)
            starts.append(w)
            heapq.heappush(events, (clock + plan.estimates[w], 0, w))
        assert len(s.running) <= workers
        if not events:
            break
        clock, kind, w = heapq.heappop(events)
        if kind == 1:
            s.requeue(w)
        elif outcomes[w] == "failed":
            s.mark_failed(w)
        elif outcomes[w] == "retry" and w not in retried:
            retried.add(w)
            s.defer(w)
            heapq.heappush(events, (clock + policy.backoff(1, 0.5), 1, w))
        else:
            s.mark_done(w)
    return s, starts


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_scheduler_invariants_under_random_outcomes(scenario):
    workstreams, outcomes, workers, mode = scenario
    plan = build_plan(workstreams)
    keys, exclusive = plan.exclusion_keys(), plan.exclusive()

    def check_start(s, w):
        assert all(d in s.done for d in plan.deps[w]), "started before its dependencies were done"
        if mode == WAVES:
            settled = s.done | s.failed | s.blocked
            assert all(x in settled for x in plan.workstreams if plan.wave_of[x] < plan.wave_of[w]), \
                "started before an earlier wave settled"
        others = s.running - {w}
        assert not (w in exclusive and others), "an exclusive workstream started beside others"
        assert not (others & exclusive), "started beside an exclusive workstream"
        for o in others:
            assert not (keys[w] & keys[o]), f"{w} and {o} share an exclusion key"

    s, starts = drive(plan, mode, workers, outcomes, check_start)
    assert s.finished()
    failed = {w for w in plan.workstreams if outcomes[w] == "failed" and w in starts}
    assert s.failed == failed
    assert s.blocked == descendants(plan, failed)
    assert s.done == set(plan.workstreams) - s.failed - s.blocked
    assert not (s.failed & s.blocked)
    retried = {w for w in plan.workstreams if outcomes[w] == "retry" and w in s.done}
    assert sorted(starts) == sorted(list(s.done | s.failed) + list(retried))  # retried ones started twice


@settings(max_examples=150, deadline=None)
@given(scenarios(exclusion=False))
def test_eager_scheduler_never_idles_a_worker_while_work_is_ready(scenario):
    workstreams, outcomes, workers, _ = scenario
    plan = build_plan(workstreams)
    s = Scheduler(plan, EAGER)
    clock, events = 0.0, []
    while True:
        for w in s.take(workers - len(s.running)):
            heapq.heappush(events, (clock + plan.estimates[w], w))
        assert len(s.running) == workers or not s.queued()
        if not events:
            break
        clock, w = heapq.heappop(events)
        s.mark_failed(w) if outcomes[w] == "failed" else s.mark_done(w)
    assert s.finished() and s.pending() == []


# --- policy ----------------------------------------------------------------------------

@pytest.mark.parametrize("attempt, base, delay", [(0, 2.0, 2.0), (1, 2.0, 2.0), (2, 2.0, 4.0), (3, 2.0, 8.0),
                                                  (5, 1.0, 16.0), (4, 0.0, 0.0), (30, 1.0, 600.0),
                                                  (2, 1000.0, 600.0)])
def test_backoff_doubles_and_is_capped(attempt, base, delay):
    assert policy.backoff(attempt, base) == delay


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.floats(0, 100, allow_nan=False))
def test_backoff_never_decreases_and_never_exceeds_the_cap(attempt, base):
    assert policy.backoff(attempt, base) <= policy.MAX_BACKOFF_SECONDS
    assert policy.backoff(attempt + 1, base) >= policy.backoff(attempt, base)


def test_after_attempt_success_and_cancel():
    assert policy.after_attempt("ok", 1, 3, 1.0) == policy.Decision("done")
    assert policy.after_attempt("ok", 3, 3, 1.0) == policy.Decision("done")
    assert policy.after_attempt("cancelled", 1, 3, 1.0) == policy.Decision("interrupted")


@pytest.mark.parametrize("status", ["failed", "timeout", "lost"])
def test_after_attempt_retries_failures_until_attempts_run_out(status):
    assert policy.after_attempt(status, 1, 3, 2.0) == policy.Decision("retrying", 2.0)
    assert policy.after_attempt(status, 2, 3, 2.0) == policy.Decision("retrying", 4.0)
    assert policy.after_attempt(status, 3, 3, 2.0) == policy.Decision("failed")
    assert policy.after_attempt(status, 1, 1, 2.0) == policy.Decision("failed")


def test_a_merge_conflict_is_retried_once_immediately_or_is_final():
    assert policy.after_attempt("conflict", 1, 3, 5.0) == policy.Decision("conflict")
    assert policy.after_attempt("conflict", 1, 1, 5.0, conflict_retry=True) == policy.Decision("retrying", 0.0)


# --- releasing work ahead of free workers -------------------------------------------


def test_no_lookahead_before_any_attempt_finished_or_for_long_attempts():
    assert lookahead(4, None) == 0
    assert lookahead(4, SHORT_ATTEMPT_SECONDS) == 0
    assert lookahead(4, 30.0) == 0
    assert lookahead(4, 0.002) > 0


def test_without_lookahead_exactly_the_free_workers_are_filled():
    assert [to_release(4, 0, n) for n in range(6)] == [4, 3, 2, 1, 0, 0]


def test_with_lookahead_work_is_released_in_batches():
    extra = lookahead(2, 0.001)
    assert to_release(2, extra, 0) == 2 + extra                     # start: fill everything
    assert to_release(2, extra, 2 + extra - 1) == 0                  # one finished: wait for more
    assert to_release(2, extra, 2 + extra // 2) == extra // 2        # half the waiting ones gone: refill
    assert to_release(2, extra, 1) == 1 + extra                      # a worker would go idle: refill now


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 16), st.integers(0, 64), st.integers(0, 100))
def test_release_never_overfills_and_never_leaves_a_worker_without_work(workers, extra, inflight):
    n = to_release(workers, extra, inflight)
    assert n >= 0 and inflight + n <= max(inflight, workers + extra)
    if inflight < workers:
        assert inflight + n >= workers


def test_a_worker_reserves_only_from_plenty_and_never_more_than_its_share():
    assert to_reserve(0, 2) == 1 and to_reserve(3, 2) == 1          # no lookahead: one job each
    assert to_reserve(4, 2) == 2
    assert to_reserve(1000, 2) == RESERVE_MAX


@given(st.integers(1, 16), st.integers(0, 500))
def test_reservations_leave_every_other_worker_as_much(workers, waiting):
    n = to_reserve(waiting, workers)
    assert 1 <= n <= RESERVE_MAX
    if n > 1:
        assert n * workers <= waiting
    # Without lookahead at most one job per worker waits, and each claims exactly one.
    if waiting <= workers:
        assert n == 1
