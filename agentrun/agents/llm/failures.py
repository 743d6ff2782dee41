"""Turning a failed exchange with a chat-completions server into an :class:`LLMError`.

Pure: no I/O. The HTTP status, the rate-limit headers (``Retry-After``,
``Retry-After-Ms``, ``X-RateLimit-Reset``) and the error body (OpenAI,
OpenRouter, llama.cpp, vLLM or Ollama spelling) decide the error's ``kind``
(see :mod:`agentrun.plan.llm_retry`), so that the retry policy never looks at
HTTP details.

Any text that came back from the server is redacted (API key, ``Bearer``
tokens) before it is put in an error.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from datetime import timezone
from dataclasses import dataclass, field
from typing import Any, Mapping

from agentrun.plan.llm_retry import (AUTH, BAD_REQUEST, BAD_RESPONSE, CONTEXT_LENGTH, NOT_FOUND, PAYMENT, QUOTA,
                                     RATE_LIMIT, SERVER, LLMError)
from agentrun.store.redaction import REDACTED, Secrets

_SNIPPET = 500          # characters of a server's text kept in an error message


# --- redaction -----------------------------------------------------------------------

def redact(text: str, api_key: str | None) -> str:
    """``text`` with every occurrence of ``api_key`` (and any ``Bearer`` token) replaced."""
    if not text:
        return text
    if api_key:
        text = Secrets((api_key,)).redact(text)
    return re.sub(r"(?i)(bearer\s+)(?!\[REDACTED\])[^\s\"',;]+", r"\1" + REDACTED, text)


def snippet(text: str, api_key: str | None) -> str:
    text = redact(text, api_key)           # redact before cutting: never leak half a key
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


# --- header parsing ------------------------------------------------------------------

def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:    # HTTP dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        now = time.time() if now is None else now
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds < 0:   # NaN or negative
        return None
    return seconds


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_reset(value: str | None, now: float | None = None) -> float | None:
    """Epoch seconds from an ``X-RateLimit-Reset`` value.

    OpenRouter sends milliseconds since the epoch; seconds since the epoch are
    accepted too (told apart by magnitude), a small number (< 1e9) is taken as
    seconds from now, and a duration such as ``"6m0s"`` / ``"250ms"`` (OpenAI's
    ``x-ratelimit-reset-*``) as a delay from now.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    now = time.time() if now is None else now
    try:
        number = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            return None
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return now + sum(float(n) * scale[u] for n, u in parts)
    if number != number or number < 0:
        return None
    if number >= 1e11:          # milliseconds since the epoch (1e11 s is the year 5138)
        return number / 1000.0
    if number >= 1e9:           # seconds since the epoch
        return number
    return now + number         # a delay


# --- classification ------------------------------------------------------------------

_CONTEXT_WORDS = re.compile(
    r"context[ _-]?(length|size|window)|exceed_context_size|maximum context|context_length_exceeded"
    r"|too many tokens|prompt is too long|input is too long|exceeds? (the )?(token|context) limit"
    r"|reduce the length of the (messages|prompt)|n_ctx",
    re.IGNORECASE)
_DAILY_WORDS = re.compile(
    r"per[-_ ]?day|daily|insufficient_quota|exceeded your current quota|quota exceeded for (the )?day",
    re.IGNORECASE)
_RATE_WORDS = re.compile(r"rate[-_ ]?limit|too many requests|rate-limited", re.IGNORECASE)
_MODERATION_WORDS = re.compile(r"moderation|flagged", re.IGNORECASE)
_MODEL_MISSING_WORDS = re.compile(
    r"not a valid model|model_not_found|no endpoints found|model .{0,120}? (does not exist|not found)",
    re.IGNORECASE)

_N_CTX_PATTERNS = (
    re.compile(r"maximum context length is (\d+)", re.I),
    re.compile(r"available context size \((\d+) tokens?\)", re.I),
    re.compile(r"context (?:length|size|window) of (?:only )?(\d+)", re.I),
    re.compile(r"(?:context (?:length|size|window)|n_ctx)\D{0,20}?(\d{3,})", re.I),
    re.compile(r"> (\d+) maximum", re.I),
)
_N_PROMPT_PATTERNS = (
    re.compile(r"\((\d+) in the messages", re.I),
    re.compile(r"request \((\d+) tokens?\)", re.I),
    re.compile(r"requested (?:about )?(\d+) tokens", re.I),
    re.compile(r"prompt is too long: (\d+) tokens", re.I),
    re.compile(r"(?:resulted in|have|has|contains?) (\d+) tokens", re.I),
)


