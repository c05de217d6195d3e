"""The gateway's OpenAPI 3.1 document (served at /openapi.json), written by hand.

Every route app/server.py serves is here with its methods (tests/app/test_openapi.py walks the
app's routes both ways), every status each route really answers, the headers it sets and the
exact shape of the bodies the gateway makes itself; the request and response bodies are in
app/openapi_schemas.py. Given the configuration, `model` fields name exactly the models it
serves and the caps (n, stop, prompts, body sizes) are its own.
"""

from __future__ import annotations

from typing import Any

from app.config import GatewayConfig, ServerConfig
from app.endpoints.passthrough import FAMILIES, PASSTHROUGH_ROUTES, Family
from app.endpoints.responses_stored import _RESPONSE_ID
from app.object_owners import KINDS
from app.openapi_schemas import (
    Schema,
    own_schemas,
    provider_schemas,
    ref,
    request_schemas,
)

JSON = "application/json"
SSE = "text/event-stream"
# x-ratelimit-reset-*: OpenAI's duration form ("0s", "250ms", "1.5s", "6m0s", "1h2m3s").
DURATION_PATTERN = "^(0s|[0-9]+ms|([0-9]+h)?([0-9]+m)?[0-9]+(\\.[0-9]+)?s)$"
REQUEST_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"
# A `{name:path}` route parameter: anything but a line feed (the route's `.*` stops there).
PATH_TAIL = {"type": "string", "pattern": "^[^\\n]*$"}
# `month` of /v1/usage: YYYY-MM, or empty for the current month.
MONTH_OR_EMPTY = "^([0-9]{4}-(0[1-9]|1[0-2]))?$"

DESCRIPTION = """\
An OpenAI-compatible gateway: response cache, shared rate limits, budgets, retries, batching, \
moderation and metrics in front of one or more LLM providers.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`. Integer fields \
take JSON integers: a number written with a fraction part (`2.0` included, which JSON Schema \
counts as an integer) is refused with 400 `invalid_type`. Streams (`stream: true`) are \
`text/event-stream`; each event is described as an object of its fields, its `data` being JSON \
text (chat and completions end with `data: [DONE]`, the Responses API with its terminal \
event); a stream the provider breaks off ends with an error event.

Besides what each operation lists: an unknown path answers 404 `unknown_url`, a known path \
with another method 405 with `Allow`; the HTTP layer of `python -m app` answers 400 for a \
malformed request line or header, 408 for a slow head or body, 431 for too many or too large \
headers and 503 beyond its connection limit, each as an OpenAI-shaped error.
"""

TAGS = [
    {"name": "chat", "description": "chat completions: cached, limited, accounted, streamed"},
    {"name": "completions", "description": "legacy completions: cached, batched, limited"},
    {"name": "responses", "description": "the Responses API and its stored responses"},
    {"name": "embeddings", "description": "embeddings: cached per input, batched"},
    {"name": "models", "description": "the aliases and pinned catalog models"},
    {"name": "usage", "description": "tokens, cost and budgets per key and month"},
    {"name": "admin", "description": "admin keys only"},
    {"name": "passthrough", "description": "other OpenAI routes, forwarded and streamed"},
    {"name": "operations", "description": "health, readiness, metrics and this document"},
]


# --- headers -------------------------------------------------------------------------------------


def _header(schema: Schema, description: str, required: bool = False) -> dict[str, Any]:
    return {"schema": schema, "description": description, "required": required}


