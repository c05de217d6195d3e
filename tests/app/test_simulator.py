"""The provider simulator speaks OpenAI's wire format, counts usage honestly and injects faults."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types import Completion, Model, ModerationCreateResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from app.simulator import SimulatorOptions, SimulatorServer, format_duration
from app.simulator.text import count_message_tokens, count_tokens

AUTH = {"authorization": "Bearer sk-test"}
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about caches."},
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.url, headers=AUTH, timeout=10) as c:
        yield c


async def chat(
    client: httpx.AsyncClient,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    **body: Any,
) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, **body},
        headers=headers or {},
        timeout=timeout,
    )


async def sse_events(response: httpx.Response) -> list[str]:
    raw = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
    assert raw.endswith("\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


async def test_chat_completion_matches_openai_types_and_counts_usage(client):
    response = await chat(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-ratelimit-remaining-requests"]
    completion = ChatCompletion.model_validate(response.json())
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini-2024-07-18"  # floating name answered with its pin
    assert completion.system_fingerprint
    (choice,) = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and choice.logprobs is None
    content = choice.message.content
    assert content and content.endswith(".")
    assert completion.usage.prompt_tokens == count_message_tokens(MESSAGES)
    assert completion.usage.completion_tokens == count_tokens(content)
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_output_is_deterministic_per_input_seed_and_temperature(client):
    first = (await chat(client)).json()["choices"][0]["message"]["content"]
    again = (await chat(client)).json()["choices"][0]["message"]["content"]
    seeded = (await chat(client, seed=7)).json()["choices"][0]["message"]["content"]
    other = (await chat(client, messages=[{"role": "user", "content": "x"}])).json()
    assert first == again
    assert seeded != first
    assert other["choices"][0]["message"]["content"] != first


async def test_max_tokens_cuts_with_finish_reason_length(client):
    for field in ("max_tokens", "max_completion_tokens"):
        body = (await chat(client, **{field: 5})).json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 5
        assert count_tokens(body["choices"][0]["message"]["content"]) == 5


async def test_stop_sequence_truncates_before_it(client):
    full = (await chat(client)).json()["choices"][0]["message"]["content"]
    stop_word = full.split(" ")[4]
    body = (await chat(client, stop=["NEVER-THERE", " " + stop_word])).json()
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert content == full[: full.index(" " + stop_word)]
    assert body["usage"]["completion_tokens"] == count_tokens(content)


async def test_n_gives_distinct_choices_and_greedy_gives_equal_ones(client):
    body = (await chat(client, n=3)).json()
    texts = [c["message"]["content"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3
    assert body["usage"]["completion_tokens"] == sum(count_tokens(t) for t in texts)
    greedy = (await chat(client, n=2, temperature=0)).json()
    assert greedy["choices"][0]["message"]["content"] == greedy["choices"][1]["message"]["content"]


async def test_stream_framing_role_first_and_same_text_as_non_stream(client):
    full = (await chat(client)).json()
    async with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(e)) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks)
    assert "usage" not in orjson.loads(events[0])  # only present when include_usage was asked
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full["choices"][0]["message"]["content"]
    # One token per content chunk.
    assert (
        sum(1 for c in chunks if c.choices[0].delta.content) == full["usage"]["completion_tokens"]
    )


async def test_stream_include_usage_ends_with_usage_chunk(simulator):
    sdk = openai.AsyncOpenAI(base_url=simulator.url + "/v1", api_key="sk-test")
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        n=2,
        max_tokens=4,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await sdk.close()
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body)
    texts = {0: "", 1: ""}
    for c in body:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    finishes = {ch.index: ch.finish_reason for c in body for ch in c.choices if ch.finish_reason}
    assert finishes == {0: "length", 1: "length"}
    assert last.usage.completion_tokens == 8 == sum(count_tokens(t) for t in texts.values())
    assert last.usage.prompt_tokens == count_message_tokens(MESSAGES)


async def test_stream_arrives_token_by_token_with_configured_latency(make_simulator):
    server = make_simulator(ttft_ms=80, token_ms=20)
    async with (
        httpx.AsyncClient(base_url=server.url, headers=AUTH) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 5},
        ) as response,
    ):
        started = time.perf_counter()
        arrivals = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - started)
    assert arrivals[0] >= 0.07  # time to first token
    assert arrivals[-1] - arrivals[0] >= 4 * 0.02 * 0.9  # per-token delay between tokens


async def test_sdk_chat_and_models(simulator):
    sdk = openai.AsyncOpenAI(base_url=simulator.url + "/v1", api_key="sk-test")
    completion = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    models = await sdk.models.list()
    one = await sdk.models.retrieve("gpt-4o-mini-2024-07-18")
    await sdk.close()
    assert one.id == "gpt-4o-mini-2024-07-18" and one.object == "model"
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.choices[0].message.content
    ids = [m.id for m in models.data]
    assert "gpt-4o-mini-2024-07-18" in ids
    for m in models.data:
        Model.model_validate(m.model_dump())


async def test_completions_prompt_list_indexes_by_prompt_and_choice(client, simulator):
    prompts = ["Say one thing.", "Say another thing about retries.", "A third."]
    simulator.app.reset()
    response = await client.post(
        "/v1/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": prompts, "n": 2}
    )
    batch = Completion.model_validate(response.json())
    assert batch.object == "text_completion"
    assert [c.index for c in batch.choices] == list(range(6))
    assert batch.usage.prompt_tokens == sum(count_tokens(p) for p in prompts)
    assert batch.usage.completion_tokens == sum(count_tokens(c.text) for c in batch.choices)
    # Choice prompt_idx*n+i of the batch is what prompt_idx alone would have produced as choice i.
    for prompt_idx, prompt in enumerate(prompts):
        alone = (
            await client.post(
                "/v1/completions",
                json={"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "n": 2},
            )
        ).json()
        for i in range(2):
            assert batch.choices[prompt_idx * 2 + i].text == alone["choices"][i]["text"]
    stats = (await client.get("/_simulator/stats")).json()
    assert stats["completions_requests"] == 4
    assert stats["completions_prompts"] == 3 + 3
    assert stats["prompts_per_completions_request"] == {"1": 3, "3": 1}


async def test_completions_stream_and_token_prompts(client):
    async with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "m",
            "prompt": ["a", "b"],
            "stream": True,
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    # The SDK builds stream chunks without validation (finish_reason is null until the end).
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["text"]
    assert all(count_tokens(t) == 3 for t in texts.values())
    tokens = (await client.post("/v1/completions", json={"model": "m", "prompt": [1, 2, 3]})).json()
    assert tokens["usage"]["prompt_tokens"] == 3
    echo = await client.post("/v1/completions", json={"model": "m", "prompt": "Hi", "echo": True})
    assert echo.json()["choices"][0]["text"].startswith("Hi")


async def test_moderation_flags_marker(client):
    response = await client.post(
        "/v1/moderations", json={"input": ["a kind note", "please FLAG_ME now"]}
    )
    result = ModerationCreateResponse.model_validate(response.json())
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.harassment is True
    assert result.model == "omni-moderation-2024-09-26"


async def test_auth_missing_and_revoked_keys(simulator):
    async with httpx.AsyncClient(base_url=simulator.url) as client:
        missing = await chat(client)
        revoked = await chat(client, headers={"authorization": "Bearer sk-sim-revoked"})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "invalid_api_key"
    sdk = openai.AsyncOpenAI(
        base_url=simulator.url + "/v1", api_key="sk-sim-revoked", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        await sdk.chat.completions.create(model="m", messages=MESSAGES)
    await sdk.close()


async def test_bad_requests_get_openai_errors(client):
    bad_json = await client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    no_messages = await client.post("/v1/chat/completions", json={"model": "m"})
    assert no_messages.json()["error"]["param"] == "messages"
    bad_n = await chat(client, n=0)
    assert bad_n.status_code == 400 and bad_n.json()["error"]["param"] == "n"
    too_many_stops = await chat(client, stop=["a", "b", "c", "d", "e"])
    assert too_many_stops.json()["error"]["param"] == "stop"
    unknown = await client.get("/v1/nothing")
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


async def test_restricted_model_list_answers_404_model_not_found(make_simulator):
    server = make_simulator(models=("gpt-4o-mini-2024-07-18",))
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        ok = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini-2024-07-18", "messages": MESSAGES}
        )
        missing = await client.post(
            "/v1/chat/completions", json={"model": "gpt-5-nope", "messages": MESSAGES}
        )
    assert ok.status_code == 200
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("status", ["500", "502", "503", "504"])
async def test_server_error_faults(client, status):
    response = await chat(client, headers={"x-simulator-fault": status})
    assert response.status_code == int(status)
    assert response.json()["error"]["type"] == "server_error"


async def test_429_fault_carries_retry_after_and_ratelimit_headers(client):
    response = await chat(
        client, headers={"x-simulator-fault": "429", "x-simulator-retry-after-ms": "1500"}
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert response.headers["retry-after-ms"] == "1500"
    assert response.headers["x-ratelimit-reset-requests"] == "1.5s"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    for name in ("limit-requests", "limit-tokens", "remaining-tokens", "reset-tokens"):
        assert response.headers[f"x-ratelimit-{name}"]
    default = await chat(client, headers={"x-simulator-fault": "429"})
    assert default.headers["retry-after"] == "1"
    assert default.headers["x-ratelimit-reset-requests"] == "1s"


async def test_401_fault(client):
    response = await chat(client, headers={"x-simulator-fault": "401"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_timeout_fault_outlasts_client_read_timeout(make_simulator):
    server = make_simulator(timeout_fault_s=0.5)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        with pytest.raises(httpx.ReadTimeout):
            await chat(client, headers={"x-simulator-fault": "timeout"}, timeout=0.2)
        # A client that waits long enough sees the provider give up with a 504.
        late = await chat(client, headers={"x-simulator-fault": "timeout"}, timeout=5)
    assert late.status_code == 504


async def test_cut_fault_breaks_stream_without_done(client):
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"x-simulator-fault": "cut"},
        ) as response:
            received = []
            async for line in response.aiter_lines():
                received.append(line)
    assert any(line.startswith("data: {") for line in received)
    assert "data: [DONE]" not in received


async def test_cut_fault_truncates_non_stream_body(client):
    with pytest.raises(httpx.RemoteProtocolError):
        await chat(client, headers={"x-simulator-fault": "cut"})


async def test_unknown_fault_header_is_ignored(client):
    assert (await chat(client, headers={"x-simulator-fault": "explode"})).status_code == 200


async def test_fail_times_fails_first_attempts_of_a_logical_request(client):
    headers = {
        "x-simulator-fail-times": "2",
        "x-simulator-request-key": os.urandom(8).hex(),
        "x-simulator-fault": "502",
    }
    statuses = [(await chat(client, headers=headers)).status_code for _ in range(4)]
    assert statuses == [502, 502, 200, 200]
    other = {**headers, "x-simulator-request-key": os.urandom(8).hex()}
    assert (await chat(client, headers=other)).status_code == 502
    # Without a fault kind the failures are 503; without a key the body identifies the request.
    anonymous = {"x-simulator-fail-times": "1"}
    body = {"messages": [{"role": "user", "content": os.urandom(8).hex()}]}
    assert (await chat(client, headers=anonymous, **body)).status_code == 503
    assert (await chat(client, headers=anonymous, **body)).status_code == 200


async def test_fault_rate_is_reproducible_for_a_seed(make_simulator):
    async def statuses(seed: int) -> list[int]:
        server = make_simulator(fault_rate=0.5, fault_kinds=("429", "500"), seed=seed)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
            return [(await chat(client)).status_code for _ in range(30)]

    first, second, third = await statuses(1), await statuses(1), await statuses(2)
    assert first == second
    assert first != third
    assert {200, 429, 500} == set(first)


async def test_stats_count_requests_statuses_and_faults(client, simulator):
    simulator.app.reset()
    await chat(client)
    await chat(client, headers={"x-simulator-fault": "503"})
    stats = (await client.get("/_simulator/stats")).json()
    assert stats["by_route"]["POST /v1/chat/completions"] == 2
    assert stats["by_status"] == {"200": 1, "503": 1}
    assert stats["faults"] == {"503": 1}
    recent = (await client.get("/_simulator/requests")).json()["requests"]
    assert recent[-1]["body"]["model"] == "gpt-4o-mini"
    assert "authorization" not in recent[-1]["headers"]
    assert recent[-1]["api_key_sha256"] and "sk-test" not in orjson.dumps(recent).decode()


async def test_concurrent_requests_are_served_concurrently(make_simulator):
    server = make_simulator(ttft_ms=100, token_ms=0)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(chat(client) for _ in range(20)))
        elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses)
    assert elapsed < 1.0
    assert server.app.stats.max_in_flight > 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"ttft_ms": -1}, "ttft_ms"),
        ({"fault_rate": 2}, "fault_rate"),
        ({"fault_kinds": ("418",)}, "fault_kinds"),
        ({"length_range": (5, 1)}, "length_range"),
    ],
)
def test_invalid_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        SimulatorOptions(**options)


def test_format_duration_matches_openai_style():
    assert [format_duration(s) for s in (0.02, 1, 1.5, 360)] == ["20ms", "1s", "1.5s", "6m0s"]


def test_cli_serves_with_given_options():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.simulator",
            "--port",
            str(port),
            "--ttft-ms",
            "0",
            "--token-ms",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/completions",
                    json={"model": "m", "prompt": "hi"},
                    headers=AUTH,
                )
                break
            except httpx.ConnectError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "simulator CLI did not start"
                time.sleep(0.05)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
    bad = subprocess.run(
        [sys.executable, "-m", "app.simulator", "--fault-kinds", "418"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "fault_kinds" in bad.stderr
