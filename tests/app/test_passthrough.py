"""Routes passed through to the provider: files, uploads, batches, vector stores, images, audio,
moderations. Client auth and request limits apply, bodies stream both ways, never cached."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import httpx
import pytest
from openai import OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from app.server import create_app
from tests.app.gateway_harness import ALICE, PROVIDER_KEY, client_keys_json, make_config, served

ENV = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}


def gateway(upstream_url: str, env=None, **sections):
    return served(create_app(make_config(upstream_url, **sections), {**ENV, **(env or {})}))


def test_each_family_through_the_sdk(simulator):
    simulator.app.reset()
    with gateway(simulator.url) as url:
        client = OpenAI(base_url=url, api_key=ALICE)
        uploaded = client.files.create(
            file=("a.jsonl", io.BytesIO(b'{"a":1}\n' * 1000)), purpose="batch"
        )
        listed = client.files.list(limit=5)
        content = client.files.content(uploaded.id).read()
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        fetched = client.batches.retrieve(batch.id)
        moderation = client.moderations.create(input="hello there")
        image = client.images.generate(prompt="a lighthouse", model="gpt-image-1")
        transcript = client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", io.BytesIO(b"RIFF" + b"\0" * 4000))
        )
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hi").read()
        store = client.vector_stores.create(name="docs")
        upload = client.uploads.create(
            bytes=6, filename="u.txt", mime_type="text/plain", purpose="assistants"
        )
        part = client.uploads.parts.create(upload_id=upload.id, data=b"abcdef")
        done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
        deleted = client.files.delete(uploaded.id)
    assert uploaded.bytes == 8000 and content == b'{"a":1}\n' * 1000
    assert any(f.id == uploaded.id for f in listed.data)
    assert fetched.id == batch.id
    assert moderation.results and image.data[0].b64_json
    assert transcript.text and speech[:2] == b"\xff\xfb"
    assert store.name == "docs" and done.status == "completed" and deleted.deleted
    seen = simulator.app.recent_requests()
    assert {r["path"].split("/")[2] for r in seen} >= {
        "files",
        "batches",
        "moderations",
        "images",
        "audio",
        "vector_stores",
        "uploads",
    }
    # The provider saw the provider's key, never the client's.
    provider_key = hashlib.sha256(PROVIDER_KEY.encode()).hexdigest()[:16]
    assert {r["api_key_sha256"] for r in seen} == {provider_key}


def test_unknown_routes_get_the_providers_own_404(simulator):
    with gateway(simulator.url) as url:
        headers = {"authorization": f"Bearer {ALICE}"}
        missing = httpx.get(f"{url}/files/file-nope", headers=headers)
        no_route = httpx.post(f"{url}/images/nothing", headers=headers, json={})
        no_auth = httpx.get(f"{url}/files")
    assert missing.status_code == 404 and "file-nope" in missing.json()["error"]["message"]
    assert no_route.status_code == 404
    assert no_route.json()["error"]["message"] == "Invalid URL (POST /v1/images/nothing)"
    assert no_auth.status_code == 401


class Recorder:
    """A provider that proves streaming: it answers only once the gateway passed on part of
    the body, and holds its answer's second half until the client read the first."""

    def __init__(self) -> None:
        self.first_chunk_up = threading.Event()
        self.first_chunk_down = threading.Event()
        self.received: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.queries: list[str] = []

        async def upload(request: Request) -> JSONResponse:
            self.headers.append(dict(request.headers))
            async for chunk in request.stream():
                if chunk:
                    self.received.append(len(chunk))
                    self.first_chunk_up.set()
            return JSONResponse({"id": "file-1", "object": "file", "bytes": sum(self.received)})

        async def content(request: Request) -> StreamingResponse:
            self.queries.append(request.url.query)

            async def body():
                yield b"first half;"
                for _ in range(500):  # bounded: 5 s
                    if self.first_chunk_down.is_set():
                        break
                    await __import__("asyncio").sleep(0.01)
                yield b"second half"

            return StreamingResponse(body(), media_type="application/octet-stream")

        async def image(request: Request) -> JSONResponse:
            await request.body()
            usage = {"input_tokens": 50, "output_tokens": 200, "total_tokens": 250}
            return JSONResponse({"created": 1, "data": [{"b64_json": "AA=="}], "usage": usage})

        self.app = Starlette(
            routes=[
                Route("/v1/files", upload, methods=["POST"]),
                Route("/v1/files/{id}/content", content, methods=["GET"]),
                Route("/v1/images/generations", image, methods=["POST"]),
                Route("/v1/moderations", image, methods=["POST"]),
            ]
        )


