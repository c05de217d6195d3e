"""/v1/responses through the gateway: the official openai SDK (create, stream, retrieve, delete,
input items, cancel, input tokens) against the simulator, validation, what is cached and what
never is, cache hits as JSON and as a replayed event stream, a stream cut by the provider,
limits and budgets reserved then settled, moderation, usage and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.endpoints.responses_replay import replay
from app.endpoints.responses_stream import ResponsesRelay, ends_stream
from app.server import create_app
from tests.app.gateway_harness import (
    ADMIN,
    ALICE,
    BOB,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)

CAROL = "carol-key-0123456789abcdef"  # 2 requests a minute
DETERMINISTIC: dict[str, Any] = {"temperature": 0, "store": False}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@contextlib.contextmanager
def gateway(upstream_url: str, redis_url: str | None = None, **sections: Any) -> Iterator[str]:
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF_CLIENT_KEYS": client_keys_json(carol={"key": CAROL, "rpm": 2}),
    }
    with served(create_app(make_config(upstream_url, redis_url, **sections), env)) as url:
        yield url


@pytest.fixture(scope="module")
def gateway_url(simulator) -> Iterator[str]:
    with gateway(simulator.url) as url:
        yield url


@pytest.fixture
def redis_gateway_url(simulator, redis_url) -> Iterator[str]:
    with gateway(simulator.url, redis_url) as url:
        yield url


def sdk(url: str, key: str = ALICE, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url, api_key=key, max_retries=0, timeout=30, default_headers=headers or None
    )


def sent_bodies(simulator, path: str = "/v1/responses") -> list[dict[str, Any]]:
    return [r["body"] for r in simulator.app.recent_requests(path)]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a Responses stream."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def without_parsed(value: Any) -> Any:
    """`value` without the `parsed` fields the SDK adds to what it parses."""
    if isinstance(value, dict):
        return {k: without_parsed(v) for k, v in value.items() if k != "parsed"}
    if isinstance(value, list):
        return [without_parsed(v) for v in value]
    return value


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the series `name` whose labels include `labels`, in a /metrics text."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return found.value
    raise AssertionError(f"no {name} {labels}")


def usage_of(url: str, key: str = ALICE) -> dict[str, Any]:
    base = url.removesuffix("/v1")
    return httpx.get(f"{base}/v1/usage", headers=auth(key)).json()["usage"]


def settled(url: str, requests: int, key: str = ALICE) -> dict[str, Any]:
    """The key's usage once `requests` requests are settled (settling runs after the answer)."""
    for _ in range(200):
        usage = usage_of(url, key)
        if usage.get("requests", 0) >= requests and not usage.get("reserved_usd"):
            return usage
        time.sleep(0.01)
    raise AssertionError(f"not settled: {usage}")


# --- create, stream and the stored-response routes ------------------------------------------


