"""The Redis client: AUTH, timeouts, failure wrapping, reconnects, scripts, health and back-off."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.redis_backend import (
    BackendHealth,
    BackendUnavailable,
    create_redis,
    ping,
    register_script,
    unavailable_on_error,
)
from tests.fixtures.redis import free_port


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", ""])
def test_bad_url_is_rejected_with_the_allowed_schemes(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis://, rediss:// or unix://"):
        create_redis(url)


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="pool_timeout_s must be > 0"):
        create_redis("redis://127.0.0.1:6379/0", socket_timeout_s=0)


def test_tls_url_gives_a_tls_connection() -> None:
    client = create_redis("rediss://cache.example.internal:6379/0", "token")
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["password"] == "token"
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.5


async def test_auth_token(redis_url: str, redis_server) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("requirepass", "s3cret-token")
    try:
        good = create_redis(redis_url, "s3cret-token")
        await ping(good)
        await good.aclose()
        for token in (None, "wrong"):
            bad = create_redis(redis_url, token)
            with pytest.raises(BackendUnavailable) as caught:
                await ping(bad)
            assert "s3cret" not in str(caught.value)
            await bad.aclose()
    finally:
        admin.execute_command("AUTH", "s3cret-token")
        admin.config_set("requirepass", "")
        admin.close()


async def test_refused_connection_fails_fast_without_naming_the_host() -> None:
    client = create_redis(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"^redis PING failed: ConnectionError$"):
        await ping(client)
    assert time.monotonic() - started < 0.5
    await client.aclose()


async def test_a_hung_redis_costs_at_most_the_socket_timeout(silent_port: int) -> None:
    client = create_redis(f"redis://127.0.0.1:{silent_port}/0", socket_timeout_s=0.25)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="TimeoutError"):
        await ping(client)
    assert time.monotonic() - started < 1.0  # no backed-off retries inside redis-py
    await client.aclose()


async def test_pooled_connections_reconnect_after_a_restart(redis_url: str, redis_server) -> None:
    client = create_redis(redis_url)
    await ping(client)
    redis_server.stop()
    redis_server.start()
    await ping(client)  # the stale pooled connection is replaced without an error
    await client.aclose()


async def test_scripts_reload_after_noscript_and_script_errors_propagate(redis_url: str) -> None:
    client = create_redis(redis_url)
    echo = register_script(client, "return ARGV[1]")
    assert await echo(args=["one"]) == b"one"
    await client.script_flush()
    assert await echo(args=["two"]) == b"two"
    broken = register_script(client, "return redis.call('INCR', KEYS[1])")
    await client.set("text", "not a number")
    # A bug, not an outage: not turned into BackendUnavailable (and so never into a cache miss).
    with pytest.raises(ResponseError), unavailable_on_error("incr"):
        await broken(keys=["text"])
    await client.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_health_backs_off_then_lets_one_probe_through() -> None:
    clock = Clock()
    health = BackendHealth(backoff_base_s=1.0, backoff_cap_s=4.0, clock=clock)
    assert health.state == "healthy" and health.try_acquire()
    health.record_failure()
    assert health.state == "degraded"
    assert not health.try_acquire()
    clock.now = 1.0
    assert health.try_acquire()  # the probe
    assert not health.try_acquire()  # only one at a time
    health.record_failure()  # second failure: 2 s
    clock.now = 2.9
    assert not health.try_acquire()
    clock.now = 3.0
    assert health.try_acquire()
    health.record_failure()  # third: 4 s
    health.record_failure()  # fourth: capped at 4 s, not 8
    clock.now = 7.0
    assert health.try_acquire()
    health.record_success()
    assert health.state == "healthy" and health.try_acquire()
    assert (health.failures_total, health.recoveries_total) == (4, 1)


async def test_health_call_skips_redis_during_back_off() -> None:
    clock = Clock()
    health = BackendHealth(backoff_base_s=1.0, clock=clock)
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise BackendUnavailable("down")

    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            await health.call(failing)
    assert calls == 1

    async def fine() -> str:
        return "ok"

    clock.now = 1.0
    assert await health.call(fine) == "ok"
    assert health.state == "healthy"


async def test_a_probe_that_fails_for_another_reason_frees_the_probe_slot() -> None:
    clock = Clock()
    health = BackendHealth(backoff_base_s=1.0, clock=clock)
    health.record_failure()
    clock.now = 1.0

    async def buggy() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await health.call(buggy)
    assert health.try_acquire()  # not stuck "probing" forever


async def test_client_is_a_redis_asyncio_client(redis_url: str) -> None:
    client = create_redis(redis_url)
    assert isinstance(client, aioredis.Redis)
    assert await client.client_getname() == "liftoff-gateway"
    await client.aclose()


async def test_a_burst_beyond_the_pool_waits_for_connections(redis_url: str) -> None:
    client = create_redis(redis_url, max_connections=4)
    await asyncio.gather(*(ping(client) for _ in range(300)))
    clients = await client.client_list()
    assert sum(c["name"] == "liftoff-gateway" for c in clients) <= 4
    await client.aclose()