@pytest.fixture
def recorder():
    provider = Recorder()
    with served(provider.app) as url:
        yield provider, url.removesuffix("/v1")


def test_request_and_response_bodies_stream_without_buffering(recorder):
    provider, provider_url = recorder
    waited: list[bool] = []

    def upload_body():
        yield b"x" * 65536
        waited.append(provider.first_chunk_up.wait(5))  # set only if the gateway passed it on
        yield b"y" * 65536

    with gateway(provider_url) as url:
        headers = {"authorization": f"Bearer {ALICE}", "content-type": "application/octet-stream"}
        up = httpx.post(f"{url}/files", headers=headers, content=upload_body(), timeout=20)
        firsts: list[float] = []
        with httpx.stream(
            "GET", f"{url}/files/file-1/content?a=1&b=two", headers=headers, timeout=20
        ) as r:
            parts = []
            for chunk in r.iter_raw():
                parts.append(chunk)
                firsts.append(time.monotonic())
                provider.first_chunk_down.set()
    assert up.status_code == 200 and up.json()["bytes"] == 131072
    assert waited == [True]  # the first chunk reached the provider before the second left
    assert b"".join(parts) == b"first half;second half"
    assert len(parts) >= 2  # the first half arrived on its own, before the provider's second
    assert provider.headers[0]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert provider.queries == ["a=1&b=two"]


def test_per_route_body_limits(recorder):
    _, provider_url = recorder
    with gateway(provider_url) as url:
        headers = {"authorization": f"Bearer {ALICE}", "content-type": "application/json"}
        # JSON-only families take server.max_body_bytes (1 MiB by default).
        declared = httpx.post(f"{url}/moderations", headers=headers, content=b"x" * (2 << 20))

        def chunks():  # no content-length: counted as it streams
            for _ in range(3):
                yield b"z" * (1 << 20)

        streamed = httpx.post(f"{url}/moderations", headers=headers, content=chunks())
        small = httpx.post(f"{url}/files", headers=headers, content=b"x" * (2 << 20))
    assert declared.status_code == 413 and declared.json()["error"]["type"]
    assert streamed.status_code == 413
    assert small.status_code == 200  # files: up to 513 MiB


def test_usage_in_an_answer_is_accounted_and_limits_apply(recorder):
    _, provider_url = recorder
    keys = client_keys_json(alice={"rpm": 1})
    with gateway(provider_url, {"LIFTOFF_CLIENT_KEYS": keys}) as url:
        headers = {"authorization": f"Bearer {ALICE}"}
        first = httpx.post(f"{url}/images/generations", headers=headers, json={"prompt": "x"})
        second = httpx.post(f"{url}/images/generations", headers=headers, json={"prompt": "y"})
        time.sleep(0.2)  # settlement runs after the response
        usage = httpx.get(f"{url}/usage", headers=headers).json()["usage"]
        metrics = httpx.get(f"{url.removesuffix('/v1')}/metrics").text
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"]
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert usage["requests"] == 1
    assert usage["prompt_tokens"] == 50 and usage["completion_tokens"] == 200
    assert 'liftoff_requests_total{model="-",route="images",status="200"} 1.0' in metrics
