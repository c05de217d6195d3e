"""`RedisLimitStore`: limits and budgets shared by every replica through Redis, one Lua script
call per decision (`lua/admit.lua`, `lua/settle.lua`, `lua/release.lua`, with the shared steps
of `lua/bucket.lua` and `lua/reservation.lua` prepended).

Separate from the in-process store: this module holds the Redis key layout, the script
arguments and the parsing of the scripts' answers; the decision itself runs inside Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from app.accounting import month_key
from app.gcra import DEFAULT_BURSTS, BurstFractions, TokenMark
from app.limits_decisions import (
    RawDecision,
    bucket_of,
    build_admission,
    check_admit_args,
    check_settle_args,
    has_budget,
    key_usage,
    settle_increments,
    tpm_tokens_used,
)
from app.limits_types import (
    MONTH_RETENTION_S,
    SETTLED_MARKER_TTL_S,
    Admission,
    KeyPolicy,
    Reservation,
)
from app.redis_backend import register_script, unavailable_on_error

_LUA_DIR = Path(__file__).parent / "lua"


class RedisLimitStore:
    """Limits and budgets shared by every replica through Redis; one script call per decision.

    Key layout (prefix configurable): `{p}:bucket:{req|tok}:{key_id}` GCRA bucket hashes (level,
    stamp, generation; expiring when the bucket is empty again); per month `{p}:spent:{month}`
    and `{p}:reserved:{month}` hashes by key id plus `...:total` strings for the global budget,
    `{p}:usage:{month}:{key_id}` hashes of `metric:model` counters and the
    `{p}:usage:{month}:keys` index set, all expiring `retention_s` after their last write;
    `{p}:settled:{reservation id}` markers, so that a settlement or release sent again after a
    lost answer counts once (expiring after SETTLED_MARKER_TTL_S).
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

    def _marker(self, reservation: Reservation) -> str:
        return f"{self._prefix}:settled:{reservation.id}"

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
        check_admit_args(tokens, worst_case_usd, soft_fraction)
        month = month_key(self._clock())
        key = policy.key_id
        keys = [f"{self._prefix}:bucket:req:{key}", f"{self._prefix}:bucket:tok:{key}"]
        keys += self._month_keys(month)
        reserve = worst_case_usd if has_budget(policy, global_budget_usd) else 0.0
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
        check_settle_args(actual_usd, prompt_tokens, completion_tokens, saved_usd, *details)
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
            self._marker(reservation),
        ]
        args: list[str | int] = [
            key,
            repr(float(reservation.amount_usd)),
            repr(float(actual_usd)),
            self._retention_s,
            SETTLED_MARKER_TTL_S,
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
            keys += [f"{self._prefix}:bucket:tok:{reservation.key_id}", self._marker(reservation)]
            args = [
                reservation.key_id,
                repr(float(reservation.amount_usd)),
                *self._token_args(reservation, 0),
                self._now_arg(),
                SETTLED_MARKER_TTL_S,
            ]
            with unavailable_on_error("release"):
                await self._release(keys=keys, args=args)
        reservation.close()

    async def aclose(self) -> None:
        return None  # the Redis client belongs to the gateway

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
