"""Completion batching: concurrent callers share one upstream call, each gets exactly its part."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types import Completion

from app.batching import BatchSplitError, CompletionBatcher, apportion, canonical_params
from app.simulator import SimulatorServer
from app.simulator.text import count_tokens

MODEL = "gpt-3.5-turbo-instruct"


class UpstreamError(Exception):
    pass


class SimulatorUpstream:
    """The batcher's `send`: a real HTTP call to the simulator, recording each call's prompts."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.calls: list[list[str]] = []
        self.tags: list[list[Any]] = []

    async def __call__(
        self, model: str, params: dict[str, Any], prompts: list[str], tags: list[Any]
    ) -> dict:
        self.calls.append(list(prompts))
        self.tags.append(list(tags))
        response = await self.client.post(
            "/v1/completions", json={**params, "model": model, "prompt": prompts}
        )
        if response.status_code != 200:
            raise UpstreamError(response.json()["error"]["message"])
        return response.json()


@pytest.fixture
async def http(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(
        base_url=simulator.url, headers={"authorization": "Bearer sk-test"}, limits=limits
    ) as client:
        yield client


@pytest.fixture
def upstream(http: httpx.AsyncClient) -> SimulatorUpstream:
    return SimulatorUpstream(http)


def prompts(count: int) -> list[str]:
    return [f"Prompt number {i}: say something about {'caching ' * (i % 5)}." for i in range(count)]


async def test_each_callers_tag_goes_to_the_send_with_its_prompt(upstream):
    batcher = CompletionBatcher(window_ms=50, max_batch=20, send=upstream)
    params = {"max_tokens": 4}
    texts = prompts(3)
    gone = asyncio.create_task(batcher.submit(MODEL, params, "I leave early", "tag-gone"))
    await asyncio.sleep(0)
    staying = [
        asyncio.create_task(batcher.submit(MODEL, params, text, f"tag-{i}"))
        for i, text in enumerate(texts)
    ]
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(*staying)
    # The callers still there, in their order: a caller that left is neither sent nor tagged.
    assert upstream.calls == [texts]
    assert upstream.tags == [["tag-0", "tag-1", "tag-2"]]
    await batcher.submit(MODEL, {**params, "n": 2}, "unbatchable", "tag-alone")
    assert upstream.tags[-1] == ["tag-alone"]


async def test_twenty_concurrent_callers_make_one_upstream_call(upstream, http, simulator):
    simulator.app.reset()
    batcher = CompletionBatcher(window_ms=50, max_batch=20, send=upstream)
    params = {"max_tokens": 12, "temperature": 0.7}
    texts = prompts(20)
    results = await asyncio.gather(*(batcher.submit(MODEL, params, p) for p in texts))
    assert upstream.calls == [texts]
    stats = simulator.app.stats
    assert stats.completions_requests == 1 and stats.completions_prompts == 20
    assert batcher.stats() == {
        "requests_in": 20,
        "upstream_calls": 1,
        "prompts_batched": 20,
        "calls_saved": 19,
        "open_batches": 0,
    }
    # Each caller gets exactly what it would have got calling the provider alone.
    for prompt, result in zip(texts, results, strict=True):
        completion = Completion.model_validate(result)
        alone = (
            await http.post("/v1/completions", json={**params, "model": MODEL, "prompt": prompt})
        ).json()
        (choice,) = completion.choices
        assert choice.index == 0
        assert choice.text == alone["choices"][0]["text"]
        assert choice.finish_reason == alone["choices"][0]["finish_reason"]
        assert result["usage"] == alone["usage"]


async def test_usage_shares_sum_to_upstream_totals(upstream):
    recorded: list[dict] = []

    async def send(model: str, params: dict, batch: list[str], tags: list) -> dict:
        response = await upstream(model, params, batch, tags)
        recorded.append(response["usage"])
        return response

    batcher = CompletionBatcher(window_ms=20, max_batch=20, send=send)
    results = await asyncio.gather(*(batcher.submit(MODEL, {}, p) for p in prompts(7)))
    (usage,) = recorded
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert sum(r["usage"][field] for r in results) == usage[field]
    for prompt, result in zip(prompts(7), results, strict=True):
        assert result["usage"]["prompt_tokens"] == count_tokens(prompt)
        assert result["usage"]["completion_tokens"] == count_tokens(result["choices"][0]["text"])


async def test_usage_split_is_proportional_when_provider_counts_differently():
    # A provider that counts more tokens than our tokenizer (e.g. hidden framing): shares still sum.
    async def send(model: str, params: dict, batch: list[str], tags: list) -> dict:
        choices = [
            {"index": i, "text": "word " * (i + 1), "finish_reason": "stop", "logprobs": None}
            for i in range(len(batch))
        ]
        usage = {"prompt_tokens": 1001, "completion_tokens": 37, "total_tokens": 1038}
        return {"id": "cmpl-x", "object": "text_completion", "choices": choices, "usage": usage}

    batcher = CompletionBatcher(window_ms=10, max_batch=20, send=send)
    results = await asyncio.gather(*(batcher.submit("m", {}, "p" * (i + 1)) for i in range(3)))
    shares = [r["usage"] for r in results]
    assert sum(s["prompt_tokens"] for s in shares) == 1001
    assert sum(s["completion_tokens"] for s in shares) == 37
    assert all(s["total_tokens"] == s["prompt_tokens"] + s["completion_tokens"] for s in shares)
    completion = [s["completion_tokens"] for s in shares]
    assert completion == sorted(completion)  # longer answers carry more of the total


@pytest.mark.parametrize(
    "other",
    [
        {"temperature": 0.2},
        {"max_tokens": 13},
        {"stop": ["."]},
        {"user": "someone-else"},
    ],
)
async def test_different_params_are_not_batched_together(upstream, other):
    batcher = CompletionBatcher(window_ms=30, max_batch=20, send=upstream)
    base = {"max_tokens": 12}
    await asyncio.gather(
        batcher.submit(MODEL, base, "a"),
        batcher.submit(MODEL, base, "b"),
        batcher.submit(MODEL, {**base, **other}, "c"),
    )
    assert sorted(upstream.calls) == [["a", "b"], ["c"]]


async def test_same_params_in_another_order_share_a_batch(upstream):
    batcher = CompletionBatcher(window_ms=30, max_batch=20, send=upstream)
    await asyncio.gather(
        batcher.submit(MODEL, {"max_tokens": 5, "temperature": 0.5}, "a"),
        batcher.submit(MODEL, {"temperature": 0.5, "max_tokens": 5}, "b"),
    )
    assert upstream.calls == [["a", "b"]]
    assert canonical_params({"b": 1, "a": 2}) == canonical_params({"a": 2, "b": 1, "prompt": "x"})


async def test_different_models_are_not_batched_together(upstream):
    batcher = CompletionBatcher(window_ms=30, max_batch=20, send=upstream)
    await asyncio.gather(
        batcher.submit(MODEL, {}, "a"),
        batcher.submit("gpt-4o-mini", {}, "b"),
    )
    assert sorted(upstream.calls) == [["a"], ["b"]]
    assert batcher.upstream_calls == 2


@pytest.mark.parametrize(
    "params",
    [{"n": 2}, {"best_of": 3}, {"echo": True}, {"logprobs": 2}, {"stream": True}],
)
async def test_unbatchable_params_go_upstream_alone_without_waiting(params):
    calls: list[list[str]] = []

    async def send(model: str, sent_params: dict, batch: list[str], tags: list) -> dict:
        calls.append(batch)
        n = sent_params.get("n", 1)
        choices = [{"index": i, "text": "x", "finish_reason": "stop"} for i in range(n)]
        return {"choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": n}}

    batcher = CompletionBatcher(window_ms=500, max_batch=20, send=send)
    started = time.perf_counter()
    results = await asyncio.gather(*(batcher.submit("m", params, p) for p in ("a", "b")))
    assert time.perf_counter() - started < 0.4  # no window wait
    assert calls == [["a"], ["b"]]
    assert all(r["usage"]["prompt_tokens"] == 1 for r in results)  # passed through untouched
    assert batcher.calls_saved == 0


