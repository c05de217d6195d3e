"""Streaming: chunks pass through, the usage chunk the gateway always requests is stripped unless
the client asked for it, a broken stream ends in an error event (never a fake finish) and is not
cached, and a cached answer replays as a stream."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.requests import ClientDisconnect

from app.replay import replay
from app.streaming import StreamRelay
from tests.app.gateway_harness import SIM_HEADERS, auth, client_keys_json, make_config, running


def events(text: str) -> list[str]:
    return [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]


def chunks(text: str) -> list[dict]:
    return [orjson.loads(e) for e in events(text) if e != "[DONE]"]


async def stream_chat(gw, headers=None, **body):
    payload = {
        "model": "fast",
        "messages": [{"role": "user", "content": "Tell me"}],
        "stream": True,
    }
    payload.update(body)
    return await gw.client.post(
        "/v1/chat/completions", json=payload, headers={**auth(), **(headers or {})}
    )


async def test_usage_chunk_is_requested_upstream_and_stripped_for_the_client(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        response = await stream_chat(gw, max_tokens=10)
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events(response.text)[-1] == "[DONE]"
    got = chunks(response.text)
    assert all(c["choices"] for c in got)  # no usage-only chunk reached the client
    assert got[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    sent = simulator.app.recent_requests()[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    # The stripped usage still settled the cost.
    assert usage["completion_tokens"] > 0 and usage["cost_usd"] > 0


async def test_usage_chunk_is_kept_when_the_client_asks(simulator):
    async with running(make_config(simulator.url)) as gw:
        response = await stream_chat(gw, stream_options={"include_usage": True})
    got = chunks(response.text)
    assert got[-1]["choices"] == []
    assert got[-1]["usage"]["total_tokens"] > 0


async def test_completions_stream(simulator):
    async with running(make_config(simulator.url)) as gw:
        response = await gw.client.post(
            "/v1/completions",
            json={"model": "fast", "prompt": "Once", "stream": True, "max_tokens": 6},
            headers=auth(),
        )
    got = chunks(response.text)
    assert got and all(c["object"] == "text_completion" for c in got)
    assert events(response.text)[-1] == "[DONE]"


async def test_interrupted_stream_ends_with_error_event_and_is_not_cached(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        cut = await stream_chat(gw, headers={"x-simulator-fault": "cut"}, temperature=0)
        whole = await stream_chat(gw, temperature=0)
        again = await stream_chat(gw, temperature=0)
        metrics = (await gw.client.get("/metrics")).text
    cut_events = events(cut.text)
    assert "[DONE]" not in cut_events
    last = orjson.loads(cut_events[-1])
    assert last["error"]["code"] == "stream_interrupted"
    assert last["error"]["type"] == "server_error"
    # No chunk before the error claims the answer finished.
    assert all(
        choice.get("finish_reason") is None
        for chunk in (orjson.loads(e) for e in cut_events[:-1])
        for choice in chunk["choices"]
    )
    # The broken stream was not cached: the next identical request went upstream.
    assert whole.headers["x-liftoff-cache"] == "miss"
    assert again.headers["x-liftoff-cache"] == "hit"
    assert "liftoff_stream_interruptions_total" in metrics


async def test_cached_answer_replays_as_stream_and_as_json(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        plain = await gw.chat(temperature=0, messages=[{"role": "user", "content": "Tell me"}])
        streamed = await stream_chat(gw, temperature=0, stream_options={"include_usage": True})
    assert streamed.headers["x-liftoff-cache"] == "hit"
    got = chunks(streamed.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"])
    assert text == plain.json()["choices"][0]["message"]["content"]
    assert got[-1]["usage"] == plain.json()["usage"]
    assert events(streamed.text)[-1] == "[DONE]"
    assert simulator.app.stats.by_route["POST /v1/chat/completions"] == 1


async def test_stream_is_cached_from_assembled_chunks(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        streamed = await stream_chat(gw, temperature=0)
        await gw.gateway.flush()
        plain = await gw.chat(temperature=0, messages=[{"role": "user", "content": "Tell me"}])
    assert plain.headers["x-liftoff-cache"] == "hit"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(streamed.text))
    assert plain.json()["choices"][0]["message"]["content"] == text


async def test_upstream_error_before_first_byte_is_a_normal_error(simulator):
    config = make_config(simulator.url, upstream={"retry": {"max_attempts": 1}})
    async with running(config) as gw:
        response = await stream_chat(gw, headers={"x-simulator-fault": "503"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


def test_relay_drops_only_the_usage_chunk_and_keeps_order():
    relay = StreamRelay("chat", client_wants_usage=False, keep_for_cache=True)
    first = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    )
    final = b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    out = [relay.process(e) for e in (first, final, usage, b"data: [DONE]")]
    assert out == [first + b"\n\n", final + b"\n\n", None, b"data: [DONE]\n\n"]
    assert relay.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    answer = relay.assembled()
    assert answer["choices"][0]["message"]["content"] == "Hi"
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_relay_does_not_cache_unindexed_tool_calls_or_unfinished_streams():
    tools = StreamRelay("chat", client_wants_usage=False, keep_for_cache=True)
    tools.process(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"id":"t"}]}}]}')
    assert tools.keep_for_cache is False  # no index: the SDKs could not rebuild it the same way
    unfinished = StreamRelay("chat", client_wants_usage=False, keep_for_cache=True)
    unfinished.process(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}')
    assert unfinished.assembled() is None


def test_replay_of_completions_with_usage():
    response = {
        "id": "cmpl-1",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    out = replay(response, "completions", include_usage=True)
    assert out[-1] == b"data: [DONE]\n\n"
    assert orjson.loads(out[-2][6:])["usage"]["total_tokens"] == 2
    assert orjson.loads(out[0][6:])["choices"][0]["text"] == "hello"


async def test_client_leaving_before_first_chunk_releases_the_upstream_stream(simulator):
    """The ASGI send fails at once: the body generator never starts, yet the provider stream
    is closed, the concurrency slot freed and the reservation settled."""
    from app.response_types import RelayResponse

    config = make_config(simulator.url, upstream={"max_concurrency_per_model": 1})
    async with running(config) as gw:
        app = gw.client._transport.app  # the Starlette app behind the ASGI transport
        body = orjson.dumps(
            {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start" and message["status"] == 200:
                raise OSError("client went away")

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"authorization", b"Bearer " + auth()["authorization"][7:].encode()),
                (b"content-type", b"application/json"),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("gateway", 80),
            "state": {},
        }
        for _ in range(2):
            with contextlib.suppress(ClientDisconnect, TimeoutError):
                await asyncio.wait_for(app(scope, receive, send), timeout=5)
            sent = False
        assert RelayResponse.on_close is None  # set per instance only
        # With a cap of 1, a leaked slot would make this wait forever.
        response = await asyncio.wait_for(stream_chat(gw), timeout=5)
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
    assert response.status_code == 200
    assert usage["reserved_usd"] == 0


async def test_client_leaving_mid_stream_stops_the_relay_at_once(simulator):
    """ASGI before 2.4 (uvicorn): the disconnect arrives through receive(); the relay stops
    reading the provider's stream instead of relaying it to nobody, and frees its slot."""
    forward = [*SIM_HEADERS, "x-simulator-tokens"]
    config = make_config(
        simulator.url, upstream={"max_concurrency_per_model": 1, "forward_headers": forward}
    )
    async with running(config) as gw:
        app = gw.client._transport.app
        body = orjson.dumps(
            {
                "model": "fast",
                "stream": True,
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "a long answer"}],
            }
        )
        first_chunk = asyncio.Event()
        request_sent = False
        messages: list[dict] = []

        async def receive():
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first_chunk.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                first_chunk.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"authorization", auth()["authorization"].encode()),
                (b"content-type", b"application/json"),
                (b"x-simulator-tokens", b"200"),
                (b"x-simulator-token-ms", b"20"),  # 200 tokens: 4 s to the end
            ],
            "client": ("127.0.0.1", 1),
            "server": ("gateway", 80),
            "state": {},
        }
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        assert asyncio.get_running_loop().time() - started < 1.0
        bodies = [m for m in messages if m["type"] == "http.response.body"]
        assert bodies and not any(m.get("more_body") is False for m in bodies)  # cut, not ended
        # With a cap of 1, a slot still held by the abandoned stream would make this wait.
        response = await asyncio.wait_for(stream_chat(gw), timeout=5)
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
    assert response.status_code == 200
    assert usage["reserved_usd"] == 0 and usage["requests"] == 2


