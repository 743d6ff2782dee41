"""HTTP client for OpenAI-compatible chat-completions endpoints.

One non-streaming call (:func:`complete`), a model listing (:func:`list_models`)
and a pre-flight reachability check (:func:`probe`). Works against OpenRouter
(the default), OpenAI, and local servers (llama.cpp ``llama-server``, vLLM,
Ollama, LM Studio) given their ``base_url``, e.g. ``https://openrouter.ai/api/v1``
or ``http://127.0.0.1:8080/v1``.

Every failure is raised as :class:`LLMError` with a precise ``kind`` (see
``KINDS``) so that the retry policy (:mod:`agentrun.plan.llm_retry`) can decide what
to do without looking at HTTP details.

No call can hang the caller: connecting is bounded by ``connect_timeout``, each
socket read by ``read_timeout``, and the whole exchange (including a server
that trickles body bytes forever) by ``total_timeout`` (default
``connect_timeout + read_timeout``), enforced by a watchdog that shuts the
socket down.

The API key never appears in an exception message, ``repr`` or log record: it
is only sent in the ``Authorization`` header, and any text that came back from
the server is redacted before it is put in an error.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import socket
import threading
import time
from datetime import timezone
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests

from agentrun.plan.llm_retry import (AUTH, BAD_REQUEST, BAD_RESPONSE, CONNECTION, CONTEXT_LENGTH, NOT_FOUND,
                                     PAYMENT, QUOTA, RATE_LIMIT, SERVER, TIMEOUT, LLMError)
from agentrun.store.redaction import REDACTED, Secrets

log = logging.getLogger("agentrun.llm")

MAX_BODY_BYTES = 32 * 1024 * 1024
_SNIPPET = 500          # characters of a server's text kept in an error message


# --- request / response ------------------------------------------------------------

@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions call. ``temperature=None`` omits the field (some models reject it)."""

    model_id: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = 0


