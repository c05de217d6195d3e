"""Rate limits and monthly budgets: one atomic decision per request, shared by every replica.

`admit` checks requests-per-minute and tokens-per-minute (GCRA, a leaky bucket kept as one
"theoretical arrival time" per key) and the key's and the deployment's monthly budgets, and reserves
the request's worst-case cost and tokens, all in one step: one Lua script in Redis, or one critical
section in process. A pre-check that reads a counter and writes it later lets concurrent requests
through together; reserving the worst case up front is what keeps limits and budgets from being
overshot. `settle` then replaces both reservations by what the answer really used (the dollar cost,
and the tokens: the arrival time moves back by the tokens not generated), in the same step that
records the usage; `release` gives both back when the request failed.

Both back ends run the same state transition (`gcra_next` here, mirrored line for line in
`lua/admit.lua`) and hand their raw result to `build_admission`, so headers, retry times, budget
figures and soft thresholds are computed by one piece of code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import redis.asyncio as aioredis

from app.accounting import month_key
from app.redis_backend import (
    BackendHealth,
    BackendUnavailable,
    register_script,
    unavailable_on_error,
)

logger = logging.getLogger(__name__)

PERIOD_S = 60.0  # rpm and tpm are per minute
# Tolerance for float rounding at the exact boundary (the Lua side stores times to the microsecond).
EPSILON_S = 1e-6
EPSILON_USD = 1e-9
MONTH_RETENTION_S = 40 * 24 * 3600  # month data outlives its month long enough to be read after it

Reason = Literal["ok", "rate_limit_requests", "rate_limit_tokens", "budget_key", "budget_global"]
FailureMode = Literal["local", "open", "closed"]
# Order matters: it is the order in which checks are reported, and the codes the Lua script returns.
REASONS: tuple[Reason, ...] = (
    "ok",
    "rate_limit_requests",
    "rate_limit_tokens",
    "budget_key",
    "budget_global",
)
USAGE_INT_METRICS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_input_tokens",  # of prompt_tokens: served from the provider's prompt cache
    "reasoning_tokens",  # of completion_tokens: hidden reasoning
    "requests",
    "cache_hits",
)
USAGE_FLOAT_METRICS = ("cost_usd", "saved_usd")


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Limits of one client key; None means unlimited."""

    key_id: str
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: float | None = None

    def __post_init__(self) -> None:
        if not self.key_id:
            raise ValueError("key_id must be a non-empty string")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or null, got {value!r}")
        budget = self.monthly_budget_usd
        if budget is not None and (not math.isfinite(budget) or budget < 0):
            raise ValueError(f"monthly_budget_usd must be a number >= 0 or null, got {budget!r}")


@dataclass(slots=True)
class Reservation:
    """Worst-case cost held against the budgets until the request is settled or released."""

    key_id: str
    model: str
    month: str
    amount_usd: float
    # Tokens held against tokens-per-minute (0 when the key has no tpm limit) and that limit.
    tokens: int = 0
    tpm: int | None = None
    # The store that made it: settle/release must go back to it (see ResilientLimitStore).
    owner: LimitStore | None = field(default=None, compare=False, repr=False)
    closed: bool = field(default=False, compare=False)

    def close(self) -> bool:
        """Mark settled/released; False if it already was (a second settle must not count twice)."""
        if self.closed:
            return False
        self.closed = True
        return True


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    reason: Reason
    retry_after_s: float
    headers: dict[str, str]
    budget_remaining_usd: float | None
    soft_exceeded: bool
    reservation: Reservation | None


