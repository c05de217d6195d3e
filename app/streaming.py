"""Server-sent events: relaying the provider's stream (a cached answer's replay: app/replay.py).

The relay forwards each provider event the moment it arrives (no buffering beyond one event). It
looks into each event only to (a) take the usage chunk the gateway always asks for, and drop it
when the client did not ask for usage, and (b) assemble the answer so a finished, deterministic
stream can be cached: as the OpenAI SDK accumulates it (strings joined, tool calls by index,
logprobs appended), so that its replay (app/replay.py) rebuilds the same answer. A stream
that breaks ends with an SSE error event, never a made-up ``finish_reason``, and is not cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.errors import ApiError

DONE = b"data: [DONE]\n\n"
# Streams longer than this (event bytes) are relayed but not kept for the cache (bounded memory).
MAX_ASSEMBLED_CHARS = 256 * 1024


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: ApiError) -> bytes:
    """The in-band error the OpenAI SDKs raise as APIError when they read it."""
    return sse(error.payload())


_OUTPUT_FIELDS = ("content", "refusal", "tool_calls", "function_call")


def _generated(choice: Any) -> bool:
    """Whether a stream chunk's choice carries generated output (not only a role or a reason)."""
    if not isinstance(choice, dict):
        return False
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(delta.get(name) for name in _OUTPUT_FIELDS)


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
    _choices: dict[int, _Choice] = field(default_factory=dict)
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
        if choices and any(_generated(choice) for choice in choices):
            self.chunks += 1  # what a cut stream is billed for: chunks that carried output
        if self.keep_for_cache and choices:
            self._assemble(chunk, choices, len(event))
        return event + b"\n\n"

    def _assemble(self, chunk: dict[str, Any], choices: list[Any], size: int) -> None:
        if not self._meta:
            self._meta = {k: v for k, v in chunk.items() if k not in _PER_CHUNK_FIELDS}
        self._size += size
        if self._size > MAX_ASSEMBLED_CHARS:
            self.keep_for_cache = False
            self._choices.clear()
            return
        for choice in choices:
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                extras = {k: v for k, v in choice.items() if k not in _CHUNK_CHOICE_FIELDS}
                state = self._choices[index] = _Choice(extras)
            if self.kind == "chat":
                ok = state.add_delta(choice.get("delta") or {}) and state.add_logprobs(
                    choice.get("logprobs")
                )
            else:
                text = choice.get("text")
                ok = choice.get("logprobs") is None and (text is None or isinstance(text, str))
                if ok and text:
                    state.pieces.append(text)
                state.has_content = True
            if not ok:
                self.keep_for_cache = False  # a shape the SDKs would not rebuild the same way
                return
            if choice.get("finish_reason") is not None:
                state.finish_reason = choice["finish_reason"]

    def assembled(self) -> dict[str, Any] | None:
        """The complete non-streaming response equivalent to what was streamed, when cacheable:
        what the SDKs' stream accumulation builds from it (their rules: strings joined, tool
        calls by index, logprobs appended), so its replay rebuilds the same answer."""
        if not (self.keep_for_cache and self.done and self.usage and self._choices):
            return None
        states = [self._choices[i] for i in sorted(self._choices)]
        if any(state.finish_reason is None for state in states):
            return None
        if self.kind == "chat":
            choices = [
                {
                    "index": i,
                    "message": state.message(),
                    "logprobs": state.logprobs,
                    "finish_reason": state.finish_reason,
                    **state.extras,
                }
                for i, state in zip(sorted(self._choices), states, strict=True)
            ]
            obj = "chat.completion"
        else:
            choices = [
                {
                    "index": i,
                    "text": "".join(state.pieces),
                    "logprobs": None,
                    "finish_reason": state.finish_reason,
                    **state.extras,
                }
                for i, state in zip(sorted(self._choices), states, strict=True)
            ]
            obj = "text_completion"
        return {
            "id": self._meta.get("id"),
            "object": obj,
            **self._meta,
            "choices": choices,
            "usage": self.usage,
        }


# Top-level chunk fields that are not the answer's (`obfuscation` pads each chunk differently).
_PER_CHUNK_FIELDS = frozenset({"choices", "usage", "object", "obfuscation"})
_CHUNK_CHOICE_FIELDS = frozenset({"index", "delta", "text", "logprobs", "finish_reason"})


@dataclass(slots=True)
class _Choice:
    """One choice of a streamed answer, accumulated as the OpenAI SDK accumulates deltas."""

    extras: dict[str, Any]
    pieces: list[str] = field(default_factory=list)  # the content, joined once at the end
    has_content: bool = False  # a `content` key was seen
    has_text: bool = False  # ... and a string in it (else the content is None)
    fields: dict[str, Any] = field(default_factory=dict)  # every other message field
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None

    def add_delta(self, delta: dict[str, Any]) -> bool:
        content = delta.get("content")
        if "content" in delta:
            if content is not None and not isinstance(content, str):
                return False
            self.has_content = True
            if content is not None:
                self.has_text = True
                self.pieces.append(content)
            if len(delta) == 1:
                return True  # nearly every chunk
        return _merge(self.fields, {k: v for k, v in delta.items() if k != "content"})

    def add_logprobs(self, logprobs: Any) -> bool:
        if logprobs is None:
            return True
        if not isinstance(logprobs, dict) or set(logprobs) - {"content", "refusal"}:
            return False
        if self.logprobs is None:
            self.logprobs = {"content": logprobs.get("content"), "refusal": logprobs.get("refusal")}
            return True
        for name in ("content", "refusal"):
            more = logprobs.get(name)
            if more:
                if not isinstance(more, list):
                    return False
                self.logprobs[name] = [*(self.logprobs[name] or []), *more]
        return True

    def message(self) -> dict[str, Any]:
        message = {"role": "assistant", **self.fields}
        if self.has_content:
            message["content"] = "".join(self.pieces) if self.has_text else None
        for call in message.get("tool_calls") or []:
            call.pop("index", None)  # a stream position; a JSON answer's tool calls have none
        return message


def _merge(into: dict[str, Any], delta: dict[str, Any]) -> bool:
    """Accumulate `delta` into `into` as the OpenAI SDK does; False for a shape it would not
    rebuild the same way from a replay (then the answer is not cached)."""
    for name, value in delta.items():
        current = into.get(name)
        if current is None and isinstance(value, list):
            # A list's entries are addressed by `index` from then on: each must carry its own.
            if not all(_indexed(entry, i) for i, entry in enumerate(value)):
                return False
            into[name] = value
        elif current is None or name in ("index", "type", "role"):
            into[name] = value
        elif isinstance(current, str) and isinstance(value, str):
            into[name] = current + value
        elif isinstance(current, dict) and isinstance(value, dict):
            if not _merge(current, value):
                return False
        elif isinstance(current, list) and isinstance(value, list):
            for entry in value:
                position = entry.get("index") if isinstance(entry, dict) else None
                if not isinstance(position, int):
                    return False
                if position == len(current):
                    current.append(entry)
                elif position < len(current) and isinstance(current[position], dict):
                    if not _merge(current[position], entry):
                        return False
                else:
                    return False
        else:
            return False
    return True


def _indexed(entry: Any, position: int) -> bool:
    return isinstance(entry, dict) and entry.get("index") == position
