"""The provider client: pooled keep-alive connections, retries, breaker, concurrency cap, fallbacks.

One ``aiohttp.ClientSession`` serves every request. A call to a model goes through:

1. the model's circuit breaker (open -> fail fast with 503 until a probe may go through);
2. the model's concurrency cap (an ``asyncio.Semaphore``);
3. up to ``retry.max_attempts`` attempts: 429, 500, 502, 503, 504, connect errors and read timeouts
   are retried after ``Retry-After`` / ``retry-after-ms`` / ``x-ratelimit-reset-*`` when the
   provider sends them, else after exponential backoff with full jitter; a wait longer than
   ``retry.cap_s`` is not slept through but handed to the client as a 429 with Retry-After;
4. on a 401 the provider key is fetched again from Secrets Manager once (rotation);
5. when the model stays unavailable, its fallback models in order.

Streams are retried only until their first event arrived; after that the gateway has sent bytes
to the client and an interruption is reported in-band (see ``app/streaming.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import yarl

from app.config import ModelsConfig, UpstreamConfig
from app.errors import (
    CircuitOpen,
    GatewayError,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from app.metrics import Metrics

log = logging.getLogger("liftoff.upstream")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_SSE_EVENT_BYTES = 1 << 20  # one event larger than this is a broken stream, not a big answer
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s", or plain seconds "2.5"."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
        pos = match.end()
    return total if pos == len(text) else None


def retry_hint(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the provider asked us to wait, from its headers; None when it did not say."""
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    if (value := headers.get("retry-after")) is not None:
        seconds = parse_duration(value)
        if seconds is not None:
            return seconds
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return max(0.0, when - (time.time() if now is None else now))
    resets = [
        parse_duration(headers[name])
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in headers
    ]
    # Only a limit that is exhausted matters; the provider sends both on every 429.
    exhausted = []
    for kind, reset in zip(("requests", "tokens"), resets, strict=False):
        if reset is not None and headers.get(f"x-ratelimit-remaining-{kind}", "1") == "0":
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    known = [r for r in resets if r is not None]
    return min(known) if known else None


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


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, error: GatewayError, reason: str, hint: float | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.hint = hint


def _transport_retry(exc: BaseException) -> _Retry:
    """The retryable error for a transport failure: timeout, refused connect, broken connection."""
    if isinstance(exc, TimeoutError):
        return _Retry(UpstreamTimeout(), "timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _Retry(UpstreamUnreachable(), "connect")
    return _Retry(UpstreamUnreachable(type(exc).__name__), "connection")


@dataclass(slots=True)
class CallStats:
    """Time spent waiting on the provider for one client request (for x-liftoff-overhead-ms)."""

    upstream_s: float = 0.0
    attempts: int = 0
    model_used: str = ""


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]
    model: str

    def json(self) -> dict[str, Any]:
        return orjson.loads(self.body)


