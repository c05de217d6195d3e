"""The circuit breaker of one model (``app/upstream.py`` keeps one per model, at its provider)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.errors import CircuitOpen

log = logging.getLogger("liftoff.upstream")


class CircuitBreaker:
    """closed -> (failure_threshold consecutive failures) -> open -> (reset_after_s) -> half-open.

    Half-open lets one probe through: success closes the circuit, failure opens it again.
    """

    def __init__(
        self,
        model: str,
        failure_threshold: int,
        reset_after_s: float,
        on_change: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False
        self._on_change = on_change
        self._clock = clock

    def _set(self, state: str) -> None:
        if state != self.state:
            log.warning("circuit %s", state, extra={"model": self.model, "from": self.state})
            self.state = state
            self._on_change(self.model, state)

    def before_call(self) -> None:
        """Raise CircuitOpen when calls must fail fast; otherwise let this call through."""
        if self.state == "closed":
            return
        remaining = self.opened_at + self.reset_after_s - self._clock()
        if self.state == "open" and remaining > 0:
            raise CircuitOpen(self.model, remaining)
        if self._probe_in_flight:
            raise CircuitOpen(self.model, max(remaining, 1.0))
        self._set("half_open")
        self._probe_in_flight = True

    def success(self) -> None:
        self._probe_in_flight = False
        self.failures = 0
        self._set("closed")

    def failure(self) -> None:
        self._probe_in_flight = False
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.opened_at = self._clock()
            self._set("open")

    def abandon(self) -> None:
        """The call ended without telling us about the provider's health (e.g. cancelled)."""
        self._probe_in_flight = False
