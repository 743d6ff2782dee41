"""Schema migrations: an older state DB is upgraded in place and keeps its data."""

from __future__ import annotations

import sqlite3
import time

import pytest

from agentrun.errors import StateError
from agentrun.store.schema import MIGRATIONS, SCHEMA_VERSION
from agentrun.store.state import StateStore


def make_db_at(path, version: int) -> None:
    """A state DB as agentrun left it when ``version`` was the newest schema."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        step(db)
        db.execute("INSERT INTO migrations VALUES (?, ?, ?)", (number, step.__name__, time.time()))
    db.execute("INSERT INTO runs (id, source, project_root, options, status, created_at, max_workers, schedule, "
               "spec_hash) VALUES ('r1', 'waves', '/p', '{}', 'done', 1.0, 2, 'eager', '[]')")
    db.execute("INSERT INTO workstreams (run_id, ws_id, spec, spec_hash, status, attempt, max_attempts, wave, "
               "estimate) VALUES ('r1', 'a', '{}', 'h', 'done', 2, 3, 0, 1.0)")
    db.executemany("INSERT INTO attempts (run_id, ws_id, attempt, status, started_at, finished_at, exit_code, "
                   "log_path) VALUES ('r1', 'a', ?, ?, ?, ?, ?, ?)",
                   [(1, "failed", 1.0, 2.0, 1, "/logs/a.1.log"), (2, "done", 3.0, 4.0, 0, None)])
    db.close()


def test_a_version_4_db_is_upgraded_in_place_and_keeps_its_attempts(tmp_path):
    path = tmp_path / "state.db"
    make_db_at(path, 4)
    store = StateStore(path)
    try:
        versions = [r[0] for r in store.db.execute("SELECT version FROM migrations ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        rows = [tuple(r) for r in store.db.execute(
            "SELECT id, attempt, status, started_at, finished_at, exit_code, log_path FROM attempts ORDER BY id")]
        assert rows == [(1, 1, "failed", 1.0, 2.0, 1, "/logs/a.1.log"), (2, 2, "done", 3.0, 4.0, 0, None)]
        assert store.failures("r1", "a") == 1
        # New attempts still get ids after the old ones, and (run, workstream, attempt) stays unique.
        with store.write() as db:
            new_id = db.execute("INSERT INTO attempts (run_id, ws_id, attempt, status, started_at) "
                                "VALUES ('r1', 'a', 3, 'running', 5.0)").lastrowid
            with pytest.raises(sqlite3.IntegrityError):
                db.execute("INSERT INTO attempts (run_id, ws_id, attempt, status, started_at) "
                           "VALUES ('r1', 'a', 3, 'running', 6.0)")
        assert new_id == 3
        indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                  "AND tbl_name IN ('workstreams', 'attempts') AND sql IS NOT NULL")}
        assert indexes == {"workstreams_queue"}
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()


def test_a_db_from_a_newer_agentrun_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "state.db"
    make_db_at(path, SCHEMA_VERSION)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO migrations VALUES (?, 'm_future', 0)", (SCHEMA_VERSION + 1,))
    db.close()
    before = dump(path)
    with pytest.raises(StateError, match="newer than this agentrun"):
        StateStore(path)
    assert dump(path) == before


def dump(path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()
