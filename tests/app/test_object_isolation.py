"""Stored objects per client key (app/object_owners.py): responses, files, uploads, batches and
vector stores made through the gateway are reached only by the key that made them (and admin
keys); another key gets the provider's own 404 for an unknown id and never sees them listed.
Through the official openai SDK, against the simulator, with owner records in a real Redis and
in process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.object_owners import REDIS_PREFIX, owner_of
from app.server import create_app
from tests.app.gateway_harness import (
    ADMIN,
    ALICE,
    BOB,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)

ENV = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}
BATCH_LINES = b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions","body":{}}\n'


@contextlib.contextmanager
def gateway(simulator, redis_url: str | None = None, **objects: Any) -> Iterator[Any]:
    app = create_app(make_config(simulator.url, redis_url, objects=objects), ENV)
    with served(app) as url:
        yield url, app.state.gateway


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def not_found_body(error: openai.APIStatusError) -> dict[str, Any]:
    return error.response.json()


def provider_404(url: str, path: str, missing_id: str, real_id: str, method: str = "GET"):
    """The provider's own 404 for an id it never had (asked by the admin key, which the gateway
    passes through), with that id written as `real_id`: what another key must get."""
    answer = httpx.request(method, f"{url}{path.format(id=missing_id)}", headers=auth(ADMIN))
    assert answer.status_code == 404, answer.text
    return answer.status_code, orjson_replace(answer.json(), missing_id, real_id)


def orjson_replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: orjson_replace(v, old, new) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace(old, new)
    return value


def refused(call) -> openai.NotFoundError:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    return caught.value


@pytest.fixture(params=["redis", "memory"])
def backend(request) -> str | None:
    """The owner records' store: a real Redis (flushed) or the in-process map."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return None


# --- responses -------------------------------------------------------------------------------


def test_a_stored_response_is_reached_only_by_its_key(simulator, backend):
    with gateway(simulator, backend) as (url, _):
        alice, bob = sdk(url, ALICE), sdk(url, BOB)
        made = alice.responses.create(model="fast", input="Alice's secret", max_output_tokens=20)
        with alice.responses.stream(model="fast", input="Streamed secret") as stream:
            streamed = stream.get_final_response()
        for response_id in (made.id, streamed.id):
            expected = provider_404(url, "/responses/{id}", "resp_missing0", response_id)
            for call in (
                bob.responses.retrieve,
                bob.responses.input_items.list,
                bob.responses.cancel,
                bob.responses.delete,
            ):
                error = refused(lambda call=call, rid=response_id: call(rid))
                assert (error.status_code, error.response.json()) == expected
            # Bob's delete never reached the provider: Alice still has her response.
            assert alice.responses.retrieve(response_id).output_text
            assert [item.type for item in alice.responses.input_items.list(response_id)] == [
                "message"
            ]
        assert sdk(url, ADMIN).responses.retrieve(made.id).id == made.id
        deleted = [r for r in simulator.app.recent_requests() if r["method"] == "DELETE"]
        assert all(made.id not in r["path"] for r in deleted)


def test_another_keys_response_cannot_be_continued(simulator, backend):
    with gateway(simulator, backend) as (url, _):
        alice, bob = sdk(url, ALICE), sdk(url, BOB)
        first = alice.responses.create(model="fast", input="My PIN is 1234", max_output_tokens=20)
        with pytest.raises(openai.BadRequestError) as caught:
            bob.responses.create(model="fast", input="Repeat it", previous_response_id=first.id)
        # The provider's own answer for an unknown previous response, word for word.
        with pytest.raises(openai.BadRequestError) as missing:
            sdk(url, ADMIN).responses.create(
                model="fast", input="x", previous_response_id="resp_missing0"
            )
        assert caught.value.response.json() == orjson_replace(
            missing.value.response.json(), "resp_missing0", first.id
        )
        assert caught.value.code == "previous_response_not_found"
        with pytest.raises(openai.BadRequestError):  # streamed: refused before the stream
            bob.responses.create(
                model="fast", input="Repeat it", previous_response_id=first.id, stream=True
            )
        second = alice.responses.create(
            model="fast", input="Go on", previous_response_id=first.id, max_output_tokens=20
        )
        assert second.previous_response_id == first.id
        # An unstored response belongs to nobody: nothing is recorded for it.
        unstored = alice.responses.create(model="fast", input="Not kept", store=False)
        refused(lambda: alice.responses.retrieve(unstored.id))


