"""The rate limiter's promise (app/gcra.py): at most the limit in any 60-s window, at most the
burst at once, on both back ends; headers that age consistently; the local fallback's share.

Arrival patterns are replayed on a fake clock (integer microseconds, Redis TIME's resolution)
against the in-process store and against the Redis store with the same clock, so the Lua scripts
are held to the same bound and to the same decisions."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from app.config import ConfigError, LimitsConfig, load_config
from app.gcra import MAX_LIMIT, PERIOD_US, Bucket
from app.limits import (
    BurstFractions,
    KeyPolicy,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    ResilientLimitStore,
    build_limit_store,
    local_share,
    remaining_after,
)
from app.providers.base import parse_duration
from app.redis_backend import BackendHealth, create_redis
from tests.fixtures.redis import SLOW_MACHINE_TIMEOUT_S, free_port

START_US = 1_790_000_000 * 1_000_000


class MicroClock:
    """A fake clock set in whole microseconds."""

    def __init__(self) -> None:
        self.us = START_US

    def __call__(self) -> float:
        return self.us / 1_000_000


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = create_redis(redis_url, socket_timeout_s=SLOW_MACHINE_TIMEOUT_S)
    yield redis
    await redis.aclose()


StoreFactory = Callable[[MicroClock, BurstFractions], LimitStore]


def same(fraction: float) -> BurstFractions:
    return BurstFractions(fraction, fraction)


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Stores of one back end on a given clock and burst fractions."""
    if request.param == "memory":
        return lambda clock, bursts: MemoryLimitStore(clock=clock, bursts=bursts)
    redis = request.getfixturevalue("client")
    return lambda clock, bursts: RedisLimitStore(
        redis, clock=clock, rate_clock=clock, bursts=bursts
    )


# --- arrival patterns ---------------------------------------------------------------------------


