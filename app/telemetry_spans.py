"""The spans of the gateway's requests and of their provider calls (app/telemetry.py turns
export on and holds the instruments).

- `RequestTrace`: a generation request (app/pipeline.py): its SERVER span, continuing the
  client's W3C context, by the GenAI conventions, and a CLIENT span per provider attempt;
- `BatchTrace`: one provider call made for several batched requests: client spans of a trace of
  their own, linked to each request's server span;
- `RouteTrace`: a passthrough request (files, batches, vector stores, images, audio ...): HTTP
  server and client spans only, no GenAI operation.

Each attempt's context goes to the provider in `traceparent`/`tracestate` (`CallStats`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.accounting import TokenUsage
from app.errors import GatewayError, UpstreamError
from app.providers.base import Provider
from app.telemetry_attributes import (
    OPENAI_API_TYPES,
    OPERATIONS,
    PROVIDER_NAMES,
    input_messages,
    output_messages,
    request_attributes,
    response_attributes,
    usage_attributes,
)
from app.upstream import CallStats, RawReply, Reply, Stream

if TYPE_CHECKING:
    from app.context import Ctx
    from app.endpoints.base import GenerationEndpoint
    from app.schemas import ParsedRequest
    from app.telemetry import Telemetry

_W3C = TraceContextTextMapPropagator()  # traceparent + tracestate, nothing else


def _now_ns(perf: float) -> int:
    """A perf_counter() reading as a wall-clock timestamp (what span times are)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


def _server_attributes(provider: Provider) -> dict[str, Any]:
    url = provider.url
    if not url.host:
        return {}
    if url.port is None:
        return {"server.address": url.host}
    return {"server.address": url.host, "server.port": url.port}


def _trace_headers(span: trace.Span) -> dict[str, str]:
    """The W3C headers naming `span` as the parent (what TraceContextTextMapPropagator writes,
    without building a context per attempt); none for an invalid span (traces off)."""
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    headers = {
        "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-"
        f"{context.trace_flags:02x}"
    }
    if context.trace_state:
        headers["tracestate"] = context.trace_state.to_header()
    return headers


def _failure(exc: BaseException) -> tuple[str, int | None]:
    """(error.type, the provider's HTTP status if it answered) of a failed attempt."""
    # A retryable failure (app/upstream.py's _Retry) carries the error it stands for.
    error = exc.error if isinstance(getattr(exc, "error", None), GatewayError) else exc
    if isinstance(error, UpstreamError):
        return str(error.status), error.status
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and error is not exc:  # timeout, connect, connection, stream_cut
        return reason, None
    return type(error).__qualname__, None


def _http_server_attributes(ctx: Ctx, method: str, route: str, path: str) -> dict[str, Any]:
    """A server span's HTTP attributes (`route` is the path's template: low cardinality)."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "http.route": route,
        "url.path": path,
        "liftoff.request_id": ctx.request_id,
    }
    host = ctx.h.get("host")
    if host:
        address, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        attributes["server.address"] = address
        if port.isdigit():
            attributes["server.port"] = int(port)
    if ctx.h.get("user-agent"):
        attributes["user_agent.original"] = ctx.h["user-agent"]
    return attributes


def _server_span(telemetry: Telemetry, name: str, attributes: dict[str, Any], ctx: Ctx) -> Any:
    """The request's server span, started when it arrived, in the client's trace if it sent one."""
    return telemetry.tracer.start_span(
        name,
        context=_W3C.extract(ctx.h),
        kind=SpanKind.SERVER,
        attributes=attributes,
        start_time=_now_ns(ctx.started),
    )


def _attempt_attributes(
    operation: str, provider: Provider, model: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the attempt metric's attributes, its span's): the span's add server.* and the method
    (the metric has fewer series, cheaper records)."""
    metric = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER_NAMES.get(provider.kind, provider.kind),
        "gen_ai.request.model": model,
    }
    return metric, {**metric, **_server_attributes(provider), "http.request.method": "POST"}


def _resent(attributes: dict[str, Any], sent: int) -> dict[str, Any]:
    return attributes if not sent else {**attributes, "http.request.resend_count": sent}