def _upstream_idle(gateway, model="gpt-4o-mini-2024-07-18", cap=64) -> bool:
    upstream = gateway.upstream
    slot_free = upstream._target(model).slots.free == cap
    gauge = gateway.metrics.child(gateway.metrics.upstream_in_flight, model)
    return slot_free and gauge._value.get() == 0


async def test_stream_opens_upstream_while_the_limiter_decides(simulator, redis_url):
    """A non-cacheable stream of a key seen with room to spare: the provider stream is opened
    concurrently with the admission (one Redis round trip), and the answer is the same."""
    async with running(make_config(simulator.url, redis_url)) as gw:
        gateway = gw.gateway
        assert not gateway.limit_view.likely_admitted(
            "alice", 100, 0.0
        )  # nothing seen: wait for verdict
        first = await stream_chat(gw, max_tokens=10)
        assert gateway.limit_view.likely_admitted("alice", 100, 0.0)
        opened = []
        original = gateway.pipeline.open_stream

        async def spy(endpoint, parsed, body, ctx):
            opened.append(ctx.admitted)  # False: opened before the verdict came back
            return await original(endpoint, parsed, body, ctx)

        gateway.pipeline.open_stream = spy
        second = await stream_chat(gw, max_tokens=10)
        cached = await stream_chat(gw, max_tokens=10, temperature=0)  # cacheable: never early
        await gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
    assert opened == [False, True]
    assert first.status_code == second.status_code == 200
    assert events(second.text)[-1] == "[DONE]"
    assert [c["choices"][0]["delta"].get("content") for c in chunks(second.text)] == [
        c["choices"][0]["delta"].get("content") for c in chunks(first.text)
    ]
    assert cached.status_code == 200
    assert usage["reserved_usd"] == 0 and usage["requests"] == 3


