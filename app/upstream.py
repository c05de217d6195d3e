"""The provider client: pooled keep-alive connections, retries, breaker, concurrency cap, fallbacks.

Each catalog model is served by one named provider (``app/providers/``: the URL, body and auth
for a model, and what a refusal means); each provider has its own ``aiohttp.ClientSession``
(connection pool). A call to a model goes through:

1. the model's circuit breaker (open -> fail fast with 503 until a probe may go through);
2. the model's concurrency cap, with a bounded line (``app/overload.py``): a call waits at most
   ``queue_timeout_s`` for a slot and is shed at once (503 overloaded) when the line cannot drain
   in that time;
3. up to ``retry.max_attempts`` attempts within ``deadline_s`` of the first (no attempt starts
   after it, the one under way is cut at it): 408, 429, 500, 502, 503, 504, connect errors and read
   timeouts are retried after ``Retry-After`` / ``retry-after-ms`` / ``x-ratelimit-reset-*`` when
   the provider sends them, else after exponential backoff with full jitter; a wait longer than
   ``retry.cap_s`` is not slept through but handed to the client as a 429 with Retry-After; every
   retry (and every fallback after a provider call) is paid from the provider's retry budget, and
   when it is spent the error goes to the client at once;
4. on a 401 the provider's key (or Entra token) is fetched again once (rotation);
5. when the model stays unavailable, its fallback models in order, each at its own provider.

Streams are retried only until their first event arrived; after that the gateway has sent bytes
to the client and an interruption is reported in-band (see ``app/streaming.py``). Passthrough
calls (:meth:`UpstreamClient.open_raw`) stream both bodies and are retried only when the request
body can be sent again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import yarl

from app.breaker import CircuitBreaker
from app.config import ModelsConfig, UpstreamConfig
from app.errors import (
    CircuitOpen,
    GatewayError,
    Overloaded,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from app.metrics import Metrics
from app.overload import ConcurrencyQueue, RetryBudget
from app.providers import Provider
from app.providers.base import RETRY_STATUSES
from app.providers.base import parse_duration as parse_duration
from app.providers.base import retry_hint as retry_hint

log = logging.getLogger("liftoff.upstream")

MAX_SSE_EVENT_BYTES = 1 << 20  # one event larger than this is a broken stream, not a big answer
MAX_ERROR_BODY_BYTES = 1 << 16  # a refusal read before retrying a passthrough call
# Never passed between client and provider: per-connection headers, and the client's own auth
# (replaced by the provider's).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CLIENT_ONLY = HOP_BY_HOP | {"host", "authorization", "api-key", "cookie", "expect"}


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
    # Tracing on (app/telemetry.py): the request's trace, and the current attempt's W3C trace
    # context headers (traceparent, tracestate) for the provider.
    trace: Any = None
    trace_headers: dict[str, str] | None = None


_UNPARSED: Any = object()


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]
    model: str
    _parsed: Any = field(default=_UNPARSED, init=False, repr=False, compare=False)

    def json(self) -> dict[str, Any]:
        """The body parsed, once (a batch's answer is read by its trace and by the batcher, and
        may be megabytes of vectors); callers read it, never change it."""
        if self._parsed is _UNPARSED:
            self._parsed = orjson.loads(self.body)
        return self._parsed


@dataclass(slots=True)
class Stream:
    """An open provider stream whose first event has already been read."""

    model: str
    first_event: bytes
    _response: aiohttp.ClientResponse
    _release: Callable[[], None]
    # Whether an event is the stream's last; None: ``data: [DONE]`` (chat, completions).
    ends: Callable[[bytes], bool] | None = None
    _closed: bool = field(default=False)

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Raw SSE events (``data: ...`` without the blank-line separator) as they arrive, in
        batches: each holds every complete event already received, so the relay sends them to
        the client in one write rather than one per event. Nothing ever waits for more data
        than has arrived, so this is no buffering: a lone event goes out alone, at once.

        Raises StreamInterrupted when the connection breaks or ends before the last event
        (``data: [DONE]``, or what ``ends`` says), or an event grows beyond MAX_SSE_EVENT_BYTES.
        """
        ends = self.ends
        yield [self.first_event]
        if ends(self.first_event) if ends is not None else self.first_event == b"data: [DONE]":
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
                if ends(event) if ends is not None else event == b"data: [DONE]":
                    yield batch
                    return
            if batch:
                yield batch

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _finish(self._response)
            self._release()