def _failed(span: trace.Span, metric: dict[str, Any], exc: BaseException) -> None:
    """Mark a failed attempt's span and its metric's attributes with the failure (error.type,
    the status)."""
    error_type, status = _failure(exc)
    metric["error.type"] = error_type
    if span.is_recording():
        failed: dict[str, Any] = {"error.type": error_type}
        if status is not None:
            failed["http.response.status_code"] = status
        span.set_attributes(failed)
        span.set_status(Status(StatusCode.ERROR))


class _Attempt:
    """One provider attempt's client span, and what its metric needs when it ends."""

    __slots__ = ("attributes", "span", "started")

    def __init__(self, span: trace.Span, started: int, attributes: dict[str, Any]) -> None:
        self.span = span
        self.started = started
        self.attributes = attributes


class RequestTrace:
    """One generation request's spans: the server span and its attempts' client spans."""

    __slots__ = (
        "answered_by",
        "attempt_end",
        "context",
        "ctx",
        "open_attempt",
        "operation",
        "reasons",
        "span",
        "telemetry",
    )

    def __init__(self, telemetry: Telemetry, endpoint: GenerationEndpoint, ctx: Ctx) -> None:
        self.telemetry = telemetry
        self.ctx = ctx
        self.operation = OPERATIONS.get(endpoint.name, endpoint.name)
        attributes = _http_server_attributes(ctx, "POST", endpoint.path, endpoint.path)
        attributes["gen_ai.operation.name"] = self.operation
        if endpoint.name in OPENAI_API_TYPES:
            attributes["openai.api.type"] = OPENAI_API_TYPES[endpoint.name]
        self.span = _server_span(telemetry, self.operation, attributes, ctx)
        self.context = trace.set_span_in_context(self.span)
        self.answered_by: Provider | None = None  # the provider of the last attempt
        self.open_attempt: _Attempt | None = None  # a successful attempt, ended with the answer
        self.attempt_end: int | None = None  # when that attempt's answer was in (JSON)
        self.reasons: list[str] = []  # gen_ai.response.finish_reasons, for the opt-in content

    # --- hooks of the pipeline -----------------------------------------------------------

    def request(self, parsed: ParsedRequest) -> None:
        """The validated request's gen_ai.request.* attributes."""
        if self.span.is_recording():
            self.span.set_attributes(request_attributes(parsed))

    def answered(
        self, response: Mapping[str, Any] | None, usage: TokenUsage, model: str, cost: float
    ) -> None:
        """The answer (None: a stream whose answer was not assembled), its usage and cost;
        `cost` is 0 for an answer the provider did not make for this request (a cache hit)."""
        attributes: dict[str, Any] = usage_attributes(usage)
        attributes["gen_ai.response.model"] = model
        if response is not None:
            attributes.update(response_attributes(response))
            self.reasons = attributes.get("gen_ai.response.finish_reasons", [])
        attributes["liftoff.cost_usd"] = cost
        if self.span.is_recording():
            self.span.set_attributes(attributes)
        attempt = self.open_attempt
        if attempt is None:
            return
        del attributes["liftoff.cost_usd"]
        if attempt.span.is_recording():
            attempt.span.set_attributes(attributes)
        attempt.attributes["gen_ai.response.model"] = model
        metric = {**attempt.attributes, "gen_ai.token.type": "input"}
        self.telemetry.token_usage.record(usage.prompt, metric)
        metric["gen_ai.token.type"] = "output"
        self.telemetry.token_usage.record(usage.completion, metric)
        if self.attempt_end is not None:  # a JSON answer: the attempt ended when it came in
            self._end_attempt(attempt, self.attempt_end)

    def first_token(self) -> None:
        """The first bytes of a live stream went to the client."""
        elapsed = time.perf_counter() - self.ctx.started
        self.telemetry.ttft.record(elapsed, self._server_metric_attributes())
        if self.span.is_recording():
            self.span.add_event(
                "gen_ai.first_token", {"gen_ai.server.time_to_first_token": elapsed}
            )

    def end(self, ctx: Ctx, status: int, extra: Mapping[str, Any] | None) -> None:
        """The response is complete (streams: at their end): close every span, record."""
        if self.open_attempt is not None:
            self._end_attempt(self.open_attempt, self.attempt_end)
        span = self.span
        metric = self._server_metric_attributes()
        if status >= 500:
            metric["error.type"] = str(status)
        self.telemetry.server_duration.record(time.perf_counter() - ctx.started, metric)
        if not span.is_recording():
            span.end()
            return
        attributes: dict[str, Any] = {
            "http.response.status_code": status,
            "gen_ai.provider.name": metric["gen_ai.provider.name"],
            "liftoff.overhead_ms": round(ctx.overhead_ms(), 3),
        }
        if ctx.model != "-":
            span.update_name(f"{self.operation} {ctx.model}")
            attributes["gen_ai.request.model"] = ctx.model
        if ctx.key != "-":
            attributes["liftoff.key"] = ctx.key  # the key's name, never the key
        if ctx.cache is not None:
            attributes["liftoff.cache"] = ctx.cache
        if extra and isinstance(extra.get("stream"), str):
            attributes["liftoff.stream"] = extra["stream"]
        if status >= 500:
            attributes["error.type"] = str(status)
            span.set_status(Status(StatusCode.ERROR))
        if self.telemetry.log_prompts:
            self._content(attributes, ctx.log)
        span.set_attributes(attributes)
        span.end()

    # --- the provider attempts (app/upstream.py) -----------------------------------------

    def attempts(
        self,
        once: Callable[[], Awaitable[Any]],
        provider: Provider,
        model: str,
        stats: CallStats,
    ) -> Callable[[], Awaitable[Any]]:
        """`once` (one attempt of a call to `model` at `provider`), each run in a client span
        whose context goes to the provider in the outgoing traceparent/tracestate (`stats`)."""
        telemetry = self.telemetry
        name = f"{self.operation} {model}"
        metric, base = _attempt_attributes(self.operation, provider, model)
        sent = 0

        async def attempt() -> Any:
            nonlocal sent
            started = time.time_ns()
            span = telemetry.tracer.start_span(
                name, self.context, SpanKind.CLIENT, _resent(base, sent), start_time=started
            )
            sent += 1
            stats.trace_headers = _trace_headers(span)  # read before the attempt's first await
            current = _Attempt(span, started, metric.copy())
            try:
                result = await once()
            except BaseException as exc:
                _failed(span, current.attributes, exc)
                self._end_attempt(current, None)
                raise
            self.answered_by = provider
            if self.open_attempt is not None:  # an earlier call's (moderation) answer
                self._end_attempt(self.open_attempt, self.attempt_end)
            span.set_attribute("http.response.status_code", getattr(result, "status", 200))
            # The answer's usage comes later (answered()); a stream's attempt lasts as long as
            # the stream, so it ends with the request.
            self.open_attempt = current
            streamed = isinstance(result, Stream | RawReply)
            self.attempt_end = None if streamed else time.time_ns()
            return result

        return attempt

    def _end_attempt(self, attempt: _Attempt, end: int | None) -> None:
        if self.open_attempt is attempt:
            self.open_attempt = None
        end = time.time_ns() if end is None else end
        attempt.span.end(end_time=end)
        self.telemetry.client_duration.record((end - attempt.started) / 1e9, attempt.attributes)

    # --- helpers -------------------------------------------------------------------------

    def _server_metric_attributes(self) -> dict[str, Any]:
        ctx = self.ctx
        provider = self.answered_by or self.telemetry.provider_for(ctx.model)
        attributes = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": PROVIDER_NAMES.get(provider.kind, provider.kind),
        }
        if ctx.model != "-":
            attributes["gen_ai.request.model"] = ctx.model
        return attributes

    def _content(self, attributes: dict[str, Any], logged: Mapping[str, Any]) -> None:
        """The opt-in gen_ai.input/output.messages: what the access log records as the prompt
        and completion (server.log_prompts on)."""
        if "prompt" in logged:
            messages, instructions = input_messages(logged["prompt"])
            attributes["gen_ai.input.messages"] = messages
            if instructions is not None:
                attributes["gen_ai.system_instructions"] = instructions
        if "completion" in logged:
            attributes["gen_ai.output.messages"] = output_messages(
                logged["completion"], self.reasons
            )


