"""Batching of concurrent single-prompt /v1/completions requests into one upstream call.

Requests for the same model with identical parameters that arrive within `window_ms` of the first
one are sent upstream as one request with a list of up to `max_batch` prompts. The provider answers
with choices indexed `prompt_idx * n + i`; each caller gets back its own choices re-indexed from 0
and its own share of the usage, so accounting stays per caller and the shares sum to the provider's
totals exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, TypeVar

import orjson

# (model, parameters, prompts, the callers' tags): a tag is what the caller gave `submit` (the
# gateway gives each request's trace, so the shared call's spans can link to every request).
SendBatch = Callable[[str, dict[str, Any], list[str], list[Any]], Awaitable[dict[str, Any]]]
CountTokens = Callable[[str], int]

# Parameters whose output cannot be split per prompt, or that must reach the provider alone.
_UNBATCHABLE_FLAGS = ("echo", "stream")
# Request fields that are not parameters of the generation.
_NOT_PARAMS = ("model", "prompt")
MAX_OPEN_BATCHES = 1024


class BatchSplitError(RuntimeError):
    """The provider's answer to a batch did not hold the choices of every prompt."""


@lru_cache(maxsize=1)
def _default_counter() -> CountTokens:
    from app.accounting import TokenCounter

    return TokenCounter(preload=()).count_text


def is_batchable(params: dict[str, Any], prompt: object) -> bool:
    """Only plain single-prompt, single-choice requests can share an upstream call."""
    if not isinstance(prompt, str):
        return False
    if params.get("n") not in (None, 1) or params.get("best_of") not in (None, 1):
        return False
    if params.get("logprobs") is not None:
        return False
    return not any(params.get(flag) for flag in _UNBATCHABLE_FLAGS)


