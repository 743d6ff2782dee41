"""The one retry loop around model calls.

Every request goes through ``ModelCaller.complete``: budgets are checked
before the call, identical requests are answered from the cache, the shared
limiter caps concurrent calls per provider, each outcome is recorded in the
ledger, and ``llm_retry.decide`` says what an error means — wait and retry,
rotate to the next fallback, mark the model exhausted or dropped, shrink, or
stop the run. Nothing below this loop retries on its own.
"""

from __future__ import annotations

import os
import random
import select
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from agentrun.plan import budget
from agentrun.agents.llm import client as llm_client
from agentrun.plan import llm_retry as llm_policy
from agentrun.plan.llm_retry import LLMError
from agentrun.store.events import EventLog
from agentrun.agents.llm.protocol import ChatRequest, ChatResponse
from agentrun.agents.llm.shared import SharedLLMState, Slot, cache_key
from agentrun.spec.models import Model
from agentrun.store.redaction import NO_SECRETS, Secrets
from agentrun.spec.workstream import Budget

SLOT_POLL_SECONDS = (0.02, 0.25)
CANCEL_POLL_SECONDS = 0.05
# A 429 that arrives while other calls to the provider are in flight is the limiter's business (it halves
# the cap): it does not count as a try on the model, up to this many times per request.
CROWDED_RATE_LIMIT_RETRIES = 8


class LLMStop(Exception):
    """The attempt cannot go on with a model call (budget, no model left, cancelled, fatal)."""

    status = "failed"


class BudgetExceeded(LLMStop):
    pass


class NoModelAvailable(LLMStop):
    pass


class ContextTooLarge(LLMStop):
    pass


class FatalLLMError(LLMStop):
    pass


class Cancelled(LLMStop):
    status = "cancelled"


@dataclass
class Reply:
    response: ChatResponse
    model: Model
    cached: bool


def provider_of(model: Model) -> str:
    return model.base_url.split("://", 1)[-1].split("/", 1)[0]


