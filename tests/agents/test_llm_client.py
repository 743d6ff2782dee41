"""The LLM HTTP client against a real (fake) OpenAI-compatible server, and the retry decisions."""

from __future__ import annotations

import email.utils
import logging
import pickle
import random
import socket
import threading
import time
import traceback

import pytest

from agentrun.agents.llm import protocol
from agentrun.agents.llm.client import complete, list_models, probe
from agentrun.agents.llm.failures import parse_reset, parse_retry_after, redact
from agentrun.agents.llm.protocol import ChatRequest, ChatResponse, ModelInfo
from agentrun.plan.llm_retry import (DEFAULT_COOLDOWN, Drop, Exhausted, Fatal, LLMError, Retry, Rotate, Shrink,
                                     backoff_full_jitter, decide)
from fake_llm import (Burst5xx, ContextLength, DailyQuota, Disconnect, ErrorIn200, FakeLLM, Hang, NotFound,
                      RateLimit, Reply, Slow, Status, Trickle, fake_llm)  # noqa: F401 (fixture)

KEY = "sk-or-v1-0123456789abcdef0123456789abcdef"
MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]


def req(model="vendor/model-a", max_tokens=64, **kw) -> ChatRequest:
    return ChatRequest(model, MSGS, max_tokens, **kw)


def fail(server, *behaviours, key=KEY, **kw) -> LLMError:
    """Script ``behaviours``, make one call, return the LLMError it raised."""
    server.script(*behaviours)
    with pytest.raises(LLMError) as info:
        complete(server.url, key, req(), **kw)
    return info.value


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# --- success ---------------------------------------------------------------------------

def test_reply_is_parsed(fake_llm):
    fake_llm.script(Reply(content="hi there", usage={"prompt_tokens": 12, "completion_tokens": 3,
                                                     "total_tokens": 15}, model="vendor/model-a-0613"))
    resp = complete(fake_llm.url, KEY, req())
    assert isinstance(resp, ChatResponse)
    assert resp.content == "hi there"
    assert (resp.prompt_tokens, resp.completion_tokens) == (12, 3)
    assert resp.cached_tokens is None and resp.cost_usd is None
    assert resp.raw_model == "vendor/model-a-0613"
    assert resp.finish_reason == "stop"
    assert 0 < resp.latency_s < 5


def test_request_body_and_headers(fake_llm):
    complete(fake_llm.url + "/", KEY, req(max_tokens=77, temperature=0.3))
    (sent,) = fake_llm.chat_requests
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {"model": "vendor/model-a", "messages": MSGS, "max_tokens": 77, "temperature": 0.3}
    assert sent.header("authorization") == f"Bearer {KEY}"
    assert sent.header("content-type") == "application/json"


def test_default_temperature_is_zero_and_none_omits_it(fake_llm):
    complete(fake_llm.url, KEY, req())
    complete(fake_llm.url, KEY, req(temperature=None))
    first, second = fake_llm.chat_requests
    assert first.json["temperature"] == 0
    assert "temperature" not in second.json


def test_no_authorization_header_without_key(fake_llm):
    complete(fake_llm.url, None, req())
    complete(fake_llm.url, "", req())
    assert all(r.header("Authorization") is None for r in fake_llm.chat_requests)


def test_usage_include_only_for_openrouter_unless_asked(fake_llm):
    complete(fake_llm.url, KEY, req())
    complete(fake_llm.url, KEY, req(), include_usage=True)
    plain, asked = fake_llm.chat_requests
    assert "usage" not in plain.json
    assert asked.json["usage"] == {"include": True}
    assert protocol._is_openrouter("https://openrouter.ai/api/v1")
    assert not protocol._is_openrouter("https://api.openai.com/v1")
    assert not protocol._is_openrouter("http://127.0.0.1:8080/v1")


def test_cost_and_cached_tokens(fake_llm):
    fake_llm.script(Reply(content="x", usage={"prompt_tokens": 100, "completion_tokens": 5}, cost=0.0012,
                          cached_tokens=64))
    resp = complete(fake_llm.url, KEY, req())
    assert resp.cost_usd == pytest.approx(0.0012)
    assert resp.cached_tokens == 64
    assert resp.prompt_tokens == 100