def burst_then_steady(rng: random.Random, bucket: Bucket) -> list[int]:
    """The tight case: a full burst, then one request every emission interval (and a
    microsecond before it, which must be refused), for a minute and a half."""
    interval = -(-PERIOD_US // bucket.refill)
    times = [0] * (bucket.burst + 2)
    t = 0
    while t < 3 * PERIOD_US // 2:
        t += interval
        times += [t - 1, t]
    return times


def uniform(rng: random.Random, bucket: Bucket) -> list[int]:
    return sorted(rng.randrange(0, 3 * PERIOD_US) for _ in range(rng.randint(50, 400)))


def window_edges(rng: random.Random, bucket: Bucket) -> list[int]:
    """Bursts just inside and just outside window boundaries."""
    times = []
    for edge in (0, PERIOD_US - 1, PERIOD_US, 2 * PERIOD_US - 1, 2 * PERIOD_US):
        times += [edge] * rng.randint(1, bucket.limit + 3)
    return times


def clustered(rng: random.Random, bucket: Bucket) -> list[int]:
    times = []
    for _ in range(rng.randint(3, 12)):
        centre = rng.randrange(0, 3 * PERIOD_US)
        times += [max(0, centre + int(rng.gauss(0, 2_000_000))) for _ in range(rng.randint(5, 60))]
    return sorted(times)


def saturating(rng: random.Random, bucket: Bucket) -> list[int]:
    """Arrivals faster than the bucket drains, for two minutes: it is never empty, so early
    reservations settle while later ones are stacked behind them."""
    return list(range(0, 2 * PERIOD_US, rng.randint(50_000, 250_000)))


PATTERNS = (burst_then_steady, uniform, window_edges, clustered, saturating)


@dataclass
class Admitted:
    at_us: int
    counted_tokens: int  # reserved, until the settlement replaces it by the tokens used


async def replay(
    store: LimitStore, clock: MicroClock, policy: KeyPolicy, times: list[int], rng: random.Random
) -> tuple[list[Admitted], list[tuple[bool, dict[str, str]]]]:
    """Admit requests at `times` (offsets in us) with random token counts; settle or release
    them later, out of order, with at most the tokens reserved. Returns what was admitted and
    every decision (allowed, headers)."""
    tok_burst = Bucket.of(policy.tpm, store.bursts.tokens).burst if policy.tpm else 0
    pending: list[tuple[int, Admitted, object]] = []
    admitted: list[Admitted] = []
    decisions = []

    async def settle_due(until_us: int) -> None:
        pending.sort(key=lambda item: item[0])
        while pending and pending[0][0] <= until_us:
            due, record, reservation = pending.pop(0)
            clock.us = START_US + due
            if rng.random() < 0.2:
                await store.release(reservation)
                record.counted_tokens = 0
            else:
                # Half use all they reserved (the tightest case for the window), half less.
                used = (
                    reservation.tokens if rng.random() < 0.5 else rng.randint(0, reservation.tokens)
                )
                await store.settle(reservation, 0.0, used // 3, used - used // 3)
                record.counted_tokens = used

    for offset in times:
        await settle_due(offset)
        clock.us = START_US + offset
        tokens = rng.randint(0, max(1, tok_burst + tok_burst // 5))  # some larger than the burst
        admission = await store.admit(policy, "m", tokens, 0.0, None, 0.8)
        decisions.append((admission.allowed, admission.headers))
        if admission.allowed:
            record = Admitted(offset, tokens)
            admitted.append(record)
            pending.append(
                (offset + rng.randrange(0, 90 * 1_000_000), record, admission.reservation)
            )
    await settle_due(10**15)
    return admitted, decisions


def busiest_window(admitted: list[Admitted], weight: Callable[[Admitted], int]) -> int:
    """The largest total over any window [t, t + 60 s) (one starting at an admission is the
    largest: moving a window's start to its first admission only adds)."""
    best, end, total = 0, 0, 0
    for start in range(len(admitted)):
        while end < len(admitted) and admitted[end].at_us < admitted[start].at_us + PERIOD_US:
            total += weight(admitted[end])
            end += 1
        best = max(best, total)
        total -= weight(admitted[start])
    return best


async def test_no_60_s_window_exceeds_the_limit_for_any_arrival_pattern(
    make_store: StoreFactory,
) -> None:
    rng = random.Random(20261201)
    for case in range(48):
        fractions = [0.1, 0.1, 0.03, 0.25, 0.5, 1.0]
        bursts = BurstFractions(rng.choice(fractions), rng.choice(fractions))
        rpm = rng.randint(1, 60)
        # Every other case without a request limit, so that tokens are what binds.
        policy = KeyPolicy(f"k{case}", rpm=rpm if case % 2 else None, tpm=rng.randint(20, 5000))
        requests = Bucket.of(rpm, bursts.requests)
        pattern = PATTERNS[case % len(PATTERNS)]
        clock = MicroClock()
        store = make_store(clock, bursts)
        admitted, _ = await replay(store, clock, policy, pattern(rng, requests), rng)
        where = f"case {case}: {pattern.__name__}, {policy}, {bursts}"
        assert busiest_window(admitted, lambda a: a.counted_tokens) <= policy.tpm, where
        if policy.rpm is not None:
            assert busiest_window(admitted, lambda a: 1) <= policy.rpm, where
            # At most the burst at once.
            at_once = max(sum(a.at_us == b.at_us for b in admitted) for a in admitted)
            assert at_once <= requests.burst, where


async def test_settling_gives_back_only_what_the_bucket_still_holds(
    make_store: StoreFactory,
) -> None:
    """A reservation that drained almost entirely before others stacked behind it: settling it
    unused must not hand its drained tokens back a second time, or the next minute would hold
    about one burst more than the limit."""
    clock = MicroClock()
    store = make_store(clock, same(0.1))
    policy = KeyPolicy("refund", tpm=1000)  # 100 tokens at once, refilling 901 a minute
    first = await store.admit(policy, "m", 100, 0.0, None, 0.8)
    clock.us += -(-98 * PERIOD_US // 901)  # 98 of its 100 tokens drained: 2 still held
    second = await store.admit(policy, "m", 98, 0.0, None, 0.8)
    assert second.allowed and second.headers["x-ratelimit-remaining-tokens"] == "0"
    await store.settle(first.reservation, 0.0, prompt_tokens=0, completion_tokens=0)
    after = await store.admit(policy, "m", 0, 0.0, None, 0.8)
    # Not 100: under 2 tokens of it were still held (the clock moved a whole microsecond past
    # 98 tokens' drain), and only whole tokens go back.
    assert after.headers["x-ratelimit-remaining-tokens"] == "1"
    # The window that starts with the second request: 98 + 1 now + the steady rate, <= 1000.
    admitted = [Admitted(0, 98)]
    start = clock.us
    while clock.us < start + PERIOD_US:
        if (await store.admit(policy, "m", 1, 0.0, None, 0.8)).allowed:
            admitted.append(Admitted(clock.us - start, 1))
        clock.us += 20_000
    assert busiest_window(admitted, lambda a: a.counted_tokens) <= 1000


@pytest.mark.parametrize("kind", ["requests", "tokens"])
@pytest.mark.parametrize(("limit", "fraction"), [(1, 0.1), (7, 0.5), (60, 0.1), (500, 0.03)])
async def test_the_bound_is_reached(
    make_store: StoreFactory, kind: str, limit: int, fraction: float
) -> None:
    """A full burst, then one unit every emission interval (and one a microsecond before it,
    refused): the busiest window holds exactly the limit, not less."""
    clock = MicroClock()
    store = make_store(clock, same(fraction))
    policy = KeyPolicy("tight", rpm=limit) if kind == "requests" else KeyPolicy("tight", tpm=limit)
    tokens = 0 if kind == "requests" else 1
    admitted = []
    for offset in burst_then_steady(random.Random(0), Bucket.of(limit, fraction)):
        clock.us = START_US + offset
        if (await store.admit(policy, "m", tokens, 0.0, None, 0.8)).allowed:
            admitted.append(Admitted(offset, tokens))
    assert busiest_window(admitted, lambda a: 1) == limit


async def test_memory_and_redis_replay_the_same_decisions(client: aioredis.Redis) -> None:
    """Python ints and Lua doubles agree to the unit, up to the largest limit allowed (where a
    bucket's level nears 2**53)."""
    seed = random.Random(5).randrange(10**9)
    for fraction, tpm in ((0.1, 3000), (0.5, 3000), (1.0, MAX_LIMIT), (0.25, MAX_LIMIT - 1)):
        policy = KeyPolicy(f"same-{fraction}-{tpm}", rpm=40, tpm=tpm)
        results = []
        for store_kind in ("memory", "redis"):
            clock = MicroClock()
            store = (
                MemoryLimitStore(clock=clock, bursts=same(fraction))
                if store_kind == "memory"
                else RedisLimitStore(client, clock=clock, rate_clock=clock, bursts=same(fraction))
            )
            rng = random.Random(seed)
            times = clustered(rng, Bucket.of(40, fraction))
            results.append(await replay(store, clock, policy, times, rng))
        (mem_admitted, mem_decisions), (red_admitted, red_decisions) = results
        assert mem_decisions == red_decisions
        assert [(a.at_us, a.counted_tokens) for a in mem_admitted] == [
            (a.at_us, a.counted_tokens) for a in red_admitted
        ]


async def test_the_issue_s_rpm_300_key_gets_at_most_300_in_any_minute(
    make_store: StoreFactory,
) -> None:
    """The issue's measurement: 549 admitted in one sliding minute for rpm 300 (the full-period
    burst). Offered 20 requests a second for 3 minutes, the default admits at most 300 in any
    60-s window: 30 at once, then 271 a minute."""
    clock = MicroClock()
    store = make_store(clock, BurstFractions())
    policy = KeyPolicy("issue", rpm=300)
    admitted = []
    for step in range(20 * 180):
        clock.us = START_US + step * 50_000
        if (await store.admit(policy, "m", 0, 0.0, None, 0.8)).allowed:
            admitted.append(Admitted(step * 50_000, 0))
    assert busiest_window(admitted, lambda a: 1) == 300
    assert 30 + 271 * 2 <= len(admitted) <= 30 + 271 * 3  # the steady rate over 3 minutes


@pytest.mark.parametrize(("fraction", "burst"), [(0.05, 10), (0.1, 20), (0.5, 100), (1.0, 200)])
async def test_the_burst_setting_is_honoured(
    make_store: StoreFactory, fraction: float, burst: int
) -> None:
    clock = MicroClock()
    store = make_store(clock, same(fraction))
    policy = KeyPolicy("b", rpm=200, tpm=200 * 50)
    at_once = [await store.admit(policy, "m", 0, 0.0, None, 0.8) for _ in range(burst + 1)]
    assert [a.allowed for a in at_once] == [True] * burst + [False]
    assert at_once[0].headers["x-ratelimit-remaining-requests"] == str(burst - 1)
    # Then one per emission interval 60 / (limit + 1 - burst) s, not a microsecond earlier.
    interval_us = -(-PERIOD_US // (200 + 1 - burst))
    clock.us += interval_us - 1
    assert not (await store.admit(policy, "m", 0, 0.0, None, 0.8)).allowed
    clock.us += 1
    assert (await store.admit(policy, "m", 0, 0.0, None, 0.8)).allowed
    # Tokens: the burst share of tpm at once, not a token more.
    tokens = KeyPolicy("t", tpm=10_000)
    assert not (await store.admit(tokens, "m", burst * 50 + 1, 0.0, None, 0.8)).allowed
    assert (await store.admit(tokens, "m", burst * 50, 0.0, None, 0.8)).allowed


# --- headers ---------------------------------------------------------------------------------


async def test_remaining_follows_from_the_reset_header_as_it_ages(
    make_store: StoreFactory,
) -> None:
    """What the gateway shows for a key between admissions (`remaining_after` of the aged
    reset) is what the limiter itself answers at that moment, to within the reset header's
    millisecond rounding."""
    rng = random.Random(11)
    for case in range(40):
        fraction = rng.choice([0.1, 0.3, 1.0])
        tpm = rng.randint(100, 20_000)
        bucket = Bucket.of(tpm, fraction)
        policy = KeyPolicy(f"h{case}", tpm=tpm)
        clock = MicroClock()
        store = make_store(clock, same(fraction))
        for _ in range(rng.randint(1, 6)):
            await store.admit(policy, "m", rng.randint(1, bucket.burst), 0.0, None, 0.8)
        last = await store.admit(policy, "m", 0, 0.0, None, 0.8)
        elapsed_s = rng.uniform(0, 10)
        clock.us += round(elapsed_s * 1_000_000)
        # As the gateway reads it back (app/limit_view.py).
        aged = max(0.0, parse_duration(last.headers["x-ratelimit-reset-tokens"]) - elapsed_s)
        shown = remaining_after(aged, tpm, fraction)
        truth = await store.admit(policy, "m", 0, 0.0, None, 0.8)
        rounding = 0.0005 * bucket.refill / 60 + 1e-6  # units the ms rounding can hide
        exact = int(truth.headers["x-ratelimit-remaining-tokens"])
        assert abs(shown - exact) <= rounding + 1, (case, shown, exact)
        if rounding < 0.5:
            assert shown in (exact - 1, exact, exact + 1)


def test_remaining_after_starts_at_the_burst_and_reaches_zero() -> None:
    assert remaining_after(0.0, 600, 0.1) == 60  # not 600: 60 may be sent now
    assert remaining_after(60 / 541, 600, 0.1) == 59  # one emission interval of backlog
    assert remaining_after(60 * 60 / 541, 600, 0.1) == 0
    assert remaining_after(3600.0, 600, 0.1) == 0
    assert remaining_after(0.0, 5, 0.1) == 1  # a burst is at least one request
    assert remaining_after(0.0, 5, 1.0) == 5
    # Tokens' default: a quarter of tpm at once.
    assert remaining_after(0.0, 200_000, BurstFractions().for_kind("tokens")) == 50_000
    assert BurstFractions().for_kind("requests") == 0.1


@pytest.mark.parametrize("fractions", [(0.0, 0.25), (0.1, 1.01), (-1.0, 0.5)])
def test_burst_fractions_must_be_in_zero_to_one(fractions: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match=r"burst_fraction must be in \(0, 1\]"):
        BurstFractions(*fractions)


# --- the local fallback ----------------------------------------------------------------------


def test_the_local_share_divides_each_limit_by_the_replicas() -> None:
    policy = KeyPolicy("k", rpm=300, tpm=100_000, monthly_budget_usd=5.0)
    assert local_share(policy, 1) is policy
    assert local_share(policy, 3) == KeyPolicy("k", rpm=100, tpm=33_333, monthly_budget_usd=5.0)
    assert local_share(KeyPolicy("k", rpm=2, tpm=None), 3) == KeyPolicy("k", rpm=1, tpm=None)


async def test_replicas_without_redis_admit_at_most_the_limit_together() -> None:
    """Three replicas, Redis unreachable, mode local with local_fallback_replicas 3: together
    they admit at most the key's limit in any 60-s window, and say the local limit."""
    clock = MicroClock()
    unreachable = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    replicas = [
        ResilientLimitStore(
            RedisLimitStore(unreachable),
            MemoryLimitStore(clock=clock, bursts=same(1.0)),
            "local",
            BackendHealth(backoff_base_s=60, backoff_cap_s=60),
            fallback_replicas=3,
        )
        for _ in range(3)
    ]
    policy = KeyPolicy("k", rpm=30, tpm=None)
    admitted = []
    for step in range(3 * 120):  # 3 requests a second (one per replica) for two minutes
        clock.us = START_US + (step // 3) * 1_000_000
        admission = await replicas[step % 3].admit(policy, "m", 0, 0.0, None, 0.8)
        assert admission.headers["x-ratelimit-limit-requests"] == "10"
        if admission.allowed:
            admitted.append(Admitted(clock.us - START_US, 0))
    assert all(r.state == "degraded" for r in replicas)
    assert busiest_window(admitted, lambda a: 1) == 30
    # The same replicas dividing by 1 (the default) would each allow the whole limit.
    alone = ResilientLimitStore(
        RedisLimitStore(unreachable), MemoryLimitStore(clock=clock, bursts=same(1.0)), "local"
    )
    results = [await alone.admit(policy, "m", 0, 0.0, None, 0.8) for _ in range(31)]
    assert sum(a.allowed for a in results) == 30
    await unreachable.aclose()


def test_fallback_replicas_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match="fallback_replicas must be an integer >= 1"):
        ResilientLimitStore(MemoryLimitStore(), MemoryLimitStore(), "local", fallback_replicas=0)


# --- settings ----------------------------------------------------------------------------------


async def test_the_limits_settings_build_the_store(client: aioredis.Redis) -> None:
    config = LimitsConfig(rpm_burst_fraction=0.2, tpm_burst_fraction=0.4, local_fallback_replicas=4)
    local = build_limit_store(config, None)
    assert isinstance(local, MemoryLimitStore)
    assert local.bursts == BurstFractions(requests=0.2, tokens=0.4)
    shared = build_limit_store(config, client)
    assert isinstance(shared, ResilientLimitStore)
    assert shared.fallback_replicas == 4 and shared.mode == "local"
    assert shared.primary.bursts == shared.fallback.bursts == local.bursts
    # The defaults: 10% of rpm and 25% of tpm at once.
    defaults = build_limit_store(load_config(env={}).limits, None)
    assert defaults.bursts == BurstFractions(0.1, 0.25) == BurstFractions()
    assert load_config(env={}).limits.bursts == BurstFractions()  # what LimitView is given


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RPM_BURST_FRACTION", "0", r"limits\.rpm_burst_fraction"),
        ("TPM_BURST_FRACTION", "1.5", r"limits\.tpm_burst_fraction"),
        ("LOCAL_FALLBACK_REPLICAS", "0", r"limits\.local_fallback_replicas"),
        ("DEFAULT_RPM", "100000001", r"limits\.default_rpm"),
    ],
)
def test_limits_settings_refuse_what_the_limiter_cannot_keep(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env={f"LIFTOFF__LIMITS__{variable}": value})
