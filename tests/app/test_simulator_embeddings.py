"""The simulator's embeddings: OpenAI's shape, deterministic unit vectors, float and base64."""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types import CreateEmbeddingResponse

from app.simulator import SimulatorServer
from app.simulator.text import count_tokens

AUTH = {"authorization": "Bearer sk-test"}


@pytest.fixture
async def sdk(simulator: SimulatorServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=simulator.url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.url, headers=AUTH, timeout=30) as c:
        yield c


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


async def test_float_embeddings_are_unit_vectors_with_counted_usage(client):
    texts = ["The food was delicious.", "Retries need backoff."]
    response = await client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": texts, "encoding_format": "float"},
    )
    body = CreateEmbeddingResponse.model_validate(response.json())
    assert body.object == "list" and body.model == "text-embedding-3-small"
    assert [d.index for d in body.data] == [0, 1]
    assert all(d.object == "embedding" and len(d.embedding) == 1536 for d in body.data)
    assert all(abs(norm(d.embedding) - 1) < 1e-5 for d in body.data)
    assert body.data[0].embedding != body.data[1].embedding
    assert body.usage.prompt_tokens == sum(count_tokens(t) for t in texts)
    assert body.usage.total_tokens == body.usage.prompt_tokens


async def test_same_text_same_vector_wherever_it_stands(sdk):
    alone = await sdk.embeddings.create(
        model="text-embedding-3-small", input="same text", encoding_format="float"
    )
    among = await sdk.embeddings.create(
        model="text-embedding-3-small",
        input=["other", "more", "same text"],
        encoding_format="float",
    )
    assert among.data[2].embedding == alone.data[0].embedding
    large = await sdk.embeddings.create(
        model="text-embedding-3-large", input="same text", encoding_format="float"
    )
    assert len(large.data[0].embedding) == 3072
    assert large.data[0].embedding[:1536] != alone.data[0].embedding


async def test_base64_decodes_to_the_float_vector(sdk, client):
    texts = ["alpha", "beta"]
    floats = await sdk.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format="float"
    )
    # The SDK asks for base64 by default and decodes it to floats.
    decoded = await sdk.embeddings.create(model="text-embedding-3-small", input=texts)
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]
    raw = await client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"},
    )
    encoded = raw.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    little_endian = base64.b64decode(encoded)
    assert len(little_endian) == 4 * 1536
    assert array("f", little_endian).tolist() == floats.data[0].embedding


async def test_dimensions_shorten_and_renormalise_the_full_vector(sdk):
    full = await sdk.embeddings.create(
        model="text-embedding-3-large", input="shorten me", encoding_format="float"
    )
    short = await sdk.embeddings.create(
        model="text-embedding-3-large", input="shorten me", dimensions=256, encoding_format="float"
    )
    vector = short.data[0].embedding
    assert len(vector) == 256 and abs(norm(vector) - 1) < 1e-5
    prefix = full.data[0].embedding[:256]
    scale = norm(prefix)
    assert all(abs(a - b / scale) < 1e-5 for a, b in zip(vector, prefix, strict=True))


async def test_token_arrays_are_inputs_too(sdk):
    one = await sdk.embeddings.create(
        model="text-embedding-3-small", input=[1, 2, 3], encoding_format="float"
    )
    many = await sdk.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3
    assert len(many.data) == 2 and many.usage.prompt_tokens == 5
    assert many.data[0].embedding == one.data[0].embedding


async def test_provider_limits_refuse_like_openai(client):
    async def error(**body):
        response = await client.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", **body}
        )
        assert response.status_code == 400, body
        return response.json()["error"]

    too_many = await error(input=["x"] * 2049)
    assert too_many["param"] == "input" and too_many["code"] == "array_above_max_length"
    assert "2049" in too_many["message"]
    assert (await error(input=["ok", ""]))["param"] == "input"
    assert (await error(input=[{"text": "x"}]))["param"] == "input"
    assert (await error(input="x", dimensions=0))["param"] == "dimensions"
    assert (await error(input="x", dimensions=1537))["param"] == "dimensions"
    assert (await error(input="x", encoding_format="int8"))["param"] == "encoding_format"
    assert "maximum context length is 8192" in (await error(input="word " * 9000))["message"]
    ada = await client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-ada-002", "input": "x", "dimensions": 256},
    )
    assert ada.status_code == 400 and ada.json()["error"]["param"] == "dimensions"
    accepted = await client.post(
        "/v1/embeddings",
        json={
            "model": "text-embedding-3-small",
            "input": ["x"] * 2048,
            "encoding_format": "base64",
        },
    )
    assert accepted.status_code == 200 and len(accepted.json()["data"]) == 2048


async def test_stats_show_the_inputs_of_each_request(sdk, client, simulator):
    simulator.app.reset()
    await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    await sdk.embeddings.create(model="text-embedding-3-small", input="d")
    assert simulator.app.embedding_inputs() == [["a", "b", "c"], ["d"]]
    stats = (await client.get("/_simulator/stats")).json()
    assert stats["embeddings_requests"] == 2 and stats["embeddings_inputs"] == 4
    assert stats["inputs_per_embeddings_request"] == {"1": 1, "3": 1}
    over_http = (await client.get("/_simulator/embeddings")).json()["requests"]
    assert over_http == [["a", "b", "c"], ["d"]]
    recent = (await client.get("/_simulator/requests", params={"path": "/v1/embeddings"})).json()
    assert [r["body"]["input"] for r in recent["requests"]] == [["a", "b", "c"], "d"]


async def test_faults_apply_to_embeddings(client):
    response = await client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"x-simulator-fault": "500"},
    )
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