# components.headers; responses name them by reference (the header's name, then the component's).
HEADERS: dict[str, dict[str, Any]] = {
    "x-request-id": _header(
        {"type": "string", "pattern": REQUEST_ID_PATTERN},
        "the request's own x-request-id when it matches the pattern, else one made here",
        required=True,
    ),
    "x-liftoff-overhead-ms": _header(
        {"type": "number", "minimum": 0},
        "the gateway's own time: total minus waiting for the provider, retries' back-off, a "
        "batch's window or another request's single-flight call (streams: when the headers go)",
        required=True,
    ),
    **{
        f"x-ratelimit-{what}-{kind}": _header(
            {"type": "integer", "minimum": 0},
            f"the client key's {kind} per minute"
            + (" limit" if what == "limit" else ": what may be sent now"),
        )
        for kind in ("requests", "tokens")
        for what in ("limit", "remaining")
    },
    **{
        f"x-ratelimit-reset-{kind}": _header(
            {"type": "string", "pattern": DURATION_PATTERN},
            f"until the key's {kind} bucket is empty again",
        )
        for kind in ("requests", "tokens")
    },
    "x-liftoff-budget-remaining": _header(
        {"type": "number", "minimum": 0}, "USD left in the key's (or the global) monthly budget"
    ),
    "x-liftoff-cache": _header(
        {"enum": ["hit", "miss", "bypass"]}, "the cache's part in this answer", required=True
    ),
    "x-liftoff-cache-origin-id": _header(
        {"type": "string"}, "on a hit: the id of the stored answer (the hit has its own)"
    ),
    "x-liftoff-cache-hits": _header(
        {"type": "string", "pattern": "^[0-9]+/[0-9]+$"},
        "inputs answered from the cache / inputs",
        required=True,
    ),
    "retry-after": _header({"type": "integer", "minimum": 1}, "seconds to wait", required=True),
    "retry-after-if-any": _header(
        {"type": "integer", "minimum": 1}, "seconds to wait, when waiting helps"
    ),
}


def _headers(*names: str, **renamed: str) -> dict[str, Any]:
    """References to components.headers: `names` as they are, `renamed` as header=component."""
    pairs = [(name, name) for name in names] + list(renamed.items())
    return {header: {"$ref": f"#/components/headers/{component}"} for header, component in pairs}


EVERY_RESPONSE = _headers("x-request-id", "x-liftoff-overhead-ms")
LIMITS = _headers(
    *(f"x-ratelimit-{w}-{k}" for k in ("requests", "tokens") for w in ("limit", "remaining")),
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-liftoff-budget-remaining",
)
CACHE = _headers("x-liftoff-cache", "x-liftoff-cache-origin-id")
CACHE_HITS = _headers("x-liftoff-cache-hits")
RETRY_AFTER = _headers("retry-after")


# --- responses -----------------------------------------------------------------------------------


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**EVERY_RESPONSE, **LIMITS, **(headers or {})},
        "content": {JSON: {"schema": ref("Error")}},
    }


# components.responses: the refusals many operations share.
RESPONSES: dict[str, dict[str, Any]] = {
    "Unauthorized": {
        "description": "no, malformed or unknown client key (invalid_api_key); no limits reported",
        "headers": EVERY_RESPONSE,
        "content": {JSON: {"schema": ref("Error")}},
    },
    "TooLarge": _error("body over the operation's limit (request_too_large)"),
    "NotJson": _error("content type is not application/json (unsupported_media_type)"),
    "RateLimited": _error(
        "rate_limit_exceeded (the key's rpm or tpm, or the provider's after retries) or "
        "insufficient_quota (a monthly budget)",
        RETRY_AFTER,
    ),
    "ProviderClientError": _error("another client error of the provider (its status, its fields)"),
    "ProviderTimedOut": _error("the provider answered 408 (after retries)"),
    "BadGateway": _error(
        "the provider failed, refused the gateway's key, or broke off (upstream_error)"
    ),
    "Unavailable": _error(
        "not ready (starting or draining: not_ready), the model's circuit open "
        "(upstream_unavailable), more waiting for the model than it can serve in time "
        "(overloaded), or limits unavailable with limits.on_redis_failure: closed, or the owner "
        "records of stored objects unavailable (service_unavailable)",
        _headers(**{"retry-after": "retry-after-if-any"}),
    ),
    "GatewayTimeout": _error("the provider did not answer in time (upstream_timeout)"),
    "ProviderAnswer": {
        "description": "the provider's own answer: its status, headers and body, streamed "
        "(its 404 for a route it does not have included)",
        "headers": {**EVERY_RESPONSE, **LIMITS},
        "content": {"*/*": {"schema": {}}},
    },
}


