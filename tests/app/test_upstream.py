"""The provider client: rate-limit header parsing, backoff with full jitter, retries that honour
Retry-After, the circuit breaker, fallbacks, the per-model concurrency cap and timeouts."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from app.config import UpstreamConfig, load_config
from app.metrics import Metrics
from app.providers import build_providers
from app.secrets import SecretStore
from app.upstream import CircuitBreaker, UpstreamClient, parse_duration, retry_hint
from tests.app.gateway_harness import make_config, running


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5), ("0s", 0.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s1"])
def test_parse_duration_rejects_garbage(text):
    assert parse_duration(text) is None


def test_retry_hint_sources():
    assert retry_hint({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)
    assert retry_hint({"retry-after": "3"}) == 3.0
    date = "Wed, 21 Oct 2015 07:28:05 GMT"
    assert retry_hint({"retry-after": date}, now=1445412480.0) == pytest.approx(5.0)
    exhausted_tokens = {
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1.5s",
    }
    assert retry_hint(exhausted_tokens) == pytest.approx(1.5)
    assert retry_hint({"x-ratelimit-reset-requests": "20ms"}) == pytest.approx(0.02)
    assert retry_hint({}) is None


def _client(rng) -> UpstreamClient:
    config = load_config(env={})
    upstream = UpstreamConfig(retry={"max_attempts": 5, "base_s": 0.5, "cap_s": 4})
    providers = build_providers(config, SecretStore({}), "http://127.0.0.1:9")
    return UpstreamClient(providers, upstream, config.models, Metrics(), rng=rng)


def test_backoff_is_full_jitter_capped_and_honours_hints():
    top = _client(lambda: 1.0)
    assert [top.backoff(a, None) for a in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    bottom = _client(lambda: 0.0)
    assert bottom.backoff(3, None) == 0.0
    assert top.backoff(0, 1.25) == 1.25  # the provider's hint wins over jitter
    assert top.backoff(0, 30.0) is None  # longer than cap_s: hand the wait to the client


def test_breaker_state_machine():
    now = [0.0]
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker("m", 2, 10.0, lambda m, s: changes.append((m, s)), lambda: now[0])
    breaker.before_call()
    breaker.failure()
    breaker.before_call()
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(Exception, match="m"):
        breaker.before_call()
    now[0] = 11.0
    breaker.before_call()  # the probe
    assert breaker.state == "half_open"
    with pytest.raises(Exception, match="m"):
        breaker.before_call()  # only one probe at a time
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 22.0
    breaker.before_call()
    breaker.success()
    assert breaker.state == "closed"
    assert [s for _, s in changes] == ["open", "half_open", "open", "half_open", "closed"]


def fault(kind: str, times: int, retry_after_ms: int | None = None) -> dict[str, str]:
    headers = {
        "x-simulator-fault": kind,
        "x-simulator-fail-times": str(times),
        "x-simulator-request-key": uuid.uuid4().hex,
    }
    if retry_after_ms is not None:
        headers["x-simulator-retry-after-ms"] = str(retry_after_ms)
    return headers


async def test_retry_honours_retry_after_of_a_429(simulator):
    async with running(make_config(simulator.url)) as gw:
        started = time.perf_counter()
        response = await gw.chat(headers=fault("429", 1, retry_after_ms=400))
        elapsed = time.perf_counter() - started
        metrics = (await gw.client.get("/metrics")).text
    assert response.status_code == 200
    assert elapsed >= 0.4
    assert (
        'liftoff_upstream_retries_total{model="gpt-4o-mini-2024-07-18",reason="429"} 1.0' in metrics
    )
    # The provider's wait is not the gateway's overhead.
    assert float(response.headers["x-liftoff-overhead-ms"]) < 100


async def test_retry_after_longer_than_cap_is_passed_to_the_client(simulator):
    simulator.app.reset()
    config = make_config(simulator.url, upstream={"retry": {"cap_s": 1}})
    async with running(config) as gw:
        response = await gw.chat(headers=fault("429", 5, retry_after_ms=5000))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert simulator.app.stats.by_route["POST /v1/chat/completions"] == 1


@pytest.mark.parametrize("kind", ["500", "502", "503", "504"])
async def test_server_errors_are_retried_with_backoff(simulator, kind):
    async with running(make_config(simulator.url)) as gw:
        response = await gw.chat(headers=fault(kind, 2))
        metrics = (await gw.client.get("/metrics")).text
    assert response.status_code == 200
    assert f'reason="{kind}"}} 2.0' in metrics


async def test_attempts_are_bounded(simulator):
    simulator.app.reset()
    config = make_config(simulator.url, upstream={"retry": {"max_attempts": 3}})
    async with running(config) as gw:
        response = await gw.chat(headers=fault("503", 10))
    assert response.status_code == 502
    assert simulator.app.stats.by_route["POST /v1/chat/completions"] == 3


async def test_read_timeout_is_retried(simulator):
    config = make_config(simulator.url, upstream={"timeout_read_s": 0.3})
    async with running(config) as gw:
        response = await gw.chat(headers=fault("timeout", 1))
        always = await gw.chat(headers=fault("timeout", 10))
    assert response.status_code == 200
    assert always.status_code == 504
    assert always.json()["error"]["code"] == "upstream_timeout"


async def test_the_deadline_caps_the_retries_of_a_hung_provider(simulator):
    simulator.app.reset()
    # Five attempts of 0.5 s each would hold the client 2.5 s; the deadline ends it at 1.2 s.
    upstream = {"timeout_read_s": 0.5, "retry": {"max_attempts": 5}, "deadline_s": 1.2}
    async with running(make_config(simulator.url, upstream=upstream)) as gw:
        started = time.perf_counter()
        response = await gw.chat(headers=fault("timeout", 10))
        elapsed = time.perf_counter() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert 1.1 < elapsed < 2.0
    assert 2 <= simulator.app.stats.by_route["POST /v1/chat/completions"] <= 3


async def test_the_deadline_cuts_the_wait_for_a_slot(simulator):
    upstream = {"max_concurrency_per_model": 1, "queue_timeout_s": 5, "deadline_s": 0.8}
    # A stream that has begun is not cut: it holds the only slot for about 2 s.
    slow = {"x-simulator-ttft-ms": "20", "x-simulator-token-ms": "120"}
    async with running(make_config(simulator.url, upstream=upstream)) as gw:
        holder = asyncio.create_task(gw.chat(headers=slow, stream=True, max_tokens=16))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        waiting = await gw.chat()
        elapsed = time.perf_counter() - started
        held = await holder
    assert held.status_code == 200 and held.text.rstrip().endswith("data: [DONE]")
    # Cut at its deadline, not after the slot's holder ends or the 5 s queue wait.
    assert waiting.status_code == 504 and 0.7 < elapsed < 1.5


async def test_the_deadline_does_not_cut_a_stream_that_has_begun(simulator):
    upstream = {"deadline_s": 0.3}
    slow = {"x-simulator-ttft-ms": "20", "x-simulator-token-ms": "60"}
    async with running(make_config(simulator.url, upstream=upstream)) as gw:
        started = time.perf_counter()
        response = await gw.chat(headers=slow, stream=True, max_tokens=16)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed > 0.3  # longer than the deadline, and complete
    assert response.text.rstrip().endswith("data: [DONE]")


async def test_breaker_opens_fails_fast_and_recovers(simulator):
    simulator.app.reset()
    config = make_config(
        simulator.url,
        upstream={
            "retry": {"max_attempts": 1},
            "breaker": {"failure_threshold": 2, "reset_after_s": 0.5},
        },
    )
    async with running(config) as gw:
        failures = [await gw.chat(headers={"x-simulator-fault": "500"}) for _ in range(2)]
        fast = await gw.chat()
        state_open = (await gw.client.get("/metrics")).text
        await asyncio.sleep(0.6)
        probe = await gw.chat()
        after = await gw.chat()
        state_closed = (await gw.client.get("/metrics")).text
    assert [r.status_code for r in failures] == [502, 502]
    assert fast.status_code == 503
    assert fast.json()["error"]["code"] == "upstream_unavailable"
    assert "retry-after" in fast.headers
    assert 'liftoff_circuit_state{model="gpt-4o-mini-2024-07-18"} 2.0' in state_open
    assert probe.status_code == 200 and after.status_code == 200
    assert 'liftoff_circuit_state{model="gpt-4o-mini-2024-07-18"} 0.0' in state_closed
    # The fail-fast answer never reached the provider.
    assert simulator.app.stats.by_route["POST /v1/chat/completions"] == 4


async def test_fallback_model_serves_when_the_primary_fails(simulator):
    config = make_config(simulator.url, upstream={"retry": {"max_attempts": 1}})
    async with running(config) as gw:
        response = await gw.chat(model="smart", headers=fault("503", 1))
        metrics = (await gw.client.get("/metrics")).text
    assert response.status_code == 200
    assert response.json()["model"] == "gpt-4o-mini-2024-07-18"
    assert "liftoff_upstream_fallbacks_total" in metrics


async def test_per_model_concurrency_cap(simulator):
    simulator.app.reset()
    config = make_config(simulator.url, upstream={"max_concurrency_per_model": 2})
    async with running(config) as gw:
        slow = {"x-simulator-ttft-ms": "100"}
        responses = await asyncio.gather(*(gw.chat(headers=slow) for _ in range(6)))
    assert {r.status_code for r in responses} == {200}
    assert simulator.app.stats.max_in_flight <= 2


async def test_provider_401_without_secret_arn_is_a_502_not_a_client_401(simulator):
    async with running(
        make_config(simulator.url), {"LIFTOFF_UPSTREAM_API_KEY": "sk-sim-revoked"}
    ) as gw:
        response = await gw.chat()
    assert response.status_code == 502
    assert "sk-sim-revoked" not in response.text


async def test_unreachable_provider(simulator):
    config = make_config("http://127.0.0.1:9", upstream={"retry": {"max_attempts": 2}})
    async with running(config) as gw:
        response = await gw.chat()
    assert response.status_code == 502
    assert "127.0.0.1" not in response.text


def _stream_over(chunks: list[bytes], end: bool = True):
    """A Stream reading `chunks` as the network would deliver them (one read each)."""
    from unittest import mock

    from aiohttp.streams import StreamReader

    from app.upstream import Stream

    protocol = mock.Mock(_reading_paused=False)
    reader = StreamReader(protocol, 1 << 16, loop=asyncio.get_running_loop())
    response = mock.Mock(content=reader)

    async def feed():
        for chunk in chunks:
            await asyncio.sleep(0)
            reader.feed_data(chunk)
            await asyncio.sleep(0.01)  # let the reader take this chunk alone
        if end:
            reader.feed_eof()

    feeding = asyncio.ensure_future(feed())
    return Stream("m", b"data: first", response, lambda: None), feeding


async def _collect(stream):
    out = []
    async for batch in stream.batches():
        out.append(batch)
    return out


async def test_stream_batches_hold_what_arrived_together_and_never_wait_for_more():
    stream, feeding = _stream_over(
        [b"data: a\n\ndata: b\n\n: keep-alive\n\ndata: c", b"\n\ndata: [DONE]\n\n"]
    )
    batches = await _collect(stream)
    await feeding
    assert batches == [
        [b"data: first"],
        [b"data: a", b"data: b"],  # sent together, without waiting for "c" to complete
        [b"data: c", b"data: [DONE]"],
    ]


async def test_stream_batches_interrupted_by_eof_or_an_oversized_event():
    from app.errors import StreamInterrupted
    from app.upstream import MAX_SSE_EVENT_BYTES

    cut, feeding = _stream_over([b"data: a\n\ndata: partial"])
    got = []
    with pytest.raises(StreamInterrupted):
        async for batch in cut.batches():
            got.append(batch)
    await feeding
    assert got == [[b"data: first"], [b"data: a"]]  # what arrived went out before the error

    huge, feeding = _stream_over([b"data: " + b"x" * (MAX_SSE_EVENT_BYTES + 1)], end=False)
    with pytest.raises(StreamInterrupted):
        await _collect(huge)
    await feeding
