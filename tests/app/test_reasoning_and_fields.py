"""Reasoning models, new request parameters and public model names (issue 8 §5), through the
official SDK against the gateway and the simulator (which refuses `max_tokens` for reasoning
models, as the provider does)."""

from __future__ import annotations

import time
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

MESSAGES = [{"role": "user", "content": "Think about it"}]


@pytest.fixture(scope="module")
def gateway(simulator) -> Iterator[tuple[str, object]]:
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    app = create_app(make_config(simulator.url), env)
    with served(app) as url:
        yield url, app.state.gateway


def sdk(url: str, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def last_body(simulator) -> dict:
    return simulator.app.recent_requests()[-1]["body"]


def usage_after(client: openai.OpenAI, before: dict) -> dict:
    """The key's /v1/usage once the request after `before` is settled (settling follows the
    response, off its path)."""
    for _ in range(100):
        after = client.get("/usage", cast_to=object)["usage"]
        if after["requests"] > before["requests"]:
            return after
        time.sleep(0.02)
    raise AssertionError("the request was never settled")


def test_default_cap_is_written_as_max_completion_tokens(gateway, simulator) -> None:
    url, _ = gateway
    sdk(url).chat.completions.create(model="fast", messages=MESSAGES)
    body = last_body(simulator)
    assert body["max_completion_tokens"] == 1024 and "max_tokens" not in body


def test_a_clients_own_cap_is_forwarded_under_the_name_it_used(gateway, simulator) -> None:
    url, _ = gateway
    sdk(url).chat.completions.create(model="fast", messages=MESSAGES, max_tokens=7)
    body = last_body(simulator)
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body
    sdk(url).chat.completions.create(model="fast", messages=MESSAGES, max_completion_tokens=9)
    body = last_body(simulator)
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


def test_reasoning_model_by_its_public_name_counts_reasoning_tokens(gateway, simulator) -> None:
    url, gw = gateway
    completion = sdk(url).chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert completion.model == "o4-mini-2025-04-16"
    reasoning = completion.usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0 and completion.usage.completion_tokens > reasoning
    assert last_body(simulator)["max_completion_tokens"] == 25_000  # the catalog's default cap
    spec = gw.config.models.catalog["o4-mini-2025-04-16"]
    assert spec.reasoning is True
    # A client's own max_tokens goes to the provider as given, which refuses it for this model.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(url).chat.completions.create(model="o4-mini", messages=MESSAGES, max_tokens=50)
    assert refused.value.param == "max_tokens"


def test_reasoning_tokens_are_shown_and_priced_as_output(gateway, simulator) -> None:
    url, gw = gateway
    client = sdk(url, BOB)
    before = client.get("/usage", cast_to=object)["usage"]
    completion = client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, extra_body={"reasoning_effort": "high"}
    )
    after = usage_after(client, before)
    usage = completion.usage
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning >= 512  # effort "high" in the simulator
    assert after["reasoning_tokens"] - before["reasoning_tokens"] == reasoning
    assert after["completion_tokens"] - before["completion_tokens"] == usage.completion_tokens
    spec = gw.config.models.catalog["gpt-5-mini-2025-08-07"]
    expected = (
        usage.prompt_tokens * spec.input_usd_per_1m
        + usage.completion_tokens * spec.output_usd_per_1m  # reasoning included, as output
    ) / 1e6
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_a_broken_reasoning_stream_is_charged_its_cap(gateway) -> None:
    """No usage chunk: the hidden reasoning tokens may all have been spent."""
    url, _ = gateway
    client = sdk(url, BOB)
    before = client.get("/usage", cast_to=object)["usage"]
    stream = client.chat.completions.create(
        model="o4-mini",
        messages=[{"role": "user", "content": "cut"}],
        stream=True,
        max_completion_tokens=300,
        extra_headers={"x-simulator-fault": "cut"},
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    after = usage_after(client, before)
    assert after["completion_tokens"] - before["completion_tokens"] == 300


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt_cache_retention": "24h"},
        {"prompt_cache_options": {"mode": "explicit"}},
        {"moderation": {"enabled": True}},
        {"a_parameter_from_next_month": [1, 2, 3]},
    ],
)
def test_unknown_fields_are_forwarded_unchanged(gateway, simulator, extra) -> None:
    url, _ = gateway
    sdk(url).chat.completions.create(model="fast", messages=MESSAGES, extra_body=extra)
    body = last_body(simulator)
    for name, value in extra.items():
        assert body[name] == value


def test_unknown_fields_on_completions_are_forwarded_too(gateway, simulator) -> None:
    url, _ = gateway
    sdk(url).completions.create(
        model="fast", prompt="Once", max_tokens=3, extra_body={"new_knob": True}
    )
    assert last_body(simulator)["new_knob"] is True


def test_known_fields_are_still_validated(gateway) -> None:
    url, _ = gateway
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(url).chat.completions.create(
            model="fast", messages=MESSAGES, temperature=3, extra_body={"new_knob": 1}
        )
    assert bad.value.param == "temperature"


def test_stream_options_sub_fields_are_kept(gateway, simulator) -> None:
    url, _ = gateway
    chunks = list(
        sdk(url).chat.completions.create(
            model="fast",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": False, "include_obfuscation": False},
        )
    )
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    # The gateway still asks for usage (it settles with it) and keeps the client's other options.
    options = last_body(simulator)["stream_options"]
    assert options == {"include_usage": True, "include_obfuscation": False}


def test_unknown_fields_stay_in_the_cache_key(gateway) -> None:
    url, _ = gateway
    client = sdk(url)

    def ask(value: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="fast",
            messages=[{"role": "user", "content": "cache key check"}],
            temperature=0,
            extra_body={"some_new_param": value},
        )
        return raw.headers["x-liftoff-cache"]

    assert ask(1) == "miss"
    for _ in range(50):  # the cache write lands after the response
        if ask(1) == "hit":
            break
    else:
        pytest.fail("the answer was never cached")
    assert ask(2) == "miss"


def test_public_names_resolve_to_their_pinned_versions(gateway) -> None:
    url, _ = gateway
    client = sdk(url)
    listed = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "o4-mini", "gpt-5-mini"} <= listed
    for public, pinned in (
        ("gpt-4o", "gpt-4o-2024-08-06"),
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ):
        completion = client.chat.completions.create(model=public, messages=MESSAGES, max_tokens=5)
        assert completion.model == pinned
