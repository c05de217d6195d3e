"""Serving a cached answer: its own response id, and its replay as the stream a provider sends.

A replayed stream carries everything the JSON answer carried, in the provider's chunk shapes, so
that an SDK accumulating it (the OpenAI SDK's ``chat.completions.stream()`` and
``get_final_completion()``, langchain's ``.stream()``) rebuilds the JSON answer: per choice, in
index order, a first chunk with the role and every non-incremental message field (``annotations``,
``audio``, unknown ones) and the choice's own extra fields, then the content, the refusal, the
legacy ``function_call`` (name, then arguments) and each tool call as ``delta.tool_calls[]``
(``index``, ``id``, ``type``, ``function.name`` with empty arguments, then the arguments), the
choice's logprobs on its first content (or refusal) chunk, and a last chunk with the finish reason.
Top-level fields (``created``, ``model``, ``system_fingerprint``, ``service_tier``, ...) are on
every chunk, the usage on a final ``choices: []`` chunk when the client asked for it.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

import orjson

from app.streaming import DONE, sse

ORIGIN_ID_HEADER = "x-liftoff-cache-origin-id"
# Ids made here: a random per-process part and a sequence number (unique across replicas).
_PROCESS_PART = os.urandom(6).hex()
_SEQUENCE = itertools.count()
# Per endpoint kind: the provider's id prefix and how many hex digits follow the process part.
_ID_SHAPE = {"chat": ("chatcmpl-", 12), "completions": ("cmpl-", 12), "responses": ("resp_", 36)}
# An origin id is echoed in a header only when it is a plain token (never a header injection).
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CHAT_CHOICE_OWN = frozenset({"index", "message", "logprobs", "finish_reason"})
_TEXT_CHOICE_OWN = frozenset({"index", "text", "logprobs", "finish_reason"})


def fresh_id(kind: str) -> str:
    """A new response id for a cache hit, shaped like the provider's."""
    prefix, digits = _ID_SHAPE[kind]
    return f"{prefix}{_PROCESS_PART}{next(_SEQUENCE):0{digits}x}"


def as_hit(cached: bytes, kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The cached answer under a fresh id, and the header naming the stored answer's id."""
    response = orjson.loads(cached)
    origin = response.get("id")
    response["id"] = fresh_id(kind)
    if isinstance(origin, str) and _SAFE_ID.fullmatch(origin):
        return response, {ORIGIN_ID_HEADER: origin}
    return response, {}


def replay(response: dict[str, Any], kind: str, include_usage: bool) -> list[bytes]:
    """A (non-streaming) answer as the SSE events a live stream of it would have been."""
    base = {
        "id": response.get("id"),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        **{k: v for k, v in response.items() if k not in ("id", "object", "choices", "usage")},
    }
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    pieces = _chat_choice_chunks if kind == "chat" else _text_choice_chunks
    events = [sse(base | {"choices": [chunk]}) for choice in choices for chunk in pieces(choice)]
    if include_usage:
        events.append(sse(base | {"choices": [], "usage": response.get("usage")}))
    events.append(DONE)
    return events


def _chat_choice_chunks(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    message = choice.get("message") or {}
    first: dict[str, Any] = {"role": message.get("role", "assistant")}
    for name, value in message.items():
        if name in ("content", "refusal") and isinstance(value, str):
            first[name] = ""  # the text follows in its own chunk
        elif name not in ("function_call", "tool_calls") or not value:
            first[name] = value
    deltas: list[dict[str, Any]] = []
    for name in ("content", "refusal"):
        text = message.get(name)
        if isinstance(text, str) and text:
            deltas.append({name: text})
    function_call = message.get("function_call")
    if function_call:
        arguments = function_call.get("arguments")
        deltas.append({"function_call": {**function_call, "arguments": ""}})
        if arguments:
            deltas.append({"function_call": {"arguments": arguments}})
    tool_calls = message.get("tool_calls")
    if tool_calls:
        for position, call in enumerate(tool_calls):
            deltas.extend({"tool_calls": [entry]} for entry in _tool_call_deltas(position, call))

    logprobs = choice.get("logprobs")
    extras = {k: v for k, v in choice.items() if k not in _CHAT_CHOICE_OWN}
    chunks = [{"index": index, "delta": first, "logprobs": None, "finish_reason": None, **extras}]
    for delta in deltas:
        chunks.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
    last = {
        "index": index,
        "delta": {},
        "logprobs": None,
        "finish_reason": choice.get("finish_reason"),
    }
    chunks.append(last)
    if logprobs is not None:
        # On the first content or refusal chunk (where the provider sends them), else the last.
        carrier = 1 if deltas and _is_text(deltas[0]) else len(chunks) - 1
        chunks[carrier]["logprobs"] = logprobs
    return chunks


def _is_text(delta: dict[str, Any]) -> bool:
    return "content" in delta or "refusal" in delta


def _tool_call_deltas(position: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        return [{"index": position, **call}]
    arguments = function.get("arguments")
    header = {"index": position, **call, "function": {**function, "arguments": ""}}
    if not arguments:
        return [header]
    return [header, {"index": position, "function": {"arguments": arguments}}]


def _text_choice_chunks(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    extras = {k: v for k, v in choice.items() if k not in _TEXT_CHOICE_OWN}
    return [
        {
            "index": index,
            "text": choice.get("text") or "",
            "logprobs": choice.get("logprobs"),
            "finish_reason": None,
            **extras,
        },
        {
            "index": index,
            "text": "",
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
        },
    ]