def test_create_forwards_the_body_with_the_model_resolved_and_the_cap(gateway_url, simulator):
    response = sdk(gateway_url).responses.create(
        model="fast",
        input="Hello there",
        instructions="Be brief.",
        max_output_tokens=40,
        extra_body={"liftoff_unknown_field": {"kept": True}},
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.output_text
    assert 0 < response.usage.output_tokens <= 40 and response.usage.input_tokens > 0
    sent = sent_bodies(simulator)[-1]
    assert sent["model"] == "gpt-4o-mini-2024-07-18"
    assert sent["max_output_tokens"] == 40
    assert sent["liftoff_unknown_field"] == {"kept": True}
    assert sent["instructions"] == "Be brief." and sent["input"] == "Hello there"
    assert "stream_options" not in sent


def test_default_cap_is_the_models_and_a_larger_one_is_clamped(gateway_url, simulator):
    client = sdk(gateway_url)
    client.responses.create(model="fast", input="Default cap")
    assert sent_bodies(simulator)[-1]["max_output_tokens"] == 1024
    client.responses.create(model="smart", input="Huge cap", max_output_tokens=1_000_000)
    assert sent_bodies(simulator)[-1]["max_output_tokens"] == 16384


def test_user_and_safety_identifier_are_hashed_per_key(gateway_url, simulator):
    sdk(gateway_url).responses.create(
        model="fast", input="hi", user="user-42", safety_identifier="person@example.com"
    )
    sent = sent_bodies(simulator)[-1]
    for name, raw in (("user", "user-42"), ("safety_identifier", "person@example.com")):
        assert sent[name].startswith("u-") and raw not in sent[name]
    sdk(gateway_url, key=BOB).responses.create(
        model="fast", input="hi", safety_identifier="person@example.com"
    )
    assert sent_bodies(simulator)[-1]["safety_identifier"] != sent["safety_identifier"]


def test_stream_relays_every_event_and_the_sdk_builds_the_final_response(gateway_url):
    with sdk(gateway_url).responses.stream(
        model="fast", input="Tell me a story", max_output_tokens=200
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and final.output_text == text
    assert final.usage.output_tokens > 0


def test_stream_as_sent_by_the_provider_without_done(gateway_url):
    with httpx.stream(
        "POST",
        f"{gateway_url}/responses",
        json={"model": "fast", "input": "Raw events", "stream": True, "max_output_tokens": 20},
        headers=auth(),
    ) as response:
        body = response.read().decode()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in body
    events = sse_events(body)
    assert all(name == data["type"] for name, data in events)
    assert events[-1][0] in ("response.completed", "response.incomplete")


def test_retrieve_input_items_and_delete_a_stored_response(gateway_url):
    client = sdk(gateway_url)
    created = client.responses.create(model="fast", input="Remember this", max_output_tokens=20)
    again = client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    deleted = client.responses.delete(created.id)
    assert deleted is None  # the SDK returns nothing for a 200
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(created.id)
    assert "not found" in gone.value.message


def test_continuation_with_previous_response_id(gateway_url, simulator):
    client = sdk(gateway_url)
    first = client.responses.create(model="fast", input="First turn", max_output_tokens=20)
    second = client.responses.create(
        model="fast", input="Second turn", previous_response_id=first.id, max_output_tokens=20
    )
    assert second.previous_response_id == first.id
    # The provider counted the earlier turn too: more input than the request itself carries.
    assert second.usage.input_tokens > first.usage.input_tokens


def test_cancel_is_forwarded(gateway_url, simulator):
    client = sdk(gateway_url)
    synchronous = client.responses.create(model="fast", input="Done already", max_output_tokens=20)
    with pytest.raises(openai.BadRequestError, match="synchronous"):
        client.responses.cancel(synchronous.id)
    # A background response (made at the provider directly: the gateway does not relay them;
    # no key owns it, so only an admin key reaches it).
    queued = httpx.post(
        f"{simulator.url}/v1/responses",
        json={"model": "gpt-4o-mini", "input": "Slow", "background": True},
        headers={"authorization": f"Bearer {PROVIDER_KEY}", "x-simulator-ttft-ms": "5000"},
    ).json()
    cancelled = sdk(gateway_url, key=ADMIN).responses.cancel(queued["id"])
    assert cancelled.id == queued["id"] and cancelled.status == "cancelled"


def test_input_tokens_resolves_the_alias(gateway_url, simulator):
    counted = sdk(gateway_url).responses.input_tokens.count(model="fast", input="Count me")
    assert counted.input_tokens > 0
    assert sent_bodies(simulator, "/v1/responses/input_tokens")[-1]["model"] == (
        "gpt-4o-mini-2024-07-18"
    )
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk(gateway_url).responses.input_tokens.count(model="gpt-9", input="x")
    assert unknown.value.code == "model_not_found"


def test_stored_routes_check_the_key_and_apply_its_request_limit(gateway_url):
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway_url, key="wrong-key").responses.retrieve("resp_abc")
    carol = sdk(gateway_url, key=CAROL)
    with pytest.raises(openai.NotFoundError):  # the provider's own 404, admitted
        carol.responses.retrieve("resp_missing")
    with pytest.raises(openai.RateLimitError) as limited:  # 2 a minute: never a third at once
        for _ in range(2):
            with contextlib.suppress(openai.NotFoundError):
                carol.responses.retrieve("resp_missing")
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gateway_url).responses.retrieve("resp bad id")
    assert bad.value.param == "response_id"


# --- validation ------------------------------------------------------------------------------

