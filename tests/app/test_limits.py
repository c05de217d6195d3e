"""Rate limits and budgets: exact boundaries, headers, atomicity across replicas, degradation."""

from __future__ import annotations

import asyncio
import calendar
import random
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.accounting import month_key
from app.limits import (
    MONTH_RETENTION_S,
    Admission,
    BurstFractions,
    KeyPolicy,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    ResilientLimitStore,
    format_duration,
)
from app.redis_backend import BackendHealth, BackendUnavailable, create_redis
from tests.fixtures.redis import SLOW_MACHINE_TIMEOUT_S

# The whole limit at once (then one a minute): for tests that count one burst exactly.
WHOLE_LIMIT = BurstFractions(1.0, 1.0)
MID_NOVEMBER = calendar.timegm((2026, 11, 15, 12, 0, 0))
END_OF_NOVEMBER = calendar.timegm((2026, 11, 30, 23, 59, 59))


class Clock:
    def __init__(self, now: float = MID_NOVEMBER) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = create_redis(redis_url, socket_timeout_s=SLOW_MACHINE_TIMEOUT_S)
    yield redis
    await redis.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    """Both back ends, each checked against the same expectations."""
    if request.param == "memory":
        yield MemoryLimitStore(clock=Clock())
        return
    redis = create_redis(
        request.getfixturevalue("redis_url"), socket_timeout_s=SLOW_MACHINE_TIMEOUT_S
    )
    yield RedisLimitStore(redis, clock=Clock())
    await redis.aclose()


async def admit(
    store: LimitStore,
    policy: KeyPolicy,
    tokens: int = 10,
    worst_case_usd: float = 0.0,
    global_budget_usd: float | None = None,
    model: str = "gpt-4o-mini",
) -> Admission:
    return await store.admit(policy, model, tokens, worst_case_usd, global_budget_usd, 0.8)


def seconds(duration: str) -> float:
    """Parse the subset of Go durations that format_duration writes."""
    if duration.endswith("ms"):
        return int(duration[:-2]) / 1000
    total = 0.0
    for unit, factor in (("h", 3600), ("m", 60)):
        if unit in duration:
            head, duration = duration.split(unit, 1)
            total += int(head) * factor
    return total + float(duration.rstrip("s") or 0)


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.25, "250ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (60, "1m0s"),
        (90.25, "1m30.25s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (-3, "0s"),
    ],
)
def test_reset_durations_use_openai_format(value: float, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_id": ""}, "key_id"),
        ({"key_id": "a", "rpm": 0}, r"rpm must be an integer in \[1, 100000000\]"),
        ({"key_id": "a", "tpm": 1.5}, r"tpm must be an integer in \[1, 100000000\]"),
        ({"key_id": "a", "tpm": 100_000_001}, r"tpm must be an integer in \[1, 100000000\]"),
        ({"key_id": "a", "monthly_budget_usd": -1.0}, "monthly_budget_usd"),
    ],
)
def test_key_policy_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyPolicy(**kwargs)


async def test_admit_rejects_bad_arguments() -> None:
    store = MemoryLimitStore()
    policy = KeyPolicy("a")
    with pytest.raises(ValueError, match="tokens"):
        await store.admit(policy, "m", -1, 0.0, None, 0.8)
    with pytest.raises(ValueError, match="worst_case_usd"):
        await store.admit(policy, "m", 1, float("nan"), None, 0.8)
    with pytest.raises(ValueError, match="soft_fraction"):
        await store.admit(policy, "m", 1, 0.0, None, 1.5)


# --- one store, both back ends ----------------------------------------------------------------


