"""The JSON Schemas of the OpenAPI document (app/openapi.py): request and response bodies.

Each request schema says what the gateway itself checks (app/schemas.py,
app/endpoints/responses.py, app/endpoints/embeddings.py), taken from the same constants, and no
more: every other field is forwarded to the provider unchanged, so request objects admit
additional properties. A field the gateway treats as absent when it is null admits null. Integer
fields are JSON integers; the gateway refuses a number with a fraction part there, and `2.0` too
(JSON Schema counts `2.0` as an integer: see the document's description). The gateway's own
answers (errors, models, usage, invalidation, health) are described exactly; the provider's
answers (completions, responses, embeddings' items) name the fields the gateway relies on and
admit the provider's others.
"""

from __future__ import annotations

from typing import Any

from app.config import ModelsConfig
from app.embedding_batching import MAX_INPUTS_PER_REQUEST
from app.endpoints.embeddings import ENCODING_FORMATS, MAX_TOKEN_ID
from app.endpoints.responses import MESSAGE_ROLES, MIN_OUTPUT_TOKENS
from app.limits import USAGE_FLOAT_METRICS, USAGE_INT_METRICS
from app.schemas import LOGIT_BIAS_RANGE, MAX_LOGIT_BIAS_ENTRIES, ROLES

Schema = dict[str, Any]
INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}
# Chat roles whose message must carry content (app/schemas.py: _messages).
CONTENT_ROLES = ("system", "developer", "user")
# Token ids in a `logit_bias` map: strings of ASCII digits (app/schemas.py: _logit_bias).
TOKEN_ID_PATTERN = "^[0-9]+$"
# An event stream (OpenAPI 3.1): the `schema` of text/event-stream describes one event, an object
# of its fields (`event`, `data`, ...), its `data` being JSON text of this media type.
JSON_TEXT = "application/json"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def optional(kind: str, **constraints: Any) -> Schema:
    """A field of type `kind` that may also be null (the gateway reads null as absent)."""
    return {"type": [kind, "null"], **constraints}


def exact(properties: dict[str, Schema]) -> Schema:
    """An object the gateway makes itself: these properties, all present, no others."""
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def open_object(properties: dict[str, Schema], required: list[str], **more: Any) -> Schema:
    """An object with the named fields, admitting others (the client's or the provider's)."""
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
        **more,
    }


def model_names(models: ModelsConfig | None, kind: str) -> Schema:
    """The `model` field: with the configuration, exactly the names it serves for `kind`."""
    if models is None:
        return {"type": "string", "description": "an alias or a catalog model of this kind"}
    names = [a for a, target in models.aliases.items() if models.catalog[target].kind == kind]
    names += [name for name, spec in models.catalog.items() if spec.kind == kind]
    return {"type": "string", "enum": names, "description": "an alias or a catalog model"}


def _limit(models: ModelsConfig | None, name: str) -> int:
    """A cap of the models section (max_n, max_stop, ...): configured, else its default."""
    if models is not None:
        return getattr(models, name)
    return ModelsConfig.model_fields[name].default


# --- requests ------------------------------------------------------------------------------------


def _sampling(models: ModelsConfig | None) -> dict[str, Schema]:
    """The fields chat and completions share (app/schemas.py: _common)."""
    max_stop = _limit(models, "max_stop")
    return {
        "temperature": optional("number", minimum=0, maximum=2),
        "top_p": optional("number", minimum=0, maximum=1),
        "presence_penalty": optional("number", minimum=-2, maximum=2),
        "frequency_penalty": optional("number", minimum=-2, maximum=2),
        "n": optional("integer", minimum=1, maximum=_limit(models, "max_n")),
        "seed": optional("integer", **INT64),
        "user": optional("string", description="forwarded as a hash scoped to the client key"),
        "stop": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": max_stop},
                {"type": "null"},
            ]
        },
        "logit_bias": optional(
            "object",
            maxProperties=MAX_LOGIT_BIAS_ENTRIES,
            propertyNames={"pattern": TOKEN_ID_PATTERN},
            additionalProperties={
                "type": "number",
                "minimum": -LOGIT_BIAS_RANGE,
                "maximum": LOGIT_BIAS_RANGE,
            },
        ),
        "stream": optional("boolean"),
        "stream_options": optional(
            "object",
            properties={"include_usage": {"type": "boolean"}},
            additionalProperties=True,
            description="only with stream: true; include_usage adds the usage chunk",
        ),
    }


# `stream_options` only with `stream: true` (app/schemas.py: _stream_flags).
STREAM_OPTIONS_NEED_STREAM = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}


