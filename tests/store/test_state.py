"""The claim protocol of the state DB, on a real SQLite file: claims, reservations, give-backs."""

from __future__ import annotations

import pytest

from agentrun.store.state import Finish, StateStore, return_unstarted

RUN = "r1"


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state.db")
    with s.write() as db:
        db.execute("INSERT INTO runs (id, source, project_root, options, status, created_at, max_workers, schedule, "
                   "spec_hash) VALUES (?, 'w', '/p', '{}', 'running', 0, 2, 'eager', '[]')", (RUN,))
    ids = [f"w{i}" for i in range(6)]
    with s.write() as db:
        db.executemany("INSERT INTO workstreams (run_id, ws_id, spec, spec_hash, status, max_attempts, wave, "
                       "estimate) VALUES (?, ?, '{}', 'h', 'ready', 1, 0, 1)", [(RUN, w) for w in ids])
    s.dispatch(RUN, [], [(w, n) for n, w in enumerate(ids, start=1)])
    yield s
    s.close()


def claim(store, worker, *, reserve=1, reservable=lambda ws_id: True, finishes=(), give_back=()):
    return store.finish_and_claim(RUN, list(finishes), claim=True, lane=0, external_id=worker, log_path="/spool",
                                  now=100.0, reserve=lambda waiting: reserve, reservable=reservable,
                                  give_back=give_back).claimed


def row(store, ws_id):
    return store.workstream(RUN, ws_id)


def test_one_claim_is_a_running_attempt(store):
    [c] = claim(store, "a")
    assert (c.ws_id, c.attempt, c.reserved, c.waiting) == ("w0", 1, False, 5)
    assert row(store, "w0")["status"] == "running"
    assert [a["status"] for a in store.attempts(RUN)] == ["running"]


def test_reservations_stay_ready_are_skipped_by_others_and_are_recorded_with_their_outcome(store):
    got = claim(store, "a", reserve=3)
    assert [(c.ws_id, c.attempt, c.reserved) for c in got] == [("w0", 1, True), ("w1", 1, True), ("w2", 1, True)]
    assert {row(store, w)["status"] for w in ("w0", "w1", "w2")} == {"ready"}
    assert store.attempts(RUN) == []                        # nothing ran, as far as the DB knows
    [other] = claim(store, "b")                             # another worker takes the next one
    assert other.ws_id == "w3"
    done = Finish(None, "w0", "done", "done", now=7.0, exit_code=0, attempt=1, started_at=5.0)
    assert claim(store, "a", finishes=[done], give_back=["w1", "w2"])[0].ws_id == "w1"
    attempt = store.attempts(RUN, "w0")[0]
    assert (attempt["status"], attempt["started_at"], attempt["finished_at"], attempt["external_id"]) == \
        ("done", 5.0, 7.0, "a")
    w0 = row(store, "w0")
    assert (w0["status"], w0["attempt"], w0["reserved_by"]) == ("done", 1, None)


def test_only_a_run_of_reservable_work_at_the_head_is_reserved(store):
    got = claim(store, "a", reserve=4, reservable=lambda ws_id: ws_id != "w0")
    assert [(c.ws_id, c.reserved) for c in got] == [("w0", False)]     # the head is not: claimed as usual
    got = claim(store, "b", reserve=4, reservable=lambda ws_id: ws_id != "w2")
    assert [(c.ws_id, c.reserved) for c in got] == [("w1", False)]     # a run of one is an ordinary claim


def test_a_reserved_attempt_that_runs_long_becomes_a_claimed_one_and_hands_back_the_rest(store):
    first, second, third = claim(store, "a", reserve=3)
    attempt_id, recorded = store.start_reserved(RUN, second, [Finish(None, "w0", "done", "done", 9.0, 0, attempt=1,
                                                            started_at=8.0)],
                                      ["w2"], lane=0, external_id="a", started_at=9.5, pid=4321, pgid=4321,
                                      proc_start="77")
    assert recorded == [True]
    attempt = store.attempts(RUN, "w1")[0]
    assert (attempt["id"], attempt["status"], attempt["pid"], attempt["started_at"]) == \
        (attempt_id, "running", 4321, 9.5)
    assert row(store, "w1")["status"] == "running"
    assert row(store, "w0")["status"] == "done"
    assert claim(store, "b")[0].ws_id == "w2"               # handed back, taken by another worker


def test_a_dead_workers_reservations_go_back_to_the_queue_uncounted(store):
    claim(store, "a", reserve=2)
    claim(store, "c")
    assert store.reservers(RUN) == ["a"]
    assert sorted(store.unqueue(RUN, dead_worker="a")) == ["w0", "w1", "w3", "w4", "w5"]
    assert store.reservers(RUN) == [] and store.attempts(RUN, "w0") == []
    store.dispatch(RUN, [], [("w0", 7), ("w1", 8)])
    assert [c.ws_id for c in claim(store, "b", reserve=2)] == ["w0", "w1"]
    # A late outcome from the dead worker is not recorded over the new owner's reservation.
    late = store.finish_and_claim(RUN, [Finish(None, "w0", "done", "done", 3.0, 0, attempt=1, started_at=2.0)],
                                  claim=False, lane=0, external_id="a", log_path="/spool", now=3.0)
    assert late.recorded == [False]
    assert store.attempts(RUN, "w0") == [] and row(store, "w0")["reserved_by"] == "b"


def test_an_outcome_recover_took_away_is_not_recorded(store):
    [c] = claim(store, "a")
    with store.write() as db:  # what recover does to the attempts of a dead orchestrator's run
        db.execute("UPDATE attempts SET status = 'lost' WHERE id = ?", (c.attempt_id,))
        db.execute("UPDATE workstreams SET status = 'lost' WHERE run_id = ? AND ws_id = ?", (RUN, c.ws_id))
    late = store.finish_and_claim(RUN, [Finish(c.attempt_id, c.ws_id, "done", "done", 5.0, 0)], claim=False,
                                  lane=0, external_id="a", log_path="/spool", now=5.0)
    assert late.recorded == [False]
    assert row(store, c.ws_id)["status"] == "lost" and store.attempts(RUN, c.ws_id)[0]["status"] == "lost"


def test_a_new_orchestrator_takes_back_everything_unstarted(store):
    claim(store, "a", reserve=2)
    claim(store, "b")
    assert sorted(store.unqueue(RUN)) == ["w3", "w4", "w5"]          # a reservation stays its worker's
    assert row(store, "w0")["reserved_by"] == "a"
    with store.write() as db:
        return_unstarted(db, RUN)
    assert (row(store, "w0")["status"], row(store, "w0")["reserved_by"], row(store, "w0")["queue_seq"]) == \
        ("pending", None, None)
    assert row(store, "w2")["status"] == "running"                    # started work is recovery's business
