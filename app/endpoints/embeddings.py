"""POST /v1/embeddings: cached per input, batched across concurrent callers.

A list of 100 inputs of which 90 are cached sends only the 10 others to the provider and answers
the 100 in order. Each input's cache entry is keyed by the model, the dimensions, the encoding
format and the input itself (the vector does not depend on the rest of the list), scoped to the
client key like every cache entry. Inputs that miss are sent with those of concurrent callers of
the same parameters in one provider call (app/embedding_batching.py). Limits and budgets reserve
the whole input's tokens, and settle on what the provider billed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from app.accounting import TokenCounter, TokenUsage
from app.cache import Lookup
from app.config import ModelsConfig
from app.context import Ctx
from app.embedding_batching import (
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    EmbeddingResult,
    split,
)
from app.endpoints.base import GenerationEndpoint
from app.errors import InvalidRequest
from app.schemas import ParsedRequest, as_integer, resolve_model

if TYPE_CHECKING:
    from app.pipeline import Pipeline

log = logging.getLogger("liftoff.gateway")

ENCODING_FORMATS = ("float", "base64")
# Token ids are 32-bit (vocabularies have a few hundred thousand entries).
MAX_TOKEN_ID = 2**31 - 1
# Fields that do not change a vector (the end user id is forwarded, hashed, but keys nothing).
_NOT_OUTPUT = frozenset({"input", "model", "user"})


def _inputs(raw: Any) -> list[Any]:
    """The request's inputs as a list of strings or token arrays, as OpenAI accepts them."""
    if isinstance(raw, str):
        raw = [raw]
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        raw = [raw]  # one token array
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(
            "Invalid 'input': expected a non-empty string, a list of strings, a token array "
            "or a list of token arrays.",
            "input",
            "invalid_type" if not isinstance(raw, list) else "invalid_value",
        )
    if len(raw) > MAX_INPUTS_PER_REQUEST:
        raise InvalidRequest(
            f"Invalid 'input': {len(raw)} inputs; at most {MAX_INPUTS_PER_REQUEST} per request.",
            "input",
            "invalid_value",
        )
    for position, item in enumerate(raw):
        text = isinstance(item, str) and item != ""
        tokens = isinstance(item, list) and item and all(_is_token(t) for t in item)
        if tokens:
            raw[position] = [as_integer(t) for t in item]  # 2.0 goes on as the token 2
        if not (text or tokens):
            raise InvalidRequest(
                f"Invalid 'input[{position}]': expected a non-empty string or a non-empty array "
                f"of token ids (integers 0 to {MAX_TOKEN_ID}).",
                f"input[{position}]",
                "invalid_value",
            )
    return raw


def _is_token(value: Any) -> bool:
    token = as_integer(value)
    return token is not None and 0 <= token <= MAX_TOKEN_ID