def chat_request(models: ModelsConfig | None) -> Schema:
    content_needed = {
        "if": {"properties": {"role": {"enum": list(CONTENT_ROLES)}}},
        "then": {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
    }
    message = open_object(
        {
            "role": {"type": "string", "enum": sorted(ROLES)},
            "content": {"type": ["string", "array", "null"]},
        },
        ["role"],
        allOf=[content_needed],
    )
    both_caps = {
        "required": ["max_tokens", "max_completion_tokens"],
        "properties": {
            "max_tokens": {"not": {"type": "null"}},
            "max_completion_tokens": {"not": {"type": "null"}},
        },
    }
    rules: list[Schema] = [STREAM_OPTIONS_NEED_STREAM, {"not": both_caps}]
    reasoning = [
        name
        for name in model_names(models, "chat").get("enum", [])
        if models is not None and models.catalog[models.resolve(name) or name].reasoning
    ]
    if reasoning:
        # The provider refuses max_tokens from a reasoning model (max_completion_tokens it takes).
        rules.append(
            {
                "if": {"properties": {"model": {"enum": reasoning}}},
                "then": {"properties": {"max_tokens": {"type": "null"}}},
            }
        )
    return open_object(
        {
            "model": model_names(models, "chat"),
            "messages": {"type": "array", "minItems": 1, "items": message},
            **_sampling(models),
            "max_tokens": optional("integer", minimum=1),
            "max_completion_tokens": optional("integer", minimum=1),
            "tools": optional("array"),
            "response_format": optional("object"),
            "logprobs": optional("boolean"),
            "top_logprobs": optional("integer", minimum=0, maximum=20),
        },
        ["model", "messages"],
        allOf=rules,
        description="Only these fields are checked; every other field is forwarded unchanged. "
        "Give at most one of max_tokens and max_completion_tokens (reasoning models: only "
        "max_completion_tokens).",
    )


def completion_request(models: ModelsConfig | None) -> Schema:
    max_n = _limit(models, "max_n")
    # `best_of` is `n` when absent and must be at least `n` (app/schemas.py: validate_completions).
    best_of_covers_n = [
        {
            "if": {"required": ["n"], "properties": {"n": {"const": n}}},
            "then": {"properties": {"best_of": {"minimum": n}}},
        }
        for n in range(2, max_n + 1)
    ]
    stream_alone = {
        "if": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        "then": {"properties": {"best_of": {"maximum": 1}}},
    }
    return open_object(
        {
            "model": model_names(models, "chat"),
            "prompt": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": _limit(models, "max_prompts"),
                    },
                ]
            },
            **_sampling(models),
            "max_tokens": optional("integer", minimum=1),
            "best_of": optional("integer", minimum=1, maximum=_limit(models, "max_best_of")),
            "echo": optional("boolean"),
            "logprobs": optional("integer", minimum=0, maximum=5),
            "suffix": optional("string"),
        },
        ["model", "prompt"],
        allOf=[STREAM_OPTIONS_NEED_STREAM, stream_alone, *best_of_covers_n],
        description="best_of (n when absent) must be at least n, and at most 1 when streamed.",
    )


def responses_request(models: ModelsConfig | None) -> Schema:
    part = open_object({"type": {"type": "string"}}, ["type"])
    # An item is read as a message when its type is "message", or when it has no type and a role.
    is_message = {
        "anyOf": [
            {"required": ["type"], "properties": {"type": {"const": "message"}}},
            {"required": ["role"], "properties": {"type": {"type": "null"}}},
        ]
    }
    message_rules = {
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": sorted(MESSAGE_ROLES)},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": part}]},
        },
    }
    item = open_object(
        {"type": optional("string")}, [], allOf=[{"if": is_message, "then": message_rules}]
    )
    # The provider's own rule: a function tool is named.
    named_function = {
        "if": {"properties": {"type": {"const": "function"}}},
        "then": {"required": ["name"], "properties": {"name": {"type": "string"}}},
    }
    tool = open_object({"type": {"type": "string"}}, ["type"], allOf=[named_function])
    # The provider's own rule: an input, unless the request continues a stored response.
    has_input = {
        "anyOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
            for name in ("input", "previous_response_id")
        ]
    }
    return open_object(
        {
            "model": model_names(models, "chat"),
            "input": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": item}, {"type": "null"}]
            },
            "instructions": optional("string"),
            "previous_response_id": optional("string"),
            "conversation": {"type": ["string", "object", "null"]},
            "user": optional("string", description="forwarded as a hash scoped to the client key"),
            "safety_identifier": optional("string", description="forwarded hashed, as user"),
            "store": optional("boolean"),
            "parallel_tool_calls": optional("boolean"),
            "background": {
                "enum": [False, None],
                "description": "background responses are refused: their usage arrives after "
                "the request ends, so it could not be limited or accounted",
            },
            "stream": optional("boolean"),
            "temperature": optional("number", minimum=0, maximum=2),
            "top_p": optional("number", minimum=0, maximum=1),
            "top_logprobs": optional("integer", minimum=0, maximum=20),
            "max_output_tokens": optional("integer", minimum=MIN_OUTPUT_TOKENS),
            "text": optional("object"),
            "metadata": optional("object"),
            "tools": optional("array", items=tool),
            "include": optional("array", items={"type": "string"}),
        },
        ["model"],
        allOf=[has_input],
        description="Forwarded with its unknown fields; cached only when replayable: "
        "temperature 0 or a seed, store: false, no previous_response_id or conversation, no "
        "stored prompt, and only function or custom tools.",
    )


