"""HTTP client for OpenAI-compatible chat-completions endpoints.

One non-streaming call (:func:`complete`), a model listing (:func:`list_models`)
and a pre-flight reachability check (:func:`probe`). Works against OpenRouter
(the default), OpenAI, and local servers (llama.cpp ``llama-server``, vLLM,
Ollama, LM Studio) given their ``base_url``, e.g. ``https://openrouter.ai/api/v1``
or ``http://127.0.0.1:8080/v1``.

Every failure is raised as :class:`LLMError` with a precise ``kind``
(classified in :mod:`agentrun.agents.llm.failures`) so that the retry policy
(:mod:`agentrun.plan.llm_retry`) can decide what to do without looking at HTTP
details. The bodies sent and the replies read are in
:mod:`agentrun.agents.llm.protocol`.

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

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import requests

from agentrun.agents.llm.failures import classify, describe_connection_error, error_info, redact, snippet
from agentrun.agents.llm.protocol import (ChatRequest, ChatResponse, ModelInfo, chat_body, parse_chat_reply,
                                          parse_models)
from agentrun.plan.llm_retry import BAD_RESPONSE, CONNECTION, TIMEOUT, LLMError

log = logging.getLogger("agentrun.llm")

MAX_BODY_BYTES = 32 * 1024 * 1024


# --- transport -----------------------------------------------------------------------

@dataclass
class _Raw:
    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_s: float


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
            detail = snippet(describe_connection_error(exc), api_key)
            raise LLMError(CONNECTION, f"cannot reach {safe_url}: {detail}", model_id=model_id) from None
        except requests.exceptions.RequestException as exc:   # invalid URL, missing schema, ...
            detail = snippet(f"{type(exc).__name__}: {exc}", api_key)
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
                detail = snippet(f"{type(exc).__name__}: {exc}", api_key)
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
    body = chat_body(base_url, req, include_usage)
    model = req.model_id
    raw = _http("POST", url, api_key, json_body=body, extra_headers=extra_headers,
                connect_timeout=connect_timeout, read_timeout=read_timeout, total_timeout=total_timeout,
                session=session, model_id=model)
    data, text = _decode_json(raw)
    if not 200 <= raw.status <= 299:
        err = classify(raw.status, raw.headers, error_info(data, text), api_key, model)
        log.debug("chat %s -> %r", model, err)
        raise err
    response = parse_chat_reply(data, text, raw.status, raw.headers, raw.latency_s, api_key, model)
    log.debug("chat %s -> %s in %.2fs, %s+%s tokens", model, response.finish_reason, response.latency_s,
              response.prompt_tokens, response.completion_tokens)
    return response


def list_models(base_url: str, api_key: str | None, timeout: float = 10, *,
                session: requests.Session | None = None) -> list[ModelInfo]:
    """GET ``{base_url}/models`` and parse it (OpenRouter, OpenAI, vLLM, llama.cpp, Ollama shapes)."""
    url = base_url.rstrip("/") + "/models"
    raw = _http("GET", url, api_key, connect_timeout=timeout, read_timeout=timeout, total_timeout=timeout * 2,
                session=session)
    data, text = _decode_json(raw)
    if raw.status != 200:
        raise classify(raw.status, raw.headers, error_info(data, text), api_key, None)
    return parse_models(data, text, raw.status, raw.headers, api_key)


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
