"""Response cache: canonical keys, memory and Redis back ends, invalidation, single flight."""

from __future__ import annotations

import asyncio
import copy
import gc
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.cache import (
    MemoryResponseCache,
    RedisResponseCache,
    ResilientCache,
    canonical_request,
    is_deterministic,
    request_digest,
)
from app.redis_backend import BackendHealth, BackendUnavailable, create_redis
from app.single_flight import SingleFlight

MODEL = "gpt-4o-mini-2024-07-18"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Name three colours."}]}
COMPLETION = {"model": "fast", "prompt": "Once upon a time", "max_tokens": 32}


def chat_key(body: dict, model: str = MODEL) -> str:
    return request_digest(canonical_request("chat", body, model))


def completion_key(body: dict, model: str = MODEL) -> str:
    return request_digest(canonical_request("completions", body, model))


def with_fields(body: dict, **fields: object) -> dict:
    return {**copy.deepcopy(body), **fields}


# --- canonical request ---------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}

# Every field that changes what the model generates, with a non-default value.
CHAT_OUTPUT_FIELDS: list[tuple[str, object]] = [
    ("messages", [{"role": "user", "content": "Name four colours."}]),
    ("max_tokens", 100),
    ("max_completion_tokens", 50),
    ("stop", ["\n"]),
    ("n", 2),
    ("temperature", 0.5),
    ("top_p", 0.9),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -0.5),
    ("logit_bias", {"1234": -100}),
    ("logprobs", True),
    ("top_logprobs", 3),
    ("seed", 42),
    ("tools", [TOOL]),
    ("tool_choice", "required"),
    ("functions", [TOOL["function"]]),
    ("response_format", {"type": "json_object"}),
    ("reasoning_effort", "low"),
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "red"}),
    ("web_search_options", {}),
    ("verbosity", "low"),
    ("some_future_parameter", "x"),  # unknown fields are kept: a miss is safer than a wrong hit
]

COMPLETION_OUTPUT_FIELDS: list[tuple[str, object]] = [
    ("prompt", "Twice upon a time"),
    ("prompt", ["Once upon a time"]),
    ("max_tokens", 33),
    ("stop", "."),
    ("n", 2),
    ("best_of", 3),
    ("temperature", 0),
    ("top_p", 0.1),
    ("presence_penalty", 1),
    ("frequency_penalty", 1),
    ("logit_bias", {"50256": -100}),
    ("logprobs", 2),
    ("seed", 1),
    ("suffix", " The end."),
    ("echo", True),
]


@pytest.mark.parametrize(("field", "value"), CHAT_OUTPUT_FIELDS)
def test_every_chat_output_field_changes_the_key(field: str, value: object) -> None:
    assert chat_key(with_fields(CHAT, **{field: value})) != chat_key(CHAT)


@pytest.mark.parametrize(("field", "value"), COMPLETION_OUTPUT_FIELDS)
def test_every_completion_output_field_changes_the_key(field: str, value: object) -> None:
    assert completion_key(with_fields(COMPLETION, **{field: value})) != completion_key(COMPLETION)


def test_tool_definitions_and_choices_change_the_key() -> None:
    with_tools = with_fields(CHAT, tools=[TOOL])
    other_tool = copy.deepcopy(TOOL)
    other_tool["function"]["name"] = "search"
    assert chat_key(with_fields(CHAT, tools=[other_tool])) != chat_key(with_tools)
    assert chat_key(with_fields(with_tools, parallel_tool_calls=False)) != chat_key(with_tools)
    named = {"type": "function", "function": {"name": "lookup"}}
    assert chat_key(with_fields(with_tools, tool_choice=named)) != chat_key(with_tools)


@pytest.mark.parametrize(
    "field",
    ["user", "stream", "stream_options", "metadata", "store", "service_tier", "prompt_cache_key"],
)
def test_delivery_and_bookkeeping_fields_do_not_change_the_key(field: str) -> None:
    value = {"include_usage": True} if field == "stream_options" else "x"
    if field == "stream":
        value = True
    assert chat_key(with_fields(CHAT, **{field: value})) == chat_key(CHAT)
    assert completion_key(with_fields(COMPLETION, **{field: value})) == completion_key(COMPLETION)


