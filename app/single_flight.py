"""Single flight: identical concurrent cacheable requests make one provider call.

In one process, callers with the same cache key share one call (`SingleFlight`). Across
processes, the first lookup of a missing entry takes a short lease in the same script as the
lookup (`SET NX PX`, see app/lua/cache_get.lua): no extra round trip for a request nobody else
makes. A caller that finds the lease held by another waits for the entry instead of calling:
woken at once when a call of this process stores it, else polling (5 ms, doubling up to 100 ms)
with lookups that take the lease over when its holder failed (its release marks it so) or
outlived it. The lease lasts `cache.single_flight_wait_s`, and no wait lasts longer: then the
waiter calls the provider itself (counted as a timeout). Only waiting costs round trips.

The same lease closes the window inside one process too: a request whose lookup missed while
another's call was in flight, and that reaches this point after that call ended, sees the lease
still held (until the entry is stored) and waits for the entry rather than calling again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import orjson

from app.cache import Lookup, ResponseCache

T = TypeVar("T")
Answer = tuple[bytes, str]  # the provider's answer, and the model that served it

_FIRST_POLL_S = 0.005
_MAX_POLL_S = 0.1
# A paid answer its request did not store (cancelled, or not JSON) is stored (or its lease given
# up) by the flight itself after this long.
_ORPHAN_S = 1.0


class SingleFlight:
    """Concurrent callers with the same key share one call of the factory.

    The shared call runs as its own task: a caller that is cancelled stops waiting without
    cancelling the call for the others; its result or exception reaches every waiter. At most
    `max_keys` calls are tracked; beyond that callers run their own call (bounded memory).
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self._max_keys = max_keys
        self._calls: dict[Hashable, asyncio.Future[Any]] = {}
        self.calls_total = 0  # factory calls made
        self.shared_total = 0  # callers served by another caller's call

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._calls

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        call = self._calls.get(key)
        if call is None:
            self.calls_total += 1
            if len(self._calls) >= self._max_keys:
                return await factory()
            call = asyncio.ensure_future(factory())
            self._calls[key] = call
            call.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.shared_total += 1
        return await asyncio.shield(call)

    def _finished(self, key: Hashable, call: asyncio.Future[Any]) -> None:
        # (No need to retrieve an exception here: asyncio.shield marks it retrieved for waiters
        # that were cancelled, and the others receive it.)
        if self._calls.get(key) is call:
            del self._calls[key]


class CacheFlights:
    """One provider call per cache key at a time, in this process and across processes.

    The caller whose `call` ran paid for the answer and stores it with `store` (scheduled in the
    same event-loop turn as its settlement, so both leave in one Redis write); every other caller
    (sharing this process' flight, or finding the entry another process stored while it waited)
    is a cache hit. `after` schedules work off the response path (the store, a lease release).
    """

    def __init__(
        self,
        cache: ResponseCache,
        wait_s: float,
        after: Callable[[Awaitable[None]], None],
        on_wait: Callable[[], None],
        on_timeout: Callable[[], None],
    ) -> None:
        self._cache = cache
        self._wait_s = wait_s
        self._after = after
        self._on_wait = on_wait
        self._on_timeout = on_timeout
        self._flight = SingleFlight()
        self._stored: dict[str, asyncio.Event] = {}  # set when a call of this process ends
        self._unstored: dict[str, bytes] = {}  # paid answers their request has yet to store

    def __len__(self) -> int:
        return len(self._flight)

    async def run(self, key: str, lookup: Lookup, call: Callable[[], Awaitable[Answer]]) -> Answer:
        """The answer for `key` after `lookup` missed."""
        lease, lookup.lease = lookup.lease, "none"  # from here on the flight owns the lease
        holds_lease = lease in ("acquired", "taken_over")
        if key in self._flight:
            if holds_lease:
                # A flight of this process (a waiter whose holder vanished) serves this request:
                # hand the lease back so that flight may take it at its next look.
                await self._cache.release(key)
                self._wake(key)
            return await self._flight.run(key, lambda: self._call(key, call, False))
        if lease == "held":
            return await self._flight.run(key, lambda: self._wait(key, call))
        return await self._flight.run(key, lambda: self._call(key, call, holds_lease))

    def store(self, key: str) -> None:
        """The paying request's answer (valid JSON, settled) goes into the cache."""
        data = self._unstored.pop(key, None)
        if data is not None:
            self._after(self._set(key, data))

    def abandon(self, key: str | None, lookup: Lookup) -> None:
        """The request ends before its flight (refused, flagged, cancelled): free its lease."""
        if key is not None and lookup.lease in ("acquired", "taken_over"):
            lookup.lease = "none"
            self._after(self._release(key))

    async def _call(
        self, key: str, call: Callable[[], Awaitable[Answer]], holds_lease: bool
    ) -> Answer:
        try:
            answer = await call()
        except BaseException:
            if holds_lease:
                self._after(self._release(key))
            raise
        self._unstored[key] = answer[0]
        asyncio.get_running_loop().call_later(_ORPHAN_S, self._store_orphan, key)
        return answer

    async def _wait(self, key: str, call: Callable[[], Awaitable[Answer]]) -> Answer:
        self._on_wait()
        deadline = time.monotonic() + self._wait_s
        interval = _FIRST_POLL_S
        stored = self._stored.setdefault(key, asyncio.Event())
        try:
            while True:
                found = await self._cache.lookup(key, lease=True)
                if found.value is not None:
                    return found.value, ""  # stored by another process: nobody here paid
                if found.lease == "taken_over" or found.lease == "none":
                    # Its holder failed (or the cache cannot tell): call.
                    return await self._call(key, call, found.lease == "taken_over")
                remaining = deadline - time.monotonic()
                if found.lease == "acquired" or remaining <= 0:
                    # The holder outlived its lease, or this wait its bound: call.
                    self._on_timeout()
                    return await self._call(key, call, found.lease == "acquired")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stored.wait(), min(interval, remaining))
                if stored.is_set():
                    stored = self._stored.setdefault(key, asyncio.Event())
                interval = min(interval * 2, _MAX_POLL_S)
        finally:
            if self._stored.get(key) is stored:
                del self._stored[key]  # nobody of this process woke it: no longer needed

    def _store_orphan(self, key: str) -> None:
        data = self._unstored.pop(key, None)
        if data is None:
            return
        try:
            cacheable = isinstance(orjson.loads(data), dict)
        except orjson.JSONDecodeError:
            cacheable = False  # its request failed with 502: nothing to keep
        self._after(self._set(key, data) if cacheable else self._release(key))

    async def _set(self, key: str, data: bytes) -> None:
        try:
            await self._cache.set(key, data)  # drops the lease too
        finally:
            self._wake(key)

    async def _release(self, key: str) -> None:
        try:
            await self._cache.release(key)
        finally:
            self._wake(key)

    def _wake(self, key: str) -> None:
        stored = self._stored.pop(key, None)
        if stored is not None:
            stored.set()
