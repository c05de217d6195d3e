"""`UpstreamClient.open_raw`, the passthrough call: any route at the model's (or the named)
provider, the client's auth replaced by the provider's, both bodies streamed (never buffered),
retries only when the request body can be sent again, the provider's own answer otherwise."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from app.errors import UpstreamError
from app.upstream import CallStats
from tests.app.providers_harness import (
    MINI,
    RecordingProvider,
    client_for,
    json_answer,
    providers_config,
)

KEY = "azure-key-0123456789abcdef"
CLIENT_HEADERS = {
    "authorization": "Bearer liftoff-client-key",
    "api-key": "client-supplied",
    "cookie": "session=1",
    "connection": "keep-alive",
    "content-type": "application/octet-stream",
    "x-request-id": "req-1",
}


def two_providers(openai_url: str, azure_url: str):
    return providers_config(
        [
            {"name": "openai", "url": openai_url},
            {"name": "azure", "kind": "azure", "url": azure_url, "api_version": "2024-10-21"},
        ],
        {MINI: {"provider": "azure"}},
    )


ENV = {"LIFTOFF_PROVIDER_OPENAI_API_KEY": "sk-openai", "LIFTOFF_PROVIDER_AZURE_API_KEY": KEY}


async def test_request_body_streams_up_with_the_providers_auth_and_query_kept():
    parts = [b"part-1;", b"part-2;", b"part-3"]

    async def upload():
        for part in parts:
            await asyncio.sleep(0.01)
            yield part

    async with RecordingProvider() as openai, RecordingProvider() as azure:
        openai.default = json_answer(200, {"id": "file-1", "object": "file"})
        async with client_for(two_providers(openai.url, azure.url), ENV) as client:
            headers = {**CLIENT_HEADERS, "content-length": str(sum(map(len, parts)))}
            stats = CallStats()
            reply = await client.open_raw(
                "POST", "/v1/files", headers, upload(), query="purpose=batch&x=1", stats=stats
            )
            body = b"".join([chunk async for chunk in reply.chunks()])
            reply.close()
    (seen,) = openai.seen  # no model, no provider: the first provider
    assert seen.body == b"part-1;part-2;part-3"
    assert seen.path == "/v1/files" and seen.query == {"purpose": "batch", "x": "1"}
    assert seen.headers["authorization"] == "Bearer sk-openai"
    assert "api-key" not in seen.headers and "cookie" not in seen.headers
    assert seen.headers["x-request-id"] == "req-1"
    assert seen.headers["content-length"] == "20"  # sent as the client sent it, not chunked
    assert "transfer-encoding" not in seen.headers
    assert reply.status == 200 and reply.provider == "openai"
    assert body == b'{"id":"file-1","object":"file"}'
    assert stats.attempts == 1 and azure.seen == []


async def test_azure_route_by_model_gets_its_url_shape_and_api_key():
    async with (
        RecordingProvider() as openai,
        RecordingProvider() as azure,
        client_for(two_providers(openai.url, azure.url), ENV) as client,
    ):
        speech = await client.open_raw(
            "POST", "/v1/audio/speech", CLIENT_HEADERS, b'{"input": "hi"}', model=MINI
        )
        speech.close()
        files = await client.open_raw(
            "GET", "/v1/files", CLIENT_HEADERS, None, provider="azure", query="api-version=x"
        )
        files.close()
    first, second = azure.seen
    assert first.path == f"/openai/deployments/{MINI}/audio/speech"
    assert first.query == {"api-version": "2024-10-21"}
    assert first.headers["api-key"] == KEY and "authorization" not in first.headers
    assert first.body == b'{"input": "hi"}'
    # A resource-wide route; the provider's api-version wins over the client's.
    assert (second.method, second.path) == ("GET", "/openai/files")
    assert second.query == {"api-version": "2024-10-21"}
    assert openai.seen == []


async def test_response_body_is_relayed_as_it_arrives_not_buffered():
    release = asyncio.Event()

    async def slow(request, seen):
        response = web.StreamResponse(headers={"content-type": "audio/mpeg"})
        await response.prepare(request)
        await response.write(b"first")
        await release.wait()  # the rest only once the client has the first part
        await response.write(b"second")
        await response.write_eof()
        return response

    async with RecordingProvider(default=slow) as server:
        config = providers_config([{"name": "openai", "url": server.url}])
        async with client_for(config) as client:
            reply = await client.open_raw("POST", "/v1/audio/speech", {}, b"{}")
            chunks = reply.chunks()
            first = await asyncio.wait_for(anext(chunks), timeout=5)
            release.set()
            rest = b"".join([chunk async for chunk in chunks])
            reply.close()
    assert first == b"first" and rest == b"second"
    relayed = dict(reply.headers)
    assert relayed["Content-Type"] == "audio/mpeg"
    assert "Transfer-Encoding" not in relayed  # hop-by-hop: not for the client
    assert all(name.lower() != "transfer-encoding" for name, _ in reply.headers)


async def test_a_replayable_body_is_retried_a_streamed_one_is_not():
    busy = json_answer(503, {"error": {"message": "busy"}}, {"retry-after-ms": "10"})

    async def upload():
        yield b"once"

    async with RecordingProvider() as server:
        config = providers_config([{"name": "openai", "url": server.url}])
        async with client_for(config) as client:
            server.answers = [busy]
            retried = await client.open_raw("POST", "/v1/images/generations", {}, b"{}")
            retried.close()
            server.answers = [busy]
            with pytest.raises(UpstreamError) as err:
                await client.open_raw("POST", "/v1/uploads/u/parts", {}, upload())
    assert retried.status == 200
    assert [s.path for s in server.seen] == [
        "/v1/images/generations",
        "/v1/images/generations",
        "/v1/uploads/u/parts",  # sent once: its body cannot be sent again
    ]
    assert err.value.status == 503


async def test_the_providers_own_404_comes_back_as_it_is():
    missing = json_answer(404, {"error": {"message": "Invalid URL (GET /v1/nope)"}})
    async with RecordingProvider(default=missing) as server:
        config = providers_config([{"name": "openai", "url": server.url}])
        async with client_for(config) as client:
            reply = await client.open_raw("GET", "/v1/nope", {}, None)
            body = b"".join([chunk async for chunk in reply.chunks()])
            reply.close()
    assert reply.status == 404
    assert b"Invalid URL" in body
    assert len(server.seen) == 1