@dataclass(slots=True)
class RawReply:
    """A passthrough answer whose body is not read yet: relay :meth:`chunks`, then
    :meth:`close`. ``headers`` are the provider's (name, value) pairs in order, repeats kept,
    hop-by-hop ones removed; the body is passed as it came (``content-encoding`` included)."""

    status: int
    headers: list[tuple[str, str]]
    provider: str
    _response: aiohttp.ClientResponse
    _closed: bool = field(default=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; StreamInterrupted when the connection breaks."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise StreamInterrupted(type(exc).__name__) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _finish(self._response)


def _finish(response: aiohttp.ClientResponse) -> None:
    if response.content.at_eof():
        response.release()  # finished cleanly: the connection goes back to the pool
    else:
        response.close()  # abandoned mid-way: the connection cannot be reused


@dataclass(slots=True)
class _Target:
    """Where one model's calls go: its provider, and its own breaker, slots and URLs."""

    model: str
    provider: Provider
    breaker: CircuitBreaker
    slots: ConcurrencyQueue
    urls: dict[str, yarl.URL] = field(default_factory=dict)

    def url(self, path: str) -> yarl.URL:
        # Built once per path: aiohttp would parse a str URL on every request.
        url = self.urls.get(path)
        if url is None:
            url = self.provider.url_for(path, self.model)
            if len(self.urls) < 64:  # the JSON routes; a path with ids in it is not kept
                self.urls[path] = url
        return url


class UpstreamClient:
    """Calls to catalog models, each routed to its provider.

    ``providers`` are the named providers in config order (``app.providers.build_providers``);
    the first serves models that name none.
    """

    def __init__(
        self,
        providers: Mapping[str, Provider],
        config: UpstreamConfig,
        models: ModelsConfig,
        metrics: Metrics,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.providers = dict(providers)
        self.config = config
        self.metrics = metrics
        self._rng = rng
        self._fallbacks = {name: spec.fallbacks for name, spec in models.catalog.items()}
        names = tuple(self.providers)
        self._default = self.providers[names[0]]
        self._provider_of = {
            name: self.providers[models.provider_of(name, names)] for name in models.catalog
        }
        self._targets: dict[str, _Target] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        retry = config.retry
        self._budgets = {
            name: RetryBudget(retry.budget_ratio, retry.budget_min_per_s) for name in self.providers
        }
        for name in models.catalog:
            metrics.set_circuit(name, "closed")

    async def start(self) -> None:
        """One connection pool per provider."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.config.timeout_connect_s,
            sock_read=self.config.timeout_read_s,
        )
        for name in self.providers:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_connections,
                keepalive_timeout=60,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            self._sessions[name] = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                read_bufsize=1 << 17,
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "liftoff-gateway"},
                cookie_jar=aiohttp.DummyCookieJar(),  # a provider sets no cookies we should keep
            )

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
        for provider in self.providers.values():
            await provider.credential.close()

    def provider_for(self, model: str) -> Provider:
        """The provider serving ``model`` (a name outside the catalog: the first provider)."""
        return self._provider_of.get(model, self._default)

    def breaker(self, model: str) -> CircuitBreaker:
        return self._target(model).breaker

    def _target(self, model: str) -> _Target:
        target = self._targets.get(model)
        if target is None:
            cfg = self.config.breaker
            target = self._targets[model] = _Target(
                model,
                self.provider_for(model),
                CircuitBreaker(
                    model, cfg.failure_threshold, cfg.reset_after_s, self.metrics.circuit_changed
                ),
                ConcurrencyQueue(
                    model,
                    self.config.max_concurrency_per_model,
                    self.config.queue_timeout_s,
                    self.metrics.child(self.metrics.upstream_queue_length, model).set,
                ),
            )
        return target

    def _session(self, provider: Provider) -> aiohttp.ClientSession:
        session = self._sessions.get(provider.name)
        assert session is not None, "UpstreamClient.start() was not awaited"
        return session

    @staticmethod
    async def _headers(
        provider: Provider,
        url: yarl.URL,
        payload: bytes,
        extra: Mapping[str, str] | None,
        trace: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if extra:
            headers.update(extra)
        if trace:
            headers.update(trace)  # this attempt's span, over any traceparent forwarded
        headers.update(await provider.auth_headers("POST", url, payload))
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

        async def once(target: _Target) -> Reply:
            return await self._attempt_json(path, body, target, stats, headers)

        return await self._with_fallbacks(model, once, stats)

    async def open_stream(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        stats: CallStats,
        headers: Mapping[str, str] | None = None,
        ends: Callable[[bytes], bool] | None = None,
    ) -> Stream:
        """Open a streaming call; retries and fallbacks apply until the first event is read.
        ``ends`` tells the stream's last event (None: ``data: [DONE]``)."""

        async def once(target: _Target) -> Stream:
            return await self._attempt_stream(path, body, target, stats, headers, ends)

        return await self._with_fallbacks(model, once, stats)

    async def moderate(self, model: str, text: str, stats: CallStats) -> bool:
        """True when the provider's moderation endpoint flags ``text``."""
        reply = await self.post_json(
            "/v1/moderations", {"model": model, "input": text}, model, stats
        )
        results = reply.json().get("results") or []
        return any(isinstance(r, dict) and r.get("flagged") for r in results)

    async def open_raw(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | AsyncIterable[bytes] | None = None,
        model: str | None = None,
        provider: str | None = None,
        query: str = "",
        stats: CallStats | None = None,
    ) -> RawReply:
        """Any route, passed through: ``path`` is the OpenAI path ("/v1/files"), ``query`` the
        client's raw query string, ``headers`` the client's (its auth, cookies and hop-by-hop
        headers are dropped; the provider's auth is added). Neither body is buffered: an async
        iterable ``body`` is streamed up (with the client's content-length when it sent one)
        and the answer comes back unread in a :class:`RawReply`.

        The provider is ``provider`` by name, else ``model``'s, else the first. 408/429/5xx,
        connect errors and timeouts are retried like the JSON calls when ``body`` is bytes or
        None; a streamed body is sent once (a 401 still refreshes the key for later calls).
        Raises UpstreamError (a retryable status or a 401, attempts spent),
        UpstreamTimeout or UpstreamUnreachable; any other status is returned as it came.
        """
        chosen = (
            self.providers[provider] if provider is not None else self.provider_for(model or "")
        )
        url = chosen.url_for(path, model)
        if query:
            own = set(url.query)
            url = url.extend_query(
                [(k, v) for k, v in yarl.URL(f"?{query}").query.items() if k not in own]
            )
        replayable = body is None or isinstance(body, bytes)
        sent = [
            (k, v)
            for k, v in headers.items()
            if k.lower() not in CLIENT_ONLY and not (replayable and k.lower() == "content-length")
        ]
        stats = CallStats() if stats is None else stats

        async def once() -> RawReply:
            signed = (body or b"") if isinstance(body, bytes | None) else None  # None: streamed
            out = [*sent, *(await chosen.auth_headers(method, url, signed)).items()]
            if stats.trace_headers:  # this attempt's span, over any traceparent forwarded
                out = [(k, v) for k, v in out if k.lower() not in stats.trace_headers]
                out += stats.trace_headers.items()
            session = self._session(chosen)
            started = time.perf_counter()
            stats.attempts += 1
            try:
                response = await session.request(
                    method, url, data=body, headers=out, auto_decompress=False
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _transport_retry(exc) from None
            finally:
                stats.upstream_s += time.perf_counter() - started
            if response.status in RETRY_STATUSES or response.status == 401:
                try:
                    data = await response.content.read(MAX_ERROR_BODY_BYTES)
                except (TimeoutError, aiohttp.ClientError):
                    data = b""
                finally:
                    response.close()
                raise self._classify(chosen, response.status, data, response.headers)
            relayed = [(k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
            return RawReply(response.status, relayed, chosen.name, response)

        return await self._with_retries(
            model or chosen.name, chosen, once, stats, replayable=replayable
        )

    # --- machinery -------------------------------------------------------------------------

    async def _with_fallbacks(
        self, model: str, once: Callable[[_Target], Awaitable[Any]], stats: CallStats
    ) -> Any:
        candidates = (model, *self._fallbacks.get(model, ()))
        last: GatewayError | None = None
        calls_before = stats.attempts
        deadline = asyncio.get_running_loop().time() + self.config.deadline_s
        for candidate in candidates:
            if last is not None and asyncio.get_running_loop().time() >= deadline:
                break
            target = self._target(candidate)
            # A fallback after a provider call is one more call for this request: a retry, paid
            # from the budget; after a model that made none (open circuit, shed) it is the first.
            fallback = stats.attempts > calls_before
            if fallback and not self._may_retry(target.provider, candidate):
                break
            try:
                result = await self._with_retries(
                    candidate,
                    target.provider,
                    functools.partial(once, target),
                    stats,
                    first_call=not fallback,
                    deadline=deadline,
                )
            except (CircuitOpen, Overloaded, UpstreamTimeout, UpstreamUnreachable) as exc:
                last = exc
            except UpstreamError as exc:
                if exc.status < 500 and exc.status not in (408, 429):
                    raise
                last = exc
            else:
                if candidate != model:
                    self.metrics.child(self.metrics.upstream_fallbacks, model, candidate).inc()
                    log.warning(
                        "served by fallback",
                        extra={
                            "model": model,
                            "fallback": candidate,
                            "provider": target.provider.name,
                        },
                    )
                stats.model_used = candidate
                return result
        assert last is not None
        raise last

    async def _with_retries(
        self,
        label: str,
        provider: Provider,
        once: Callable[[], Awaitable[Any]],
        stats: CallStats,
        replayable: bool = True,
        first_call: bool = True,
        deadline: float | None = None,
    ) -> Any:
        """Attempts of one call at one provider; ``label`` names it in metrics and logs.

        The first attempt that reaches the provider earns the provider's retry budget its share
        (unless ``first_call`` is False: a fallback, itself paid as a retry); every further
        attempt is paid from it, and when the budget is spent the last error goes to the client.
        With a ``deadline`` (event-loop time), an attempt still under way at it is cut
        (UpstreamTimeout) and a retry that would start after it is not made.
        """
        max_attempts = self.config.retry.max_attempts if replayable else 1
        if stats.trace is not None:
            once = stats.trace.attempts(once, provider, label, stats)  # a client span each
        refreshed_key = False
        attempt = 0
        calls_before = stats.attempts
        while True:
            try:
                try:
                    if deadline is None:
                        return await once()
                    return await self._before(deadline, once, label)
                finally:
                    if first_call and stats.attempts > calls_before:
                        first_call = False  # earned before this request's own retry is paid
                        self._budgets[provider.name].first_call()
            except _Retry as retry:
                if retry.reason == "401":
                    if not refreshed_key and await provider.credential.refresh():
                        refreshed_key = True
                        if replayable and self._may_retry(provider, label):
                            continue
                    raise retry.error from None
                attempt += 1
                if attempt >= max_attempts:
                    raise retry.error from None
                delay = self.backoff(attempt - 1, retry.hint)
                if delay is None:
                    # The provider asks for a longer pause than we may hold the client for.
                    raise retry.error from None
                if deadline is not None and asyncio.get_running_loop().time() + delay >= deadline:
                    raise retry.error from None  # the retry could not start in time
                if not self._may_retry(provider, label):
                    raise retry.error from None
                self.metrics.child(self.metrics.upstream_retries, label, retry.reason).inc()
                log.info(
                    "retrying upstream",
                    extra={
                        "model": label,
                        "provider": provider.name,
                        "reason": retry.reason,
                        "delay_s": round(delay, 3),
                    },
                )
                # Backing off is waiting on the provider, not the gateway's own overhead.
                stats.upstream_s += delay
                await asyncio.sleep(delay)

    async def _before(self, deadline: float, once: Callable[[], Awaitable[Any]], label: str) -> Any:
        """``once()``, cut at ``deadline``: its slot wait and its call end there (504)."""
        try:
            async with asyncio.timeout_at(deadline):
                return await once()
        except TimeoutError:
            # The attempts turn their own timeouts into retries: this one is the deadline's.
            log.warning(
                "upstream deadline passed",
                extra={"model": label, "deadline_s": self.config.deadline_s},
            )
            raise UpstreamTimeout(f"upstream.deadline_s ({self.config.deadline_s:g} s)") from None

    def _may_retry(self, provider: Provider, label: str) -> bool:
        """Spend one retry of ``provider``'s budget; False (counted, logged) when it is spent."""
        if self._budgets[provider.name].try_retry():
            return True
        self.metrics.child(self.metrics.retry_budget_exhausted, label).inc()
        log.info("retry budget spent", extra={"model": label, "provider": provider.name})
        return False

    def _refusal(
        self,
        target: _Target,
        status: int,
        body: bytes,
        headers: Mapping[str, str],
    ) -> _Retry | UpstreamError:
        """A non-200 answer: a 5xx counts against the breaker; a 4xx says nothing of health."""
        if status >= 500:
            target.breaker.failure()
        else:
            target.breaker.abandon()
        return self._classify(target.provider, status, body, headers)

    @staticmethod
    def _classify(
        provider: Provider, status: int, body: bytes, headers: Mapping[str, str]
    ) -> _Retry | UpstreamError:
        refusal = provider.classify(status, headers, body)
        if refusal.retry_reason is None:
            return refusal.error
        return _Retry(refusal.error, refusal.retry_reason, refusal.error.retry_after_s)

    async def _request(
        self,
        path: str,
        body: dict[str, Any],
        target: _Target,
        stats: CallStats,
        extra: Mapping[str, str] | None,
    ) -> tuple[aiohttp.ClientSession, yarl.URL, bytes, dict[str, str]]:
        """One attempt's session, URL, body and headers (signed for this very body)."""
        provider = target.provider
        url = target.url(path)
        payload = orjson.dumps(provider.body_for(path, target.model, body))
        headers = await self._headers(provider, url, payload, extra, stats.trace_headers)
        return self._session(provider), url, payload, headers

    async def _attempt_json(
        self,
        path: str,
        body: dict[str, Any],
        target: _Target,
        stats: CallStats,
        extra: Mapping[str, str] | None,
    ) -> Reply:
        model = target.model
        session, url, payload, headers = await self._request(path, body, target, stats, extra)
        breaker = target.breaker
        breaker.before_call()
        gauge = self.metrics.child(self.metrics.upstream_in_flight, model)
        healthy: bool | None = None
        taken = await self._take_slot(target)
        try:
            gauge.inc()
            started = time.perf_counter()
            try:
                stats.attempts += 1
                async with session.post(url, data=payload, headers=headers) as response:
                    data = await response.read()
                    status = response.status
                    answer_headers = response.headers
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
                return Reply(status, data, answer_headers, model)
            raise self._refusal(target, status, data, answer_headers)
        finally:
            target.slots.release(taken)

    async def _attempt_stream(
        self,
        path: str,
        body: dict[str, Any],
        target: _Target,
        stats: CallStats,
        extra: Mapping[str, str] | None,
        ends: Callable[[bytes], bool] | None = None,
    ) -> Stream:
        model = target.model
        session, url, payload, headers = await self._request(path, body, target, stats, extra)
        breaker = target.breaker
        breaker.before_call()
        slots = target.slots
        taken = await self._take_slot(target)
        gauge = self.metrics.child(self.metrics.upstream_in_flight, model)
        gauge.inc()

        def release() -> None:
            gauge.dec()
            slots.release(taken)

        started = time.perf_counter()
        response: aiohttp.ClientResponse | None = None
        try:
            stats.attempts += 1
            response = await session.post(url, data=payload, headers=headers)
            if response.status != 200:
                data = await response.read()
                raise self._refusal(target, response.status, data, response.headers)
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
        return Stream(model, first.strip(), response, release, ends)

    async def _take_slot(self, target: _Target) -> float:
        """One of the model's concurrency slots (app/overload.py), as ``slots.acquire``. A call
        shed or cancelled in line never reached the provider: it hands back the breaker's probe
        (if it was the probe) and is counted."""
        model = target.model
        asked = time.monotonic()
        try:
            taken = await target.slots.acquire()
        except Overloaded as exc:
            target.breaker.abandon()
            self.metrics.child(self.metrics.upstream_shed, model, exc.reason).inc()
            if exc.reason == "timeout":
                self.metrics.child(self.metrics.upstream_queue_wait, model).observe(
                    time.monotonic() - asked
                )
            raise
        except BaseException:
            target.breaker.abandon()
            raise
        self.metrics.child(self.metrics.upstream_queue_wait, model).observe(taken - asked)
        return taken

    @staticmethod
    def _drop(response: aiohttp.ClientResponse | None, release: Callable[[], None]) -> None:
        if response is not None:
            response.close()
        release()
