"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from app import cache
from app.accounting import TokenCounter
from app.config import ModelsConfig
from app.endpoints.base import GenerationEndpoint
from app.schemas import ParsedRequest, validate_chat


class ChatEndpoint(GenerationEndpoint):
    name = "chat"
    path = "/v1/chat/completions"

    def validate(self, body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
        return validate_chat(body, models)

    def count(self, counter: TokenCounter, parsed: ParsedRequest) -> tuple[int, int]:
        encoding = parsed.spec.encoding
        body = parsed.body
        # Non-text parts are only bounded: the context check takes the fewest tokens they can
        # cost, limits and budgets reserve the most (never more than the context window).
        low, high = counter.count_message_bounds(body["messages"], encoding)
        for name in ("tools", "functions"):
            if isinstance(body.get(name), list):
                tools = counter.count_tools(body[name], encoding)
                low += tools
                high += tools
        return low, min(high, parsed.spec.context_window)

    def prompt_for_log(self, parsed: ParsedRequest) -> Any:
        return parsed.body.get("messages")

    def moderation_text(self, parsed: ParsedRequest) -> str:
        parts: list[str] = []
        for message in parsed.body["messages"]:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
        return "\n".join(parts)

    def canonical(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return cache.canonical_request("chat", body, model)

    def completion_for_log(self, response: dict[str, Any]) -> Any:
        return [(c.get("message") or {}).get("content") for c in response.get("choices") or []]