class ModelCaller:
    def __init__(self, shared: SharedLLMState, events: EventLog, *, ws_id: str, attempt: int,
                 chain: list[Model], ws_budget: Budget, run_budget: Budget, max_concurrent: int,
                 cancel_fd: int | None = None, rng: random.Random | None = None,
                 timeouts: tuple[float, float] = (10.0, 120.0), secrets: Secrets = NO_SECRETS):
        self.shared, self.events = shared, events
        self.ws_id, self.attempt = ws_id, attempt
        self.chain = chain
        self.ws_budget, self.run_budget = ws_budget, run_budget
        self.max_concurrent = max_concurrent
        self.cancel_fd = cancel_fd
        self.rng = rng or random.Random()
        self.timeouts = timeouts
        self.secrets = secrets   # taken out of replies and of every error text this loop records
        self._warned: set[str] = set()
        # model name -> (estimated prompt tokens a server refused as too large, its n_prompt, its n_ctx):
        # a prompt at least that large is never sent to that model again (the conversation only grows).
        self._overflow: dict[str, tuple[int, int | None, int | None]] = {}
        self.cache_keys: list[str] = []        # cache entries this caller read or wrote
        # A fatal error already recorded when this attempt began is from before a resume (the user
        # has presumably fixed it); only one recorded since stops this caller's calls.
        self._fatal_before = shared.fatal()

    # --- waiting, interruptibly --------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.cancel_fd is None:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self.cancel_fd], [], [], seconds)
        if ready:
            raise Cancelled("stopped: run interrupted")

    def _slot(self, model: Model) -> Slot:
        provider = provider_of(model)
        while True:
            slot = self.shared.try_acquire(provider, self.max_concurrent)
            if slot is not None:
                return slot
            self._sleep(self.rng.uniform(*SLOT_POLL_SECONDS))

    # --- budgets -----------------------------------------------------------------
    def _check_budgets(self, model: Model, est_prompt: int, max_tokens: int) -> None:
        est_cost = model.cost(est_prompt, max_tokens)
        est_tokens = est_prompt + max_tokens
        checks = [(self.ws_budget, self.shared.spent(self.ws_id), True, f"workstream {self.ws_id}"),
                  (self.run_budget, self.shared.spent(), self.run_budget.mode != "warn", "run")]
        for limit, spent, blocking, label in checks:
            if limit.max_cost_usd is None and limit.max_tokens is None:
                continue
            verdict = budget.check(spent, est_cost, est_tokens, max_cost_usd=limit.max_cost_usd,
                                   max_tokens=limit.max_tokens, warn_at=limit.warn_at, blocking=blocking,
                                   label=label)
            if verdict.action == "block":
                self.shared.record_call(ws_id=self.ws_id, attempt=self.attempt, model=model.name,
                                        model_id=model.id, provider=provider_of(model), status="budget",
                                        est_prompt_tokens=est_prompt, started_at=time.time(),
                                        error=verdict.message)
                self.events.emit("budget_exceeded", self.ws_id, self.attempt, scope=label, detail=verdict.message)
                raise BudgetExceeded(f"{verdict.message}; the call was not made")
            if verdict.action == "warn" and label not in self._warned:
                self._warned.add(label)
                self.events.emit("budget_warning", self.ws_id, self.attempt, scope=label, detail=verdict.message)

    # --- the loop ----------------------------------------------------------------
    def complete(self, messages: list[dict], *, est_prompt_tokens: int, max_tokens: int | None = None) -> Reply:
        reasons: list[str] = []
        for index, model in enumerate(self.chain):
            out = max_tokens or model.max_output_tokens
            gate = self.shared.admit(model.name)
            if not gate.allowed:
                reasons.append(f"{model.name}: {gate.reason}")
                continue
            est = int(est_prompt_tokens * self.shared.calibration(model.id))
            if est + out > model.context_window:
                reasons.append(f"{model.name}: context window {model.context_window} < ~{est + out} tokens")
                continue
            overflow = self._overflow.get(model.name)
            if overflow is not None and self._still_too_large(est, *overflow):
                reasons.append(f"{model.name}: prompt too large for its context window (the server refused "
                               f"~{overflow[0]} tokens before)")
                continue
            if model.api_key_env and not os.environ.get(model.api_key_env):
                # preflight only insists on the primary's key; a fallback without one is skipped, never
                # called without a key (its 401 would stop the whole run)
                reasons.append(f"{model.name}: ${model.api_key_env} is not set")
                continue
            reply = self._on_model(model, messages, est, out, reasons)
            if reply is not None:
                if index:
                    self.events.emit("llm_fallback", self.ws_id, self.attempt, model=model.name,
                                     detail=f"primary unavailable: {reasons[0] if reasons else ''}")
                return reply
        if any("context window" in r or "too large" in r for r in reasons) and len(reasons) == len(self.chain):
            raise ContextTooLarge("the prompt fits no model in the chain: " + "; ".join(reasons))
        raise NoModelAvailable("no model could answer: " + "; ".join(reasons))

    @staticmethod
    def _still_too_large(est: int, refused_est: int, n_prompt: int | None, n_ctx: int | None) -> bool:
        if est >= refused_est:
            return True
        if n_prompt and n_ctx and refused_est > 0:      # scale by what the server counted
            return est * n_prompt / refused_est > n_ctx
        return False

    def _on_model(self, model: Model, messages: list[dict], est: int, out: int, reasons: list[str]) -> Reply | None:
        key = cache_key(model.id, messages, out)
        hit = self.shared.cached(key)
        if hit is not None:
            self.cache_keys.append(key)
            response = self._redacted(ChatResponse(**hit))   # cached before replies were redacted
            self.shared.record_call(ws_id=self.ws_id, attempt=self.attempt, model=model.name, model_id=model.id,
                                    provider=provider_of(model), status="cached", est_prompt_tokens=est,
                                    cost_usd=0.0, cost_source="cache", latency_s=0.0, started_at=time.time())
            return Reply(response, model, True)
        api_key = os.environ.get(model.api_key_env) if model.api_key_env else None
        request = ChatRequest(model.id, messages, out)
        tries = 0           # requests sent to this model for this call
        strikes = 0         # the tries that count against the policy's limit
        crowded_retries = 0
        while True:
            self._check_fatal()
            self._check_budgets(model, est, out)
            slot = self._slot(model)
            started = time.time()
            outcome = "other"
            try:
                response = self._call(model, api_key, request)
                outcome = "ok"
            except LLMError as exc:
                error = exc
                if exc.kind == llm_policy.RATE_LIMIT:
                    outcome = "rate_limited"
            finally:
                self.shared.release(slot.id, provider_of(model), outcome)
            if outcome == "ok":
                # A reply that echoes a key must not reach the cache, the conversation or the edits.
                response = self._redacted(response)
                self._record_ok(model, response, est, tries, started)
                self.shared.succeeded(model.name)
                self.shared.cache(key, asdict(response))
                self.cache_keys.append(key)
                return Reply(response, model, False)
            tries += 1
            crowded = (error.kind == llm_policy.RATE_LIMIT and slot.others > 0
                       and crowded_retries < CROWDED_RATE_LIMIT_RETRIES)
            if crowded:
                crowded_retries += 1
            else:
                strikes += 1
            self.shared.record_call(ws_id=self.ws_id, attempt=self.attempt, model=model.name, model_id=model.id,
                                    provider=provider_of(model), status=error.kind, est_prompt_tokens=est,
                                    latency_s=time.time() - started, retry=tries - 1, started_at=started,
                                    error=self._text(error, 500))
            action = llm_policy.decide(error, max(1, strikes), now=time.time(), rng=self.rng,
                                       key_env=model.api_key_env)
            if crowded and isinstance(action, llm_policy.Rotate) and error.retry_after is None:
                # our own concurrency caused it: the limiter has just lowered the cap; back off and retry
                action = llm_policy.Retry(llm_policy.backoff_full_jitter(crowded_retries - 1, rng=self.rng))
            if isinstance(action, llm_policy.Fatal) and error.kind == llm_policy.AUTH and not model.api_key_env:
                action = llm_policy.Fatal(f"authentication failed for model {model.name} ({model.id}) at "
                                          f"{model.base_url}: {error.message}. The endpoint wants an API key, "
                                          f"and [models.{model.name}] names none: set api_key_env to the "
                                          f"environment variable that holds it.")
            if isinstance(action, llm_policy.Retry):
                if error.kind != llm_policy.RATE_LIMIT:     # the limiter handles rate limits, not the breaker
                    self.shared.failed(model.name, error.kind)
                if error.kind == llm_policy.RATE_LIMIT:
                    self.events.emit("llm_rate_limited", self.ws_id, self.attempt, model=model.name,
                                     retry_in=round(action.delay, 2))
                self._sleep(action.delay)
                continue
            if isinstance(action, llm_policy.Rotate):
                self.shared.failed(model.name, f"{error.kind}: {self._text(error, 120)}",
                                   cooldown_until=action.cooldown_until)
                reasons.append(f"{model.name}: {error.kind}")
                self.events.emit("llm_rotated", self.ws_id, self.attempt, model=model.name, because=error.kind)
            elif isinstance(action, llm_policy.Exhausted):
                until = action.until or time.time() + 24 * 3600
                self.shared.exhausted(model.name, until, self._text(error, 200))
                reasons.append(f"{model.name}: quota exhausted")
                self.events.emit("llm_exhausted", self.ws_id, self.attempt, model=model.name, until=round(until))
            elif isinstance(action, llm_policy.Drop):
                self.shared.drop(model.name, self._text(error, 200))
                reasons.append(f"{model.name}: not found, dropped for this run")
                self.events.emit("llm_dropped", self.ws_id, self.attempt, model=model.name)
            elif isinstance(action, llm_policy.Shrink):
                seen = self._overflow.get(model.name)
                if seen is None or est < seen[0]:
                    self._overflow[model.name] = (est, action.n_prompt_tokens, action.n_ctx)
                reasons.append(f"{model.name}: prompt too large for its context window "
                               f"({action.n_prompt_tokens or '?'} > {action.n_ctx or '?'})")
            elif isinstance(action, llm_policy.Fatal):
                message = self._text(action.message)
                self.shared.set_fatal(message)
                self.events.emit("llm_fatal", self.ws_id, self.attempt, model=model.name, detail=message)
                raise FatalLLMError(message)
            return None

    def _redacted(self, response: ChatResponse) -> ChatResponse:
        if not self.secrets:
            return response
        return replace(response, content=self.secrets.redact(response.content),
                       raw_model=response.raw_model and self.secrets.redact(response.raw_model))

    def _text(self, error: object, limit: int | None = None) -> str:
        """An error's text as recorded: redacted before it is cut, so that no part of a key is left."""
        return self.secrets.redact(str(error))[:limit]

    def forget(self) -> None:
        """Drop the cached replies of this attempt: it failed with them, so a retry (or a later run)
        must ask the model again instead of replaying the same failing conversation from the cache."""
        self.shared.uncache(self.cache_keys)
        self.cache_keys = []

    def _check_fatal(self) -> None:
        """Another workstream of the run hit an error that stops the run: make no further call."""
        fatal = self.shared.fatal()
        if fatal and fatal != self._fatal_before:
            raise FatalLLMError(f"the run was stopped: {fatal}")

    def _call(self, model: Model, api_key: str | None, request: ChatRequest) -> ChatResponse:
        """One request, bounded by the model's timeout, and abandoned at once when the run is cancelled."""
        connect, read = self.timeouts
        total = None
        if model.timeout is not None:      # [models.NAME] timeout bounds the whole exchange
            connect, read, total = min(connect, model.timeout), model.timeout, model.timeout

        def call() -> ChatResponse:
            return llm_client.complete(model.base_url, api_key, request, connect_timeout=connect,
                                       read_timeout=read, total_timeout=total)

        if self.cancel_fd is None:
            return call()
        box: dict = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["response"] = call()
            except BaseException as exc:    # handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        # The request runs in a helper thread so that a cancelled run (hard budget stop, fatal error,
        # Ctrl-C) does not wait for a slow or hung server; an abandoned request ends at its timeout.
        threading.Thread(target=target, name="llm-call", daemon=True).start()
        while not done.is_set():
            ready, _, _ = select.select([self.cancel_fd], [], [], CANCEL_POLL_SECONDS)
            if ready and not done.is_set():
                raise Cancelled("stopped: run interrupted")
        if "error" in box:
            raise box["error"]
        return box["response"]

    def _record_ok(self, model: Model, response: ChatResponse, est: int, tries: int, started: float) -> None:
        cost, source = response.cost_usd, "provider"
        if cost is None and response.prompt_tokens is not None and response.completion_tokens is not None:
            cost, source = model.cost(response.prompt_tokens, response.completion_tokens), "table"
        if cost is None:
            source = "unknown"
        self.shared.record_call(ws_id=self.ws_id, attempt=self.attempt, model=model.name, model_id=model.id,
                                provider=provider_of(model), status="ok", prompt_tokens=response.prompt_tokens,
                                completion_tokens=response.completion_tokens, cached_tokens=response.cached_tokens,
                                est_prompt_tokens=est, cost_usd=cost, cost_source=source,
                                latency_s=response.latency_s, retry=tries, started_at=started)


def preflight(chains: dict[str, list[Model]], probe: Callable[[str, str | None], str | None] | None = None) -> list[str]:
    """Problems that would make every call fail: missing API keys, endpoints that do not answer."""
    probe = probe or (lambda url, key: llm_client.probe(url, key, timeout=3))
    problems: list[str] = []
    needed: dict[str, list[str]] = {}
    urls: dict[str, str | None] = {}
    for ws_id, chain in chains.items():
        primary = chain[0]
        for model in chain:
            if model.api_key_env and not os.environ.get(model.api_key_env):
                if model is primary:
                    needed.setdefault(model.api_key_env, []).append(ws_id)
                continue
            urls.setdefault(model.base_url, os.environ.get(model.api_key_env) if model.api_key_env else None)
    for env, users in sorted(needed.items()):
        problems.append(f"environment variable {env} is not set; the model of {', '.join(sorted(users)[:5])} "
                        f"needs it (export {env}=..., or pick another model)")
    for url, key in sorted(urls.items()):
        failure = probe(url, key)
        if failure:
            problems.append(f"model endpoint {url} does not answer ({failure}); check base_url or start the server")
    return problems