class BatchTrace:
    """One provider call made for several requests (a batch): its attempts' client spans are
    the roots of a trace of their own, linked to each request's server span, and each of those
    gets a link back; the call's token usage is recorded here, the requests' own spans carry
    their shares."""

    __slots__ = ("members", "operation", "telemetry")

    def __init__(self, telemetry: Telemetry, members: Sequence[RequestTrace]) -> None:
        self.telemetry = telemetry
        self.members = members
        self.operation = members[0].operation

    def attempts(
        self,
        once: Callable[[], Awaitable[Any]],
        provider: Provider,
        model: str,
        stats: CallStats,
    ) -> Callable[[], Awaitable[Any]]:
        """As RequestTrace.attempts, for a JSON call; each attempt ends when its answer is in."""
        telemetry = self.telemetry
        name = f"{self.operation} {model}"
        metric, base = _attempt_attributes(self.operation, provider, model)
        base["liftoff.batch.size"] = len(self.members)
        links = [trace.Link(member.span.get_span_context()) for member in self.members]
        sent = 0

        async def attempt() -> Any:
            nonlocal sent
            started = time.time_ns()
            span = telemetry.tracer.start_span(
                name, _ROOT, SpanKind.CLIENT, _resent(base, sent), links, started
            )
            sent += 1
            stats.trace_headers = _trace_headers(span)
            current = _Attempt(span, started, metric.copy())
            if sent == 1 and span.is_recording():
                for member in self.members:
                    if member.span.is_recording():
                        member.span.add_link(span.get_span_context())
            try:
                result = await once()
            except BaseException as exc:
                _failed(span, current.attributes, exc)
                self._end(current)
                raise
            span.set_attribute("http.response.status_code", result.status)
            self._end(current, result)
            return result

        return attempt

    def _end(self, attempt: _Attempt, reply: Reply | None = None) -> None:
        end = time.time_ns()
        if reply is not None:
            usage = reply.json().get("usage") or {}
            metric = {**attempt.attributes, "gen_ai.response.model": reply.model}
            for kind, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
                if isinstance(usage.get(field), int):
                    metric["gen_ai.token.type"] = kind
                    self.telemetry.token_usage.record(usage[field], metric)
        attempt.span.end(end_time=end)
        self.telemetry.client_duration.record((end - attempt.started) / 1e9, attempt.attributes)