async def test_requests_per_minute_exact_at_the_boundary(store: LimitStore) -> None:
    # 50 rpm with the default burst fraction 0.1: 5 at once, refilling 50 + 1 - 5 = 46 a minute.
    policy = KeyPolicy("k", rpm=50)
    results = [await admit(store, policy) for _ in range(6)]
    assert [a.allowed for a in results] == [True] * 5 + [False]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in results] == [
        "4",
        "3",
        "2",
        "1",
        "0",
        "0",
    ]
    assert all(a.headers["x-ratelimit-limit-requests"] == "50" for a in results)
    # Each admitted request adds one emission interval (60/46 s) until the bucket is empty again.
    resets = [seconds(a.headers["x-ratelimit-reset-requests"]) for a in results]
    assert resets[:5] == pytest.approx([60 / 46 * n for n in range(1, 6)], abs=0.05)
    denied = results[-1]
    assert denied.reason == "rate_limit_requests"
    assert denied.reservation is None
    assert denied.retry_after_s == pytest.approx(60 / 46, abs=0.05)
    assert "x-ratelimit-limit-tokens" not in denied.headers  # tpm unlimited: no token headers


async def test_tokens_per_minute_exact_at_the_boundary(store: LimitStore) -> None:
    # 1,000 tpm with the default token burst fraction 0.25: 250 at once, refilling 751 a minute
    # (one token per 80 ms: Redis' real clock moves less than that during the test).
    policy = KeyPolicy("k", tpm=1000)
    assert (await admit(store, policy, tokens=100)).allowed
    second = await admit(store, policy, tokens=100)
    assert second.headers["x-ratelimit-remaining-tokens"] == "50"
    assert second.headers["x-ratelimit-limit-tokens"] == "1000"
    too_many = await admit(store, policy, tokens=51)
    assert (too_many.allowed, too_many.reason) == (False, "rate_limit_tokens")
    # 1 token more than the 50 left: it waits for exactly 1 token's refill, 60/751 s.
    assert too_many.retry_after_s == pytest.approx(60 / 751, abs=0.03)
    exact = await admit(store, policy, tokens=50)
    assert exact.allowed
    assert exact.headers["x-ratelimit-remaining-tokens"] == "0"
    assert seconds(exact.headers["x-ratelimit-reset-tokens"]) == pytest.approx(
        250 * 60 / 751, abs=0.05
    )


async def test_a_request_larger_than_the_burst_never_fits(store: LimitStore) -> None:
    policy = KeyPolicy("k", tpm=400)  # 100 tokens at once
    admission = await admit(store, policy, tokens=101)
    assert (admission.allowed, admission.reason) == (False, "rate_limit_tokens")
    assert admission.headers["x-ratelimit-remaining-tokens"] == "100"
    assert (await admit(store, policy, tokens=100)).allowed


async def test_a_rejected_request_consumes_nothing(store: LimitStore) -> None:
    policy = KeyPolicy("k", rpm=30, tpm=400)  # 3 requests and 100 tokens at once
    assert (await admit(store, policy, tokens=90)).allowed
    denied = await admit(store, policy, tokens=20)  # over tpm: must not use a request slot
    assert denied.reason == "rate_limit_tokens"
    assert denied.headers["x-ratelimit-remaining-requests"] == "2"
    assert (await admit(store, policy, tokens=10)).allowed
    assert (await admit(store, policy, tokens=0)).allowed
    over_rpm = await admit(store, policy, tokens=0)
    assert over_rpm.reason == "rate_limit_requests"
    assert over_rpm.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_keys_are_limited_independently(store: LimitStore) -> None:
    first, second = KeyPolicy("first", rpm=1), KeyPolicy("second", rpm=1)
    assert (await admit(store, first)).allowed
    assert not (await admit(store, first)).allowed
    assert (await admit(store, second)).allowed


async def test_unlimited_key_gets_no_rate_limit_headers(store: LimitStore) -> None:
    admission = await admit(store, KeyPolicy("free"), tokens=10**6)
    assert admission.allowed and admission.headers == {}
    assert admission.budget_remaining_usd is None


