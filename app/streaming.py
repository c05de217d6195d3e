"""Server-sent events: relaying the provider's stream, and replaying a cached answer as one.

The relay forwards each provider event the moment it arrives (no buffering beyond one event). It
looks into each event only to (a) take the usage chunk the gateway always asks for, and drop it
when the client did not ask for usage, and (b) assemble the answer so a finished, deterministic
stream can be cached. A stream that breaks ends with an SSE error event, never a made-up
``finish_reason``, and is not cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.errors import ApiError

DONE = b"data: [DONE]\n\n"
# Answers longer than this are relayed but not kept for the cache (bounded memory per stream).
MAX_ASSEMBLED_CHARS = 256 * 1024


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: ApiError) -> bytes:
    """The in-band error the OpenAI SDKs raise as APIError when they read it."""
    return sse(error.payload())


@dataclass(slots=True)
class StreamRelay:
    """Per-stream state: what to forward, the usage seen, and the answer assembled so far."""

    kind: str  # "chat" | "completions"
    client_wants_usage: bool
    keep_for_cache: bool
    usage: dict[str, Any] | None = None
    done: bool = False
    chunks: int = 0
    upstream_error: dict[str, Any] | None = None
    _meta: dict[str, Any] = field(default_factory=dict)
    _texts: dict[int, list[str]] = field(default_factory=dict)
    _finish: dict[int, str | None] = field(default_factory=dict)
    _size: int = 0

    def process(self, event: bytes) -> bytes | None:
        """One provider event (``data: ...``) -> the bytes to send to the client, or None."""
        if event == b"data: [DONE]":
            self.done = True
            return DONE
        if not event.startswith(b"data:"):
            return None  # "event:"/"id:" lines alone carry nothing for OpenAI's protocol
        try:
            chunk = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            self.keep_for_cache = False
            return event + b"\n\n"
        if not isinstance(chunk, dict):
            return event + b"\n\n"
        if "error" in chunk:
            self.upstream_error = chunk
            self.keep_for_cache = False
            return event + b"\n\n"
        choices = chunk.get("choices")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
            if not choices and not self.client_wants_usage:
                return None
        self.chunks += 1
        if self.keep_for_cache and choices:
            self._assemble(chunk, choices)
        return event + b"\n\n"

    def _assemble(self, chunk: dict[str, Any], choices: list[Any]) -> None:
        if not self._meta:
            self._meta = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        for choice in choices:
            index = choice.get("index", 0)
            if self.kind == "chat":
                delta = choice.get("delta") or {}
                if any(delta.get(k) for k in ("tool_calls", "function_call", "refusal", "audio")):
                    self.keep_for_cache = False  # only plain text answers are replayed
                    return
                piece = delta.get("content") or ""
            else:
                piece = choice.get("text") or ""
            if choice.get("logprobs"):
                self.keep_for_cache = False
                return
            self._size += len(piece)
            if self._size > MAX_ASSEMBLED_CHARS:
                self.keep_for_cache = False
                self._texts.clear()
                return
            self._texts.setdefault(index, []).append(piece)
            if choice.get("finish_reason") is not None:
                self._finish[index] = choice["finish_reason"]

    def assembled(self) -> dict[str, Any] | None:
        """The complete non-streaming response equivalent to what was streamed, when cacheable."""
        if not (self.keep_for_cache and self.done and self.usage and self._texts):
            return None
        indexes = sorted(self._texts)
        if any(i not in self._finish for i in indexes):
            return None
        meta = self._meta
        if self.kind == "chat":
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(self._texts[i])},
                    "logprobs": None,
                    "finish_reason": self._finish[i],
                }
                for i in indexes
            ]
            obj = "chat.completion"
        else:
            choices = [
                {
                    "index": i,
                    "text": "".join(self._texts[i]),
                    "logprobs": None,
                    "finish_reason": self._finish[i],
                }
                for i in indexes
            ]
            obj = "text_completion"
        return {
            "id": meta.get("id"),
            "object": obj,
            "created": meta.get("created"),
            "model": meta.get("model"),
            "system_fingerprint": meta.get("system_fingerprint"),
            "choices": choices,
            "usage": self.usage,
        }


def replay(response: dict[str, Any], kind: str, include_usage: bool) -> list[bytes]:
    """A cached (non-streaming) response as the SSE events a live stream would have produced."""
    base = {
        "id": response.get("id"),
        "created": response.get("created"),
        "model": response.get("model"),
        "system_fingerprint": response.get("system_fingerprint"),
    }
    events: list[bytes] = []
    if kind == "chat":
        base["object"] = "chat.completion.chunk"
        for choice in response.get("choices", []):
            index = choice.get("index", 0)
            message = choice.get("message") or {}
            for delta, finish in (
                ({"role": message.get("role", "assistant"), "content": ""}, None),
                ({"content": message.get("content") or ""}, None),
                ({}, choice.get("finish_reason")),
            ):
                events.append(
                    sse(
                        base
                        | {
                            "choices": [
                                {
                                    "index": index,
                                    "delta": delta,
                                    "logprobs": None,
                                    "finish_reason": finish,
                                }
                            ]
                        }
                    )
                )
    else:
        base["object"] = "text_completion"
        for choice in response.get("choices", []):
            index = choice.get("index", 0)
            for text, finish in (
                (choice.get("text") or "", None),
                ("", choice.get("finish_reason")),
            ):
                events.append(
                    sse(
                        base
                        | {
                            "choices": [
                                {
                                    "index": index,
                                    "text": text,
                                    "logprobs": None,
                                    "finish_reason": finish,
                                }
                            ]
                        }
                    )
                )
    if include_usage:
        events.append(sse(base | {"choices": [], "usage": response.get("usage")}))
    events.append(DONE)
    return events
