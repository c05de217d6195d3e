"""Validation of request bodies for /v1/chat/completions and /v1/completions.

Hand-written checks (no model classes on the hot path) that name the offending parameter and
what is allowed, in OpenAI's wording where OpenAI has one. Only the fields the gateway knows are
checked; any other field is forwarded unchanged (the provider adds parameters faster than any
gateway, and refuses what it does not know). The body is forwarded with the resolved model and
the effective completion cap: the client's own ``max_tokens``/``max_completion_tokens`` under the
name it used, or the default written as ``max_completion_tokens`` for chat (the name every current
model accepts; reasoning models refuse ``max_tokens``) and ``max_tokens`` for completions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.config import ModelsConfig, ModelSpec
from app.errors import InvalidRequest, ModelNotFound, PayloadTooLarge, UnsupportedMediaType, echo

# The endpoint kind a request was validated for (app/endpoints/): "chat", "completions", ...
Kind = str

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# OpenAI documents no maximum number of `logit_bias` entries (its reference gives only the
# value range, -100 to 100). 1024 covers any realistic ban or boost list (a word is one to three
# tokens) while a hostile map of thousands of keys is refused before it is walked, hashed into
# the cache key and forwarded.
MAX_LOGIT_BIAS_ENTRIES = 1024
LOGIT_BIAS_RANGE = 100


@dataclass(slots=True)
class ParsedRequest:
    kind: Kind
    body: dict[str, Any]
    requested_model: str
    model: str
    spec: ModelSpec
    stream: bool
    include_usage: bool
    n: int
    best_of: int
    prompts: list[Any] = field(default_factory=list)  # completions: strings; embeddings: inputs
    item_tokens: list[int] = field(default_factory=list)  # embeddings: each input's tokens
    max_tokens_field: str = "max_tokens"  # the name the cap is forwarded under
    max_tokens: int = 0
    prompt_tokens: int = 0

    @property
    def completions_per_prompt(self) -> int:
        return max(self.n, self.best_of)

    @property
    def worst_case_output_tokens(self) -> int:
        return self.max_tokens * self.completions_per_prompt * max(1, len(self.prompts))


def check_envelope(content_type: str | None, content_length: int | None, max_bytes: int) -> None:
    """Reject a wrong content type (415) or a declared size over the limit (413) before reading."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType()
    if content_length is not None and content_length > max_bytes:
        raise PayloadTooLarge(max_bytes)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty: send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a valid JSON object."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


# --- field checks ------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(body: dict, key: str, lo: float, hi: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if not _is_number(value):
        raise InvalidRequest(
            f"Invalid type for '{key}': expected a number, got {type(value).__name__}.",
            key,
            "invalid_type",
        )
    if not lo <= value <= hi:
        raise InvalidRequest(
            f"Invalid value for '{key}': {value} is out of range; allowed is {lo} to {hi}.",
            key,
            "invalid_value",
        )


# Whole floats up to this size are exact integers (a double's 53-bit mantissa); past it, a
# number too large for 64 bits that the JSON parser read as a float is not a known integer.
MAX_EXACT_FLOAT = 2**53


