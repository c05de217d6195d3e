"""The OpenTelemetry GenAI semantic conventions, as Liftoff's requests and answers map onto them.

Names and well-known values are those of the GenAI conventions (the `semantic-conventions-genai`
registry: spans, metrics, the OpenAI refinements) and of the stable HTTP/server conventions.
Only what the gateway already holds is read: nothing here parses a body a second time.
Prompts and completions appear only through :func:`input_messages` / :func:`output_messages`,
which app/telemetry.py calls only when ``server.log_prompts`` is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from app.accounting import TokenUsage
from app.schemas import ParsedRequest

# gen_ai.operation.name per endpoint kind (GenerationEndpoint.name). The Responses API is an
# inference ("chat") told apart by openai.api.type, as the OpenAI refinement says.
OPERATIONS = {
    "chat": "chat",
    "completions": "text_completion",
    "responses": "chat",
    "embeddings": "embeddings",
}
OPENAI_API_TYPES = {"chat": "chat_completions", "responses": "responses"}
# gen_ai.provider.name per provider kind (app/providers/).
PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "bedrock": "aws.bedrock"}

# The conventions' ExplicitBucketBoundaries.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

# Request fields recorded as gen_ai.request.* when the client set them (numbers only).
_NUMERIC_REQUEST_FIELDS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}
_OUTPUT_TYPES = {"text": "text", "json_object": "json", "json_schema": "json"}
# A Responses API answer's status/incomplete reason, as the finish reasons chat reports.
_RESPONSE_FINISH = {"completed": "stop", "max_output_tokens": "length"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def request_attributes(parsed: ParsedRequest) -> dict[str, Any]:
    """gen_ai.request.* (and openai.request.*) of a validated request, as sent upstream."""
    body = parsed.body
    attributes: dict[str, Any] = {
        "gen_ai.request.model": parsed.model,
        "gen_ai.request.stream": parsed.stream,
    }
    if parsed.requested_model != parsed.model:
        attributes["liftoff.requested_model"] = parsed.requested_model
    if parsed.max_tokens > 0:
        attributes["gen_ai.request.max_tokens"] = parsed.max_tokens
    for field, name in _NUMERIC_REQUEST_FIELDS.items():
        value = body.get(field)
        if _number(value):
            attributes[name] = value
    if parsed.n != 1:
        attributes["gen_ai.request.choice.count"] = parsed.n
    stop = body.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    response_format = body.get("response_format") or (body.get("text") or {}).get("format")
    if isinstance(response_format, dict) and response_format.get("type") in _OUTPUT_TYPES:
        attributes["gen_ai.output.type"] = _OUTPUT_TYPES[response_format["type"]]
    if isinstance(body.get("encoding_format"), str):
        attributes["gen_ai.request.encoding_formats"] = [body["encoding_format"]]
    if isinstance(body.get("service_tier"), str):
        attributes["openai.request.service_tier"] = body["service_tier"]
    return attributes


def finish_reasons(response: Mapping[str, Any]) -> list[str]:
    """Why generation stopped, one reason per choice (a Responses answer: one)."""
    choices = response.get("choices")
    if isinstance(choices, list):
        return [
            c["finish_reason"]
            for c in choices
            if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
        ]
    status = response.get("status")
    if not isinstance(status, str):
        return []
    if status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return [_RESPONSE_FINISH.get(reason, reason)] if isinstance(reason, str) else []
    return [_RESPONSE_FINISH.get(status, status)]


def response_attributes(response: Mapping[str, Any]) -> dict[str, Any]:
    """gen_ai.response.* (and openai.response.*) of an answer."""
    attributes: dict[str, Any] = {}
    for field, name in (
        ("id", "gen_ai.response.id"),
        ("model", "gen_ai.response.model"),
        ("service_tier", "openai.response.service_tier"),
        ("system_fingerprint", "openai.response.system_fingerprint"),
    ):
        value = response.get(field)
        if isinstance(value, str):
            attributes[name] = value
    reasons = finish_reasons(response)
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons
    return attributes


def usage_attributes(usage: TokenUsage) -> dict[str, int]:
    attributes = {
        "gen_ai.usage.input_tokens": usage.prompt,
        "gen_ai.usage.output_tokens": usage.completion,
    }
    if usage.cached_input:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input
    if usage.reasoning:
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
    return attributes


# --- opt-in content (server.log_prompts) ------------------------------------------------------

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                parts.append({"type": "text", "content": part.get("text", "")})
            elif isinstance(part, dict):
                parts.append({"type": str(part.get("type", "unknown"))})  # media: kind only
            else:
                parts.extend(_parts(part))
        return parts
    if content is None:
        return []
    return [{"type": "text", "content": orjson.dumps(content).decode()}]


def input_messages(prompt: Any) -> tuple[str, str | None]:
    """(gen_ai.input.messages, gen_ai.system_instructions or None) as JSON, from what the
    endpoint logs as its prompt (chat messages, completion or embedding inputs, or a Responses
    request's instructions and input)."""
    instructions = None
    if isinstance(prompt, dict) and "input" in prompt:
        if isinstance(prompt.get("instructions"), str):
            instructions = orjson.dumps(_parts(prompt["instructions"])).decode()
        prompt = prompt["input"]
    items = prompt if isinstance(prompt, list) else [prompt]
    messages = [
        {"role": str(item["role"]), "parts": _parts(item.get("content"))}
        if isinstance(item, dict) and "role" in item
        else {"role": "user", "parts": _parts(item)}
        for item in items
    ]
    return orjson.dumps(messages).decode(), instructions


def output_messages(completion: Any, reasons: list[str]) -> str:
    """gen_ai.output.messages as JSON, from what the endpoint logs as its completion."""
    outputs = completion if isinstance(completion, list) else [completion]
    messages = []
    for i, output in enumerate(outputs):
        message: dict[str, Any] = {"role": "assistant", "parts": _parts(output)}
        if i < len(reasons):
            message["finish_reason"] = reasons[i]
        messages.append(message)
    return orjson.dumps(messages).decode()
