"""The chat-completions wire format, as OpenAI-compatible servers speak it.

The request and reply types (:class:`ChatRequest`, :class:`ChatResponse`,
:class:`ModelInfo`), the JSON body of a call (:func:`chat_body`), and reading
a decoded reply: the completion with its usage and cost
(:func:`parse_chat_reply`) and the ``/models`` listing (:func:`parse_models`).
Pure: no I/O. A reply that is malformed, or that carries an ``error`` object
despite its 2xx status, raises :class:`LLMError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from agentrun.agents.llm.failures import as_int, classify_body_error, snippet
from agentrun.plan.llm_retry import BAD_RESPONSE, SERVER, LLMError


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


# --- reading JSON values -------------------------------------------------------------

def _as_float(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):   # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return str(content)


# --- chat completions ----------------------------------------------------------------

def _is_openrouter(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "openrouter.ai" or host.endswith(".openrouter.ai")


def chat_body(base_url: str, req: ChatRequest, include_usage: bool | None) -> dict[str, Any]:
    """The JSON body POSTed to ``/chat/completions``; ``include_usage`` as in :func:`client.complete`."""
    body: dict[str, Any] = {"model": req.model_id, "messages": req.messages, "max_tokens": req.max_tokens}
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if include_usage is None:
        include_usage = _is_openrouter(base_url)
    if include_usage:
        body["usage"] = {"include": True}
    return body


def parse_chat_reply(data: Any, text: str, status: int, headers: Mapping[str, Any], latency_s: float,
                     api_key: str | None, model: str) -> ChatResponse:
    """The completion in a 2xx reply (``data`` decoded from ``text``, None if not JSON)."""
    if not isinstance(data, dict):
        raise LLMError(BAD_RESPONSE, f"response is not a JSON object: {snippet(text, api_key)!r}",
                       status=status, model_id=model)
    if data.get("error"):
        err_obj = data["error"]
        if not isinstance(err_obj, dict):
            err_obj = {"message": str(err_obj)}
        raise classify_body_error(err_obj, headers, api_key, model)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(BAD_RESPONSE, f"response has no choices: {snippet(text, api_key)!r}",
                       status=status, model_id=model)
    choice = choices[0]
    if isinstance(choice.get("error"), dict):
        raise classify_body_error(choice["error"], headers, api_key, model)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise LLMError(BAD_RESPONSE, f"first choice has no message: {snippet(text, api_key)!r}",
                       status=status, model_id=model)
    finish = choice.get("finish_reason")
    if finish == "error":
        raise LLMError(SERVER, "provider failed during generation (finish_reason=error)",
                       status=status, model_id=model)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is None:
        timings = data.get("timings")            # llama.cpp: prompt tokens reused from its cache
        if isinstance(timings, dict):
            cached = as_int(timings.get("cache_n"))
    return ChatResponse(
        content=_content_text(message.get("content")),
        prompt_tokens=as_int(usage.get("prompt_tokens")),
        completion_tokens=as_int(usage.get("completion_tokens")),
        cached_tokens=cached,
        cost_usd=_as_float(usage.get("cost")),
        latency_s=latency_s,
        raw_model=data.get("model") if isinstance(data.get("model"), str) else None,
        finish_reason=finish if isinstance(finish, str) else None,
    )


# --- model listing -------------------------------------------------------------------

def _price(pricing: Any, key: str) -> float | None:
    if not isinstance(pricing, dict):
        return None
    price = _as_float(pricing.get(key))
    return None if price is None or price < 0 else price   # OpenRouter uses "-1" for "varies"


def parse_models(data: Any, text: str, status: int, headers: Mapping[str, Any],
                 api_key: str | None) -> list[ModelInfo]:
    """The entries of a 200 ``/models`` reply (OpenRouter, OpenAI, vLLM, llama.cpp, Ollama shapes)."""
    if isinstance(data, dict) and data.get("error"):
        err_obj = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
        raise classify_body_error(err_obj, headers, api_key, None)
    entries = data.get("data") if isinstance(data, dict) else data
    if isinstance(data, dict) and entries is None:
        entries = data.get("models")              # Ollama's native shape
    if not isinstance(entries, list):
        raise LLMError(BAD_RESPONSE, f"/models did not return a list: {snippet(text, api_key)!r}",
                       status=status)
    models = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        model_id = entry.get("id") or entry.get("name") or entry.get("model")
        if not isinstance(model_id, str):
            continue
        top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
        context = (as_int(entry.get("context_length")) or as_int(entry.get("max_model_len"))
                   or as_int(top.get("context_length")) or as_int(entry.get("max_context_length")))
        pricing = entry.get("pricing")
        models.append(ModelInfo(id=model_id, context_length=context, prompt_price=_price(pricing, "prompt"),
                                completion_price=_price(pricing, "completion"), raw=entry))
    return models
