"""A real HTTP server speaking the OpenAI chat-completions protocol, scriptable for tests.

    with FakeLLM() as server:
        server.script([Reply(content="hi"), Status(429, headers={"Retry-After": "1"}), Hang()])
        complete(server.url, "key", req)          # server.url == "http://127.0.0.1:PORT/v1"
        server.requests[0].json["messages"]       # everything received is recorded

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models`` (also without
the ``/v1`` prefix). Each chat request takes the next behaviour from the queue
(:meth:`FakeLLM.script`); when the queue is empty the ``default`` callable is
asked (it sees the :class:`RecordedRequest`, and returns a behaviour or a
string, which becomes ``Reply(content=string)``). Callables can be queued too.
A plain string in the queue is ``Reply(content=string)``.
``/models`` has its own queue (:meth:`FakeLLM.script_models`) and answers the
``models`` list by default.

``max_concurrent=N`` answers 429 + ``Retry-After`` to any chat request that
arrives while N are already in flight (without consuming the queue);
``max_in_flight`` records the peak.

Shutdown is clean and quick: ``Hang``/``Slow``/``Trickle`` wait on an event that
:meth:`FakeLLM.close` sets, and every handler thread is joined.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

import pytest

__all__ = [
    "FakeLLM", "RecordedRequest", "Behaviour", "Reply", "Status", "RateLimit", "DailyQuota", "Burst5xx",
    "ErrorIn200", "ContextLength", "NotFound", "Slow", "Hang", "Trickle", "Disconnect", "fake_llm",
]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    rejected: bool = False          # turned away by the concurrency limit

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    @property
    def messages(self) -> list[dict]:
        return (self.json or {}).get("messages", []) if isinstance(self.json, dict) else []

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    @property
    def prompt_text(self) -> str:
        """All message contents joined, for defaults that answer based on the prompt."""
        parts = []
        for message in self.messages:
            content = message.get("content")
            parts.append(content if isinstance(content, str) else json.dumps(content))
        return "\n".join(parts)


# --- behaviours ------------------------------------------------------------------------

class Behaviour:
    """One scripted answer. ``expand`` lets one entry stand for several queue items."""

    def expand(self) -> list["Behaviour"]:
        return [self]

    def respond(self, h: "_Handler", req: RecordedRequest) -> None:
        raise NotImplementedError


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class Reply(Behaviour):
    """A successful completion. ``usage=None`` computes one; ``usage=False`` omits it.

    ``cost`` adds ``usage.cost`` (OpenRouter style); without it (and without a
    server-wide ``cost``) the usage has no cost. ``cached_tokens`` adds
    ``usage.prompt_tokens_details.cached_tokens``.
    """

    content: str | None = "ok"
    usage: dict | bool | None = None
    cost: float | None = None
    model: str | None = None
    finish_reason: str | None = "stop"
    headers: dict[str, str] | None = None
    cached_tokens: int | None = None

    def body(self, req: RecordedRequest, server: "FakeLLM") -> dict:
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(server._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model or req.model or "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                         "finish_reason": self.finish_reason}],
        }
        if self.usage is not False:
            if isinstance(self.usage, dict):
                usage = dict(self.usage)
            else:
                prompt = _estimate_tokens(req.prompt_text)
                completion = _estimate_tokens(self.content or "")
                usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}
            if self.cached_tokens is not None:
                usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            cost = self.cost if self.cost is not None else server.cost
            if cost is not None:
                usage["cost"] = cost
            body["usage"] = usage
        return body

    def respond(self, h, req):
        h.send_json(200, self.body(req, h.fake), self.headers)


def _error_body(code: int, message: str | None = None, **extra) -> dict:
    if message is None:
        try:
            message = HTTPStatus(code).phrase
        except ValueError:
            message = f"error {code}"
    return {"error": {"code": code, "message": message, **extra}}


@dataclass
class Status(Behaviour):
    """Any status. ``body``: dict/list → JSON, str → text, bytes → as is, None → an OpenAI-style error."""

    code: int
    headers: dict[str, str] | None = None
    body: Any = None

    def respond(self, h, req):
        body = _error_body(self.code) if self.body is None else self.body
        h.send_body(self.code, body, self.headers)


@dataclass
class RateLimit(Behaviour):
    """OpenRouter's upstream / per-minute 429, optionally with Retry-After and X-RateLimit-Reset (ms)."""

    retry_after: str | float | None = None
    reset_ms: int | None = None
    message: str = "Rate limit exceeded: limit_rpm/fake-model. High demand for this model, please retry shortly."

    def respond(self, h, req):
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.reset_ms is not None:
            headers["X-RateLimit-Reset"] = str(self.reset_ms)
        h.send_json(429, _error_body(429, self.message, metadata={"provider_name": "FakeProvider"}), headers)


