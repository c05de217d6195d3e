"""One request's bookkeeping (`Ctx`), made once per request before anything else runs."""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from app.log import request_id as request_id_var
from app.upstream import CallStats

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Request ids made here: 32 hex digits, a random per-process prefix and a sequence number
# (unique across replicas without a uuid4 and its urandom call per request).
_ID_PREFIX = os.urandom(8).hex()
_ID_SEQUENCE = itertools.count()


@dataclass(slots=True)
class Ctx:
    """One request's bookkeeping."""

    route: str
    request_id: str
    h: dict[str, str]  # request headers, decoded once (lower-case names)
    started: float = field(default_factory=time.perf_counter)
    model: str = "-"
    key: str = "-"
    cache: str | None = None
    admitted: bool = False  # the limiter ran: its x-ratelimit-* headers are in `headers`
    headers: dict[str, str] = field(default_factory=dict)
    stats: CallStats = field(default_factory=CallStats)
    waited_s: float = 0.0  # time spent waiting on other requests (single flight, batch window)
    fixed_overhead_ms: float | None = None  # streams: measured when the headers went out
    log: dict[str, Any] = field(default_factory=dict)  # extra access-log fields

    def overhead_ms(self, now: float | None = None) -> float:
        if self.fixed_overhead_ms is not None:
            return self.fixed_overhead_ms
        now = time.perf_counter() if now is None else now
        spent = now - self.started - self.stats.upstream_s - self.waited_s
        return max(0.0, spent * 1000)


def new_ctx(route: str, request: Request) -> Ctx:
    """The request's context: headers decoded once, its id taken from the client or made."""
    # One pass over the raw headers; Starlette's Headers.get() scans the list on every call.
    h = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
    given = h.get("x-request-id")
    rid = (
        given
        if given and _REQUEST_ID.fullmatch(given)
        else f"{_ID_PREFIX}{next(_ID_SEQUENCE):016x}"
    )
    request_id_var.set(rid)
    return Ctx(route, rid, h)