def as_integer(value: Any) -> int | None:
    """`value` as an int when JSON would call it an integer (2 or 2.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_FLOAT:
        return int(value)
    return None


def _integer(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    """An integer field, checked; a whole float (2.0) is forwarded as the integer it is."""
    raw = body.get(key)
    if raw is None:
        return None
    value = as_integer(raw)
    if value is None:
        raise InvalidRequest(
            f"Invalid type for '{key}': expected an integer, got {type(raw).__name__}.",
            key,
            "invalid_type",
        )
    body[key] = value
    if value < lo or (hi is not None and value > hi):
        allowed = f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise InvalidRequest(
            f"Invalid value for '{key}': {value}; allowed is {allowed}.", key, "invalid_value"
        )
    return value


def _boolean(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(
            f"Invalid type for '{key}': expected a boolean, got {type(value).__name__}.",
            key,
            "invalid_type",
        )
    return value


def _string(body: dict, key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{key}'.", key, "missing_required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            f"Invalid type for '{key}': expected a string, got {type(value).__name__}.",
            key,
            "invalid_type",
        )
    return value


def _typed(body: dict, key: str, kinds: tuple[type, ...], label: str) -> None:
    value = body.get(key)
    if value is not None and not isinstance(value, kinds):
        raise InvalidRequest(
            f"Invalid type for '{key}': expected {label}, got {type(value).__name__}.",
            key,
            "invalid_type",
        )


def _stop(body: dict, max_stop: int) -> None:
    value = body.get("stop")
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest(
            "Invalid type for 'stop': expected a string or a list of strings.",
            "stop",
            "invalid_type",
        )
    if len(value) > max_stop:
        raise InvalidRequest(
            f"Invalid 'stop': {len(value)} sequences given; at most {max_stop} are allowed.",
            "stop",
            "invalid_value",
        )


def _logit_bias(body: dict) -> None:
    value = body.get("logit_bias")
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Invalid type for 'logit_bias': expected an object, got {type(value).__name__}.",
            "logit_bias",
            "invalid_type",
        )
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidRequest(
            f"Invalid 'logit_bias': {len(value)} entries given; at most "
            f"{MAX_LOGIT_BIAS_ENTRIES} are allowed.",
            "logit_bias",
            "invalid_value",
        )
    for token, bias in value.items():
        # isascii: str.isdigit alone accepts digits of other scripts ("²", "٣").
        if not (token.isascii() and token.isdigit()):
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {echo(token)}. You should only be submitting "
                "non-negative integers.",
                "logit_bias",
                "invalid_value",
            )
        if not _is_number(bias):
            raise InvalidRequest(
                f"Invalid type for 'logit_bias.{echo(token)}': expected a number, got "
                f"{type(bias).__name__}.",
                "logit_bias",
                "invalid_type",
            )
        if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
            raise InvalidRequest(
                f"Invalid value for 'logit_bias.{echo(token)}': {bias} is out of range; allowed is "
                f"-{LOGIT_BIAS_RANGE} to {LOGIT_BIAS_RANGE}.",
                "logit_bias",
                "invalid_value",
            )


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise InvalidRequest(
            "Invalid type for 'stream_options': expected an object.",
            "stream_options",
            "invalid_type",
        )
    if not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is true.",
            "stream_options",
            "invalid_value",
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidRequest(
            "Invalid type for 'stream_options.include_usage': expected a boolean.",
            "stream_options.include_usage",
            "invalid_type",
        )
    return stream, include


def resolve_model(
    body: dict, models: ModelsConfig, kind: str = "chat"
) -> tuple[str, str, ModelSpec]:
    """(requested name, pinned catalog name, spec) of a model of `kind` ("chat" or "embedding")."""
    requested = _string(body, "model", required=True)
    assert requested is not None
    resolved = models.resolve(requested)
    if resolved is None:
        raise ModelNotFound(requested)
    spec = models.catalog[resolved]
    if spec.kind != kind:
        message = (
            f"The model '{echo(requested)}' is an embedding model: use it with /v1/embeddings."
            if spec.kind == "embedding"
            else f"The model '{echo(requested)}' is not an embedding model."
        )
        raise InvalidRequest(message, "model", "invalid_value")
    return requested, resolved, spec


def _common(body: dict, models: ModelsConfig) -> tuple[int, bool, bool]:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    n = _integer(body, "n", 1, models.max_n) or 1
    _integer(body, "seed", -(2**63), 2**63 - 1)
    _string(body, "user")
    _stop(body, models.max_stop)
    _logit_bias(body)
    stream, include_usage = _stream_flags(body)
    return n, stream, include_usage


# --- request kinds -----------------------------------------------------------------------------


def _messages(body: dict) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required"
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "Invalid 'messages': expected a non-empty array of message objects.",
            "messages",
            "invalid_value",
        )
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid type for '{param}': expected an object.", param, "invalid_type"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a dict or list role is unhashable
            raise InvalidRequest(
                f"Invalid value for '{param}.role': {echo(repr(role))}; "
                f"allowed are {sorted(ROLES)}.",
                f"{param}.role",
                "invalid_value",
            )
        content = message.get("content")
        if content is None and role in ("system", "developer", "user"):
            raise InvalidRequest(
                f"Missing required parameter: '{param}.content'.",
                f"{param}.content",
                "missing_required",
            )
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"Invalid type for '{param}.content': expected a string or an array of parts.",
                f"{param}.content",
                "invalid_type",
            )


def validate_chat(body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
    requested, resolved, spec = resolve_model(body, models)
    _messages(body)
    n, stream, include_usage = _common(body, models)
    _typed(body, "tools", (list,), "an array")
    _typed(body, "response_format", (dict,), "an object")
    _boolean(body, "logprobs")
    _integer(body, "top_logprobs", 0, 20)
    field_name = "max_completion_tokens"
    if body.get("max_tokens") is not None:
        if body.get("max_completion_tokens") is not None:
            raise InvalidRequest(
                "Set only one of 'max_tokens' and 'max_completion_tokens'.",
                "max_tokens",
                "invalid_value",
            )
        field_name = "max_tokens"
    requested_max = _integer(body, field_name, 1)
    parsed = ParsedRequest(
        "chat",
        body,
        requested,
        resolved,
        spec,
        stream,
        include_usage,
        n,
        1,
        max_tokens_field=field_name,
    )
    parsed.max_tokens = requested_max or 0
    return parsed


def validate_completions(body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
    requested, resolved, spec = resolve_model(body, models)
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", "prompt", "missing_required")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise InvalidRequest(
            "Invalid 'prompt': expected a string or a non-empty array of strings.",
            "prompt",
            "invalid_type",
        )
    if len(prompts) > models.max_prompts:
        raise InvalidRequest(
            f"Invalid 'prompt': {len(prompts)} prompts given; at most {models.max_prompts} are "
            "allowed in one request.",
            "prompt",
            "invalid_value",
        )
    n, stream, include_usage = _common(body, models)
    given = _integer(body, "best_of", 1, models.max_best_of)
    best_of = given or n  # the provider's default: one candidate per choice
    if best_of < n:
        raise InvalidRequest(
            f"Invalid 'best_of': {best_of} must be greater than or equal to 'n' ({n}).",
            "best_of",
            "invalid_value",
        )
    if stream and given is not None and given > 1:
        raise InvalidRequest(
            "'best_of' greater than 1 cannot be used with 'stream'.", "best_of", "invalid_value"
        )
    _boolean(body, "echo")
    _integer(body, "logprobs", 0, 5)
    _string(body, "suffix")
    parsed = ParsedRequest(
        "completions", body, requested, resolved, spec, stream, include_usage, n, best_of, prompts
    )
    parsed.max_tokens = _integer(body, "max_tokens", 1) or 0
    return parsed


def apply_token_limits(parsed: ParsedRequest, prompt_tokens: int, policy: str) -> None:
    """Default, clamp or reject max_tokens against the model and its context window.

    ``prompt_tokens`` is the largest single prompt's count (each prompt of a batch has its own
    context). Sets ``parsed.max_tokens`` and writes it into the forwarded body.
    """
    spec = parsed.spec
    parsed.prompt_tokens = prompt_tokens
    param = {"chat": "messages", "responses": "input"}.get(parsed.kind, "prompt")
    if prompt_tokens >= spec.context_window:
        raise InvalidRequest(
            f"This model's maximum context length is {spec.context_window} tokens. However, your "
            f"{param} resulted in {prompt_tokens} tokens. Please reduce the length of the {param}.",
            param,
            "context_length_exceeded",
        )
    room = spec.context_window - prompt_tokens
    explicit = parsed.max_tokens > 0
    wanted = parsed.max_tokens if explicit else spec.default_max_tokens
    if wanted > spec.max_output_tokens:
        if policy == "reject":
            raise InvalidRequest(
                f"Invalid '{parsed.max_tokens_field}': {wanted} is greater than the maximum of "
                f"{spec.max_output_tokens} output tokens for model {parsed.requested_model}.",
                parsed.max_tokens_field,
                "invalid_value",
            )
        wanted = spec.max_output_tokens
    if wanted > room:
        if explicit and policy == "reject":
            raise InvalidRequest(
                f"This model's maximum context length is {spec.context_window} tokens. However, "
                f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the {param}, "
                f"{wanted} for the completion). Please reduce the length of the {param} or the "
                f"completion.",
                param,
                "context_length_exceeded",
            )
        wanted = room
    parsed.max_tokens = wanted
    parsed.body[parsed.max_tokens_field] = wanted