# --- files, uploads, batches, vector stores ------------------------------------------------------


def test_files_batches_vector_stores_and_uploads_are_reached_only_by_their_key(simulator, backend):
    simulator.app.reset()
    with gateway(simulator, backend) as (url, _):
        alice, bob, admin = sdk(url, ALICE), sdk(url, BOB), sdk(url, ADMIN)
        file = alice.files.create(file=("a.jsonl", io.BytesIO(BATCH_LINES)), purpose="batch")
        batch = alice.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        store = alice.vector_stores.create(name="alice-docs")
        upload = alice.uploads.create(
            bytes=3, filename="u.txt", mime_type="text/plain", purpose="assistants"
        )
        bobs_file = bob.files.create(file=("b.txt", io.BytesIO(b"bob")), purpose="assistants")

        cases = [
            ("/files/{id}", file.id, lambda: bob.files.retrieve(file.id)),
            ("/files/{id}", file.id, lambda: bob.files.delete(file.id)),
            ("/files/{id}", file.id, lambda: bob.files.content(file.id)),
            ("/batches/{id}", batch.id, lambda: bob.batches.retrieve(batch.id)),
            ("/batches/{id}", batch.id, lambda: bob.batches.cancel(batch.id)),
            ("/vector_stores/{id}", store.id, lambda: bob.vector_stores.retrieve(store.id)),
            ("/vector_stores/{id}", store.id, lambda: bob.vector_stores.delete(store.id)),
        ]
        missing = {"files": "file-missing0", "batches": "batch_missing0", "vector_stores": "vs_0"}
        for path, object_id, call in cases:
            family = path.split("/")[1]
            expected = provider_404(url, path, missing[family], object_id)
            error = refused(call)
            assert (error.status_code, error.response.json()) == expected, path
        part = refused(lambda: bob.uploads.parts.create(upload_id=upload.id, data=b"abc"))
        assert part.response.json()["error"]["message"] == f"No such Upload object: {upload.id}"
        refused(lambda: bob.uploads.cancel(upload.id))

        # Lists: each key sees its own objects only; the admin key sees every one.
        assert [f.id for f in bob.files.list()] == [bobs_file.id]
        assert [f.id for f in alice.files.list()] == [file.id]
        assert {f.id for f in admin.files.list()} == {file.id, bobs_file.id}
        assert [b.id for b in bob.batches.list()] == []
        assert [b.id for b in alice.batches.list()] == [batch.id]
        assert [s.id for s in bob.vector_stores.list()] == []
        assert [s.id for s in alice.vector_stores.list()] == [store.id]

        # The owner reaches all of it; the file a completed upload made is hers too.
        assert alice.files.content(file.id).read() == BATCH_LINES
        assert alice.batches.retrieve(batch.id).status == "validating"
        assert alice.batches.cancel(batch.id).status == "cancelling"
        assert alice.vector_stores.retrieve(store.id).name == "alice-docs"
        done = alice.uploads.complete(
            upload_id=upload.id,
            part_ids=[alice.uploads.parts.create(upload_id=upload.id, data=b"abc").id],
        )
        assert done.file is not None and alice.files.retrieve(done.file.id).bytes == 3
        refused(lambda: bob.files.retrieve(done.file.id))
        # None of Bob's refused requests reached the provider.
        seen = simulator.app.recent_requests()
        assert not [r for r in seen if r["method"] == "DELETE"]
        assert not [r for r in seen if r["path"].endswith(f"{upload.id}/cancel")]


def test_a_list_left_short_by_the_filter_is_filled_from_further_pages(simulator, backend):
    simulator.app.reset()
    with gateway(simulator, backend) as (url, _):
        alice, bob = sdk(url, ALICE), sdk(url, BOB)
        mine = [alice.vector_stores.create(name=f"a{i}").id for i in range(2)]
        for i in range(6):
            bob.vector_stores.create(name=f"b{i}")
        page = alice.vector_stores.list(limit=2)
        assert [s.id for s in page.data] == mine[::-1]
        assert page.first_id == mine[1] and page.last_id == mine[0]
        # The SDK pages by the last item's id: every one of Alice's stores once, in order.
        assert [s.id for s in alice.vector_stores.list(limit=1)] == mine[::-1]
        assert len([s.id for s in bob.vector_stores.list(limit=2)]) == 6


