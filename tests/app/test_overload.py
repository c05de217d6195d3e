"""Overload (app/overload.py): the wait for a concurrency slot has a deadline, a line longer than
it can drain in time is shed at once with 503 + Retry-After before any provider call, and a retry
budget keeps a 429 storm from multiplying provider calls."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from app.errors import Overloaded, to_api_error
from app.overload import ConcurrencyQueue, RetryBudget, SlidingCount
from tests.app.gateway_harness import auth, make_config, running

MODEL = "gpt-4o-mini-2024-07-18"
# High enough that our own rate limits never answer in place of the overload logic.
NO_LIMITS = {"default_rpm": 1_000_000, "default_tpm": 100_000_000}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# --- the budget's window arithmetic -----------------------------------------------------------


def test_sliding_count_forgets_whole_steps_after_the_window():
    clock = Clock()
    count = SlidingCount(window_s=10, buckets=10, clock=clock)
    count.add()
    clock.now += 4.2
    count.add(3)
    assert count.total() == 4
    clock.now = 1010.1  # the first's 1-s step [1000, 1001) is out of the window
    assert count.total() == 3
    clock.now = 1013.99  # the second's step [1004, 1005) is still in ...
    assert count.total() == 3
    clock.now = 1014.0  # ... until 10 s after the step began
    assert count.total() == 0
    count.add()
    assert count.total() == 1


def test_retry_budget_is_a_share_of_recent_first_calls_plus_a_floor():
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=10, clock=clock)
    # Nothing sent yet: only the floor (0.5/s x 10 s = 5 retries).
    assert [budget.try_retry() for _ in range(6)] == [True] * 5 + [False]
    for _ in range(50):
        budget.first_call()
    # 0.2 x 50 + 5 = 15 retries in the window, 5 of them spent.
    assert sum(budget.try_retry() for _ in range(20)) == 10
    assert not budget.try_retry()
    clock.now += 5
    for _ in range(10):
        budget.first_call()
    # 0.2 x 60 + 5 = 17 allowed, 15 spent.
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    clock.now += 5.5  # the first 50 calls and 15 retries have left the window
    # 0.2 x 10 + 5 = 7 allowed, of which the 2 of 5 s ago are still in the window.
    assert sum(budget.try_retry() for _ in range(10)) == 5


def test_retry_budget_ratio_zero_and_no_floor_allows_no_retry():
    budget = RetryBudget(ratio=0.0, min_per_s=0.0, clock=Clock())
    for _ in range(100):
        budget.first_call()
    assert not budget.try_retry()


# --- the line for a concurrency slot ----------------------------------------------------------


async def test_a_freed_slot_goes_to_the_head_of_the_line_and_no_one_overtakes():
    queue = ConcurrencyQueue(MODEL, capacity=1, timeout_s=5)
    held = await queue.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        taken = await queue.acquire()
        order.append(name)
        queue.release(taken)

    first = asyncio.ensure_future(waiter("first"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(waiter("second"))
    await asyncio.sleep(0)
    assert queue.waiting == 2 and queue.free == 0
    queue.release(held)
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert queue.free == 1 and queue.waiting == 0


async def test_the_wait_for_a_slot_ends_at_the_deadline_with_nothing_held():
    lengths: list[int] = []
    queue = ConcurrencyQueue(MODEL, capacity=1, timeout_s=0.2, on_length=lengths.append)
    held = await queue.acquire()
    started = time.perf_counter()
    with pytest.raises(Overloaded) as shed:
        await queue.acquire()
    waited = time.perf_counter() - started
    assert 0.19 <= waited < 0.5
    assert shed.value.reason == "timeout"
    assert shed.value.retry_after_s == 0.2  # no call has ended yet: one deadline
    assert queue.waiting == 0 and queue.in_use == 1
    assert lengths == [1, 0]
    queue.release(held)
    assert queue.free == 1


async def test_a_line_longer_than_it_drains_in_time_is_shed_at_once():
    clock = Clock()
    queue = ConcurrencyQueue(MODEL, capacity=2, timeout_s=1.0, clock=clock)
    for _ in range(2):  # two calls that each held a slot 1 s: the mean hold time
        taken = await queue.acquire()
        clock.now += 1.0
        queue.release(taken)
    assert queue.mean_hold_s() == 1.0
    held = [await queue.acquire(), await queue.acquire()]
    # 1st in line: 1 x 1 s / 2 slots = 0.5 s, 2nd: 1.0 s (both fit), 3rd: 1.5 s > 1 s.
    waiters = [asyncio.ensure_future(queue.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    assert queue.waiting == 2
    with pytest.raises(Overloaded) as shed:
        await queue.acquire()
    assert shed.value.reason == "drain"
    assert shed.value.retry_after_s == 1.5
    assert to_api_error(shed.value).headers == {"retry-after": "2"}
    assert queue.waiting == 2  # the shed call never joined the line
    for taken in held:
        queue.release(taken)
    for taken in await asyncio.gather(*waiters):
        queue.release(taken)
    assert queue.free == 2 and queue.waiting == 0


async def test_a_waiter_cancelled_in_line_or_just_as_it_was_served_leaks_no_slot():
    queue = ConcurrencyQueue(MODEL, capacity=1, timeout_s=5)
    held = await queue.acquire()
    gone = asyncio.ensure_future(queue.acquire())
    served_then_cancelled = asyncio.ensure_future(queue.acquire())
    last = asyncio.ensure_future(queue.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert queue.waiting == 2
    queue.release(held)  # handed to served_then_cancelled ...
    served_then_cancelled.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await served_then_cancelled
    # Its slot went on to the last waiter rather than being lost.
    queue.release(await asyncio.wait_for(last, 1))
    assert gone.cancelled()
    assert queue.free == 1 and queue.waiting == 0


# --- through the gateway ----------------------------------------------------------------------


async def timed_chat(gw, headers: dict[str, str], **body) -> tuple[float, object]:
    started = time.perf_counter()
    response = await gw.chat(headers=headers, **body)
    return time.perf_counter() - started, response


async def test_no_client_waits_past_the_deadline_and_the_shed_get_503_at_once(simulator):
    """A provider answering in 1.5 s, 2 slots, 1 s deadline, 30 concurrent requests, twice: the
    first wave (no call ended yet, nothing to estimate from) waits at most the deadline; the
    second sheds at once every request the slots could not serve in time."""
    simulator.app.reset()
    deadline, attempt = 1.0, 1.5
    config = make_config(
        simulator.url,
        upstream={"max_concurrency_per_model": 2, "queue_timeout_s": deadline},
        limits=NO_LIMITS,
    )
    slow = {"x-simulator-ttft-ms": str(int(attempt * 1000))}
    async with running(config) as gw:
        waves = []
        for _ in range(2):
            waves.append(await asyncio.gather(*(timed_chat(gw, slow) for _ in range(30))))
        metrics = (await gw.client.get("/metrics")).text
        queue = gw.gateway.upstream._target(MODEL).slots
        idle = (queue.in_use, queue.waiting)
    calls = simulator.app.stats.by_route["POST /v1/chat/completions"]
    for wave in waves:
        latencies = [elapsed for elapsed, _ in wave]
        assert max(latencies) < deadline + attempt + 1.0
        ok = [r for _, r in wave if r.status_code == 200]
        shed = [(elapsed, r) for elapsed, r in wave if r.status_code != 200]
        assert len(ok) == 2  # the two slots; nobody got one after waiting 1.5 s
        assert len(shed) == 28
        for elapsed, response in shed:
            assert response.status_code == 503
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "overloaded")
            assert int(response.headers["retry-after"]) >= 1
            assert elapsed < deadline + 0.6
    cold, warm = ([e for e, r in wave if r.status_code == 503] for wave in waves)
    assert min(cold) >= deadline - 0.05  # nothing to estimate from: each waited the deadline
    # Warm: the mean hold (1.5 s) says the 2nd in line would wait 1.5 s > 1 s: shed at once.
    drained = sorted(warm)[:27]
    assert max(drained) < 0.5
    assert {r.headers["retry-after"] for _, r in waves[1] if r.status_code == 503} >= {"2"}
    assert metric(metrics, "liftoff_upstream_shed_total", model=MODEL, reason="drain") == 27
    assert metric(metrics, "liftoff_upstream_shed_total", model=MODEL, reason="timeout") == 29
    assert metric(metrics, "liftoff_upstream_queue_length", model=MODEL) == 0
    assert metric(metrics, "liftoff_upstream_queue_wait_seconds_count", model=MODEL) == 4 + 29
    assert idle == (0, 0)
    # Shed requests never reached the provider; the provider never saw more than the cap.
    assert calls == 4
    assert simulator.app.stats.max_in_flight <= 2


async def test_a_429_storm_costs_at_most_the_budget_not_max_attempts(simulator):
    """Every attempt is a 429 with Retry-After: 0. With the budget (ratio 0.2, floor 1/s: 10
    retries in the window) 50 requests cost <= 50 x 1.2 + 10 calls; without it, 4 each."""
    storm = {"x-simulator-fault": "429", "x-simulator-retry-after-ms": "0"}
    per_request = {}
    exhausted = {}
    for ratio in (0.2, 10.0):
        simulator.app.reset()
        config = make_config(
            simulator.url,
            upstream={"retry": {"max_attempts": 4, "budget_ratio": ratio, "budget_min_per_s": 1}},
            limits=NO_LIMITS,
        )
        async with running(config) as gw:
            started = time.perf_counter()
            responses = await asyncio.gather(*(gw.chat(headers=storm) for _ in range(50)))
            elapsed = time.perf_counter() - started
            metrics = (await gw.client.get("/metrics")).text
        assert {r.status_code for r in responses} == {429}
        assert all(r.headers["retry-after"] == "1" for r in responses)
        assert {r.json()["error"]["code"] for r in responses} == {"rate_limit_exceeded"}
        assert elapsed < 10  # the whole storm inside one budget window
        per_request[ratio] = simulator.app.stats.by_route["POST /v1/chat/completions"] / 50
        exhausted[ratio] = metric(
            metrics, "liftoff_upstream_retry_budget_exhausted_total", model=MODEL
        )
    assert 1.0 <= per_request[0.2] <= 1 + 0.2 + 10 / 50
    assert exhausted[0.2] > 0
    assert per_request[10.0] == 4.0 and exhausted[10.0] == 0


async def test_a_fallback_after_a_provider_call_is_paid_from_the_budget(simulator):
    """`smart` falls back to `fast`: a fallback after a failed call is a retry; with no budget
    the client gets the primary's error and the fallback model is never called."""
    failing = {"x-simulator-fault": "503"}
    for budget, calls, status in ((0.0, 1, 502), (10.0, 2, 502)):
        simulator.app.reset()
        config = make_config(
            simulator.url,
            upstream={"retry": {"max_attempts": 1, "budget_ratio": budget, "budget_min_per_s": 0}},
            limits=NO_LIMITS,
        )
        async with running(config) as gw:
            response = await gw.chat(model="smart", headers=failing)
        assert response.status_code == status
        assert simulator.app.stats.by_route["POST /v1/chat/completions"] == calls