def test_missing_temperature_is_the_provider_default_one_not_zero() -> None:
    assert chat_key(CHAT) != chat_key(with_fields(CHAT, temperature=0))
    assert chat_key(CHAT) == chat_key(with_fields(CHAT, temperature=1))
    assert chat_key(CHAT) == chat_key(with_fields(CHAT, temperature=1.0))
    assert chat_key(CHAT) == chat_key(with_fields(CHAT, temperature=None))


@pytest.mark.parametrize(
    ("explicit", "kind"),
    [
        ({"top_p": 1, "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0}, "chat"),
        ({"logit_bias": {}, "logprobs": False, "response_format": {"type": "text"}}, "chat"),
        ({"tool_choice": "none", "stop": [], "seed": None}, "chat"),
        ({"max_tokens": 16, "best_of": 1, "echo": False, "n": 1}, "completions"),
    ],
)
def test_explicit_defaults_equal_omitted_ones(explicit: dict, kind: str) -> None:
    if kind == "chat":
        assert chat_key(with_fields(CHAT, **explicit)) == chat_key(CHAT)
    else:
        body = {k: v for k, v in COMPLETION.items() if k != "max_tokens"}
        assert completion_key(with_fields(body, **explicit)) == completion_key(body)


def test_equivalent_spellings_share_a_key() -> None:
    assert chat_key(with_fields(CHAT, stop="END")) == chat_key(with_fields(CHAT, stop=["END"]))
    assert chat_key(with_fields(CHAT, max_tokens=64)) == chat_key(
        with_fields(CHAT, max_completion_tokens=64)
    )
    assert chat_key(with_fields(CHAT, logit_bias={"5": 1})) == chat_key(
        with_fields(CHAT, logit_bias={"5": 1.0})
    )
    tools = with_fields(CHAT, tools=[TOOL])
    assert chat_key(tools) == chat_key(
        with_fields(tools, tool_choice="auto", parallel_tool_calls=True)
    )


def test_the_resolved_model_is_keyed_not_the_alias() -> None:
    assert chat_key(CHAT) == chat_key(with_fields(CHAT, model=MODEL))
    assert chat_key(CHAT, MODEL) != chat_key(CHAT, "gpt-4o-2024-08-06")


def test_chat_and_completions_defaults_differ() -> None:
    canonical = canonical_request("completions", {"prompt": "x"}, MODEL)
    assert canonical["max_tokens"] == 16 and canonical["temperature"] == 1.0
    assert "max_tokens" not in canonical_request("chat", CHAT, MODEL)


def test_canonical_request_leaves_the_body_untouched() -> None:
    body = with_fields(CHAT, stop="x", max_tokens=5, user="u")
    before = copy.deepcopy(body)
    canonical_request("chat", body, MODEL)
    assert body == before


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="'chat' or 'completions'"):
        canonical_request("embeddings", CHAT, MODEL)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "deterministic"),
    [
        ({}, False),
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.2}, False),
        ({"seed": 0}, True),
        ({"temperature": 1.5, "seed": 7}, True),
    ],
)
def test_is_deterministic(fields: dict, deterministic: bool) -> None:
    assert is_deterministic(canonical_request("chat", with_fields(CHAT, **fields), MODEL)) is (
        deterministic
    )


# --- in-process cache -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def canonical(content: str, model: str = MODEL) -> dict:
    return canonical_request(
        "chat", {"messages": [{"role": "user", "content": content}], "temperature": 0}, model
    )


async def test_memory_cache_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = MemoryResponseCache(max_entries=10, ttl_s=60, clock=clock)
    key = await cache.key_for(canonical("a"))
    await cache.set(key, b"answer")
    await cache.set("short", b"brief", ttl_s=5)
    clock.now += 4.9
    assert await cache.get(key) == b"answer" and await cache.get("short") == b"brief"
    clock.now += 0.1
    assert await cache.get("short") is None
    clock.now += 55
    assert await cache.get(key) is None
    assert len(cache) == 0


async def test_memory_cache_is_a_bounded_lru() -> None:
    cache = MemoryResponseCache(max_entries=3, ttl_s=60)
    for name in "abc":
        await cache.set(name, name.encode())
    assert await cache.get("a") == b"a"  # now the most recently used
    await cache.set("d", b"d")
    assert len(cache) == 3 and cache.evictions_total == 1
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]