def input_tokens_request() -> Schema:
    return open_object(
        {"model": optional("string", description="an alias is resolved; an unknown name: 404")},
        [],
        description="Forwarded to the provider as sent, its model alias resolved.",
    )


def embeddings_request(models: ModelsConfig | None) -> Schema:
    text = {"type": "string", "minLength": 1}
    token = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
    tokens = {"type": "array", "minItems": 1, "items": token}
    dimensions: Schema = optional("integer", minimum=1)
    rules: list[Schema] = []
    if models is not None:
        names = {name: models.resolve(name) for name in model_names(models, "embedding")["enum"]}
        for name, pinned in names.items():
            spec = models.catalog[pinned or name]
            allowed = (
                {"type": "null"}
                if not spec.shortenable
                else {"type": ["integer", "null"], "maximum": spec.dimensions}
            )
            rules.append(
                {
                    "if": {"properties": {"model": {"const": name}}},
                    "then": {"properties": {"dimensions": allowed}},
                }
            )
    more = {"allOf": rules} if rules else {}
    return open_object(
        {
            "model": model_names(models, "embedding"),
            "input": {
                "anyOf": [
                    text,
                    tokens,
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_INPUTS_PER_REQUEST,
                        "items": {"anyOf": [text, tokens]},
                    },
                ],
                "description": "a string, a token array, or a list of up to "
                f"{MAX_INPUTS_PER_REQUEST} of either; each input within the model's context "
                "window, 300,000 tokens in all",
            },
            "encoding_format": {"enum": [*ENCODING_FORMATS, None]},
            "dimensions": {
                **dimensions,
                "description": "only for models that can shorten their vectors, up to their "
                "native length",
            },
            "user": optional("string", description="forwarded as a hash scoped to the client key"),
        },
        ["model", "input"],
        **more,
        description="Cached per input (model, dimensions, encoding and the input itself).",
    )


def invalidation_request(models: ModelsConfig | None) -> Schema:
    any_model = None
    if models is not None:
        any_model = [*models.aliases, *models.catalog]
    model: Schema = optional("string", description="only this model's entries (every key's)")
    if any_model is not None:
        model["enum"] = [*any_model, None]
    return open_object(
        {
            "model": model,
            "key": optional(
                "string",
                description="only this client key's entries (a configured key's name; needs "
                "cache.scope: key)",
            ),
        },
        [],
        description="No body (or {}): every entry.",
    )


# --- the gateway's own answers -------------------------------------------------------------------

USD = {"type": "number", "minimum": 0}
COUNT = {"type": "integer", "minimum": 0}
MONTH_PATTERN = "^[0-9]{4}-(0[1-9]|1[0-2])$"


def _usage_metrics() -> dict[str, Schema]:
    return {
        **{name: COUNT for name in USAGE_INT_METRICS},
        **{name: USD for name in USAGE_FLOAT_METRICS},
    }