BAD_BODIES = [
    ({"model": None}, "model", "missing_required"),
    ({"model": 5, "input": "hi"}, "model", "invalid_type"),
    ({"input": 5}, "input", "invalid_type"),
    ({"input": [1]}, "input[0]", "invalid_type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"type": "message", "role": "user"}]}, "input[0].content", "missing_required"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content", "invalid_type"),
    ({"input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]", "invalid_type"),
    ({"input": [{"type": 5}]}, "input[0].type", "invalid_type"),
    ({"instructions": ["x"]}, "instructions", "invalid_type"),
    ({"max_output_tokens": 10}, "max_output_tokens", "integer_below_min_value"),
    ({"max_output_tokens": "100"}, "max_output_tokens", "invalid_type"),
    ({"max_output_tokens": True}, "max_output_tokens", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"tools": ["web_search"]}, "tools[0]", "invalid_type"),
    ({"tools": [{"name": "f"}]}, "tools[0].type", "missing_required"),
    ({"previous_response_id": 5}, "previous_response_id", "invalid_type"),
    ({"store": "no"}, "store", "invalid_type"),
    ({"user": 5}, "user", "invalid_type"),
    ({"safety_identifier": 5}, "safety_identifier", "invalid_type"),
    ({"temperature": 3}, "temperature", "invalid_value"),
    ({"include": "reasoning.encrypted_content"}, "include", "invalid_type"),
    ({"background": True}, "background", "unsupported_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_BODIES)
async def test_validation_names_the_parameter(simulator, fields, param, code):
    body = {"model": "fast", "input": "hi", **fields}
    async with running(make_config(simulator.url)) as gw:
        before = len(sent_bodies(simulator))
        response = await gw.client.post("/v1/responses", json=body, headers=auth())
        after = len(sent_bodies(simulator))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert after == before  # refused before the provider


async def test_valid_shapes_pass_and_unknown_models_are_404(simulator):
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    async with running(make_config(simulator.url)) as gw:
        ok = await gw.client.post(
            "/v1/responses",
            json={"model": "fast", "input": items, "max_output_tokens": 16, "tools": []},
            headers=auth(),
        )
        missing = await gw.client.post(
            "/v1/responses", json={"model": "gpt-9", "input": "x"}, headers=auth()
        )
    assert ok.status_code == 200, ok.text
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_context_length_error_names_the_input(simulator):
    huge = "word " * 130_000  # more than the 128k-token context window
    async with running(make_config(simulator.url)) as gw:
        response = await gw.client.post(
            "/v1/responses", json={"model": "fast", "input": huge}, headers=auth()
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and error["code"] == "context_length_exceeded"
    assert "input" in error["message"]


# --- caching ---------------------------------------------------------------------------------


def cache_states(url: str, simulator, bodies: list[dict[str, Any]], **headers: str) -> list[str]:
    states = []
    for body in bodies:
        raw = sdk(url, **headers).responses.with_raw_response.create(
            model="fast", max_output_tokens=24, **body
        )
        states.append(raw.headers["x-liftoff-cache"])
    return states


def test_only_honest_replays_are_cached(redis_gateway_url, simulator):
    url = redis_gateway_url
    stored = sdk(url).responses.create(model="fast", input="Keep me", max_output_tokens=24)
    cases = {
        "store false, temperature 0": ({"input": "A", **DETERMINISTIC}, ["miss", "hit"]),
        "function tool": ({"input": "B", "tools": [WEATHER_TOOL], **DETERMINISTIC}, None),
        "not deterministic": ({"input": "C", "store": False}, ["bypass", "bypass"]),
        "stored (the default)": ({"input": "D", "temperature": 0}, ["bypass", "bypass"]),
        "previous_response_id": (
            {"input": "E", "previous_response_id": stored.id, **DETERMINISTIC},
            ["bypass", "bypass"],
        ),
        "web search": (
            {"input": "F", "tools": [{"type": "web_search"}], **DETERMINISTIC},
            ["bypass", "bypass"],
        ),
    }
    for name, (body, expected) in cases.items():
        got = cache_states(url, simulator, [body, body])
        assert got == (expected or ["miss", "hit"]), name
    # Forcing the cache does not make a stored response replayable.
    forced = {"input": "G", "temperature": 0}
    assert cache_states(url, simulator, [forced, forced], **{"x-liftoff-cache": "force"}) == [
        "bypass",
        "bypass",
    ]
    # ... while it does cache a non-deterministic one that is not stored.
    sampled = {"input": "H", "store": False}
    assert cache_states(url, simulator, [sampled, sampled], **{"x-liftoff-cache": "force"}) == [
        "miss",
        "hit",
    ]


def test_a_hit_is_its_own_response_as_json_and_replayed_as_a_stream(redis_gateway_url, simulator):
    client = sdk(redis_gateway_url)
    body = {"model": "fast", "input": "Cache me", "max_output_tokens": 200, **DETERMINISTIC}
    calls = len(sent_bodies(simulator))
    first = client.responses.with_raw_response.create(**body)
    original = first.parse()
    assert first.headers["x-liftoff-cache"] == "miss"
    hit = client.responses.with_raw_response.create(**body)
    assert hit.headers["x-liftoff-cache"] == "hit"
    assert hit.headers["x-liftoff-cache-origin-id"] == original.id
    again = hit.parse()
    assert again.id != original.id and again.id.startswith("resp_")
    assert again.output_text == original.output_text
    with client.responses.stream(**body) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert len(sent_bodies(simulator)) == calls + 1  # both hits answered without the provider
    assert final.output_text == original.output_text
    assert final.id not in (original.id, again.id)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == original.output_text
    assert final.usage.output_tokens == original.usage.output_tokens
    # The SDK's final response (a ParsedResponse: its text parts gain `parsed`) is the stored one.
    assert without_parsed({**final.to_dict(), "id": None}) == {**original.to_dict(), "id": None}


def test_a_streamed_function_call_is_cached_and_replayed(redis_gateway_url):
    client = sdk(redis_gateway_url)
    body = {
        "model": "fast",
        "input": "Weather in Paris?",
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        **DETERMINISTIC,
    }
    with client.responses.stream(**body) as live:
        list(live)
        first = live.get_final_response()
    with client.responses.stream(**body) as replayed:
        events = list(replayed)
        second = replayed.get_final_response()
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert second.output[0].model_dump() == call.model_dump()
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert arguments == call.arguments
    hit = client.responses.with_raw_response.create(**body)
    assert hit.headers["x-liftoff-cache"] == "hit"
    assert hit.parse().output[0].arguments == call.arguments


def test_replay_events_for_reasoning_and_refusal_items():
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [
            {
                "id": "rs_1",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "Hm"}],
            },
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "refusal", "refusal": "I can't help with that."}],
            },
        ],
        "usage": {"input_tokens": 3, "output_tokens": 9},
    }
    events = [sse_events(event.decode())[0] for event in replay(response)]
    types = [name for name, _ in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[-1][1]["response"] == response
    assert events[0][1]["response"]["output"] == [] and events[0][1]["response"]["usage"] is None


def test_relay_reads_the_terminal_event_only():
    relay = ResponsesRelay(keep_for_cache=True)
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",' + (
        b'"sequence_number":3,"delta":"event: response.completed"}'
    )
    assert relay.process(delta) == delta + b"\n\n"
    assert not ends_stream(delta) and relay.chunks == 1 and relay.usage is None
    assert relay.next_sequence_number() == 4
    failed = (
        b'event: response.failed\ndata: {"type":"response.failed","sequence_number":4,'
        b'"response":{"status":"failed","error":{"code":"server_error","message":"x"},'
        b'"usage":{"input_tokens":5,"output_tokens":2}}}'
    )
    relay.process(failed)
    assert ends_stream(failed)
    assert relay.upstream_error == {"code": "server_error", "message": "x"}
    assert relay.usage == {"input_tokens": 5, "output_tokens": 2}
    assert relay.assembled() is None
    # A provider that sends data lines alone: the type comes from the data.
    data_only = b'data: {"type":"response.completed","response":{"status":"completed"}}'
    assert ends_stream(data_only) and ends_stream(b"data: [DONE]")


