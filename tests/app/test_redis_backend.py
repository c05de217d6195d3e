"""The Redis client: AUTH, timeouts, failure wrapping, reconnects, scripts, health and back-off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


# --- degrading and recovering, in the logs ----------------------------------------------------


def health_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.redis_backend"]


async def recover(operation, health: BackendHealth) -> None:
    """Call `operation` until `health` is healthy again (Redis is back), at most 5 s."""
    deadline = time.monotonic() + 5
    while health.state != "healthy":
        assert time.monotonic() < deadline, "no recovery within 5 s after Redis came back"
        await operation()
        await asyncio.sleep(0.05)


async def test_a_shared_backend_logs_its_outage_once_each_way(
    redis_server, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed under the limiter and the cache sharing one health object: one WARNING
    naming what each does meanwhile, one INFO with the outage's duration once it is back, and
    neither line names the server's address."""
    from app.cache import RedisResponseCache, ResilientCache
    from app.limits import KeyPolicy, MemoryLimitStore, RedisLimitStore, ResilientLimitStore

    caplog.set_level(logging.INFO, logger="app.redis_backend")
    client = create_redis(redis_url)
    health = BackendHealth(backoff_base_s=0.05, backoff_cap_s=0.2)
    limits = ResilientLimitStore(RedisLimitStore(client), MemoryLimitStore(), "local", health)
    cache = ResilientCache(RedisResponseCache(client, ttl_s=60), health)
    policy = KeyPolicy("k", rpm=10_000)

    entry = await cache.key_for({"model": "m", "messages": []})

    async def use_both() -> None:
        await limits.admit(policy, "m", 1, 0.0, None, 0.8)
        await cache.lookup(entry, lease=False)

    await use_both()
    assert health_lines(caplog) == []
    redis_server.stop()
    stopped = time.monotonic()
    for _ in range(20):  # failures, skipped calls during the back-off, failed probes
        await use_both()
        await asyncio.sleep(0.02)
    assert health.failures_total > 1  # probes failed again: still a single line
    [degraded] = health_lines(caplog)
    assert degraded.levelno == logging.WARNING
    assert degraded.getMessage() == (
        "state backend degraded (limits: local, cache: off): redis admit failed: ConnectionError"
    )
    assert degraded.state_backend == "degraded"

    redis_server.start()
    await recover(use_both, health)
    outage = time.monotonic() - stopped
    await use_both()
    degraded_line, recovered = health_lines(caplog)
    assert degraded_line is degraded
    assert recovered.levelno == logging.INFO
    assert recovered.getMessage().startswith("state backend recovered after ")
    assert recovered.getMessage().endswith(" s (limits: local, cache: off)")
    assert 0 < recovered.outage_s <= outage
    for record in (degraded, recovered):
        text = record.getMessage() + repr(vars(record))
        assert "127.0.0.1" not in text and str(redis_server.port) not in text
    await client.aclose()


async def test_separate_backends_log_once_each_by_name(
    redis_server, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from app.cache import RedisResponseCache, ResilientCache
    from app.limits import KeyPolicy, MemoryLimitStore, RedisLimitStore, ResilientLimitStore

    caplog.set_level(logging.INFO, logger="app.redis_backend")
    client = create_redis(redis_url)
    limits = ResilientLimitStore(
        RedisLimitStore(client),
        MemoryLimitStore(),
        "closed",
        BackendHealth(backoff_base_s=0.05, backoff_cap_s=0.2),
    )
    cache = ResilientCache(
        RedisResponseCache(client, ttl_s=60), BackendHealth(backoff_base_s=0.05, backoff_cap_s=0.2)
    )
    policy = KeyPolicy("k", rpm=10_000)

    entry = await cache.key_for({"model": "m", "messages": []})

    async def use_both() -> None:
        with contextlib.suppress(BackendUnavailable):  # mode closed: refused while down
            await limits.admit(policy, "m", 1, 0.0, None, 0.8)
        await cache.lookup(entry, lease=False)

    redis_server.stop()
    for _ in range(10):
        await use_both()
        await asyncio.sleep(0.02)
    assert sorted(r.getMessage() for r in health_lines(caplog)) == [
        "state backend degraded (cache: off): redis cache get failed: ConnectionError",
        "state backend degraded (limits: closed): redis admit failed: ConnectionError",
    ]
    redis_server.start()
    await recover(use_both, limits.health)
    await recover(use_both, cache.health)
    recovered = [r.getMessage() for r in health_lines(caplog) if r.levelno == logging.INFO]
    assert len(recovered) == 2
    assert {m.rsplit("(", 1)[1] for m in recovered} == {"cache: off)", "limits: closed)"}
    await client.aclose()


def test_health_logs_nothing_without_a_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.redis_backend")
    health = BackendHealth()
    for _ in range(3):
        health.record_success()
    assert health_lines(caplog) == []
    health.serve("limits", "open")
    health.record_failure("redis admit failed: TimeoutError")
    health.record_failure("redis admit failed: TimeoutError")
    assert [r.getMessage() for r in health_lines(caplog)] == [
        "state backend degraded (limits: open): redis admit failed: TimeoutError"
    ]