def _response(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


UNAUTHORIZED = _response("Unauthorized")
RATE_LIMITED = _response("RateLimited")
PROVIDER_FAILURES = {
    "502": _response("BadGateway"),
    "503": _response("Unavailable"),
    "504": _response("GatewayTimeout"),
}
JSON_BODY_ERRORS = {"413": _response("TooLarge"), "415": _response("NotJson")}


def _ok(schema: Schema, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": "OK",
        "headers": {**EVERY_RESPONSE, **(headers or {})},
        "content": {JSON: {"schema": schema}},
    }


# --- operations ----------------------------------------------------------------------------------


def _json_request(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": ref(schema)}}}


CACHE_DIRECTIVES = [
    {
        "name": "x-liftoff-cache",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "force: cache even a non-deterministic request; bypass: skip the cache; "
        "any other value is ignored",
    },
    {
        "name": "Cache-Control",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "containing no-cache: skip the cache",
    },
]


def _generation(
    operation_id: str,
    tag: str,
    summary: str,
    request: str,
    answer: str,
    stream_event: str | None,
    description: str,
) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": ref(answer)}}
    if stream_event is not None:
        content[SSE] = {"schema": ref(stream_event)}
    headers = {**LIMITS, **CACHE, **(CACHE_HITS if tag == "embeddings" else {})}
    return {
        "post": {
            "operationId": operation_id,
            "tags": [tag],
            "summary": summary,
            "description": description,
            "parameters": CACHE_DIRECTIVES,
            "requestBody": _json_request(request),
            "responses": {
                "200": {
                    "description": "the answer (JSON), or its event stream with stream: true"
                    if stream_event
                    else "the answer",
                    "headers": {**EVERY_RESPONSE, **headers},
                    "content": content,
                },
                "400": _error(
                    "invalid body (invalid_type, invalid_value, missing_required, ...), "
                    "context_length_exceeded, content_policy_violation (moderation), or the "
                    "provider's own refusal (its public error fields)"
                ),
                "401": UNAUTHORIZED,
                "403": _error("the provider refused the request (its public error fields)"),
                "404": _error("unknown model (model_not_found), or the provider's 404"),
                **JSON_BODY_ERRORS,
                "429": RATE_LIMITED,
                "4XX": _response("ProviderClientError"),
                **PROVIDER_FAILURES,
            },
        }
    }


def _generation_paths(limit: int) -> dict[str, Any]:
    size = f"Body up to {limit} bytes."
    return {
        "/v1/chat/completions": _generation(
            "createChatCompletion",
            "chat",
            "Create a chat completion",
            "ChatRequest",
            "ChatCompletion",
            "ChatStreamEvent",
            f"{size} Cached when deterministic (temperature 0 or a seed).",
        ),
        "/v1/completions": _generation(
            "createCompletion",
            "completions",
            "Create a completion",
            "CompletionRequest",
            "Completion",
            "CompletionStreamEvent",
            f"{size} Cached when deterministic; concurrent single-prompt requests with the same "
            "parameters may share one provider call.",
        ),
        "/v1/responses": _generation(
            "createResponse",
            "responses",
            "Create a response (the Responses API)",
            "ResponsesRequest",
            "Response",
            "ResponseStreamEvent",
            f"{size} The stream is the Responses event stream (response.created, ..., "
            "response.completed).",
        ),
        "/v1/embeddings": _generation(
            "createEmbedding",
            "embeddings",
            "Create embeddings",
            "EmbeddingsRequest",
            "EmbeddingList",
            None,
            f"{size} Each input is cached on its own; the inputs that miss go to the provider, "
            "with those of concurrent requests of the same parameters.",
        ),
    }


def _forwarded_responses(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a forwarded route answers: the gateway's refusals, else the provider's answer."""
    return {
        **(extra or {}),
        "401": UNAUTHORIZED,
        "408": _response("ProviderTimedOut"),
        "413": _response("TooLarge"),
        "429": RATE_LIMITED,
        **PROVIDER_FAILURES,
        "default": _response("ProviderAnswer"),
    }


def _path_parameter(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


RESPONSE_ID = _path_parameter(
    "response_id",
    {"type": "string", "pattern": f"^{_RESPONSE_ID.pattern}$"},
    "a stored response's id (resp_...)",
)
# A stored object another key made (or, with objects.unknown_owner: refuse, none did).
NOT_YOURS = _error(
    "the provider's 404 for an unknown id: also for another client key's object, or one no key "
    "owns with objects.unknown_owner: refuse (the same status and body)"
)
OWNED_PREFIXES = frozenset(kind.prefix for kind in KINDS)
BAD_RESPONSE_ID = {
    "400": _error("response_id is not letters, digits, '_' or '-' (1 to 256)"),
    "404": NOT_YOURS,
}


def _stored(method: str, operation_id: str, summary: str) -> dict[str, Any]:
    return {
        method: {
            "operationId": operation_id,
            "tags": ["responses"],
            "summary": summary,
            "description": "Forwarded to the first provider (a response is stored at one) with "
            "the key's request limit; the provider's answer comes back as it is.",
            "parameters": [RESPONSE_ID],
            "responses": _forwarded_responses(BAD_RESPONSE_ID),
        }
    }


def _stored_paths(limit: int) -> dict[str, Any]:
    return {
        "/v1/responses/input_tokens": {
            "post": {
                "operationId": "countResponseInputTokens",
                "tags": ["responses"],
                "summary": "Count a Responses request's input tokens (at the provider)",
                "description": f"Body up to {limit} bytes, forwarded with its model alias "
                "resolved and the key's request limit.",
                "requestBody": _json_request("InputTokensRequest"),
                "responses": _forwarded_responses(
                    {
                        "400": _error("the body is not a JSON object, or model not a string"),
                        "404": _error("unknown model (model_not_found), or the provider's 404"),
                        "415": _response("NotJson"),
                    },
                ),
            }
        },
        "/v1/responses/{response_id}": {
            **_stored("get", "getResponse", "Retrieve a stored response"),
            **_stored("delete", "deleteResponse", "Delete a stored response"),
        },
        "/v1/responses/{response_id}/cancel": _stored(
            "post", "cancelResponse", "Cancel a background response"
        ),
        "/v1/responses/{response_id}/input_items": _stored(
            "get", "listResponseInputItems", "List a stored response's input items"
        ),
    }


def _camel(label: str) -> str:
    return "".join(part.capitalize() for part in label.split("_"))


def _passthrough_paths(default_limit: int) -> dict[str, Any]:
    methods = {path: route_methods for path, _, _, route_methods in PASSTHROUGH_ROUTES}
    paths: dict[str, Any] = {}
    for family in FAMILIES:
        limit = family.max_body_bytes or default_limit
        for path, suffix in ((family.prefix, ""), (family.prefix + "/{rest}", "Path")):
            paths[path] = {
                method.lower(): _passthrough(family, method, suffix, limit)
                for method in methods[path.replace("{rest}", "{rest:path}")]
            }
    return paths


def _passthrough(family: Family, method: str, suffix: str, limit: int) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}{_camel(family.label)}{suffix}",
        "tags": ["passthrough"],
        "summary": f"{method} {family.prefix}{'/...' if suffix else ''}, passed to the provider",
        "description": f"Forwarded with the client key checked and its request limit applied; "
        f"body up to {limit} bytes, streamed up as it arrives, and the provider's answer "
        "streamed back. Not cached; usage in a JSON answer is accounted."
        + (
            " Its objects are per client key: another key's id is answered as unknown, a list "
            "shows the caller's own (an admin key's: all)."
            if family.prefix in OWNED_PREFIXES
            else ""
        ),
        "responses": _forwarded_responses(
            {"404": NOT_YOURS} if suffix and family.prefix in OWNED_PREFIXES else None
        ),
    }
    if suffix:
        operation["parameters"] = [
            _path_parameter(
                "rest",
                PATH_TAIL,
                f"the rest of the provider's path under {family.prefix}/ (may hold '/')",
            )
        ]
    if method == "POST":
        operation["requestBody"] = {
            "required": False,
            "content": {"*/*": {"schema": {}}},
            "description": "the provider's own body (JSON, multipart/form-data, bytes), as sent",
        }
    return operation


def _simple(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    method: str = "get",
    public: bool = False,
    **more: Any,
) -> dict[str, Any]:
    operation = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        **more,
        "responses": responses,
    }
    if public:
        operation["security"] = []
    return {method: operation}


def _own_paths() -> dict[str, Any]:
    return {
        "/v1/models": _simple(
            "listModels",
            "models",
            "List the models: aliases and pinned catalog models",
            {"200": _ok(ref("ModelList"), LIMITS), "401": UNAUTHORIZED},
        ),
        "/v1/models/{model}": _simple(
            "retrieveModel",
            "models",
            "Retrieve one model",
            {
                "200": _ok(ref("Model"), LIMITS),
                "401": UNAUTHORIZED,
                "404": _error("no such alias or model (model_not_found)"),
            },
            parameters=[
                _path_parameter("model", PATH_TAIL, "an alias or a catalog model (may hold '/')")
            ],
        ),
        "/v1/usage": _simple(
            "getUsage",
            "usage",
            "Tokens, cost and budget of a month: this key's, or (admin) every key's",
            {
                "200": _ok(
                    {"oneOf": [ref("Usage"), ref("UsageOfEveryKey")]},
                    LIMITS,
                ),
                "400": _error("month is not YYYY-MM with a month 01 to 12 (invalid_value)"),
                "401": UNAUTHORIZED,
                "403": _error("a non-admin key asked for another key (permission_error)"),
                "503": _error(
                    "usage is kept in Redis, and it is unreachable (service_unavailable)",
                    _headers(**{"retry-after": "retry-after-if-any"}),
                ),
            },
            parameters=[
                {
                    "name": "month",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": MONTH_OR_EMPTY},
                    "description": "YYYY-MM, the month 01 to 12; absent or empty: the current "
                    "month (UTC)",
                },
                {
                    "name": "key",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "one key's usage by its name: admin keys for any key, other "
                    "keys only for their own; absent: an admin key gets every key's",
                },
            ],
        ),
        "/admin/cache/invalidate": _simple(
            "invalidateCache",
            "admin",
            "Invalidate cached answers (all, a model's, a key's, or a key's for a model)",
            {
                "200": _ok(ref("CacheInvalidation"), LIMITS),
                "400": _error(
                    "not a JSON object, a field not a string, an unknown model or key, or key "
                    "with cache.scope: global"
                ),
                "401": UNAUTHORIZED,
                "403": _error("not an admin key (permission_error)"),
            },
            method="post",
            requestBody=_json_request("CacheInvalidationRequest", required=False),
        ),
        "/healthz": _simple(
            "getHealth", "operations", "Liveness", {"200": _ok(ref("Health"))}, public=True
        ),
        "/readyz": _simple(
            "getReadiness",
            "operations",
            "Readiness: 503 while starting or draining",
            {
                "200": _ok(ref("Readiness")),
                "503": {**_ok(ref("Readiness")), "description": "starting or draining"},
            },
            public=True,
        ),
        "/metrics": _simple(
            "getMetrics",
            "operations",
            "Prometheus metrics (liftoff_*)",
            {
                "200": {
                    "description": "Prometheus' text exposition format",
                    "headers": EVERY_RESPONSE,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            public=True,
        ),
        "/openapi.json": _simple(
            "getOpenApiDocument",
            "operations",
            "This document",
            {"200": _ok({"type": "object"})},
            public=True,
        ),
    }


def openapi_document(config: GatewayConfig | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the gateway's routes; with `config`, its own models and
    limits (without, the defaults' limits and any model name)."""
    models = config.models if config is not None else None
    server = config.server if config is not None else ServerConfig()
    limit = server.max_body_bytes
    return {
        "openapi": "3.1.0",
        "info": {"title": "Liftoff gateway", "version": "0.1.0", "description": DESCRIPTION},
        "tags": TAGS,
        "security": [{"bearer": []}],
        "paths": {
            **_generation_paths(limit),
            **_stored_paths(limit),
            **_own_paths(),
            **_passthrough_paths(limit),
        },
        "components": {
            "headers": HEADERS,
            "responses": RESPONSES,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a client key issued by the gateway's operator",
                }
            },
            "schemas": {**own_schemas(), **provider_schemas(), **request_schemas(models)},
        },
    }
