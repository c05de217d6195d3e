"""The simulator's other endpoint families, through the openai SDK: files, uploads, batches,
vector stores, images, audio; unknown routes answer as OpenAI does."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from app.simulator import SimulatorServer
from app.simulator.multipart import read_form
from app.simulator.wire import BadRequest, Request

AUTH = {"authorization": "Bearer sk-test"}
BATCH_LINES = b"".join(
    b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' % i
    for i in range(3)
)


@pytest.fixture
async def sdk(simulator: SimulatorServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=simulator.url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


async def test_files_upload_list_content_delete(sdk, simulator):
    content = os.urandom(5 * 1024 * 1024 + 17)  # several MB, arriving in many chunks
    uploaded = await sdk.files.create(file=("blob.bin", content), purpose="user_data")
    assert uploaded.object == "file" and uploaded.id.startswith("file-")
    assert uploaded.bytes == len(content) and uploaded.filename == "blob.bin"
    assert uploaded.purpose == "user_data" and uploaded.status == "processed"
    record = simulator.app.recent_requests("/v1/files")[-1]
    assert record["body"] == {
        "purpose": "user_data",
        "file": {"filename": "blob.bin", "bytes": len(content)},
    }
    batch_file = await sdk.files.create(file=("in.jsonl", BATCH_LINES), purpose="batch")
    listed = [f.id async for f in sdk.files.list(purpose="user_data")]
    assert uploaded.id in listed and batch_file.id not in listed
    assert (await sdk.files.retrieve(uploaded.id)).bytes == len(content)
    downloaded = await sdk.files.content(uploaded.id)
    assert downloaded.content == content
    deleted = await sdk.files.delete(uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.files.retrieve(uploaded.id)
    assert missing.value.body["message"] == f"No such File object: {uploaded.id}"


async def test_file_uploads_are_validated(sdk):
    with pytest.raises(openai.BadRequestError) as purpose:
        await sdk.files.create(file=("a.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]
    assert purpose.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError, match="jsonl"):
        await sdk.files.create(file=("a.txt", b"x"), purpose="batch")
    async with httpx.AsyncClient(base_url=str(sdk.base_url), headers=AUTH) as client:
        not_multipart = await client.post("files", json={"purpose": "batch"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["error"]["message"]


async def test_faults_apply_to_multipart_uploads(sdk):
    with pytest.raises(openai.RateLimitError):
        await sdk.files.create(
            file=("a.bin", os.urandom(300_000)),
            purpose="user_data",
            extra_headers={"x-simulator-fault": "429"},
        )


async def test_uploads_in_parts_complete_into_a_file(sdk):
    pieces = [os.urandom(1_000_000), os.urandom(700_000)]
    upload = await sdk.uploads.create(
        bytes=sum(map(len, pieces)),
        filename="big.jsonl",
        mime_type="application/jsonl",
        purpose="batch",
    )
    assert upload.status == "pending" and upload.object == "upload"
    parts = [await sdk.uploads.parts.create(upload.id, data=p) for p in pieces]
    assert all(p.object == "upload.part" and p.upload_id == upload.id for p in parts)
    with pytest.raises(openai.BadRequestError, match="does not match"):
        await sdk.uploads.complete(upload.id, part_ids=[parts[0].id])
    done = await sdk.uploads.complete(upload.id, part_ids=[p.id for p in parts])
    assert done.status == "completed" and done.file is not None
    assert (await sdk.files.content(done.file.id)).content == b"".join(pieces)
    with pytest.raises(openai.BadRequestError, match="already completed"):
        await sdk.uploads.parts.create(upload.id, data=b"more")
    other = await sdk.uploads.create(
        bytes=1, filename="x.txt", mime_type="text/plain", purpose="user_data"
    )
    assert (await sdk.uploads.cancel(other.id)).status == "cancelled"


async def test_batches_create_get_list_cancel(sdk):
    input_file = await sdk.files.create(file=("in.jsonl", BATCH_LINES), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.object == "batch" and batch.status == "validating"
    assert batch.request_counts.total == 3 and batch.metadata == {"job": "nightly"}
    assert (await sdk.batches.retrieve(batch.id)).id == batch.id
    assert batch.id in [b.id async for b in sdk.batches.list()]
    cancelling = await sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert (await sdk.batches.retrieve(batch.id)).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as endpoint:
        await sdk.batches.create(
            input_file_id=input_file.id, endpoint="/v1/nope", completion_window="24h"
        )
    assert endpoint.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError) as unknown_file:
        await sdk.batches.create(
            input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
        )
    assert unknown_file.value.body["param"] == "input_file_id"
    with pytest.raises(openai.NotFoundError):
        await sdk.batches.retrieve("batch_nope")


async def test_vector_stores_create_get_list_delete(sdk):
    doc = await sdk.files.create(file=("doc.txt", b"hello vector"), purpose="assistants")
    store = await sdk.vector_stores.create(name="docs", file_ids=[doc.id])
    assert store.object == "vector_store" and store.name == "docs"
    assert store.file_counts.completed == 1 and store.usage_bytes == len(b"hello vector")
    assert (await sdk.vector_stores.retrieve(store.id)).id == store.id
    assert store.id in [s.id async for s in sdk.vector_stores.list()]
    deleted = await sdk.vector_stores.delete(store.id)
    assert deleted.deleted is True and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        await sdk.vector_stores.retrieve(store.id)


async def test_image_generation_returns_real_pngs_and_usage(sdk):
    images = await sdk.images.generate(model="gpt-image-1", prompt="a red cube", n=2)
    assert len(images.data) == 2
    png = base64.b64decode(images.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (8, 8)
    assert images.usage.output_tokens == 2 * 1056 and images.usage.input_tokens > 0
    again = await sdk.images.generate(model="gpt-image-1", prompt="a red cube", n=1)
    assert again.data[0].b64_json == images.data[0].b64_json  # deterministic per prompt
    dalle = await sdk.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert dalle.data[0].url.startswith("data:image/png;base64,")
    with pytest.raises(openai.BadRequestError) as size:
        await sdk.images.generate(model="dall-e-2", prompt="x", size="999x999")  # type: ignore[arg-type]
    assert size.value.body["param"] == "size"


async def test_transcription_reads_the_audio_part(sdk, simulator):
    audio = os.urandom(64_000)  # four seconds at 128 kbit/s
    whisper = await sdk.audio.transcriptions.create(model="whisper-1", file=("a.mp3", audio))
    assert whisper.text and whisper.usage.type == "duration" and whisper.usage.seconds == 4
    again = await sdk.audio.transcriptions.create(model="whisper-1", file=("b.mp3", audio))
    assert again.text == whisper.text
    other = await sdk.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 900))
    assert other.text != whisper.text
    tokens = await sdk.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.mp3", audio)
    )
    assert tokens.usage.type == "tokens" and tokens.usage.input_tokens == 40
    plain = await sdk.audio.transcriptions.create(
        model="whisper-1", file=("a.mp3", audio), response_format="text"
    )
    assert plain.strip() == whisper.text
    srt = await sdk.audio.transcriptions.create(
        model="whisper-1", file=("a.mp3", audio), response_format="srt"
    )
    assert srt.startswith("1\n00:00:00,000 --> 00:00:04,000\n")
    assert simulator.app.recent_requests("/v1/audio/transcriptions")[-1]["body"]["model"]
    async with httpx.AsyncClient(base_url=simulator.url, headers=AUTH) as client:
        missing = await client.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"other": ("x.bin", b"x")},
        )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"


async def test_speech_streams_audio_bytes(sdk, make_simulator):
    server = make_simulator(ttft_ms=0, token_ms=0)
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test")
    said = "Hello there, this is a simulated voice. " * 10
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=said
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert "content-length" not in response.headers
        chunks = [chunk async for chunk in response.iter_bytes()]
    audio = b"".join(chunks)
    assert audio[:4] == b"\xff\xfb\x90\x64" and len(audio) % 417 == 0
    seconds = len(audio) / 417 / (44_100 / 1152)
    assert abs(seconds - len(said) / 15) < 0.1
    wav = await client.audio.speech.create(
        model="tts-1", voice="alloy", input="short", response_format="wav"
    )
    assert wav.content[:4] == b"RIFF" and wav.content[8:12] == b"WAVE"
    with pytest.raises(openai.BadRequestError):
        await client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    await client.close()


async def test_unknown_routes_answer_like_openai(simulator):
    async with httpx.AsyncClient(base_url=simulator.url, headers=AUTH) as client:
        unknown = await client.post("/v1/xyz", json={})
        wrong_method = await client.get("/v1/embeddings")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/xyz)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "Invalid method for URL (GET /v1/embeddings)"


async def test_multipart_parser_handles_boundaries_split_across_chunks():
    boundary = "b0undary"
    blob = os.urandom(5000) + b"\r\n--b0undar" + os.urandom(100)  # a near-boundary inside
    body = (
        (
            f"preamble\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\n'
            f"batch\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a \\"b\\".bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + blob
        + f"\r\n--{boundary}--\r\nepilogue".encode()
    )

    class Kept:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk: bytes) -> None:
            self.data += chunk

    for size in (1, 7, 64, len(body)):
        messages = [
            {"type": "http.request", "body": body[i : i + size], "more_body": i + size < len(body)}
            for i in range(0, len(body), size)
        ]
        sink = Kept()
        form = await read_form(_request(boundary, messages), lambda *_, kept=sink: kept)
        assert form.fields == {"purpose": "batch"}, size
        assert form.files["file"].filename == 'a "b".bin'
        assert bytes(sink.data) == blob and form.files["file"].size == len(blob)
    truncated = [{"type": "http.request", "body": body[:-30], "more_body": False}]
    with pytest.raises(BadRequest, match="closing boundary"):
        await read_form(_request(boundary, truncated), lambda *_: Kept())


def _request(boundary: str, messages: list[dict[str, Any]]) -> Request:
    queue = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(queue)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return Request("POST", "/v1/files", headers, receive, send)


def test_stored_files_are_bounded_by_bytes(make_simulator):
    server = make_simulator(stored_file_bytes=250_000)
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test")
    contents = [os.urandom(100_000) for _ in range(4)]
    ids = [
        sdk.files.create(file=(f"{i}.bin", c), purpose="user_data").id
        for i, c in enumerate(contents)
    ]
    assert list(server.app.files.files) == ids[2:]
    assert server.app.files.bytes == 200_000
    assert sdk.files.content(ids[2]).content == contents[2]
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(ids[0])
