"""Single flight: identical concurrent cacheable requests make one provider call, within one
gateway (shared in-process call) and across gateways on one Redis (a lease taken by the first,
the others wait for its entry, bounded by cache.single_flight_wait_s)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from app.cache import MemoryResponseCache, RedisResponseCache
from app.redis_backend import create_redis
from app.server import create_app
from tests.app.gateway_harness import (
    ALICE,
    PROVIDER_KEY,
    app_processes,
    client_keys_json,
    make_config,
    served,
)

ROUTE = "POST /v1/chat/completions"
CONCURRENT = 50


@contextlib.contextmanager
def gateway_on_loopback(
    upstream_url: str, redis_url: str | None = None, **sections
) -> Iterator[str]:
    # Limits far above the tests' bursts of 50 (each reserves ~1,000 tokens).
    keys = client_keys_json(alice={"rpm": 100_000, "tpm": 1_000_000})
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": keys}
    with served(create_app(make_config(upstream_url, redis_url, **sections), env)) as url:
        yield url


@contextlib.contextmanager
def gateway_processes(
    count: int, upstream_url: str, redis_url: str, **env: str
) -> Iterator[list[str]]:
    """`count` `python -m app` processes on one Redis; yields their /v1 URLs."""
    with app_processes(
        count,
        {
            "LIFTOFF_UPSTREAM_URL": upstream_url,
            "LIFTOFF_REDIS_URL": redis_url,
            "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
            "LIFTOFF_CLIENT_KEYS": client_keys_json(alice={"rpm": 100_000, "tpm": 1_000_000}),
            "LIFTOFF__SERVER__ACCESS_LOG": "false",
            "LIFTOFF__UPSTREAM__FORWARD_HEADERS": (
                "[x-simulator-fail-times, x-simulator-request-key, x-simulator-ttft-ms]"
            ),
            **env,
        },
    ) as urls:
        yield urls


def identical_requests(urls: list[str], count: int, content: str) -> list[tuple[str, str]]:
    """`count` identical deterministic chat requests at once through the openai SDK, one thread
    each, spread over the gateways: (x-liftoff-cache, answer text) per request."""
    clients = [
        openai.OpenAI(base_url=url, api_key=ALICE, max_retries=0, timeout=30) for url in urls
    ]

    def one(i: int) -> tuple[str, str]:
        raw = clients[i % len(clients)].chat.completions.with_raw_response.create(
            model="fast", temperature=0, messages=[{"role": "user", "content": content}]
        )
        return raw.headers["x-liftoff-cache"], raw.parse().choices[0].message.content

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def metric(url: str, name: str) -> float:
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return sum(values)


def test_fifty_identical_requests_to_one_gateway_make_one_call(simulator):
    with gateway_on_loopback(simulator.url) as url:
        for run in range(3):
            simulator.app.reset()
            results = identical_requests([url], CONCURRENT, f"single flight run {run}")
            assert simulator.app.stats.by_route[ROUTE] == 1, f"run {run}"
            caches = [cache for cache, _ in results]
            assert caches.count("miss") == 1 and caches.count("hit") == CONCURRENT - 1
            assert len({text for _, text in results}) == 1


@pytest.fixture(scope="module")
def two_processes(simulator, redis_server) -> Iterator[list[str]]:
    """Two gateway processes on one Redis; waits bounded at 0.5 s, one attempt per call."""
    env = {
        "LIFTOFF__CACHE__SINGLE_FLIGHT_WAIT_S": "0.5",
        "LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS": "1",
    }
    with gateway_processes(2, simulator.url, redis_server.url, **env) as urls:
        yield urls


def counters(url: str) -> tuple[float, float]:
    return (
        metric(url, "liftoff_cache_single_flight_waits_total"),
        metric(url, "liftoff_cache_single_flight_timeouts_total"),
    )


def test_identical_requests_to_two_gateway_processes_make_one_call(simulator, two_processes):
    before = [counters(url) for url in two_processes]
    for run in range(3):
        simulator.app.reset()
        results = identical_requests(two_processes, CONCURRENT, f"two processes run {run}")
        assert simulator.app.stats.by_route[ROUTE] == 1, f"run {run}"
        assert [cache for cache, _ in results].count("miss") == 1
        assert len({text for _, text in results}) == 1
    after = [counters(url) for url in two_processes]
    waits = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    assert sum(waits) >= 3  # in each run the process that did not call waited for the entry
    assert [a[1] - b[1] for a, b in zip(after, before, strict=True)] == [0, 0]


def ask(url: str, content: str, headers: dict[str, str]) -> tuple[float, int, str]:
    """One deterministic request: (seconds, status, x-liftoff-cache)."""
    body = {"model": "fast", "temperature": 0, "messages": [{"role": "user", "content": content}]}
    started = time.monotonic()
    response = httpx.post(
        f"{url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {ALICE}", **headers},
        timeout=60,
    )
    return (
        time.monotonic() - started,
        response.status_code,
        response.headers.get("x-liftoff-cache", ""),
    )


def test_a_waiter_calls_itself_after_the_wait_times_out(simulator, two_processes):
    first, second = two_processes
    simulator.app.reset()
    before = counters(second)
    slow = {"x-simulator-ttft-ms": "2000"}
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(ask, first, "slow one", slow)
        time.sleep(0.2)  # the first process holds the lease (for 0.5 s) by now
        waiter = pool.submit(ask, second, "slow one", slow)
        results = [leader.result(), waiter.result()]
    waits, timeouts = (a - b for a, b in zip(counters(second), before, strict=True))
    assert simulator.app.stats.by_route[ROUTE] == 2  # the waiter gave up and called
    assert (waits, timeouts) == (1, 1)
    assert [(status, cache) for _, status, cache in results] == [(200, "miss"), (200, "miss")]


def test_a_failed_call_releases_the_lease_so_the_next_caller_takes_over(simulator, two_processes):
    first, second = two_processes
    simulator.app.reset()
    before = counters(second)
    fails_once = {"x-simulator-fail-times": "1", "x-simulator-request-key": "lease-release"}
    failed = ask(first, "fails once", fails_once)
    took_over = ask(second, "fails once", fails_once)
    assert failed[1] == 502 and took_over[1:] == (200, "miss")
    # Had the failed call kept its lease, the second would have waited for it to expire.
    assert counters(second) == before
    assert simulator.app.stats.by_route[ROUTE] == 2


# --- the lease on a missing entry, per back end -------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def lease_cache(request):
    if request.param == "memory":
        yield MemoryResponseCache(max_entries=10, ttl_s=60, lease_s=0.3)
        return
    client = create_redis(request.getfixturevalue("redis_url"))
    yield RedisResponseCache(client, ttl_s=60, lease_s=0.3)
    await client.aclose()


async def test_a_lookup_leases_a_missing_entry_until_stored_released_or_expired(lease_cache):
    canonical = {"model": "gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": "q"}]}
    key = await lease_cache.key_for(canonical, "alice")
    first = await lease_cache.lookup(key, lease=True)
    second = await lease_cache.lookup(key, lease=True)
    assert (first.value, first.lease, second.lease) == (None, "acquired", "held")
    assert (await lease_cache.lookup(key, lease=False)).lease == "none"  # a stream takes none
    await lease_cache.release(key)  # the call failed: the next caller takes over at once
    taken = await lease_cache.lookup(key, lease=True)
    assert taken.lease == "taken_over"
    await lease_cache.set(key, b'{"id": "chatcmpl-1"}')  # storing drops the lease
    found = await lease_cache.lookup(key, lease=True)
    assert (found.value, found.lease) == (b'{"id": "chatcmpl-1"}', "none")
    other = await lease_cache.key_for(canonical, "bob")  # another tenant: another entry
    assert (await lease_cache.lookup(other, lease=True)).lease == "acquired"
    await asyncio.sleep(0.35)  # a holder that vanished: its lease expires
    assert (await lease_cache.lookup(other, lease=True)).lease == "acquired"


async def test_a_release_never_frees_a_lease_taken_by_another(redis_url):
    clients = [create_redis(redis_url), create_redis(redis_url)]
    one, two = (RedisResponseCache(c, ttl_s=60, lease_s=0.2) for c in clients)
    canonical = {"model": "gpt-4o-mini-2024-07-18", "prompt": "p"}
    key = await one.key_for(canonical)
    assert (await one.lookup(key, lease=True)).lease == "acquired"
    await asyncio.sleep(0.25)  # expired: the other process takes it
    assert (await two.lookup(key, lease=True)).lease == "acquired"
    await one.release(key)  # too late: not its lease any more
    assert (await one.lookup(key, lease=True)).lease == "held"
    for client in clients:
        await client.aclose()