async def test_key_budget_reserves_worst_case_and_settles_to_actual(store: LimitStore) -> None:
    policy = KeyPolicy("k", monthly_budget_usd=1.0)
    held = [await admit(store, policy, worst_case_usd=0.3) for _ in range(3)]
    assert all(a.allowed for a in held)
    assert held[-1].budget_remaining_usd == pytest.approx(0.1)
    refused = await admit(store, policy, worst_case_usd=0.3)
    assert (refused.allowed, refused.reason) == (False, "budget_key")
    assert refused.retry_after_s == 0

    month = held[0].reservation.month
    usage = (await store.usage("k", month))["keys"]["k"]
    assert usage["reserved_usd"] == pytest.approx(0.9)

    await store.settle(held[0].reservation, 0.05, prompt_tokens=100, completion_tokens=20)
    await store.release(held[1].reservation)
    usage = (await store.usage("k", month))["keys"]["k"]
    assert usage["reserved_usd"] == pytest.approx(0.3)
    assert usage["spent_usd"] == pytest.approx(0.05)
    # 1.0 - 0.05 spent - 0.3 still held leaves room for two more 0.3 requests, not three.
    assert (await admit(store, policy, worst_case_usd=0.3)).allowed
    assert (await admit(store, policy, worst_case_usd=0.3)).allowed
    assert (await admit(store, policy, worst_case_usd=0.3)).reason == "budget_key"


async def test_settling_or_releasing_twice_counts_once(store: LimitStore) -> None:
    policy = KeyPolicy("k", monthly_budget_usd=1.0)
    a = await admit(store, policy, worst_case_usd=0.5)
    await store.settle(a.reservation, 0.2, prompt_tokens=10, completion_tokens=5)
    await store.settle(a.reservation, 0.2, prompt_tokens=10, completion_tokens=5)
    await store.release(a.reservation)
    usage = (await store.usage("k", a.reservation.month))["keys"]["k"]
    assert (usage["spent_usd"], usage["reserved_usd"], usage["requests"]) == pytest.approx(
        (0.2, 0.0, 1)
    )


async def test_global_budget_and_soft_threshold(store: LimitStore) -> None:
    alice, bob = KeyPolicy("alice"), KeyPolicy("bob", monthly_budget_usd=10.0)
    first = await admit(store, alice, worst_case_usd=0.5, global_budget_usd=1.0)
    assert first.allowed and not first.soft_exceeded
    assert first.budget_remaining_usd == pytest.approx(0.5)
    second = await admit(store, bob, worst_case_usd=0.3, global_budget_usd=1.0)
    assert second.allowed and second.soft_exceeded  # 0.8 of the global budget is committed
    assert second.budget_remaining_usd == pytest.approx(0.2)  # the smaller of key and global
    third = await admit(store, bob, worst_case_usd=0.3, global_budget_usd=1.0)
    assert (third.allowed, third.reason) == (False, "budget_global")


async def test_budget_exact_at_the_boundary(store: LimitStore) -> None:
    policy = KeyPolicy("k", monthly_budget_usd=0.3)
    for _ in range(3):
        assert (await admit(store, policy, worst_case_usd=0.1)).allowed
    assert (await admit(store, policy, worst_case_usd=0.1)).reason == "budget_key"


async def test_usage_for_one_key_and_for_all(store: LimitStore) -> None:
    month = None
    for key_id, model, cost, cached in [
        ("alice", "gpt-4o-mini", 0.01, False),
        ("alice", "gpt-4o-mini", 0.0, True),
        ("alice", "ft:gpt-4o-mini:acme::x1", 0.02, False),
        ("bob", "gpt-4o", 0.5, False),
    ]:
        a = await admit(store, KeyPolicy(key_id), model=model)
        month = a.reservation.month
        await store.settle(
            a.reservation,
            cost,
            prompt_tokens=100,
            completion_tokens=0 if cached else 40,
            cached=cached,
            saved_usd=0.01 if cached else 0.0,
        )
    alice = (await store.usage("alice", month))["keys"]["alice"]
    assert alice["requests"] == 3 and alice["cache_hits"] == 1
    assert alice["prompt_tokens"] == 300 and alice["completion_tokens"] == 80
    assert alice["cost_usd"] == pytest.approx(0.03) and alice["saved_usd"] == pytest.approx(0.01)
    assert alice["models"]["ft:gpt-4o-mini:acme::x1"]["cost_usd"] == pytest.approx(0.02)
    assert alice["models"]["gpt-4o-mini"]["requests"] == 2

    single = await store.usage("alice", month)
    assert set(single) == {"month", "keys"}  # a caller does not see the global total

    everything = await store.usage(None, month)
    assert sorted(everything["keys"]) == ["alice", "bob"]
    assert everything["keys"]["bob"]["models"]["gpt-4o"]["completion_tokens"] == 40
    assert everything["global"]["spent_usd"] == pytest.approx(0.53)
    assert (await store.usage(None, "1999-01"))["keys"] == {}


