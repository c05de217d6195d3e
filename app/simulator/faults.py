"""Injected faults: per request (`x-simulator-fault`, optionally only for the first K attempts of a
logical request) or at a configured rate from a seeded, reproducible sequence."""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict

from app.limits import format_duration
from app.simulator.options import FAULT_KINDS, SimulatorOptions
from app.simulator.wire import Send, send_error

FAIL_TIMES_KEYS = 10_000
SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    504: "Gateway timeout.",
}


class FaultInjector:
    """Which fault, if any, a request gets. One instance holds the seeded sequence and the
    fail-times ledger."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self._rng = random.Random(options.seed)
        self._attempts: OrderedDict[str, int] = OrderedDict()

    def fault_for(self, headers: dict[str, str], identity: bytes) -> str | None:
        """`identity` names the logical request when no `x-simulator-request-key` is given."""
        requested = headers.get("x-simulator-fault")
        if requested is not None and requested not in FAULT_KINDS:
            requested = None
        fail_times = headers.get("x-simulator-fail-times")
        if fail_times is not None:
            key = headers.get("x-simulator-request-key") or hashlib.blake2b(identity).hexdigest()
            attempt = self._attempts.pop(key, 0) + 1
            self._attempts[key] = attempt
            while len(self._attempts) > FAIL_TIMES_KEYS:
                self._attempts.popitem(last=False)
            try:
                limit = int(fail_times)
            except ValueError:
                limit = 0
            return (requested or "503") if attempt <= limit else None
        if requested is not None:
            return requested
        if self.options.fault_rate and self._rng.random() < self.options.fault_rate:
            return self._rng.choice(self.options.fault_kinds)
        return None

    def retry_after_s(self, headers: dict[str, str]) -> float:
        override = headers.get("x-simulator-retry-after-ms")
        if override is not None:
            try:
                return max(0.0, float(override) / 1000)
            except ValueError:
                pass
        return self.options.retry_after_s


async def send_invalid_key(send: Send) -> None:
    await send_error(
        send,
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


async def send_fault(send: Send, fault: str, retry_after_s: float) -> None:
    """An answer for the faults that answer at once (not `timeout` or `cut`)."""
    if fault == "401":
        await send_invalid_key(send)
        return
    if fault == "429":
        reset = format_duration(retry_after_s).encode()
        await send_error(
            send,
            429,
            "Rate limit reached for requests. Please try again in " + reset.decode() + ".",
            error_type="requests",
            code="rate_limit_exceeded",
            headers=[
                (b"retry-after", str(math.ceil(retry_after_s)).encode()),
                (b"retry-after-ms", str(round(retry_after_s * 1000)).encode()),
                (b"x-ratelimit-limit-requests", b"10000"),
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-reset-requests", reset),
                (b"x-ratelimit-limit-tokens", b"10000000"),
                (b"x-ratelimit-remaining-tokens", b"9999000"),
                (b"x-ratelimit-reset-tokens", b"6ms"),
            ],
        )
        return
    status = int(fault)
    await send_error(send, status, SERVER_ERRORS[status], error_type="server_error")
