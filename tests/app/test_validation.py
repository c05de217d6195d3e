"""Request validation: every bad input gets the status, type, code and param OpenAI would use,
and nothing reaches the provider."""

from __future__ import annotations

import pytest

from tests.app.gateway_harness import auth, make_config, running

USER = [{"role": "user", "content": "hi"}]

CHAT_CASES = [
    # (body overrides, status, code, param)
    ({"model": None}, 400, "missing_required", "model"),
    ({"model": 5}, 400, "invalid_type", "model"),
    ({"model": "gpt-9-ultra"}, 404, "model_not_found", "model"),
    ({"messages": None}, 400, "missing_required", "messages"),
    ({"messages": []}, 400, "invalid_value", "messages"),
    ({"messages": ["hi"]}, 400, "invalid_type", "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
    ({"messages": [{"role": "user"}]}, 400, "missing_required", "messages[0].content"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "invalid_type", "messages[0].content"),
    ({"temperature": 2.5}, 400, "invalid_value", "temperature"),
    ({"temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"temperature": True}, 400, "invalid_type", "temperature"),
    ({"top_p": -0.1}, 400, "invalid_value", "top_p"),
    ({"presence_penalty": 3}, 400, "invalid_value", "presence_penalty"),
    ({"frequency_penalty": -2.5}, 400, "invalid_value", "frequency_penalty"),
    ({"n": 0}, 400, "invalid_value", "n"),
    ({"n": 5}, 400, "invalid_value", "n"),  # max_n is 4
    ({"n": 1.5}, 400, "invalid_type", "n"),
    ({"max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"max_tokens": "10"}, 400, "invalid_type", "max_tokens"),
    ({"max_tokens": 5, "max_completion_tokens": 5}, 400, "invalid_value", "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
    ({"stop": [1]}, 400, "invalid_type", "stop"),
    ({"stream": "yes"}, 400, "invalid_type", "stream"),
    ({"stream_options": {"include_usage": True}}, 400, "invalid_value", "stream_options"),
    ({"seed": 1.5}, 400, "invalid_type", "seed"),
    ({"user": 7}, 400, "invalid_type", "user"),
    ({"logit_bias": [1]}, 400, "invalid_type", "logit_bias"),
    ({"top_logprobs": 21}, 400, "invalid_value", "top_logprobs"),
]

COMPLETION_CASES = [
    ({"prompt": None}, 400, "missing_required", "prompt"),
    ({"prompt": 12}, 400, "invalid_type", "prompt"),
    ({"prompt": []}, 400, "invalid_type", "prompt"),
    ({"prompt": [f"p{i}" for i in range(21)]}, 400, "invalid_value", "prompt"),
    ({"best_of": 5}, 400, "invalid_value", "best_of"),  # max_best_of is 4
    ({"n": 3, "best_of": 2}, 400, "invalid_value", "best_of"),
    ({"stream": True, "best_of": 2}, 400, "invalid_value", "best_of"),
    ({"logprobs": 6}, 400, "invalid_value", "logprobs"),
    ({"echo": "no"}, 400, "invalid_type", "echo"),
]


@pytest.fixture
async def gw(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as running_gateway:
        yield running_gateway
    # Invalid requests never cost a provider call.
    assert simulator.app.stats.by_route.get("POST /v1/chat/completions", 0) == 0
    assert simulator.app.stats.by_route.get("POST /v1/completions", 0) == 0


def _check(response, status, code, param):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize(("overrides", "status", "code", "param"), CHAT_CASES)
async def test_chat_validation(gw, overrides, status, code, param):
    body = {"model": "fast", "messages": USER, **overrides}
    body = {k: v for k, v in body.items() if v is not None}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=auth())
    _check(response, status, code, param)


@pytest.mark.parametrize(("overrides", "status", "code", "param"), COMPLETION_CASES)
async def test_completions_validation(gw, overrides, status, code, param):
    body = {"model": "fast", "prompt": "hi", **overrides}
    body = {k: v for k, v in body.items() if v is not None}
    response = await gw.client.post("/v1/completions", json=body, headers=auth())
    _check(response, status, code, param)


async def test_wrong_content_type_is_415(gw):
    response = await gw.client.post(
        "/v1/chat/completions",
        content=b"model=fast",
        headers={**auth(), "content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_body_over_limit_is_413(gw):
    huge = "x" * (1_048_576 + 10)
    response = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": huge}]},
        headers=auth(),
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_invalid_json_and_non_object(gw):
    broken = await gw.client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**auth(), "content-type": "application/json"},
    )
    listed = await gw.client.post("/v1/chat/completions", json=[1, 2], headers=auth())
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    assert listed.status_code == 400


async def test_prompt_over_context_window_is_context_length_exceeded(gw):
    # gpt-3.5-turbo-instruct has a 4096-token window.
    long_prompt = "hello " * 5000
    response = await gw.client.post(
        "/v1/completions",
        json={"model": "gpt-3.5-turbo-instruct", "prompt": long_prompt},
        headers=auth(),
    )
    _check(response, 400, "context_length_exceeded", "prompt")
    assert "4096" in response.json()["error"]["message"]


async def test_auth_is_checked_before_validation(gw):
    response = await gw.client.post("/v1/chat/completions", json={"model": 5})
    assert response.status_code == 401


async def test_max_tokens_reject_policy(simulator):
    config = make_config(simulator.url, models={"max_tokens_policy": "reject"})
    async with running(config) as gw:
        too_many = await gw.chat(max_tokens=20_000)
        context = await gw.client.post(
            "/v1/completions",
            json={"model": "gpt-3.5-turbo-instruct", "prompt": "hello " * 3000, "max_tokens": 2000},
            headers=auth(),
        )
    _check(too_many, 400, "invalid_value", "max_tokens")
    assert "16384" in too_many.json()["error"]["message"]
    _check(context, 400, "context_length_exceeded", "prompt")


async def test_max_tokens_clamp_policy_defaults_and_clamps(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        await gw.chat()
        await gw.chat(max_tokens=50_000)
        await gw.client.post(
            "/v1/completions",
            json={"model": "gpt-3.5-turbo-instruct", "prompt": "hello " * 3000, "max_tokens": 4000},
            headers=auth(),
        )
    sent = [r["body"] for r in simulator.app.recent_requests()[-3:]]
    # The model's default_max_tokens, written as max_completion_tokens for chat.
    assert sent[0]["max_completion_tokens"] == 1024
    assert sent[1]["max_tokens"] == 16384  # clamped to max_output_tokens
    assert 0 < sent[2]["max_tokens"] < 4000  # clamped to what the context window leaves
    assert sent[2]["max_tokens"] <= 4096 - 3000


async def test_stop_sequences_are_passed_through(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        response = await gw.chat(stop=["\n", "11.", "END", "###"])
    assert response.status_code == 200
    assert simulator.app.recent_requests()[-1]["body"]["stop"] == ["\n", "11.", "END", "###"]
