"""Serving a cached Responses API response again: under its own id, as JSON or as the full
event stream a live response would have been.

The stream carries, with consecutive `sequence_number`s from 0: `response.created` and
`response.in_progress` (the response in progress, no output yet); per output item, in order,
`response.output_item.added` (the item in progress, without its text), its content as deltas
(message parts: `content_part.added`, `output_text.delta` / `refusal.delta` in a few pieces,
`output_text.done` / `refusal.done`, `content_part.done`; function calls:
`function_call_arguments.delta` and `.done`; reasoning summaries: `reasoning_summary_part.added`,
`reasoning_summary_text.delta` and `.done`, `reasoning_summary_part.done`) and
`response.output_item.done` (the item as stored); last `response.completed` (or
`response.incomplete`) with the stored response. The OpenAI SDK's `responses.stream()` builds its
snapshot from the deltas and its final response from the last event: the stored response.
"""

from __future__ import annotations

from typing import Any

import orjson

PIECE_CHARS = 48  # a replayed text arrives in pieces of this many characters


def pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def replay(response: dict[str, Any]) -> list[bytes]:
    """`response` as the events of a live stream of it."""
    events: list[dict[str, Any]] = []
    started = {
        **response,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
    }
    if "completed_at" in response:
        started["completed_at"] = None
    events.append({"type": "response.created", "response": started})
    events.append({"type": "response.in_progress", "response": started})
    for index, item in enumerate(response.get("output") or []):
        events.extend(_item_events(index, item))
    last = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    events.append({"type": last, "response": response})
    return [
        b"event: "
        + event["type"].encode()
        + b"\ndata: "
        + orjson.dumps({"type": event["type"], "sequence_number": number, **event})
        + b"\n\n"
        for number, event in enumerate(events)
    ]


def _item_events(index: int, item: Any) -> list[dict[str, Any]]:
    if not isinstance(item, dict):
        return []
    kind = item.get("type")
    where = {"item_id": item.get("id"), "output_index": index}
    added = {**item, "status": "in_progress"} if "status" in item else dict(item)
    body: list[dict[str, Any]] = []
    if kind == "message" and isinstance(item.get("content"), list):
        added["content"] = []
        for content_index, part in enumerate(item["content"]):
            body.extend(_part_events(where | {"content_index": content_index}, part))
    elif kind == "function_call" and isinstance(item.get("arguments"), str):
        added["arguments"] = ""
        arguments = item["arguments"]
        for piece in pieces(arguments):
            body.append({"type": "response.function_call_arguments.delta", **where, "delta": piece})
        done = {"type": "response.function_call_arguments.done", **where, "arguments": arguments}
        if "name" in item:
            done["name"] = item["name"]
        body.append(done)
    elif kind == "reasoning" and isinstance(item.get("summary"), list):
        added["summary"] = []
        for summary_index, part in enumerate(item["summary"]):
            body.extend(_summary_events(where | {"summary_index": summary_index}, part))
    return [
        {"type": "response.output_item.added", "output_index": index, "item": added},
        *body,
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]


def _part_events(where: dict[str, Any], part: Any) -> list[dict[str, Any]]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "output_text" and isinstance(part.get("text"), str):
        text = part["text"]
        logprobs = part.get("logprobs") or []
        opened = {**part, "text": "", "annotations": []}
        if "logprobs" in part:
            opened["logprobs"] = []
        deltas = [
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            for piece in pieces(text)
        ]
        done = {"type": "response.output_text.done", **where, "text": text, "logprobs": logprobs}
    elif kind == "refusal" and isinstance(part.get("refusal"), str):
        refusal = part["refusal"]
        opened = {**part, "refusal": ""}
        deltas = [
            {"type": "response.refusal.delta", **where, "delta": piece} for piece in pieces(refusal)
        ]
        done = {"type": "response.refusal.done", **where, "refusal": refusal}
    else:
        return [
            {"type": "response.content_part.added", **where, "part": part},
            {"type": "response.content_part.done", **where, "part": part},
        ]
    return [
        {"type": "response.content_part.added", **where, "part": opened},
        *deltas,
        done,
        {"type": "response.content_part.done", **where, "part": part},
    ]


def _summary_events(where: dict[str, Any], part: Any) -> list[dict[str, Any]]:
    if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
        return []
    text = part["text"]
    return [
        {"type": "response.reasoning_summary_part.added", **where, "part": {**part, "text": ""}},
        *(
            {"type": "response.reasoning_summary_text.delta", **where, "delta": piece}
            for piece in pieces(text)
        ),
        {"type": "response.reasoning_summary_text.done", **where, "text": text},
        {"type": "response.reasoning_summary_part.done", **where, "part": part},
    ]