@dataclass(frozen=True)
class ChatResponse:
    """A successful completion. Token counts are None when the server does not report them."""

    content: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    cost_usd: float | None          # provider-reported (OpenRouter ``usage.cost``), never estimated
    latency_s: float
    raw_model: str | None           # the ``model`` the server says answered
    finish_reason: str | None


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``/models``. Prices are USD per token (None when not published)."""

    id: str
    context_length: int | None = None
    prompt_price: float | None = None
    completion_price: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


# --- redaction -----------------------------------------------------------------------

def redact(text: str, api_key: str | None) -> str:
    """``text`` with every occurrence of ``api_key`` (and any ``Bearer`` token) replaced."""
    if not text:
        return text
    if api_key:
        text = Secrets((api_key,)).redact(text)
    return re.sub(r"(?i)(bearer\s+)(?!\[REDACTED\])[^\s\"',;]+", r"\1" + REDACTED, text)


def _snippet(text: str, api_key: str | None) -> str:
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


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_float(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


@dataclass
class _ErrorInfo:
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


def _error_info(body: Any, raw_text: str) -> _ErrorInfo:
    """Pull message/code/type out of OpenAI, OpenRouter, llama.cpp, vLLM or Ollama error bodies."""
    info = _ErrorInfo()
    if not isinstance(body, dict):
        info.message = raw_text
        return info
    err = body.get("error")
    if isinstance(err, dict):
        info.message = str(err.get("message") or "")
        info.code = err.get("code")
        info.type = str(err.get("type") or "")
        info.n_prompt_tokens = _as_int(err.get("n_prompt_tokens"))
        info.n_ctx = _as_int(err.get("n_ctx"))
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


def _classify(status: int, headers: Mapping[str, Any], info: _ErrorInfo, api_key: str | None,
              model_id: str | None, *, in_body: bool = False) -> LLMError:
    """Turn an HTTP status (or an error object's code) plus the error body into an LLMError."""
    text = info.text
    where = "error object in a 200 response" if in_body else f"HTTP {status}"
    message = _snippet(info.message or where, api_key)
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
        hint = f" to {_snippet(location, api_key)}" if location else ""
        return LLMError(BAD_REQUEST, f"redirected{hint}; check base_url ({message})", **kw)
    if 400 <= status <= 499:
        return LLMError(BAD_REQUEST, message, **kw)
    return LLMError(BAD_RESPONSE, f"unexpected status: {message}", **kw)


def _classify_body_error(err_body: Mapping[str, Any], headers: Mapping[str, Any], api_key: str | None,
                         model_id: str | None) -> LLMError:
    """An ``error`` object inside a 200 response: classify by its ``code``, else by its words."""
    info = _error_info({"error": err_body}, json.dumps(err_body))
    code = _as_int(info.code)
    if code is None or not 100 <= code <= 599:
        if _CONTEXT_WORDS.search(info.text):
            code = 400
        elif _DAILY_WORDS.search(info.text) or _RATE_WORDS.search(info.text):
            code = 429
        else:
            code = 502   # an unexplained failure mid-generation: the provider's fault
    return _classify(code, headers, info, api_key, model_id, in_body=True)


# --- transport -----------------------------------------------------------------------

@dataclass
class _Raw:
    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_s: float


def _describe_connection_error(exc: BaseException) -> str:
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


def _http(method: str, url: str, api_key: str | None, *, json_body: Any = None,
          extra_headers: Mapping[str, str] | None = None, connect_timeout: float,
          read_timeout: float, total_timeout: float | None,
          session: requests.Session | None, model_id: str | None = None) -> _Raw:
    """One HTTP exchange with the whole body read under an overall deadline.

    Raises LLMError(connection | timeout | bad_response); HTTP error statuses are returned.
    """
    headers = {"Accept": "application/json", "User-Agent": "agentrun"}
    if extra_headers:
        headers.update(extra_headers)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(json_body).encode()
    if total_timeout is None:
        total_timeout = connect_timeout + read_timeout
    safe_url = redact(url, api_key)
    own_session = session is None
    sess = requests.Session() if own_session else session
    start = time.monotonic()
    deadline = start + total_timeout
    fired = threading.Event()
    resp = None
    try:
        try:
            resp = sess.request(method, url, data=data, headers=headers, stream=True, allow_redirects=False,
                                timeout=(connect_timeout, min(read_timeout, total_timeout)))
        except requests.exceptions.ConnectTimeout:
            raise LLMError(CONNECTION, f"could not connect to {safe_url} within {connect_timeout:g}s",
                           model_id=model_id) from None
        except requests.exceptions.ReadTimeout:
            raise LLMError(TIMEOUT, f"no response from {safe_url} within {min(read_timeout, total_timeout):g}s",
                           model_id=model_id) from None
        except requests.exceptions.ConnectionError as exc:
            detail = _snippet(_describe_connection_error(exc), api_key)
            raise LLMError(CONNECTION, f"cannot reach {safe_url}: {detail}", model_id=model_id) from None
        except requests.exceptions.RequestException as exc:   # invalid URL, missing schema, ...
            detail = _snippet(f"{type(exc).__name__}: {exc}", api_key)
            raise LLMError(CONNECTION, f"request to {safe_url} failed: {detail}", model_id=model_id) from None

        def abort():
            fired.set()
            try:
                resp.raw.shutdown()     # unblocks a read in progress (urllib3 >= 2.3)
                return
            except Exception:
                pass
            try:                        # older urllib3: reach the socket itself
                resp.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
            except Exception:           # already closed / released: nothing to unblock
                pass

        remaining = deadline - time.monotonic()
        watchdog = threading.Timer(max(0.0, remaining), abort)
        watchdog.daemon = True
        watchdog.start()
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.iter_content(chunk_size=65536):
                chunks.append(chunk)
                size += len(chunk)
                if fired.is_set() or time.monotonic() > deadline:
                    break
                if size > MAX_BODY_BYTES:
                    raise LLMError(BAD_RESPONSE, f"response body from {safe_url} exceeds "
                                   f"{MAX_BODY_BYTES} bytes", status=resp.status_code, model_id=model_id)
        except LLMError:
            raise
        except Exception as exc:
            if fired.is_set() or time.monotonic() > deadline:
                pass   # reported as a timeout below
            elif isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) and \
                    "timed out" in str(exc).lower():
                raise LLMError(TIMEOUT, f"{safe_url} stopped sending within {read_timeout:g}s",
                               status=resp.status_code, model_id=model_id) from None
            else:
                detail = _snippet(f"{type(exc).__name__}: {exc}", api_key)
                raise LLMError(CONNECTION, f"connection to {safe_url} broke while reading the response: "
                               f"{detail}", status=resp.status_code, model_id=model_id) from None
        finally:
            watchdog.cancel()
        if fired.is_set() or time.monotonic() > deadline:
            raise LLMError(TIMEOUT, f"response from {safe_url} not complete within {total_timeout:g}s",
                           status=resp.status_code, model_id=model_id)
        return _Raw(resp.status_code, resp.headers, b"".join(chunks), time.monotonic() - start)
    finally:
        if resp is not None:
            resp.close()
        if own_session:
            sess.close()


def _decode_json(raw: _Raw) -> tuple[Any, str]:
    text = raw.body.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


def _is_openrouter(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "openrouter.ai" or host.endswith(".openrouter.ai")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):   # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return str(content)


# --- public calls --------------------------------------------------------------------

