"""The SQLite state DB: the source of truth shared by orchestrator and workers.

Every write is one short ``BEGIN IMMEDIATE`` transaction (a deferred one that
reads then writes fails at once with SQLITE_BUSY under contention). Each
process opens its own connection after fork.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from itertools import takewhile
from typing import Any, Callable, Iterable, Iterator

from agentrun.errors import StateError
from agentrun.proc import process
from agentrun.store.schema import SCHEMA_VERSION, migrate

DB_NAME = "state.db"
BUSY_TIMEOUT_MS = 30_000
FINAL_STATUSES = ("done", "failed", "blocked", "conflict")


class StateStore:
    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.db = self._connect()
        # Writers queue on a lock file in the kernel and wake the moment it is free:
        # SQLite's own busy handler sleeps 1, 2, 5, 10 ms between tries, which under
        # many small transactions from several workers costs more than the work.
        # (A separate file: opening and closing the DB file itself would drop SQLite's locks.)
        self._lock_fd = None if readonly else os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise StateError(f"{self.path}: no state DB here; start a run with `agentrun run` "
                                     "or pass --state-dir")
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                     timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            else:
                db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.readonly:
                version = db.execute("SELECT COALESCE(MAX(version), 0) FROM migrations").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StateError(f"{self.path}: state DB schema version {version} is newer than this "
                                     f"agentrun understands ({SCHEMA_VERSION}); upgrade agentrun")
                if version < SCHEMA_VERSION:
                    # An older DB is upgraded on first use, even by a reader.
                    db.close()
                    StateStore(self.path).close()
                    return self._connect()
            else:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                migrate(db)
            return db
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: not a usable agentrun state DB ({exc}); move it aside "
                             "or pass another --state-dir") from None

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A short read transaction: a consistent view that does not pin the WAL for long."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    # --- runs ------------------------------------------------------------------
    def create_run(self, new_id: Callable[[str | None], str], run: Callable[[str], dict[str, Any]],
                   workstreams: Iterable[tuple]) -> str:
        """Insert a run and its workstreams (ws_id, spec, hash, status, max_attempts, wave, estimate);
        returns its id. The id is ``new_id(the latest id recorded)``, chosen in the same
        transaction, so that agentruns starting at the same moment never pick the same one;
        ``run(id)`` gives the run's row."""
        with self.write() as db:
            run_id = new_id(db.execute("SELECT MAX(id) FROM runs").fetchone()[0])
            row = run(run_id)
            db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            db.executemany("INSERT INTO workstreams (run_id, ws_id, spec, spec_hash, status, max_attempts, "
                           "wave, estimate) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(run_id, *w) for w in workstreams])
        return run_id

    def delete_run(self, run_id: str) -> None:
        """Take back a run that could not be set up (its integration branch could not be made)."""
        with self.write() as db:
            db.execute("DELETE FROM workstreams WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def update_run(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.write() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))

    def run(self, run_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()

    def latest_run(self) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()

    def runs(self, limit: int = 20) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)).fetchall()

    # --- workstream transitions ------------------------------------------------
    def set_status(self, run_id: str, ws_ids: Iterable[str], status: str, *, error: str | None = None,
                   now: float | None = None) -> None:
        ids = list(ws_ids)
        if not ids:
            return
        final = status in FINAL_STATUSES
        with self.write() as db:
            db.executemany(
                "UPDATE workstreams SET status = ?, error = COALESCE(?, error), "
                "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE run_id = ? AND ws_id = ?",
                [(status, error, final, now, run_id, w) for w in ids])

    def dispatch(self, run_id: str, ready: list[str], queued: list[tuple[str, int]]) -> list[str]:
        """In one transaction: mark ``ready`` workstreams ready, and release ``queued`` ones
        (ws id, queue number) to the workers, who claim them lowest number first. Returns the
        ids that could not be released because they are not ready."""
        refused = []
        with self.write() as db:
            if ready:
                db.executemany("UPDATE workstreams SET status = 'ready' WHERE run_id = ? AND ws_id = ? "
                               "AND status IN ('pending', 'retrying', 'ready', 'interrupted')",
                               [(run_id, w) for w in ready])
            for ws_id, seq in queued:
                if db.execute("UPDATE workstreams SET queue_seq = ? WHERE run_id = ? AND ws_id = ? "
                              "AND status = 'ready'", (seq, run_id, ws_id)).rowcount == 0:
                    refused.append(ws_id)
            if queued:
                db.execute("UPDATE runs SET released_seq = ? WHERE id = ?", (queued[-1][1], run_id))
        return refused

    def unqueue(self, run_id: str, *, restart: bool = False, dead_worker: str | None = None) -> list[str]:
        """Take back released work no worker has claimed or reserved yet; returns its ids.
        ``dead_worker``: that worker's reservations too. ``restart``: a new orchestrator takes
        back everything not started, reservations included, and starts the queue numbers again."""
        with self.write() as db:
            if restart:
                rows = db.execute("UPDATE workstreams SET queue_seq = NULL, reserved_by = NULL WHERE run_id = ? "
                                  "AND queue_seq IS NOT NULL RETURNING ws_id", (run_id,)).fetchall()
                db.execute("UPDATE runs SET released_seq = 0 WHERE id = ?", (run_id,))
            else:
                if dead_worker is not None:
                    db.execute("UPDATE workstreams SET reserved_by = NULL WHERE run_id = ? AND reserved_by = ?",
                               (run_id, dead_worker))
                rows = db.execute("UPDATE workstreams SET queue_seq = NULL WHERE run_id = ? AND queue_seq IS NOT NULL "
                                  "AND reserved_by IS NULL RETURNING ws_id", (run_id,)).fetchall()
        return [r[0] for r in rows]

    def finish_and_claim(self, run_id: str, finishes: list[Finish], *, claim: bool, lane: int, external_id: str,
                         log_path: str, now: float, reserve: Callable[[int], int] = lambda waiting: 1,
                         reservable: Callable[[str], bool] = lambda ws_id: False,
                         give_back: Iterable[str] = ()) -> ClaimResult:
        """Record the outcomes of this worker's last attempts and claim what it runs next, in one
        transaction. Returns the claims (none when nothing waits) and which outcomes were recorded.

        Usually one workstream is claimed: it is ``running`` with an attempt row from here on.
        When ``reserve`` (given how many wait) says more than one, the worker instead reserves
        that many ``reservable`` ones at the head of the queue, if there are two or more: they
        stay ``ready``, marked as this worker's, and it records each (attempt row and outcome)
        with its next claim, or claims it properly once it runs long (``start_reserved``). A
        worker that dies loses its reservations, not their workstreams: the work goes back to
        the queue, never run as far as the DB knows. ``give_back``: reservations this worker
        will not run after all. ``log_path`` is where the claimed attempt's log is written."""
        with self.write() as db:
            done = _record(db, run_id, finishes, give_back, lane, external_id)
            if not claim:
                return ClaimResult([], 0, done)
            waiting = db.execute("SELECT COUNT(*) FROM workstreams WHERE run_id = ? AND queue_seq IS NOT NULL "
                                 "AND reserved_by IS NULL AND status = 'ready'", (run_id,)).fetchone()[0]
            if waiting == 0:
                return ClaimResult([], _released(db, run_id), done)
            take = reserve(waiting)
            if take > 1:
                head = db.execute("SELECT ws_id, attempt FROM workstreams WHERE run_id = ? AND queue_seq IS NOT NULL "
                                  "AND reserved_by IS NULL AND status = 'ready' ORDER BY queue_seq LIMIT ?",
                                  (run_id, take)).fetchall()
                head = list(takewhile(lambda r: reservable(r[0]), head))
                if len(head) > 1:
                    db.executemany("UPDATE workstreams SET reserved_by = ? WHERE run_id = ? AND ws_id = ?",
                                   [(external_id, run_id, r[0]) for r in head])
                    return ClaimResult([Claimed(None, ws_id, attempt + 1, log_path, None, None, waiting - len(head))
                                        for ws_id, attempt in head], 0, done)
            row = db.execute(
                "UPDATE workstreams SET status = 'running', attempt = attempt + 1, queue_seq = NULL, "
                "started_at = COALESCE(started_at, ?) WHERE run_id = ? AND ws_id = ("
                "SELECT ws_id FROM workstreams WHERE run_id = ? AND queue_seq IS NOT NULL AND reserved_by IS NULL "
                "AND status = 'ready' ORDER BY queue_seq LIMIT 1) RETURNING ws_id, attempt, conflict_files, "
                "integrated_commit", (now, run_id, run_id)).fetchone()
            if row is None:
                return ClaimResult([], _released(db, run_id), done)
            cur = db.execute("INSERT INTO attempts (run_id, ws_id, attempt, status, lane, external_id, "
                             "started_at, heartbeat_at, log_path) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                             (run_id, row["ws_id"], row["attempt"], lane, external_id, now, now, log_path))
            return ClaimResult([Claimed(cur.lastrowid, row["ws_id"], row["attempt"], log_path, row["conflict_files"],
                                        row["integrated_commit"], waiting - 1)], 0, done)

    def start_reserved(self, run_id: str, claimed: Claimed, finishes: list[Finish], give_back: Iterable[str], *,
                       lane: int, external_id: str, started_at: float, pid: int, pgid: int,
                       proc_start: str | None) -> tuple[int | None, list[bool]]:
        """A reserved attempt has run long: record what came before it, hand back the other
        reservations, and make it an ordinary running attempt with its process. Returns its
        attempt id (None if the reservation is no longer this worker's) and which of
        ``finishes`` were recorded."""
        with self.write() as db:
            done = _record(db, run_id, finishes, give_back, lane, external_id)
            if db.execute("UPDATE workstreams SET status = 'running', attempt = ?, queue_seq = NULL, "
                          "reserved_by = NULL, started_at = COALESCE(started_at, ?) "
                          "WHERE run_id = ? AND ws_id = ? AND reserved_by = ? "
                          "AND status = 'ready'", (claimed.attempt, started_at, run_id, claimed.ws_id,
                                                   external_id)).rowcount == 0:
                return None, done
            return db.execute("INSERT INTO attempts (run_id, ws_id, attempt, status, lane, external_id, started_at, "
                              "heartbeat_at, log_path, pid, pgid, proc_start) "
                              "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                              (run_id, claimed.ws_id, claimed.attempt, lane, external_id, started_at, time.time(),
                               claimed.log_path, pid, pgid, proc_start)).lastrowid, done

    def bump_released(self, run_id: str, released: int) -> None:
        """Record ``released`` as the last queue number released (work was released again)."""
        with self.write() as db:
            db.execute("UPDATE runs SET released_seq = ? WHERE id = ?", (released, run_id))

    def reservers(self, run_id: str) -> list[str]:
        """External ids of the workers holding reservations in this run."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT reserved_by FROM workstreams WHERE run_id = ? "
                                              "AND reserved_by IS NOT NULL", (run_id,))]

    def record_spawn(self, attempt_id: int, pid: int, pgid: int, proc_start: str | None) -> None:
        with self.write() as db:
            db.execute("UPDATE attempts SET pid = ?, pgid = ?, proc_start = ? WHERE id = ?",
                       (pid, pgid, proc_start, attempt_id))

    def heartbeat_attempt(self, attempt_id: int, now: float) -> None:
        with self.write() as db:
            db.execute("UPDATE attempts SET heartbeat_at = ? WHERE id = ?", (now, attempt_id))

    def finish_attempt(self, run_id: str, finish: Finish) -> None:
        """Close a claimed attempt and move its workstream on, in one transaction."""
        with self.write() as db:
            _finish_attempt(db, run_id, finish)

    def update_workstream(self, run_id: str, ws_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.write() as db:
            db.execute(f"UPDATE workstreams SET {sets} WHERE run_id = ? AND ws_id = ?",
                       (*fields.values(), run_id, ws_id))

    def record_gate(self, run_id: str, ws_id: str, attempt: int, phase: str, gate: str, status: str,
                    exit_code: int | None, started: float, finished: float) -> None:
        with self.write() as db:
            db.execute("INSERT INTO gate_results (run_id, ws_id, attempt, phase, gate, status, exit_code, "
                       "started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, ws_id, attempt, phase, gate, status, exit_code, started, finished))

    def mark_integrated(self, run_id: str, ws_id: str, commit: str, changed: list[str]) -> int:
        """Record an integration; returns its position in the run's merge order (1-based)."""
        with self.write() as db:
            seq = db.execute("SELECT COALESCE(MAX(integration_seq), 0) + 1 FROM workstreams WHERE run_id = ?",
                             (run_id,)).fetchone()[0]
            db.execute("UPDATE workstreams SET integrated_commit = ?, integration_seq = ?, changed_files = ? "
                       "WHERE run_id = ? AND ws_id = ?", (commit, seq, json.dumps(changed), run_id, ws_id))
        return seq

    def integrated_touching(self, run_id: str, files: list[str]) -> list[str]:
        """Workstreams of this run already integrated that changed any of ``files``."""
        wanted = set(files)
        rows = self.db.execute("SELECT ws_id, changed_files FROM workstreams WHERE run_id = ? AND "
                               "integrated_commit IS NOT NULL ORDER BY integration_seq", (run_id,)).fetchall()
        return [r["ws_id"] for r in rows if wanted & set(json.loads(r["changed_files"] or "[]"))]

    def failures(self, run_id: str, ws_id: str) -> int:
        """Failed attempts so far: what ``retries`` limits. Interrupted and orphaned (lost) attempts
        were not the workstream's fault and do not count."""
        return self.db.execute("SELECT COUNT(*) FROM attempts WHERE run_id = ? AND ws_id = ? AND status IN "
                               "('failed', 'timeout', 'crashed')", (run_id, ws_id)).fetchone()[0]

    def gate_results(self, run_id: str, ws_id: str | None = None) -> list[sqlite3.Row]:
        if ws_id is None:
            return self.db.execute("SELECT * FROM gate_results WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return self.db.execute("SELECT * FROM gate_results WHERE run_id = ? AND ws_id = ? ORDER BY id",
                               (run_id, ws_id)).fetchall()

    def workstream(self, run_id: str, ws_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM workstreams WHERE run_id = ? AND ws_id = ?",
                               (run_id, ws_id)).fetchone()

    # --- queries ---------------------------------------------------------------
    def workstreams(self, run_id: str, columns: str = "*") -> list[sqlite3.Row]:
        """The run's workstream rows; name ``columns`` to leave out the spec snapshots of a big run."""
        return self.db.execute(f"SELECT {columns} FROM workstreams WHERE run_id = ? ORDER BY wave, ws_id",
                               (run_id,)).fetchall()

    def progress(self, run_id: str) -> list[tuple[str, str, int]]:
        """(ws id, status, latest attempt number) of each workstream: what an orchestrator starts from."""
        return [tuple(r) for r in self.db.execute("SELECT ws_id, status, attempt FROM workstreams WHERE run_id = ?",
                                                  (run_id,))]

    def attempts(self, run_id: str, ws_id: str | None = None) -> list[sqlite3.Row]:
        if ws_id is None:
            return self.db.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return self.db.execute("SELECT * FROM attempts WHERE run_id = ? AND ws_id = ? ORDER BY attempt",
                               (run_id, ws_id)).fetchall()

    def counts(self, run_id: str) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) FROM workstreams WHERE run_id = ? GROUP BY status",
                               (run_id,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def history(self, ws_ids: Iterable[str], per_workstream: int = 5) -> dict[str, list[float]]:
        """Durations of the latest successful attempts of each workstream id, across runs."""
        wanted = set(ws_ids)
        out: dict[str, list[float]] = {}
        rows = self.db.execute("SELECT ws_id, finished_at - started_at FROM attempts "
                               "WHERE status = 'done' AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 500000")
        for ws_id, duration in rows:
            if ws_id in wanted:
                seen = out.setdefault(ws_id, [])
                if len(seen) < per_workstream:
                    seen.append(duration)
        return out


@dataclass(frozen=True)
class Claimed:
    attempt_id: int | None          # None: reserved, no attempt row yet
    ws_id: str
    attempt: int
    log_path: str
    conflict_files: str | None      # JSON: files a previous attempt conflicted on
    integrated_commit: str | None   # set if an earlier attempt was integrated before a crash
    waiting: int = 0                # released workstreams still unclaimed after this claim

    @property
    def reserved(self) -> bool:
        return self.attempt_id is None


@dataclass
class ClaimResult:
    claimed: list[Claimed]          # one claim, or several reservations; empty: nothing to claim
    released: int                   # with no claims: the highest queue number released when it looked
    recorded: list[bool]            # for each outcome passed in: whether it was recorded


@dataclass(frozen=True)
class Finish:
    """The outcome of one attempt, as recorded."""

    attempt_id: int | None          # None: a reserved attempt, whose row is written with its outcome
    ws_id: str
    attempt_status: str
    ws_status: str
    now: float
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    retry_at: float | None = None
    set_log: bool = False           # replace the attempt's log path with ``log_path`` (None: no log kept)
    log_path: str | None = None
    attempt: int = 0                # of a reserved attempt: its number and when it started
    started_at: float | None = None


def return_unstarted(db: sqlite3.Connection, run_id: str) -> None:
    """Inside a write transaction: work that was ready or waiting for a retry, but never
    started, goes back to pending (and out of the release queue), so a resume decides it again."""
    db.execute("UPDATE workstreams SET status = 'pending', queue_seq = NULL, reserved_by = NULL "
               "WHERE run_id = ? AND status IN ('ready', 'retrying')", (run_id,))


def _released(db: sqlite3.Connection, run_id: str) -> int:
    return db.execute("SELECT released_seq FROM runs WHERE id = ?", (run_id,)).fetchone()[0]


def _record(db: sqlite3.Connection, run_id: str, finishes: list[Finish], give_back: Iterable[str],
            lane: int | None, external_id: str | None) -> list[bool]:
    """Inside a write transaction: a worker's outcomes (whether each was recorded) and the
    reservations it hands back."""
    done = [_finish_attempt(db, run_id, f, lane, external_id) for f in finishes]
    db.executemany("UPDATE workstreams SET reserved_by = NULL WHERE run_id = ? AND ws_id = ? AND reserved_by = ?",
                   [(run_id, ws_id, external_id) for ws_id in give_back])
    return done


def _finish_attempt(db: sqlite3.Connection, run_id: str, f: Finish, lane: int | None = None,
                    external_id: str | None = None) -> bool:
    """Record an outcome; False, recording nothing, if the attempt is no longer this process's
    (``recover`` declared it lost, or the reservation went to another worker)."""
    final = f.ws_status in FINAL_STATUSES
    if f.attempt_id is None:  # reserved: the attempt row is written now, with its outcome
        if not db.execute("UPDATE workstreams SET status = ?, error = ?, retry_at = ?, attempt = ?, "
                          "queue_seq = NULL, reserved_by = NULL, started_at = COALESCE(started_at, ?), "
                          "finished_at = CASE WHEN ? THEN ? ELSE NULL END "
                          "WHERE run_id = ? AND ws_id = ? AND reserved_by = ? AND status = 'ready'",
                          (f.ws_status, f.error, f.retry_at, f.attempt, f.started_at, final, f.now, run_id, f.ws_id,
                           external_id)).rowcount:
            return False
        db.execute("INSERT INTO attempts (run_id, ws_id, attempt, status, lane, external_id, started_at, finished_at, "
                   "heartbeat_at, exit_code, signal, error, log_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (run_id, f.ws_id, f.attempt, f.attempt_status, lane, external_id, f.started_at, f.now, f.now,
                    f.exit_code, f.signal, f.error, f.log_path))
        return True
    if not db.execute("UPDATE attempts SET status = ?, finished_at = ?, exit_code = ?, signal = ?, error = ?, "
                      "log_path = CASE WHEN ? THEN ? ELSE log_path END WHERE id = ? AND status = 'running'",
                      (f.attempt_status, f.now, f.exit_code, f.signal, f.error, f.set_log, f.log_path,
                       f.attempt_id)).rowcount:
        return False
    db.execute("UPDATE workstreams SET status = ?, error = ?, retry_at = ?, "
               "finished_at = CASE WHEN ? THEN ? ELSE NULL END WHERE run_id = ? AND ws_id = ?",
               (f.ws_status, f.error, f.retry_at, final, f.now, run_id, f.ws_id))
    return True


def json_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def orchestrator_alive(run) -> bool:
    """Is the process that runs ``run`` (a runs row) still the one that started it?"""
    return process.is_alive(run["orchestrator_pid"], run["orchestrator_start"])


def is_crashed(run) -> bool:
    """Recorded as running, but its orchestrator process is gone."""
    return run["status"] == "running" and not orchestrator_alive(run)
