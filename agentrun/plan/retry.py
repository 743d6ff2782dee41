"""Retry policy: what happens after an attempt ends. Pure core."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True)
class Decision:
    ws_status: str              # "done", "retrying", "failed" or "interrupted"
    retry_in: float | None = None


def backoff(attempt: int, base: float) -> float:
    """Delay before attempt ``attempt + 1``: base, 2*base, 4*base ... capped."""
    return min(MAX_BACKOFF_SECONDS, base * (2 ** max(0, attempt - 1)))


def after_attempt(exec_status: str, attempt: int, max_attempts: int, backoff_base: float, *,
                  conflict_retry: bool = False) -> Decision:
    """``exec_status`` is an ExecResult status (ok, failed, timeout, cancelled, conflict) or "lost".

    A merge conflict is not retried like a failure: ``on_conflict = "retry"``
    grants exactly one immediate re-run from the new integration tip
    (``conflict_retry``); otherwise the conflict is final.
    """
    if exec_status == "ok":
        return Decision("done")
    if exec_status == "cancelled":
        return Decision("interrupted")
    if exec_status == "conflict":
        return Decision("retrying", 0.0) if conflict_retry else Decision("conflict")
    if attempt < max_attempts:
        return Decision("retrying", backoff(attempt, backoff_base))
    return Decision("failed")