class EmbeddingsEndpoint(GenerationEndpoint):
    name = "embeddings"
    path = "/v1/embeddings"
    moderated = False  # vectors are not content shown to anyone
    caches_items = True  # the cache works per input here, not per request

    def validate(self, body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
        requested, model, spec = resolve_model(body, models, "embedding")
        inputs = _inputs(body.get("input"))
        encoding = body.get("encoding_format")
        if encoding is not None and encoding not in ENCODING_FORMATS:
            raise InvalidRequest(
                "Invalid 'encoding_format': expected 'float' or 'base64'.",
                "encoding_format",
                "invalid_value",
            )
        dimensions = body.get("dimensions")
        if dimensions is not None:
            dimensions = body["dimensions"] = as_integer(dimensions)
            if dimensions is None:
                raise InvalidRequest(
                    "Invalid type for 'dimensions': expected an integer.",
                    "dimensions",
                    "invalid_type",
                )
            if not spec.shortenable:
                raise InvalidRequest(
                    f"The model '{model}' does not support 'dimensions'.",
                    "dimensions",
                    "invalid_value",
                )
            native = spec.dimensions or 0
            if not 1 <= dimensions <= native:
                raise InvalidRequest(
                    f"Invalid value for 'dimensions': {dimensions}; allowed is 1 to {native}.",
                    "dimensions",
                    "invalid_value",
                )
        if body.get("user") is not None and not isinstance(body.get("user"), str):
            raise InvalidRequest("Invalid type for 'user': expected a string.", "user")
        return ParsedRequest(
            "embeddings", body, requested, model, spec, False, False, 1, 1, prompts=inputs
        )

    def count(self, counter: TokenCounter, parsed: ParsedRequest) -> tuple[int, int]:
        encoding = parsed.spec.encoding
        parsed.item_tokens = [
            counter.count_text(item, encoding) if isinstance(item, str) else len(item)
            for item in parsed.prompts
        ]
        return max(parsed.item_tokens), sum(parsed.item_tokens)

    def limit_tokens(self, parsed: ParsedRequest, prompt_tokens: int, policy: str) -> None:
        parsed.prompt_tokens = prompt_tokens
        window = parsed.spec.context_window
        if prompt_tokens > window:
            position = parsed.item_tokens.index(prompt_tokens)
            raise InvalidRequest(
                f"This model's maximum context length is {window} tokens, however input "
                f"{position} has {prompt_tokens} tokens. Please reduce the length of the input.",
                "input",
                "context_length_exceeded",
            )
        total = sum(parsed.item_tokens)
        if total > MAX_TOKENS_PER_REQUEST:
            raise InvalidRequest(
                f"Requested {total} tokens; at most {MAX_TOKENS_PER_REQUEST} tokens are allowed "
                "per request.",
                "input",
                "max_tokens_per_request",
            )
        parsed.max_tokens = 0  # nothing is generated

    def prompt_for_log(self, parsed: ParsedRequest) -> Any:
        return parsed.prompts

    def moderation_text(self, parsed: ParsedRequest) -> str:
        return ""

    def canonical(self, body: dict[str, Any], model: str) -> dict[str, Any] | None:
        return None  # cached per input, in `respond`

    def completion_for_log(self, response: dict[str, Any]) -> Any:
        return f"{len(response.get('data') or [])} embeddings"

    async def respond(
        self,
        pipeline: Pipeline,
        parsed: ParsedRequest,
        body: dict[str, Any],
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        found: Lookup,
    ) -> Response:
        items, tokens = parsed.prompts, parsed.item_tokens
        params = {k: v for k, v in body.items() if k not in ("input", "model")}
        use_cache = pipeline.cache_mode(ctx, True) == "use"
        keys: list[str | None] = [None] * len(items)
        cached: list[dict[str, Any] | None] = [None] * len(items)
        if use_cache:
            keys, cached = await self._lookup(pipeline, parsed, params, ctx.key)
        missing = [i for i, entry in enumerate(cached) if entry is None]
        fresh: EmbeddingResult | None = None
        if missing:
            fresh = await self._embed(
                pipeline,
                parsed,
                params,
                [items[i] for i in missing],
                [tokens[i] for i in missing],
                ctx,
            )
        data: list[Any] = [None] * len(items)
        billed: list[int] = list(tokens)
        for i, entry in enumerate(cached):
            if entry is not None:
                data[i] = {"object": "embedding", "index": i, "embedding": entry["embedding"]}
                billed[i] = entry["tokens"]
        if fresh is not None:
            for i, item, share in zip(missing, fresh.data, fresh.tokens, strict=True):
                data[i] = {**item, "index": i}
                billed[i] = share
        self._account(pipeline, parsed, reservation, ctx, cached, missing, fresh, billed)
        if fresh is not None and use_cache:
            pipeline.after(self._store(pipeline, keys, missing, fresh))
        hits = len(items) - len(missing)
        metrics = pipeline.metrics
        if hits:
            metrics.child(metrics.cache, "hit").inc(hits)
        if missing:
            metrics.child(metrics.cache, "miss" if use_cache else "bypass").inc(len(missing))
        ctx.cache = "hit" if not missing else "miss" if use_cache else "bypass"
        ctx.headers["x-liftoff-cache"] = ctx.cache
        ctx.headers["x-liftoff-cache-hits"] = f"{hits}/{len(items)}"
        total = sum(billed)
        answer = {
            "object": "list",
            "data": data,
            "model": fresh.model if fresh is not None else parsed.model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        pipeline.log_completion(self, ctx, answer)
        return Response(orjson.dumps(answer), 200, media_type="application/json")

    def _account(
        self,
        pipeline: Pipeline,
        parsed: ParsedRequest,
        reservation: Any,
        ctx: Ctx,
        cached: list[dict[str, Any] | None],
        missing: list[int],
        fresh: EmbeddingResult | None,
        billed: list[int],
    ) -> None:
        prices, metrics = pipeline.prices, pipeline.metrics
        saved_tokens = sum(billed[i] for i, entry in enumerate(cached) if entry is not None)
        saved = prices.cost_of(parsed.model, TokenUsage(saved_tokens))
        if saved_tokens:
            metrics.child(metrics.cache_saved_tokens, parsed.model).inc(saved_tokens)
            metrics.child(metrics.cache_saved_usd, parsed.model).inc(saved)
        if fresh is None:  # every input from the cache: the provider was not called
            if reservation is not None:
                pipeline.settle(reservation, TokenUsage(saved_tokens), 0.0, saved)
            return
        usage = TokenUsage(sum(billed[i] for i in missing))
        cost = prices.cost_of(fresh.model, usage)
        if reservation is not None:
            pipeline.settle(reservation, usage, cost)
        metrics.count_usage(ctx.key, fresh.model, usage, cost)

    @staticmethod
    def _item_canonical(parsed: ParsedRequest, params: dict[str, Any], item: Any) -> dict:
        canonical = {k: v for k, v in params.items() if k not in _NOT_OUTPUT and v is not None}
        canonical.setdefault("encoding_format", "float")
        if canonical.get("dimensions") == parsed.spec.dimensions:
            del canonical["dimensions"]  # the native length: the same vector as no dimensions
        return {"endpoint": "embeddings", "model": parsed.model, "input": item, **canonical}

    async def _lookup(
        self, pipeline: Pipeline, parsed: ParsedRequest, params: dict[str, Any], key_name: str
    ) -> tuple[list[str | None], list[dict[str, Any] | None]]:
        """Each input's cache key and entry; a failing cache is all misses that store nothing."""
        cache = pipeline.cache
        scope = key_name if pipeline.config.cache.scope == "key" else None
        misses: list[dict[str, Any] | None] = [None] * len(parsed.prompts)
        try:
            keys = [
                await cache.key_for(self._item_canonical(parsed, params, item), scope)
                for item in parsed.prompts
            ]
            # Issued together: the pipelined Redis client sends them in one write.
            values = await asyncio.gather(*(cache.get(key) for key in keys))
        except Exception as exc:
            log.warning("cache lookup failed: %s", type(exc).__name__)
            return [None] * len(parsed.prompts), misses
        return keys, [None if v is None else orjson.loads(v) for v in values]

    async def _embed(
        self,
        pipeline: Pipeline,
        parsed: ParsedRequest,
        params: dict[str, Any],
        inputs: list[Any],
        tokens: list[int],
        ctx: Ctx,
    ) -> EmbeddingResult:
        forwarded = pipeline.forward_headers(ctx)
        batcher = pipeline.gateway.embedding_batcher
        if batcher is not None and forwarded is None:
            started = time.perf_counter()
            try:
                return await batcher.submit(parsed.model, params, inputs, tokens, ctx.stats.trace)
            finally:
                ctx.waited_s += time.perf_counter() - started
        body = {**params, "model": parsed.model, "input": inputs}
        reply = await pipeline.upstream.post_json(
            self.path, body, parsed.model, ctx.stats, forwarded
        )
        return split(reply.json(), [(0, len(inputs))], tokens, parsed.model)[0]

    @staticmethod
    async def _store(
        pipeline: Pipeline, keys: list[str | None], missing: list[int], fresh: EmbeddingResult
    ) -> None:
        writes = [
            pipeline.cache.set(
                keys[i], orjson.dumps({"embedding": item["embedding"], "tokens": share})
            )
            for i, item, share in zip(missing, fresh.data, fresh.tokens, strict=True)
            if keys[i] is not None
        ]
        await asyncio.gather(*writes)
