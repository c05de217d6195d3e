"""/v1/embeddings through the gateway: per-input cache, batching, limits, the SDKs as clients."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest
from openai import OpenAI

from tests.app.gateway_harness import (
    ALICE,
    BOB,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)

SMALL = "text-embedding-3-small"


async def embed(gw, key: str = ALICE, headers=None, **body):
    payload = {"model": SMALL, **body}
    return await gw.client.post(
        "/v1/embeddings", json=payload, headers={**auth(key), **(headers or {})}
    )


def sent_inputs(simulator) -> list[list]:
    return simulator.app.embedding_inputs()


async def test_a_list_with_cached_items_sends_only_the_new_ones_and_keeps_the_order(
    simulator, redis_url
):
    simulator.app.reset()
    async with running(make_config(simulator.url, redis_url)) as gw:
        first = await embed(gw, input=[f"text {i}" for i in range(90)])
        await gw.gateway.flush()
        mixed = [f"text {i}" for i in range(100)]
        mixed.reverse()  # cached ones spread over the list, not a prefix
        second = await embed(gw, input=mixed)
        await gw.gateway.flush()
        alone = await embed(gw, input=mixed, headers={"x-liftoff-cache": "bypass"})
    assert first.status_code == second.status_code == alone.status_code == 200
    assert second.headers["x-liftoff-cache-hits"] == "90/100"
    assert second.headers["x-liftoff-cache"] == "miss"
    calls = sent_inputs(simulator)
    assert len(calls[0]) == 90
    assert sorted(calls[1]) == sorted(f"text {i}" for i in range(90, 100))  # only the new ten
    assert len(calls[2]) == 100  # bypassed: all of them
    data = second.json()["data"]
    assert [d["index"] for d in data] == list(range(100))
    # Every vector equals the provider's own for that text (the uncached answer).
    assert [d["embedding"] for d in data] == [d["embedding"] for d in alone.json()["data"]]
    assert second.json()["usage"]["prompt_tokens"] == alone.json()["usage"]["prompt_tokens"]


async def test_all_cached_makes_no_provider_call_and_costs_nothing(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        await embed(gw, input="hello")
        await gw.gateway.flush()
        hit = await embed(gw, input="hello")
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
        metrics = gw.gateway.metrics.render().decode()
    assert hit.headers["x-liftoff-cache"] == "hit"
    assert hit.headers["x-liftoff-cache-hits"] == "1/1"
    assert len(sent_inputs(simulator)) == 1
    assert usage["requests"] == 2
    # The hit's tokens are counted as the key's usage, its price as saved, not spent.
    assert usage["prompt_tokens"] == 2
    assert usage["spent_usd"] == pytest.approx(0.02 / 1e6)
    assert usage["saved_usd"] == pytest.approx(0.02 / 1e6)
    assert usage["reserved_usd"] == 0
    assert 'liftoff_cache_results_total{result="hit"} 1.0' in metrics


async def test_the_cache_key_covers_model_dimensions_and_encoding(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        for body in (
            {"input": "same"},
            {"input": "same", "dimensions": 256},
            {"input": "same", "encoding_format": "base64"},
            {"input": "same", "model": "text-embedding-3-large"},
        ):
            response = await embed(gw, **body)
            await gw.gateway.flush()
            assert response.headers["x-liftoff-cache"] == "miss", body
        native = await embed(gw, input="same", dimensions=1536)  # the native length: no dims
        other_key = await embed(gw, key=BOB, input="same")
    assert native.headers["x-liftoff-cache"] == "hit"
    assert other_key.headers["x-liftoff-cache"] == "miss"  # cache.scope = key
    assert len(sent_inputs(simulator)) == 5


async def test_concurrent_single_inputs_share_one_provider_call(simulator):
    simulator.app.reset()
    config = make_config(simulator.url, batching={"enabled": True, "window_ms": 20})
    async with running(config) as gw:
        answers = await asyncio.gather(*(embed(gw, input=f"item {i}") for i in range(12)))
        other = await embed(gw, input="item 0", dimensions=64)  # other parameters: own call
    assert all(a.status_code == 200 for a in answers)
    calls = sent_inputs(simulator)
    assert sum(len(c) for c in calls[:-1]) == 12
    assert len(calls) - 1 < 12, calls  # batched: fewer provider calls than requests
    assert calls[-1] == ["item 0"]
    assert len(other.json()["data"][0]["embedding"]) == 64
    for i, answer in enumerate(answers):
        body = answer.json()
        assert [d["index"] for d in body["data"]] == [0]
        alone = await_vector(simulator, f"item {i}")
        assert body["data"][0]["embedding"] == pytest.approx(alone, abs=1e-7)
    # The batch's usage is shared out: the callers' tokens add up to what the provider billed.
    client = OpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test")
    billed = client.embeddings.create(model=SMALL, input=[f"item {i}" for i in range(12)])
    assert sum(a.json()["usage"]["prompt_tokens"] for a in answers) == billed.usage.prompt_tokens


def await_vector(simulator, text: str) -> list[float]:
    client = OpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test")
    return client.embeddings.create(model=SMALL, input=text).data[0].embedding


async def test_validation_errors_are_openai_shaped(simulator):
    async with running(make_config(simulator.url)) as gw:
        cases = {
            "input": await embed(gw, input=[]),
            "input[1]": await embed(gw, input=["ok", ""]),
            "encoding_format": await embed(gw, input="x", encoding_format="int8"),
            "dimensions": await embed(gw, input="x", dimensions=5000),
            "dimensions ada": await embed(
                gw, input="x", dimensions=64, model="text-embedding-ada-002"
            ),
            "model": await embed(gw, input="x", model="fast"),
            "too many": await embed(gw, input=["x"] * 2049),
        }
        chat_with_embedding_model = await gw.chat(model=SMALL)
    for name, response in cases.items():
        assert response.status_code == 400, name
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error", name
        assert error["param"] in ("input", "input[1]", "encoding_format", "dimensions", "model")
    assert cases["too many"].json()["error"]["param"] == "input"
    assert "2048" in cases["too many"].json()["error"]["message"]
    assert chat_with_embedding_model.status_code == 400
    assert "/v1/embeddings" in chat_with_embedding_model.json()["error"]["message"]


async def test_an_input_over_the_context_window_is_refused_before_any_call(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        response = await embed(gw, input=["short", "word " * 9000])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "input 1" in response.json()["error"]["message"]
    assert sent_inputs(simulator) == []


async def test_limits_and_budgets_count_embedding_tokens(simulator, redis_url):
    keys = client_keys_json(alice={"tpm": 1000})
    async with running(make_config(simulator.url, redis_url), {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        ok = await embed(gw, input=["one two three"] * 10)  # 30 tokens
        refused = await embed(gw, input=["four five six seven " * 20] * 10)  # 800 tokens
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()["usage"]
    assert ok.status_code == 200
    assert usage["prompt_tokens"] == 30 and usage["reserved_usd"] == 0
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_sdk_float_and_base64_round_trip(simulator):
    config = make_config(simulator.url)
    from app.server import create_app

    env = {"LIFTOFF_UPSTREAM_API_KEY": "sk-provider", "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    with served(create_app(config, env)) as url:
        client = OpenAI(base_url=url, api_key=ALICE)
        # The SDK asks for base64 when no format is given, and decodes it itself.
        floats = client.embeddings.create(model=SMALL, input=["alpha", "beta"])
        plain = client.embeddings.create(
            model=SMALL, input=["alpha", "beta"], encoding_format="float"
        )
        packed = client.embeddings.create(
            model=SMALL, input=["alpha", "beta"], encoding_format="base64"
        )
        tokens = client.embeddings.create(model=SMALL, input=[[1, 2, 3], [4, 5]])
        short = client.embeddings.create(model=SMALL, input="alpha", dimensions=32)
    assert [len(d.embedding) for d in floats.data] == [1536, 1536]
    for a, b, c in zip(floats.data, plain.data, packed.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-7)
        raw = base64.b64decode(c.embedding)
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == a.embedding
    assert floats.usage.prompt_tokens >= 2
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5
    assert len(short.data[0].embedding) == 32


def test_langchain_embed_documents_sends_only_new_texts(simulator):
    from langchain_openai import OpenAIEmbeddings

    from app.server import create_app

    simulator.app.reset()
    env = {"LIFTOFF_UPSTREAM_API_KEY": "sk-provider", "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    with served(create_app(make_config(simulator.url), env)) as url:
        embeddings = OpenAIEmbeddings(
            model=SMALL, base_url=url, api_key=ALICE, check_embedding_ctx_length=False
        )
        known = embeddings.embed_documents(["the cat", "the dog"])
        simulator.app.reset()
        import time

        time.sleep(0.2)  # the cache fill runs after the response
        mixed = embeddings.embed_documents(["the cat", "a bird", "the dog", "a fish"])
    assert mixed[0] == known[0] and mixed[2] == known[1]
    assert sorted(x for call in sent_inputs(simulator) for x in call) == ["a bird", "a fish"]
