"""The state DB schema: one ordered list of migrations, each a small function.

Opening a DB applies the migrations it has not seen, in order, in one
transaction (a crash leaves the old version intact), and records them in ``migrations``. A DB written by a newer
agentrun (a migration this code does not know) is refused.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable


def m001_initial(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            project_root TEXT NOT NULL,
            options TEXT NOT NULL,              -- JSON: max_workers, schedule, fail_fast, selection
            status TEXT NOT NULL,               -- running, done, failed, interrupted
            created_at REAL NOT NULL,
            finished_at REAL,
            orchestrator_pid INTEGER,
            orchestrator_start TEXT,            -- /proc/<pid>/stat field 22, tells a reused pid apart
            heartbeat_at REAL,
            max_workers INTEGER NOT NULL,
            schedule TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            base_commit TEXT,
            integration_branch TEXT
        )""")
    db.execute("""
        CREATE TABLE workstreams (
            run_id TEXT NOT NULL REFERENCES runs(id),
            ws_id TEXT NOT NULL,
            spec TEXT NOT NULL,                 -- JSON snapshot of the validated workstream
            spec_hash TEXT NOT NULL,
            status TEXT NOT NULL,               -- pending, ready, running, retrying, done, failed,
                                                -- blocked, cancelled, lost, conflict
            attempt INTEGER NOT NULL DEFAULT 0, -- number of the latest attempt
            max_attempts INTEGER NOT NULL,
            wave INTEGER NOT NULL,
            estimate REAL NOT NULL,
            retry_at REAL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            PRIMARY KEY (run_id, ws_id)
        )""")
    db.execute("""
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            ws_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,               -- running, done, failed, timeout, cancelled, lost
            lane INTEGER,                       -- worker slot, for timelines
            external_id TEXT,                   -- the execution backend's id for this attempt
            pid INTEGER,
            pgid INTEGER,
            proc_start TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            heartbeat_at REAL,
            exit_code INTEGER,
            signal INTEGER,
            log_path TEXT,
            error TEXT,
            UNIQUE (run_id, ws_id, attempt)
        )""")
    db.execute("CREATE INDEX attempts_ws_status ON attempts (ws_id, status)")
    db.execute("CREATE INDEX workstreams_run_status ON workstreams (run_id, status)")


def m002_integration(db: sqlite3.Connection) -> None:
    """Worktrees, gates and the merge queue."""
    for column in ("worktree TEXT", "branch TEXT", "base_commit TEXT", "result_commit TEXT",
                   "integrated_commit TEXT", "integration_seq INTEGER", "changed_files TEXT",
                   "conflict_files TEXT", "conflict_with TEXT"):
        db.execute(f"ALTER TABLE workstreams ADD COLUMN {column}")
    db.execute("ALTER TABLE runs ADD COLUMN into_branch TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN notes TEXT")
    db.execute("""
        CREATE TABLE gate_results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            ws_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            phase TEXT NOT NULL,                -- baseline, verify, after_merge
            gate TEXT NOT NULL,
            status TEXT NOT NULL,               -- passed, failed, pre-existing, timeout
            exit_code INTEGER,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX gate_results_run ON gate_results (run_id, ws_id)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_initial,
    m002_integration,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` (autocommit mode) up to SCHEMA_VERSION; returns the version it had."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                   " applied_at REAL NOT NULL)")
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM migrations").fetchone()[0]
        if current > SCHEMA_VERSION:
            from .errors import StateError
            raise StateError(f"state DB has schema version {current}, newer than this agentrun "
                             f"understands ({SCHEMA_VERSION}); upgrade agentrun")
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            step(db)
            db.execute("INSERT INTO migrations VALUES (?, ?, ?)", (version, step.__name__, time.time()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return current
