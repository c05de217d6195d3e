"""Relaying the Responses API event stream.

Each event is two lines, `event: <type>` and `data: {json}`; there is no `data: [DONE]`: the
stream ends with `response.completed` (or `response.incomplete`, `response.failed`, `error`).
Every event is forwarded untouched. The relay reads only the event's type (its `event:` line, or
the data's `type` for a provider that sends data lines alone); it parses the JSON of the terminal
event only: its `response` carries the usage the budget settles on and, when the stream may be
cached, is the whole response exactly as a JSON request would have returned it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import ApiError
from app.streaming import MAX_ASSEMBLED_CHARS

TERMINAL_TYPES = frozenset(
    {b"response.completed", b"response.incomplete", b"response.failed", b"error"}
)
# Terminal events whose response is a finished answer (`incomplete`: the output cap was reached).
CACHEABLE_TYPES = frozenset({b"response.completed", b"response.incomplete"})
DONE = b"data: [DONE]"  # not part of the protocol; a provider that sends it anyway ends there


def event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (several `data:` lines join with newlines, as SSE says)."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def event_json(event: bytes) -> Any:
    data = event_data(event)
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def event_type(event: bytes) -> bytes | None:
    """The type of one event: its `event:` line, else its data's `type`."""
    if event.startswith(b"event:"):
        end = event.find(b"\n")
        return (event[6:end] if end >= 0 else event[6:]).strip()
    payload = event_json(event)
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind.encode() if isinstance(kind, str) else None


def ends_stream(event: bytes) -> bool:
    """Whether `event` is the last of a Responses stream (for the upstream stream reader)."""
    return event == DONE or event_type(event) in TERMINAL_TYPES


@dataclass(slots=True)
class ResponsesRelay:
    """Per-stream state: the usage, the finished response for the cache, the output deltas seen
    (what a stream cut before its usage is billed for) and the last event (for the sequence
    number of an error event the gateway adds)."""

    keep_for_cache: bool
    usage: dict[str, Any] | None = None
    chunks: int = 0
    upstream_error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    last: bytes = b""
    # Given the response of `response.created` (its id: a stored response's owner is recorded).
    on_created: Callable[[Any], None] | None = None

    def process(self, event: bytes) -> bytes:
        self.last = event
        kind = event_type(event)
        if kind is not None:
            if kind.endswith(b".delta"):
                self.chunks += 1
            elif kind in TERMINAL_TYPES:
                self._finish(kind, event)
            elif kind == b"response.created" and self.on_created is not None:
                payload = event_json(event)
                self.on_created(payload.get("response") if isinstance(payload, dict) else None)
        return event + b"\n\n"

    def _finish(self, kind: bytes, event: bytes) -> None:
        payload = event_json(event)
        payload = payload if isinstance(payload, dict) else {}
        response = payload.get("response")
        if isinstance(response, dict) and isinstance(response.get("usage"), dict):
            self.usage = response["usage"]
        if kind not in CACHEABLE_TYPES:
            error = response.get("error") if isinstance(response, dict) else None
            self.upstream_error = error if isinstance(error, dict) else payload
            self.keep_for_cache = False
            return
        if self.keep_for_cache and isinstance(response, dict) and len(event) <= MAX_ASSEMBLED_CHARS:
            self.response = response

    def assembled(self) -> dict[str, Any] | None:
        """The finished response the stream delivered, when it may be cached."""
        return self.response if self.keep_for_cache else None

    def next_sequence_number(self) -> int:
        payload = event_json(self.last) if self.last else None
        number = payload.get("sequence_number") if isinstance(payload, dict) else None
        return number + 1 if isinstance(number, int) else 0


def error_event(error: ApiError, relay: ResponsesRelay) -> bytes:
    """The `error` event that ends a stream the provider broke off. Its fields are those of the
    protocol's error event (`code`, `message`, `param`, `sequence_number`); the nested `error`
    object is what the OpenAI SDKs raise an APIError on."""
    detail = error.payload()["error"]
    payload = {
        "type": "error",
        "code": detail["code"],
        "message": detail["message"],
        "param": detail["param"],
        "sequence_number": relay.next_sequence_number(),
        "error": detail,
    }
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
