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
request's server span and each of those to it (OpenTelemetry's way for batches). A passthrough
request (files, batches, vector stores, images, audio, stored responses) gets HTTP server and
client spans, no GenAI operation. Baggage is neither read nor passed on (a client's baggage is not
the provider's business). Prompts and completions are never recorded unless
``server.log_prompts`` is on. The spans: app/telemetry_spans.py; attribute names:
app/telemetry_attributes.py.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.util.re import parse_env_headers

from app.providers.base import Provider
from app.telemetry_attributes import DURATION_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS
from app.telemetry_env import flag, signal_endpoint
from app.telemetry_spans import BatchTrace, RequestTrace, RouteTrace

if TYPE_CHECKING:
    from app.context import Ctx
    from app.endpoints.base import GenerationEndpoint

log = logging.getLogger("liftoff.telemetry")

DEFAULT_SERVICE_NAME = "liftoff-gateway"
SCOPE = "liftoff.gateway"
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

    def start_route(self, method: str, route: str, path: str, ctx: Ctx) -> RouteTrace:
        """A passthrough request's trace (HTTP spans, no GenAI operation): `route` is the
        template `path` matched (`/v1/files/{rest:path}`)."""
        route_trace = RouteTrace(self, method, route, path, ctx)
        ctx.stats.trace = route_trace
        return route_trace

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
