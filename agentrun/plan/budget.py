"""Budget decisions: may the next model call be made? Pure core."""

from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class Spent:
    """What the calls of a run (or of one workstream) have cost so far."""
    cost_usd: float
    tokens: int
    unknown_cost_calls: int


@dataclass(frozen=True)
class Verdict:
    action: str          # "ok", "warn" (crossed warn_at, go on) or "block" (the call would cross the limit)
    message: str = ""


def check(spent: Spent, est_cost: float | None, est_tokens: int, *, max_cost_usd: float | None,
          max_tokens: int | None, warn_at: float, blocking: bool, label: str) -> Verdict:
    """Spent so far plus this call's estimate against the limits.

    ``blocking`` is false for a budget in ``warn`` mode: it reports but never stops a call.
    A call to a model without a known price cannot be bounded by a cost limit; its tokens
    still count against ``max_tokens``.
    """
    over, near = [], []
    if max_cost_usd is not None:
        after = spent.cost_usd + (est_cost or 0.0)
        if after > max_cost_usd:
            over.append(f"cost ${spent.cost_usd:.4f} spent + ${est_cost or 0:.4f} for this call "
                        f"> ${max_cost_usd:.2f}")
        elif max_cost_usd and after >= warn_at * max_cost_usd:
            near.append(f"cost ${after:.4f} of ${max_cost_usd:.2f}")
    if max_tokens is not None:
        after_t = spent.tokens + est_tokens
        if after_t > max_tokens:
            over.append(f"tokens {spent.tokens} spent + {est_tokens} for this call > {max_tokens}")
        elif max_tokens and after_t >= warn_at * max_tokens:
            near.append(f"tokens {after_t} of {max_tokens}")
    if over:
        return Verdict("block" if blocking else "warn", f"{label} budget: {'; '.join(over)}")
    if near:
        return Verdict("warn", f"{label} budget at {int(warn_at * 100)}%: {'; '.join(near)}")
    return Verdict("ok")