class LimitStore(Protocol):
    async def admit(
        self,
        policy: KeyPolicy,
        model: str,
        tokens: int,
        worst_case_usd: float,
        global_budget_usd: float | None,
        soft_fraction: float,
    ) -> Admission: ...

    async def settle(
        self,
        reservation: Reservation,
        actual_usd: float,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool = False,
        saved_usd: float = 0.0,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None: ...

    async def release(self, reservation: Reservation) -> None: ...

    async def usage(self, key_id: str | None, month: str) -> dict: ...


# ---------------------------------------------------------------------------------------------
# The shared math
# ---------------------------------------------------------------------------------------------


def gcra_next(tat: float, now: float, limit: int, cost: float) -> float:
    """The theoretical arrival time after admitting `cost` units (GCRA with a full-period burst).

    The request fits when `gcra_next(...) - PERIOD_S <= now`: a full bucket admits `limit` units
    at once, and it refills at `limit` units per period.
    """
    return max(tat, now) + cost * PERIOD_S / limit


def gcra_fits(next_tat: float, now: float) -> bool:
    return next_tat - PERIOD_S <= now + EPSILON_S


def token_shift_s(reservation: Reservation, used_tokens: int) -> float:
    """How far settling moves the token arrival time: back by the reserved tokens not used
    (forward when the answer used more than was reserved). 0 without a tpm limit."""
    if not reservation.tpm:
        return 0.0
    return (used_tokens - reservation.tokens) * PERIOD_S / reservation.tpm


def settled_tat(tat: float, now: float, shift_s: float) -> float | None:
    """The token arrival time after a settlement's shift; None when the bucket is full again."""
    after = max(tat, now) + shift_s
    return after if after > now else None


def format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format (Go duration style): "250ms", "1s", "6m0s", "1.5s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest_ms = divmod(ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole, frac = divmod(rest_ms, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") + "s" if frac else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


@dataclass(frozen=True, slots=True)
class RawDecision:
    """What a back end's atomic step decided and observed; everything else derives from it."""

    code: int  # index into REASONS
    now: float
    request_tat: float  # stored theoretical arrival times before this request
    token_tat: float
    key_committed_usd: float  # spent + reserved before this request's reservation
    global_committed_usd: float


def _limit_figures(
    limit: int, tat: float, now: float, cost: float, admitted: bool
) -> tuple[int, float, float]:
    """(remaining, reset s, retry s) of one GCRA limit; after this request if admitted."""
    after = gcra_next(tat, now, limit, cost) if admitted else max(tat, now)
    backlog = after - now
    remaining = max(0, math.floor((PERIOD_S - backlog) * limit / PERIOD_S + 1e-6))
    retry = 0.0 if admitted else max(0.0, gcra_next(tat, now, limit, cost) - PERIOD_S - now)
    return remaining, backlog, retry


def build_admission(
    raw: RawDecision,
    policy: KeyPolicy,
    model: str,
    tokens: int,
    worst_case_usd: float,
    global_budget_usd: float | None,
    soft_fraction: float,
    month: str,
    owner: LimitStore,
) -> Admission:
    reason = REASONS[raw.code]
    admitted = reason == "ok"
    headers: dict[str, str] = {}
    retry_after = 0.0
    for kind, limit, tat, cost, denying in (
        ("requests", policy.rpm, raw.request_tat, 1, "rate_limit_requests"),
        ("tokens", policy.tpm, raw.token_tat, tokens, "rate_limit_tokens"),
    ):
        if limit is None:
            continue
        remaining, reset, retry = _limit_figures(limit, tat, raw.now, cost, admitted)
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset)
        if reason == denying:
            retry_after = retry

    reserve = worst_case_usd if admitted and _has_budget(policy, global_budget_usd) else 0.0
    remaining_budgets = []
    soft = False
    for budget, committed in (
        (policy.monthly_budget_usd, raw.key_committed_usd),
        (global_budget_usd, raw.global_committed_usd),
    ):
        if budget is None:
            continue
        after = committed + reserve
        remaining_budgets.append(max(0.0, budget - after))
        if after >= soft_fraction * budget - EPSILON_USD:
            soft = True
    reservation = None
    if admitted:
        held = tokens if policy.tpm is not None else 0
        reservation = Reservation(
            policy.key_id, model, month, reserve, held, policy.tpm, owner=owner
        )
    return Admission(
        allowed=admitted,
        reason=reason,
        retry_after_s=retry_after,
        headers=headers,
        budget_remaining_usd=min(remaining_budgets) if remaining_budgets else None,
        soft_exceeded=soft,
        reservation=reservation,
    )