def test_replicas_on_one_redis_share_the_records(simulator, redis_url):
    with gateway(simulator, redis_url) as (one, _), gateway(simulator, redis_url) as (two, _):
        made = sdk(one, ALICE).files.create(file=("a.txt", io.BytesIO(b"x")), purpose="user_data")
        assert sdk(two, ALICE).files.retrieve(made.id).id == made.id
        refused(lambda: sdk(two, BOB).files.retrieve(made.id))
        assert made.id in [f.id for f in sdk(two, ALICE).files.list()]
        assert made.id not in [f.id for f in sdk(two, BOB).files.list()]


def test_deleting_an_object_forgets_its_owner(simulator, redis_url):
    store = redis.Redis.from_url(redis_url)
    with gateway(simulator, redis_url, owner_ttl_s=7200) as (url, _):
        alice = sdk(url, ALICE)
        file = alice.files.create(file=("a.txt", io.BytesIO(b"x")), purpose="assistants")
        made = alice.responses.create(model="fast", input="Keep me", max_output_tokens=20)
        upload = alice.uploads.create(
            bytes=1, filename="u.txt", mime_type="text/plain", purpose="assistants"
        )
        assert store.get(REDIS_PREFIX + file.id) == owner_of("alice").encode()
        assert owner_of("alice") != owner_of("bob") and "alice" not in owner_of("alice")
        # Lifetimes: a response its TTL, a file until deleted, an upload to its expiry + 1 day.
        assert 7100 < store.ttl(REDIS_PREFIX + made.id) <= 7200
        assert store.ttl(REDIS_PREFIX + file.id) == -1
        upload_ttl = upload.expires_at - time.time() + 86400
        assert abs(store.ttl(REDIS_PREFIX + upload.id) - upload_ttl) < 5
        alice.files.delete(file.id)
        alice.responses.delete(made.id)
        for object_id in (file.id, made.id):
            wait_for(lambda oid=object_id: not store.exists(REDIS_PREFIX + oid))
    store.close()


def test_deleting_forgets_the_owner_in_process(simulator):
    with gateway(simulator) as (url, gw):
        alice = sdk(url, ALICE)
        file = alice.files.create(file=("a.txt", io.BytesIO(b"x")), purpose="assistants")
        records = gw.owners.store
        assert asyncio.run(records.owners([file.id])) == [owner_of("alice")]
        alice.files.delete(file.id)
        wait_for(lambda: asyncio.run(records.owners([file.id])) == [None])


