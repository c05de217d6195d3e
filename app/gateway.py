"""The gateway's wiring and its request pipeline (routes live in ``app/server.py``).

Per generation request, in order:
  auth (hash lookup) -> body size/type -> JSON -> validation -> token count (off the loop when
  large) -> max_tokens default/clamp/context check -> [limits+budget admit  ||  cache lookup]
  (issued together: one Redis write, one round trip; a non-cacheable stream of a key with room
  to spare is opened at the provider meanwhile) -> moderation (optional) ->
  upstream (single flight for cacheable requests, batching for single-prompt completions) ->
  response; settle, cache write (together: one Redis write), usage and metrics run after the
  response, off its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from app import cache as cache_mod
from app.accounting import ModelPrice, PriceTable, TokenCounter, TokenUsage, month_key
from app.auth import ClientKey, KeyRing, parse_client_keys
from app.config import GatewayConfig
from app.errors import (
    ApiError,
    ContentFlagged,
    InvalidRequest,
    NotReady,
    PayloadTooLarge,
    RateLimited,
    StateUnavailable,
    StreamInterrupted,
    UpstreamError,
    to_api_error,
)
from app.limits import (
    PERIOD_S,
    KeyPolicy,
    MemoryLimitStore,
    RedisLimitStore,
    ResilientLimitStore,
    format_duration,
)
from app.log import AccessLog
from app.log import request_id as request_id_var
from app.metrics import Metrics
from app.redis_backend import BackendUnavailable, create_redis
from app.replay import as_hit, replay
from app.schemas import (
    ParsedRequest,
    apply_token_limits,
    check_envelope,
    parse_json_object,
    validate_chat,
    validate_completions,
)
from app.secrets import CLIENT_KEYS, REDIS_AUTH_TOKEN, UPSTREAM_API_KEY, SecretStore
from app.single_flight import CacheFlights
from app.streaming import StreamRelay, error_event
from app.upstream import CallStats, Stream, UpstreamClient, parse_duration

log = logging.getLogger("liftoff.gateway")

SIMULATOR_KEY = "sk-liftoff-simulator"  # what the gateway sends to its built-in simulator
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
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


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


def _body_usage(body: dict[str, Any]) -> TokenUsage:
    return TokenUsage.of(body.get("usage"))


class Gateway:
    def __init__(self, config: GatewayConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.secrets = SecretStore(self.env)
        self.counter = TokenCounter()
        self.prices = PriceTable(
            {
                name: ModelPrice(
                    spec.input_usd_per_1m, spec.output_usd_per_1m, spec.cached_input_usd_per_1m
                )
                for name, spec in config.models.catalog.items()
            }
        )
        self.ready = False
        self.draining = False
        self.keys = KeyRing([])
        self.policies: dict[str, KeyPolicy] = {}
        self.upstream: UpstreamClient | None = None
        self.redis: Any = None
        self.cache: Any = None
        self.flights: CacheFlights | None = None  # single flight for cacheable requests
        self.limits: Any = None
        self.batcher: Any = None
        self.simulator: Any = None
        self._after: set[asyncio.Task[None]] = set()
        # Per key name (bounded by the configured keys): when this process last saw an admission
        # of that key, its x-ratelimit-* headers and budget left (for responses the limiter never
        # saw, and to decide whether a stream may be opened before the verdict).
        self._limits_seen: dict[str, tuple[float, dict[str, str], float | None]] = {}
        # Resolved metric children per (route, model, status): labels() costs a lock and a lookup.
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self.access_log = AccessLog()
        self._forward = frozenset(config.upstream.forward_headers)
        self._forward_prefix = "x-simulator-" if config.uses_simulator else None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        await self.secrets.resolve()
        keys = parse_client_keys(self.secrets.get(CLIENT_KEYS))
        self.keys = KeyRing(keys)
        limits = cfg.limits
        self.policies = {
            k.name: KeyPolicy(
                k.name,
                k.rpm if k.rpm is not None else limits.default_rpm,
                k.tpm if k.tpm is not None else limits.default_tpm,
                k.monthly_budget_usd,
            )
            for k in keys
        }
        if self.keys.dev_mode:
            self.policies["dev"] = KeyPolicy("dev", limits.default_rpm, limits.default_tpm, None)
            log.warning(
                "no client keys configured: accepting only the development key 'liftoff-dev-key' "
                "(set LIFTOFF_CLIENT_KEYS or LIFTOFF_CLIENT_KEYS_SECRET_ARN for real keys)"
            )
        base_url = cfg.upstream.url
        if base_url is None:
            from app.simulator import SimulatorOptions, SimulatorServer

            self.simulator = await asyncio.to_thread(SimulatorServer(SimulatorOptions()).start)
            base_url = self.simulator.url
            log.warning("upstream.url is null: using the built-in simulator at %s", base_url)
        self.upstream = UpstreamClient(
            base_url,
            cfg.upstream,
            cfg.models,
            self.metrics,
            self._provider_key,
            lambda: self.secrets.refresh(UPSTREAM_API_KEY),
        )
        await self.upstream.start()
        hits_count = cfg.limits.count_cache_hits_tokens
        if cfg.redis.url:
            self.redis = create_redis(
                cfg.redis.url,
                self.secrets.get(REDIS_AUTH_TOKEN),
                socket_timeout_s=cfg.redis.socket_timeout_s,
                connect_timeout_s=cfg.redis.socket_timeout_s,
                max_connections=cfg.redis.max_connections,
            )
            self.cache = cache_mod.ResilientCache(
                cache_mod.RedisResponseCache(
                    self.redis, cfg.cache.ttl_s, lease_s=cfg.cache.single_flight_wait_s
                )
            )
            self.limits = ResilientLimitStore(
                RedisLimitStore(self.redis, count_cache_hits_tokens=hits_count),
                MemoryLimitStore(count_cache_hits_tokens=hits_count),
                cfg.limits.on_redis_failure,
            )
        else:
            self.cache = cache_mod.MemoryResponseCache(
                cfg.cache.max_entries, cfg.cache.ttl_s, lease_s=cfg.cache.single_flight_wait_s
            )
            self.limits = MemoryLimitStore(count_cache_hits_tokens=hits_count)
        self.flights = CacheFlights(
            self.cache,
            cfg.cache.single_flight_wait_s,
            self.after,
            self.metrics.single_flight_waits.inc,
            self.metrics.single_flight_timeouts.inc,
        )
        if cfg.batching.enabled:
            from app.batching import CompletionBatcher

            self.batcher = CompletionBatcher(
                cfg.batching.window_ms,
                cfg.batching.max_batch,
                self._send_batch,
                count_tokens=self.counter.count_text,
            )
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=5)
        if self.upstream is not None:
            await self.upstream.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.simulator is not None:
            await asyncio.to_thread(self.simulator.stop)
            self.simulator = None
        self.access_log.flush()

    def begin_drain(self) -> None:
        """SIGTERM: readiness goes false at once; in-flight work carries on."""
        if not self.draining:
            self.draining = True
            log.warning("draining: readiness is now false, in-flight requests finish")

    def _provider_key(self) -> str | None:
        key = self.secrets.get(UPSTREAM_API_KEY)
        if key is None and self.config.uses_simulator:
            return SIMULATOR_KEY
        return key

    def after(self, coro: Any) -> None:
        """Run work after the response, off its path; errors are logged.

        The backlog stays bounded without a queue: each request schedules at most two tasks, and
        each task ends within Redis' socket timeout (or at once in-process).
        """
        task = asyncio.ensure_future(coro)
        self._after.add(task)
        task.add_done_callback(self._after_done)

    async def flush(self) -> None:
        """Wait for the after-work scheduled so far (settlements, cache writes)."""
        while self._after:
            await asyncio.wait(set(self._after))

    def _after_done(self, task: asyncio.Task[None]) -> None:
        self._after.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("after-work failed: %s", type(exc).__name__, exc_info=exc)

    # --- request helpers ---------------------------------------------------------------------

    def new_ctx(self, route: str, request: Request) -> Ctx:
        # One pass over the raw headers; Starlette's Headers.get() scans the list on every call.
        h = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        given = h.get("x-request-id")
        rid = (
            given
            if given and _REQUEST_ID.match(given)
            else f"{_ID_PREFIX}{next(_ID_SEQUENCE):016x}"
        )
        request_id_var.set(rid)
        return Ctx(route, rid, h)

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
            for name, value in self.known_limit_headers(ctx.key).items():
                encoded = name.encode("latin-1")
                if encoded not in present:
                    raw.append((encoded, value.encode("latin-1")))
        if b"x-liftoff-overhead-ms" not in present:
            raw.append((b"x-liftoff-overhead-ms", f"{ctx.overhead_ms():.3f}".encode()))
        if not isinstance(response, StreamingResponse):
            self.record(ctx, response.status_code, method)
        return response

    def known_limit_headers(self, key_name: str, now: float | None = None) -> dict[str, str]:
        """The key's x-ratelimit-* headers as last known in this process, aged to `now`.

        From the latest admission of the key seen here: its backlog (the reset value) drains at
        the limit's rate, and `remaining` follows from it as the limiter computes it (GCRA, a
        full-period burst). Other replicas' admissions since then are not seen, so `remaining`
        may be high by what they admitted. With no admission seen yet: the full limit.
        """
        policy = self.policies.get(key_name)
        if policy is None:
            return {}
        seen = self._limits_seen.get(key_name)
        elapsed = 0.0
        if seen is not None:
            elapsed = (time.monotonic() if now is None else now) - seen[0]
        out: dict[str, str] = {}
        for kind, limit in (("requests", policy.rpm), ("tokens", policy.tpm)):
            if limit is None:
                continue  # unlimited: the limiter sends no headers for it either
            backlog = 0.0
            if seen is not None:
                backlog = parse_duration(seen[1].get(f"x-ratelimit-reset-{kind}", "")) or 0.0
                backlog = max(0.0, backlog - elapsed)
            remaining = math.floor((PERIOD_S - backlog) * limit / PERIOD_S + 1e-6)
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, min(limit, remaining)))
            out[f"x-ratelimit-reset-{kind}"] = format_duration(backlog)
        return out

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
        if api.status >= 500 and not isinstance(exc, NotReady | StateUnavailable):
            log.error(
                "request failed: %s",
                type(exc).__name__,
                exc_info=exc if api.status == 500 else None,
            )
        return Response(api.body(), api.status, api.headers, media_type="application/json")

    def authenticate(self, request: Request, ctx: Ctx) -> ClientKey:
        key = self.keys.authenticate(ctx.h.get("authorization"))
        ctx.key = key.name
        return key

    async def read_json(self, request: Request, ctx: Ctx) -> tuple[dict[str, Any], int]:
        limit = self.config.server.max_body_bytes
        length = ctx.h.get("content-length")
        check_envelope(
            ctx.h.get("content-type"),
            int(length) if length and length.isdigit() else None,
            limit,
        )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
        return parse_json_object(b"".join(chunks)), size

    def _count_sync(self, parsed: ParsedRequest) -> tuple[int, int]:
        """(tokens of the largest prompt, tokens of all prompts together)."""
        encoding = parsed.spec.encoding
        if parsed.kind == "chat":
            body = parsed.body
            # Non-text parts are only bounded: the context check takes the fewest tokens they can
            # cost, limits and budgets reserve the most (never more than the context window).
            low, high = self.counter.count_message_bounds(body["messages"], encoding)
            for name in ("tools", "functions"):
                if isinstance(body.get(name), list):
                    tools = self.counter.count_tools(body[name], encoding)
                    low += tools
                    high += tools
            return low, min(high, parsed.spec.context_window)
        counts = [self.counter.count_text(p, encoding) for p in parsed.prompts]
        return max(counts), sum(counts)

    async def count_prompt(self, parsed: ParsedRequest, body_bytes: int) -> tuple[int, int]:
        # Tokenizing a large input takes milliseconds: do it in a thread, not on the loop.
        if body_bytes > self.config.server.token_count_offload_chars:
            return await asyncio.to_thread(self._count_sync, parsed)
        return self._count_sync(parsed)

    def _moderation_text(self, parsed: ParsedRequest) -> str:
        if parsed.kind == "completions":
            return "\n".join(parsed.prompts)
        parts: list[str] = []
        for message in parsed.body["messages"]:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
        return "\n".join(parts)

    def forward_headers(self, ctx: Ctx) -> dict[str, str] | None:
        if not self._forward and self._forward_prefix is None:
            return None
        out: dict[str, str] | None = None
        prefix = self._forward_prefix
        for name, value in ctx.h.items():
            if name in self._forward or (prefix is not None and name.startswith(prefix)):
                out = out or {}
                out[name] = value
        return out

    def cache_mode(self, ctx: Ctx, canonical: dict[str, Any]) -> str:
        """'use' (look up and store) or 'bypass'."""
        if not self.config.cache.enabled:
            return "bypass"
        directive = ctx.h.get("x-liftoff-cache", "").lower()
        if directive == "bypass" or "no-cache" in ctx.h.get("cache-control", "").lower():
            return "bypass"
        if directive == "force":
            return "use"
        return "use" if cache_mod.is_deterministic(canonical) else "bypass"

    async def _lookup(
        self, canonical: dict[str, Any], key_name: str, lease: bool
    ) -> tuple[str | None, cache_mod.Lookup]:
        """(cache key, lookup); a failing cache is a miss that stores nothing."""
        scope = key_name if self.config.cache.scope == "key" else None
        try:
            key = await self.cache.key_for(canonical, scope)
            return key, await self.cache.lookup(key, lease)
        except Exception as exc:
            log.warning("cache lookup failed: %s", type(exc).__name__)
            return None, cache_mod.Lookup(None)

    # --- the pipeline ------------------------------------------------------------------------

    async def generate(self, kind: str, request: Request, ctx: Ctx) -> Response:
        if not self.ready:
            raise NotReady()
        key = self.authenticate(request, ctx)
        body, size = await self.read_json(request, ctx)
        models = self.config.models
        parsed = (
            validate_chat(body, models) if kind == "chat" else validate_completions(body, models)
        )
        ctx.model = parsed.model
        if self.config.server.log_prompts:
            ctx.log["prompt"] = body.get("messages") if kind == "chat" else parsed.prompts
        prompt_tokens, total_prompt = await self.count_prompt(parsed, size)
        apply_token_limits(parsed, prompt_tokens, models.max_tokens_policy)
        body["model"] = parsed.model
        if isinstance(body.get("user"), str):
            digest = hashlib.sha256(f"{key.name}\x00{body['user']}".encode()).hexdigest()
            body["user"] = "u-" + digest[:32]

        canonical = cache_mod.canonical_request(kind, body, parsed.model)
        mode = self.cache_mode(ctx, canonical)
        output_tokens = parsed.worst_case_output_tokens
        worst = self.prices.worst_case(parsed.model, total_prompt, output_tokens)
        policy = self.policies[key.name]
        budgets = self.config.budgets
        admit = self.limits.admit(
            policy,
            parsed.model,
            total_prompt + output_tokens,
            worst,
            budgets.global_monthly_usd,
            budgets.soft_fraction,
        )
        cache_key: str | None = None
        found = cache_mod.Lookup(None)
        admission = None
        lookup = None
        early: asyncio.Task[Stream] | None = None
        if mode == "use":
            # Started first, awaited after the admission: both commands leave in one Redis write.
            # A JSON request's lookup may take the single-flight lease (same script, no extra
            # round trip); a stream never waits for another's answer, so it takes none.
            lookup = asyncio.ensure_future(self._lookup(canonical, key.name, not parsed.stream))
        elif (
            parsed.stream
            and not self.config.upstream.moderation.enabled
            and self._likely_admitted(key.name, total_prompt + output_tokens, worst)
        ):
            # A stream the cache cannot answer, for a key this process last saw with room to
            # spare: open the provider stream while the limiter decides, so time to first token
            # is not the sum of both. Nothing goes to the client before the verdict, and a
            # refusal cancels the call and releases its connection and concurrency slot.
            early = asyncio.ensure_future(self._open_stream(parsed, body, ctx))
        try:
            admission = await admit
        except BaseException as exc:
            if early is not None:
                _abandon_stream(early)
            if isinstance(exc, BackendUnavailable):
                raise StateUnavailable() from None
            raise
        finally:
            if lookup is not None:
                # The lookup never raises; awaited even when admission failed, so it never
                # outlives the request.
                cache_key, found = await lookup
                if admission is None:
                    self.flights.abandon(cache_key, found)
        if early is not None and not admission.allowed:
            _abandon_stream(early)
        ctx.admitted = True
        ctx.headers.update(admission.headers)
        self._limits_seen[key.name] = (
            time.monotonic(),
            admission.headers,
            admission.budget_remaining_usd,
        )
        if admission.budget_remaining_usd is not None:
            ctx.headers["x-liftoff-budget-remaining"] = f"{admission.budget_remaining_usd:.6f}"
        if not admission.allowed:
            self.metrics.child(self.metrics.rate_limited, admission.reason).inc()
            log.info("rate limited", extra={"key": key.name, "reason": admission.reason})
            self.flights.abandon(cache_key, found)
            raise RateLimited(admission.reason, admission.retry_after_s, admission.headers)
        if admission.soft_exceeded:
            self.metrics.child(self.metrics.budget_soft, key.name).inc()
            log.warning(
                "budget soft threshold passed",
                extra={"key": key.name, "remaining_usd": admission.budget_remaining_usd},
            )
        reservation = admission.reservation

        if found.value is not None:
            ctx.cache = "hit"
            self.metrics.child(self.metrics.cache, "hit").inc()
            return self._serve_cached(parsed, found.value, reservation, ctx)
        ctx.cache = "miss" if mode == "use" else "bypass"
        self.metrics.child(self.metrics.cache, ctx.cache).inc()
        try:
            if self.config.upstream.moderation.enabled:
                model = self.config.upstream.moderation.model
                if await self.upstream.moderate(model, self._moderation_text(parsed), ctx.stats):
                    self.metrics.moderation_flagged.inc()
                    raise ContentFlagged()
            if parsed.stream:
                opening = early
                early = None  # _stream owns it from here
                return await self._stream(
                    request, parsed, body, reservation, cache_key, ctx, opening
                )
            return await self._complete(request, parsed, body, reservation, cache_key, ctx, found)
        except BaseException:
            self.flights.abandon(cache_key, found)
            if early is not None:
                _abandon_stream(early)
            if reservation is not None:
                self.after(self.limits.release(reservation))
            raise

    def _likely_admitted(self, key_name: str, tokens: int, worst_case_usd: float) -> bool:
        """Whether this process' last view of the key says the limiter will admit this request.

        False when nothing is known yet: a call to the provider before the verdict is made only
        when a refusal is unlikely, so a key over its limits or budget costs no provider calls.
        """
        seen = self._limits_seen.get(key_name)
        if seen is None:
            return False
        budget_left = seen[2]
        if budget_left is not None and budget_left < 2 * worst_case_usd:
            return False
        headers = self.known_limit_headers(key_name)
        requests = headers.get("x-ratelimit-remaining-requests")
        if requests is not None and int(requests) < 2:
            return False
        remaining_tokens = headers.get("x-ratelimit-remaining-tokens")
        return remaining_tokens is None or int(remaining_tokens) >= 2 * tokens

    async def _open_stream(self, parsed: ParsedRequest, body: dict[str, Any], ctx: Ctx) -> Stream:
        path = "/v1/chat/completions" if parsed.kind == "chat" else "/v1/completions"
        # Always ask for usage: it is what the budget is settled with.
        options = {**(body.get("stream_options") or {}), "include_usage": True}
        upstream_body = {**body, "stream_options": options}
        return await self.upstream.open_stream(
            path, upstream_body, parsed.model, ctx.stats, self.forward_headers(ctx)
        )

    def _serve_cached(
        self, parsed: ParsedRequest, cached: bytes, reservation: Any, ctx: Ctx
    ) -> Response:
        response, origin = as_hit(cached, parsed.kind)  # a fresh id: a hit is its own response
        ctx.headers.update(origin)
        usage = _body_usage(response)
        model = response.get("model") or parsed.model
        saved = self.prices.cost_of(parsed.model, usage)
        if reservation is not None:
            self._settle(reservation, usage, 0.0, saved)
        self.metrics.child(self.metrics.cache_saved_tokens, parsed.model).inc(
            usage.prompt + usage.completion
        )
        self.metrics.child(self.metrics.cache_saved_usd, parsed.model).inc(saved)
        ctx.headers["x-liftoff-cache"] = "hit"
        self._log_completion(ctx, response)
        if parsed.stream:
            events = replay(response, parsed.kind, parsed.include_usage)
            return self._sse_response(iter_list(events), ctx, stream_model=model)
        return json_response(response)

    async def _call(
        self, request: Request, parsed: ParsedRequest, body: dict[str, Any], ctx: Ctx
    ) -> tuple[bytes, str]:
        """One upstream call (batched when eligible): response bytes and the model that served."""
        path = "/v1/chat/completions" if parsed.kind == "chat" else "/v1/completions"
        fwd = self.forward_headers(ctx)
        if (
            parsed.kind == "completions"
            and self.batcher is not None
            and len(parsed.prompts) == 1
            and fwd is None
        ):
            params = {k: v for k, v in body.items() if k not in ("model", "prompt")}
            started = time.perf_counter()
            try:
                result = await self.batcher.submit(parsed.model, params, parsed.prompts[0])
            finally:
                ctx.waited_s += time.perf_counter() - started
            return orjson.dumps(result), str(result.get("model") or parsed.model)
        reply = await self.upstream.post_json(path, body, parsed.model, ctx.stats, fwd)
        return reply.body, reply.model

    async def _send_batch(self, model: str, params: dict, prompts: list[str]) -> dict:
        self.metrics.batch_size.observe(len(prompts))
        stats = CallStats()
        reply = await self.upstream.post_json(
            "/v1/completions", {**params, "model": model, "prompt": prompts}, model, stats
        )
        return reply.json()

    async def _complete(
        self,
        request: Request,
        parsed: ParsedRequest,
        body: dict[str, Any],
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        found: cache_mod.Lookup,
    ) -> Response:
        leader = False

        async def call() -> tuple[bytes, str]:
            nonlocal leader
            leader = True
            return await self._call(request, parsed, body, ctx)

        if cache_key is not None:
            started = time.perf_counter()
            data, served_by = await self.flights.run(cache_key, found, call)
            if not leader:
                ctx.waited_s += time.perf_counter() - started
        else:
            data, served_by = await call()
        shared = not leader and cache_key is not None  # answered by another request's call
        try:
            response, origin = as_hit(data, parsed.kind) if shared else (orjson.loads(data), {})
        except orjson.JSONDecodeError:
            raise UpstreamError(502, detail="the provider's 200 answer is not JSON") from None
        usage = _body_usage(response)
        if not shared:
            cost = self.prices.cost_of(served_by, usage)
            if reservation is not None:
                self._settle(reservation, usage, cost)
            self._count_usage(served_by, usage, cost)
            if cache_key is not None:
                self.flights.store(cache_key)  # with the settlement: one Redis write
        else:
            # A follower of single flight: the answer was bought once, by the leader.
            ctx.cache = "hit"
            ctx.headers.update(origin)
            data = orjson.dumps(response)
            saved = self.prices.cost_of(parsed.model, usage)
            if reservation is not None:
                self._settle(reservation, usage, 0.0, saved)
            self.metrics.child(self.metrics.cache_saved_usd, parsed.model).inc(saved)
        ctx.headers["x-liftoff-cache"] = ctx.cache or "bypass"
        self._log_completion(ctx, response)
        return Response(data, 200, media_type="application/json")

    def _log_completion(self, ctx: Ctx, response: dict[str, Any]) -> None:
        if not self.config.server.log_prompts:
            return
        ctx.log["completion"] = [
            (c.get("message") or {}).get("content") if "message" in c else c.get("text")
            for c in response.get("choices") or []
        ]

    def _settle(
        self, reservation: Any, usage: TokenUsage, cost: float, saved: float | None = None
    ) -> None:
        """Settle after the response; `saved` is given for an answer the provider did not make."""
        settle = self.limits.settle(
            reservation,
            cost,
            usage.prompt,
            usage.completion,
            saved is not None,
            saved or 0.0,
            usage.cached_input,
            usage.reasoning,
        )
        self.after(settle)

    def _count_usage(self, model: str, usage: TokenUsage, cost: float) -> None:
        m = self.metrics
        m.child(m.tokens, model, "prompt").inc(usage.prompt)
        m.child(m.tokens, model, "completion").inc(usage.completion)
        if usage.cached_input:
            m.child(m.tokens, model, "cached_input").inc(usage.cached_input)
        if usage.reasoning:
            m.child(m.tokens, model, "reasoning").inc(usage.reasoning)
        m.child(m.cost, model).inc(cost)

    async def _stream(
        self,
        request: Request,
        parsed: ParsedRequest,
        body: dict[str, Any],
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        opening: asyncio.Task[Stream] | None = None,
    ) -> Response:
        if opening is None:
            stream = await self._open_stream(parsed, body, ctx)
        else:
            try:
                stream = await opening
            except asyncio.CancelledError:
                _abandon_stream(opening)  # this request was cancelled: the opening goes too
                raise
        # The relay assembles the answer for the cache, and for the log when prompts are logged.
        assemble = cache_key is not None or self.config.server.log_prompts
        relay = StreamRelay(parsed.kind, parsed.include_usage, keep_for_cache=assemble)
        ctx.headers["x-liftoff-cache"] = ctx.cache or "bypass"
        gateway = self
        state = {"outcome": "client_gone", "closed": False}

        def close() -> None:
            # Runs once: from the generator's finally, or from the response when the client left
            # before the generator ever started (then its finally never runs).
            if state["closed"]:
                return
            state["closed"] = True
            stream.close()
            gateway._after_stream(
                parsed, stream.model, relay, reservation, cache_key, ctx, state["outcome"]
            )

        async def events() -> AsyncIterator[bytes]:
            outcome = "complete"
            first = True
            try:
                async for batch in stream.batches():
                    # What arrived together leaves together: one write for the whole batch.
                    outs = [out for event in batch if (out := relay.process(event)) is not None]
                    if not outs:
                        continue
                    out = outs[0] if len(outs) == 1 else b"".join(outs)
                    if first:
                        first = False
                        gateway.metrics.child(gateway.metrics.ttft, parsed.model).observe(
                            time.perf_counter() - ctx.started
                        )
                    yield out
                if relay.upstream_error is not None:
                    outcome = "upstream_error"
            except StreamInterrupted:
                outcome = "interrupted"
                gateway.metrics.child(gateway.metrics.stream_interruptions, parsed.model).inc()
                log.warning("upstream stream interrupted", extra={"model": parsed.model})
                yield error_event(to_api_error(StreamInterrupted()))
            except BaseException:
                outcome = "client_gone"
                raise
            finally:
                state["outcome"] = outcome
                close()

        response = self._sse_response(events(), ctx)
        response.on_close = close
        return response

    def _after_stream(
        self,
        parsed: ParsedRequest,
        served_by: str,
        relay: StreamRelay,
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        outcome: str,
    ) -> None:
        if relay.usage:
            usage = TokenUsage.of(relay.usage)
        elif parsed.spec.reasoning:
            # No usage chunk (the stream broke) from a model whose hidden reasoning tokens never
            # show in the stream: charge the cap, all of which it may have spent.
            usage = TokenUsage(parsed.prompt_tokens, parsed.worst_case_output_tokens)
        else:
            # No usage chunk (the stream broke): charge what we know was produced.
            usage = TokenUsage(parsed.prompt_tokens, relay.chunks)
        cost = self.prices.cost_of(served_by, usage)
        if reservation is not None:
            self._settle(reservation, usage, cost)
        self._count_usage(served_by, usage, cost)
        answer = relay.assembled() if outcome == "complete" else None
        if answer is not None:
            if cache_key is not None:
                self.after(self.cache.set(cache_key, orjson.dumps(answer)))
            self._log_completion(ctx, answer)
        status = 200 if outcome == "complete" else 499 if outcome == "client_gone" else 502
        self.record(ctx, status, "POST", {"stream": outcome})

    def _sse_response(
        self, body: AsyncIterator[bytes], ctx: Ctx, stream_model: str | None = None
    ) -> RelayResponse:
        ctx.fixed_overhead_ms = ctx.overhead_ms()
        headers = {
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "x-liftoff-overhead-ms": f"{ctx.fixed_overhead_ms:.3f}",
        }
        response = RelayResponse(body, 200, headers, media_type="text/event-stream")
        if stream_model is not None:
            # A replayed cache hit: nothing else will log it.
            self.record(ctx, 200, "POST", {"stream": "replay"})
        return response

    # --- other routes ------------------------------------------------------------------------

    async def usage(self, request: Request, ctx: Ctx) -> Response:
        key = self.authenticate(request, ctx)
        month = request.query_params.get("month") or month_key()
        if not _MONTH.match(month):
            raise InvalidRequest("Invalid 'month': expected YYYY-MM.", "month", "invalid_value")
        wanted = request.query_params.get("key")
        if wanted is not None and wanted != key.name:
            self.keys.require_admin(key)
        try:
            if key.admin and wanted is None:
                data = await self.limits.usage(None, month)
                return json_response(
                    {
                        "object": "usage",
                        "month": month,
                        "keys": data.get("keys", {}),
                        "global": data.get("global"),
                        "global_monthly_budget_usd": self.config.budgets.global_monthly_usd,
                    }
                )
            name = wanted or key.name
            data = await self.limits.usage(name, month)
        except BackendUnavailable:
            raise StateUnavailable() from None
        usage = data.get("keys", {}).get(name, {})
        policy = self.policies.get(name)
        budget = policy.monthly_budget_usd if policy else None
        remaining = None
        if budget is not None:
            committed = usage.get("spent_usd", 0.0) + usage.get("reserved_usd", 0.0)
            remaining = max(0.0, budget - committed)
        return json_response(
            {
                "object": "usage",
                "month": month,
                "key": name,
                "monthly_budget_usd": budget,
                "budget_remaining_usd": remaining,
                "usage": usage,
            }
        )

    async def invalidate(self, request: Request, ctx: Ctx) -> Response:
        key = self.authenticate(request, ctx)
        self.keys.require_admin(key)
        raw = await request.body()
        body: dict[str, Any] = {}
        if raw.strip():
            body = parse_json_object(raw)
        model = body.get("model")
        resolved: str | None = None
        if model is not None:
            if not isinstance(model, str):
                raise InvalidRequest("Invalid type for 'model': expected a string.", "model")
            resolved = self.config.models.resolve(model)
            if resolved is None:
                raise InvalidRequest(f"Unknown model '{model}'.", "model", "model_not_found")
        scope = self._invalidation_scope(body.get("key"))
        await self.cache.invalidate(resolved, scope)
        log.info(
            "cache invalidated",
            extra={"model": resolved or "*", "cache_key_scope": scope or "*", "by": key.name},
        )
        return json_response(
            {"object": "cache.invalidation", "model": resolved, "key": scope, "invalidated": True}
        )

    def _invalidation_scope(self, name: Any) -> str | None:
        """The client key whose entries an invalidation is limited to (None: every key's)."""
        if name is None:
            return None
        if not isinstance(name, str):
            raise InvalidRequest("Invalid type for 'key': expected a string.", "key")
        if self.config.cache.scope != "key":
            raise InvalidRequest(
                "'key' needs cache.scope = key: with cache.scope = global every client key shares "
                "the entries, invalidate by 'model' or everything.",
                "key",
                "invalid_value",
            )
        if name not in self.policies:
            raise InvalidRequest(f"Unknown client key '{name}'.", "key", "invalid_value")
        return name

    def models_list(self) -> list[dict[str, Any]]:
        cfg = self.config.models
        names = [*cfg.aliases, *cfg.catalog]
        return [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "liftoff",
                "pinned": cfg.aliases.get(name, name),
            }
            for name in names
        ]


