"""What to do after a failed LLM call: the decision half of the one retry loop. Pure (no I/O).

The loop that calls :func:`agentrun.agents.llm.client.complete` owns the clock, the
sleeping and the list of fallback models; on every :class:`LLMError` it asks
:func:`decide` for one :data:`Action` and carries it out.

Rules (``tries`` = attempts made on the current model so far, including the
one that just failed; ``max_tries`` defaults to 3):

==================  =====================================================  ==========================
error kind          condition                                              action
==================  =====================================================  ==========================
connection,         tries < max_tries                                      ``Retry(full jitter)``;
timeout, server,                                                           a server's Retry-After
bad_response                                                               (<= 60 s) is a floor
                    tries >= max_tries                                     ``Rotate(now + 60 s)``
rate_limit          Retry-After given, <= 60 s, and tries < max_tries      ``Retry(retry_after)``
                    no usable Retry-After (absent or > 60 s),              ``Rotate(cooldown_until)``
                    or tries >= max_tries                                  = the later of reset_at and
                                                                           now + Retry-After, else
                                                                           now + 60 s
quota               daily cap: never retried                               ``Exhausted(reset_at)``
                                                                           (None: for the whole run;
                                                                           past: now + 60 s)
not_found           model gone / bad model id / no endpoints               ``Drop()``
context_length      never resend the same prompt                           ``Shrink(n_prompt, n_ctx)``
auth                401 / 403: say which env var to check                  ``Fatal(message)``
payment             402: out of credits                                    ``Fatal(message)``
bad_request         other 4xx: the request itself is wrong                 ``Fatal(message)``
==================  =====================================================  ==========================

``Retry`` stays on the same model after ``delay`` seconds. ``Rotate`` moves to the
next fallback model; the current one should not be used again before
``cooldown_until`` (epoch seconds). ``Exhausted`` marks the model unusable until
``until`` (epoch seconds; None = the rest of the run). ``Drop`` removes the model
for the run. ``Shrink`` asks the caller to shrink the context (or move to a
fallback with a larger window) before sending again. ``Fatal`` stops the run
early with one clear message.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

# --- error kinds -------------------------------------------------------------------

CONNECTION = "connection"          # could not connect (refused, DNS, connect timeout, dropped)
TIMEOUT = "timeout"                # read timeout or total deadline exceeded
SERVER = "server"                  # 5xx, 408, or an error object with such a code
RATE_LIMIT = "rate_limit"          # 429 per-minute / upstream rate limit
QUOTA = "quota"                    # 429 daily cap (e.g. OpenRouter free-models-per-day)
CONTEXT_LENGTH = "context_length"  # prompt does not fit the model's context window
AUTH = "auth"                      # 401 / 403
PAYMENT = "payment"                # 402
NOT_FOUND = "not_found"            # 404 (e.g. OpenRouter "No endpoints found for ...")
BAD_REQUEST = "bad_request"        # any other 4xx (and redirects)
BAD_RESPONSE = "bad_response"      # unparseable JSON, missing choices, oversized body

KINDS = (CONNECTION, TIMEOUT, SERVER, RATE_LIMIT, QUOTA, CONTEXT_LENGTH, AUTH, PAYMENT,
         NOT_FOUND, BAD_REQUEST, BAD_RESPONSE)

class LLMError(Exception):
    """A failed LLM call. ``kind`` is one of ``KINDS``.

    ``status``: HTTP status (or the ``code`` of an error object inside a 200 body).
    ``retry_after``: seconds to wait, from ``Retry-After`` (seconds or HTTP date).
    ``reset_at``: epoch seconds when a quota / rate window resets (``X-RateLimit-Reset``).
    ``n_prompt_tokens`` / ``n_ctx``: for ``context_length``, when the server says.
    """

    def __init__(self, kind: str, message: str, status: int | None = None,
                 retry_after: float | None = None, reset_at: float | None = None, *,
                 n_prompt_tokens: int | None = None, n_ctx: int | None = None,
                 model_id: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown LLMError kind {kind!r}")
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.reset_at = reset_at
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx
        self.model_id = model_id
        super().__init__(message)

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.kind}{status}: {self.message}"

    def __repr__(self) -> str:
        extra = "".join(f", {name}={getattr(self, name)!r}"
                        for name in ("status", "retry_after", "reset_at", "n_prompt_tokens", "n_ctx",
                                     "model_id")
                        if getattr(self, name) is not None)
        return f"LLMError({self.kind!r}, {self.message!r}{extra})"

    def __reduce__(self):
        return (_rebuild_error, (self.kind, self.message, self.status, self.retry_after, self.reset_at,
                                 self.n_prompt_tokens, self.n_ctx, self.model_id))


def _rebuild_error(kind, message, status, retry_after, reset_at, n_prompt_tokens, n_ctx, model_id):
    return LLMError(kind, message, status, retry_after, reset_at, n_prompt_tokens=n_prompt_tokens,
                    n_ctx=n_ctx, model_id=model_id)


MAX_RETRY_AFTER = 60.0        # longer Retry-After waits rotate instead of sleeping
DEFAULT_COOLDOWN = 60.0       # how long a rotated-away model rests when nobody said
DEFAULT_KEY_ENV = "OPENROUTER_API_KEY"

_TRANSIENT = (CONNECTION, TIMEOUT, SERVER, BAD_RESPONSE)


@dataclass(frozen=True)
class Retry:
    """Same model again after ``delay`` seconds."""
    delay: float


@dataclass(frozen=True)
class Rotate:
    """Next fallback model; this one rests until ``cooldown_until`` (epoch seconds)."""
    cooldown_until: float


@dataclass(frozen=True)
class Exhausted:
    """Quota used up: the model is unusable until ``until`` (epoch seconds; None = for the run)."""
    until: float | None


@dataclass(frozen=True)
class Drop:
    """The model does not exist (here): drop it for the run."""


@dataclass(frozen=True)
class Shrink:
    """The prompt does not fit: shrink it or use a larger-window model; never resend as is."""
    n_prompt_tokens: int | None
    n_ctx: int | None


@dataclass(frozen=True)
class Fatal:
    """Retrying cannot help: stop with this message."""
    message: str


Action = Union[Retry, Rotate, Exhausted, Drop, Shrink, Fatal]

_default_rng = random.Random()


def backoff_full_jitter(n: int, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """Delay before retry ``n`` (0-based): uniform in [0, min(cap, base * 2**n)] ("full jitter")."""
    rng = _default_rng if rng is None else rng
    return rng.uniform(0, min(cap, base * 2 ** max(0, n)))


def _usable_retry_after(value: float | None) -> float | None:
    if value is None or value != value or value < 0 or value > MAX_RETRY_AFTER:
        return None
    return value


def decide(error: LLMError, tries_on_this_model: int, *, max_tries: int = 3, now: float,
           rng: random.Random | None = None, backoff_base: float = 1.0, backoff_cap: float = 60.0,
           key_env: str | None = None) -> Action:
    """The action for ``error`` after ``tries_on_this_model`` attempts on the current model.

    See the module docstring for the table. ``now`` is epoch seconds (the caller's
    clock); ``rng`` feeds the jitter; ``key_env`` names the env var holding the API
    key, for the auth message.
    """
    kind = error.kind
    tries = max(1, tries_on_this_model)
    model = f" for model {error.model_id}" if error.model_id else ""

    if kind in _TRANSIENT:
        if tries < max_tries:
            delay = backoff_full_jitter(tries - 1, backoff_base, backoff_cap, rng)
            floor = _usable_retry_after(error.retry_after)
            return Retry(max(delay, floor) if floor is not None else delay)
        return Rotate(now + DEFAULT_COOLDOWN)

    if kind == RATE_LIMIT:
        wait = _usable_retry_after(error.retry_after)
        if wait is not None and tries < max_tries:
            return Retry(wait)
        candidates = []
        if error.reset_at is not None and error.reset_at > now:
            candidates.append(error.reset_at)
        if error.retry_after is not None and error.retry_after >= 0:
            candidates.append(now + error.retry_after)
        return Rotate(max(candidates) if candidates else now + DEFAULT_COOLDOWN)

    if kind == QUOTA:
        if error.reset_at is None:
            return Exhausted(None)
        # a reset time already past (clock skew, stale header) must not invite an immediate retry
        return Exhausted(error.reset_at if error.reset_at > now else now + DEFAULT_COOLDOWN)

    if kind == NOT_FOUND:
        return Drop()

    if kind == CONTEXT_LENGTH:
        return Shrink(error.n_prompt_tokens, error.n_ctx)

    if kind == AUTH:
        env = key_env or DEFAULT_KEY_ENV
        return Fatal(f"authentication failed{model}: {error.message}. Check the API key in ${env} "
                     f"(or the key configured for this endpoint).")
    if kind == PAYMENT:
        return Fatal(f"payment required{model}: {error.message}. Add credits to the account or "
                     f"choose a free model.")
    if kind == BAD_REQUEST:
        return Fatal(f"the endpoint rejected the request{model}: {error.message}")
    return Fatal(f"unexpected LLM error ({kind}){model}: {error.message}")
