"""What keeps an overloaded provider from turning into unbounded waits and multiplied calls.

:class:`ConcurrencyQueue` is one model's concurrency cap (``upstream.max_concurrency_per_model``)
with a bounded line in front of it: a call waits for a slot at most ``upstream.queue_timeout_s``,
and one that arrives when the line is longer than the slots can drain in that time is shed at
once, before any provider call. The drain estimate is Little's law on what the slots really did:
the k-th in line gets a slot after about ``k x mean hold time / slots``.

:class:`RetryBudget` is one provider's retry budget (as Finagle's ``RetryBudget``, Envoy's
``retry_budget`` and gRPC's retry throttling): in any ``BUDGET_WINDOW_S``, retries may add at most
``retry.budget_ratio`` of the first calls plus ``retry.budget_min_per_s`` per second, so a storm of
429s or 5xx costs the provider at most ``1 + ratio`` calls per request instead of
``retry.max_attempts``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from app.errors import Overloaded

# Finagle's and Envoy's window: long enough to smooth a burst, short enough that a storm's
# retries stop within seconds of the first calls drying up.
BUDGET_WINDOW_S = 10.0
BUDGET_BUCKETS = 10
# The mean hold time is taken over this many recent calls: a few seconds of traffic, so a
# provider that slows down is seen within one drain of the line.
HOLD_SAMPLES = 64


class SlidingCount:
    """Events in the last ``window_s`` seconds, counted in ``buckets`` steps (so a total forgets
    its oldest step at once, never event by event: O(buckets) memory whatever the rate)."""

    def __init__(
        self,
        window_s: float = BUDGET_WINDOW_S,
        buckets: int = BUDGET_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step_s = window_s / buckets
        self._clock = clock
        self._counts = [0] * buckets
        self._steps = [-1] * buckets  # which step each bucket currently holds

    def add(self, amount: int = 1) -> None:
        step = math.floor(self._clock() / self.step_s)
        index = step % len(self._counts)
        if self._steps[index] != step:
            self._steps[index] = step
            self._counts[index] = 0
        self._counts[index] += amount

    def total(self) -> int:
        oldest = math.floor(self._clock() / self.step_s) - len(self._counts)
        return sum(c for c, s in zip(self._counts, self._steps, strict=True) if s > oldest)


class RetryBudget:
    """Retries allowed while they stay under ``ratio`` x first calls + ``min_per_s`` x window."""

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        window_s: float = BUDGET_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.reserve = min_per_s * window_s
        self._firsts = SlidingCount(window_s, clock=clock)
        self._retries = SlidingCount(window_s, clock=clock)

    def first_call(self) -> None:
        """A request's first call reached the provider: it earns ``ratio`` of a retry."""
        self._firsts.add()

    def try_retry(self) -> bool:
        """Spend one retry if the budget has one left; False: the caller must not retry."""
        if self._retries.total() + 1 > self.ratio * self._firsts.total() + self.reserve:
            return False
        self._retries.add()
        return True


class ConcurrencyQueue:
    """At most ``capacity`` calls hold a slot; the others wait in a FIFO line, each at most
    ``timeout_s``, and are shed (:class:`Overloaded`) when they cannot expect a slot in time.

    A slot freed while someone waits passes straight to the head of the line, so a newcomer never
    overtakes a waiter. ``on_length`` is told the line's length whenever it changes (a gauge).
    """

    def __init__(
        self,
        model: str,
        capacity: int,
        timeout_s: float,
        on_length: Callable[[int], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.in_use = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self._holds: deque[float] = deque(maxlen=HOLD_SAMPLES)
        self._on_length = on_length
        self._clock = clock

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    def mean_hold_s(self) -> float | None:
        """How long a slot was held, on average, by the last calls; None before any ended."""
        return sum(self._holds) / len(self._holds) if self._holds else None

    def expected_wait_s(self, position: int) -> float | None:
        """Seconds until the ``position``-th in line (1: the head) gets a slot: slots free up
        ``capacity / mean hold`` times a second. None while no call has ended yet."""
        mean = self.mean_hold_s()
        return None if mean is None else position * mean / self.capacity

    def _retry_after_s(self, position: int) -> float:
        # Honest: when the line ahead of this call would have drained; unknown -> one deadline.
        expected = self.expected_wait_s(position)
        return self.timeout_s if expected is None else expected

    async def acquire(self) -> float:
        """Take a slot (waiting in line if need be); returns when it was taken, for
        :meth:`release`. Raises Overloaded (``reason`` drain or timeout) with no slot held."""
        if self.in_use < self.capacity and not self._line:
            self.in_use += 1
            return self._clock()
        position = len(self._line) + 1
        expected = self.expected_wait_s(position)
        if expected is not None and expected > self.timeout_s:
            raise Overloaded(self.model, expected, "drain")
        ticket = asyncio.get_running_loop().create_future()
        self._line.append(ticket)
        self._on_length(len(self._line))
        try:
            async with asyncio.timeout(self.timeout_s):
                await ticket
        except BaseException as exc:
            if ticket.done() and not ticket.cancelled():
                # The slot was handed over just as the wait ended.
                if isinstance(exc, TimeoutError):
                    return self._clock()
                self._pass_on()  # unused: no hold time to learn from
                raise
            ahead = position - 1
            if ticket in self._line:  # else a release already dropped it, cancelled
                ahead = self._line.index(ticket)
                self._line.remove(ticket)
                self._on_length(len(self._line))
            if isinstance(exc, TimeoutError):
                raise Overloaded(self.model, self._retry_after_s(ahead + 1), "timeout") from None
            raise
        return self._clock()

    def release(self, taken_at: float) -> None:
        """Give back the slot taken at ``taken_at``: to the head of the line, else to the pool."""
        self._holds.append(self._clock() - taken_at)
        self._pass_on()

    def _pass_on(self) -> None:
        line = self._line
        if not line:
            self.in_use -= 1
            return
        while line and line[0].done():  # cancelled waiters not yet out of the line
            line.popleft()
        if line:
            line.popleft().set_result(None)  # the slot passes on: in_use is unchanged
        else:
            self.in_use -= 1
        self._on_length(len(line))