class RelayResponse(StreamingResponse):
    """A streaming response relayed from the task that serves the request.

    Starlette's StreamingResponse (for ASGI servers before spec 2.4, uvicorn included) starts an
    anyio task group and a second task before its first chunk, ~0.2 ms on the time to first
    token. Here the chunks go out from this task, and a light watcher task cancels it when the
    client disconnects, so the provider stream is not read to its end for nobody. The upstream
    stream is always released, even when the client went away before the first chunk (the body
    generator then never starts, so its finally never runs).
    """

    on_close: Callable[[], None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        relaying = True
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            with contextlib.suppress(Exception):  # a broken receive: no watch, as no disconnect
                while (await receive())["type"] != "http.disconnect":
                    pass
                if relaying:  # only while the relay awaits: never cancel the code after it
                    gone = True
                    task.cancel()

        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        # From ASGI 2.4 on, a send to a client that left raises OSError: no watcher needed.
        modern = tuple(map(int, spec.split("."))) >= (2, 4)
        watcher = None if modern else asyncio.ensure_future(watch_disconnect())
        try:
            await self.stream_response(send)
        except OSError:
            raise ClientDisconnect() from None
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            relaying = False
            if watcher is not None:
                watcher.cancel()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                self.on_close()


def _abandon_stream(opening: asyncio.Task[Stream]) -> None:
    """Cancel a provider stream being opened; close it if it opened anyway.

    The opening's own cleanup (on cancellation) closes the connection, releases the concurrency
    slot and leaves the circuit breaker untouched; a stream that finished opening first is closed.
    """

    def close(task: asyncio.Task[Stream]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # nothing opened (retrieving the exception keeps asyncio quiet)
        task.result().close()

    opening.cancel()
    opening.add_done_callback(close)


async def iter_list(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def api_error_response(api: ApiError) -> Response:
    return Response(api.body(), api.status, api.headers, media_type="application/json")