def own_schemas() -> dict[str, Schema]:
    """The bodies the gateway makes itself, exactly."""
    nullable_usd = {"type": ["number", "null"], "minimum": 0}
    return {
        "Error": exact(
            {
                "error": exact(
                    {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    }
                )
            }
        ),
        "Model": exact(
            {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"const": "liftoff"},
                "pinned": {"type": "string", "description": "the catalog model it stands for"},
            }
        ),
        "ModelList": exact(
            {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}
        ),
        "ModelUsage": exact(_usage_metrics()),
        "KeyUsage": exact(
            {
                "spent_usd": USD,
                "reserved_usd": USD,
                **_usage_metrics(),
                "models": {"type": "object", "additionalProperties": ref("ModelUsage")},
            }
        ),
        "Usage": exact(
            {
                "object": {"const": "usage"},
                "month": {"type": "string", "pattern": MONTH_PATTERN},
                "key": {"type": "string"},
                "monthly_budget_usd": nullable_usd,
                "budget_remaining_usd": nullable_usd,
                "usage": ref("KeyUsage"),
            }
        ),
        "UsageOfEveryKey": exact(
            {
                "object": {"const": "usage"},
                "month": {"type": "string", "pattern": MONTH_PATTERN},
                "keys": {"type": "object", "additionalProperties": ref("KeyUsage")},
                "global": exact({"spent_usd": USD, "reserved_usd": USD}),
                "global_monthly_budget_usd": nullable_usd,
            }
        ),
        "CacheInvalidation": exact(
            {
                "object": {"const": "cache.invalidation"},
                "model": {"type": ["string", "null"]},
                "key": {"type": ["string", "null"]},
                "invalidated": {"const": True},
            }
        ),
        "Health": exact({"status": {"const": "ok"}}),
        "Readiness": exact(
            {
                "ready": {"type": "boolean"},
                "draining": {"type": "boolean"},
                "state_backend": {"enum": ["healthy", "degraded", "in-process"]},
            }
        ),
    }


# --- the provider's answers, as relayed ----------------------------------------------------------


def _sse_event(data: Schema, done: bool) -> Schema:
    """One event of an event stream: its `data` is JSON (`data: [DONE]` too when `done`)."""
    json_data = {"type": "string", "contentMediaType": JSON_TEXT, "contentSchema": data}
    return open_object(
        {
            "event": {"type": "string"},
            "data": {"anyOf": [{"const": "[DONE]"}, json_data]} if done else json_data,
        },
        ["data"],
    )


def provider_schemas() -> dict[str, Schema]:
    usage = open_object({}, [])
    embedding = {
        "anyOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "string", "description": "base64 of little-endian float32s"},
        ]
    }
    return {
        "ChatCompletion": open_object(
            {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": open_object({}, ["index"])},
                "usage": usage,
            },
            ["id", "object", "created", "model", "choices"],
        ),
        "ChatCompletionChunk": open_object(
            {
                "id": {"type": "string"},
                "object": {"const": "chat.completion.chunk"},
                "model": {"type": "string"},
                "choices": {"type": "array"},
            },
            ["id", "object", "choices"],
        ),
        "Completion": open_object(
            {
                "id": {"type": "string"},
                "object": {"const": "text_completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": open_object({}, ["index"])},
                "usage": usage,
            },
            ["id", "object", "created", "model", "choices"],
        ),
        "CompletionChunk": open_object(
            {
                "id": {"type": "string"},
                "object": {"const": "text_completion"},
                "choices": {"type": "array"},
            },
            ["id", "object", "choices"],
        ),
        "Response": open_object(
            {
                "id": {"type": "string"},
                "object": {"const": "response"},
                "created_at": {"type": "number"},
                "status": {"type": "string"},
                "model": {"type": "string"},
                "output": {"type": "array"},
                "usage": {"anyOf": [usage, {"type": "null"}]},
            },
            ["id", "object", "status", "output"],
        ),
        "ResponseEvent": open_object(
            {"type": {"type": "string"}, "sequence_number": {"type": "integer"}}, ["type"]
        ),
        "Embedding": open_object(
            {
                "object": {"const": "embedding"},
                "index": {"type": "integer", "minimum": 0},
                "embedding": embedding,
            },
            ["object", "index", "embedding"],
        ),
        "EmbeddingList": exact(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("Embedding")},
                "model": {"type": "string"},
                "usage": exact({"prompt_tokens": COUNT, "total_tokens": COUNT}),
            }
        ),
        # A stream the provider broke off ends with the gateway's error event: `{"error": ...}`.
        "ChatStreamEvent": _sse_event(
            {"anyOf": [ref("ChatCompletionChunk"), ref("Error")]}, done=True
        ),
        "CompletionStreamEvent": _sse_event(
            {"anyOf": [ref("CompletionChunk"), ref("Error")]}, done=True
        ),
        "ResponseStreamEvent": _sse_event(ref("ResponseEvent"), done=False),
    }


def request_schemas(models: ModelsConfig | None) -> dict[str, Schema]:
    return {
        "ChatRequest": chat_request(models),
        "CompletionRequest": completion_request(models),
        "ResponsesRequest": responses_request(models),
        "InputTokensRequest": input_tokens_request(),
        "EmbeddingsRequest": embeddings_request(models),
        "CacheInvalidationRequest": invalidation_request(models),
    }