async def test_window_flush_single_caller_waits_at_most_the_window(upstream):
    batcher = CompletionBatcher(window_ms=60, max_batch=20, send=upstream)
    started = time.perf_counter()
    result = await batcher.submit(MODEL, {"max_tokens": 3}, "alone")
    elapsed = time.perf_counter() - started
    assert 0.055 <= elapsed < 1.0
    assert result["choices"][0]["index"] == 0
    assert upstream.calls == [["alone"]]


async def test_callers_after_the_window_start_a_new_batch(upstream):
    batcher = CompletionBatcher(window_ms=40, max_batch=20, send=upstream)

    async def later(delay: float, prompt: str) -> dict:
        await asyncio.sleep(delay)
        return await batcher.submit(MODEL, {}, prompt)

    await asyncio.gather(later(0, "a"), later(0.01, "b"), later(0.2, "c"))
    assert upstream.calls == [["a", "b"], ["c"]]


async def test_full_batch_flushes_before_the_window_ends(upstream):
    batcher = CompletionBatcher(window_ms=5_000, max_batch=20, send=upstream)
    started = time.perf_counter()
    await asyncio.gather(*(batcher.submit(MODEL, {}, p) for p in prompts(20)))
    assert time.perf_counter() - started < 2.0
    assert len(upstream.calls) == 1


async def test_max_batch_caps_upstream_prompts(upstream):
    batcher = CompletionBatcher(window_ms=30, max_batch=20, send=upstream)
    texts = prompts(45)
    results = await asyncio.gather(*(batcher.submit(MODEL, {}, p) for p in texts))
    assert [len(c) for c in upstream.calls] == [20, 20, 5]
    assert [p for call in upstream.calls for p in call] == texts
    assert all(len(r["choices"]) == 1 for r in results)
    assert batcher.stats()["calls_saved"] == 42


