"""What a Responses API request gives the simulated model: its input items (with the ids
`input_items` lists them under), the same conversation as chat messages (counted and cached as the
chat path does), the function the model decides to call, and JSON made to fit a schema (function
arguments and structured outputs)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from app.simulator import text
from app.simulator.wire import BadRequest, object_id

ROLES = ("user", "assistant", "system", "developer")
_PIECE = re.compile(r"\s*[^\s\"{}\[\],:]+|\s*.", re.DOTALL)
_SCHEMA_DEPTH = 8
MIN_OUTPUT_TOKENS = 16


def input_items(value: Any) -> list[dict[str, Any]]:
    """`input` (a string or a list of items) as items with ids, as `input_items` lists them."""
    if isinstance(value, str):
        return [_message("user", value, None, 0)]
    if not isinstance(value, list):
        raise BadRequest(
            "Invalid type for 'input': expected one of a string or an array of input items, "
            f"but got {_json_type(value)} instead.",
            param="input",
            code="invalid_type",
        )
    items = []
    for index, raw in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(raw, dict):
            raise BadRequest(
                f"Invalid type for '{where}': expected an input item object, but got "
                f"{_json_type(raw)} instead.",
                param=where,
                code="invalid_type",
            )
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind == "message":
            items.append(_message(raw.get("role"), raw.get("content"), raw.get("id"), index))
        elif kind == "function_call_output":
            _require_string(raw, "call_id", where)
            output = raw.get("output")
            if not isinstance(output, str | list):
                raise BadRequest(f"Missing required parameter: '{where}.output'.", param=where)
            items.append(
                {
                    "id": raw.get("id") or object_id("fco_"),
                    "type": kind,
                    "call_id": raw["call_id"],
                    "output": output,
                    "status": raw.get("status") or "completed",
                }
            )
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                _require_string(raw, name, where)
            items.append(
                {
                    **raw,
                    "id": raw.get("id") or object_id("fc_"),
                    "status": raw.get("status") or "completed",
                }
            )
        elif isinstance(kind, str):
            items.append({**raw, "id": raw.get("id") or object_id("item_")})
        else:
            raise BadRequest(f"Missing required parameter: '{where}.type'.", param=f"{where}.type")
    return items


def chat_messages(instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as chat messages (no ids): what is counted, cached and answered."""
    messages: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            parts = [_chat_part(p) for p in item["content"]]
            messages.append({"role": item["role"], "content": parts})
        elif kind == "function_call":
            call = {"name": item["name"], "arguments": item["arguments"]}
            messages.append({"role": "assistant", "content": orjson.dumps(call).decode()})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": item["output"]})
        else:
            rest = {k: v for k, v in item.items() if k not in ("id", "status")}
            messages.append({"role": "assistant", "content": orjson.dumps(rest).decode()})
    return messages


