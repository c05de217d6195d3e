"""The rate-limit bucket of one limit (requests or tokens per minute) and the promise it keeps.

A limit of L units per minute with a burst fraction f is a GCRA (a leaky bucket) that admits at
most B = max(1, floor(f * L)) units at once and drains R = L + 1 - B units per minute, so that no
60-s window ever holds more than L units:

    at most L units in any 60-s window, at most B of them at once; R = L + 1 - B per minute
    when the bucket never empties.

Proof. Times are whole microseconds (Redis TIME); P = 60,000,000 us. The bucket's level is kept
in units * P and drains R per microsecond while it is above 0; a request of c units is admitted
when level + c * P <= B * P, and adds c * P. Take any window [t, t + 60 s) and the units c_1..c_n
admitted in it at t_1 <= ... <= t_n, so t_n - t_1 <= P - 1. Between the first and the last
admission the level gains exactly (c_1 + ... + c_n) * P and loses at most (t_n - t_1) * R, and it
is never above B * P after an admission, hence

    (c_1 + ... + c_n) * P <= B * P + (t_n - t_1) * R <= B * P + (P - 1) * R < (B + R) * P,

so c_1 + ... + c_n < B + R = L + 1: at most L. In GCRA terms (emission interval T = 60/R s,
burst tolerance tau = (B - 1) * T) this is the classic bound floor((W + tau) / T) + 1 for a window
W = 60 s - 1 us: floor(R - R/P + B - 1) + 1 = B + R - 1 = L. It is tight: B units at once, then
one every T, make exactly L in the window that starts with the burst.

The full-period burst this replaced (B = L with R = L) admitted up to 2L - 1 in a window. The
price of the bound is the steady rate: R = L + 1 - B, e.g. 541 of 600 rpm with f = 0.1 (the
requests' default; tokens default to f = 0.25, see `BurstFractions`).

Tokens are reserved at admission (the request's worst case) and settled to what was used.
Settling gives back only reserved tokens the bucket still holds (`settled_state`): the window
bound above then holds for the tokens counted, each request counting what it used at the time it
was admitted. An answer longer than its reservation is charged when it ends, on top.

Everything is integer arithmetic, mirrored line for line by the Lua scripts: the values stay below
2**53 (limits up to `MAX_LIMIT`), so Lua's doubles compute them exactly and both back ends decide
identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PERIOD_S = 60.0  # rpm and tpm are per minute
PERIOD_US = 60_000_000
# limit * PERIOD_US stays below 2**53 (~9.0e15): exact in the doubles Lua computes with.
MAX_LIMIT = 100_000_000


@dataclass(frozen=True, slots=True)
class Bucket:
    """The shape of one limit: `limit` units in any minute, `burst` at once, `refill` a minute."""

    limit: int
    burst: int
    refill: int

    @classmethod
    def of(cls, limit: int, burst_fraction: float) -> Bucket:
        check_burst_fraction(burst_fraction)
        # The small tolerance keeps 0.1 * 600 at 60 rather than 59.99999 -> 59.
        burst = min(limit, max(1, math.floor(limit * burst_fraction + 1e-9)))
        return cls(limit, burst, limit + 1 - burst)

    @property
    def capacity(self) -> int:
        """The highest level after an admission (units * PERIOD_US)."""
        return self.burst * PERIOD_US


def check_burst_fraction(burst_fraction: float) -> None:
    if not 0 < burst_fraction <= 1:
        raise ValueError(f"burst_fraction must be in (0, 1], got {burst_fraction!r}")


@dataclass(frozen=True, slots=True)
class BurstFractions:
    """The burst fraction of requests per minute and of tokens per minute.

    Tokens get the larger default: a request reserves its worst case (prompt + completion cap:
    25,000 tokens for a reasoning model by default), and a reservation larger than the burst can
    never be admitted; requests keep a small one, so their steady rate stays near the limit.
    """

    requests: float = 0.1
    tokens: float = 0.25

    def __post_init__(self) -> None:
        check_burst_fraction(self.requests)
        check_burst_fraction(self.tokens)

    def for_kind(self, kind: Literal["requests", "tokens"]) -> float:
        """The fraction of one kind of limit, named as in the x-ratelimit-*-{kind} headers."""
        return self.requests if kind == "requests" else self.tokens


DEFAULT_BURSTS = BurstFractions()


@dataclass(slots=True)
class BucketState:
    """A bucket's level (units * PERIOD_US) at `stamp_us`; absent (None) when empty.

    `birth_us` is when it last started filling from empty, `refunded` the whole units settlements
    gave back since: together they tell a settlement how much of its reservation is still held.
    """

    stamp_us: int
    level: int
    birth_us: int
    refunded: int = 0


@dataclass(frozen=True, slots=True)
class TokenMark:
    """Where a reservation's tokens sit in its key's token bucket, as of its admission."""

    birth_us: int
    at_us: int
    level: int  # the bucket's level right after the admission
    refunded: int  # the bucket's `refunded` at the admission


def drain(level: int, elapsed_us: int, refill: int) -> int:
    """The level after `elapsed_us` of draining (never below 0; a clock going back drains none)."""
    if elapsed_us <= 0:
        return level
    if elapsed_us * refill >= level:
        return 0
    return level - elapsed_us * refill


def live_level(state: BucketState | None, now_us: int, refill: int) -> int:
    return 0 if state is None else drain(state.level, now_us - state.stamp_us, refill)


def filled(
    state: BucketState | None, level: int, now_us: int, units: int
) -> tuple[BucketState | None, TokenMark | None]:
    """The state after adding `units` to a bucket at `level` (its live level), and the mark of
    the units added (None when none were)."""
    if units <= 0:
        return state, None
    if level == 0 or state is None:
        state = BucketState(now_us, 0, now_us)  # empty: a new generation starts
    state.stamp_us = now_us
    state.level = level + units * PERIOD_US
    return state, TokenMark(state.birth_us, now_us, state.level, state.refunded)


def still_held(
    state: BucketState | None, level: int, now_us: int, refill: int, mark: TokenMark
) -> int:
    """How many units of the units marked `mark` the bucket (at live `level`) surely still holds.

    The reservation's units end at `mark.level` at admission; since then the bucket drained and
    settlements gave units back (`refunded`: those of requests admitted before this one moved it
    towards the front, those admitted after did not, so counting all of them errs low). An
    emptied bucket (another generation) holds none of it. Never more than the level itself.
    """
    if state is None or state.birth_us != mark.birth_us or level == 0:
        return 0
    end = (
        drain(mark.level, now_us - mark.at_us, refill)
        - (state.refunded - mark.refunded) * PERIOD_US
    )
    return max(0, min(end, level)) // PERIOD_US


def settled_state(
    state: BucketState | None,
    now_us: int,
    refill: int,
    mark: TokenMark | None,
    reserved: int,
    used: int,
) -> BucketState | None:
    """The token bucket after a settlement of `reserved` units of which `used` were used.

    Unused units go back, at most as many as the bucket still holds of the reservation; units
    used beyond the reservation are added now. None: the bucket is empty.
    """
    level = live_level(state, now_us, refill)
    if used > reserved:
        state, _ = filled(state, level, now_us, used - reserved)
        return state
    give = 0
    if used < reserved and mark is not None:
        give = min(reserved - used, still_held(state, level, now_us, refill, mark))
    if state is None or level - give * PERIOD_US <= 0:
        return None
    state.stamp_us = now_us
    state.level = level - give * PERIOD_US
    state.refunded += give
    return state


@dataclass(frozen=True, slots=True)
class LimitFigures:
    remaining: int  # units admissible now
    reset_s: float  # until the bucket is empty again
    retry_s: float  # until this (refused) request would fit; 0 when admitted


def figures(bucket: Bucket, level: int, cost: int, admitted: bool) -> LimitFigures:
    """One limit's header figures; `level` is the live level before this request."""
    after = level + cost * PERIOD_US if admitted else level
    retry_us = 0 if admitted else -(-(level + cost * PERIOD_US - bucket.capacity) // bucket.refill)
    return LimitFigures(
        remaining=max(0, (bucket.capacity - after) // PERIOD_US),
        reset_s=-(-after // bucket.refill) / 1e6,
        retry_s=max(0, retry_us) / 1e6,
    )


def remaining_after(backlog_s: float, limit: int, burst_fraction: float) -> int:
    """`x-ratelimit-remaining-*` of a limit whose bucket needs `backlog_s` to empty (the
    `x-ratelimit-reset-*` value): the units admissible now, from `burst` when it is empty."""
    bucket = Bucket.of(limit, burst_fraction)
    level_units = max(0.0, backlog_s) * bucket.refill / PERIOD_S
    return max(0, min(bucket.burst, math.floor(bucket.burst - level_units + 1e-6)))