async def test_shedding_leaks_no_slot_and_no_reservation(simulator):
    """Streams and JSON requests shed (by deadline and by drain), and clients that leave while in
    line: afterwards no slot is held, nobody waits, nothing stays reserved, and the next request
    is served at once."""
    config = make_config(
        simulator.url,
        upstream={"max_concurrency_per_model": 1, "queue_timeout_s": 0.4},
        limits=NO_LIMITS,
        budgets={"global_monthly_usd": 1000},  # so each request reserves its worst-case cost
    )
    slow = {"x-simulator-ttft-ms": "600"}
    async with running(config) as gw:
        queue = gw.gateway.upstream._target(MODEL).slots

        async def usage() -> dict:
            await gw.gateway.flush()
            return (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]

        shed = []
        for wave in ("cold", "warm"):  # shed by the deadline, then by drain time (0.6 s > 0.4 s)
            tasks = [
                asyncio.ensure_future(gw.chat(headers=slow, stream=i % 2 == 0)) for i in range(12)
            ]
            await asyncio.sleep(0.15)
            assert queue.in_use == 1
            if wave == "cold":
                assert queue.waiting == 11
                during = await usage()
                for task in tasks[-2:]:  # clients that leave while in line
                    task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            statuses = [r.status_code for r in results if not isinstance(r, BaseException)]
            assert sorted(statuses) == [200] + [503] * (9 if wave == "cold" else 11)
            shed.append(sum(isinstance(r, asyncio.CancelledError) for r in results))
        assert shed == [2, 0]
        assert during["reserved_usd"] > 0  # the check below can see a held reservation
        assert (queue.in_use, queue.waiting) == (0, 0)
        assert (await usage())["reserved_usd"] == 0
        started = time.perf_counter()
        after = await gw.chat(headers={"x-simulator-ttft-ms": "0"})
        assert after.status_code == 200
        assert time.perf_counter() - started < 0.5
        metrics = (await gw.client.get("/metrics")).text
    assert metric(metrics, "liftoff_upstream_queue_length", model=MODEL) == 0
    assert metric(metrics, "liftoff_upstream_in_flight", model=MODEL) == 0
