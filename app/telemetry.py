"""OpenTelemetry traces and metrics by the GenAI semantic conventions; off unless OTEL_* says so.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or a signal's own ``..._TRACES_ENDPOINT`` /
``..._METRICS_ENDPOINT``) is set and ``OTEL_SDK_DISABLED`` is not ``true``: the OpenTelemetry SDK
exports over OTLP/HTTP (protobuf) from its own threads (BatchSpanProcessor,
PeriodicExportingMetricReader), so a request only builds spans and records measurements.
Off, the gateway holds no tracer and builds no span: each hook is one ``is not None`` check.

Per generation request (app/pipeline.py): one SERVER span, continuing the client's W3C
``traceparent``/``tracestate``, and one CLIENT span per provider attempt (app/upstream.py), whose
context goes to the provider in ``traceparent``/``tracestate``. A provider call shared by several
requests (app/batching.py, app/embedding_batching.py) starts a trace of its own, linked to each
request's server span and each of those to it (OpenTelemetry's way for batches). Baggage is
neither read nor passed on (a client's baggage is not the provider's business). Prompts and
completions are never recorded unless ``server.log_prompts`` is on. Attribute names:
app/telemetry_attributes.py.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.re import parse_env_headers

from app.accounting import TokenUsage
from app.errors import GatewayError, UpstreamError
from app.providers.base import Provider
from app.telemetry_attributes import (
    DURATION_BUCKETS,
    OPENAI_API_TYPES,
    OPERATIONS,
    PROVIDER_NAMES,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
    input_messages,
    output_messages,
    request_attributes,
    response_attributes,
    usage_attributes,
)
from app.telemetry_env import flag, signal_endpoint
from app.upstream import CallStats, RawReply, Reply, Stream

if TYPE_CHECKING:
    from app.context import Ctx
    from app.endpoints.base import GenerationEndpoint
    from app.schemas import ParsedRequest

log = logging.getLogger("liftoff.telemetry")

DEFAULT_SERVICE_NAME = "liftoff-gateway"
SCOPE = "liftoff.gateway"
_W3C = TraceContextTextMapPropagator()  # traceparent + tracestate, nothing else
_SAMPLERS: dict[str, Callable[[float], sampling.Sampler]] = {
    "always_on": lambda _: sampling.ALWAYS_ON,
    "always_off": lambda _: sampling.ALWAYS_OFF,
    "parentbased_always_on": lambda _: sampling.DEFAULT_ON,
    "parentbased_always_off": lambda _: sampling.DEFAULT_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio,
}


# --- configuration from the environment --------------------------------------------------------


def _headers(env: Mapping[str, str], signal: str) -> dict[str, str]:
    headers = dict(parse_env_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), liberal=True))
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS", "")
    headers.update(parse_env_headers(own, liberal=True))
    return headers


def resource_from_env(env: Mapping[str, str]) -> Resource:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,...``, percent-encoded), with ``OTEL_SERVICE_NAME``
    over its service.name, and "liftoff-gateway" when neither names the service."""
    attributes: dict[str, str] = {}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    name = env.get("OTEL_SERVICE_NAME", "").strip()
    attributes["service.name"] = name or attributes.get("service.name") or DEFAULT_SERVICE_NAME
    return Resource.create(attributes)


def sampler_from_env(env: Mapping[str, str]) -> sampling.Sampler:
    """``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, as the SDK spells them."""
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        log.warning("OTEL_TRACES_SAMPLER=%s is not known: using parentbased_always_on", name)
        name = "parentbased_always_on"
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    return _SAMPLERS[name](ratio)


def _millis(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        return default


def telemetry_from_env(
    env: Mapping[str, str],
    provider_for: Callable[[str], Provider],
    log_prompts: bool,
) -> Telemetry | None:
    """The gateway's telemetry, or None (off: the default) when nothing asks for an export.

    The variables are read from ``env`` (the gateway's environment); the SDK reads the rest of
    its own (``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*_TIMEOUT``/``_COMPRESSION``/``_CERTIFICATE``)
    from the process environment.
    """
    if flag(env, "OTEL_SDK_DISABLED"):
        return None
    traces_url = signal_endpoint(env, "traces")
    metrics_url = signal_endpoint(env, "metrics")
    if traces_url is None and metrics_url is None:
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip()
    if protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: the gateway exports http/protobuf", protocol)
    resource = resource_from_env(env)
    tracer_provider = None
    if traces_url is not None:
        tracer_provider = TracerProvider(sampler=sampler_from_env(env), resource=resource)
        exporter = OTLPSpanExporter(endpoint=traces_url, headers=_headers(env, "traces"))
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = None
    if metrics_url is not None:
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=metrics_url, headers=_headers(env, "metrics")),
            export_interval_millis=_millis(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000),
            export_timeout_millis=_millis(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000),
        )
        meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    log.info("OpenTelemetry export on: traces to %s, metrics to %s", traces_url, metrics_url)
    return Telemetry(tracer_provider, meter_provider, provider_for, log_prompts)


# --- the gateway's telemetry --------------------------------------------------------------------


class _Histogram:
    """A histogram that records nothing (its signal is not exported)."""

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        pass


def _now_ns(perf: float) -> int:
    """A perf_counter() reading as a wall-clock timestamp (what span times are)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


class Telemetry:
    """The tracer and the GenAI instruments; one per gateway (its own providers, not global)."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        provider_for: Callable[[str], Provider],
        log_prompts: bool,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(SCOPE)
        self.provider_for = provider_for
        self.log_prompts = log_prompts
        if meter_provider is None:
            self.token_usage = self.client_duration = self.server_duration = self.ttft = (
                _Histogram()
            )
            return
        meter = meter_provider.get_meter(SCOPE)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.client_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            "s",
            "GenAI operation duration (one provider attempt).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.server_duration = meter.create_histogram(
            "gen_ai.server.request.duration",
            "s",
            "Generative AI server request duration such as time-to-last byte or last output token.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            "s",
            "Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
        )

    def start(self, endpoint: GenerationEndpoint, ctx: Ctx) -> RequestTrace:
        """The request's trace (its server span, started when the request arrived)."""
        request_trace = RequestTrace(self, endpoint, ctx)
        ctx.stats.trace = request_trace
        return request_trace

    def batch(self, members: Sequence[RequestTrace]) -> BatchTrace:
        """The trace of one provider call made for all of `members` (requests of one kind)."""
        return BatchTrace(self, members)

    def force_flush(self) -> None:
        """Export what is buffered now (blocking: call it off the event loop)."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: call it off the event loop)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


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


def _failed(attempt: _Attempt, exc: BaseException) -> None:
    """Mark a failed attempt's span and metric with the failure (error.type, the status)."""
    error_type, status = _failure(exc)
    attempt.attributes["error.type"] = error_type
    span = attempt.span
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
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "http.request.method": "POST",
            "http.route": endpoint.path,
            "url.path": endpoint.path,
            "liftoff.request_id": ctx.request_id,
        }
        if endpoint.name in OPENAI_API_TYPES:
            attributes["openai.api.type"] = OPENAI_API_TYPES[endpoint.name]
        host = ctx.h.get("host")
        if host:
            address, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
            attributes["server.address"] = address
            if port.isdigit():
                attributes["server.port"] = int(port)
        if ctx.h.get("user-agent"):
            attributes["user_agent.original"] = ctx.h["user-agent"]
        self.span = telemetry.tracer.start_span(
            self.operation,
            context=_W3C.extract(ctx.h),  # the client's trace, when it sent one
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=_now_ns(ctx.started),
        )
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
                _failed(current, exc)
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
                _failed(current, exc)
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
