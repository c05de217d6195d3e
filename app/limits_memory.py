"""`MemoryLimitStore`: limits and budgets held in one process, deciding in one critical section
on the event loop (no await inside a decision).

It serves a gateway without Redis, and is the fallback `ResilientLimitStore` decides with while
Redis is down (mode "local"). Its state transitions are `app/gcra.py`'s, the same ones
`lua/bucket.lua` runs in Redis, and it hands its raw result to `build_admission` like the Redis
store does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from app.accounting import month_key
from app.gcra import (
    DEFAULT_BURSTS,
    PERIOD_US,
    BucketState,
    BurstFractions,
    filled,
    live_level,
    settled_state,
)
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
    EPSILON_USD,
    MONTH_RETENTION_S,
    Admission,
    KeyPolicy,
    Reservation,
)


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
        check_admit_args(tokens, worst_case_usd, soft_fraction)
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
            if has_budget(policy, global_budget_usd) and worst_case_usd:
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
        check_settle_args(actual_usd, prompt_tokens, completion_tokens, saved_usd, *details)
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

    async def aclose(self) -> None:
        return None

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
