"""POST /v1/responses: OpenAI's Responses API, as JSON or as its event stream.

The body is forwarded intact (unknown fields kept) with the resolved model and the output cap
written as `max_output_tokens` (the client's, or the model's default; clamped or refused like
chat's). Only what the gateway reads is validated: `model`, `input` (a string or a list of
items; message items' role and content shape), `instructions`, `max_output_tokens`, `stream`,
`tools`, `previous_response_id`, `store`, `user`, `safety_identifier`, `background`.

Prompt tokens are counted from what the request itself carries (instructions, input items,
tools); stored state it points to (`previous_response_id`, `conversation`, `item_reference`) is
not visible here and is settled from the provider's usage afterwards.

A response is cached only when its replay is honest (`canonical_responses`): deterministic,
`store: false`, not continuing stored state, and with client-executed tools only. The event
stream is relayed by app/endpoints/responses_stream.py, a cached response served again by
app/endpoints/responses_replay.py; the stored-response routes are in responses_stored.py.

A stored response (`store` not false) is owned by the client key that made it
(app/object_owners.py): its owner is recorded from the JSON answer, or from a stream's
`response.created` event. A request naming another key's stored object is refused before any
call as the provider refuses an unknown one: a `previous_response_id` (400
`previous_response_not_found`), a file search's vector store, an input part's file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from app.accounting import TokenCounter, TokenUsage
from app.cache import NON_OUTPUT_FIELDS
from app.config import ModelsConfig
from app.context import Ctx
from app.endpoints import responses_replay, responses_stream
from app.endpoints.base import GenerationEndpoint
from app.endpoints.responses_stream import ResponsesRelay
from app.errors import ApiError, InvalidRequest, ObjectNotFound, echo
from app.object_owners import FILES, VECTOR_STORES, Reference
from app.schemas import (
    ParsedRequest,
    _boolean,
    _integer,
    _number,
    _string,
    _typed,
    as_integer,
    resolve_model,
)

if TYPE_CHECKING:
    from app.auth import ClientKey
    from app.pipeline import Pipeline

# OpenAI refuses a smaller cap: "integer below minimum value. Expected a value >= 16".
MIN_OUTPUT_TOKENS = 16
MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
# Tools the client runs itself: the model only names the call, so its answer depends on the
# request alone. Every other kind (web_search*, file_search, code_interpreter, computer_use*,
# image_generation, mcp, local_shell, ...) runs at the provider, on data that changes.
CLIENT_TOOLS = frozenset({"function", "custom"})
# `metadata` is echoed in the response: part of the key, so that a hit echoes the caller's own.
RESPONSES_NON_OUTPUT = (NON_OUTPUT_FIELDS - {"metadata"}) | {"background"}
RESPONSES_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "truncation": "disabled",
    "top_logprobs": 0,
}
# Parts of a Responses message as the chat parts the token counter bounds (app/parts.py).
_TEXT_FIELD = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
_UNCOUNTED_ITEM_FIELDS = frozenset({"type", "id", "status", "encrypted_content"})


# --- validation ----------------------------------------------------------------------------------


def validate_responses(body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
    requested, resolved, spec = resolve_model(body, models)
    _input(body.get("input"))
    _string(body, "instructions")
    _string(body, "previous_response_id")
    _string(body, "user")
    _string(body, "safety_identifier")
    _boolean(body, "store")
    _boolean(body, "parallel_tool_calls")
    if _boolean(body, "background"):
        raise InvalidRequest(
            "'background' responses are not relayed by this gateway: their usage arrives after "
            "the request ends, so it could not be limited or accounted. Use 'stream': true for "
            "long responses.",
            "background",
            "unsupported_value",
        )
    stream = _boolean(body, "stream")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _integer(body, "top_logprobs", 0, 20)
    _typed(body, "text", (dict,), "an object")
    _typed(body, "metadata", (dict,), "an object")
    _typed(body, "conversation", (str, dict), "a string or an object")
    _tools(body.get("tools"))
    _include(body.get("include"))
    parsed = ParsedRequest(
        "responses",
        body,
        requested,
        resolved,
        spec,
        stream,
        include_usage=False,
        n=1,
        best_of=1,
        max_tokens_field="max_output_tokens",
    )
    parsed.max_tokens = _max_output_tokens(body.get("max_output_tokens"))
    return parsed


def _invalid_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, got {type(value).__name__}.",
        param,
        "invalid_type",
    )


def _max_output_tokens(value: Any) -> int:
    if value is None:
        return 0
    cap = as_integer(value)
    if cap is None:
        raise _invalid_type("max_output_tokens", "an integer", value)
    if cap < MIN_OUTPUT_TOKENS:
        raise InvalidRequest(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {cap} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    return cap


def _input(value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _invalid_type("input", "a string or an array of input items", value)
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _invalid_type(param, "an object", item)
        kind = item.get("type")
        if kind is not None and not isinstance(kind, str):
            raise _invalid_type(f"{param}.type", "a string", kind)
        if kind == "message" or (kind is None and "role" in item):
            _message(item, param)


def _message(item: dict[str, Any], param: str) -> None:
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        raise InvalidRequest(
            f"Invalid value for '{param}.role': {echo(repr(role))}; "
            f"allowed are {sorted(MESSAGE_ROLES)}.",
            f"{param}.role",
            "invalid_value",
        )
    content = item.get("content")
    if content is None:
        raise InvalidRequest(
            f"Missing required parameter: '{param}.content'.",
            f"{param}.content",
            "missing_required",
        )
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid_type(f"{param}.content", "a string or an array of content parts", content)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid_type(
                f"{param}.content[{j}]", "a content part object with a string 'type'", part
            )


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid_type("tools", "an array", tools)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid_type(f"tools[{i}]", "an object", tool)
        if not isinstance(tool.get("type"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{i}].type'.",
                f"tools[{i}].type",
                "missing_required",
            )


def _include(include: Any) -> None:
    if include is not None and not (
        isinstance(include, list) and all(isinstance(name, str) for name in include)
    ):
        raise _invalid_type("include", "an array of strings", include)


# --- counting ------------------------------------------------------------------------------------


def input_items(body: Mapping[str, Any]) -> list[Any]:
    """The input as a list of items (a string is one user message, as OpenAI reads it)."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return value or []


