"""OpenTelemetry export (app/telemetry.py): what a loopback OTLP/HTTP collector receives.

The collector is a plain HTTP server started by the test that decodes the protobuf payloads with
the `opentelemetry.proto` classes; the gateway's providers are force-flushed, never waited for.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from app.providers import KeyCredential, OpenAIProvider
from app.telemetry import resource_from_env, sampler_from_env, telemetry_from_env
from app.telemetry_attributes import DURATION_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS
from tests.app.gateway_harness import ROOT, auth, make_config, running

MODEL = "gpt-4o-mini-2024-07-18"  # what the test catalog's alias "fast" resolves to
PROMPT = "Say hello"  # Running.chat's prompt


def value_of(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


@dataclass
class ExportedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start: int
    end: int
    error: bool
    attributes: dict[str, Any]
    events: list[str]
    resource: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id) of each linked span


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: POST /v1/traces and /v1/metrics (protobuf)."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    collector.traces.append(ExportTraceServiceRequest.FromString(body))
                    answer = ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    collector.metrics.append(ExportMetricsServiceRequest.FromString(body))
                    answer = ExportMetricsServiceResponse()
                else:
                    self.send_error(404)
                    return
                data = answer.SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[ExportedSpan]:
        out = []
        for export in self.traces:
            for resource_spans in export.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        out.append(
                            ExportedSpan(
                                span.name,
                                span.kind,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.start_time_unix_nano,
                                span.end_time_unix_nano,
                                span.status.code == Status.STATUS_CODE_ERROR,
                                attributes_of(span.attributes),
                                [event.name for event in span.events],
                                resource,
                                [(ln.trace_id.hex(), ln.span_id.hex()) for ln in span.links],
                            )
                        )
        return sorted(out, key=lambda s: s.start)

    def histogram(self, name: str) -> tuple[str, list[tuple[dict[str, Any], Any]]]:
        """The last export of histogram `name`: (unit, [(attributes, data point)])."""
        found: tuple[str, list[tuple[dict[str, Any], Any]]] | None = None
        for export in self.metrics:
            for resource_metrics in export.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == name:
                            points = metric.histogram.data_points
                            found = (
                                metric.unit,
                                [(attributes_of(p.attributes), p) for p in points],
                            )
        assert found is not None, f"{name} was not exported"
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    try:
        yield receiver
    finally:
        receiver.close()


def otel(collector: Collector, **extra: str) -> dict[str, str]:
    # Metrics go out on force_flush (and at shutdown), not on a timer, during a test.
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        **extra,
    }


async def flush(gw: Any) -> None:
    await asyncio.to_thread(gw.gateway.telemetry.force_flush)


def of_kind(spans: list[ExportedSpan], kind: int) -> list[ExportedSpan]:
    return [s for s in spans if s.kind == kind]


def provider_requests(simulator: Any, request_key: str | None = None) -> list[dict[str, Any]]:
    requests = simulator.app.recent_requests("/v1/chat/completions")
    if request_key is None:
        return requests
    return [r for r in requests if r["headers"].get("x-simulator-request-key") == request_key]


async def _no_refresh() -> bool:
    return False


def parent_in(traceparent: str) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of a W3C traceparent header."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


# --- off by default, on by the standard variables ---------------------------------------------


async def test_off_by_default_no_tracer_and_nothing_sent_to_the_provider(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        assert gw.gateway.telemetry is None
        assert gw.gateway.pipeline.telemetry is None
        assert (await gw.chat()).status_code == 200
    assert "traceparent" not in provider_requests(simulator)[-1]["headers"]


OFF_AND_ON = """
import asyncio, sys
from tests.app.gateway_harness import make_config, running

async def main(env):
    async with running(make_config(sys.argv[1]), env) as gw:
        assert (await gw.chat()).status_code == 200
    return sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace",
                                                           "opentelemetry.exporter")))