# --- a stream cut by the provider ------------------------------------------------------------


def test_a_cut_stream_ends_with_an_error_event_is_billed_and_not_cached(
    redis_gateway_url, simulator
):
    url = redis_gateway_url
    body = {"model": "fast", "input": "Cut me off", "max_output_tokens": 64, **DETERMINISTIC}
    cut = sdk(url, **{"x-simulator-fault": "cut"})
    received: list[Any] = []
    with pytest.raises(openai.APIError, match="interrupted"), cut.responses.stream(**body) as s:
        received.extend(s)
    deltas = [e for e in received if e.type == "response.output_text.delta"]
    assert deltas and not any(e.type == "response.completed" for e in received)
    usage = settled(url, 1)
    # No usage came from the provider: billed for the prompt and each delta generated.
    assert usage["completion_tokens"] == len(deltas)
    assert usage["prompt_tokens"] > 0 and usage["cost_usd"] > 0
    with httpx.stream(
        "POST",
        f"{url}/responses",
        json={**body, "stream": True},
        headers={**auth(), "x-simulator-fault": "cut"},
    ) as raw:
        text = raw.read().decode()
    events = sse_events(text)
    name, error = events[-1]
    assert name == "error" and error["type"] == "error"
    assert error["code"] == "stream_interrupted" and error["error"]["code"] == "stream_interrupted"
    assert error["sequence_number"] == events[-2][1]["sequence_number"] + 1
    # Neither cut stream was cached: the whole one is a miss.
    whole = sdk(url).responses.with_raw_response.create(**body)
    assert whole.headers["x-liftoff-cache"] == "miss"


# --- limits, budgets, accounting -------------------------------------------------------------