@dataclass
class DailyQuota(Behaviour):
    """OpenRouter's free-models-per-day 429, reset time (ms since epoch) in header and body metadata."""

    reset_ms: int | None = None
    in_header: bool = True

    def respond(self, h, req):
        reset_ms = self.reset_ms if self.reset_ms is not None else int((time.time() + 3600) * 1000)
        limit_headers = {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": str(reset_ms)}
        body = _error_body(429, "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 "
                                "free model requests per day",
                           metadata={"headers": limit_headers, "provider_name": None})
        body["user_id"] = "user_fake"
        h.send_json(429, body, limit_headers if self.in_header else None)


@dataclass
class Burst5xx(Behaviour):
    """``n`` consecutive ``code`` errors (expands into n queue entries)."""

    n: int = 3
    code: int = 502
    headers: dict[str, str] | None = None

    def expand(self):
        return [Status(self.code, headers=self.headers) for _ in range(self.n)]


@dataclass
class ErrorIn200(Behaviour):
    """HTTP 200 whose JSON carries an ``error`` object (OpenRouter does this when a provider fails)."""

    code: int | str = 502
    message: str = "Provider returned error"

    def respond(self, h, req):
        h.send_json(200, {"id": "gen-fake", "error": {"code": self.code, "message": self.message,
                                                       "metadata": {"provider_name": "FakeProvider"}}})


@dataclass
class ContextLength(Behaviour):
    """llama.cpp llama-server's context overflow: HTTP 400, type exceed_context_size_error."""

    n_prompt: int = 9000
    n_ctx: int = 4096

    def respond(self, h, req):
        h.send_json(400, {"error": {
            "code": 400,
            "message": f"request ({self.n_prompt} tokens) exceeds the available context size "
                       f"({self.n_ctx} tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": self.n_prompt,
            "n_ctx": self.n_ctx,
        }})


@dataclass
class NotFound(Behaviour):
    """OpenRouter's 404 for a model without endpoints."""

    def respond(self, h, req):
        h.send_json(404, _error_body(404, f"No endpoints found for {req.model}."))


@dataclass
class Slow(Behaviour):
    """Wait ``seconds`` (interruptible by shutdown), then answer ``then`` (default ``Reply()``)."""

    seconds: float
    then: Behaviour | None = None

    def respond(self, h, req):
        if h.fake._stop.wait(self.seconds):
            return
        (self.then or Reply()).respond(h, req)


@dataclass
class Hang(Behaviour):
    """Never answer (until the server shuts down)."""

    def respond(self, h, req):
        h.fake._stop.wait()


@dataclass
class Trickle(Behaviour):
    """Send the headers of ``then`` (default ``Reply()``) at once, then its body one byte per ``interval``."""

    interval: float = 0.1
    then: Reply | None = None

    def respond(self, h, req):
        reply = self.then or Reply()
        data = json.dumps(reply.body(req, h.fake)).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.flush()
        for i in range(len(data)):
            if h.fake._stop.wait(self.interval):
                return
            h.wfile.write(data[i:i + 1])
            h.wfile.flush()


@dataclass
class Disconnect(Behaviour):
    """Close the connection without sending anything."""

    def respond(self, h, req):
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


Responder = Behaviour | Callable[[RecordedRequest], Any]


# --- server --------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeLLM/1.0"
    protocol_version = "HTTP/1.0"       # one request per connection: nothing idles at shutdown
    timeout = 10                        # a client that connects and sends nothing
    fake: "FakeLLM"

    def log_message(self, format, *args):   # quiet
        pass

    # -- writing helpers
    def send_body(self, status: int, body: Any, headers: dict[str, str] | None = None):
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = bytes(body), "application/octet-stream"
        self.send_response(status)
        headers = dict(headers or {})
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = ctype
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.send_body(status, body, headers)

    # -- request handling
    def _record(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        req = RecordedRequest(self.command, self.path, dict(self.headers.items()), raw, parsed)
        return req

    def _route(self) -> str | None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/v1/"):
            path = path[3:]
        return path

    def do_POST(self):
        req = self._record()
        path = self._route()
        if path != "/chat/completions":
            self.fake._log(req)
            return self._safely(lambda: self.send_json(404, _error_body(404, f"no route {self.path}")))
        self._safely(lambda: self.fake._serve_chat(self, req))

    def do_GET(self):
        req = self._record()
        path = self._route()
        if path != "/models":
            self.fake._log(req)
            return self._safely(lambda: self.send_json(404, _error_body(404, f"no route {self.path}")))
        self._safely(lambda: self.fake._serve_models(self, req))

    def _safely(self, fn):
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass   # the client gave up (timed out) before we answered


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True               # server_close() joins every handler thread

    def handle_error(self, request, client_address):
        pass


class FakeLLM:
    """The fake endpoint. Use as a context manager (or the ``fake_llm`` fixture)."""

    def __init__(self, *, default: Responder | None = None, max_concurrent: int | None = None,
                 concurrency_retry_after: float = 1, models: list[dict] | None = None,
                 cost: float | None = None):
        self.default: Responder = default if default is not None else Reply()
        self.max_concurrent = max_concurrent
        self.concurrency_retry_after = concurrency_retry_after
        self.models = models if models is not None else [
            {"id": "fake-model", "context_length": 8192,
             "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
        ]
        self.cost = cost
        self._queue: list[Responder] = []
        self._models_queue: list[Responder] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "FakeLLM":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is None:
            return
        self._stop.set()                # releases Hang / Slow / Trickle
        self._httpd.shutdown()
        self._httpd.server_close()      # joins handler threads
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- addresses
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base_url to give the client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting
    def script(self, *behaviours: Responder | Iterable[Responder]) -> "FakeLLM":
        """Append behaviours (or callables) to the chat queue; a list is accepted too."""
        with self._lock:
            self._queue.extend(self._flatten(behaviours))
        return self

    def script_models(self, *behaviours: Responder | Iterable[Responder]) -> "FakeLLM":
        with self._lock:
            self._models_queue.extend(self._flatten(behaviours))
        return self

    @staticmethod
    def _flatten(items) -> list[Responder]:
        out: list[Responder] = []
        for item in items:
            if isinstance(item, (list, tuple)):
                out.extend(FakeLLM._flatten(item))
            elif isinstance(item, Behaviour):
                out.extend(item.expand())
            elif isinstance(item, str):
                out.append(Reply(content=item))
            elif callable(item):
                out.append(item)
            else:
                raise TypeError(f"not a behaviour: {item!r}")
        return out

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- recordings
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and not r.rejected]

    def _log(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    # -- serving
    @staticmethod
    def _resolve(responder: Responder, req: RecordedRequest) -> Behaviour:
        seen = 0
        while not isinstance(responder, Behaviour):
            result = responder(req)
            if isinstance(result, str):
                return Reply(content=result)
            responder = result
            seen += 1
            if seen > 10:
                raise TypeError("responder callables nest too deep")
        return responder

    def _serve_chat(self, h: _Handler, req: RecordedRequest) -> None:
        with self._lock:
            if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
                req.rejected = True
                self._requests.append(req)
                responder: Responder | None = None
            else:
                self._requests.append(req)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                responder = self._queue.pop(0) if self._queue else self.default
        if responder is None:
            h.send_json(429, _error_body(429, "Too many concurrent requests"),
                        {"Retry-After": f"{self.concurrency_retry_after:g}"})
            return
        try:
            behaviour = self._resolve(responder, req)
            if isinstance(behaviour, Burst5xx):       # returned by a callable: answer its first error
                behaviour = behaviour.expand()[0]
            behaviour.respond(h, req)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _serve_models(self, h: _Handler, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)
            responder = self._models_queue.pop(0) if self._models_queue else None
        if responder is None:
            h.send_json(200, {"object": "list", "data": self.models})
            return
        self._resolve(responder, req).respond(h, req)


@pytest.fixture
def fake_llm():
    """A started FakeLLM, closed after the test."""
    with FakeLLM() as server:
        yield server
