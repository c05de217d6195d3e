"""Hostile field values (issue 10): client strings are echoed in errors only as a bounded prefix,
and `logit_bias` is held to OpenAI's contract (token id -> number in [-100, 100], bounded size).

Through the real OpenAI SDK against a uvicorn-served gateway, and httpx against the ASGI app."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import orjson
import pytest

from app.errors import (
    ECHO_MAX_CHARS,
    MESSAGE_MAX_CHARS,
    PARAM_MAX_CHARS,
    UpstreamError,
    to_api_error,
)
from app.schemas import MAX_LOGIT_BIAS_ENTRIES
from app.server import create_app
from tests.app.gateway_harness import (
    ALICE,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)

USER = [{"role": "user", "content": "hi"}]
HUGE = "m" * 100_000  # the 100 KB model name
ELLIPSIS = "\u2026"


@pytest.fixture(scope="module")
def gateway_url(simulator) -> Iterator[str]:
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    with served(create_app(make_config(simulator.url), env)) as url:
        yield url


@pytest.fixture
async def gw(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as running_gateway:
        yield running_gateway


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=ALICE, max_retries=0, timeout=30)


def _error(response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


def _assert_bounded_echo(message: str, value: str) -> None:
    """The message quotes a prefix of `value` ending in an ellipsis, never the whole of it."""
    assert len(message) < ECHO_MAX_CHARS + 200, len(message)
    assert value[: ECHO_MAX_CHARS - 1] + ELLIPSIS in message


# --- bounded echo ------------------------------------------------------------------------------


def test_huge_unknown_model_is_echoed_as_a_bounded_prefix_through_the_sdk(simulator, gateway_url):
    simulator.app.reset()
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(gateway_url).chat.completions.create(model=HUGE, messages=USER)
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    _assert_bounded_echo(error["message"], HUGE)
    assert len(caught.value.response.content) < 1000
    assert simulator.app.stats.by_route.get("POST /v1/chat/completions", 0) == 0


def test_real_model_names_are_still_echoed_whole(gateway_url):
    # A fine-tuned name with OpenAI's longest (64-character) suffix fits in the bound.
    name = "ft:gpt-4o-mini-2024-07-18:acme-research:" + "s" * 64 + ":AbC123xy"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(gateway_url).completions.create(model=name, prompt="hi")
    assert f"'{name}'" in caught.value.body["message"]
    assert ELLIPSIS not in caught.value.body["message"]


async def test_unknown_model_on_the_models_route_is_bounded(gw):
    name = "x" * 5000  # within any URL length limit, far over the echo bound
    response = await gw.client.get(f"/v1/models/{name}", headers=auth())
    assert response.status_code == 404
    _assert_bounded_echo(_error(response)["message"], name)


async def test_completions_unknown_model_is_bounded(gw):
    response = await gw.client.post(
        "/v1/completions", json={"model": HUGE, "prompt": "hi"}, headers=auth()
    )
    assert response.status_code == 404
    _assert_bounded_echo(_error(response)["message"], HUGE)


async def test_huge_message_role_is_echoed_as_a_bounded_prefix(gw):
    response = await gw.chat(messages=[{"role": HUGE, "content": "hi"}])
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "messages[0].role"
    _assert_bounded_echo(error["message"], "'" + HUGE)


async def test_huge_non_string_role_is_echoed_as_a_bounded_prefix(gw):
    role = {"nested": HUGE}
    response = await gw.chat(messages=[{"role": role, "content": "hi"}])
    assert response.status_code == 400
    _assert_bounded_echo(_error(response)["message"], repr(role))


def test_provider_error_quoting_a_client_value_is_bounded():
    # A forwarded unknown field the provider refuses comes back in its own message and param.
    body = {"error": {"message": f"Unknown parameter: '{HUGE}'.", "type": "x", "param": HUGE}}
    payload = orjson.loads(to_api_error(UpstreamError(400, body)).body())["error"]
    assert len(payload["message"]) == MESSAGE_MAX_CHARS
    assert payload["message"].endswith(ELLIPSIS)
    assert len(payload["param"]) == PARAM_MAX_CHARS and payload["param"].endswith(ELLIPSIS)


# --- logit_bias --------------------------------------------------------------------------------

BAD_LOGIT_BIAS = [
    # (logit_bias, code)
    ({"hello": 1}, "invalid_value"),  # a word, not a token id
    ({"-1": 1}, "invalid_value"),
    ({"1.5": 1}, "invalid_value"),
    ({" 12": 1}, "invalid_value"),
    ({"": 1}, "invalid_value"),
    ({"\u00b2": 1}, "invalid_value"),  # a digit to str.isdigit, not an integer
    ({"50256": 101}, "invalid_value"),
    ({"50256": -100.5}, "invalid_value"),
    ({"50256": "-100"}, "invalid_type"),
    ({"50256": True}, "invalid_type"),
    ({"50256": None}, "invalid_type"),
    ({"50256": [1]}, "invalid_type"),
    ({str(i): -100 for i in range(10_000)}, "invalid_value"),  # the hostile corpus' 10,000 keys
    ({str(i): 1 for i in range(MAX_LOGIT_BIAS_ENTRIES + 1)}, "invalid_value"),
    ([1], "invalid_type"),
    ("50256", "invalid_type"),
]


@pytest.mark.parametrize(
    ("route", "base"),
    [
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/completions", {"prompt": "hi"}),
    ],
)
@pytest.mark.parametrize(("logit_bias", "code"), BAD_LOGIT_BIAS)
async def test_bad_logit_bias_is_refused_before_the_provider(
    gw, simulator, route, base, logit_bias, code
):
    body = {"model": "fast", **base, "logit_bias": logit_bias}
    response = await gw.client.post(route, json=body, headers=auth())
    assert response.status_code == 400, response.text
    error = _error(response)
    assert (error["param"], error["code"]) == ("logit_bias", code)
    assert "logit_bias" in error["message"]
    assert simulator.app.stats.by_route.get(f"POST {route}", 0) == 0


async def test_huge_logit_bias_key_is_echoed_as_a_bounded_prefix(gw):
    response = await gw.chat(logit_bias={HUGE: 1})
    assert response.status_code == 400
    _assert_bounded_echo(_error(response)["message"], HUGE)


@pytest.mark.parametrize(
    ("route", "base"),
    [
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/completions", {"prompt": "hi"}),
    ],
)
async def test_valid_logit_bias_is_forwarded_unchanged(gw, simulator, route, base):
    bias = {"50256": -100, "0": 100, "1734": 0.5, "007": -3}
    bias |= {str(100 + i): -1 for i in range(MAX_LOGIT_BIAS_ENTRIES - len(bias))}
    body = {"model": "fast", **base, "logit_bias": bias}
    response = await gw.client.post(route, json=body, headers=auth())
    assert response.status_code == 200, response.text
    assert simulator.app.recent_requests()[-1]["body"]["logit_bias"] == bias


def test_bad_logit_bias_through_the_sdk(simulator, gateway_url):
    simulator.app.reset()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_url).chat.completions.create(
            model="fast", messages=USER, logit_bias={"hello": -100}
        )
    assert caught.value.param == "logit_bias"
    assert caught.value.code == "invalid_value"
    assert "Invalid key in 'logit_bias': hello." in caught.value.body["message"]
    completion = sdk(gateway_url).completions.create(
        model="fast", prompt="hi", max_tokens=5, logit_bias={"50256": -100}
    )
    assert completion.choices
    assert simulator.app.stats.by_route.get("POST /v1/completions", 0) == 1
