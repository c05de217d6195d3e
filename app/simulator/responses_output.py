"""The Responses API's output: the response object (the request's settings echoed with OpenAI's
defaults), its output items, its usage, and its event stream."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson

from app.simulator.model import is_reasoning
from app.simulator.wire import object_id


def response_object(
    response_id: str,
    created: int,
    payload: dict[str, Any],
    model: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any],
    incomplete: bool,
    store: bool,
    background: bool,
) -> dict[str, Any]:
    """The response object, echoing the request's settings with OpenAI's defaults."""
    reasoning = payload.get("reasoning") if isinstance(payload.get("reasoning"), dict) else {}
    text_config = payload.get("text") if isinstance(payload.get("text"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "background": background,
        "completed_at": int(time.time()),
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "max_tool_calls": payload.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "previous_response_id": payload.get("previous_response_id"),
        "prompt_cache_key": payload.get("prompt_cache_key"),
        "reasoning": {
            "effort": reasoning.get("effort", "medium" if is_reasoning(model) else None),
            "summary": reasoning.get("summary"),
        },
        "safety_identifier": payload.get("safety_identifier"),
        "service_tier": "default",
        "store": store,
        "temperature": payload.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium", **text_config},
        "tool_choice": payload.get("tool_choice", "auto"),
        "tools": [tool_echo(t) for t in payload.get("tools") or []],
        "top_logprobs": payload.get("top_logprobs", 0),
        "top_p": payload.get("top_p", 1.0),
        "truncation": payload.get("truncation", "disabled"),
        "usage": usage,
        "user": payload.get("user"),
        "metadata": payload.get("metadata") or {},
    }


def stream_frames(
    started: dict[str, Any], final: dict[str, Any], streamed: dict[str, list[str]]
) -> list[bytes]:
    """The event stream, one frame per delta: the opening events come with the first frame, the
    closing ones and `response.completed` (or `.incomplete`) with the last."""
    steps: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(final["output"]):
        at = {"item_id": item["id"], "output_index": index}
        kind = item["type"]
        if kind == "message":
            opened = {**item, "status": "in_progress", "content": []}
            part = item["content"][0]
            current += [
                {"type": "response.output_item.added", "output_index": index, "item": opened},
                {
                    "type": "response.content_part.added",
                    **at,
                    "content_index": 0,
                    "part": {**part, "text": ""},
                },
            ]
            for piece in streamed.get(item["id"], []):
                steps.append(current)
                current = [
                    {
                        "type": "response.output_text.delta",
                        **at,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    }
                ]
            current += [
                {
                    "type": "response.output_text.done",
                    **at,
                    "content_index": 0,
                    "text": part["text"],
                    "logprobs": [],
                },
                {"type": "response.content_part.done", **at, "content_index": 0, "part": part},
            ]
        elif kind == "function_call":
            opened = {**item, "status": "in_progress", "arguments": ""}
            current.append(
                {"type": "response.output_item.added", "output_index": index, "item": opened}
            )
            for piece in streamed.get(item["id"], []):
                steps.append(current)
                current = [{"type": "response.function_call_arguments.delta", **at, "delta": piece}]
            current.append(
                {
                    "type": "response.function_call_arguments.done",
                    **at,
                    "arguments": item["arguments"],
                    "name": item["name"],
                }
            )
        else:
            current.append(
                {"type": "response.output_item.added", "output_index": index, "item": item}
            )
        current.append({"type": "response.output_item.done", "output_index": index, "item": item})
    ending = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    current.append({"type": ending, "response": final})
    steps.append(current)
    frames = []
    number = 0
    for step in steps:
        frame = b""
        for event in step:
            event["sequence_number"] = number
            number += 1
            frame += (
                b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            )
        frames.append(frame)
    return frames


def message_item(content: str, status: str) -> dict[str, Any]:
    return {
        "id": object_id("msg_", 24),
        "type": "message",
        "status": status,
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": content}],
        "role": "assistant",
    }


def reasoning_item(messages: list[dict[str, Any]], include: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": object_id("rs_", 24), "type": "reasoning", "summary": []}
    if isinstance(include, list) and "reasoning.encrypted_content" in include:
        digest = hashlib.blake2b(orjson.dumps(messages), digest_size=48).digest()
        item["encrypted_content"] = "gAAAAA" + base64.urlsafe_b64encode(digest).decode()
    return item


def item_text(item: dict[str, Any]) -> str:
    if item["type"] == "function_call":
        return item["arguments"]
    return "".join(p.get("text", "") for p in item["content"])


def response_usage(
    input_tokens: int, cached: int, output_tokens: int, reasoning: int
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def json_schema(text_config: Any) -> Any:
    """The schema structured outputs must fit, if the request asks for JSON."""
    if not isinstance(text_config, dict) or not isinstance(text_config.get("format"), dict):
        return None
    fmt = text_config["format"]
    if fmt.get("type") == "json_schema":
        return fmt.get("schema") or {"type": "object", "properties": {}}
    if fmt.get("type") == "json_object":
        return {"type": "object", "properties": {"answer": {"type": "string"}}}
    return None


def tool_echo(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") == "function":
        return {"description": None, "parameters": None, "strict": True, **tool}
    return tool
