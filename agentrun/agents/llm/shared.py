"""State about models that every worker process of a run shares, kept in the state DB.

A circuit breaker per model, models exhausted (daily quota) or dropped (404),
an adaptive cap on concurrent calls per provider (halves on 429, grows by about
one per round of successful calls), the call ledger that budgets are checked against, and the
response cache. All of it survives a crash with the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

from agentrun.plan.budget import Spent
from agentrun.store.state import StateStore

FAILURES_TO_OPEN = 3
BASE_COOLDOWN_SECONDS = 15.0
MAX_COOLDOWN_SECONDS = 600.0
PROBE_SECONDS = 120.0
SLOT_SECONDS = 300.0        # a slot whose holder died frees itself after this long


@dataclass(frozen=True)
class Gate:
    allowed: bool
    probe: bool = False
    reason: str = ""
    until: float | None = None


def _alive(pid: int) -> bool:
    """Is process ``pid`` (on this machine: the local backend's workers) still there?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:         # a zombie holds nothing
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Slot:
    """A held place in the limiter; ``others``: calls to the provider already in flight when it was taken."""

    id: int
    others: int


def cache_key(model_id: str, messages: list[dict], max_tokens: int) -> str:
    blob = json.dumps([model_id, messages, max_tokens], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class SharedLLMState:
    def __init__(self, store: StateStore, run_id: str):
        self.store = store
        self.run_id = run_id

    # --- model health ----------------------------------------------------------
    def _row(self, db, model: str):
        return db.execute("SELECT * FROM model_health WHERE run_id = ? AND model = ?",
                          (self.run_id, model)).fetchone()

    def _put(self, db, model: str, **fields) -> None:
        db.execute("INSERT INTO model_health (run_id, model, state) VALUES (?, ?, 'closed') "
                   "ON CONFLICT (run_id, model) DO NOTHING", (self.run_id, model))
        sets = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE model_health SET {sets} WHERE run_id = ? AND model = ?",
                   (*fields.values(), self.run_id, model))

    def admit(self, model: str, now: float | None = None) -> Gate:
        """May this process call ``model`` now? A half-open breaker admits one probe at a time."""
        now = now or time.time()
        with self.store.write() as db:
            row = self._row(db, model)
            if row is None or row["state"] == "closed":
                return Gate(True)
            state, until = row["state"], row["until"] or 0
            if state == "dropped":
                return Gate(False, reason=f"dropped for this run: {row['reason']}")
            if state == "exhausted":
                if until > now:
                    return Gate(False, reason=f"quota exhausted: {row['reason']}", until=until)
                self._put(db, model, state="closed", failures=0, until=None, reason=None)
                return Gate(True)
            if state == "open" and until > now:
                return Gate(False, reason=f"cooling down: {row['reason']}", until=until)
            if row["probe_until"] and row["probe_until"] > now:
                return Gate(False, reason="a probe call is in flight", until=row["probe_until"])
            self._put(db, model, state="half_open", probe_until=now + PROBE_SECONDS)
            return Gate(True, probe=True)

    def succeeded(self, model: str) -> None:
        with self.store.write() as db:
            row = self._row(db, model)
            if row is not None and (row["state"] != "closed" or row["failures"]):
                self._put(db, model, state="closed", failures=0, opened=0, until=None, probe_until=None,
                          reason=None)

    def failed(self, model: str, reason: str, *, cooldown_until: float | None = None,
               now: float | None = None) -> bool:
        """Count a failure; returns True when the breaker is (now) open."""
        now = now or time.time()
        with self.store.write() as db:
            row = self._row(db, model)
            failures = (row["failures"] if row else 0) + 1
            opened = row["opened"] if row else 0
            if cooldown_until is not None or failures >= FAILURES_TO_OPEN or (row and row["state"] == "half_open"):
                backoff = min(MAX_COOLDOWN_SECONDS, BASE_COOLDOWN_SECONDS * 2 ** opened)
                until = max(cooldown_until or 0.0, now + backoff)
                self._put(db, model, state="open", failures=failures, opened=opened + 1, until=until,
                          probe_until=None, reason=reason)
                return True
            self._put(db, model, failures=failures, reason=reason)
            return False

    def exhausted(self, model: str, until: float, reason: str) -> None:
        with self.store.write() as db:
            self._put(db, model, state="exhausted", until=until, probe_until=None, reason=reason)

    def drop(self, model: str, reason: str) -> None:
        with self.store.write() as db:
            self._put(db, model, state="dropped", reason=reason, probe_until=None)

    def health(self) -> list:
        return self.store.db.execute("SELECT * FROM model_health WHERE run_id = ? ORDER BY model",
                                     (self.run_id,)).fetchall()

    # --- the shared cap on concurrent calls --------------------------------------
    def try_acquire(self, provider: str, max_cap: int, now: float | None = None) -> "Slot | None":
        """A slot if a call to ``provider`` may start now, else None."""
        now = now or time.time()
        with self.store.write() as db:
            db.execute("INSERT INTO llm_limiter (run_id, provider, cap, max_cap) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (run_id, provider) DO NOTHING", (self.run_id, provider, max_cap, max_cap))
            db.execute("DELETE FROM llm_slots WHERE run_id = ? AND provider = ? AND expires_at < ?",
                       (self.run_id, provider, now))
            # A slot whose holder died (kill -9, a crash mid-call) is free at once: a resumed run must not
            # wait SLOT_SECONDS for it.
            dead = [(r[0],) for r in db.execute("SELECT id, pid FROM llm_slots WHERE run_id = ? AND provider = ?",
                                                (self.run_id, provider)) if not _alive(r[1])]
            if dead:
                db.executemany("DELETE FROM llm_slots WHERE id = ?", dead)
            cap = db.execute("SELECT cap FROM llm_limiter WHERE run_id = ? AND provider = ?",
                             (self.run_id, provider)).fetchone()[0]
            held = db.execute("SELECT COUNT(*) FROM llm_slots WHERE run_id = ? AND provider = ?",
                              (self.run_id, provider)).fetchone()[0]
            if held >= max(1, int(cap)):
                return None
            cur = db.execute("INSERT INTO llm_slots (run_id, provider, pid, expires_at) VALUES (?, ?, ?, ?)",
                             (self.run_id, provider, os.getpid(), now + SLOT_SECONDS))
            return Slot(cur.lastrowid, held)

    def release(self, slot: int, provider: str, outcome: str) -> None:
        """``outcome``: "ok" grows the cap by one, "rate_limited" halves it, anything else keeps it."""
        with self.store.write() as db:
            db.execute("DELETE FROM llm_slots WHERE id = ?", (slot,))
            if outcome == "ok":
                # Additive increase of about one call per round of calls (AIMD), not per call:
                # growing by one per success overshoots a provider's limit within a round.
                db.execute("UPDATE llm_limiter SET cap = MIN(max_cap, cap + 1.0 / cap) WHERE run_id = ? AND provider = ?",
                           (self.run_id, provider))
            elif outcome == "rate_limited":
                db.execute("UPDATE llm_limiter SET cap = MAX(1, cap / 2) WHERE run_id = ? AND provider = ?",
                           (self.run_id, provider))

    # --- ledger, budgets and cache -----------------------------------------------
    def record_call(self, **fields) -> None:
        cols = ", ".join(fields)
        with self.store.write() as db:
            db.execute(f"INSERT INTO llm_calls (run_id, {cols}) VALUES (?, {', '.join('?' * len(fields))})",
                       (self.run_id, *fields.values()))

    def spent(self, ws_id: str | None = None) -> Spent:
        sql = ("SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(COALESCE(prompt_tokens, 0) + "
               "COALESCE(completion_tokens, 0)), 0), COALESCE(SUM(cost_usd IS NULL AND status = 'ok'), 0) "
               "FROM llm_calls WHERE run_id = ?")
        args: tuple = (self.run_id,)
        if ws_id is not None:
            sql += " AND ws_id = ?"
            args += (ws_id,)
        cost, tokens, unknown = self.store.db.execute(sql, args).fetchone()
        return Spent(float(cost), int(tokens), int(unknown))

    def run_budget_refused(self) -> bool:
        return self.store.db.execute("SELECT 1 FROM llm_calls WHERE run_id = ? AND status = 'budget' "
                                     "AND error LIKE 'run budget%' LIMIT 1", (self.run_id,)).fetchone() is not None

    def cached(self, key: str) -> dict | None:
        row = self.store.db.execute("SELECT response FROM llm_cache WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def cache(self, key: str, response: dict) -> None:
        with self.store.write() as db:
            db.execute("INSERT OR REPLACE INTO llm_cache (key, response, created_at) VALUES (?, ?, ?)",
                       (key, json.dumps(response), time.time()))

    def uncache(self, keys: list[str]) -> None:
        if not keys:
            return
        with self.store.write() as db:
            db.executemany("DELETE FROM llm_cache WHERE key = ?", [(k,) for k in set(keys)])

    def set_fatal(self, message: str) -> None:
        with self.store.write() as db:
            db.execute("UPDATE runs SET fatal_error = ? WHERE id = ? AND fatal_error IS NULL",
                       (message, self.run_id))

    def fatal(self) -> str | None:
        row = self.store.db.execute("SELECT fatal_error FROM runs WHERE id = ?", (self.run_id,)).fetchone()
        return row[0] if row else None

    def calibration(self, model_id: str, last: int = 20) -> float:
        """Actual / estimated prompt tokens over recent calls to this model (1.0 without history)."""
        rows = self.store.db.execute(
            "SELECT prompt_tokens, est_prompt_tokens FROM llm_calls WHERE model_id = ? AND status = 'ok' "
            "AND prompt_tokens > 0 AND est_prompt_tokens > 0 ORDER BY id DESC LIMIT ?", (model_id, last)).fetchall()
        if not rows:
            return 1.0
        ratio = sum(r[0] for r in rows) / sum(r[1] for r in rows)
        return min(3.0, max(0.5, ratio))