async def test_month_rollover_starts_a_fresh_budget() -> None:
    clock = Clock(END_OF_NOVEMBER)
    store = MemoryLimitStore(clock=clock)
    await _check_month_rollover(store, clock)


async def test_month_rollover_starts_a_fresh_budget_in_redis(client: aioredis.Redis) -> None:
    clock = Clock(END_OF_NOVEMBER)
    await _check_month_rollover(RedisLimitStore(client, clock=clock), clock)
    ttl = await client.ttl("liftoff:spent:2026-11")
    assert MONTH_RETENTION_S - 60 < ttl <= MONTH_RETENTION_S


async def _check_month_rollover(store: LimitStore, clock: Clock) -> None:
    policy = KeyPolicy("k", monthly_budget_usd=1.0)
    november = await admit(store, policy, worst_case_usd=1.0)
    assert november.reservation.month == "2026-11"
    assert (await admit(store, policy, worst_case_usd=0.01)).reason == "budget_key"
    clock.now += 1  # 2026-12-01T00:00:00Z
    december = await admit(store, policy, worst_case_usd=1.0)
    assert december.allowed and december.reservation.month == "2026-12"
    # A request admitted in November settles into November even when it ends in December.
    await store.settle(november.reservation, 0.4, prompt_tokens=1, completion_tokens=1)
    assert (await store.usage("k", "2026-11"))["keys"]["k"]["spent_usd"] == pytest.approx(0.4)
    assert (await store.usage("k", "2026-12"))["keys"]["k"]["spent_usd"] == 0


async def test_memory_store_refills_over_time() -> None:
    clock = Clock()
    store = MemoryLimitStore(clock=clock)
    policy = KeyPolicy("k", rpm=2, tpm=1000)  # 1 request at once, one more every 30 s
    assert (await admit(store, policy, tokens=50)).allowed
    assert not (await admit(store, policy, tokens=0)).allowed
    clock.now += 29.9
    assert not (await admit(store, policy, tokens=0)).allowed
    clock.now += 0.1  # one emission interval (60 / (2 + 1 - 1) s) after the first request
    refilled = await admit(store, policy, tokens=50)
    assert refilled.allowed
    assert refilled.headers["x-ratelimit-remaining-requests"] == "0"


async def test_redis_store_refills_over_time(client: aioredis.Redis) -> None:
    store = RedisLimitStore(client)
    policy = KeyPolicy("k", rpm=120)  # 12 at once, then one per 60/109 s = 550 ms
    results = await asyncio.gather(*(admit(store, policy) for _ in range(12)))
    assert all(a.allowed for a in results)
    assert not (await admit(store, policy)).allowed
    await asyncio.sleep(0.6)
    assert (await admit(store, policy)).allowed
    # The bucket's key expires once the bucket would be empty again (12 intervals at most).
    assert 0 < await client.pttl("liftoff:bucket:req:k") <= 12 * 551 + 1