def function_to_call(
    tools: list[dict[str, Any]], tool_choice: Any, context: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The function tool the simulated model calls, if any: the named one, the first one when a
    call is required, or (`auto`) the first one when the conversation ends with a user message
    and no function output has come back yet."""
    functions = [t for t in tools if t.get("type") == "function"]
    if isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        if kind == "function":
            name = tool_choice.get("name")
            for tool in functions:
                if tool.get("name") == name:
                    return tool
            raise BadRequest(
                f"Tool choice 'function' with name '{name}' not found in 'tools' parameter.",
                param="tool_choice",
            )
        if kind != "allowed_tools":
            return None  # a built-in tool: the simulator does not run those
        allowed = {t.get("name") for t in tool_choice.get("tools") or [] if isinstance(t, dict)}
        functions = [t for t in functions if t.get("name") in allowed]
        tool_choice = tool_choice.get("mode", "auto")
    if not functions or tool_choice == "none":
        return None
    if tool_choice == "required":
        return functions[0]
    if any(item["type"] == "function_call_output" for item in context):
        return None
    last = context[-1] if context else None
    if last is not None and last["type"] == "message" and last["role"] == "user":
        return functions[0]
    return None


def value_for_schema(schema: Any, seed: int, root: Any = None, depth: int = 0) -> Any:
    """A deterministic JSON value that fits a JSON schema (types, properties, enums, $defs)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _SCHEMA_DEPTH:
        return _word(seed)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return value_for_schema(target, seed, root, depth + 1)
    if schema.get("enum"):
        return schema["enum"][seed % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return value_for_schema(schema[key][0], seed, root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required")
        names = [n for n in properties if required is None or n in required]
        return {
            n: value_for_schema(properties[n], text.seed_for(seed, n), root, depth + 1)
            for n in names
        }
    if kind == "array":
        return [value_for_schema(schema.get("items"), text.seed_for(seed, 0), root, depth + 1)]
    if kind == "integer":
        return seed % 100
    if kind == "number":
        return (seed % 1000) / 10
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "null":
        return None
    return _word(seed)


def pieces(value: str) -> list[str]:
    """`value` cut into word-sized pieces for streamed deltas."""
    return _PIECE.findall(value)


def _message(role: Any, content: Any, item_id: Any, index: int) -> dict[str, Any]:
    where = f"input[{index}]"
    if role not in ROLES:
        raise BadRequest(
            f"Invalid value: {orjson.dumps(role).decode()}. Supported values are: 'assistant', "
            "'system', 'developer', and 'user'.",
            param=f"{where}.role",
            code="invalid_value",
        )
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts: list[Any] = [{"type": text_type, "text": content}]
    elif isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
    ):
        parts = content
    else:
        raise BadRequest(
            f"Invalid value for '{where}.content': expected a string or an array of content parts.",
            param=f"{where}.content",
        )
    if role == "assistant":
        parts = [{"annotations": [], **p} if p["type"] == "output_text" else p for p in parts]
    return {
        "id": item_id or object_id("msg_"),
        "type": "message",
        "role": role,
        "content": parts,
        "status": "completed",
    }


def _chat_part(part: dict[str, Any]) -> Any:
    """A Responses content part as the chat part `app/parts.py` bills the same way."""
    kind = part.get("type")
    if kind in ("input_text", "output_text", "refusal"):
        return {"type": "text", "text": part.get("text") or part.get("refusal") or ""}
    if kind == "input_image":
        url = part.get("image_url") or ""
        return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail")}}
    if kind == "input_file":
        return {"type": "file", "file": {k: v for k, v in part.items() if k != "type"}}
    return part


def _require_string(raw: dict[str, Any], name: str, where: str) -> None:
    if not isinstance(raw.get(name), str):
        raise BadRequest(f"Missing required parameter: '{where}.{name}'.", param=f"{where}.{name}")


def _word(seed: int) -> str:
    words = text.vocabulary()[0]
    return words[seed % len(words)].strip()


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def validate(payload: dict[str, Any]) -> None:
    """OpenAI's 400s for the fields the simulator reads."""
    cap = payload.get("max_output_tokens")
    if cap is not None:
        _expect(
            isinstance(cap, int) and not isinstance(cap, bool),
            "max_output_tokens",
            "an integer",
            cap,
        )
        if cap < MIN_OUTPUT_TOKENS:
            raise BadRequest(
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{MIN_OUTPUT_TOKENS}, but got {cap} instead.",
                param="max_output_tokens",
                code="integer_below_min_value",
            )
    for name in ("stream", "store", "background"):
        value = payload.get(name)
        if value is not None:
            _expect(isinstance(value, bool), name, "a boolean", value)
    for name in ("previous_response_id", "instructions"):
        value = payload.get(name)
        if value is not None:
            _expect(isinstance(value, str), name, "a string", value)
    temperature = payload.get("temperature")
    if temperature is not None:
        number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
        _expect(number, "temperature", "a number", temperature)
        if not 0 <= temperature <= 2:
            raise BadRequest(
                f"Invalid 'temperature': expected a value from 0 to 2, but got {temperature} "
                "instead.",
                param="temperature",
                code="invalid_value",
            )
    tools = payload.get("tools")
    if tools is not None:
        _expect(isinstance(tools, list), "tools", "an array", tools)
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise BadRequest(
                    f"Missing required parameter: '{where}.type'.",
                    param=f"{where}.type",
                    code="missing_required_parameter",
                )
            if tool["type"] == "function" and not isinstance(tool.get("name"), str):
                raise BadRequest(
                    f"Missing required parameter: '{where}.name'.",
                    param=f"{where}.name",
                    code="missing_required_parameter",
                )


def _expect(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise BadRequest(
            f"Invalid type for '{name}': expected {expected}, but got "
            f"{orjson.dumps(value).decode()} instead.",
            param=name,
            code="invalid_type",
        )
