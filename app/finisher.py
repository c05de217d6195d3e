"""What every response gets on its way out: its headers, its metrics and its access-log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from app.config import GatewayConfig
from app.context import Ctx
from app.errors import NotReady, Overloaded, StateUnavailable, to_api_error
from app.limit_view import LimitView
from app.log import AccessLog
from app.metrics import Metrics

log = logging.getLogger("liftoff.gateway")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer


class ResponseFinisher:
    def __init__(
        self, config: GatewayConfig, metrics: Metrics, access_log: AccessLog, view: LimitView
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.access_log = access_log
        self.view = view
        # Resolved metric children per (route, model, status): labels() costs a lock and a lookup.
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def finish(self, ctx: Ctx, response: Response, method: str) -> Response:
        """Headers every response carries, metrics and the access log line."""
        # Appending raw pairs: MutableHeaders.__setitem__ rescans the list for every header.
        raw = response.raw_headers
        present = {name for name, _ in raw}
        raw.append((b"x-request-id", ctx.request_id.encode("latin-1")))
        for name, value in ctx.headers.items():
            encoded = name.encode("latin-1")
            if encoded not in present:
                raw.append((encoded, value.encode("latin-1")))
        if not ctx.admitted and ctx.key != "-":
            # Rejected before the limiter ran (400, 404, 413, 415, 503 ...): still tell an
            # authenticated caller where its limits stand, without a Redis round trip.
            for name, value in self.view.known_headers(ctx.key).items():
                encoded = name.encode("latin-1")
                if encoded not in present:
                    raw.append((encoded, value.encode("latin-1")))
        if b"x-liftoff-overhead-ms" not in present:
            raw.append((b"x-liftoff-overhead-ms", f"{ctx.overhead_ms():.3f}".encode()))
        if not isinstance(response, StreamingResponse):
            self.record(ctx, response.status_code, method)
        return response

    def record(
        self, ctx: Ctx, status: int, method: str, extra: Mapping[str, Any] | None = None
    ) -> None:
        now = time.perf_counter()
        elapsed = now - ctx.started
        overhead_ms = ctx.overhead_ms(now)
        series = self._series.get((ctx.route, ctx.model, status))
        if series is None:
            m = self.metrics
            series = self._series[(ctx.route, ctx.model, status)] = (
                m.requests.labels(ctx.route, ctx.model, str(status)),
                m.latency.labels(ctx.route, ctx.model),
                m.overhead.labels(ctx.route),
            )
        series[0].inc()
        series[1].observe(elapsed)
        series[2].observe(overhead_ms / 1000)
        if ctx.stats.trace is not None:
            ctx.stats.trace.end(ctx, status, extra)  # closes the request's spans
        if self.config.server.access_log and self.access_log.enabled():
            fields: dict[str, Any] = {
                "method": method,
                "route": ctx.route,
                "status": status,
                "model": ctx.model,
                "key": ctx.key,
                "ms": round(elapsed * 1000, 3),
                "overhead_ms": round(overhead_ms, 3),
                "upstream_ms": round(ctx.stats.upstream_s * 1000, 3),
                "attempts": ctx.stats.attempts,
                "cache": ctx.cache,
            }
            fields.update(ctx.log)
            if extra:
                fields.update(extra)
            self.access_log.write(fields)

    def error_response(self, ctx: Ctx, exc: BaseException) -> Response:
        if isinstance(exc, ClientDisconnect):
            # Left mid-upload: nobody reads an answer and nothing failed here (no log, no 500).
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        api = to_api_error(exc)
        # Shedding (Overloaded) is the gateway working as designed: counted, not an error line.
        if api.status >= 500 and not isinstance(exc, NotReady | StateUnavailable | Overloaded):
            log.error(
                "request failed: %s",
                type(exc).__name__,
                exc_info=exc if api.status == 500 else None,
            )
        return Response(api.body(), api.status, api.headers, media_type="application/json")
