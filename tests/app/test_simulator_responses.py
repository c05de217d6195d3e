"""The simulator serves OpenAI's Responses API: objects, events, usage, tools, storage, faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from app.simulator import SimulatorServer
from app.simulator.text import count_message_tokens

AUTH = {"authorization": "Bearer sk-test"}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
async def sdk(simulator: SimulatorServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=simulator.url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.url, headers=AUTH, timeout=10) as c:
        yield c


async def create(client: httpx.AsyncClient, headers: dict[str, str] | None = None, **body: Any):
    return await client.post(
        "/v1/responses", json={"model": "gpt-4o-mini", **body}, headers=headers or {}
    )


async def test_json_response_is_an_openai_response_with_counted_usage(sdk):
    response = await sdk.responses.create(
        model="gpt-4o-mini", instructions="Be terse.", input="Tell me about caches."
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "gpt-4o-mini-2024-07-18"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text" and response.output_text.endswith(".")
    expected_input = count_message_tokens(
        [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Tell me about caches."}]},
        ]
    )
    usage = response.usage
    assert usage.input_tokens == expected_input
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert response.store is True and response.instructions == "Be terse."
    assert response.tool_choice == "auto" and response.tools == []
    assert response.text.format.type == "text"
    again = await sdk.responses.create(
        model="gpt-4o-mini", instructions="Be terse.", input="Tell me about caches."
    )
    assert again.output_text == response.output_text and again.id != response.id


async def test_stream_events_come_in_order_with_sequence_numbers_and_final_usage(client):
    plain = (await create(client, input="Stream me something.")).json()
    async with client.stream(
        "POST",
        "/v1/responses",
        json={"model": "gpt-4o-mini", "input": "Stream me something.", "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    events = []
    for frame in frames:
        event_line, data_line = frame.split("\n")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert event_line == "event: " + data["type"]
        events.append(EVENTS.validate_python(data))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert len(deltas) > 3
    assert events[0].response.status == "in_progress" and events[0].response.usage is None
    completed = events[-1].response
    text = "".join(d.delta for d in deltas)
    assert text == completed.output_text == plain["output"][0]["content"][0]["text"]
    assert completed.usage.output_tokens == plain["usage"]["output_tokens"]
    assert completed.usage.input_tokens == plain["usage"]["input_tokens"]


async def test_sdk_stream_helper_assembles_the_final_response(sdk):
    async with sdk.responses.stream(model="gpt-4o-mini", input="Hello there") as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert "".join(texts) == final.output_text and final.status == "completed"
    assert final.usage.output_tokens > 0


async def test_reasoning_models_spend_reasoning_tokens_within_max_output_tokens(sdk):
    response = await sdk.responses.create(
        model="o4-mini", input="Think about it.", reasoning={"effort": "low"}
    )
    assert response.output[0].type == "reasoning" and response.output[1].type == "message"
    reasoning = response.usage.output_tokens_details.reasoning_tokens
    assert 64 <= reasoning <= 128
    assert response.reasoning.effort == "low"
    capped = await sdk.responses.create(
        model="o4-mini",
        input="Think about it.",
        reasoning={"effort": "high"},
        max_output_tokens=100,
    )
    assert capped.status == "incomplete"
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert capped.usage.output_tokens == 100 == capped.usage.output_tokens_details.reasoning_tokens
    assert [item.type for item in capped.output] == ["reasoning"]


async def test_max_output_tokens_cuts_the_text_as_incomplete(sdk):
    response = await sdk.responses.create(
        model="gpt-4o-mini",
        input="Write at length.",
        max_output_tokens=16,
        extra_headers={"x-simulator-tokens": "40"},
    )
    assert response.status == "incomplete" and response.usage.output_tokens == 16
    assert response.output[0].status == "incomplete"


async def test_function_tool_round_trip(sdk):
    first = await sdk.responses.create(
        model="gpt-4o-mini", input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.status == "completed"
    arguments = orjson.loads(call.arguments)
    assert set(arguments) == {"city", "unit", "days"}
    assert arguments["unit"] in ("celsius", "fahrenheit") and isinstance(arguments["days"], int)
    assert first.output_text == ""
    # The tool's answer comes back through previous_response_id: the model now writes text.
    second = await sdk.responses.create(
        model="gpt-4o-mini",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22C sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output[0].type == "message" and second.output_text
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens
    # The same conversation sent in full gives the same answer.
    full = await sdk.responses.create(
        model="gpt-4o-mini",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "22C sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert full.output_text == second.output_text


async def test_tool_choice_decides_the_call(sdk):
    other = {**WEATHER_TOOL, "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    named = await sdk.responses.create(
        model="gpt-4o-mini",
        input="Hi",
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "name": "get_time"},
    )
    assert named.output[0].name == "get_time" and named.output[0].arguments == "{}"
    none = await sdk.responses.create(
        model="gpt-4o-mini", input="Hi", tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert none.output[0].type == "message"
    after_assistant = await sdk.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        tools=[WEATHER_TOOL],
    )
    assert after_assistant.output[0].type == "message"
    required = await sdk.responses.create(
        model="gpt-4o-mini",
        input=after_assistant.output_text,
        instructions="x",
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    assert required.output[0].type == "function_call"
    with pytest.raises(openai.BadRequestError) as missing:
        await sdk.responses.create(
            model="gpt-4o-mini",
            input="Hi",
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "nope"},
        )
    assert missing.value.body["param"] == "tool_choice"


async def test_function_call_streams_argument_deltas(client):
    async with client.stream(
        "POST",
        "/v1/responses",
        json={"model": "gpt-4o-mini", "input": "Weather?", "tools": [WEATHER_TOOL], "stream": True},
    ) as response:
        raw = (await response.aread()).decode()
    events = [
        EVENTS.validate_python(orjson.loads(f.split("\n")[1].removeprefix("data: ")))
        for f in raw.split("\n\n")
        if f
    ]
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.arguments == ""
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 1 and "".join(deltas) == done.arguments
    assert done.name == "get_weather"
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert events[-1].response.output[0].arguments == done.arguments


async def test_structured_output_fits_the_json_schema(sdk):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = await sdk.responses.create(
        model="gpt-4o-mini",
        input="A person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
    )
    person = orjson.loads(response.output_text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


async def test_stored_responses_retrieve_list_inputs_and_delete(sdk, client):
    created = await sdk.responses.create(
        model="gpt-4o-mini",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"role": "user", "content": "second"},
        ],
    )
    fetched = await sdk.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    items = await sdk.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["second", "first"]  # newest first
    assert all(i.id.startswith("msg_") and i.type == "message" for i in items.data)
    ascending = await sdk.responses.input_items.list(created.id, order="asc", limit=1)
    assert [i.content[0].text for i in ascending.data] == ["first"] and ascending.has_more
    raw = await client.get(f"/v1/responses/{created.id}/input_items")
    ResponseItemList.model_validate(raw.json())
    deleted = await client.delete(f"/v1/responses/{created.id}")
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    await sdk.responses.delete((await sdk.responses.create(model="m", input="x")).id)
    with pytest.raises(openai.NotFoundError) as gone:
        await sdk.responses.retrieve(created.id)
    assert gone.value.body["message"] == f"Response with id '{created.id}' not found."
    assert gone.value.body["type"] == "invalid_request_error"


async def test_store_false_is_not_retrievable_nor_continued(sdk):
    unstored = await sdk.responses.create(model="gpt-4o-mini", input="x", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(model="gpt-4o-mini", input="y", previous_response_id=unstored.id)
    assert refused.value.code == "previous_response_not_found"
    assert refused.value.body["param"] == "previous_response_id"


async def test_retrieve_with_stream_replays_the_events(sdk):
    created = await sdk.responses.create(model="gpt-4o-mini", input="replay me")
    stream = await sdk.responses.retrieve(created.id, stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    replayed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert replayed == created.output_text


async def test_background_response_is_queued_then_completed_or_cancelled(sdk):
    slow = {"x-simulator-ttft-ms": "300"}
    queued = await sdk.responses.create(
        model="gpt-4o-mini", input="later", background=True, extra_headers=slow
    )
    assert queued.status == "queued" and queued.background is True
    cancelled = await sdk.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    await asyncio.sleep(0.4)
    assert (await sdk.responses.retrieve(queued.id)).status == "cancelled"
    quick = await sdk.responses.create(model="gpt-4o-mini", input="later", background=True)
    for _ in range(100):
        done = await sdk.responses.retrieve(quick.id)
        if done.status == "completed":
            break
        await asyncio.sleep(0.01)
    assert done.status == "completed" and done.output_text
    assert (await sdk.responses.cancel(quick.id)).status == "completed"  # terminal: unchanged
    foreground = await sdk.responses.create(model="gpt-4o-mini", input="now")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        await sdk.responses.cancel(foreground.id)


async def test_input_tokens_counts_like_create(sdk):
    conversation = [{"role": "user", "content": "How many tokens is this?"}]
    counted = await sdk.responses.input_tokens.count(
        model="gpt-4o-mini", input=conversation, instructions="Be brief."
    )
    assert counted.object == "response.input_tokens"
    created = await sdk.responses.create(
        model="gpt-4o-mini", input=conversation, instructions="Be brief."
    )
    assert counted.input_tokens == created.usage.input_tokens


async def test_long_conversations_hit_the_prompt_cache(sdk):
    long_text = "cache me " * 700
    first = await sdk.responses.create(model="gpt-4o", input=long_text)
    assert first.usage.input_tokens >= 1024 and first.usage.input_tokens_details.cached_tokens == 0
    second = await sdk.responses.create(
        model="gpt-4o", previous_response_id=first.id, input="and more"
    )
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "max_output_tokens": 5}, "max_output_tokens"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "previous_response_id": 7}, "previous_response_id"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": 5}, "input"),
        ({}, "input"),
        ({"input": "x", "temperature": 3}, "temperature"),
    ],
)
async def test_invalid_requests_get_openai_400s(client, body, param):
    response = await create(client, **body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_missing_model_and_unknown_response_ids(client):
    no_model = await client.post("/v1/responses", json={"input": "x"})
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    for method, path in [
        ("GET", "/v1/responses/resp_nope"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("POST", "/v1/responses/resp_nope/cancel"),
        ("GET", "/v1/responses/resp_nope/input_items"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, path
        assert response.json()["error"]["message"] == "Response with id 'resp_nope' not found."


async def test_faults_apply_to_responses(client, simulator):
    simulator.app.reset()
    limited = await create(
        client, {"x-simulator-fault": "429", "x-simulator-retry-after-ms": "1500"}, input="x"
    )
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert (await create(client, {"x-simulator-fault": "503"}, input="x")).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        await create(client, {"x-simulator-fault": "cut"}, input="x")
    key = {"x-simulator-fail-times": "1", "x-simulator-request-key": "responses-retry"}
    assert [(await create(client, key, input="x")).status_code for _ in range(2)] == [503, 200]
    stats = simulator.app.stats
    assert stats.by_route["POST /v1/responses"] == 5
    assert stats.faults == {"429": 1, "503": 2, "cut": 1}


async def test_cut_stream_stops_without_completed(client):
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream(
            "POST",
            "/v1/responses",
            json={"model": "m", "input": "x", "stream": True},
            headers={"x-simulator-fault": "cut", "x-simulator-tokens": "20"},
        ) as response:
            async for line in response.aiter_lines():
                received.append(line)
    assert "event: response.output_text.delta" in received
    assert "event: response.completed" not in received


async def test_timeout_fault_hangs_responses(make_simulator):
    server = make_simulator(timeout_fault_s=0.3)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                "/v1/responses",
                json={"model": "m", "input": "x"},
                headers={"x-simulator-fault": "timeout"},
                timeout=0.1,
            )


def test_stored_responses_are_bounded(make_simulator):
    server = make_simulator(stored_responses=3)
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    ids = [sdk.responses.create(model="m", input=str(i)).id for i in range(5)]
    assert list(server.app.responses.store) == ids[2:]
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(ids[0])
    assert sdk.responses.retrieve(ids[4]).id == ids[4]


async def test_responses_model_validates_every_field_of_the_json(client):
    body = (await create(client, input="x", metadata={"k": "v"}, temperature=0.5)).json()
    response = Response.model_validate(body)
    assert response.metadata == {"k": "v"} and response.temperature == 0.5
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