def _has_budget(policy: KeyPolicy, global_budget_usd: float | None) -> bool:
    return policy.monthly_budget_usd is not None or global_budget_usd is not None


def _check_admit_args(tokens: int, worst_case_usd: float, soft_fraction: float) -> None:
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0, got {tokens!r}")
    if not math.isfinite(worst_case_usd) or worst_case_usd < 0:
        raise ValueError(f"worst_case_usd must be a number >= 0, got {worst_case_usd!r}")
    if not 0 < soft_fraction <= 1:
        raise ValueError(f"soft_fraction must be in (0, 1], got {soft_fraction!r}")


def _check_settle_args(
    actual_usd: float,
    prompt_tokens: int,
    completion_tokens: int,
    saved_usd: float,
    cached_input_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> None:
    for name, value in (("actual_usd", actual_usd), ("saved_usd", saved_usd)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("cached_input_tokens", cached_input_tokens),
        ("reasoning_tokens", reasoning_tokens),
    ):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def tpm_tokens_used(
    prompt_tokens: int, completion_tokens: int, cached: bool, count_cache_hits_tokens: bool
) -> int:
    """What a settled request counts against tokens per minute: the provider's usage, and nothing
    for an answer from the gateway's cache unless `limits.count_cache_hits_tokens`."""
    if cached and not count_cache_hits_tokens:
        return 0
    return prompt_tokens + completion_tokens


def usage_field(model: str, metric: str) -> str:
    # Metric first: model names may contain ":" (fine-tuned models), metric names never do.
    return f"{metric}:{model}"


@functools.lru_cache(maxsize=1024)
def _usage_fields(model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A model's usage hash fields, integer and float ones (built once per model: settling runs
    for every request)."""
    return (
        tuple(usage_field(model, m) for m in USAGE_INT_METRICS),
        tuple(usage_field(model, m) for m in USAGE_FLOAT_METRICS),
    )


def settle_increments(
    reservation: Reservation,
    actual_usd: float,
    prompt_tokens: int,
    completion_tokens: int,
    cached: bool,
    saved_usd: float,
    cached_input_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> tuple[dict[str, int], dict[str, float]]:
    """The usage counters one settled request adds (zero increments left out)."""
    int_names, float_names = _usage_fields(reservation.model)
    ints = (prompt_tokens, completion_tokens, cached_input_tokens, reasoning_tokens, 1, int(cached))
    floats = (actual_usd, saved_usd)
    return (
        {name: value for name, value in zip(int_names, ints, strict=True) if value},
        {name: value for name, value in zip(float_names, floats, strict=True) if value},
    )


def key_usage(spent: float, reserved: float, fields: dict[str, float]) -> dict:
    """One key's usage document from its stored counters."""
    models: dict[str, dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(USAGE_INT_METRICS, 0) | dict.fromkeys(USAGE_FLOAT_METRICS, 0.0)
    )
    for name, value in fields.items():
        metric, _, model = name.partition(":")
        models[model][metric] = int(value) if metric in USAGE_INT_METRICS else float(value)
    totals = {
        metric: sum(m[metric] for m in models.values())
        for metric in USAGE_INT_METRICS + USAGE_FLOAT_METRICS
    }
    return {
        "spent_usd": spent,
        "reserved_usd": max(0.0, reserved),
        **totals,
        "models": dict(models),
    }


# ---------------------------------------------------------------------------------------------
# In-process store
# ---------------------------------------------------------------------------------------------


@dataclass
class _Month:
    spent: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    reserved: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    global_spent: float = 0.0
    global_reserved: float = 0.0
    usage: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    touched_at: float = 0.0


class MemoryLimitStore:
    """Limits and budgets for one process (no Redis configured, or Redis down in mode "local").

    Every method body runs without an await, so each decision is atomic on the event loop.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        retention_s: float = MONTH_RETENTION_S,
        count_cache_hits_tokens: bool = False,
    ) -> None:
        self.clock = clock  # public: tests drive the limiter with a fake clock
        self._retention_s = retention_s
        self._count_cache_hits_tokens = count_cache_hits_tokens
        self._tats: dict[tuple[str, str], float] = {}
        self._months: dict[str, _Month] = {}

    def _month(self, month: str, now: float) -> _Month:
        data = self._months.get(month)
        if data is None:
            # Months not written for the retention period are forgotten, like the Redis keys.
            for name in [
                m for m, d in self._months.items() if now - d.touched_at > self._retention_s
            ]:
                del self._months[name]
            data = self._months[month] = _Month()
        data.touched_at = now
        return data

    async def admit(
        self,
        policy: KeyPolicy,
        model: str,
        tokens: int,
        worst_case_usd: float,
        global_budget_usd: float | None,
        soft_fraction: float,
    ) -> Admission:
        _check_admit_args(tokens, worst_case_usd, soft_fraction)
        now = self.clock()
        month = month_key(now)
        data = self._month(month, now)
        key = policy.key_id
        req_tat = self._live_tat(key, "req", now)
        tok_tat = self._live_tat(key, "tok", now)
        key_committed = data.spent[key] + max(0.0, data.reserved[key])
        global_committed = data.global_spent + max(0.0, data.global_reserved)

        code = 0
        if policy.rpm is not None and not gcra_fits(gcra_next(req_tat, now, policy.rpm, 1), now):
            code = 1
        elif policy.tpm is not None and not gcra_fits(
            gcra_next(tok_tat, now, policy.tpm, tokens), now
        ):
            code = 2
        elif (
            policy.monthly_budget_usd is not None
            and key_committed + worst_case_usd > policy.monthly_budget_usd + EPSILON_USD
        ):
            code = 3
        elif (
            global_budget_usd is not None
            and global_committed + worst_case_usd > global_budget_usd + EPSILON_USD
        ):
            code = 4
        if code == 0:
            if policy.rpm is not None:
                self._tats[(key, "req")] = gcra_next(req_tat, now, policy.rpm, 1)
            if policy.tpm is not None:
                self._tats[(key, "tok")] = gcra_next(tok_tat, now, policy.tpm, tokens)
            if _has_budget(policy, global_budget_usd) and worst_case_usd:
                data.reserved[key] += worst_case_usd
                data.global_reserved += worst_case_usd
        raw = RawDecision(code, now, req_tat, tok_tat, key_committed, global_committed)
        return build_admission(
            raw,
            policy,
            model,
            tokens,
            worst_case_usd,
            global_budget_usd,
            soft_fraction,
            month,
            self,
        )

    def _live_tat(self, key_id: str, kind: str, now: float) -> float:
        tat = self._tats.get((key_id, kind), 0.0)
        if tat <= now:  # the bucket is full again: forget it, as the Redis key's TTL does
            self._tats.pop((key_id, kind), None)
            return now
        return tat

    async def settle(
        self,
        reservation: Reservation,
        actual_usd: float,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool = False,
        saved_usd: float = 0.0,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        details = (cached_input_tokens, reasoning_tokens)
        _check_settle_args(actual_usd, prompt_tokens, completion_tokens, saved_usd, *details)
        if not reservation.close():
            return
        now = self.clock()
        used = tpm_tokens_used(
            prompt_tokens, completion_tokens, cached, self._count_cache_hits_tokens
        )
        self._settle_tokens(reservation, used, now)
        data = self._month(reservation.month, now)
        self._unreserve(data, reservation)
        data.spent[reservation.key_id] += actual_usd
        data.global_spent += actual_usd
        ints, floats = settle_increments(
            reservation, actual_usd, prompt_tokens, completion_tokens, cached, saved_usd, *details
        )
        counters = data.usage[reservation.key_id]
        for name, value in (ints | floats).items():
            counters[name] = counters.get(name, 0) + value

    async def release(self, reservation: Reservation) -> None:
        if reservation.close():
            now = self.clock()
            self._settle_tokens(reservation, 0, now)
            self._unreserve(self._month(reservation.month, now), reservation)

    def _settle_tokens(self, reservation: Reservation, used_tokens: int, now: float) -> None:
        shift = token_shift_s(reservation, used_tokens)
        if not shift:
            return
        key = (reservation.key_id, "tok")
        after = settled_tat(self._tats.get(key, now), now, shift)
        if after is None:
            self._tats.pop(key, None)
        else:
            self._tats[key] = after

    @staticmethod
    def _unreserve(data: _Month, reservation: Reservation) -> None:
        if reservation.amount_usd:
            key = reservation.key_id
            data.reserved[key] = max(0.0, data.reserved[key] - reservation.amount_usd)
            data.global_reserved = max(0.0, data.global_reserved - reservation.amount_usd)

    async def usage(self, key_id: str | None, month: str) -> dict:
        data = self._months.get(month) or _Month()
        key_ids = sorted(set(data.spent) | set(data.usage)) if key_id is None else [key_id]
        result: dict = {
            "month": month,
            "keys": {
                k: key_usage(
                    data.spent.get(k, 0.0), data.reserved.get(k, 0.0), data.usage.get(k, {})
                )
                for k in key_ids
            },
        }
        if key_id is None:
            result["global"] = {
                "spent_usd": data.global_spent,
                "reserved_usd": max(0.0, data.global_reserved),
            }
        return result


# ---------------------------------------------------------------------------------------------
# Redis store
# ---------------------------------------------------------------------------------------------

_LUA_DIR = Path(__file__).parent / "lua"


class RedisLimitStore:
    """Limits and budgets shared by every replica through Redis; one script call per decision.

    Key layout (prefix configurable): `{p}:rl:{req|tok}:{key_id}` GCRA arrival times (expiring
    when the bucket is full again); per month `{p}:spent:{month}` and `{p}:reserved:{month}` hashes
    by key id plus `...:total` strings for the global budget, `{p}:usage:{month}:{key_id}` hashes of
    `metric:model` counters and the `{p}:usage:{month}:keys` index set, all expiring
    `retention_s` after their last write.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "liftoff",
        clock: Callable[[], float] = time.time,
        retention_s: int = MONTH_RETENTION_S,
        count_cache_hits_tokens: bool = False,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._count_cache_hits_tokens = count_cache_hits_tokens
        # Only the accounting month comes from this clock; rate limits use Redis server TIME so
        # replicas with skewed clocks agree.
        self._clock = clock
        self._retention_s = int(retention_s)
        self._admit = register_script(redis, (_LUA_DIR / "admit.lua").read_text())
        # Redis scripts cannot load one another: both carry the shared reservation steps.
        reservation = (_LUA_DIR / "reservation.lua").read_text()
        self._settle = register_script(redis, reservation + (_LUA_DIR / "settle.lua").read_text())
        self._release = register_script(redis, reservation + (_LUA_DIR / "release.lua").read_text())

    def _month_keys(self, month: str) -> list[str]:
        p = self._prefix
        return [
            f"{p}:reserved:{month}",
            f"{p}:spent:{month}",
            f"{p}:reserved:{month}:total",
            f"{p}:spent:{month}:total",
        ]

    async def admit(
        self,
        policy: KeyPolicy,
        model: str,
        tokens: int,
        worst_case_usd: float,
        global_budget_usd: float | None,
        soft_fraction: float,
    ) -> Admission:
        _check_admit_args(tokens, worst_case_usd, soft_fraction)
        month = month_key(self._clock())
        key = policy.key_id
        keys = [f"{self._prefix}:rl:req:{key}", f"{self._prefix}:rl:tok:{key}"]
        keys += self._month_keys(month)
        reserve = worst_case_usd if _has_budget(policy, global_budget_usd) else 0.0
        args = [
            policy.rpm or 0,
            policy.tpm or 0,
            tokens,
            repr(float(reserve)),
            -1 if policy.monthly_budget_usd is None else repr(float(policy.monthly_budget_usd)),
            -1 if global_budget_usd is None else repr(float(global_budget_usd)),
            key,
            self._retention_s,
        ]
        with unavailable_on_error("admit"):
            result = await self._admit(keys=keys, args=args)
        code, *figures = result  # numbers as strings (see admit.lua)
        raw = RawDecision(int(code), *map(float, figures))
        return build_admission(
            raw,
            policy,
            model,
            tokens,
            worst_case_usd,
            global_budget_usd,
            soft_fraction,
            month,
            self,
        )

    async def settle(
        self,
        reservation: Reservation,
        actual_usd: float,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool = False,
        saved_usd: float = 0.0,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        details = (cached_input_tokens, reasoning_tokens)
        _check_settle_args(actual_usd, prompt_tokens, completion_tokens, saved_usd, *details)
        if reservation.closed:
            return
        month, key = reservation.month, reservation.key_id
        ints, floats = settle_increments(
            reservation, actual_usd, prompt_tokens, completion_tokens, cached, saved_usd, *details
        )
        used = tpm_tokens_used(
            prompt_tokens, completion_tokens, cached, self._count_cache_hits_tokens
        )
        keys = [
            *self._month_keys(month),
            f"{self._prefix}:usage:{month}:{key}",
            f"{self._prefix}:usage:{month}:keys",
            f"{self._prefix}:rl:tok:{key}",
        ]
        args: list[str | int] = [
            key,
            repr(float(reservation.amount_usd)),
            repr(float(actual_usd)),
            self._retention_s,
            len(ints),
            repr(token_shift_s(reservation, used)),
        ]
        for name, value in ints.items():
            args += [name, value]
        for name, value in floats.items():
            args += [name, repr(float(value))]
        with unavailable_on_error("settle"):
            await self._settle(keys=keys, args=args)
        reservation.close()

    async def release(self, reservation: Reservation) -> None:
        if reservation.closed:
            return
        shift = token_shift_s(reservation, 0)
        if reservation.amount_usd or shift:
            keys = self._month_keys(reservation.month)[::2]  # the two "reserved" keys
            keys.append(f"{self._prefix}:rl:tok:{reservation.key_id}")
            args = [reservation.key_id, repr(float(reservation.amount_usd)), repr(shift)]
            with unavailable_on_error("release"):
                await self._release(keys=keys, args=args)
        reservation.close()

    async def usage(self, key_id: str | None, month: str) -> dict:
        p = self._prefix
        reserved_key, spent_key, reserved_total, spent_total = self._month_keys(month)
        with unavailable_on_error("usage"):
            if key_id is None:
                key_ids = sorted(
                    k.decode() for k in await self._redis.smembers(f"{p}:usage:{month}:keys")
                )
            else:
                key_ids = [key_id]
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(spent_key)
                pipe.hgetall(reserved_key)
                pipe.get(spent_total)
                pipe.get(reserved_total)
                for k in key_ids:
                    pipe.hgetall(f"{p}:usage:{month}:{k}")
                spent, reserved, g_spent, g_reserved, *per_key = await pipe.execute()
        spent = {k.decode(): float(v) for k, v in spent.items()}
        reserved = {k.decode(): float(v) for k, v in reserved.items()}
        result: dict = {
            "month": month,
            "keys": {
                k: key_usage(
                    spent.get(k, 0.0),
                    reserved.get(k, 0.0),
                    {name.decode(): float(value) for name, value in fields.items()},
                )
                for k, fields in zip(key_ids, per_key, strict=True)
            },
        }
        if key_id is None:
            result["global"] = {
                "spent_usd": float(g_spent or 0),
                "reserved_usd": max(0.0, float(g_reserved or 0)),
            }
        return result


# ---------------------------------------------------------------------------------------------
# Degradation
# ---------------------------------------------------------------------------------------------


class ResilientLimitStore:
    """The Redis store, with a policy for when Redis is unreachable.

    mode "local": decide with the in-process `fallback` (limits become per replica);
    "open": admit everything (limits and budgets off until Redis is back);
    "closed": raise BackendUnavailable (the server answers 503).
    Redis is skipped for a back-off period after a failure and probed to recover (BackendHealth).
    Settlements of reservations made by one store go back to that store; those that Redis could
    not take are kept (bounded) and replayed once it answers again, so that reservations made
    before an outage do not stay held against the budgets.
    """

    def __init__(
        self,
        primary: LimitStore,
        fallback: LimitStore,
        mode: FailureMode,
        health: BackendHealth | None = None,
        max_pending: int = 10_000,
    ) -> None:
        if mode not in ("local", "open", "closed"):
            raise ValueError(f"mode must be one of local, open, closed; got {mode!r}")
        self.primary = primary
        self.fallback = fallback
        self.mode = mode
        self.health = health or BackendHealth()
        self.degraded_decisions_total = 0
        self.lost_settlements_total = 0  # dropped because the replay queue was full
        self._pending: deque[Callable[[], Awaitable[None]]] = deque()
        self._max_pending = max_pending
        self._replay: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return self.health.state

    @property
    def pending_settlements(self) -> int:
        return len(self._pending)

    async def admit(
        self,
        policy: KeyPolicy,
        model: str,
        tokens: int,
        worst_case_usd: float,
        global_budget_usd: float | None,
        soft_fraction: float,
    ) -> Admission:
        args = (policy, model, tokens, worst_case_usd, global_budget_usd, soft_fraction)
        try:
            admission = await self.health.call(lambda: self.primary.admit(*args))
        except BackendUnavailable:
            if self.mode == "closed":
                raise
        else:
            if self._pending:
                self._start_replay()
            return admission
        self.degraded_decisions_total += 1
        if self.mode == "local":
            return await self.fallback.admit(*args)
        return Admission(
            allowed=True,
            reason="ok",
            retry_after_s=0.0,
            headers={},
            budget_remaining_usd=None,
            soft_exceeded=False,
            reservation=None,
        )

    async def settle(
        self,
        reservation: Reservation,
        actual_usd: float,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool = False,
        saved_usd: float = 0.0,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        args = (
            reservation,
            actual_usd,
            prompt_tokens,
            completion_tokens,
            cached,
            saved_usd,
            cached_input_tokens,
            reasoning_tokens,
        )
        if reservation.owner is self.fallback:
            await self.fallback.settle(*args)
        else:
            await self._to_primary(lambda: self.primary.settle(*args))

    async def release(self, reservation: Reservation) -> None:
        if reservation.owner is self.fallback:
            await self.fallback.release(reservation)
        else:
            await self._to_primary(lambda: self.primary.release(reservation))

    async def usage(self, key_id: str | None, month: str) -> dict:
        """Usage from Redis; raises BackendUnavailable while it is down (no partial answers)."""
        return await self.health.call(lambda: self.primary.usage(key_id, month))

    async def _to_primary(self, operation: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.health.call(operation)
        except BackendUnavailable:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.lost_settlements_total += 1
            self._pending.append(operation)

    def _start_replay(self) -> None:
        if self._replay is None or self._replay.done():
            self._replay = asyncio.create_task(self._replay_pending())

    async def _replay_pending(self) -> None:
        while self._pending:
            operation = self._pending[0]
            try:
                await self.health.call(operation)
            except BackendUnavailable:
                return  # down again: the next successful admit resumes
            except Exception:
                logger.exception("dropping a settlement that failed on replay")
            self._pending.popleft()


__all__ = [
    "Admission",
    "BackendUnavailable",
    "KeyPolicy",
    "LimitStore",
    "MemoryLimitStore",
    "RedisLimitStore",
    "Reservation",
    "ResilientLimitStore",
]