async def test_memory_cache_invalidation_per_model_and_all() -> None:
    cache = MemoryResponseCache(max_entries=10, ttl_s=60)
    mini, big = canonical("q"), canonical("q", "gpt-4o-2024-08-06")
    await cache.set(await cache.key_for(mini), b"mini")
    await cache.set(await cache.key_for(big), b"big")
    await cache.invalidate(MODEL)
    assert await cache.get(await cache.key_for(mini)) is None
    assert await cache.get(await cache.key_for(big)) == b"big"
    await cache.invalidate()
    assert await cache.get(await cache.key_for(big)) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_entries": 0, "ttl_s": 1}, "max_entries"), ({"max_entries": 1, "ttl_s": 0}, "ttl_s")],
)
def test_memory_cache_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryResponseCache(**kwargs)


# --- Redis cache ----------------------------------------------------------------------------------


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = create_redis(redis_url)
    yield redis
    await redis.aclose()


class CountingRedis:
    """Counts the commands a cache sends (each is one round trip)."""

    def __init__(self, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[str] = []
        original = redis.execute_command

        async def execute(*args, **options):
            self.commands.append(str(args[0]))
            return await original(*args, **options)

        monkeypatch.setattr(redis, "execute_command", execute)


async def test_redis_cache_round_trip_in_one_call_each(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = RedisResponseCache(client, ttl_s=60)
    warm_up = await cache.key_for(canonical("warm up"))
    await cache.set(warm_up, b"x")  # the first use of each script loads it (NOSCRIPT)
    await cache.get(warm_up)
    key = await cache.key_for(canonical("hello"))
    counter = CountingRedis(client, monkeypatch)
    assert await cache.get(key) is None
    await cache.set(key, b'{"id": "chatcmpl-1"}')
    assert await cache.get(key) == b'{"id": "chatcmpl-1"}'
    # key_for costs nothing; versions + entry resolve in one script call per operation.
    assert counter.commands == ["EVALSHA", "EVALSHA", "EVALSHA"]


async def test_redis_cache_entries_expire(client: aioredis.Redis) -> None:
    cache = RedisResponseCache(client, ttl_s=3600)
    key = await cache.key_for(canonical("soon gone"))
    await cache.set(key, b"v", ttl_s=1)
    (entry,) = [k async for k in client.scan_iter(match="liftoff:cache:0.0:*")]
    assert 0 < await client.pttl(entry) <= 1000
    other = await cache.key_for(canonical("kept"))
    await cache.set(other, b"w")
    assert 3590_000 < await client.pttl(f"liftoff:cache:0.0:{other[:64]}") <= 3600_000
    await asyncio.sleep(1.1)
    assert await cache.get(key) is None
    assert await cache.get(other) == b"w"


async def test_redis_invalidation_is_seen_by_every_replica(redis_url: str) -> None:
    clients = [create_redis(redis_url), create_redis(redis_url)]
    one, two = (RedisResponseCache(c, ttl_s=60) for c in clients)
    mini, big = canonical("q"), canonical("q", "gpt-4o-2024-08-06")
    for cache in (one, two):
        for request, value in ((mini, b"mini"), (big, b"big")):
            key = await cache.key_for(request)
            await cache.get(key)
            await cache.set(key, value)
    assert await two.get(await two.key_for(mini)) == b"mini"

    await one.invalidate(MODEL)
    assert await two.get(await two.key_for(mini)) is None
    assert await two.get(await two.key_for(big)) == b"big"
    await two.invalidate()
    assert await one.get(await one.key_for(big)) is None
    for redis in clients:
        await redis.aclose()


async def test_an_answer_computed_before_an_invalidation_is_not_stored_after_it(
    client: aioredis.Redis,
) -> None:
    cache = RedisResponseCache(client, ttl_s=60)
    key = await cache.key_for(canonical("race"))
    assert await cache.get(key) is None  # miss: the upstream call starts
    await cache.invalidate(MODEL)  # a new prompt template is rolled out meanwhile
    await cache.set(key, b"stale")
    assert await cache.get(key) is None
    await cache.set(key, b"fresh")  # looked up after the invalidation: stored
    assert await cache.get(key) == b"fresh"


async def test_redis_cache_survives_a_script_flush(client: aioredis.Redis) -> None:
    cache = RedisResponseCache(client, ttl_s=60)
    key = await cache.key_for(canonical("x"))
    await cache.set(key, b"v")
    await client.script_flush()
    assert await cache.get(key) == b"v"  # NOSCRIPT -> loaded again


async def test_redis_cache_rejects_foreign_keys(client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="key_for"):
        await RedisResponseCache(client, ttl_s=60).get("not-a-key")


async def test_resilient_cache_degrades_to_misses_and_recovers(
    redis_server, redis_url: str
) -> None:
    redis = create_redis(redis_url)
    cache = ResilientCache(
        RedisResponseCache(redis, ttl_s=60), BackendHealth(backoff_base_s=0.05, backoff_cap_s=0.2)
    )
    key = await cache.key_for(canonical("kept through outage?"))
    await cache.set(key, b"v")
    assert await cache.get(key) == b"v" and cache.state == "healthy"

    redis_server.stop()
    started = time.monotonic()
    assert await cache.get(key) is None
    await cache.set(key, b"w")  # a no-op, not an error
    assert [await cache.get(key) for _ in range(20)] == [None] * 20
    assert time.monotonic() - started < 2
    assert cache.state == "degraded"
    assert cache.health.failures_total <= 3  # skipped during back-off, not retried per call
    with pytest.raises(BackendUnavailable):
        await cache.invalidate()  # an invalidation must not be dropped silently

    redis_server.start()  # an empty Redis: scripts and entries are gone
    deadline = time.monotonic() + 5
    while cache.state != "healthy" and time.monotonic() < deadline:
        await cache.get(key)
        await asyncio.sleep(0.05)
    assert cache.state == "healthy"
    await cache.set(key, b"again")
    assert await cache.get(key) == b"again"
    await redis.aclose()


# --- single flight ------------------------------------------------------------------------------


async def test_concurrent_callers_share_one_call() -> None:
    flight = SingleFlight()
    calls = 0

    async def upstream() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return "answer"

    results = await asyncio.gather(*(flight.run("k", upstream) for _ in range(50)))
    assert results == ["answer"] * 50 and calls == 1
    assert (flight.calls_total, flight.shared_total, len(flight)) == (1, 49, 0)
    assert await flight.run("k", upstream) == "answer" and calls == 2  # not a cache
    assert await flight.run("other", upstream) == "answer" and calls == 3


async def test_an_exception_reaches_every_waiter() -> None:
    flight = SingleFlight()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("upstream 500")

    results = await asyncio.gather(
        *(flight.run("k", failing) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "upstream 500" for r in results)
    assert len(flight) == 0


async def test_a_cancelled_waiter_does_not_cancel_the_call_for_others() -> None:
    flight = SingleFlight()
    release = asyncio.Event()
    finished = False

    async def slow() -> str:
        nonlocal finished
        await release.wait()
        finished = True
        return "done"

    first = asyncio.create_task(flight.run("k", slow))  # the caller that started the call
    others = [asyncio.create_task(flight.run("k", slow)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    others[0].cancel()
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*others[1:]) == ["done", "done"]
    assert finished
    assert first.cancelled() and others[0].cancelled()


async def test_a_call_nobody_waits_for_any_more_still_completes_quietly() -> None:
    flight = SingleFlight()
    completed = asyncio.Event()

    async def work() -> str:
        await asyncio.sleep(0.01)
        completed.set()
        raise RuntimeError("nobody is listening")

    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    waiter = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.wait_for(completed.wait(), 1)
    await asyncio.sleep(0)
    assert len(flight) == 0
    gc.collect()  # an unretrieved task exception would be reported when the task is collected
    assert reported == []
    loop.set_exception_handler(None)


async def test_single_flight_is_bounded() -> None:
    flight = SingleFlight(max_keys=2)
    gate = asyncio.Event()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    tasks = [asyncio.create_task(flight.run(f"k{i}", work)) for i in range(4)]
    tasks += [asyncio.create_task(flight.run("k3", work))]
    await asyncio.sleep(0)
    assert len(flight) == 2  # k2 and k3 ran untracked, so the second k3 caller ran its own call
    gate.set()
    await asyncio.gather(*tasks)
    assert calls == 5 and len(flight) == 0
