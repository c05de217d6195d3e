"""SIGTERM behind a load balancer that learns of the drain only from ``/readyz``, without losing
a request (``python -m app`` runs under :class:`DrainingServer`):

1. readiness goes false at once (``/readyz`` answers 503);
2. for ``server.shutdown_delay_s`` the gateway serves as before, except that every answer closes
   its connection (``Connection: close``): the balancer's pooled keep-alive connections go one
   complete answer at a time. An idle HTTP/1.1 connection cannot be closed without a race (the
   balancer may have just sent a request on it, and with no retry it answers its client 502 or
   closes the client's connection), so as few as possible are left idle to close;
3. the listener closes once no request (health probes aside) has arrived for :data:`QUIET_S`
   plus twice the event loop's lag (a request may wait that long unread): a loaded gateway
   answers the balancer's checks late, so the balancer may still send after the delay, and a
   closed listener would refuse it. This wait comes out of ``server.graceful_shutdown_s`` (so
   SIGTERM to exit stays within delay + graceful) and takes at most half of it: the other half
   is left to the answers under way;
4. uvicorn's drain: idle connections close, in-flight requests and streams finish within what is
   left of ``server.graceful_shutdown_s``.

SIGINT (Ctrl-C at a terminal, no load balancer to wait for) and a second signal skip 2 and 3.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger("liftoff")

# Probes do not count as traffic: a balancer keeps checking a server it has marked down.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Longer than the gap between two requests of a balancer still sending (it spreads hundreds a
# second over a few gateways), short next to the delay.
QUIET_S = 1.0
# How often the end of the wait is checked; how late a check runs is the loop's lag.
POLL_S = 0.1


class Drain:
    """What the connections of one server share about its drain: whether it began, and when the
    last request other than a probe arrived."""

    def __init__(self) -> None:
        self.began = False
        self.last_request = -math.inf  # time.monotonic()

    def saw_request(self, path: str) -> None:
        if path not in PROBE_PATHS:
            self.last_request = time.monotonic()

    def begin(self, connections: Iterable[Any]) -> None:
        """From now on every answer closes its connection; so do the answers already under way
        whose head is not sent yet."""
        self.began = True
        for connection in connections:  # app.http_protocol.LimitedHttpProtocol
            connection.close_after_answer()

    def quiet(self, now: float, lag_s: float) -> bool:
        """No request for QUIET_S, counted from when the loop could last have seen one: a loop
        `lag_s` behind may not have read what arrived in its last turn or two."""
        return now - self.last_request >= QUIET_S + 2 * lag_s


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM marks the gateway not ready, serves the delay (and
    the traffic still arriving after it, see the module docstring), then drains; SIGINT marks it
    not ready and drains at once."""

    def __init__(self, config: uvicorn.Config, gateway: Any, drain: Drain, delay_s: float) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._drain = drain
        self._delay_s = delay_s
        self._graceful_s = config.timeout_graceful_shutdown  # None: no bound
        # The wait after the delay: at most half the graceful budget, out of it.
        self._longest_wait_s = math.inf if self._graceful_s is None else self._graceful_s / 2
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self._delay_s <= 0 or sig != signal.SIGTERM:
            self._gateway.begin_drain()
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._gateway.begin_drain()
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._begin_delay, loop, sig, frame)

    def _begin_delay(self, loop: asyncio.AbstractEventLoop, sig: int, frame: Any) -> None:
        self._drain.begin(self.server_state.connections)
        delay_end = time.monotonic() + self._delay_s
        loop.call_later(
            self._delay_s, self._close_when_quiet, loop, delay_end, delay_end, sig, frame
        )

    def _close_when_quiet(
        self,
        loop: asyncio.AbstractEventLoop,
        delay_end: float,
        due: float,
        sig: int,
        frame: Any,
    ) -> None:
        if self.should_exit:
            return  # a second signal already drains
        now = time.monotonic()
        waited = now - delay_end
        if not self._drain.quiet(now, max(0.0, now - due)) and waited < self._longest_wait_s:
            loop.call_later(
                POLL_S, self._close_when_quiet, loop, delay_end, now + POLL_S, sig, frame
            )
            return
        if waited >= POLL_S:
            log.warning(
                "listener closed %.1f s after server.shutdown_delay_s = %g: requests were still "
                "arriving or the event loop was behind (a load balancer that saw the drain "
                "late: the delay should exceed its check interval x threshold, plus the lag of "
                "a loaded gateway)",
                waited,
                self._delay_s,
            )
        if self._graceful_s is not None:
            self.config.timeout_graceful_shutdown = max(0, self._graceful_s - waited)
        super().handle_exit(sig, frame)
