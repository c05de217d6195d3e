"""Batching of concurrent /v1/embeddings calls with the same parameters into one provider call.

The guide's batching practice for embeddings: callers asking for the same model, dimensions,
encoding and end user within `window_ms` of the first one share one provider request, up to the
provider's per-request limits (2,048 inputs, 300,000 tokens). The provider answers with the
vectors indexed over the concatenated inputs; each caller gets back its own, re-indexed from 0,
and its share of the usage by its inputs' token counts (the shares sum to the provider's total).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.batching import MAX_OPEN_BATCHES, BatchSplitError, WindowedBatches, apportion

# What one provider request may carry (OpenAI's documented limits for /v1/embeddings).
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000

# (model, parameters, inputs, the callers' tags), as app/batching.py's SendBatch.
SendEmbeddings = Callable[[str, dict[str, Any], list[Any], list[Any]], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class EmbeddingResult:
    """One caller's vectors (index from 0, in its order) and its inputs' token shares."""

    data: list[dict[str, Any]]
    tokens: list[int]
    model: str


@dataclass
class _Batch:
    model: str
    params: dict[str, Any]
    inputs: list[Any] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    # (first input, inputs, the caller's future, its tag)
    callers: list[tuple[int, int, asyncio.Future[EmbeddingResult], Any]] = field(
        default_factory=list
    )


class EmbeddingBatcher:
    """Groups concurrent embedding calls by (model, parameters) and splits the answers back."""

    def __init__(
        self,
        window_ms: float,
        send: SendEmbeddings,
        max_inputs: int = MAX_INPUTS_PER_REQUEST,
        max_tokens: int = MAX_TOKENS_PER_REQUEST,
        max_open_batches: int = MAX_OPEN_BATCHES,
    ) -> None:
        self.window_s = window_ms / 1000
        self.max_inputs = max_inputs
        self.max_tokens = max_tokens
        self._send = send
        self._batches: WindowedBatches[_Batch] = WindowedBatches(
            self.window_s, max_open_batches, self._flush
        )
        self.requests_in = 0
        self.upstream_calls = 0

    async def submit(
        self,
        model: str,
        params: dict[str, Any],
        inputs: list[Any],
        tokens: list[int],
        tag: Any = None,
    ) -> EmbeddingResult:
        """The vectors of `inputs`, as if this caller had called the provider alone; `tag` goes
        to the send with them."""
        self.requests_in += 1
        key = (model, orjson.dumps(params, option=orjson.OPT_SORT_KEYS))
        batch = self._batches.get(key)
        if batch is not None and not self._fits(batch, inputs, tokens):
            self._batches.close(key, batch)  # full: it leaves now, this caller opens the next one
            batch = None
        if batch is None:
            batch = _Batch(model, params)
            if not self._fits(batch, inputs, tokens) or not self._batches.open(key, batch):
                return await self._alone(model, params, inputs, tokens, tag)
        waiter: asyncio.Future[EmbeddingResult] = asyncio.get_running_loop().create_future()
        batch.callers.append((len(batch.inputs), len(inputs), waiter, tag))
        batch.inputs.extend(inputs)
        batch.tokens.extend(tokens)
        if len(batch.inputs) >= self.max_inputs:
            self._batches.close(key, batch)
        # A cancelled caller cancels only its own future; the batch goes on for the others.
        return await waiter

    async def close(self) -> None:
        """Send every open batch now and wait for the calls (graceful shutdown)."""
        await self._batches.drain()

    def _fits(self, batch: _Batch, inputs: list[Any], tokens: list[int]) -> bool:
        return (
            len(batch.inputs) + len(inputs) <= self.max_inputs
            and sum(batch.tokens) + sum(tokens) <= self.max_tokens
        )

    async def _alone(
        self, model: str, params: dict[str, Any], inputs: list[Any], tokens: list[int], tag: Any
    ) -> EmbeddingResult:
        self.upstream_calls += 1
        response = await self._send(model, params, inputs, [tag])
        return split(response, [(0, len(inputs))], tokens, model)[0]

    async def _flush(self, batch: _Batch) -> None:
        # Callers that gave up before the window closed cost nothing.
        live = [c for c in batch.callers if not c[2].done()]
        if not live:
            return
        inputs: list[Any] = []
        tokens: list[int] = []
        spans: list[tuple[int, int]] = []
        for start, count, *_ in live:
            spans.append((len(inputs), count))
            inputs.extend(batch.inputs[start : start + count])
            tokens.extend(batch.tokens[start : start + count])
        self.upstream_calls += 1
        try:
            response = await self._send(batch.model, batch.params, inputs, [c[3] for c in live])
            results = split(response, spans, tokens, batch.model)
        except Exception as exc:
            for _, _, waiter, _ in live:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, _, waiter, _ in live:
                waiter.cancel()
            raise
        for (_, _, waiter, _), result in zip(live, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)


def split(
    response: dict[str, Any], spans: list[tuple[int, int]], tokens: list[int], model: str
) -> list[EmbeddingResult]:
    """The provider's answer to concatenated inputs, cut back into each caller's span."""
    total = sum(count for _, count in spans)
    by_index: list[dict[str, Any] | None] = [None] * total
    for item in response.get("data") or []:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < total or by_index[index] is not None:
            raise BatchSplitError(f"embedding index {index!r} is out of range or repeated")
        by_index[index] = item
    if any(item is None for item in by_index):
        raise BatchSplitError(f"the provider answered fewer than {total} embeddings")
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    shares = apportion(int(usage.get("prompt_tokens", sum(tokens))), tokens)
    served_by = str(response.get("model") or model)
    return [
        EmbeddingResult(
            [{**by_index[start + i], "index": i} for i in range(count)],  # type: ignore[dict-item]
            shares[start : start + count],
            served_by,
        )
        for start, count in spans
    ]
