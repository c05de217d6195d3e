"""POST /v1/completions (legacy text completions; single prompts may be batched)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from app import cache
from app.accounting import TokenCounter
from app.config import ModelsConfig
from app.context import Ctx
from app.endpoints.base import GenerationEndpoint
from app.schemas import ParsedRequest, validate_completions

if TYPE_CHECKING:
    from app.pipeline import Pipeline


class CompletionsEndpoint(GenerationEndpoint):
    name = "completions"
    path = "/v1/completions"

    def validate(self, body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
        return validate_completions(body, models)

    def count(self, counter: TokenCounter, parsed: ParsedRequest) -> tuple[int, int]:
        counts = [counter.count_text(p, parsed.spec.encoding) for p in parsed.prompts]
        return max(counts), sum(counts)

    def prompt_for_log(self, parsed: ParsedRequest) -> Any:
        return parsed.prompts

    def moderation_text(self, parsed: ParsedRequest) -> str:
        return "\n".join(parsed.prompts)

    def canonical(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return cache.canonical_request("completions", body, model)

    def completion_for_log(self, response: dict[str, Any]) -> Any:
        return [c.get("text") for c in response.get("choices") or []]

    async def call(
        self, pipeline: Pipeline, parsed: ParsedRequest, body: dict[str, Any], ctx: Ctx
    ) -> tuple[bytes, str]:
        """Batched with concurrent single-prompt requests of the same parameters when enabled."""
        batcher = pipeline.batcher
        if batcher is None or len(parsed.prompts) != 1 or pipeline.forward_headers(ctx):
            return await super().call(pipeline, parsed, body, ctx)
        params = {k: v for k, v in body.items() if k not in ("model", "prompt")}
        started = time.perf_counter()
        try:
            result = await batcher.submit(parsed.model, params, parsed.prompts[0], ctx.stats.trace)
        finally:
            ctx.waited_s += time.perf_counter() - started
        return orjson.dumps(result), str(result.get("model") or parsed.model)