async def test_tpm_and_budget_are_reserved_then_settled(simulator, redis_url):
    keys = client_keys_json(alice={"tpm": 1000, "monthly_budget_usd": 5.0})
    async with running(make_config(simulator.url, redis_url), {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        calls = len(sent_bodies(simulator))
        # The whole cap counts against tokens-per-minute, however short the answer would be.
        too_big = await gw.client.post(
            "/v1/responses",
            json={"model": "smart", "input": "Short", "max_output_tokens": 2000},
            headers=auth(),
        )
        body = {"model": "smart", "input": "Slow answer", "max_output_tokens": 64, "stream": True}
        slow = {**auth(), "x-simulator-ttft-ms": "400"}
        request = asyncio.ensure_future(gw.client.post("/v1/responses", json=body, headers=slow))
        await asyncio.sleep(0.2)
        during = (await gw.client.get("/v1/usage", headers=auth())).json()
        response = await request
        await gw.gateway.flush()
        after = (await gw.client.get("/v1/usage", headers=auth())).json()
    assert too_big.status_code == 429 and too_big.json()["error"]["type"] == "tokens"
    assert len(sent_bodies(simulator)) == calls + 1  # only the stream reached the provider
    completed = sse_events(response.text)[-1][1]["response"]["usage"]
    price = {"input": 2.50, "cached_input": 1.25, "output": 10.00}  # smart: gpt-4o-2024-08-06
    # While it ran, the budget held the worst case: the prompt (counted as the provider
    # counts it) and every token of the cap.
    worst = (completed["input_tokens"] * price["input"] + 64 * price["output"]) / 1e6
    assert during["usage"]["reserved_usd"] == pytest.approx(worst)
    cached = completed["input_tokens_details"]["cached_tokens"]
    cost = (
        (completed["input_tokens"] - cached) * price["input"]
        + cached * price["cached_input"]
        + completed["output_tokens"] * price["output"]
    ) / 1e6
    assert cost < worst
    usage = after["usage"]
    assert usage["reserved_usd"] == 0
    assert usage["spent_usd"] == pytest.approx(cost)
    assert usage["prompt_tokens"] == completed["input_tokens"]
    assert usage["completion_tokens"] == completed["output_tokens"]
    assert after["budget_remaining_usd"] == pytest.approx(5.0 - cost)


async def test_usage_and_metrics_count_responses(simulator):
    async with running(make_config(simulator.url)) as gw:
        json_answer = await gw.client.post(
            "/v1/responses",
            json={"model": "o4-mini", "input": "Think", "max_output_tokens": 2000},
            headers=auth(),
        )
        streamed = await gw.client.post(
            "/v1/responses",
            json={"model": "fast", "input": "Stream", "stream": True, "max_output_tokens": 20},
            headers=auth(),
        )
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]["models"]
        metrics = (await gw.client.get("/metrics")).text
    thought = json_answer.json()["usage"]
    assert thought["output_tokens_details"]["reasoning_tokens"] > 0
    reasoning = usage["o4-mini-2025-04-16"]
    assert reasoning["prompt_tokens"] == thought["input_tokens"]
    assert reasoning["completion_tokens"] == thought["output_tokens"]
    assert reasoning["reasoning_tokens"] == thought["output_tokens_details"]["reasoning_tokens"]
    stream_usage = sse_events(streamed.text)[-1][1]["response"]["usage"]
    assert usage["gpt-4o-mini-2024-07-18"]["completion_tokens"] == stream_usage["output_tokens"]
    model = "o4-mini-2025-04-16"
    tokens = {"key": "alice", "model": model}
    assert (
        sample(metrics, "liftoff_tokens_total", **tokens, kind="prompt") == thought["input_tokens"]
    )
    assert (
        sample(metrics, "liftoff_tokens_total", **tokens, kind="reasoning")
        == thought["output_tokens_details"]["reasoning_tokens"]
    )
    assert sample(metrics, "liftoff_requests_total", route="responses", model=model) == 1


async def test_moderation_checks_the_input_before_the_call(simulator):
    config = make_config(simulator.url, upstream={"moderation": {"enabled": True}})
    async with running(config) as gw:
        before = len(sent_bodies(simulator))
        flagged = await gw.client.post(
            "/v1/responses",
            json={
                "model": "fast",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "FLAG_ME"}]}],
            },
            headers=auth(),
        )
        checked = len(sent_bodies(simulator, "/v1/moderations"))
        fine = await gw.client.post(
            "/v1/responses", json={"model": "fast", "input": "Fine"}, headers=auth()
        )
    assert flagged.status_code == 400
    assert flagged.json()["error"]["code"] == "content_policy_violation"
    assert "FLAG_ME" in sent_bodies(simulator, "/v1/moderations")[checked - 1]["input"]
    assert fine.status_code == 200
    assert len(sent_bodies(simulator)) == before + 1  # only the unflagged one reached the model