def as_messages(body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The instructions and input items as the chat messages the token counter bounds."""
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield {"role": "developer", "content": instructions}
    for item in input_items(body):
        counted = {k: v for k, v in item.items() if k not in _UNCOUNTED_ITEM_FIELDS}
        for name in ("content", "output"):  # a message's parts, a tool output's parts
            if isinstance(counted.get(name), list):
                counted[name] = [_as_chat_part(part) for part in counted[name]]
        yield counted


def _as_chat_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    field = _TEXT_FIELD.get(kind)
    if field is not None and isinstance(part.get(field), str):
        return {"type": "text", "text": part[field]}
    if kind == "input_image":
        return {"type": "image_url", "image_url": {"url": part.get("image_url"), **_detail(part)}}
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if k in part}
        return {"type": "file", "file": file}
    return part


def _detail(part: Mapping[str, Any]) -> dict[str, Any]:
    return {"detail": part["detail"]} if "detail" in part else {}


def count_input(counter: TokenCounter, parsed: ParsedRequest) -> tuple[int, int]:
    """(fewest, most) prompt tokens: non-text parts bounded as chat's; encrypted reasoning
    (opaque, its tokens unknown) at most its own length in tokens; tools by their JSON."""
    encoding = parsed.spec.encoding
    body = parsed.body
    low, high = counter.count_message_bounds(as_messages(body), encoding)
    for item in input_items(body):
        if isinstance(item.get("encrypted_content"), str):
            high += counter.count_text(item["encrypted_content"], encoding)
    if isinstance(body.get("tools"), list):
        tools = counter.count_tools(body["tools"], encoding)
        low += tools
        high += tools
    return low, min(high, parsed.spec.context_window)


def input_text(body: Mapping[str, Any]) -> str:
    """The text of the instructions and of every message (what moderation reads)."""
    texts: list[str] = []
    if isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    for item in input_items(body):
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                field = _TEXT_FIELD.get(part.get("type")) if isinstance(part, dict) else None
                if field is not None and isinstance(part.get(field), str):
                    texts.append(part[field])
    return "\n".join(texts)


def output_text(response: Mapping[str, Any]) -> str:
    """The response's text, as the SDK's `response.output_text` joins it."""
    return "".join(
        part.get("text") or ""
        for item in response.get("output") or []
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    )


# --- caching -------------------------------------------------------------------------------------


def canonical_responses(body: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    """The request reduced to what determines its response, defaults applied; None when a
    replay would not be honest: the response is stored at the provider (`store` is true by
    default: a hit would name a response that was never stored), continues stored state
    (`previous_response_id`, `conversation`, an `item_reference` or an item without a type or
    role), uses a stored prompt template (`prompt`: its versions change), or calls a tool the
    provider runs (web search, file search, code interpreter, computer use, ...)."""
    if body.get("store", True) is not False:
        return None
    if any(body.get(name) is not None for name in ("previous_response_id", "conversation")):
        return None
    if body.get("prompt") is not None:
        return None
    tools = body.get("tools") or []
    if any(tool.get("type") not in CLIENT_TOOLS for tool in tools):
        return None
    items: list[Any] = []
    for item in input_items(body):
        kind = item.get("type")
        if kind is None and "role" in item:
            item = {"type": "message", **item}
        elif kind is None or kind == "item_reference":
            return None
        items.append(item)
    canonical = {
        name: value
        for name, value in body.items()
        if value is not None and name not in RESPONSES_NON_OUTPUT
    }
    canonical["model"] = model
    canonical["input"] = items
    for name, value in RESPONSES_DEFAULTS.items():
        canonical.setdefault(name, value)
    for name in ("temperature", "top_p"):
        if isinstance(canonical[name], int | float) and not isinstance(canonical[name], bool):
            canonical[name] = float(canonical[name])
    canonical["text"] = {"format": {"type": "text"}, **(canonical.get("text") or {})}
    canonical["include"] = sorted(set(canonical.get("include") or ()))
    if not canonical.get("metadata"):
        canonical.pop("metadata", None)
    if tools:
        canonical.setdefault("tool_choice", "auto")
        canonical.setdefault("parallel_tool_calls", True)
    else:
        canonical.pop("tools", None)
        if canonical.get("tool_choice") == "none":
            del canonical["tool_choice"]
    return canonical


# --- the endpoint --------------------------------------------------------------------------------


class ResponsesEndpoint(GenerationEndpoint):
    name = "responses"
    path = "/v1/responses"
    # No `data: [DONE]`: the stream ends with its terminal event.
    stream_end = staticmethod(responses_stream.ends_stream)
    stores_objects = True

    def validate(self, body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
        return validate_responses(body, models)

    def count(self, counter: TokenCounter, parsed: ParsedRequest) -> tuple[int, int]:
        return count_input(counter, parsed)

    def prompt_for_log(self, parsed: ParsedRequest) -> Any:
        return {"instructions": parsed.body.get("instructions"), "input": parsed.body.get("input")}

    def moderation_text(self, parsed: ParsedRequest) -> str:
        return input_text(parsed.body)

    def canonical(self, body: dict[str, Any], model: str) -> dict[str, Any] | None:
        return canonical_responses(body, model)

    def completion_for_log(self, response: dict[str, Any]) -> Any:
        return output_text(response)

    def stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body  # the usage comes with the terminal event: nothing to ask for

    def relay(self, parsed: ParsedRequest, keep_for_cache: bool) -> ResponsesRelay:
        return ResponsesRelay(keep_for_cache)

    def stream_usage(self, relay: ResponsesRelay) -> TokenUsage | None:
        return TokenUsage.of(relay.usage) if relay.usage else None

    def error_event(self, error: ApiError, relay: ResponsesRelay) -> bytes:
        return responses_stream.error_event(error, relay)

    def replay(self, response: dict[str, Any], parsed: ParsedRequest) -> list[bytes]:
        return responses_replay.replay(response)

    async def check_objects(
        self, pipeline: Pipeline, parsed: ParsedRequest, key: ClientKey
    ) -> None:
        owners = pipeline.gateway.owners
        references = stored_references(parsed.body)
        if owners is not None and references:
            await owners.require(key, references)

    async def call(
        self, pipeline: Pipeline, parsed: ParsedRequest, body: dict[str, Any], ctx: Ctx
    ) -> tuple[bytes, str]:
        data, model = await super().call(pipeline, parsed, body, ctx)
        owners = pipeline.gateway.owners
        if owners is not None and _stored(body):
            try:
                answer = orjson.loads(data)
            except orjson.JSONDecodeError:
                answer = None  # the pipeline answers 502 for it
            # The answer is already paid for: a record Redis cannot take is logged, not refused.
            await owners.claim(ctx.key, answer, required=False)
        return data, model

    def track_objects(
        self, pipeline: Pipeline, parsed: ParsedRequest, relay: ResponsesRelay, ctx: Ctx
    ) -> None:
        owners = pipeline.gateway.owners
        if owners is not None and _stored(parsed.body):
            key_name = ctx.key
            # Written before the event reaches the client (the next loop turn, in order on the
            # Redis connection), so a retrieve right after the first event finds it.
            relay.on_created = lambda response: pipeline.after(
                owners.claim(key_name, response, required=False)
            )


def stored_references(body: Mapping[str, Any]) -> list[Reference]:
    """The stored objects a request names, each with the provider's refusal of an unknown one
    there: the response it continues (`previous_response_id`), its `conversation`, the vector
    stores its file search reads, the files its input parts attach."""
    found: list[Reference] = []
    previous = body.get("previous_response_id")
    if isinstance(previous, str):
        refusal = ObjectNotFound(
            400,
            f"Previous response with id '{echo(previous)}' not found.",
            "previous_response_id",
            "previous_response_not_found",
        )
        found.append(Reference(previous, refusal))
    # No gateway route makes conversations: one is an unknown id (objects.unknown_owner).
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if isinstance(conversation, str):
        message = f"Conversation with id '{echo(conversation)}' not found."
        found.append(Reference(conversation, ObjectNotFound(404, message, None, None)))
    for i, tool in enumerate(body.get("tools") or ()):
        stores = tool.get("vector_store_ids") if tool.get("type") == "file_search" else None
        for store_id in stores if isinstance(stores, list) else ():
            if isinstance(store_id, str):
                message = VECTOR_STORES.missing.format(id=echo(store_id))
                param = f"tools[{i}].vector_store_ids"
                found.append(Reference(store_id, ObjectNotFound(400, message, param, None)))
    for i, item in enumerate(input_items(body)):
        content = item.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            file_id = part.get("file_id") if isinstance(part, dict) else None
            if isinstance(file_id, str):
                message = FILES.missing.format(id=echo(file_id))
                param = f"input[{i}].content[{j}].file_id"
                found.append(Reference(file_id, ObjectNotFound(400, message, param, None)))
    return found


def _stored(body: Mapping[str, Any]) -> bool:
    """Whether the provider stores the response (`store` is true by default)."""
    return body.get("store", True) is not False