def wait_for(condition, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- ids the gateway never saw made --------------------------------------------------------------


@pytest.mark.parametrize("policy", ["refuse", "allow"])
def test_unknown_owner_policy(simulator, backend, policy):
    simulator.app.reset()
    provider = {"authorization": f"Bearer {PROVIDER_KEY}"}
    outside = httpx.post(
        f"{simulator.url}/v1/files",
        files={"file": ("o.txt", b"outside")},
        data={"purpose": "assistants"},
        headers=provider,
    ).json()
    with gateway(simulator, backend, unknown_owner=policy) as (url, _):
        alice = sdk(url, ALICE)
        listed = [f.id for f in alice.files.list()]
        if policy == "refuse":
            error = refused(lambda: alice.files.retrieve(outside["id"]))
            assert error.response.json()["error"]["message"] == (
                f"No such File object: {outside['id']}"
            )
            assert listed == []
        else:
            assert alice.files.retrieve(outside["id"]).id == outside["id"]
            assert listed == [outside["id"]]
        # No gateway route makes conversations: a conversation id is always an unknown one.
        sent = len(simulator.app.recent_requests("/v1/responses"))
        if policy == "refuse":
            error = refused(lambda: alice.responses.create(model="fast", conversation="conv_1"))
            assert error.body["message"] == "Conversation with id 'conv_1' not found."
            assert len(simulator.app.recent_requests("/v1/responses")) == sent
        else:
            with contextlib.suppress(openai.APIStatusError):  # the provider's to answer
                alice.responses.create(model="fast", input="hi", conversation="conv_1")
            assert len(simulator.app.recent_requests("/v1/responses")) == sent + 1
        # Either way an admin key reaches it, and a key's own objects stay its own.
        assert sdk(url, ADMIN).files.retrieve(outside["id"]).id == outside["id"]
        bobs = sdk(url, BOB).files.create(file=("b.txt", io.BytesIO(b"b")), purpose="assistants")
        refused(lambda: alice.files.retrieve(bobs.id))


# --- Redis unavailable ---------------------------------------------------------------------------


def test_while_redis_is_down_object_requests_get_503_and_nothing_leaks(
    simulator, redis_server, redis_url
):
    with gateway(simulator, redis_url) as (url, _):
        alice, bob = sdk(url, ALICE), sdk(url, BOB)
        file = alice.files.create(file=("a.txt", io.BytesIO(b"x")), purpose="assistants")
        uploads_before = _uploads(simulator)
        pid = redis_server._process.pid  # a hung Redis: every command times out
        os.kill(pid, signal.SIGSTOP)
        try:
            for call in (
                lambda: bob.files.retrieve(file.id),
                lambda: alice.files.retrieve(file.id),
                lambda: bob.files.list(),
                lambda: alice.files.create(file=("b.txt", io.BytesIO(b"y")), purpose="batch"),
            ):
                with pytest.raises(openai.InternalServerError) as caught:
                    call()
                assert caught.value.status_code == 503
                assert caught.value.response.headers["retry-after"] == "1"
                assert caught.value.code == "service_unavailable"
            # No file was made that its maker could not reach afterwards.
            assert _uploads(simulator) == uploads_before
            # Generation goes on (limits decide locally); a stored response is answered, its
            # owner unrecorded: only an admin key reaches it.
            answered = alice.responses.create(model="fast", input="hi", max_output_tokens=20)
            assert answered.output_text
            assert alice.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hi"}]
            ).choices
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: _status(url, f"/files/{file.id}") == 200, timeout_s=20)
        refused(lambda: bob.files.retrieve(file.id))
        refused(lambda: alice.responses.retrieve(answered.id))
        assert sdk(url, ADMIN).responses.retrieve(answered.id).id == answered.id


def _uploads(simulator) -> int:
    return sum(r["method"] == "POST" for r in simulator.app.recent_requests("/v1/files"))


def _status(url: str, path: str) -> int:
    return httpx.get(f"{url}{path}", headers=auth(ALICE)).status_code


# --- the generation hot path ---------------------------------------------------------------------


class Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"owner records used: {name}")


async def test_chat_completions_and_embeddings_never_touch_owner_records(simulator):
    async with running(make_config(simulator.url)) as gw:
        gw.gateway.owners = Untouchable()
        chat = await gw.chat(temperature=0.5)
        completion = await gw.client.post(
            "/v1/completions",
            json={"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
            headers=auth(),
        )
        embedding = await gw.client.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "hi"},
            headers=auth(),
        )
        files = await gw.client.get("/v1/files", headers=auth())
    assert (chat.status_code, completion.status_code, embedding.status_code) == (200, 200, 200)
    assert files.status_code == 500  # the check that proves the guard can fail


# --- ids inside request bodies -------------------------------------------------------------------


def test_a_body_naming_another_keys_file_is_refused_as_the_provider_would(simulator, backend):
    with gateway(simulator, backend) as (url, _):
        alice, bob, admin = sdk(url, ALICE), sdk(url, BOB), sdk(url, ADMIN)
        file = alice.files.create(file=("a.jsonl", io.BytesIO(BATCH_LINES)), purpose="batch")
        sent_before = len(simulator.app.recent_requests("/v1/batches"))
        for make, provider_says in (
            (
                lambda c, fid: c.batches.create(
                    input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
                ),
                "input_file_id",
            ),
            (lambda c, fid: c.vector_stores.create(name="x", file_ids=[fid]), "file_ids"),
        ):
            with pytest.raises(openai.BadRequestError) as theirs:
                make(bob, file.id)
            with pytest.raises(openai.BadRequestError) as missing:
                make(admin, "file-missing0")
            assert theirs.value.response.json() == orjson_replace(
                missing.value.response.json(), "file-missing0", file.id
            )
            assert theirs.value.param == provider_says
            assert make(alice, file.id).id  # the owner's own file is fine
        # Bob's refused batch never reached the provider (the admin's and Alice's did).
        assert len(simulator.app.recent_requests("/v1/batches")) == sent_before + 2
        # Under an object of his own too: a file batch of his vector store naming her file.
        bobs = bob.vector_stores.create(name="bob").id
        for files, status in (([{"file_id": file.id}], 400), ([], 404)):
            answer = httpx.post(
                f"{url}/vector_stores/{bobs}/file_batches", json={"files": files}, headers=auth(BOB)
            )
            assert answer.status_code == status  # 404: the simulator has no such route
            assert (answer.json()["error"]["param"] == "files") == (status == 400)


