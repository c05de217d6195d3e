"""Agent frameworks on /v1/responses through the gateway: openai-agents with its default model
(the Responses API) running a function tool round trip, langchain-openai with
`use_responses_api=True`, and the official SDK against `python -m app` with its embedded
defaults (what `make serve` runs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIResponsesModel,
    Runner,
    RunResultStreaming,
    function_tool,
    set_tracing_disabled,
)
from langchain_openai import ChatOpenAI

from app.server import create_app
from tests.app.gateway_harness import (
    ALICE,
    PROVIDER_KEY,
    app_processes,
    client_keys_json,
    make_config,
    served,
)

DEV_KEY = "liftoff-dev-key"  # the embedded defaults' development client key


@pytest.fixture(scope="module")
def gateway_url(simulator) -> Iterator[str]:
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    with served(create_app(make_config(simulator.url), env)) as url:
        yield url


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)  # the agents SDK would otherwise export traces to OpenAI


def weather_agent(url: str, calls: list[str]) -> Agent[Any]:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny and 21 C in {city}."

    client = openai.AsyncOpenAI(base_url=url, api_key=ALICE, max_retries=0)
    return Agent(
        name="Forecaster",
        instructions="Answer with the weather, using the tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model="fast", openai_client=client),
    )


def responses_calls(simulator, since: int) -> list[dict[str, Any]]:
    return [r["body"] for r in simulator.app.recent_requests("/v1/responses")][since:]


async def test_agent_runs_a_function_tool_round_trip(gateway_url, simulator):
    before = len(simulator.app.recent_requests("/v1/responses"))
    calls: list[str] = []
    result = await Runner.run(weather_agent(gateway_url, calls), "What is the weather in Paris?")
    assert len(calls) == 1 and calls[0]  # the model chose the tool and its argument
    assert isinstance(result.final_output, str) and result.final_output
    sent = responses_calls(simulator, before)
    assert len(sent) == 2
    assert all(body["model"] == "gpt-4o-mini-2024-07-18" for body in sent)
    outputs = [i for i in sent[1]["input"] if i.get("type") == "function_call_output"]
    assert outputs and calls[0] in outputs[0]["output"]
    usage = result.context_wrapper.usage
    assert usage.requests == 2 and usage.input_tokens > 0 and usage.output_tokens > 0


async def test_agent_streamed_run(gateway_url):
    calls: list[str] = []
    streamed: RunResultStreaming = Runner.run_streamed(
        weather_agent(gateway_url, calls), "Weather in Oslo?"
    )
    kinds = {event.type async for event in streamed.stream_events()}
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert len(calls) == 1
    assert isinstance(streamed.final_output, str) and streamed.final_output


def test_langchain_chat_openai_on_the_responses_api(gateway_url, simulator):
    before = len(simulator.app.recent_requests("/v1/responses"))
    model = ChatOpenAI(
        model="fast", base_url=gateway_url, api_key=ALICE, use_responses_api=True, max_retries=0
    )
    message = model.invoke("Say hello")
    assert message.text and message.response_metadata["model_name"] == "gpt-4o-mini-2024-07-18"
    assert message.usage_metadata["input_tokens"] > 0
    assert len(responses_calls(simulator, before)) == 1
    chunks = list(model.stream("Stream hello"))
    assert "".join(chunk.text for chunk in chunks) and len(chunks) > 1


def test_make_serve_embedded_defaults():
    """`python -m app` with nothing configured: the built-in simulator, in-process state."""
    with app_processes(1, {}) as urls:
        client = openai.OpenAI(base_url=urls[0], api_key=DEV_KEY, max_retries=0, timeout=30)
        created = client.responses.create(model="fast", input="Hello", max_output_tokens=32)
        assert created.output_text and created.model == "gpt-4o-mini-2024-07-18"
        assert client.responses.retrieve(created.id).id == created.id
        with client.responses.stream(
            model="fast", input="Stream it", temperature=0, store=False, max_output_tokens=200
        ) as stream:
            live = stream.get_final_response()
        raw = client.responses.with_raw_response.create(
            model="fast", input="Stream it", temperature=0, store=False, max_output_tokens=200
        )
        assert raw.headers["x-liftoff-cache"] == "hit"
        assert raw.parse().output_text == live.output_text
