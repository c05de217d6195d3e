"""The pipelined Redis connection: one write per loop turn, replies in order, failures contained."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.exceptions import ResponseError

from app.redis_backend import BackendUnavailable, create_redis, ping, register_script
from app.redis_pipelined import PipelinedRedis, _Link
from tests.fixtures.redis import RedisServer, free_port, redis_binary


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[PipelinedRedis]:
    redis = create_redis(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many commands each socket write carried."""
    seen: list[int] = []
    original = _Link._flush

    def flush(self: _Link) -> None:
        if self._out:
            seen.append(len(self._out))
        original(self)

    monkeypatch.setattr(_Link, "_flush", flush)
    yield seen


async def test_commands_of_one_loop_turn_share_one_write(
    client: PipelinedRedis, writes: list[int]
) -> None:
    await client.ping()  # connect (the handshake is its own write)
    writes.clear()
    results = await asyncio.gather(*(client.incr("counter") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert writes == [50]
    listed = await client.client_list()
    assert sum(c["name"] == "liftoff-gateway" for c in listed) == 1


async def test_replies_reach_their_callers_in_order_with_redis_py_parsing(
    client: PipelinedRedis,
) -> None:
    await client.hset("h", mapping={"a": 1, "b": 2})
    await client.sadd("s", "x", "y")
    hashes, members, missing, ttl = await asyncio.gather(
        client.hgetall("h"), client.smembers("s"), client.get("nothing"), client.pttl("h")
    )
    assert hashes == {b"a": b"1", b"b": b"2"}
    assert members == {b"x", b"y"}
    assert missing is None and ttl == -1
    async with client.pipeline(transaction=False) as pipe:  # pipelines still use the pool
        pipe.get("nothing")
        pipe.hget("h", "a")
        assert await pipe.execute() == [None, b"1"]


async def test_an_error_reply_fails_only_its_own_command(client: PipelinedRedis) -> None:
    await client.set("text", "not a number")
    before, failed, after = await asyncio.gather(
        client.incr("n"), client.incr("text"), client.incr("n"), return_exceptions=True
    )
    assert (before, after) == (1, 2)
    assert isinstance(failed, ResponseError)


async def test_a_caller_that_gives_up_does_not_shift_the_replies(client: PipelinedRedis) -> None:
    # Busy by iterations, not by TIME: Valkey 8 freezes TIME for a script's whole run (a TIME loop
    # spins until the 5 s busy threshold). 10M iterations take 50-300 ms.
    slow = register_script(client, "for i = 1, 10000000 do end; return 'slow'")
    waiting = asyncio.ensure_future(slow())
    await asyncio.sleep(0.01)
    waiting.cancel()
    assert await client.echo("mine") == b"mine"  # not the cancelled command's b"slow"


async def test_scripts_load_with_one_eval_after_noscript(
    client: PipelinedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = register_script(client, "return KEYS[1] .. ARGV[1]")
    sent: list[str] = []
    original = client.execute_command

    async def execute(*args, **options):
        sent.append(args[0])
        return await original(*args, **options)

    monkeypatch.setattr(client, "execute_command", execute)
    assert await script(keys=["a"], args=["b"]) == b"ab"
    assert await script(keys=["c"], args=["d"]) == b"cd"
    assert sent == ["EVALSHA", "EVAL", "EVALSHA"]


async def test_a_late_reply_fails_everything_in_flight_within_the_timeout(
    silent_port: int,
) -> None:
    client = create_redis(f"redis://127.0.0.1:{silent_port}/0", socket_timeout_s=0.2)
    started = time.monotonic()
    results = await asyncio.gather(*(ping(client) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results)
    assert time.monotonic() - started < 1.0
    await client.aclose()


async def test_commands_in_flight_when_redis_restarts_are_retried_once(
    redis_url: str, redis_server
) -> None:
    client = create_redis(redis_url)
    await ping(client)
    redis_server.stop()
    redis_server.start()
    # The loop has not seen the old socket close yet: these are written to it, fail, and go
    # again on a fresh connection.
    assert await asyncio.gather(*(client.ping() for _ in range(10))) == [True] * 10
    await client.aclose()


async def test_a_closed_client_reconnects_on_use_and_closes_cleanly(redis_url: str) -> None:
    client = create_redis(redis_url)
    await client.aclose()
    assert await client.ping() is True
    await client.aclose()


async def test_a_cache_miss_costs_one_redis_write_before_the_call_and_one_after(
    simulator, redis_url: str, writes: list[int]
) -> None:
    from tests.app.gateway_harness import make_config, running

    async with running(make_config(simulator.url, redis_url)) as gw:
        warm = await gw.chat(temperature=0, messages=[{"role": "user", "content": "warm up"}])
        assert warm.status_code == 200  # connects and loads the scripts (NOSCRIPT -> EVAL)
        await gw.gateway.flush()
        writes.clear()
        response = await gw.chat(temperature=0)
        assert response.headers["x-liftoff-cache"] == "miss"
        assert writes == [2]  # limits admit + cache lookup, together, before the provider call
        await gw.gateway.flush()
        assert writes == [2, 2]  # settle + cache store, together, after the response
        hit = await gw.chat(temperature=0)
        assert hit.headers["x-liftoff-cache"] == "hit"


async def test_the_database_in_the_url_is_selected(redis_url: str) -> None:
    import redis as sync_redis

    client = create_redis(redis_url.rsplit("/", 1)[0] + "/3")
    await client.set("where", "db3")
    await client.aclose()
    db3 = sync_redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    db0 = sync_redis.Redis.from_url(redis_url)
    try:
        assert db3.get("where") == b"db3" and db0.get("where") is None
    finally:
        db3.close()
        db0.close()


async def test_tls_connection_verifies_the_server_certificate(tls_redis) -> None:
    port, ca = tls_redis
    trusted = create_redis(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    assert await trusted.ping() is True
    script = register_script(trusted, "return ARGV[1]")
    assert await script(args=["over tls"]) == b"over tls"
    await trusted.aclose()
    untrusted = create_redis(f"rediss://127.0.0.1:{port}/0")  # system CAs only
    with pytest.raises(BackendUnavailable):
        await ping(untrusted)
    await untrusted.aclose()


async def test_a_blocking_command_does_not_hold_up_other_callers(client: PipelinedRedis) -> None:
    await client.ping()
    blocked = asyncio.ensure_future(client.blpop(["empty-list"], timeout=0.3))
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await client.echo("mine") == b"mine"
    assert time.monotonic() - started < 0.1  # not queued behind BLPOP's 0.3 s wait
    assert await blocked is None


async def test_connection_state_commands_do_not_change_the_shared_connection(
    client: PipelinedRedis,
) -> None:
    await client.set("where", "the url's db")
    assert await client.execute_command("SELECT", 1) is True  # a pooled connection, not ours
    assert await client.get("where") == b"the url's db"


async def test_a_reconnect_authenticates_and_selects_the_database_again(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RedisServer(redis_binary(), free_port(), tmp_path, password="s3cret token")
    server.start()
    url = f"redis://127.0.0.1:{server.port}/2"
    client = create_redis(url, auth_token="s3cret token")
    wrong = create_redis(url, auth_token="not it")
    try:
        await client.set("where", "db2")
        server.stop()
        server.start()
        await client.set("where", "db2 again")  # a fresh connection: AUTH and SELECT 2 first
        assert await client.get("where") == b"db2 again"
        assert await client.execute_command("DBSIZE") == 1
        replies = _record_replies(monkeypatch)
        with pytest.raises(BackendUnavailable):
            await ping(wrong)
        # AUTH fails and so do CLIENT SETNAME and SELECT behind it: none of those errors may be
        # left unread (asyncio logs "Future exception was never retrieved" for each).
        assert len(replies) == 3 and all(reply.done() for reply in replies)
        assert not any(reply._log_traceback for reply in replies)
    finally:
        await client.aclose()
        await wrong.aclose()
        server.stop()


def _record_replies(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.Future]:
    replies: list[asyncio.Future] = []
    send = _Link.send

    def recording_send(self: _Link, packed: bytes) -> asyncio.Future:
        replies.append(send(self, packed))
        return replies[-1]

    monkeypatch.setattr(_Link, "send", recording_send)
    return replies


async def test_replies_are_decoded_when_the_client_asks_for_it(redis_url: str) -> None:
    import redis as sync_redis

    client = PipelinedRedis.from_url(redis_url, decode_responses=True)
    undecoded = sync_redis.Redis.from_url(redis_url)
    try:
        await client.set("text", "zwölf")
        await client.hset("h", "k", "v")
        assert await client.get("text") == "zwölf"
        assert await client.hgetall("h") == {"k": "v"}
        assert await client.dump("text") == undecoded.dump("text")  # bytes: never decoded
    finally:
        await client.aclose()
        undecoded.close()


async def test_arguments_are_encoded_by_redis_py_rules(client: PipelinedRedis) -> None:
    from redis.exceptions import DataError

    await client.set("view", memoryview(b"bytes of a view"))
    assert await client.get("view") == b"bytes of a view"
    with pytest.raises(DataError, match="'bool'"):
        await client.set("flag", True)
    with pytest.raises(DataError, match="'NoneType'"):
        await client.set("nothing", None)
    assert await client.echo("still in step") == b"still in step"


async def test_closing_fails_commands_in_flight_instead_of_reconnecting(redis_url: str) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = create_redis(redis_url)
    await client.ping()
    in_flight = asyncio.ensure_future(client.incr("counted once"))
    await asyncio.sleep(0)  # written to the connection, not answered yet
    await client.aclose()
    with pytest.raises(RedisConnectionError):
        await in_flight
    assert client._link is None  # no connection opened again behind the close
    await client.aclose()