def test_server_wide_cost_and_missing_usage():
    with FakeLLM(cost=0.5) as server:
        assert complete(server.url, None, req()).cost_usd == 0.5
        server.script(Reply(content="x", usage=False))
        resp = complete(server.url, None, req())
        assert (resp.prompt_tokens, resp.completion_tokens, resp.cost_usd) == (None, None, None)


def test_null_content_and_length_finish(fake_llm):
    fake_llm.script(Reply(content=None, finish_reason="length"))
    resp = complete(fake_llm.url, KEY, req())
    assert resp.content == "" and resp.finish_reason == "length"


def test_llama_cpp_cache_timings_count_as_cached(fake_llm):
    fake_llm.script(Status(200, body={"model": "m", "choices": [{"message": {"content": "a"},
                                                               "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 9, "completion_tokens": 1},
                                      "timings": {"cache_n": 7}}))
    assert complete(fake_llm.url, None, req()).cached_tokens == 7


def test_default_callable_sees_the_prompt():
    def edit_from_prompt(request):
        return f"echo: {request.messages[-1]['content']} ({request.model})"

    with FakeLLM(default=edit_from_prompt) as server:
        assert complete(server.url, None, req()).content == "echo: Say hi. (vendor/model-a)"
        server.script(lambda r: Status(503), "queued string reply")
        with pytest.raises(LLMError):
            complete(server.url, None, req())
        assert complete(server.url, None, req()).content == "queued string reply"
        assert complete(server.url, None, req()).content.startswith("echo:")


# --- transport failures ----------------------------------------------------------------

def test_connection_refused_on_closed_port():
    start = time.monotonic()
    with pytest.raises(LLMError) as info:
        complete(f"http://127.0.0.1:{closed_port()}/v1", KEY, req(), connect_timeout=2, read_timeout=2)
    assert info.value.kind == "connection"
    assert "refused" in info.value.message
    assert info.value.status is None
    assert time.monotonic() - start < 2


def test_hung_server_times_out_quickly(fake_llm):
    start = time.monotonic()
    err = fail(fake_llm, Hang(), connect_timeout=1, read_timeout=0.4)
    elapsed = time.monotonic() - start
    assert err.kind == "timeout"
    assert 0.3 < elapsed < 2.5


def test_slow_server_within_timeout_is_fine_and_beyond_it_times_out(fake_llm):
    fake_llm.script(Slow(0.2, Reply(content="late")))
    assert complete(fake_llm.url, KEY, req(), read_timeout=3).content == "late"
    assert fail(fake_llm, Slow(2), read_timeout=0.3).kind == "timeout"


def test_trickling_body_hits_the_total_deadline(fake_llm):
    # every byte arrives well within the per-read timeout; only the overall deadline stops it
    start = time.monotonic()
    err = fail(fake_llm, Trickle(interval=0.05), connect_timeout=1, read_timeout=1, total_timeout=0.6)
    elapsed = time.monotonic() - start
    assert err.kind == "timeout"
    assert elapsed < 2.0


def test_total_deadline_without_urllib3_shutdown(fake_llm, monkeypatch):
    import urllib3.response

    def missing(self):
        raise AttributeError("shutdown")   # urllib3 < 2.3 has no HTTPResponse.shutdown

    monkeypatch.setattr(urllib3.response.HTTPResponse, "shutdown", missing)
    start = time.monotonic()
    err = fail(fake_llm, Trickle(interval=0.05), connect_timeout=1, read_timeout=1, total_timeout=0.4)
    assert err.kind == "timeout"
    assert time.monotonic() - start < 2.0


def test_total_timeout_defaults_to_connect_plus_read(fake_llm):
    start = time.monotonic()
    err = fail(fake_llm, Trickle(interval=0.05), connect_timeout=0.3, read_timeout=0.4)
    assert err.kind == "timeout"
    assert time.monotonic() - start < 2.0


def test_dropped_connection_is_a_connection_error(fake_llm):
    assert fail(fake_llm, Disconnect()).kind == "connection"


def test_unresolvable_or_invalid_url_is_a_connection_error():
    with pytest.raises(LLMError) as info:
        complete("not-a-url", KEY, req(), connect_timeout=1, read_timeout=1)
    assert info.value.kind == "connection"


# --- HTTP status classification ----------------------------------------------------------

@pytest.mark.parametrize("code", [500, 502, 503, 504, 408])
def test_server_errors(fake_llm, code):
    err = fail(fake_llm, Status(code))
    assert (err.kind, err.status) == ("server", code)
    assert err.model_id == "vendor/model-a"


def test_burst_of_5xx_then_success(fake_llm):
    fake_llm.script(Burst5xx(n=3, code=502), Reply(content="finally"))
    kinds = []
    for _ in range(3):
        with pytest.raises(LLMError) as info:
            complete(fake_llm.url, KEY, req())
        kinds.append(info.value.kind)
    assert kinds == ["server"] * 3
    assert complete(fake_llm.url, KEY, req()).content == "finally"


def test_503_keeps_retry_after(fake_llm):
    assert fail(fake_llm, Status(503, headers={"Retry-After": "7"})).retry_after == 7


def test_rate_limit_retry_after_seconds(fake_llm):
    err = fail(fake_llm, Status(429, headers={"Retry-After": "1"}, body={"error": {"message": "slow down"}}))
    assert (err.kind, err.status, err.retry_after) == ("rate_limit", 429, 1.0)
    assert "slow down" in err.message


def test_rate_limit_retry_after_http_date(fake_llm):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    err = fail(fake_llm, Status(429, headers={"Retry-After": when}))
    assert err.kind == "rate_limit"
    assert 27 <= err.retry_after <= 31


def test_rate_limit_without_retry_after_and_upstream_wording(fake_llm):
    err = fail(fake_llm, Status(429, body={"error": {"code": 429, "message": "Provider returned error",
                                                    "metadata": {"raw": "model-x:free is temporarily "
                                                                 "rate-limited upstream",
                                                                 "provider_name": "Chutes"}}}))
    assert err.kind == "rate_limit" and err.retry_after is None
    assert "rate-limited upstream" in err.message and "Chutes" in err.message


def test_rate_limit_reset_header(fake_llm):
    reset_ms = int((time.time() + 40) * 1000)
    err = fail(fake_llm, RateLimit(reset_ms=reset_ms))
    assert err.kind == "rate_limit"
    assert err.reset_at == pytest.approx(reset_ms / 1000)


def test_concurrency_limit_answers_429_with_retry_after():
    with FakeLLM(max_concurrent=2, default=Slow(0.8)) as server:
        results = []

        def call():
            try:
                results.append(complete(server.url, None, req(), read_timeout=5).content)
            except LLMError as exc:
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 3
        while server.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(LLMError) as info:
            complete(server.url, None, req())
        for t in threads:
            t.join()
        assert (info.value.kind, info.value.retry_after) == ("rate_limit", 1.0)
        assert results == ["ok", "ok"]
        assert server.max_in_flight == 2
        assert [r.rejected for r in server.requests].count(True) == 1
        assert len(server.chat_requests) == 2


def test_daily_quota_reset_in_milliseconds(fake_llm):
    reset_ms = int((time.time() + 7200) * 1000)
    err = fail(fake_llm, DailyQuota(reset_ms=reset_ms))
    assert err.kind == "quota"
    assert err.reset_at == pytest.approx(reset_ms / 1000)
    assert "free-models-per-day" in err.message


def test_daily_quota_reset_from_body_metadata(fake_llm):
    reset_ms = int((time.time() + 600) * 1000)
    err = fail(fake_llm, DailyQuota(reset_ms=reset_ms, in_header=False))
    assert err.kind == "quota" and err.reset_at == pytest.approx(reset_ms / 1000)


def test_daily_quota_reset_in_seconds(fake_llm):
    reset_s = int(time.time() + 900)
    err = fail(fake_llm, Status(429, headers={"X-RateLimit-Reset": str(reset_s)},
                                body={"error": {"message": "daily request limit reached"}}))
    assert err.kind == "quota" and err.reset_at == reset_s


def test_openai_insufficient_quota(fake_llm):
    err = fail(fake_llm, Status(429, body={"error": {"message": "You exceeded your current quota, please "
                                                                "check your plan and billing details.",
                                                     "type": "insufficient_quota", "code": "insufficient_quota"}}))
    assert err.kind == "quota" and err.reset_at is None


def test_context_length_llama_cpp(fake_llm):
    err = fail(fake_llm, ContextLength(n_prompt=9000, n_ctx=4096))
    assert (err.kind, err.status, err.n_prompt_tokens, err.n_ctx) == ("context_length", 400, 9000, 4096)


def test_context_length_openai_wording(fake_llm):
    err = fail(fake_llm, Status(400, body={"error": {
        "message": "This model's maximum context length is 4096 tokens. However, your messages resulted in "
                   "5000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}}))
    assert (err.kind, err.n_ctx, err.n_prompt_tokens) == ("context_length", 4096, 5000)


def test_context_length_vllm_wording(fake_llm):
    err = fail(fake_llm, Status(400, body={"object": "error", "type": "BadRequestError", "code": 400,
                                           "message": "This model's maximum context length is 8192 tokens. "
                                                      "However, you requested 9500 tokens (9000 in the "
                                                      "messages, 500 in the completion)."}))
    assert (err.kind, err.n_ctx, err.n_prompt_tokens) == ("context_length", 8192, 9000)


def test_413_is_context_length(fake_llm):
    err = fail(fake_llm, Status(413, body="Request Entity Too Large"))
    assert err.kind == "context_length" and err.status == 413


@pytest.mark.parametrize("code", [401, 403])
def test_auth(fake_llm, code):
    assert fail(fake_llm, Status(code)).kind == "auth"


def test_403_moderation_is_a_bad_request(fake_llm):
    err = fail(fake_llm, Status(403, body={"error": {"code": 403, "message": "model-x requires moderation; "
                                                                             "your input was flagged"}}))
    assert err.kind == "bad_request"


def test_payment(fake_llm):
    err = fail(fake_llm, Status(402, body={"error": {"code": 402, "message": "Insufficient credits"}}))
    assert err.kind == "payment" and "Insufficient credits" in err.message


def test_not_found(fake_llm):
    err = fail(fake_llm, NotFound())
    assert err.kind == "not_found" and "No endpoints found for vendor/model-a" in err.message


def test_invalid_model_id_400_is_not_found(fake_llm):
    err = fail(fake_llm, Status(400, body={"error": {"code": 400, "message": "foo/bar is not a valid model ID"}}))
    assert err.kind == "not_found"


@pytest.mark.parametrize("code", [400, 409, 422])
def test_other_4xx_are_bad_requests(fake_llm, code):
    err = fail(fake_llm, Status(code, body={"error": {"message": "max_tokens must be positive"}}))
    assert (err.kind, err.status) == ("bad_request", code)


def test_redirect_is_not_followed(fake_llm):
    err = fail(fake_llm, Status(301, headers={"Location": "https://elsewhere.example/v1/chat/completions"}, body=""))
    assert err.kind == "bad_request" and "base_url" in err.message
    assert len(fake_llm.requests) == 1


# --- bad 200 responses ----------------------------------------------------------------

@pytest.mark.parametrize("body", ["<html>gateway</html>", b"\x00\xff", {}, {"choices": []}, {"choices": [1]},
                                  {"choices": [{"finish_reason": "stop"}]}, [1, 2]])
def test_bad_response(fake_llm, body):
    assert fail(fake_llm, Status(200, body=body)).kind == "bad_response"


@pytest.mark.parametrize("code, kind", [(429, "rate_limit"), (502, "server"), (503, "server"), (401, "auth"),
                                        (402, "payment"), (404, "not_found"), (400, "bad_request"),
                                        ("429", "rate_limit"), ("weird", "server")])
def test_error_object_in_200(fake_llm, code, kind):
    err = fail(fake_llm, ErrorIn200(code=code))
    assert err.kind == kind
    assert "200" in err.message


def test_error_object_in_200_context_wording(fake_llm):
    err = fail(fake_llm, ErrorIn200(code="invalid", message="prompt is too long: 210000 tokens > 200000 maximum"))
    assert (err.kind, err.n_prompt_tokens, err.n_ctx) == ("context_length", 210000, 200000)


def test_error_in_choice_and_finish_reason_error(fake_llm):
    err = fail(fake_llm, Status(200, body={"choices": [{"error": {"code": 502, "message": "upstream died"},
                                                         "message": {"content": ""}}]}))
    assert err.kind == "server"
    err = fail(fake_llm, Reply(content="", finish_reason="error"))
    assert err.kind == "server"


# --- the key never leaks ----------------------------------------------------------------

def _assert_no_key(err: LLMError):
    rendered = [str(err), repr(err), err.message, *map(str, err.args),
                "".join(traceback.format_exception(err)), repr(pickle.loads(pickle.dumps(err)))]
    for text in rendered:
        assert KEY not in text
        assert KEY[:20] not in text   # not even a truncated prefix


def _echo_auth(code, *, in_200=False, raw=False):
    def respond(request):
        auth = request.header("Authorization")
        message = f"Invalid API key: {auth} (got {auth.split()[-1]})"
        if raw:
            return Status(code, body=message * 50)       # long text: truncated after redaction
        if in_200:
            return Status(200, body={"error": {"code": code, "message": message}})
        return Status(code, body={"error": {"code": code, "message": message}})
    return respond


@pytest.mark.parametrize("code, in_200, raw, kind", [
    (401, False, False, "auth"), (500, False, True, "server"), (429, True, False, "rate_limit"),
    (200, False, True, "bad_response"), (400, False, False, "bad_request"),
])
def test_key_echoed_by_server_is_redacted(fake_llm, caplog, code, in_200, raw, kind):
    caplog.set_level(logging.DEBUG)
    err = fail(fake_llm, _echo_auth(code, in_200=in_200, raw=raw))
    assert err.kind == kind
    assert "[REDACTED]" in err.message
    _assert_no_key(err)
    assert KEY not in caplog.text


def test_key_echoed_in_redirect_location_is_redacted(fake_llm):
    err = fail(fake_llm, Status(302, headers={"Location": f"http://x.example/?key={KEY}"}, body=""))
    _assert_no_key(err)


def test_redact_handles_bearer_tokens_of_other_keys():
    assert redact("Authorization: Bearer abc.def-123", None) == "Authorization: Bearer [REDACTED]"
    assert redact(f"k={KEY}", KEY) == "k=[REDACTED]"


def test_error_pickles_with_all_fields():
    err = LLMError("context_length", "too big", 400, n_prompt_tokens=10, n_ctx=5, model_id="m")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.kind, copy.status, copy.n_prompt_tokens, copy.n_ctx, copy.model_id) == \
           ("context_length", 400, 10, 5, "m")
    with pytest.raises(ValueError):
        LLMError("nonsense", "x")


# --- header parsing ---------------------------------------------------------------------

def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("5", now) == 5
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now) == pytest.approx(42)
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None
    assert parse_retry_after(None, now) is None


def test_parse_reset():
    now = 1_700_000_000.0
    assert parse_reset("1741305600000", now) == 1741305600.0       # OpenRouter: ms since epoch
    assert parse_reset("1741305600", now) == 1741305600.0          # seconds since epoch
    assert parse_reset("30", now) == now + 30                      # a delay
    assert parse_reset("6m0s", now) == now + 360                   # OpenAI duration
    assert parse_reset("250ms", now) == pytest.approx(now + 0.25)
    assert parse_reset("garbage", now) is None and parse_reset(None, now) is None


# --- list_models / probe ----------------------------------------------------------------

def test_list_models_openrouter_shape():
    models = [{"id": "a/free:free", "context_length": 131072, "pricing": {"prompt": "0", "completion": "0"}},
              {"id": "b/paid", "context_length": 200000, "pricing": {"prompt": "0.000003",
                                                                      "completion": "0.000015"}},
              {"id": "c/router", "pricing": {"prompt": "-1", "completion": "-1"},
               "top_provider": {"context_length": 32000}}]
    with FakeLLM(models=models) as server:
        got = list_models(server.url, KEY, 2)
        assert [m.id for m in got] == ["a/free:free", "b/paid", "c/router"]
        assert got[0] == ModelInfo("a/free:free", 131072, 0.0, 0.0)
        assert (got[1].prompt_price, got[1].completion_price) == (3e-6, 1.5e-5)
        assert (got[2].context_length, got[2].prompt_price) == (32000, None)
        assert server.requests[0].path == "/v1/models"
        assert server.requests[0].header("Authorization") == f"Bearer {KEY}"


def test_list_models_vllm_and_llama_cpp_shapes():
    models = [{"id": "Qwen/Qwen2.5-Coder-7B", "object": "model", "max_model_len": 32768},
              {"id": "model.gguf", "object": "model", "meta": {"n_ctx_train": 131072}}]
    with FakeLLM(models=models) as server:
        got = list_models(server.url, None, 2)
        assert [(m.id, m.context_length) for m in got] == [("Qwen/Qwen2.5-Coder-7B", 32768), ("model.gguf", None)]


def test_list_models_errors(fake_llm):
    fake_llm.script_models(Status(401), Status(200, body="nope"))
    with pytest.raises(LLMError) as info:
        list_models(fake_llm.url, KEY, 2)
    assert info.value.kind == "auth"
    with pytest.raises(LLMError) as info:
        list_models(fake_llm.url, KEY, 2)
    assert info.value.kind == "bad_response"


def test_probe(fake_llm):
    assert probe(fake_llm.url, KEY) is None
    fake_llm.script_models(Status(500), Status(401))
    assert probe(fake_llm.url, KEY) is None          # any HTTP status means it answers
    assert probe(fake_llm.url, KEY) is None
    message = probe(f"http://127.0.0.1:{closed_port()}/v1", KEY, timeout=1)
    assert message and "refused" in message and KEY not in message


def test_probe_hung_server(fake_llm):
    fake_llm.script_models(Hang())
    start = time.monotonic()
    message = probe(fake_llm.url, None, timeout=0.3)
    assert message and "0.3" in message
    assert time.monotonic() - start < 2


# --- the fake server itself ---------------------------------------------------------------

def test_fake_shuts_down_promptly_with_hung_requests():
    server = FakeLLM().start()
    server.script(Hang(), Hang())
    errors = []

    def call():
        try:
            complete(server.url, None, req(), read_timeout=30)
        except LLMError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 3
    while server.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 2
    for t in threads:
        t.join(timeout=5)
    assert [e.kind for e in errors] == ["connection", "connection"]   # closed without an answer


def test_fake_records_unknown_routes(fake_llm):
    import requests
    assert requests.post(fake_llm.url + "/embeddings", json={}, timeout=2).status_code == 404
    assert fake_llm.requests[0].path == "/v1/embeddings"


# --- decide -----------------------------------------------------------------------------

NOW = 1_700_000_000.0


class MaxRng:
    """Always the top of the range, to check the jitter bound exactly."""

    def uniform(self, a, b):
        return b


def err(kind, **kw):
    return LLMError(kind, "boom", **kw)


def test_backoff_full_jitter_bounds():
    rng = random.Random(1)
    for n in range(10):
        for _ in range(50):
            assert 0 <= backoff_full_jitter(n, 1.0, 60.0, rng) <= min(60.0, 2 ** n)
    assert [backoff_full_jitter(n, 0.5, 10.0, MaxRng()) for n in range(6)] == [0.5, 1, 2, 4, 8, 10]


@pytest.mark.parametrize("kind", ["connection", "timeout", "server", "bad_response"])
def test_transient_retries_with_jitter_then_rotates(kind):
    assert decide(err(kind), 1, now=NOW, rng=MaxRng()) == Retry(1.0)
    assert decide(err(kind), 2, now=NOW, rng=MaxRng()) == Retry(2.0)
    assert decide(err(kind), 3, now=NOW, rng=MaxRng()) == Rotate(NOW + DEFAULT_COOLDOWN)
    assert decide(err(kind), 1, max_tries=1, now=NOW) == Rotate(NOW + DEFAULT_COOLDOWN)
    delay = decide(err(kind), 2, now=NOW, rng=random.Random(3)).delay
    assert 0 <= delay <= 2


def test_server_retry_after_is_a_floor():
    assert decide(err("server", retry_after=5.0), 1, now=NOW, rng=MaxRng()) == Retry(5.0)
    assert decide(err("server", retry_after=600.0), 1, now=NOW, rng=MaxRng()) == Retry(1.0)


def test_rate_limit_rules():
    assert decide(err("rate_limit", retry_after=5.0), 1, now=NOW) == Retry(5.0)
    assert decide(err("rate_limit", retry_after=60.0), 2, now=NOW) == Retry(60.0)
    assert decide(err("rate_limit", retry_after=0.0), 1, now=NOW) == Retry(0.0)
    assert decide(err("rate_limit", retry_after=120.0), 1, now=NOW) == Rotate(NOW + 120.0)
    assert decide(err("rate_limit"), 1, now=NOW) == Rotate(NOW + DEFAULT_COOLDOWN)
    assert decide(err("rate_limit", reset_at=NOW + 30), 1, now=NOW) == Rotate(NOW + 30)
    assert decide(err("rate_limit", retry_after=5.0), 3, now=NOW) == Rotate(NOW + 5.0)


def test_quota_is_exhausted_never_retried():
    assert decide(err("quota", reset_at=NOW + 3600), 1, now=NOW) == Exhausted(NOW + 3600)
    assert decide(err("quota", retry_after=1.0), 1, now=NOW) == Exhausted(None)
    assert decide(err("quota", reset_at=NOW - 5), 1, now=NOW) == Exhausted(NOW + DEFAULT_COOLDOWN)


def test_not_found_drops_and_context_shrinks():
    assert decide(err("not_found"), 1, now=NOW) == Drop()
    assert decide(err("context_length", n_prompt_tokens=9000, n_ctx=4096), 1, now=NOW) == Shrink(9000, 4096)
    assert decide(err("context_length"), 1, now=NOW) == Shrink(None, None)


def test_fatal_errors_name_the_fix():
    auth = decide(LLMError("auth", "Invalid API key", 401, model_id="m"), 1, now=NOW)
    assert isinstance(auth, Fatal) and "OPENROUTER_API_KEY" in auth.message and "model m" in auth.message
    custom = decide(err("auth"), 1, now=NOW, key_env="LLAMA_KEY")
    assert "LLAMA_KEY" in custom.message
    assert "credits" in decide(err("payment"), 1, now=NOW).message
    assert isinstance(decide(err("bad_request"), 1, now=NOW), Fatal)


def test_decide_is_deterministic_given_the_rng():
    a = decide(err("server"), 2, now=NOW, rng=random.Random(7))
    b = decide(err("server"), 2, now=NOW, rng=random.Random(7))
    assert a == b


def test_a_retry_loop_over_the_real_client(fake_llm):
    """decide + complete together: 5xx burst, a short Retry-After, a quota, then a fallback answers."""
    fake_llm.script(Burst5xx(n=2, code=503), Status(429, headers={"Retry-After": "0"}), DailyQuota(),
                    Reply(content="from fallback"))
    models = ["vendor/main", "vendor/fallback"]
    tries, slept, exhausted = 0, [], []
    while True:
        try:
            resp = complete(fake_llm.url, KEY, ChatRequest(models[0], MSGS, 32))
            break
        except LLMError as exc:
            tries += 1
            action = decide(exc, tries, max_tries=5, now=time.time(), backoff_base=0.01)
            if isinstance(action, Retry):
                slept.append(action.delay)
                time.sleep(action.delay)
            elif isinstance(action, Exhausted):
                exhausted.append(models.pop(0))
                tries = 0
            else:
                pytest.fail(f"unexpected {action}")
    assert resp.content == "from fallback"
    assert exhausted == ["vendor/main"] and len(slept) == 3
    assert [r.model for r in fake_llm.chat_requests] == ["vendor/main"] * 4 + ["vendor/fallback"]