async def test_memory_and_redis_stores_decide_identically(client: aioredis.Redis) -> None:
    """The same requests, settlements and clock on both back ends: the same decisions, the same
    headers to the character, the same token marks (the Lua scripts mirror app/gcra.py)."""
    clock = Clock()
    memory = MemoryLimitStore(clock=clock)
    shared = RedisLimitStore(client, clock=clock, rate_clock=clock)
    rng = random.Random(7)
    policies = [
        KeyPolicy("a", rpm=80, tpm=1000, monthly_budget_usd=0.5),
        KeyPolicy("b", rpm=20, tpm=None, monthly_budget_usd=None),
        KeyPolicy("c", rpm=None, tpm=900, monthly_budget_usd=0.2),
    ]
    held = []
    for _ in range(300):
        clock.now += rng.choice([0.0, 0.0, 0.013, 0.5, 2.7])
        policy = rng.choice(policies)
        args = (policy, "m", rng.randint(0, 120), rng.choice([0.0, 0.02, 0.07]), 1.5, 0.5)
        left, right = await memory.admit(*args), await shared.admit(*args)
        assert (left.allowed, left.reason, left.soft_exceeded, left.headers) == (
            right.allowed,
            right.reason,
            right.soft_exceeded,
            right.headers,
        )
        assert left.retry_after_s == right.retry_after_s
        assert left.budget_remaining_usd == pytest.approx(right.budget_remaining_usd)
        if left.allowed:
            assert left.reservation.token_mark == right.reservation.token_mark
            held.append((left.reservation, right.reservation))
        if held and rng.random() < 0.6:  # settle or release one in flight, in any order
            mine, theirs = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.2:
                await memory.release(mine)
                await shared.release(theirs)
            else:
                actual = rng.uniform(0, mine.amount_usd)
                used = rng.randint(0, mine.tokens + 10)  # sometimes more than reserved
                await memory.settle(mine, actual, used // 2, used - used // 2)
                await shared.settle(theirs, actual, used // 2, used - used // 2)
    month = month_key(MID_NOVEMBER)
    assert (await memory.usage(None, month))["global"] == pytest.approx(
        (await shared.usage(None, month))["global"]
    )


# --- many replicas ------------------------------------------------------------------------------


async def test_rpm_holds_exactly_across_two_replicas(redis_url: str) -> None:
    clients = [create_redis(redis_url), create_redis(redis_url)]
    # Skewed local clocks do not matter: the limit runs on Redis server time.
    # The whole limit at once (burst fraction 1: it then refills one a minute), so the count
    # does not depend on how long the 400 calls take.
    replicas = [
        RedisLimitStore(clients[0], clock=Clock(MID_NOVEMBER), bursts=WHOLE_LIMIT),
        RedisLimitStore(clients[1], clock=Clock(MID_NOVEMBER + 45), bursts=WHOLE_LIMIT),
    ]
    policy = KeyPolicy("shared", rpm=150, tpm=None)
    results = await asyncio.gather(*(admit(replicas[i % 2], policy) for i in range(400)))
    assert sum(a.allowed for a in results) == 150
    for redis in clients:
        await redis.aclose()


async def test_tpm_holds_exactly_across_two_replicas(redis_url: str) -> None:
    clients = [create_redis(redis_url), create_redis(redis_url)]
    replicas = [RedisLimitStore(c, bursts=WHOLE_LIMIT) for c in clients]
    policy = KeyPolicy("shared", tpm=10_000)
    results = await asyncio.gather(
        *(admit(replicas[i % 2], policy, tokens=100) for i in range(300))
    )
    assert sum(a.allowed for a in results) == 100
    for redis in clients:
        await redis.aclose()


async def test_budget_never_overshoots_under_concurrency(redis_url: str) -> None:
    clients = [create_redis(redis_url), create_redis(redis_url)]
    replicas = [RedisLimitStore(c) for c in clients]
    budget = 2.0
    policy = KeyPolicy("spender", monthly_budget_usd=budget)
    rng = random.Random(3)
    worst_cases = [rng.uniform(0.01, 0.08) for _ in range(300)]

    async def request(i: int) -> float:
        replica = replicas[i % 2]
        a = await admit(replica, policy, worst_case_usd=worst_cases[i], global_budget_usd=3.0)
        if not a.allowed:
            assert a.reason == "budget_key"
            return 0.0
        await asyncio.sleep(rng.uniform(0, 0.01))  # the upstream call
        # Every request costs its worst case, the hardest case for the budget.
        await replica.settle(a.reservation, worst_cases[i], prompt_tokens=10, completion_tokens=10)
        return worst_cases[i]

    spent = sum(await asyncio.gather(*(request(i) for i in range(300))))
    usage = await replicas[0].usage(None, month_key())
    assert usage["keys"]["spender"]["spent_usd"] == pytest.approx(spent)
    assert spent <= budget + 1e-9  # not even one request over
    # A refusal means the committed total plus that request exceeded the budget, so the budget
    # was really used up: the refusals were not spurious.
    assert spent > budget - max(worst_cases)
    assert usage["keys"]["spender"]["reserved_usd"] == pytest.approx(0.0, abs=1e-9)
    assert usage["global"]["reserved_usd"] == pytest.approx(0.0, abs=1e-9)
    for redis in clients:
        await redis.aclose()


async def test_memory_budget_never_overshoots_under_concurrency() -> None:
    store = MemoryLimitStore()
    policy = KeyPolicy("spender", monthly_budget_usd=1.0)

    async def request() -> float:
        a = await admit(store, policy, worst_case_usd=0.03)
        if not a.allowed:
            return 0.0
        await asyncio.sleep(0.001)
        await store.settle(a.reservation, 0.03, prompt_tokens=1, completion_tokens=1)
        return 0.03

    spent = sum(await asyncio.gather(*(request() for _ in range(100))))
    assert spent == pytest.approx(0.99)


# --- Redis going away -------------------------------------------------------------------------


def fast_health() -> BackendHealth:
    return BackendHealth(backoff_base_s=0.05, backoff_cap_s=0.2)


async def wait_until_recovered(store: ResilientLimitStore, policy: KeyPolicy) -> Admission:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        admission = await admit(store, policy)
        if store.state == "healthy":
            return admission
        await asyncio.sleep(0.05)
    raise AssertionError("the store did not recover within 5 s after Redis came back")


async def drained(store: ResilientLimitStore, limit_s: float = 5.0) -> None:
    """Wait, sending nothing, until the settlements waiting for Redis have reached it."""
    deadline = time.monotonic() + limit_s
    while store.pending_settlements:
        assert time.monotonic() < deadline, (
            f"{store.pending_settlements} settlements still waiting {limit_s} s after Redis is back"
        )
        await asyncio.sleep(0.02)


async def test_local_mode_falls_back_to_the_process_and_recovers(
    redis_server, redis_url: str
) -> None:
    redis = create_redis(redis_url)
    primary, fallback = RedisLimitStore(redis), MemoryLimitStore(bursts=WHOLE_LIMIT)
    store = ResilientLimitStore(primary, fallback, "local", fast_health())
    policy = KeyPolicy("k", rpm=2, monthly_budget_usd=5.0)
    before = await admit(store, policy, worst_case_usd=0.1)
    assert before.reservation.owner is primary and store.state == "healthy"

    redis_server.stop()
    started = time.monotonic()
    during = [await admit(store, policy, worst_case_usd=0.1) for _ in range(3)]
    assert time.monotonic() - started < 2
    assert store.state == "degraded"
    # Limits now hold per process (one replica): a fresh in-process bucket of 2 at once.
    assert [a.allowed for a in during] == [True, True, False]
    assert during[0].reservation.owner is fallback
    await store.settle(during[0].reservation, 0.05, prompt_tokens=5, completion_tokens=5)
    month = during[0].reservation.month
    assert (await fallback.usage("k", month))["keys"]["k"]["spent_usd"] == pytest.approx(0.05)
    # A reservation made in Redis before the outage cannot be settled now: kept for replay, as
    # is the record of the one decided locally (its spend and usage belong in Redis too).
    await store.settle(before.reservation, 0.05, prompt_tokens=5, completion_tokens=7)
    assert store.pending_settlements == 2
    with pytest.raises(BackendUnavailable):
        await store.usage("k", month)

    redis_server.start()
    # No request comes: the replay probes Redis on its own and empties the queue.
    await drained(store)
    assert store.state == "healthy" and store.health.recoveries_total == 1
    assert store.lost_settlements_total == 0
    replayed = (await store.usage("k", month))["keys"]["k"]
    assert replayed["spent_usd"] == pytest.approx(0.1)
    assert (replayed["requests"], replayed["completion_tokens"]) == (2, 12)
    # Only the Redis reservation was held there: nothing stays reserved.
    assert replayed["reserved_usd"] == pytest.approx(0.0)
    after = await admit(store, policy, worst_case_usd=0.1)
    assert after.reservation.owner is primary
    await redis.aclose()


class AnswerLostAfterApplying(RedisLimitStore):
    """Redis applies the first settlement, but its answer is lost (a socket timeout)."""

    lost = 0

    async def settle(self, reservation, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        await super().settle(reservation, *args, **kwargs)
        if not self.lost:
            self.lost += 1
            reservation.closed = False  # the caller never learnt that it was applied
            raise BackendUnavailable("redis settle failed: TimeoutError")


async def test_a_settlement_sent_again_after_a_lost_answer_counts_once(
    redis_server, redis_url: str
) -> None:
    redis = create_redis(redis_url)
    primary = AnswerLostAfterApplying(redis)
    store = ResilientLimitStore(primary, MemoryLimitStore(), "local", fast_health())
    policy = KeyPolicy("k", monthly_budget_usd=5.0)
    admission = await admit(store, policy, worst_case_usd=0.5)
    await store.settle(admission.reservation, 0.2, prompt_tokens=10, completion_tokens=4)
    assert primary.lost == 1 and store.pending_settlements == 1
    await drained(store)
    usage = (await store.usage("k", admission.reservation.month))["keys"]["k"]
    assert (usage["requests"], usage["completion_tokens"]) == (1, 4)
    assert (usage["spent_usd"], usage["reserved_usd"]) == pytest.approx((0.2, 0.0))
    await redis.aclose()


async def test_redis_remembers_settlements_and_releases_by_reservation(client) -> None:
    store = RedisLimitStore(client, clock=Clock())
    policy = KeyPolicy("k", tpm=1000, monthly_budget_usd=5.0)
    settled = await admit(store, policy, tokens=100, worst_case_usd=0.5)
    released = await admit(store, policy, tokens=100, worst_case_usd=0.5)
    reservations = (settled.reservation, released.reservation)
    assert reservations[0].id != reservations[1].id
    for _ in range(2):  # the second time as a replay would send them: not yet closed here
        await store.settle(reservations[0], 0.2, prompt_tokens=10, completion_tokens=4)
        await store.release(reservations[1])
        for reservation in reservations:
            reservation.closed = False
    await store.release(reservations[0])  # a release after the settlement changes nothing
    usage = (await store.usage("k", reservations[0].month))["keys"]["k"]
    assert (usage["requests"], usage["spent_usd"]) == (1, pytest.approx(0.2))
    assert usage["reserved_usd"] == pytest.approx(0.0)
    ttl = await client.ttl(f"liftoff:settled:{reservations[0].id}")
    assert 0 < ttl <= 300


async def test_shutdown_gives_waiting_settlements_a_last_chance(
    redis_server, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = create_redis(redis_url)
    store = ResilientLimitStore(RedisLimitStore(redis), MemoryLimitStore(), "local", fast_health())
    policy = KeyPolicy("k", monthly_budget_usd=5.0)
    held = [await admit(store, policy, worst_case_usd=0.1) for _ in range(2)]
    redis_server.stop()
    await store.settle(held[0].reservation, 0.05, prompt_tokens=1, completion_tokens=1)
    assert store.pending_settlements == 1
    redis_server.start()
    await store.aclose(timeout_s=5)  # Redis is back: the settlement gets there
    assert (store.pending_settlements, store.lost_settlements_total) == (0, 0)
    month = held[0].reservation.month
    assert (await store.usage("k", month))["keys"]["k"]["requests"] == 1

    redis_server.stop()
    await store.settle(held[1].reservation, 0.05, prompt_tokens=1, completion_tokens=1)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="app.limits"):
        await store.aclose(timeout_s=0.5)  # still down: bounded, and said
    assert time.monotonic() - started < 2
    assert (store.pending_settlements, store.lost_settlements_total) == (0, 1)
    assert "1 settlements never reached Redis before shutdown" in caplog.text
    redis_server.start()
    await redis.aclose()


async def test_settlements_waiting_for_redis_are_bounded(redis_server, redis_url: str) -> None:
    redis = create_redis(redis_url)
    store = ResilientLimitStore(
        RedisLimitStore(redis), MemoryLimitStore(), "local", fast_health(), max_pending=2
    )
    policy = KeyPolicy("k", monthly_budget_usd=1.0)
    held = [await admit(store, policy, worst_case_usd=0.1) for _ in range(3)]
    redis_server.stop()
    for admission in held:
        await store.release(admission.reservation)
    assert (store.pending_settlements, store.lost_settlements_total) == (2, 1)
    redis_server.start()
    await redis.aclose()


async def test_open_mode_admits_everything_while_redis_is_down(
    redis_server, redis_url: str
) -> None:
    redis = create_redis(redis_url)
    store = ResilientLimitStore(RedisLimitStore(redis), MemoryLimitStore(), "open", fast_health())
    policy = KeyPolicy("k", rpm=1, monthly_budget_usd=0.0)
    redis_server.stop()
    results = [await admit(store, policy, worst_case_usd=1.0) for _ in range(5)]
    assert all(a.allowed and a.reservation.amount_usd == 0 for a in results)
    assert store.degraded_decisions_total == 5
    for admission in results[:3]:  # answered while Redis is down: recorded once it is back
        await store.settle(admission.reservation, 0.25, prompt_tokens=2, completion_tokens=3)
    for admission in results[3:]:
        await store.release(admission.reservation)  # nothing was held: nothing to give back
    assert store.pending_settlements == 3
    redis_server.start()
    await drained(store)
    usage = (await store.usage("k", results[0].reservation.month))["keys"]["k"]
    assert (usage["requests"], usage["completion_tokens"]) == (3, 9)
    assert (usage["spent_usd"], usage["reserved_usd"]) == pytest.approx((0.75, 0.0))
    recovered = await wait_until_recovered(store, KeyPolicy("other"))
    assert recovered.reservation.owner is store.primary
    assert (await admit(store, policy, worst_case_usd=1.0)).reason == "budget_key"
    await redis.aclose()


async def test_closed_mode_refuses_while_redis_is_down(redis_server, redis_url: str) -> None:
    redis = create_redis(redis_url)
    # A back-off long enough that the three calls below surely fall within it.
    health = BackendHealth(backoff_base_s=1.0, backoff_cap_s=1.0)
    store = ResilientLimitStore(RedisLimitStore(redis), MemoryLimitStore(), "closed", health)
    policy = KeyPolicy("k", rpm=100)
    redis_server.stop()
    for _ in range(3):  # the first tries Redis, the others are refused during the back-off
        with pytest.raises(BackendUnavailable):
            await admit(store, policy)
    assert store.health.failures_total == 1
    redis_server.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert (await admit(store, policy)).allowed
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline, "no recovery within 5 s after Redis came back"
            await asyncio.sleep(0.05)
    assert store.state == "healthy"
    await redis.aclose()


def test_resilient_store_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="local, open, closed"):
        ResilientLimitStore(MemoryLimitStore(), MemoryLimitStore(), "fail")  # type: ignore[arg-type]