async def test_upstream_error_reaches_every_caller_of_the_batch(http, upstream):
    async def failing(model: str, params: dict, batch: list[str], tags: list) -> dict:
        upstream.calls.append(batch)
        response = await http.post(
            "/v1/completions",
            json={"model": model, "prompt": batch},
            headers={"x-simulator-fault": "503"},
        )
        raise UpstreamError(f"status {response.status_code}")

    batcher = CompletionBatcher(window_ms=20, max_batch=20, send=failing)
    results = await asyncio.gather(
        *(batcher.submit(MODEL, {}, p) for p in prompts(5)), return_exceptions=True
    )
    assert len(upstream.calls) == 1
    assert all(isinstance(r, UpstreamError) and str(r) == "status 503" for r in results)
    # The batcher stays usable after a failed batch.
    ok_batcher = CompletionBatcher(window_ms=5, max_batch=20, send=upstream)
    assert (await ok_batcher.submit(MODEL, {}, "again"))["choices"]


async def test_cancelled_caller_before_flush_is_left_out(upstream):
    batcher = CompletionBatcher(window_ms=50, max_batch=20, send=upstream)
    tasks = [asyncio.create_task(batcher.submit(MODEL, {}, p)) for p in ("a", "b", "c")]
    await asyncio.sleep(0.01)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert upstream.calls == [["a", "c"]]  # the cancelled prompt costs nothing
    assert done[0]["choices"][0]["index"] == 0 and done[2]["choices"][0]["index"] == 0


async def test_cancelled_caller_during_upstream_call_does_not_break_batch():
    release = asyncio.Event()
    calls: list[list[str]] = []

    async def slow(model: str, params: dict, batch: list[str], tags: list) -> dict:
        calls.append(batch)
        await release.wait()
        choices = [
            {"index": i, "text": f"answer {p}", "finish_reason": "stop"}
            for i, p in enumerate(batch)
        ]
        return {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 6}}

    batcher = CompletionBatcher(window_ms=5, max_batch=20, send=slow)
    tasks = [asyncio.create_task(batcher.submit("m", {}, p)) for p in ("a", "b", "c")]
    while not calls:
        await asyncio.sleep(0.005)
    tasks[0].cancel()
    release.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert [d["choices"][0]["text"] for d in done[1:]] == ["answer b", "answer c"]
    assert calls == [["a", "b", "c"]]


async def test_all_callers_cancelled_means_no_upstream_call(upstream):
    batcher = CompletionBatcher(window_ms=30, max_batch=20, send=upstream)
    tasks = [asyncio.create_task(batcher.submit(MODEL, {}, p)) for p in ("a", "b")]
    await asyncio.sleep(0.005)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.06)
    assert upstream.calls == []
    assert batcher.upstream_calls == 0


async def test_short_upstream_answer_is_an_error_not_a_wrong_split():
    async def short(model: str, params: dict, batch: list[str], tags: list) -> dict:
        return {"choices": [{"index": 0, "text": "only one", "finish_reason": "stop"}]}

    batcher = CompletionBatcher(window_ms=10, max_batch=20, send=short)
    results = await asyncio.gather(
        batcher.submit("m", {}, "a"), batcher.submit("m", {}, "b"), return_exceptions=True
    )
    assert all(isinstance(r, BatchSplitError) for r in results)


async def test_open_batches_are_bounded(upstream):
    batcher = CompletionBatcher(window_ms=1000, max_batch=20, send=upstream, max_open_batches=2)
    first = asyncio.create_task(batcher.submit(MODEL, {"max_tokens": 1}, "a"))
    second = asyncio.create_task(batcher.submit(MODEL, {"max_tokens": 2}, "b"))
    await asyncio.sleep(0.01)
    assert batcher.stats()["open_batches"] == 2
    started = time.perf_counter()
    overflow = await batcher.submit(MODEL, {"max_tokens": 4}, "d")
    assert time.perf_counter() - started < 0.5  # sent alone, not parked for the 1 s window
    assert overflow["choices"]
    await asyncio.gather(first, second)
    assert sorted(upstream.calls) == [["a"], ["b"], ["d"]]
    assert batcher.stats()["open_batches"] == 0


async def test_close_flushes_open_batches(upstream):
    batcher = CompletionBatcher(window_ms=10_000, max_batch=20, send=upstream)
    task = asyncio.create_task(batcher.submit(MODEL, {}, "pending"))
    await asyncio.sleep(0.01)
    await batcher.close()
    assert task.done() and task.result()["choices"]


def test_apportion_sums_exactly():
    assert apportion(10, [3, 3, 4]) == [3, 3, 4]
    assert sum(apportion(100, [1, 1, 1])) == 100
    assert apportion(5, [0, 0]) in ([3, 2], [2, 3])
    assert apportion(7, []) == []
    for total in range(0, 50):
        assert sum(apportion(total, [5, 1, 9, 2])) == total


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"window_ms": -1}, "window_ms"), ({"max_batch": 0}, "max_batch")]
)
def test_invalid_settings_name_the_field(kwargs, field):
    async def send(model: str, params: dict, batch: list[str], tags: list) -> dict:
        return {}

    with pytest.raises(ValueError, match=field):
        CompletionBatcher(**{"window_ms": 5, "max_batch": 20, "send": send, **kwargs})
