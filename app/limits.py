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

This module is the entry point the rest of the gateway imports: `build_limit_store` and the
public names of the modules the limiter is split into, by concern:
- `app/limits_types.py`: `KeyPolicy`, `Reservation`, `Admission`, the `LimitStore` protocol,
  reasons, usage metrics and constants;
- `app/limits_decisions.py`: what both back ends share (`build_admission`, argument checks,
  settlement counters, the usage document, `format_duration`);
- `app/limits_memory.py`: `MemoryLimitStore`, in one process;
- `app/limits_redis.py`: `RedisLimitStore`, shared by every replica through Redis;
- `app/limits_resilient.py`: `ResilientLimitStore` and `local_share`, for when Redis is down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from app.gcra import PERIOD_S, BurstFractions, remaining_after
from app.limits_decisions import (
    RawDecision,
    bucket_of,
    build_admission,
    format_duration,
    key_usage,
    settle_increments,
    tpm_tokens_used,
    usage_field,
)
from app.limits_memory import MemoryLimitStore
from app.limits_redis import RedisLimitStore
from app.limits_resilient import ResilientLimitStore, local_share
from app.limits_types import (
    EPSILON_USD,
    MONTH_RETENTION_S,
    REASONS,
    USAGE_FLOAT_METRICS,
    USAGE_INT_METRICS,
    Admission,
    FailureMode,
    KeyPolicy,
    LimitStore,
    Reason,
    Reservation,
)
from app.redis_backend import BackendUnavailable

if TYPE_CHECKING:
    from app.config import LimitsConfig


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
    "EPSILON_USD",
    "MONTH_RETENTION_S",
    "PERIOD_S",
    "REASONS",
    "USAGE_FLOAT_METRICS",
    "USAGE_INT_METRICS",
    "Admission",
    "BackendUnavailable",
    "BurstFractions",
    "FailureMode",
    "KeyPolicy",
    "LimitStore",
    "MemoryLimitStore",
    "RawDecision",
    "Reason",
    "RedisLimitStore",
    "Reservation",
    "ResilientLimitStore",
    "bucket_of",
    "build_admission",
    "build_limit_store",
    "format_duration",
    "key_usage",
    "local_share",
    "remaining_after",
    "settle_increments",
    "tpm_tokens_used",
    "usage_field",
]
