"""The official OpenAI Python SDK against the gateway served by a real uvicorn on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from app.server import create_app
from tests.app.gateway_harness import (
    ALICE,
    BOB,
    PROVIDER_KEY,
    client_keys_json,
    make_config,
    served,
)


@pytest.fixture(scope="module")
def gateway_url(simulator) -> Iterator[str]:
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF_CLIENT_KEYS": client_keys_json(bob={"rpm": 1}),
    }
    with served(create_app(make_config(simulator.url), env)) as url:
        yield url


def sdk(url: str, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def test_chat_completion(gateway_url):
    completion = sdk(gateway_url).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Hello there"}], max_tokens=20
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 20


def test_chat_stream_with_and_without_usage(gateway_url):
    client = sdk(gateway_url)
    messages = [{"role": "user", "content": "Stream please"}]
    with_usage = list(
        client.chat.completions.create(
            model="fast", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.total_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices)
    assert text
    without = list(client.chat.completions.create(model="fast", messages=messages, stream=True))
    assert all(c.usage is None for c in without)
    assert all(c.choices for c in without)


def test_completions_with_twenty_prompts(gateway_url):
    prompts = [f"Prompt {i}:" for i in range(20)]
    result = sdk(gateway_url).completions.create(model="fast", prompt=prompts, max_tokens=5)
    assert sorted(c.index for c in result.choices) == list(range(20))
    assert result.usage.prompt_tokens > 0


def test_raw_response_headers(gateway_url):
    raw = sdk(gateway_url).chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hi"}], temperature=0
    )
    assert raw.headers["x-liftoff-cache"] in ("hit", "miss")
    assert float(raw.headers["x-liftoff-overhead-ms"]) >= 0
    assert raw.headers["x-ratelimit-remaining-requests"]
    assert raw.parse().model == "gpt-4o-2024-08-06"


def test_models_list(gateway_url):
    ids = {m.id for m in sdk(gateway_url).models.list()}
    assert {"fast", "smart"} <= ids


def test_error_types(gateway_url):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as auth_error:
        sdk(gateway_url, key="wrong-key").chat.completions.create(model="fast", messages=messages)
    assert auth_error.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gateway_url).chat.completions.create(model="fast", messages=messages, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(gateway_url).chat.completions.create(model="gpt-9", messages=messages)
    assert missing.value.code == "model_not_found"
    bob = sdk(gateway_url, key=BOB)
    bob.chat.completions.create(model="fast", messages=messages)
    with pytest.raises(openai.RateLimitError) as limited:
        bob.chat.completions.create(model="fast", messages=messages)
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_interrupted_stream_raises_api_error(gateway_url):
    client = openai.OpenAI(
        base_url=gateway_url,
        api_key=ALICE,
        max_retries=0,
        default_headers={"x-simulator-fault": "cut"},
    )
    stream = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "cut me"}], stream=True
    )
    with pytest.raises(openai.APIError, match="interrupted"):
        for _ in stream:
            pass
