"""The limiter's vocabulary, shared by every store: a key's limits (`KeyPolicy`), the worst case
held for a request (`Reservation`), the answer to `admit` (`Admission`), the `LimitStore`
protocol the gateway calls, and the reasons, usage metrics and constants they are built from.

Separate from the stores so that each back end (`app/limits_memory.py`, `app/limits_redis.py`,
`app/limits_resilient.py`) and the shared decision code (`app/limits_decisions.py`) can import
them without importing one another; `app/limits.py` re-exports them.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.gcra import MAX_LIMIT, TokenMark

EPSILON_USD = 1e-9
MONTH_RETENTION_S = 40 * 24 * 3600  # month data outlives its month long enough to be read after it
# How long Redis remembers that a reservation was settled or released, so that a settlement sent
# again (its first answer was lost to a timeout, though Redis had applied it) counts once. A
# replay later than this after an applied-but-unanswered first attempt would count twice; replays
# wait at most the health back-off (15 s) once Redis answers again.
SETTLED_MARKER_TTL_S = 300


class _ReservationIds:
    """Reservation ids unique across processes: a random prefix per process, then a counter
    (cheaper than a uuid per request; drawn again in a forked child)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_reservation_id = _ReservationIds()

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
    # What Redis knows a settlement by, so that one sent twice counts once (SETTLED_MARKER_TTL_S).
    id: str = field(default_factory=new_reservation_id, compare=False)

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

    async def aclose(self) -> None:
        """At shutdown: hand over what is still owed to shared state (bounded in time)."""
        ...