def complete(base_url: str, api_key: str | None, req: ChatRequest, *, connect_timeout: float = 10,
             read_timeout: float = 120, total_timeout: float | None = None,
             session: requests.Session | None = None, include_usage: bool | None = None,
             extra_headers: Mapping[str, str] | None = None) -> ChatResponse:
    """POST ``{base_url}/chat/completions`` once (non-streaming); raise LLMError on any failure.

    ``include_usage``: send ``usage: {"include": true}`` (OpenRouter usage
    accounting, which reports ``usage.cost``). ``None`` sends it only to
    openrouter.ai, since strict servers (OpenAI, Mistral) reject unknown fields.
    """
    url = base_url.rstrip("/") + "/chat/completions"
    body: dict[str, Any] = {"model": req.model_id, "messages": req.messages, "max_tokens": req.max_tokens}
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if include_usage is None:
        include_usage = _is_openrouter(base_url)
    if include_usage:
        body["usage"] = {"include": True}
    model = req.model_id
    raw = _http("POST", url, api_key, json_body=body, extra_headers=extra_headers,
                connect_timeout=connect_timeout, read_timeout=read_timeout, total_timeout=total_timeout,
                session=session, model_id=model)
    data, text = _decode_json(raw)
    if not 200 <= raw.status <= 299:
        err = _classify(raw.status, raw.headers, _error_info(data, text), api_key, model)
        log.debug("chat %s -> %r", model, err)
        raise err
    if not isinstance(data, dict):
        raise LLMError(BAD_RESPONSE, f"response is not a JSON object: {_snippet(text, api_key)!r}",
                       status=raw.status, model_id=model)
    if data.get("error"):
        err_obj = data["error"]
        if not isinstance(err_obj, dict):
            err_obj = {"message": str(err_obj)}
        raise _classify_body_error(err_obj, raw.headers, api_key, model)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(BAD_RESPONSE, f"response has no choices: {_snippet(text, api_key)!r}",
                       status=raw.status, model_id=model)
    choice = choices[0]
    if isinstance(choice.get("error"), dict):
        raise _classify_body_error(choice["error"], raw.headers, api_key, model)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise LLMError(BAD_RESPONSE, f"first choice has no message: {_snippet(text, api_key)!r}",
                       status=raw.status, model_id=model)
    finish = choice.get("finish_reason")
    if finish == "error":
        raise LLMError(SERVER, "provider failed during generation (finish_reason=error)",
                       status=raw.status, model_id=model)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = _as_int(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is None:
        timings = data.get("timings")            # llama.cpp: prompt tokens reused from its cache
        if isinstance(timings, dict):
            cached = _as_int(timings.get("cache_n"))
    response = ChatResponse(
        content=_content_text(message.get("content")),
        prompt_tokens=_as_int(usage.get("prompt_tokens")),
        completion_tokens=_as_int(usage.get("completion_tokens")),
        cached_tokens=cached,
        cost_usd=_as_float(usage.get("cost")),
        latency_s=raw.latency_s,
        raw_model=data.get("model") if isinstance(data.get("model"), str) else None,
        finish_reason=finish if isinstance(finish, str) else None,
    )
    log.debug("chat %s -> %s in %.2fs, %s+%s tokens", model, response.finish_reason, response.latency_s,
              response.prompt_tokens, response.completion_tokens)
    return response


def _price(pricing: Any, key: str) -> float | None:
    if not isinstance(pricing, dict):
        return None
    price = _as_float(pricing.get(key))
    return None if price is None or price < 0 else price   # OpenRouter uses "-1" for "varies"


def list_models(base_url: str, api_key: str | None, timeout: float = 10, *,
                session: requests.Session | None = None) -> list[ModelInfo]:
    """GET ``{base_url}/models`` and parse it (OpenRouter, OpenAI, vLLM, llama.cpp, Ollama shapes)."""
    url = base_url.rstrip("/") + "/models"
    raw = _http("GET", url, api_key, connect_timeout=timeout, read_timeout=timeout, total_timeout=timeout * 2,
                session=session)
    data, text = _decode_json(raw)
    if raw.status != 200:
        raise _classify(raw.status, raw.headers, _error_info(data, text), api_key, None)
    if isinstance(data, dict) and data.get("error"):
        err_obj = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
        raise _classify_body_error(err_obj, raw.headers, api_key, None)
    entries = data.get("data") if isinstance(data, dict) else data
    if isinstance(data, dict) and entries is None:
        entries = data.get("models")              # Ollama's native shape
    if not isinstance(entries, list):
        raise LLMError(BAD_RESPONSE, f"/models did not return a list: {_snippet(text, api_key)!r}",
                       status=raw.status)
    models = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        model_id = entry.get("id") or entry.get("name") or entry.get("model")
        if not isinstance(model_id, str):
            continue
        top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
        context = (_as_int(entry.get("context_length")) or _as_int(entry.get("max_model_len"))
                   or _as_int(top.get("context_length")) or _as_int(entry.get("max_context_length")))
        pricing = entry.get("pricing")
        models.append(ModelInfo(id=model_id, context_length=context, prompt_price=_price(pricing, "prompt"),
                                completion_price=_price(pricing, "completion"), raw=entry))
    return models


def probe(base_url: str, api_key: str | None, timeout: float = 3, *,
          session: requests.Session | None = None) -> str | None:
    """Pre-flight check: None if ``{base_url}/models`` answers with any HTTP status, else why not."""
    url = base_url.rstrip("/") + "/models"
    try:
        _http("GET", url, api_key, connect_timeout=timeout, read_timeout=timeout, total_timeout=timeout * 2,
              session=session)
    except LLMError as exc:
        if exc.status is not None:     # it answered, then misbehaved while sending the body
            return None
        return exc.message
    return None