@dataclass(slots=True)
class Stream:
    """An open provider stream whose first event has already been read."""

    model: str
    first_event: bytes
    _response: aiohttp.ClientResponse
    _release: Callable[[], None]
    _closed: bool = field(default=False)

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Raw SSE events (``data: ...`` without the blank-line separator) as they arrive, in
        batches: each holds every complete event already received, so the relay sends them to
        the client in one write rather than one per event. Nothing ever waits for more data
        than has arrived, so this is no buffering: a lone event goes out alone, at once.

        Raises StreamInterrupted when the connection breaks or ends before ``data: [DONE]``,
        or an event grows beyond MAX_SSE_EVENT_BYTES.
        """
        yield [self.first_event]
        if self.first_event == b"data: [DONE]":
            return
        content = self._response.content
        partial = b""
        while True:
            try:
                data = await content.readany()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise StreamInterrupted(type(exc).__name__) from None
            if not data:
                raise StreamInterrupted("connection closed before [DONE]")
            *complete, partial = (partial + data).split(b"\n\n")
            if len(partial) > MAX_SSE_EVENT_BYTES:
                raise StreamInterrupted("event over the size limit")
            batch: list[bytes] = []
            for raw in complete:
                event = raw.strip()
                if not event or event.startswith(b":"):
                    continue  # keep-alive comment
                batch.append(event)
                if event == b"data: [DONE]":
                    yield batch
                    return
            if batch:
                yield batch

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._response.content.at_eof():
                self._response.release()  # finished cleanly: the connection goes back to the pool
            else:
                self._response.close()  # abandoned mid-way: the connection cannot be reused
            self._release()


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        config: UpstreamConfig,
        models: ModelsConfig,
        metrics: Metrics,
        api_key: Callable[[], str | None],
        refresh_api_key: Callable[[], Awaitable[bool]],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.metrics = metrics
        self._api_key = api_key
        self._refresh_api_key = refresh_api_key
        self._rng = rng
        self._fallbacks = {name: spec.fallbacks for name, spec in models.catalog.items()}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}
        for name in models.catalog:
            metrics.set_circuit(name, "closed")

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            keepalive_timeout=60,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.config.timeout_connect_s,
            sock_read=self.config.timeout_read_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            read_bufsize=1 << 17,
            skip_auto_headers=("User-Agent",),
            headers={"user-agent": "liftoff-gateway"},
            cookie_jar=aiohttp.DummyCookieJar(),  # a provider sets no cookies we should keep
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def breaker(self, model: str) -> CircuitBreaker:
        breaker = self._breakers.get(model)
        if breaker is None:
            cfg = self.config.breaker
            breaker = self._breakers[model] = CircuitBreaker(
                model, cfg.failure_threshold, cfg.reset_after_s, self.metrics.set_circuit
            )
        return breaker

    def _url(self, path: str) -> yarl.URL:
        # Parsed once per path: aiohttp would parse a str URL on every request.
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = yarl.URL(self.base_url + path)
        return url

    def _semaphore(self, model: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(model)
        if sem is None:
            sem = self._semaphores[model] = asyncio.Semaphore(self.config.max_concurrency_per_model)
        return sem

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if extra:
            headers.update(extra)
        key = self._api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def backoff(self, attempt: int, hint: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based); None: give up now."""
        retry = self.config.retry
        if hint is not None:
            return hint if hint <= retry.cap_s else None
        return self._rng() * min(retry.cap_s, retry.base_s * (2**attempt))

    # --- public calls ----------------------------------------------------------------------

    async def post_json(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        stats: CallStats,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """POST with retries and fallbacks; returns the first 200 reply."""

        async def once(candidate: str) -> Reply:
            return await self._attempt_json(path, body, candidate, stats, headers)

        return await self._with_fallbacks(model, once, stats)

    async def open_stream(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        stats: CallStats,
        headers: Mapping[str, str] | None = None,
    ) -> Stream:
        """Open a streaming call; retries and fallbacks apply until the first event is read."""

        async def once(candidate: str) -> Stream:
            return await self._attempt_stream(path, body, candidate, stats, headers)

        return await self._with_fallbacks(model, once, stats)

    async def moderate(self, model: str, text: str, stats: CallStats) -> bool:
        """True when the provider's moderation endpoint flags ``text``."""
        reply = await self.post_json(
            "/v1/moderations", {"model": model, "input": text}, model, stats
        )
        results = reply.json().get("results") or []
        return any(isinstance(r, dict) and r.get("flagged") for r in results)

    # --- machinery -------------------------------------------------------------------------

    async def _with_fallbacks(
        self, model: str, once: Callable[[str], Awaitable[Any]], stats: CallStats
    ) -> Any:
        candidates = (model, *self._fallbacks.get(model, ()))
        last: GatewayError | None = None
        for candidate in candidates:
            try:
                result = await self._with_retries(candidate, once, stats)
            except (CircuitOpen, UpstreamTimeout, UpstreamUnreachable) as exc:
                last = exc
            except UpstreamError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                last = exc
            else:
                if candidate != model:
                    self.metrics.child(self.metrics.upstream_fallbacks, model, candidate).inc()
                    log.warning("served by fallback", extra={"model": model, "fallback": candidate})
                stats.model_used = candidate
                return result
        assert last is not None
        raise last

    async def _with_retries(
        self, model: str, once: Callable[[str], Awaitable[Any]], stats: CallStats
    ) -> Any:
        max_attempts = self.config.retry.max_attempts
        refreshed_key = False
        attempt = 0
        while True:
            try:
                return await once(model)
            except _Retry as retry:
                if retry.reason == "401":
                    if not refreshed_key and await self._refresh_api_key():
                        refreshed_key = True
                        continue
                    raise retry.error from None
                attempt += 1
                if attempt >= max_attempts:
                    raise retry.error from None
                delay = self.backoff(attempt - 1, retry.hint)
                if delay is None:
                    # The provider asks for a longer pause than we may hold the client for.
                    raise retry.error from None
                self.metrics.child(self.metrics.upstream_retries, model, retry.reason).inc()
                log.info(
                    "retrying upstream",
                    extra={"model": model, "reason": retry.reason, "delay_s": round(delay, 3)},
                )
                # Backing off is waiting on the provider, not the gateway's own overhead.
                stats.upstream_s += delay
                await asyncio.sleep(delay)

    def _refusal(
        self, breaker: CircuitBreaker, status: int, body: bytes, headers: Mapping[str, str]
    ) -> _Retry | UpstreamError:
        """A non-200 answer: a 5xx counts against the breaker; a 4xx says nothing of health."""
        if status >= 500:
            breaker.failure()
        else:
            breaker.abandon()
        return self._classify(status, body, headers)

    def _classify(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> _Retry | UpstreamError:
        try:
            parsed = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        hint = retry_hint(headers)
        error = UpstreamError(status, parsed, hint)
        if status in RETRY_STATUSES:
            return _Retry(error, str(status), hint)
        if status == 401:
            return _Retry(error, "401")
        return error

    async def _attempt_json(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        stats: CallStats,
        extra: Mapping[str, str] | None,
    ) -> Reply:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        breaker = self.breaker(model)
        breaker.before_call()
        payload = orjson.dumps(body if body.get("model") == model else {**body, "model": model})
        gauge = self.metrics.child(self.metrics.upstream_in_flight, model)
        healthy: bool | None = None
        async with self._semaphore(model):
            gauge.inc()
            started = time.perf_counter()
            try:
                stats.attempts += 1
                async with self._session.post(
                    self._url(path), data=payload, headers=self._headers(extra)
                ) as response:
                    data = await response.read()
                    status = response.status
                    headers = response.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                healthy = False
                raise _transport_retry(exc) from None
            except asyncio.CancelledError:
                breaker.abandon()
                raise
            finally:
                stats.upstream_s += time.perf_counter() - started
                gauge.dec()
                if healthy is False:
                    breaker.failure()
            if status == 200:
                breaker.success()
                return Reply(status, data, headers, model)
            raise self._refusal(breaker, status, data, headers)

    async def _attempt_stream(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        stats: CallStats,
        extra: Mapping[str, str] | None,
    ) -> Stream:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        breaker = self.breaker(model)
        breaker.before_call()
        payload = orjson.dumps(body if body.get("model") == model else {**body, "model": model})
        semaphore = self._semaphore(model)
        await semaphore.acquire()
        gauge = self.metrics.child(self.metrics.upstream_in_flight, model)
        gauge.inc()

        def release() -> None:
            gauge.dec()
            semaphore.release()

        started = time.perf_counter()
        response: aiohttp.ClientResponse | None = None
        try:
            stats.attempts += 1
            response = await self._session.post(
                self._url(path), data=payload, headers=self._headers(extra)
            )
            if response.status != 200:
                data = await response.read()
                raise self._refusal(breaker, response.status, data, response.headers)
            first = await response.content.readuntil(b"\n\n", max_size=MAX_SSE_EVENT_BYTES)
            while first.strip().startswith(b":"):
                first = await response.content.readuntil(b"\n\n", max_size=MAX_SSE_EVENT_BYTES)
            if not first.endswith(b"\n\n"):
                breaker.failure()
                raise _Retry(UpstreamUnreachable("stream ended at once"), "stream_cut")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            # ValueError: an SSE event longer than MAX_SSE_EVENT_BYTES.
            breaker.failure()
            self._drop(response, release)
            raise _transport_retry(exc) from None
        except BaseException:
            breaker.abandon()
            self._drop(response, release)
            raise
        finally:
            stats.upstream_s += time.perf_counter() - started
        breaker.success()
        return Stream(model, first.strip(), response, release)

    @staticmethod
    def _drop(response: aiohttp.ClientResponse | None, release: Callable[[], None]) -> None:
        if response is not None:
            response.close()
        release()