def canonical_params(params: dict[str, Any]) -> bytes:
    """Parameters as a stable key: same values in any order give the same bytes.

    Every field counts, `user` included: prompts of different end users never share a provider
    request, so the provider's abuse monitoring still sees who asked what.
    """
    return orjson.dumps(
        {k: v for k, v in params.items() if k not in _NOT_PARAMS and v is not None},
        option=orjson.OPT_SORT_KEYS,
    )


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` by `weights` (largest remainder): the shares sum to `total` exactly."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights = [1] * len(weights)
        weight_sum = len(weights)
    if weight_sum == total:
        return list(weights)
    exact = [total * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


B = TypeVar("B")


class WindowedBatches(Generic[B]):
    """Open batches by key, each sent (`flush`) when its window ends or it is closed sooner,
    and the sends in flight; shared by the completion and the embedding batchers."""

    def __init__(
        self, window_s: float, max_open: int, flush: Callable[[B], Awaitable[None]]
    ) -> None:
        self.window_s = window_s
        self._max_open = max_open
        self._flush = flush
        self._open: dict[Hashable, tuple[B, asyncio.TimerHandle]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._open)

    def get(self, key: Hashable) -> B | None:
        entry = self._open.get(key)
        return None if entry is None else entry[0]

    def open(self, key: Hashable, batch: B) -> bool:
        """Open `batch` under `key` for one window; False when too many are open already (the
        caller then sends alone rather than wait: the set stays bounded)."""
        if len(self._open) >= self._max_open:
            return False
        timer = asyncio.get_running_loop().call_later(self.window_s, self.close, key, batch)
        self._open[key] = (batch, timer)
        return True

    def close(self, key: Hashable, batch: B) -> None:
        """Send `batch` now, unless it already left (its window ended or it filled up)."""
        entry = self._open.get(key)
        if entry is None or entry[0] is not batch:
            return
        del self._open[key]
        entry[1].cancel()
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def drain(self) -> None:
        """Send every open batch now and wait for all the sends (graceful shutdown)."""
        for key, (batch, _) in list(self._open.items()):
            self.close(key, batch)
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


@dataclass
class _Batch:
    model: str
    params: dict[str, Any]
    prompts: list[str] = field(default_factory=list)
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)


class CompletionBatcher:
    """Groups concurrent completions by (model, parameters) and splits the answers back."""

    def __init__(
        self,
        window_ms: float,
        max_batch: int,
        send: SendBatch,
        count_tokens: CountTokens | None = None,
        max_open_batches: int = MAX_OPEN_BATCHES,
    ) -> None:
        if not isinstance(window_ms, int | float) or window_ms < 0:
            raise ValueError(f"batching.window_ms must be a number >= 0, got {window_ms!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"batching.max_batch must be an integer >= 1, got {max_batch!r}")
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self._send = send
        self._count_tokens = count_tokens
        self._batches: WindowedBatches[_Batch] = WindowedBatches(
            self.window_s, max_open_batches, self._flush
        )
        # Counters: callers served, calls made upstream, prompts that went out in shared calls.
        self.requests_in = 0
        self.upstream_calls = 0
        self.prompts_batched = 0

    @property
    def calls_saved(self) -> int:
        return self.requests_in - self.upstream_calls

    def stats(self) -> dict[str, int]:
        return {
            "requests_in": self.requests_in,
            "upstream_calls": self.upstream_calls,
            "prompts_batched": self.prompts_batched,
            "calls_saved": self.calls_saved,
            "open_batches": len(self._batches),
        }

    async def submit(
        self, model: str, params: dict[str, Any], prompt: str, tag: Any = None
    ) -> dict[str, Any]:
        """The completion of one prompt, as if this caller had called the provider alone; `tag`
        goes to the send with the prompt."""
        self.requests_in += 1
        if not is_batchable(params, prompt) or self.max_batch == 1:
            return await self._send_alone(model, params, prompt, tag)
        key = (model, canonical_params(params))
        batch = self._batches.get(key)
        if batch is None:
            batch = _Batch(model, params)
            if not self._batches.open(key, batch):
                # Too many distinct parameter sets at once: stay bounded, don't wait.
                return await self._send_alone(model, params, prompt, tag)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        batch.prompts.append(prompt)
        batch.waiters.append(waiter)
        batch.tags.append(tag)
        if len(batch.prompts) >= self.max_batch:
            self._batches.close(key, batch)
        # A cancelled caller cancels only its own future; the batch goes on for the others.
        return await waiter

    async def close(self) -> None:
        """Send every open batch now and wait for all upstream calls (graceful shutdown)."""
        await self._batches.drain()

    async def _send_alone(
        self, model: str, params: dict[str, Any], prompt: str, tag: Any
    ) -> dict[str, Any]:
        self.upstream_calls += 1
        return await self._send(model, params, [prompt], [tag])

    async def _flush(self, batch: _Batch) -> None:
        # Callers that gave up before the window closed don't cost tokens.
        live = [
            (p, w, t)
            for p, w, t in zip(batch.prompts, batch.waiters, batch.tags, strict=True)
            if not w.done()
        ]
        if not live:
            return
        prompts = [p for p, _, _ in live]
        waiters = [w for _, w, _ in live]
        self.upstream_calls += 1
        if len(prompts) > 1:
            self.prompts_batched += len(prompts)
        try:
            response = await self._send(batch.model, batch.params, prompts, [t for *_, t in live])
            results = self._split(response, prompts, batch.params)
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        except asyncio.CancelledError:
            for waiter in waiters:
                waiter.cancel()
            raise
        for waiter, result in zip(waiters, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)

    def _split(
        self, response: dict[str, Any], prompts: list[str], params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        n = params.get("n") or 1
        per_prompt: list[list[dict[str, Any]]] = [[] for _ in prompts]
        for choice in response.get("choices") or []:
            prompt_idx, i = divmod(int(choice.get("index", -1)), n)
            if not 0 <= prompt_idx < len(prompts):
                raise BatchSplitError(f"upstream choice index {choice.get('index')!r} out of range")
            per_prompt[prompt_idx].append({**choice, "index": i})
        if any(len(choices) != n for choices in per_prompt):
            raise BatchSplitError(
                f"upstream answered {len(response.get('choices') or [])} choices "
                f"for {len(prompts)} prompts x n={n}"
            )
        usage = response.get("usage")
        shares: list[dict[str, int] | None] = [None] * len(prompts)
        if isinstance(usage, dict):
            count = self._count_tokens or _default_counter()
            prompt_shares = apportion(
                int(usage.get("prompt_tokens", 0)), [count(p) for p in prompts]
            )
            completion_shares = apportion(
                int(usage.get("completion_tokens", 0)),
                [sum(count(c.get("text") or "") for c in choices) for choices in per_prompt],
            )
            shares = [
                {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
                for p, c in zip(prompt_shares, completion_shares, strict=True)
            ]
        results = []
        for choices, share in zip(per_prompt, shares, strict=True):
            result = {**response, "choices": sorted(choices, key=lambda c: c["index"])}
            if share is not None:
                result["usage"] = share
            results.append(result)
        return results