def _first_int(patterns, text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def as_int(value) -> int | None:
    """A JSON integer however the server spelled it (number or digits; never a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass
class ErrorInfo:
    """What an error body says, however the server spelled it."""

    message: str = ""
    code: Any = None
    type: str = ""
    n_prompt_tokens: int | None = None
    n_ctx: int | None = None
    meta_headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return f"{self.message} {self.type} {self.code if isinstance(self.code, str) else ''}"


def error_info(body: Any, raw_text: str) -> ErrorInfo:
    """Pull message/code/type out of OpenAI, OpenRouter, llama.cpp, vLLM or Ollama error bodies."""
    info = ErrorInfo()
    if not isinstance(body, dict):
        info.message = raw_text
        return info
    err = body.get("error")
    if isinstance(err, dict):
        info.message = str(err.get("message") or "")
        info.code = err.get("code")
        info.type = str(err.get("type") or "")
        info.n_prompt_tokens = as_int(err.get("n_prompt_tokens"))
        info.n_ctx = as_int(err.get("n_ctx"))
        meta = err.get("metadata")
        if isinstance(meta, dict):
            raw = meta.get("raw")            # OpenRouter: the upstream provider's own words
            if raw:
                raw_str = raw if isinstance(raw, str) else json.dumps(raw)
                info.message = f"{info.message}: {raw_str}" if info.message else raw_str
            provider = meta.get("provider_name")
            if provider:
                info.message += f" [provider: {provider}]"
            if isinstance(meta.get("headers"), dict):
                info.meta_headers = meta["headers"]
    elif isinstance(err, str):
        info.message = err
        info.type = str(body.get("type") or "")
        info.code = body.get("code")
    else:
        # vLLM: {"object": "error", "message": ..., "type": ..., "code": 400}; FastAPI: {"detail": ...}
        msg = body.get("message") or body.get("detail")
        info.message = msg if isinstance(msg, str) else (json.dumps(msg) if msg else raw_text)
        info.type = str(body.get("type") or "")
        info.code = body.get("code")
    if not info.message:
        info.message = raw_text
    return info


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if str(key).lower() == lowered:
            return None if value is None else str(value)
    return None


def classify(status: int, headers: Mapping[str, Any], info: ErrorInfo, api_key: str | None,
              model_id: str | None, *, in_body: bool = False) -> LLMError:
    """Turn an HTTP status (or an error object's code) plus the error body into an LLMError."""
    text = info.text
    where = "error object in a 200 response" if in_body else f"HTTP {status}"
    message = snippet(info.message or where, api_key)
    if in_body:
        message = f"{message} ({where})"
    kw = dict(status=status, model_id=model_id)

    def header(name: str) -> str | None:
        value = _header(headers, name)
        return value if value is not None else _header(info.meta_headers, name)

    retry_after = None
    retry_ms = header("retry-after-ms")
    if retry_ms is not None:
        ms = parse_retry_after(retry_ms)
        retry_after = None if ms is None else ms / 1000.0
    if retry_after is None:
        retry_after = parse_retry_after(header("retry-after"))
    reset_at = parse_reset(header("x-ratelimit-reset"))

    if status == 413 or (status in (400, 422) and _CONTEXT_WORDS.search(text)):
        n_ctx = info.n_ctx if info.n_ctx is not None else _first_int(_N_CTX_PATTERNS, info.message)
        n_prompt = (info.n_prompt_tokens if info.n_prompt_tokens is not None
                    else _first_int(_N_PROMPT_PATTERNS, info.message))
        return LLMError(CONTEXT_LENGTH, message, n_prompt_tokens=n_prompt, n_ctx=n_ctx, **kw)
    if status in (400, 404) and _MODEL_MISSING_WORDS.search(text):
        return LLMError(NOT_FOUND, message, **kw)
    if status == 429:
        if _DAILY_WORDS.search(text):
            return LLMError(QUOTA, message, retry_after=retry_after, reset_at=reset_at, **kw)
        return LLMError(RATE_LIMIT, message, retry_after=retry_after, reset_at=reset_at, **kw)
    if status == 408 or 500 <= status <= 599:
        return LLMError(SERVER, message, retry_after=retry_after, **kw)
    if status in (401, 403):
        if status == 403 and _MODERATION_WORDS.search(text):
            return LLMError(BAD_REQUEST, message, **kw)
        return LLMError(AUTH, message, **kw)
    if status == 402:
        return LLMError(PAYMENT, message, **kw)
    if status == 404:
        return LLMError(NOT_FOUND, message, **kw)
    if 300 <= status <= 399:
        location = _header(headers, "location")
        hint = f" to {snippet(location, api_key)}" if location else ""
        return LLMError(BAD_REQUEST, f"redirected{hint}; check base_url ({message})", **kw)
    if 400 <= status <= 499:
        return LLMError(BAD_REQUEST, message, **kw)
    return LLMError(BAD_RESPONSE, f"unexpected status: {message}", **kw)


def classify_body_error(err_body: Mapping[str, Any], headers: Mapping[str, Any], api_key: str | None,
                         model_id: str | None) -> LLMError:
    """An ``error`` object inside a 200 response: classify by its ``code``, else by its words."""
    info = error_info({"error": err_body}, json.dumps(err_body))
    code = as_int(info.code)
    if code is None or not 100 <= code <= 599:
        if _CONTEXT_WORDS.search(info.text):
            code = 400
        elif _DAILY_WORDS.search(info.text) or _RATE_WORDS.search(info.text):
            code = 429
        else:
            code = 502   # an unexplained failure mid-generation: the provider's fault
    return classify(code, headers, info, api_key, model_id, in_body=True)


# --- connection errors ---------------------------------------------------------------

def describe_connection_error(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text or "ECONNREFUSED" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or \
            "Temporary failure in name resolution" in text or "getaddrinfo failed" in text:
        return "host name not found"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "server closed the connection without a response"
    if "Connection reset" in text:
        return "connection reset by server"
    return text