_ROOT = Context()  # no parent: a batch call belongs to no one request's trace


class RouteTrace:
    """A passthrough request's spans (app/endpoints/passthrough.py): a SERVER span named
    `METHOD route`, and a CLIENT span per provider attempt named `METHOD`, by the HTTP
    conventions; the attempt that answered lasts as long as its streamed answer. No GenAI
    operation, so no GenAI metric."""

    __slots__ = ("attempt", "context", "method", "span", "telemetry")

    def __init__(self, telemetry: Telemetry, method: str, route: str, path: str, ctx: Ctx) -> None:
        self.telemetry = telemetry
        self.method = method
        attributes = _http_server_attributes(ctx, method, route, path)
        self.span = _server_span(telemetry, f"{method} {route}", attributes, ctx)
        self.context = trace.set_span_in_context(self.span)
        self.attempt: trace.Span | None = None  # the answering attempt, ended with the request

    def attempts(
        self,
        once: Callable[[], Awaitable[Any]],
        provider: Provider,
        label: str,
        stats: CallStats,
    ) -> Callable[[], Awaitable[Any]]:
        tracer = self.telemetry.tracer
        base = {**_server_attributes(provider), "http.request.method": self.method}
        sent = 0

        async def attempt() -> Any:
            nonlocal sent
            span = tracer.start_span(
                self.method, self.context, SpanKind.CLIENT, _resent(base, sent)
            )
            sent += 1
            stats.trace_headers = _trace_headers(span)
            try:
                result = await once()
            except BaseException as exc:
                _failed(span, {}, exc)
                span.end()
                raise
            span.set_attribute("http.response.status_code", result.status)
            self.attempt = span
            return result

        return attempt

    def end(self, ctx: Ctx, status: int, extra: Mapping[str, Any] | None) -> None:
        """The answer is relayed (or failed): close the spans."""
        if self.attempt is not None:
            self.attempt.end()
        span = self.span
        if span.is_recording():
            attributes: dict[str, Any] = {"http.response.status_code": status}
            if ctx.key != "-":
                attributes["liftoff.key"] = ctx.key  # the key's name, never the key
            if status >= 500:
                attributes["error.type"] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attributes)
        span.end()
