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


def m003_llm(db: sqlite3.Connection) -> None:
    """The LLM agent: call ledger, response cache, shared model health and call limiter."""
    db.execute("""
        CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            ws_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            model TEXT NOT NULL,                -- agentrun's name for it (preset or [models.NAME])
            model_id TEXT NOT NULL,             -- the provider's id
            provider TEXT NOT NULL,             -- host of base_url
            status TEXT NOT NULL,               -- ok, cached, budget, or an error kind (rate_limit, server, ...)
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cached_tokens INTEGER,
            est_prompt_tokens INTEGER,
            cost_usd REAL,                      -- NULL = unknown, never guessed as 0
            cost_source TEXT,                   -- provider, table, cache or unknown
            latency_s REAL,
            retry INTEGER NOT NULL DEFAULT 0,   -- 0 for the first try of a request, then 1, 2, ...
            started_at REAL NOT NULL,
            error TEXT
        )""")
    db.execute("CREATE INDEX llm_calls_run ON llm_calls (run_id, ws_id)")
    db.execute("CREATE INDEX llm_calls_model ON llm_calls (model_id, status)")
    db.execute("""
        CREATE TABLE llm_cache (
            key TEXT PRIMARY KEY,               -- sha256 of model id, messages and max_tokens
            response TEXT NOT NULL,             -- JSON of the ChatResponse
            created_at REAL NOT NULL
        )""")
    db.execute("""
        CREATE TABLE model_health (
            run_id TEXT NOT NULL,
            model TEXT NOT NULL,
            state TEXT NOT NULL,                -- closed, open, half_open, exhausted, dropped
            failures INTEGER NOT NULL DEFAULT 0,
            opened INTEGER NOT NULL DEFAULT 0,  -- how many times the breaker opened (cool-down grows)
            until REAL,                         -- open / exhausted until this time
            probe_until REAL,                   -- a half-open probe is in flight until this time
            reason TEXT,
            PRIMARY KEY (run_id, model)
        )""")
    db.execute("""
        CREATE TABLE llm_limiter (
            run_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            cap REAL NOT NULL,                  -- concurrent calls allowed: halves on 429, +1 on success
            max_cap INTEGER NOT NULL,
            PRIMARY KEY (run_id, provider)
        )""")
    db.execute("""
        CREATE TABLE llm_slots (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            pid INTEGER NOT NULL,
            expires_at REAL NOT NULL            -- a slot held by a dead process frees itself
        )""")
    db.execute("ALTER TABLE runs ADD COLUMN fatal_error TEXT")


def m004_dispatch_queue(db: sqlite3.Connection) -> None:
    # Ready work the orchestrator has released to the workers, in the order they take it:
    # a free worker claims the lowest number itself instead of waiting to be handed a job.
    db.execute("ALTER TABLE workstreams ADD COLUMN queue_seq INTEGER")
    db.execute("CREATE INDEX workstreams_queue ON workstreams (run_id, queue_seq) WHERE queue_seq IS NOT NULL")
    # The highest queue number released so far: a worker that found nothing says which release
    # it had seen, so that one released after its look wakes it.
    db.execute("ALTER TABLE runs ADD COLUMN released_seq INTEGER NOT NULL DEFAULT 0")


def m005_lean_hot_tables(db: sqlite3.Connection) -> None:
    """Fewer pages and transactions per attempt: every attempt changes two workstream statuses
    and writes an attempt row, and each index on those columns (and AUTOINCREMENT's
    sqlite_sequence row) added a page to every commit. Every query on these tables is by run
    first, which the primary keys serve; counts by status scan one run's rows."""
    db.execute("DROP INDEX workstreams_run_status")
    db.execute("DROP INDEX attempts_ws_status")
    # Without AUTOINCREMENT a new id is the largest plus one; attempts are never deleted, so ids
    # still only grow.
    db.execute("""
        CREATE TABLE attempts_new (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            ws_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,               -- running, done, failed, timeout, crashed, cancelled, lost
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
    db.execute("INSERT INTO attempts_new SELECT id, run_id, ws_id, attempt, status, lane, external_id, pid, pgid, "
               "proc_start, started_at, finished_at, heartbeat_at, exit_code, signal, log_path, error FROM attempts")
    db.execute("DROP TABLE attempts")
    db.execute("ALTER TABLE attempts_new RENAME TO attempts")
    # Released work a worker has taken to run next, without a transaction of its own (see
    # StateStore.finish_and_claim): it stays ready until the worker records it.
    db.execute("ALTER TABLE workstreams ADD COLUMN reserved_by TEXT")


def m006_run_cgroup(db: sqlite3.Connection) -> None:
    """The cgroup holding every process a run starts (see containment), for ``recover``."""
    db.execute("ALTER TABLE runs ADD COLUMN cgroup TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_initial,
    m002_integration,
    m003_llm,
    m004_dispatch_queue,
    m005_lean_hot_tables,
    m006_run_cgroup,
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
            from agentrun.errors import StateError
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