async def test_refused_admission_cancels_the_early_stream_and_frees_everything(
    simulator, redis_url
):
    """This process' view of the key is stale (another replica used up its minute): the stream
    is opened early, the limiter refuses, the client gets the 429 at once and never a byte of
    the stream, and the provider call is cancelled, its connection and slot released."""
    keys = client_keys_json(alice={"rpm": 20})  # 2 at once with the default burst fraction
    async with running(make_config(simulator.url, redis_url), {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        gateway = gw.gateway
        for _ in range(2):
            assert (await stream_chat(gw, max_tokens=5)).status_code == 200
        gateway.limit_view.seen["alice"] = (0.0, {}, None)  # stale: "plenty left"
        opened = []
        original = gateway.pipeline.open_stream

        async def spy(endpoint, parsed, body, ctx):
            opened.append(True)
            return await original(endpoint, parsed, body, ctx)

        gateway.pipeline.open_stream = spy
        slow = {"x-simulator-ttft-ms": "2000"}
        started = asyncio.get_running_loop().time()
        refused = await stream_chat(gw, headers=slow, max_tokens=5)
        took = asyncio.get_running_loop().time() - started
        for _ in range(100):
            if _upstream_idle(gateway):
                break
            await asyncio.sleep(0.01)
        idle = _upstream_idle(gateway)
        await gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
        # The refusal is now known here: the next request waits for the verdict.
        assert not gateway.limit_view.likely_admitted("alice", 10, 0.0)
    assert opened == [True]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert took < 1.0  # not held until the provider's first token
    assert idle
    assert usage["reserved_usd"] == 0 and usage["requests"] == 2


async def test_early_stream_failing_releases_the_reservation(simulator, redis_url):
    config = make_config(simulator.url, redis_url, upstream={"retry": {"max_attempts": 1}})
    async with running(config) as gw:
        gateway = gw.gateway
        assert (await stream_chat(gw, max_tokens=5)).status_code == 200
        failed = await stream_chat(gw, headers={"x-simulator-fault": "503"}, max_tokens=5)
        await gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
        idle = _upstream_idle(gateway)
    assert failed.status_code == 502
    assert usage["reserved_usd"] == 0
    assert idle


def test_likely_admitted_needs_room_on_every_limit_and_budget():
    from app.gcra import DEFAULT_BURSTS
    from app.limit_view import LimitView
    from app.limits import KeyPolicy

    view = LimitView({"k": KeyPolicy("k", 60, 1000, 1.0)}, DEFAULT_BURSTS)
    assert not view.likely_admitted("k", 10, 0.01)  # nothing seen yet
    now = __import__("time").monotonic()
    roomy = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6s"}
    view.seen["k"] = (now, roomy, 0.5)
    assert view.likely_admitted("k", 10, 0.01)
    assert not view.likely_admitted("k", 500, 0.01)  # 174 tokens left now: not twice 500
    assert not view.likely_admitted("k", 10, 0.3)  # $0.5 left: not twice the worst case
    view.seen["k"] = (now, {**roomy, "x-ratelimit-reset-requests": "59.5s"}, None)
    assert not view.likely_admitted("k", 10, 0.01)  # no request left
