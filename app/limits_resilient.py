"""`ResilientLimitStore`: the Redis store with a policy for when Redis is unreachable (decide
locally with `local_share` of each limit, admit everything, or refuse), and the replay of
settlements Redis could not take, so that the shared usage and spend miss nothing.

Separate from both stores because it holds neither state nor decisions of its own: only which
store decides, and where each reservation's settlement goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from app.accounting import month_key
from app.limits_types import Admission, FailureMode, KeyPolicy, LimitStore, Reservation
from app.redis_backend import BackendHealth, BackendUnavailable

# The name these lines carried before the limiter was split into modules (log filters use it).
logger = logging.getLogger("app.limits")


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
    Settlements of reservations made by one store go back to that store; a request decided
    without Redis (local or open) is also recorded in Redis (its spend and usage, not its rate
    limits), so `/v1/usage` and the budgets count it once Redis is back. Whatever Redis could not
    take is kept (bounded, `max_pending`) and replayed in the background as soon as Redis answers
    again, traffic or not; each settlement counts once even when sent again after a lost answer
    (the Redis store's settled markers).
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
            self._replay_if_pending()
            return admission
        self.degraded_decisions_total += 1
        if self.mode == "local":
            local = local_share(policy, self.fallback_replicas)
            return await self.fallback.admit(local, *args[1:])
        # Open: nothing is held anywhere, but the usage still goes to Redis when it is back.
        unheld = Reservation(policy.key_id, model, month_key(time.time()), 0.0)
        return Admission(
            allowed=True,
            reason="ok",
            retry_after_s=0.0,
            headers={},
            budget_remaining_usd=None,
            soft_exceeded=False,
            reservation=unheld,
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
        if reservation.owner is self.primary:
            await self._to_primary(lambda: self.primary.settle(*args))
            return
        if reservation.owner is self.fallback:
            await self.fallback.settle(*args)
        # Decided without Redis: its spend and usage still belong in the shared record (its
        # rate limits do not: that minute has passed by the time Redis takes it).
        record = dataclasses.replace(
            reservation, amount_usd=0.0, tokens=0, tpm=None, token_mark=None, closed=False
        )
        await self._to_primary(lambda: self.primary.settle(record, *args[1:]))

    async def release(self, reservation: Reservation) -> None:
        if reservation.owner is self.primary:
            await self._to_primary(lambda: self.primary.release(reservation))
        elif reservation.owner is self.fallback:
            await self.fallback.release(reservation)

    async def usage(self, key_id: str | None, month: str) -> dict:
        """Usage from Redis; raises BackendUnavailable while it is down (no partial answers)."""
        usage = await self.health.call(lambda: self.primary.usage(key_id, month))
        self._replay_if_pending()
        return usage

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """At shutdown: give the settlements still waiting for Redis `timeout_s` to get there;
        those that do not are logged as lost."""
        self._replay_if_pending()
        replay = self._replay
        if replay is not None and not replay.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(replay), timeout_s)
            if not replay.done():
                replay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replay
        if self._pending:
            self.lost_settlements_total += len(self._pending)
            logger.warning(
                "%d settlements never reached Redis before shutdown: their usage is missing "
                "from /v1/usage and their reservations stay held until the month ends",
                len(self._pending),
            )
            self._pending.clear()

    async def _to_primary(self, operation: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.health.call(operation)
        except BackendUnavailable:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.lost_settlements_total += 1
                if self.lost_settlements_total == 1 or self.lost_settlements_total % 1000 == 0:
                    logger.warning(
                        "settlements waiting for Redis exceed %d: dropping the oldest "
                        "(%d dropped so far; their usage is missing from /v1/usage)",
                        self._max_pending,
                        self.lost_settlements_total,
                    )
            self._pending.append(operation)
        self._replay_if_pending()

    def _replay_if_pending(self) -> None:
        """Start sending the waiting settlements, unless none wait or that already runs."""
        if self._pending and (self._replay is None or self._replay.done()):
            self._replay = asyncio.create_task(self._replay_pending())

    async def _replay_pending(self) -> None:
        """Send the waiting settlements, oldest first; while Redis is skipped or down, wait for
        the next probe (this task may be the probe that finds Redis back)."""
        while self._pending:
            operation = self._pending[0]
            try:
                await self.health.call(operation)
            except BackendUnavailable:
                await asyncio.sleep(self.health.seconds_until_probe())
                continue
            except Exception:
                logger.exception("dropping a settlement that failed on replay")
            if self._pending and self._pending[0] is operation:
                self._pending.popleft()