off = asyncio.run(main({}))
on = asyncio.run(main({"OTEL_EXPORTER_OTLP_ENDPOINT": sys.argv[2]}))
print(len(off), len(on))
"""


def test_off_the_sdk_is_not_even_imported(simulator, collector):
    # Off is the default: no worker pays the SDK's start-up and memory for nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", OFF_AND_ON, simulator.url, collector.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    off, on = map(int, result.stdout.split())
    assert off == 0 and on > 0


def test_the_standard_variables_turn_it_on_and_otel_sdk_disabled_off(collector):
    def provider_for(model: str) -> OpenAIProvider:
        return OpenAIProvider("default", "http://127.0.0.1:9", KeyCredential(str, _no_refresh))

    assert telemetry_from_env({}, provider_for, False) is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
    assert telemetry_from_env({**on, "OTEL_SDK_DISABLED": "TRUE"}, provider_for, False) is None
    # Every exporter "none": nothing to export, so nothing is built.
    none = {**on, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    assert telemetry_from_env(none, provider_for, False) is None
    traces_only = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.url}/v1/traces"}
    telemetry = telemetry_from_env(traces_only, provider_for, False)
    assert telemetry is not None
    assert telemetry.tracer_provider is not None and telemetry.meter_provider is None
    telemetry.shutdown()
    telemetry = telemetry_from_env(on, provider_for, False)
    assert telemetry is not None and telemetry.meter_provider is not None
    telemetry.shutdown()


def test_resource_and_sampler_follow_the_otel_variables():
    assert resource_from_env({}).attributes["service.name"] == "liftoff-gateway"
    listed = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=edge,deployment.environment.name=a%2Cb"}
    resource = resource_from_env(listed).attributes
    assert resource["service.name"] == "edge"
    assert resource["deployment.environment.name"] == "a,b"
    named = resource_from_env({**listed, "OTEL_SERVICE_NAME": "gw"}).attributes
    assert named["service.name"] == "gw"
    ratio = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert "0.25" in ratio.get_description()
    assert sampler_from_env({}).get_description().startswith("ParentBased{root:AlwaysOnSampler")
    assert sampler_from_env({"OTEL_TRACES_SAMPLER": "always_off"}).get_description() == (
        "AlwaysOffSampler"
    )


# --- traces and metrics --------------------------------------------------------------------------


async def test_chat_exports_a_server_span_a_client_span_and_the_genai_metrics(simulator, collector):
    simulator.app.reset()
    env = otel(collector, OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test")
    async with running(make_config(simulator.url), env) as gw:
        response = await gw.chat(temperature=0.5, max_tokens=20, headers={"user-agent": "t/1"})
        assert response.status_code == 200
        await flush(gw)
    answer = response.json()
    spans = collector.spans()
    (server,) = of_kind(spans, Span.SPAN_KIND_SERVER)
    (client,) = of_kind(spans, Span.SPAN_KIND_CLIENT)
    assert server.name == f"chat {MODEL}" and client.name == f"chat {MODEL}"
    assert server.resource["service.name"] == "liftoff-gateway"
    assert server.resource["deployment.environment.name"] == "test"
    usage = answer["usage"]
    expected = {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "server.address": "gateway",
        "user_agent.original": "t/1",
        "gen_ai.operation.name": "chat",
        "openai.api.type": "chat_completions",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "liftoff.requested_model": "fast",
        "gen_ai.request.max_tokens": 20,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": False,
        "gen_ai.response.id": answer["id"],
        "gen_ai.response.model": answer["model"],
        "gen_ai.response.finish_reasons": [c["finish_reason"] for c in answer["choices"]],
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "liftoff.cache": "bypass",  # temperature 0.5: not cached by default
        "liftoff.key": "alice",  # the key's name
        "liftoff.request_id": response.headers["x-request-id"],
    }
    assert {k: server.attributes.get(k) for k in expected} == expected
    assert server.attributes["liftoff.cost_usd"] > 0
    assert not server.error and server.parent_span_id == ""
    # The client span: the provider attempt, a child of the server span, with the answer's usage.
    assert (client.trace_id, client.parent_span_id) == (server.trace_id, server.span_id)
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == int(simulator.url.rsplit(":", 1)[1].split("/")[0])
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert "http.request.resend_count" not in client.attributes
    assert server.start <= client.start and client.end <= server.end
    # The provider got the client span's context.
    (sent,) = provider_requests(simulator)
    assert parent_in(sent["headers"]["traceparent"]) == (client.trace_id, client.span_id, True)
    # Never a prompt or a completion, nor a secret.
    content = answer["choices"][0]["message"]["content"]
    values = repr([s.attributes for s in spans])
    assert PROMPT not in values and content not in values and "alice-key" not in values
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output.m")) for k in server.attributes)

    unit, points = collector.histogram("gen_ai.client.token.usage")
    assert unit == "{token}"
    by_type = {attrs["gen_ai.token.type"]: (attrs, point) for attrs, point in points}
    assert by_type["input"][1].sum == usage["prompt_tokens"]
    assert by_type["output"][1].sum == usage["completion_tokens"]
    attrs, point = by_type["input"]
    assert list(point.explicit_bounds) == list(TOKEN_BUCKETS)
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == MODEL and attrs["gen_ai.response.model"] == MODEL
    for name in ("gen_ai.client.operation.duration", "gen_ai.server.request.duration"):
        unit, points = collector.histogram(name)
        ((attrs, point),) = points
        assert unit == "s" and point.count == 1
        assert list(point.explicit_bounds) == list(DURATION_BUCKETS)
        assert attrs["gen_ai.request.model"] == MODEL and "error.type" not in attrs


async def test_stream_records_usage_on_its_spans_and_time_to_first_token(simulator, collector):
    simulator.app.reset()
    async with running(make_config(simulator.url), otel(collector)) as gw:
        response = await gw.client.post(
            "/v1/chat/completions",
            json={
                "model": "fast",
                "messages": [{"role": "user", "content": "Tell me a story"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers=auth(),
        )
        assert response.status_code == 200
        await flush(gw)
    usage = next(
        chunk["usage"]
        for chunk in (
            orjson.loads(line[6:]) for line in response.text.split("\n\n") if line[6:7] == "{"
        )
        if chunk.get("usage")
    )
    spans = collector.spans()
    (server,) = of_kind(spans, Span.SPAN_KIND_SERVER)
    (client,) = of_kind(spans, Span.SPAN_KIND_CLIENT)
    for span in (server, client):
        assert span.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert span.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert server.attributes["gen_ai.request.stream"] is True
    assert server.attributes["liftoff.stream"] == "complete"
    assert "gen_ai.first_token" in server.events
    # The provider attempt lasts as long as the provider's stream.
    assert client.end > client.start and client.parent_span_id == server.span_id
    unit, points = collector.histogram("gen_ai.server.time_to_first_token")
    ((attrs, point),) = points
    assert unit == "s" and point.count == 1 and 0 < point.sum < 5
    assert list(point.explicit_bounds) == list(TTFT_BUCKETS)
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
    }


async def test_a_retry_is_two_client_spans_under_one_server_span(simulator, collector):
    simulator.app.reset()
    key = uuid.uuid4().hex
    faults = {
        "x-simulator-fault": "503",
        "x-simulator-fail-times": "1",
        "x-simulator-request-key": key,
    }
    async with running(make_config(simulator.url), otel(collector)) as gw:
        response = await gw.chat(headers=faults)
        assert response.status_code == 200
        await flush(gw)
    spans = collector.spans()
    (server,) = of_kind(spans, Span.SPAN_KIND_SERVER)
    first, second = of_kind(spans, Span.SPAN_KIND_CLIENT)
    assert {first.parent_span_id, second.parent_span_id} == {server.span_id}
    assert first.error and first.attributes["error.type"] == "503"
    assert first.attributes["http.response.status_code"] == 503
    assert "http.request.resend_count" not in first.attributes
    assert not second.error and second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert first.end <= second.start
    assert "gen_ai.usage.output_tokens" in second.attributes
    assert "gen_ai.usage.output_tokens" not in first.attributes
    # Each attempt went out with its own span as the parent.
    sent = [parent_in(r["headers"]["traceparent"]) for r in provider_requests(simulator, key)]
    assert sent == [(s.trace_id, s.span_id, True) for s in (first, second)]
    _, points = collector.histogram("gen_ai.client.operation.duration")
    errors = {attrs.get("error.type"): point.count for attrs, point in points}
    assert errors == {"503": 1, None: 1}
    assert not server.error and server.attributes["http.response.status_code"] == 200


async def test_a_cache_hit_has_no_client_span_and_costs_nothing(simulator, collector):
    simulator.app.reset()
    async with running(make_config(simulator.url), otel(collector)) as gw:
        miss = await gw.chat(temperature=0)
        hit = await gw.chat(temperature=0)
        assert hit.headers["x-liftoff-cache"] == "hit"
        await flush(gw)
    spans = collector.spans()
    first, second = of_kind(spans, Span.SPAN_KIND_SERVER)
    assert first.attributes["liftoff.cache"] == "miss" and first.attributes["liftoff.cost_usd"] > 0
    assert second.attributes["liftoff.cache"] == "hit"
    assert second.attributes["liftoff.cost_usd"] == 0
    assert second.attributes["gen_ai.response.id"] == hit.json()["id"] != miss.json()["id"]
    assert second.attributes["gen_ai.usage.output_tokens"] > 0
    clients = of_kind(spans, Span.SPAN_KIND_CLIENT)
    assert [c.trace_id for c in clients] == [first.trace_id]
    assert len(provider_requests(simulator)) == 1
    # The hit bought no tokens from the provider: the client metric counts the miss only.
    _, points = collector.histogram("gen_ai.client.token.usage")
    assert {attrs["gen_ai.token.type"]: p.count for attrs, p in points} == {"input": 1, "output": 1}


async def test_the_clients_traceparent_is_continued_and_passed_to_the_provider(
    simulator, collector
):
    simulator.app.reset()
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    given = {"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=abc"}
    env = otel(collector, OTEL_SERVICE_NAME="edge-gateway")
    async with running(make_config(simulator.url), env) as gw:
        assert (await gw.chat(headers=given)).status_code == 200
        await flush(gw)
    spans = collector.spans()
    (server,) = of_kind(spans, Span.SPAN_KIND_SERVER)
    (client,) = of_kind(spans, Span.SPAN_KIND_CLIENT)
    assert (server.trace_id, server.parent_span_id) == (trace_id, parent)
    assert server.resource["service.name"] == "edge-gateway"
    assert client.trace_id == trace_id
    (sent,) = provider_requests(simulator)
    assert parent_in(sent["headers"]["traceparent"]) == (trace_id, client.span_id, True)
    assert sent["headers"]["tracestate"] == "vendor=abc"


async def test_an_unsampled_client_trace_is_not_recorded_but_still_propagated(simulator, collector):
    simulator.app.reset()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    given = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"}  # the client did not sample
    async with running(make_config(simulator.url), otel(collector)) as gw:
        assert (await gw.chat(headers=given)).status_code == 200
        await flush(gw)
    assert collector.spans() == []
    (sent,) = provider_requests(simulator)
    sent_trace, _, sampled = parent_in(sent["headers"]["traceparent"])
    assert sent_trace == trace_id and not sampled
    # Metrics do not depend on sampling.
    _, points = collector.histogram("gen_ai.server.request.duration")
    assert points[0][1].count == 1


async def test_prompts_and_completions_are_exported_only_with_log_prompts(simulator, collector):
    simulator.app.reset()
    config = make_config(simulator.url, server={"log_prompts": True})
    async with running(config, otel(collector)) as gw:
        response = await gw.chat(temperature=0.5)
        await flush(gw)
    content = response.json()["choices"][0]["message"]["content"]
    (server,) = of_kind(collector.spans(), Span.SPAN_KIND_SERVER)
    assert orjson.loads(server.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": PROMPT}]}
    ]
    assert orjson.loads(server.attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": content}],
            "finish_reason": "stop",
        }
    ]


async def test_a_failed_request_ends_its_span_with_the_error(simulator, collector):
    simulator.app.reset()
    # Every attempt fails: the gateway answers 503 after its retries.
    faults = {"x-simulator-fault": "503"}
    async with running(make_config(simulator.url), otel(collector)) as gw:
        response = await gw.chat(headers=faults)
        assert response.status_code >= 500
        await flush(gw)
    spans = collector.spans()
    (server,) = of_kind(spans, Span.SPAN_KIND_SERVER)
    clients = of_kind(spans, Span.SPAN_KIND_CLIENT)
    assert len(clients) == gw.gateway.config.upstream.retry.max_attempts
    assert all(c.error and c.attributes["error.type"] == "503" for c in clients)
    assert server.error and server.attributes["error.type"] == str(response.status_code)
    assert server.attributes["http.response.status_code"] == response.status_code
    _, points = collector.histogram("gen_ai.server.request.duration")
    assert [attrs.get("error.type") for attrs, _ in points] == [str(response.status_code)]


async def test_each_endpoint_kind_names_its_genai_operation(simulator, collector):
    simulator.app.reset()
    calls = [
        ("/v1/completions", {"model": "fast", "prompt": "Once", "max_tokens": 8}),
        ("/v1/responses", {"model": "fast", "input": "Hi", "max_output_tokens": 16}),
        (
            "/v1/responses",
            {"model": "fast", "input": "Hi", "max_output_tokens": 16, "stream": True},
        ),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
    ]
    async with running(make_config(simulator.url), otel(collector)) as gw:
        for path, body in calls:
            assert (await gw.client.post(path, json=body, headers=auth())).status_code == 200
        await flush(gw)
    servers = of_kind(collector.spans(), Span.SPAN_KIND_SERVER)
    named = [
        (s.attributes["http.route"], s.name, s.attributes.get("openai.api.type")) for s in servers
    ]
    assert named == [
        ("/v1/completions", f"text_completion {MODEL}", None),
        ("/v1/responses", f"chat {MODEL}", "responses"),
        ("/v1/responses", f"chat {MODEL}", "responses"),
        ("/v1/embeddings", "embeddings text-embedding-3-small", None),
    ]
    completion, response, streamed, _ = servers
    assert completion.attributes["gen_ai.usage.output_tokens"] > 0
    assert response.attributes["gen_ai.response.finish_reasons"] in (["stop"], ["length"])
    assert response.attributes["gen_ai.request.max_tokens"] == 16
    assert streamed.attributes["gen_ai.usage.output_tokens"] > 0
    assert streamed.attributes["liftoff.stream"] == "complete"


async def test_a_batched_call_is_linked_to_every_request_it_served(simulator, collector):
    simulator.app.reset()
    config = make_config(simulator.url, batching={"enabled": True, "window_ms": 100})
    body = {"model": "fast", "max_tokens": 8, "temperature": 0.7}
    async with running(config, otel(collector)) as gw:
        answers = await asyncio.gather(
            *(
                gw.client.post(
                    "/v1/completions", json={**body, "prompt": f"Tell {i}"}, headers=auth()
                )
                for i in range(3)
            )
        )
        assert [a.status_code for a in answers] == [200, 200, 200]
        # A lone request's call is its own attempt, a child of its server span, as unbatched.
        alone = await gw.client.post(
            "/v1/completions", json={**body, "prompt": "Alone"}, headers=auth()
        )
        assert alone.status_code == 200
        await flush(gw)
    sent = simulator.app.recent_requests("/v1/completions")
    assert [len(r["body"]["prompt"]) for r in sent] == [3, 1]
    spans = collector.spans()
    servers = of_kind(spans, Span.SPAN_KIND_SERVER)
    batch, own = of_kind(spans, Span.SPAN_KIND_CLIENT)
    members, lone = servers[:3], servers[3]
    # The shared call: a trace of its own, linked to the three requests, and they to it.
    assert batch.parent_span_id == "" and batch.trace_id not in {m.trace_id for m in members}
    assert batch.attributes["liftoff.batch.size"] == 3
    assert sorted(batch.links) == sorted((m.trace_id, m.span_id) for m in members)
    assert all(m.links == [(batch.trace_id, batch.span_id)] for m in members)
    assert parent_in(sent[0]["headers"]["traceparent"])[:2] == (batch.trace_id, batch.span_id)
    assert (own.trace_id, own.parent_span_id) == (lone.trace_id, lone.span_id)
    assert own.attributes.get("liftoff.batch.size") is None
    # The shared call's tokens are counted once, by the call.
    total = sum(a.json()["usage"]["completion_tokens"] for a in answers)
    _, points = collector.histogram("gen_ai.client.token.usage")
    outputs = sum(p.sum for attrs, p in points if attrs["gen_ai.token.type"] == "output")
    assert outputs == total + alone.json()["usage"]["completion_tokens"]


async def test_passthrough_requests_get_http_spans_and_no_genai_operation(simulator, collector):
    simulator.app.reset()
    async with running(make_config(simulator.url), otel(collector)) as gw:
        listed = await gw.client.get("/v1/files?limit=5", headers=auth())
        assert listed.status_code == 200
        # Refused by the gateway (an id no key made): a server span, no provider call.
        missing = await gw.client.get("/v1/batches/batch_unknown", headers=auth())
        assert missing.status_code == 404
        await flush(gw)
    spans = collector.spans()
    files, batch = of_kind(spans, Span.SPAN_KIND_SERVER)
    (attempt,) = of_kind(spans, Span.SPAN_KIND_CLIENT)
    assert files.name == "GET /v1/files" and batch.name == "GET /v1/batches/{rest:path}"
    assert {k: files.attributes.get(k) for k in ("http.route", "url.path")} == {
        "http.route": "/v1/files",
        "url.path": "/v1/files",
    }
    assert files.attributes["http.response.status_code"] == 200
    assert batch.attributes["http.response.status_code"] == 404
    assert batch.attributes["url.path"] == "/v1/batches/batch_unknown"
    assert files.attributes["liftoff.key"] == "alice"
    assert not any(k.startswith("gen_ai.") for s in spans for k in s.attributes)
    # The provider attempt: a child of the request's span, whose context the provider got.
    assert attempt.name == "GET" and attempt.parent_span_id == files.span_id
    assert attempt.attributes["http.response.status_code"] == 200
    assert files.start <= attempt.start and attempt.end <= files.end
    (sent,) = simulator.app.recent_requests("/v1/files")
    assert parent_in(sent["headers"]["traceparent"])[:2] == (attempt.trace_id, attempt.span_id)
    # Passthrough calls are no GenAI operation: no GenAI metric for them (a chat request
    # exports gen_ai.server.request.duration, see above).
    exported = {
        metric.name
        for export in collector.metrics
        for resource_metrics in export.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    }
    assert not {name for name in exported if name.startswith("gen_ai.")}
