"""Rate limits and monthly budgets: one atomic decision per request, shared by every replica.

`admit` checks requests-per-minute and tokens-per-minute (a GCRA bucket per limit, `app/gcra.py`:
at most the limit in any 60-s window, at most a burst fraction of it at once) and the key's and
the deployment's monthly budgets, and reserves the request's worst-case cost and tokens, all in
one step: one Lua script in Redis, or one critical section in process. A pre-check that reads a
counter and writes it later lets concurrent requests through together; reserving the worst case
up front is what keeps limits and budgets from being overshot. `settle` then replaces both
reservations by what the answer really used (the dollar cost, and the tokens: those not used go
back to the bucket, as far as it still holds them), in the same step that records the usage;
`release` gives both back when the request failed.

Both back ends run the same state transitions (`app/gcra.py`, mirrored line for line in
`lua/bucket.lua`) and hand their raw result to `build_admission`, so headers, retry times, budget
figures and soft thresholds are computed by one piece of code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import redis.asyncio as aioredis

from app.accounting import month_key
from app.gcra import (
    DEFAULT_BURSTS,
    MAX_LIMIT,
    PERIOD_S,
    PERIOD_US,
    Bucket,
    BucketState,
    BurstFractions,
    TokenMark,
    figures,
    filled,
    live_level,
    remaining_after,
    settled_state,
)
from app.redis_backend import (
    BackendHealth,
    BackendUnavailable,
    register_script,
    unavailable_on_error,
)

if TYPE_CHECKING:
    from app.config import LimitsConfig

logger = logging.getLogger(__name__)

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
            if value is not None and (not isinstance(value, int) or not 1 <= value <= MAX_LIMIT):
                raise ValueError(
                    f"{name} must be an integer in [1, {MAX_LIMIT}] or null, got {value!r}"
                )
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
    # Where those tokens sit in the key's token bucket (what settling may give back).
    token_mark: TokenMark | None = field(default=None, compare=False)
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


@functools.lru_cache(maxsize=4096)
def bucket_of(limit: int, burst_fraction: float) -> Bucket:
    return Bucket.of(limit, burst_fraction)


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
    request_level: int  # the live bucket levels before this request (units * PERIOD_US)
    token_level: int
    key_committed_usd: float  # spent + reserved before this request's reservation
    global_committed_usd: float
    token_mark: TokenMark | None  # where an admitted request's tokens went in the token bucket


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
    bursts: BurstFractions,
) -> Admission:
    reason = REASONS[raw.code]
    admitted = reason == "ok"
    headers: dict[str, str] = {}
    retry_after = 0.0
    for kind, limit, fraction, level, cost, denying in (
        ("requests", policy.rpm, bursts.requests, raw.request_level, 1, "rate_limit_requests"),
        ("tokens", policy.tpm, bursts.tokens, raw.token_level, tokens, "rate_limit_tokens"),
    ):
        if limit is None:
            continue
        shown = figures(bucket_of(limit, fraction), level, cost, admitted)
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(shown.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(shown.reset_s)
        if reason == denying:
            retry_after = shown.retry_s

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
            policy.key_id,
            model,
            month,
            reserve,
            held,
            policy.tpm,
            token_mark=raw.token_mark,
            owner=owner,
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
        bursts: BurstFractions = DEFAULT_BURSTS,
    ) -> None:
        self.clock = clock  # public: tests drive the limiter with a fake clock
        self.bursts = bursts
        self._retention_s = retention_s
        self._count_cache_hits_tokens = count_cache_hits_tokens
        self._buckets: dict[tuple[str, str], BucketState] = {}
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
        now_us = round(now * 1_000_000)  # Redis TIME's resolution
        month = month_key(now)
        data = self._month(month, now)
        key = policy.key_id
        req = tok = None
        req_level = tok_level = 0
        if policy.rpm is not None:
            req_bucket = bucket_of(policy.rpm, self.bursts.requests)
            req, req_level = self._live((key, "req"), now_us, req_bucket.refill)
        if policy.tpm is not None:
            tok_bucket = bucket_of(policy.tpm, self.bursts.tokens)
            tok, tok_level = self._live((key, "tok"), now_us, tok_bucket.refill)
        key_committed = data.spent[key] + max(0.0, data.reserved[key])
        global_committed = data.global_spent + max(0.0, data.global_reserved)

        code = 0
        if policy.rpm is not None and req_level + PERIOD_US > req_bucket.capacity:
            code = 1
        elif policy.tpm is not None and tok_level + tokens * PERIOD_US > tok_bucket.capacity:
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
        mark = None
        if code == 0:
            if policy.rpm is not None:
                self._keep((key, "req"), filled(req, req_level, now_us, 1)[0])
            if policy.tpm is not None:
                tok, mark = filled(tok, tok_level, now_us, tokens)
                self._keep((key, "tok"), tok)
            if _has_budget(policy, global_budget_usd) and worst_case_usd:
                data.reserved[key] += worst_case_usd
                data.global_reserved += worst_case_usd
        raw = RawDecision(code, req_level, tok_level, key_committed, global_committed, mark)
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
            self.bursts,
        )

    def _live(
        self, name: tuple[str, str], now_us: int, refill: int
    ) -> tuple[BucketState | None, int]:
        """A bucket's state and live level; an empty one is forgotten, as its Redis key expires."""
        state = self._buckets.get(name)
        level = live_level(state, now_us, refill)
        if state is not None and level == 0:
            del self._buckets[name]
            state = None
        return state, level

    def _keep(self, name: tuple[str, str], state: BucketState | None) -> None:
        if state is None:
            self._buckets.pop(name, None)
        else:
            self._buckets[name] = state

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
        if not reservation.tpm or used_tokens == reservation.tokens:
            return
        name = (reservation.key_id, "tok")
        refill = bucket_of(reservation.tpm, self.bursts.tokens).refill
        state = settled_state(
            self._buckets.get(name),
            round(now * 1_000_000),
            refill,
            reservation.token_mark,
            reservation.tokens,
            used_tokens,
        )
        self._keep(name, state)

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

    Key layout (prefix configurable): `{p}:bucket:{req|tok}:{key_id}` GCRA bucket hashes (level,
    stamp, generation; expiring when the bucket is empty again); per month `{p}:spent:{month}`
    and `{p}:reserved:{month}` hashes by key id plus `...:total` strings for the global budget,
    `{p}:usage:{month}:{key_id}` hashes of `metric:model` counters and the
    `{p}:usage:{month}:keys` index set, all expiring `retention_s` after their last write.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "liftoff",
        clock: Callable[[], float] = time.time,
        retention_s: int = MONTH_RETENTION_S,
        count_cache_hits_tokens: bool = False,
        bursts: BurstFractions = DEFAULT_BURSTS,
        rate_clock: Callable[[], float] | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._count_cache_hits_tokens = count_cache_hits_tokens
        self.bursts = bursts
        # Only the accounting month comes from `clock`; rate limits use Redis server TIME so
        # replicas with skewed clocks agree, unless `rate_clock` is given (arrival patterns
        # replayed on a fake clock, as for the in-process store).
        self._clock = clock
        self._rate_clock = rate_clock
        self._retention_s = int(retention_s)
        # Redis scripts cannot load one another: each carries the shared steps it uses.
        bucket, reservation, admit, settle, release = (
            (_LUA_DIR / f"{name}.lua").read_text()
            for name in ("bucket", "reservation", "admit", "settle", "release")
        )
        self._admit = register_script(redis, bucket + admit)
        self._settle = register_script(redis, bucket + reservation + settle)
        self._release = register_script(redis, bucket + reservation + release)

    def _now_arg(self) -> str:
        """The rate clock for a script: '' for Redis server TIME."""
        return "" if self._rate_clock is None else str(round(self._rate_clock() * 1_000_000))

    def _token_args(self, reservation: Reservation, used: int) -> list[str | int]:
        """The token bucket's part of a settlement (refill 0: nothing to change)."""
        if not reservation.tpm or used == reservation.tokens:
            return [0, 0, 0, -1, 0, 0, 0]
        mark = reservation.token_mark
        return [
            bucket_of(reservation.tpm, self.bursts.tokens).refill,
            reservation.tokens,
            used,
            *((mark.birth_us, mark.at_us, mark.level, mark.refunded) if mark else (-1, 0, 0, 0)),
        ]

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
        keys = [f"{self._prefix}:bucket:req:{key}", f"{self._prefix}:bucket:tok:{key}"]
        keys += self._month_keys(month)
        reserve = worst_case_usd if _has_budget(policy, global_budget_usd) else 0.0
        req = bucket_of(policy.rpm, self.bursts.requests) if policy.rpm else None
        tok = bucket_of(policy.tpm, self.bursts.tokens) if policy.tpm else None
        args = [
            policy.rpm or 0,
            policy.tpm or 0,
            tokens,
            repr(float(reserve)),
            -1 if policy.monthly_budget_usd is None else repr(float(policy.monthly_budget_usd)),
            -1 if global_budget_usd is None else repr(float(global_budget_usd)),
            key,
            self._retention_s,
            req.burst if req else 0,
            req.refill if req else 0,
            tok.burst if tok else 0,
            tok.refill if tok else 0,
            self._now_arg(),
        ]
        with unavailable_on_error("admit"):
            result = await self._admit(keys=keys, args=args)
        # Numbers as strings (see admit.lua).
        code, req_level, tok_level, key_committed, global_committed, *mark = result
        raw = RawDecision(
            int(code),
            int(req_level),
            int(tok_level),
            float(key_committed),
            float(global_committed),
            TokenMark(*map(int, mark)) if mark else None,
        )
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
            self.bursts,
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
            f"{self._prefix}:bucket:tok:{key}",
        ]
        args: list[str | int] = [
            key,
            repr(float(reservation.amount_usd)),
            repr(float(actual_usd)),
            self._retention_s,
            len(ints),
            *self._token_args(reservation, used),
            self._now_arg(),
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
        if reservation.amount_usd or (reservation.tpm and reservation.tokens):
            keys = self._month_keys(reservation.month)[::2]  # the two "reserved" keys
            keys.append(f"{self._prefix}:bucket:tok:{reservation.key_id}")
            args = [
                reservation.key_id,
                repr(float(reservation.amount_usd)),
                *self._token_args(reservation, 0),
                self._now_arg(),
            ]
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


@functools.lru_cache(maxsize=1024)
def local_share(policy: KeyPolicy, replicas: int) -> KeyPolicy:
    """The key's limits one of `replicas` enforces alone while Redis is down (at least 1 each:
    a limit below the replica count allows one per replica)."""
    if replicas == 1:
        return policy
    return dataclasses.replace(
        policy,
        rpm=None if policy.rpm is None else max(1, policy.rpm // replicas),
        tpm=None if policy.tpm is None else max(1, policy.tpm // replicas),
    )


class ResilientLimitStore:
    """The Redis store, with a policy for when Redis is unreachable.

    mode "local": decide with the in-process `fallback`, each rpm and tpm divided by
    `fallback_replicas` (the replicas deciding alone at the same time; at least 1 each);
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
        fallback_replicas: int = 1,
    ) -> None:
        if mode not in ("local", "open", "closed"):
            raise ValueError(f"mode must be one of local, open, closed; got {mode!r}")
        if not isinstance(fallback_replicas, int) or fallback_replicas < 1:
            raise ValueError(
                f"fallback_replicas must be an integer >= 1, got {fallback_replicas!r}"
            )
        self.primary = primary
        self.fallback = fallback
        self.mode = mode
        self.fallback_replicas = fallback_replicas
        self.health = health or BackendHealth()
        self.health.serve("limits", mode)
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
            local = local_share(policy, self.fallback_replicas)
            return await self.fallback.admit(local, *args[1:])
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


def build_limit_store(config: LimitsConfig, redis: aioredis.Redis | None) -> LimitStore:
    """The gateway's limiter from its `limits` settings: in process without Redis; otherwise
    Redis, degrading per `on_redis_failure` to an in-process store with the local share."""
    options = {
        "count_cache_hits_tokens": config.count_cache_hits_tokens,
        "bursts": config.bursts,
    }
    if redis is None:
        return MemoryLimitStore(**options)
    return ResilientLimitStore(
        RedisLimitStore(redis, **options),
        MemoryLimitStore(**options),
        config.on_redis_failure,
        fallback_replicas=config.local_fallback_replicas,
    )


__all__ = [
    "PERIOD_S",
    "Admission",
    "BackendUnavailable",
    "BurstFractions",
    "KeyPolicy",
    "LimitStore",
    "MemoryLimitStore",
    "RedisLimitStore",
    "Reservation",
    "ResilientLimitStore",
    "build_limit_store",
    "remaining_after",
]
