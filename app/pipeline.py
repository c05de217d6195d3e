"""The shared request pipeline of every generation endpoint kind (app/endpoints/).

Per request, in order:
  auth (hash lookup) -> body size/type -> JSON -> validation -> token count (off the loop when
  large) -> max_tokens default/clamp/context check -> [limits+budget admit  ||  cache lookup]
  (issued together: one Redis write, one round trip; a non-cacheable stream of a key with room
  to spare is opened at the provider meanwhile) -> moderation (optional) ->
  upstream (single flight for cacheable requests; the endpoint kind may batch) ->
  response; settle, cache write (together: one Redis write), usage and metrics run after the
  response, off its path.

The pipeline knows no endpoint by name: what differs between kinds is asked of the kind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app import cache as cache_mod
from app.accounting import TokenUsage
from app.context import Ctx
from app.endpoints.base import GenerationEndpoint
from app.errors import (
    ContentFlagged,
    NotReady,
    RateLimited,
    RequestTooLarge,
    StateUnavailable,
    StreamInterrupted,
    UpstreamError,
    to_api_error,
)
from app.limits import Admission
from app.redis_backend import BackendUnavailable
from app.response_types import RelayResponse, iter_list, json_response
from app.schemas import ParsedRequest
from app.streaming import StreamRelay
from app.upstream import Stream

if TYPE_CHECKING:
    from app.gateway import Gateway

log = logging.getLogger("liftoff.gateway")
# End-user ids, forwarded hashed per client key (the provider sees no tenant's raw ids).
END_USER_FIELDS = ("user", "safety_identifier")


class Pipeline:
    """Built by the gateway once its parts are started; holds them for the hot path."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.metrics = gateway.metrics
        self.counter = gateway.counter
        self.prices = gateway.prices
        self.upstream = gateway.upstream
        self.cache = gateway.cache
        self.flights = gateway.flights
        self.limits = gateway.limits
        self.batcher = gateway.batcher
        self.view = gateway.limit_view
        self.finisher = gateway.finisher
        self.after = gateway.after
        self.telemetry = gateway.telemetry  # None: tracing off
        self._forward = frozenset(self.config.upstream.forward_headers)
        self._forward_prefix = "x-simulator-" if self.config.uses_simulator else None

    # --- steps --------------------------------------------------------------------------------

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

    async def count_prompt(
        self, endpoint: GenerationEndpoint, parsed: ParsedRequest, body_bytes: int
    ) -> tuple[int, int]:
        # Tokenizing a large input takes milliseconds: do it in a thread, not on the loop.
        if body_bytes > self.config.server.token_count_offload_chars:
            return await asyncio.to_thread(endpoint.count, self.counter, parsed)
        return endpoint.count(self.counter, parsed)

    def cache_mode(self, ctx: Ctx, deterministic: bool) -> str:
        """'use' (look up and store) or 'bypass'; by default only a repeatable answer is cached."""
        if not self.config.cache.enabled:
            return "bypass"
        directive = ctx.h.get("x-liftoff-cache", "").lower()
        if directive == "bypass" or "no-cache" in ctx.h.get("cache-control", "").lower():
            return "bypass"
        if directive == "force":
            return "use"
        return "use" if deterministic else "bypass"

    async def lookup(
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

    async def generate(self, endpoint: GenerationEndpoint, request: Request, ctx: Ctx) -> Response:
        gateway = self.gateway
        trace = None if self.telemetry is None else self.telemetry.start(endpoint, ctx)
        if not gateway.ready:
            raise NotReady()
        key = gateway.authenticate(ctx)
        body, size = await gateway.read_json(request, ctx)
        models = self.config.models
        parsed = endpoint.validate(body, models)
        ctx.model = parsed.model
        if endpoint.stores_objects:
            await endpoint.check_objects(self, parsed, key)
        if trace is not None:
            trace.request(parsed)
        if self.config.server.log_prompts:
            ctx.log["prompt"] = endpoint.prompt_for_log(parsed)
        prompt_tokens, total_prompt = await self.count_prompt(endpoint, parsed, size)
        endpoint.limit_tokens(parsed, prompt_tokens, models.max_tokens_policy)
        body["model"] = parsed.model
        for name in END_USER_FIELDS:
            if isinstance(body.get(name), str):
                digest = hashlib.sha256(f"{key.name}\x00{body[name]}".encode()).hexdigest()
                body[name] = "u-" + digest[:32]

        canonical = endpoint.canonical(body, parsed.model)
        if canonical is None:
            mode = "bypass"
        else:
            mode = self.cache_mode(ctx, cache_mod.is_deterministic(canonical))
        output_tokens = parsed.worst_case_output_tokens
        tpm = self.view.tokens_at_once(key.name)
        if tpm is not None and total_prompt + output_tokens > tpm[1]:
            raise RequestTooLarge(tpm[0], tpm[1], total_prompt + output_tokens)
        worst = self.prices.worst_case(parsed.model, total_prompt, output_tokens)
        budgets = self.config.budgets
        admit = self.limits.admit(
            gateway.policies[key.name],
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
            lookup = asyncio.ensure_future(self.lookup(canonical, key.name, not parsed.stream))
        elif (
            parsed.stream
            and not self.config.upstream.moderation.enabled
            and self.view.likely_admitted(key.name, total_prompt + output_tokens, worst)
        ):
            # A stream the cache cannot answer, for a key this process last saw with room to
            # spare: open the provider stream while the limiter decides, so time to first token
            # is not the sum of both. Nothing goes to the client before the verdict, and a
            # refusal cancels the call and releases its connection and concurrency slot.
            early = asyncio.ensure_future(self.open_stream(endpoint, parsed, body, ctx))
        try:
            admission = await admit
        except BaseException as exc:
            if early is not None:
                abandon_stream(early)
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
        if not admission.allowed:
            if early is not None:
                abandon_stream(early)
            self.flights.abandon(cache_key, found)
        if admission.budget_remaining_usd is not None:
            ctx.headers["x-liftoff-budget-remaining"] = f"{admission.budget_remaining_usd:.6f}"
        self.take_admission(admission, key.name, ctx)
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
            return self.serve_cached(endpoint, parsed, found.value, reservation, ctx)
        ctx.cache = "miss" if mode == "use" else "bypass"
        if not endpoint.caches_items:
            self.metrics.child(self.metrics.cache, ctx.cache).inc()
        try:
            moderation = self.config.upstream.moderation
            if moderation.enabled and endpoint.moderated:
                text = endpoint.moderation_text(parsed)
                if await self.upstream.moderate(moderation.model, text, ctx.stats):
                    self.metrics.moderation_flagged.inc()
                    raise ContentFlagged()
            if parsed.stream:
                opening = early
                early = None  # stream() owns it from here
                return await self.stream(
                    endpoint, parsed, body, reservation, cache_key, ctx, opening
                )
            return await endpoint.respond(self, parsed, body, reservation, cache_key, ctx, found)
        except BaseException:
            self.flights.abandon(cache_key, found)
            if early is not None:
                abandon_stream(early)
            if reservation is not None:
                self.after(self.limits.release(reservation))
            raise

    async def open_stream(
        self, endpoint: GenerationEndpoint, parsed: ParsedRequest, body: dict[str, Any], ctx: Ctx
    ) -> Stream:
        return await self.upstream.open_stream(
            endpoint.path,
            endpoint.stream_body(body),
            parsed.model,
            ctx.stats,
            self.forward_headers(ctx),
            endpoint.stream_end,
        )

    def serve_cached(
        self,
        endpoint: GenerationEndpoint,
        parsed: ParsedRequest,
        cached: bytes,
        reservation: Any,
        ctx: Ctx,
    ) -> Response:
        response, origin = endpoint.as_hit(cached)  # a fresh id: a hit is its own response
        ctx.headers.update(origin)
        usage = endpoint.usage(response)
        saved = self.prices.cost_of(parsed.model, usage)
        if reservation is not None:
            self.settle(reservation, usage, 0.0, saved)
        self.metrics.child(self.metrics.cache_saved_tokens, parsed.model).inc(
            usage.prompt + usage.completion
        )
        self.metrics.child(self.metrics.cache_saved_usd, parsed.model).inc(saved)
        ctx.headers["x-liftoff-cache"] = "hit"
        if ctx.stats.trace is not None:
            ctx.stats.trace.answered(response, usage, parsed.model, 0.0)
        self.log_completion(endpoint, ctx, response)
        if parsed.stream:
            events = endpoint.replay(response, parsed)
            # A replayed cache hit: nothing else will log it.
            return self.sse_response(iter_list(events), ctx, replayed=True)
        return json_response(response)

    async def complete(
        self,
        endpoint: GenerationEndpoint,
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
            return await endpoint.call(self, parsed, body, ctx)

        if cache_key is not None:
            started = time.perf_counter()
            data, served_by = await self.flights.run(cache_key, found, call)
            if not leader:
                ctx.waited_s += time.perf_counter() - started
        else:
            data, served_by = await call()
        shared = not leader and cache_key is not None  # answered by another request's call
        try:
            response, origin = endpoint.as_hit(data) if shared else (orjson.loads(data), {})
        except orjson.JSONDecodeError:
            raise UpstreamError(502, detail="the provider's 200 answer is not JSON") from None
        usage = endpoint.usage(response)
        if not shared:
            cost = self.prices.cost_of(served_by, usage)
            if reservation is not None:
                self.settle(reservation, usage, cost)
            self.metrics.count_usage(ctx.key, served_by, usage, cost)
            if cache_key is not None:
                self.flights.store(cache_key)  # with the settlement: one Redis write
        else:
            # A follower of single flight: the answer was bought once, by the leader.
            ctx.cache = "hit"
            ctx.headers.update(origin)
            data = orjson.dumps(response)
            saved = self.prices.cost_of(parsed.model, usage)
            if reservation is not None:
                self.settle(reservation, usage, 0.0, saved)
            self.metrics.child(self.metrics.cache_saved_usd, parsed.model).inc(saved)
        ctx.headers["x-liftoff-cache"] = ctx.cache or "bypass"
        if ctx.stats.trace is not None:
            ctx.stats.trace.answered(response, usage, served_by, 0.0 if shared else cost)
        self.log_completion(endpoint, ctx, response)
        return Response(data, 200, media_type="application/json")

    def log_completion(
        self, endpoint: GenerationEndpoint, ctx: Ctx, response: dict[str, Any]
    ) -> None:
        if self.config.server.log_prompts:
            ctx.log["completion"] = endpoint.completion_for_log(response)

    def take_admission(self, admission: Admission, key_name: str, ctx: Ctx) -> None:
        """The limiter's verdict on a request (any route): its x-ratelimit-* headers for the
        answer, remembered for this key's answers the limiter never sees; RateLimited when it
        refuses."""
        ctx.admitted = True
        ctx.headers.update(admission.headers)
        self.view.remember(key_name, admission.headers, admission.budget_remaining_usd)
        if not admission.allowed:
            self.metrics.child(self.metrics.rate_limited, admission.reason).inc()
            log.info("rate limited", extra={"key": key_name, "reason": admission.reason})
            raise RateLimited(admission.reason, admission.retry_after_s, admission.headers)

    def settle(
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

    async def stream(
        self,
        endpoint: GenerationEndpoint,
        parsed: ParsedRequest,
        body: dict[str, Any],
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        opening: asyncio.Task[Stream] | None = None,
    ) -> Response:
        if opening is None:
            stream = await self.open_stream(endpoint, parsed, body, ctx)
        else:
            try:
                stream = await opening
            except asyncio.CancelledError:
                abandon_stream(opening)  # this request was cancelled: the opening goes too
                raise
        # The relay assembles the answer for the cache, and for the log when prompts are logged.
        assemble = cache_key is not None or self.config.server.log_prompts
        relay = endpoint.relay(parsed, assemble)
        if endpoint.stores_objects:
            endpoint.track_objects(self, parsed, relay, ctx)
        ctx.headers["x-liftoff-cache"] = ctx.cache or "bypass"
        pipeline = self
        state = {"outcome": "client_gone", "closed": False}

        def close() -> None:
            # Runs once: from the generator's finally, or from the response when the client left
            # before the generator ever started (then its finally never runs).
            if state["closed"]:
                return
            state["closed"] = True
            stream.close()
            pipeline.after_stream(
                endpoint, parsed, stream.model, relay, reservation, cache_key, ctx, state["outcome"]
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
                        pipeline.metrics.child(pipeline.metrics.ttft, parsed.model).observe(
                            time.perf_counter() - ctx.started
                        )
                        if ctx.stats.trace is not None:
                            ctx.stats.trace.first_token()
                    yield out
                if relay.upstream_error is not None:
                    outcome = "upstream_error"
            except StreamInterrupted:
                outcome = "interrupted"
                pipeline.metrics.child(pipeline.metrics.stream_interruptions, parsed.model).inc()
                log.warning("upstream stream interrupted", extra={"model": parsed.model})
                yield endpoint.error_event(to_api_error(StreamInterrupted()), relay)
            except BaseException:
                outcome = "client_gone"
                raise
            finally:
                state["outcome"] = outcome
                close()

        response = self.sse_response(events(), ctx)
        response.on_close = close
        return response

    def after_stream(
        self,
        endpoint: GenerationEndpoint,
        parsed: ParsedRequest,
        served_by: str,
        relay: StreamRelay,
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        outcome: str,
    ) -> None:
        usage = endpoint.stream_usage(relay)
        if usage is None:
            if parsed.spec.reasoning:
                # No usage (the stream broke) from a model whose hidden reasoning tokens never
                # show in the stream: charge the cap, all of which it may have spent.
                usage = TokenUsage(parsed.prompt_tokens, parsed.worst_case_output_tokens)
            else:
                # No usage (the stream broke): charge what we know was produced.
                usage = TokenUsage(parsed.prompt_tokens, relay.chunks)
        cost = self.prices.cost_of(served_by, usage)
        if reservation is not None:
            self.settle(reservation, usage, cost)
        self.metrics.count_usage(ctx.key, served_by, usage, cost)
        answer = relay.assembled() if outcome == "complete" else None
        if ctx.stats.trace is not None:
            ctx.stats.trace.answered(answer, usage, served_by, cost)
        if answer is not None:
            if cache_key is not None:
                self.after(self.cache.set(cache_key, orjson.dumps(answer)))
            self.log_completion(endpoint, ctx, answer)
        status = 200 if outcome == "complete" else 499 if outcome == "client_gone" else 502
        self.finisher.record(ctx, status, "POST", {"stream": outcome})

    def sse_response(
        self, body: AsyncIterator[bytes], ctx: Ctx, replayed: bool = False
    ) -> RelayResponse:
        ctx.fixed_overhead_ms = ctx.overhead_ms()
        headers = {
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "x-liftoff-overhead-ms": f"{ctx.fixed_overhead_ms:.3f}",
        }
        response = RelayResponse(body, 200, headers, media_type="text/event-stream")
        if replayed:
            self.finisher.record(ctx, 200, "POST", {"stream": "replay"})
        return response


def abandon_stream(opening: asyncio.Task[Stream]) -> None:
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