def test_a_response_naming_another_keys_vector_store_or_file_is_refused(simulator, backend):
    with gateway(simulator, backend) as (url, _):
        alice, bob = sdk(url, ALICE), sdk(url, BOB)
        store = alice.vector_stores.create(name="alice-docs")
        file = alice.files.create(file=("a.txt", io.BytesIO(b"secret")), purpose="user_data")
        search = [{"type": "file_search", "vector_store_ids": [store.id]}]
        attach = [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Summarise"},
                    {"type": "input_file", "file_id": file.id},
                ],
            }
        ]
        sent_before = len(simulator.app.recent_requests("/v1/responses"))
        with pytest.raises(openai.BadRequestError) as searched:
            bob.responses.create(model="fast", input="What does it say?", tools=search)
        assert searched.value.param == "tools[0].vector_store_ids"
        assert searched.value.body["message"] == f"No vector store found with id '{store.id}'."
        with pytest.raises(openai.BadRequestError) as attached:
            bob.responses.create(model="fast", input=attach, stream=True)
        assert attached.value.param == "input[0].content[1].file_id"
        assert attached.value.body["message"] == f"No such File object: {file.id}"
        assert len(simulator.app.recent_requests("/v1/responses")) == sent_before
        # Alice's own are hers to use: the request reaches the provider.
        with contextlib.suppress(openai.BadRequestError):
            alice.responses.create(model="fast", input="What does it say?", tools=search)
        assert len(simulator.app.recent_requests("/v1/responses")) == sent_before + 1


# --- files the provider makes ----------------------------------------------------------------


def batch_provider() -> Starlette:
    """A provider whose batch has finished: its output and error files exist."""

    def file(object_id: str) -> dict[str, Any]:
        return {"id": object_id, "object": "file", "bytes": 2, "purpose": "batch_output"}

    async def upload(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(file("file-in"))

    async def create(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": "batch_1", "object": "batch", "status": "validating"})

    async def retrieve(request: Request) -> JSONResponse:
        done = {"status": "completed", "output_file_id": "file-out", "error_file_id": "file-err"}
        return JSONResponse({"id": "batch_1", "object": "batch", **done})

    async def retrieve_file(request: Request) -> JSONResponse:
        return JSONResponse(file(request.path_params["id"]))

    return Starlette(
        routes=[
            Route("/v1/files", upload, methods=["POST"]),
            Route("/v1/batches", create, methods=["POST"]),
            Route("/v1/batches/batch_1", retrieve, methods=["GET"]),
            Route("/v1/batches/batch_1/cancel", retrieve, methods=["POST"]),
            Route("/v1/files/{id}", retrieve_file, methods=["GET"]),
        ]
    )


def test_a_batchs_output_files_become_its_owners_when_the_owner_reads_it(backend):
    with served(batch_provider()) as provider_url:
        config = make_config(provider_url.removesuffix("/v1"), backend)
        with served(create_app(config, ENV)) as url:
            alice, bob, admin = sdk(url, ALICE), sdk(url, BOB), sdk(url, ADMIN)
            alice.files.create(file=("in.jsonl", io.BytesIO(BATCH_LINES)), purpose="batch")
            alice.batches.create(
                input_file_id="file-in", endpoint="/v1/chat/completions", completion_window="24h"
            )
            assert admin.batches.retrieve("batch_1").output_file_id == "file-out"
            assert admin.batches.cancel("batch_1").output_file_id == "file-out"
            refused(lambda: alice.files.retrieve("file-out"))  # an admin's read adopts nothing
            assert alice.batches.retrieve("batch_1").status == "completed"
            for made in ("file-out", "file-err"):
                assert alice.files.retrieve(made).id == made
                refused(lambda made=made: bob.files.retrieve(made))
            refused(lambda: bob.batches.retrieve("batch_1"))
