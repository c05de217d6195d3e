"""Every other OpenAI route, passed through: files, uploads, batches, vector stores, images,
audio, moderations.

Forwarded with the client's key checked and its request limit applied (admitted as a request of
no tokens and no cost; budgets refuse only a key already past them), within a body limit per
route family. Neither body is buffered: the client's body streams up as it arrives (multipart
uploads of hundreds of MB included) and the provider's answer streams back with its status and
headers, its own 404 for a route it does not have included. Not cached. When a JSON answer
carries `usage` (image and audio models report tokens), its tokens are added to the key's usage
and, for a model in the catalog, its cost.

Stored objects are kept per client key (app/object_owners.py): a path naming an object another
key owns is answered with the provider's 404 for an unknown id; the JSON answer of a POST that
makes one is read whole (small) to record its owner before it is relayed; a list answer is read
whole and filtered to the caller's objects (further provider pages are read to fill it); object
content (file bytes) still streams unread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.accounting import TokenUsage
from app.auth import ClientKey
from app.context import Ctx
from app.endpoints.passthrough_answers import OWN_HEADERS, buffered, filtered_list, read_answer
from app.errors import NotReady, PayloadTooLarge, StateUnavailable
from app.limits import Reservation
from app.object_owners import (
    BATCHES,
    VECTOR_STORES,
    ObjectOwners,
    ObjectRoute,
    Reference,
    body_file_references,
    route_of,
)
from app.redis_backend import BackendUnavailable
from app.response_types import RelayResponse
from app.upstream import RawReply

if TYPE_CHECKING:
    from app.gateway import Gateway

log = logging.getLogger("liftoff.gateway")

MIB = 1024 * 1024
# A JSON answer up to this size is kept while it is relayed, to read its usage at the end; a
# POST answer of an owned family is read whole up to it, to record what it made.
MAX_USAGE_SCAN_BYTES = MIB


@dataclass(frozen=True, slots=True)
class Family:
    """A group of passed-through routes: its path prefix, metric label and body limit."""

    prefix: str
    label: str
    max_body_bytes: int


# Body limits from OpenAI's own: files up to 512 MB, upload parts 64 MB, audio files 25 MB,
# image edits' images 50 MB; JSON-only families take server.max_body_bytes (None here).
FAMILIES = (
    Family("/v1/files", "files", 512 * MIB + MIB),
    Family("/v1/uploads", "uploads", 64 * MIB + MIB),
    Family("/v1/audio", "audio", 25 * MIB + MIB),
    Family("/v1/images", "images", 64 * MIB),
    Family("/v1/batches", "batches", 0),
    Family("/v1/vector_stores", "vector_stores", 0),
    Family("/v1/moderations", "moderations", 0),
)


def body_limit(family: Family, gateway: Gateway) -> int:
    return family.max_body_bytes or gateway.config.server.max_body_bytes


async def admit_request(
    gateway: Gateway, key_name: str, model: str, ctx: Ctx
) -> Reservation | None:
    """The key's request limit for a call of no tokens and no cost."""
    budgets = gateway.config.budgets
    try:
        admission = await gateway.limits.admit(
            gateway.policies[key_name],
            model,
            0,
            0.0,
            budgets.global_monthly_usd,
            budgets.soft_fraction,
        )
    except BackendUnavailable:
        raise StateUnavailable() from None
    gateway.pipeline.take_admission(admission, key_name, ctx)
    return admission.reservation


class _BoundedBody:
    """The client's body as it arrives, stopped past `limit` bytes.

    The HTTP client wraps an error raised while it uploads, so `exceeded` says afterwards
    whether the upload was stopped for its size.
    """

    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > self.limit:
                self.exceeded = True
                raise PayloadTooLarge(self.limit)
            if chunk:
                yield chunk


def _has_body(request: Request, ctx: Ctx) -> bool:
    if request.method in ("GET", "HEAD", "DELETE"):
        return False
    return ctx.h.get("content-length", "0") != "0" or "transfer-encoding" in ctx.h


async def forward(
    gateway: Gateway,
    request: Request,
    ctx: Ctx,
    path: str,
    limit: int,
    body: bytes | None = None,
    model: str | None = None,
    objects: ObjectRoute | None = None,
    references: Sequence[Reference] = (),
) -> Response:
    """`request` passed to the provider at `path`, its answer streamed back.

    `body`: bytes already read (and perhaps rewritten) by the caller; otherwise the client's
    body streams up as it arrives, refused with a 413 past `limit` bytes. `objects`: the stored
    object (or the kind's root) the path names, `references` those its body names, checked
    against the key before the call.
    """
    owners = gateway.owners
    if not gateway.ready or owners is None:
        raise NotReady()
    key = gateway.authenticate(ctx)
    length = ctx.h.get("content-length")
    if body is None and length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(limit)
    reservation = await _admit_and_check(gateway, owners, key, ctx, model, objects, references)
    try:
        if objects is not None and request.method == "POST":
            await owners.ready_to_claim()
    except BaseException:
        if reservation is not None:
            gateway.after(gateway.limits.release(reservation))
        raise
    reads = objects is not None and _reads_answer(request.method, objects, key, path)
    # An answer the gateway reads comes unencoded (a gzip body could not be filtered).
    headers = {k: v for k, v in ctx.h.items() if k != "accept-encoding"} if reads else ctx.h
    streamed = _BoundedBody(request, limit) if body is None and _has_body(request, ctx) else None
    try:
        reply = await gateway.upstream.open_raw(
            request.method,
            path,
            headers,
            body if streamed is None else streamed,
            model,
            query=request.url.query,
            stats=ctx.stats,
        )
    except BaseException:
        if reservation is not None:
            gateway.after(gateway.limits.release(reservation))
        if streamed is not None and streamed.exceeded:
            raise PayloadTooLarge(limit) from None
        raise
    if objects is None:
        return _relay(gateway, ctx, reply, reservation, request.method, path)
    return await _owned_answer(
        gateway, owners, key, ctx, reply, reservation, request, path, headers, objects
    )


async def _admit_and_check(
    gateway: Gateway,
    owners: ObjectOwners,
    key: ClientKey,
    ctx: Ctx,
    model: str | None,
    objects: ObjectRoute | None,
    references: Sequence[Reference],
) -> Reservation | None:
    """The key's request limit, and its right to the objects the path and body name: issued
    together (one Redis write). A refusal is admitted first, as the provider's own would be."""
    checking = None
    if (objects is not None and objects.object_id is not None) or references:
        checking = asyncio.ensure_future(_check(owners, key, objects, references))
    try:
        reservation = await admit_request(gateway, key.name, model or "-", ctx)
    except BaseException:
        if checking is not None:
            checking.add_done_callback(_quiet)  # awaited by nobody: keep asyncio quiet
        raise
    if checking is not None:
        try:
            await checking
        except BaseException:
            if reservation is not None:
                gateway.after(gateway.limits.release(reservation))
            raise
    return reservation


async def _check(
    owners: ObjectOwners,
    key: ClientKey,
    objects: ObjectRoute | None,
    references: Sequence[Reference],
) -> None:
    if objects is not None and objects.object_id is not None:
        await owners.check(key, objects.kind, objects.object_id)
    if references:
        await owners.require(key, references)


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _reads_answer(method: str, objects: ObjectRoute, key: ClientKey, path: str) -> bool:
    """Whether the answer is read before it is relayed: a POST's (what it made), and for a key
    that sees only its own objects a list's and a batch's (the files the provider made it)."""
    if method == "POST":
        return True
    if method != "GET" or key.admin:
        return False
    return objects.object_id is None or (
        objects.kind is BATCHES and path == f"{BATCHES.prefix}/{objects.object_id}"
    )


def _is_json(reply: RawReply) -> bool:
    return any(
        name.lower() == "content-type" and value.startswith("application/json")
        for name, value in reply.headers
    )


async def _owned_answer(
    gateway: Gateway,
    owners: ObjectOwners,
    key: ClientKey,
    ctx: Ctx,
    reply: RawReply,
    reservation: Reservation | None,
    request: Request,
    path: str,
    headers: Mapping[str, str],
    objects: ObjectRoute,
) -> Response:
    """The answer to a request about stored objects: a list filtered to the key's objects, a
    POST's answer once its objects are recorded, a batch's once the files the provider made it
    are its owner's, and the records of deleted ones dropped. The reservation is settled or
    released, and the reply closed, whatever happens."""
    method = request.method
    named = objects.object_id
    whole_object = named is not None and path == f"{objects.kind.prefix}/{named}"
    if whole_object and (reply.status == 404 or (method == "DELETE" and reply.status == 200)):
        gateway.after(owners.forget(named))  # deleted, or the provider no longer has it
    if not _reads_answer(method, objects, key, path) or reply.status != 200 or not _is_json(reply):
        return _relay(gateway, ctx, reply, reservation, method, path)
    if method == "GET" and named is None:
        _account(gateway, ctx, reservation, None)  # a list makes nothing: released
        try:
            return await filtered_list(
                gateway.upstream, owners, key, ctx, reply, path, headers, request.url.query
            )
        finally:
            reply.close()
    try:
        chunks, whole = await read_answer(reply, MAX_USAGE_SCAN_BYTES)
    except BaseException:
        reply.close()
        _account(gateway, ctx, reservation, None)
        raise
    if not whole:  # no object answer is this large: relayed as it comes, nothing recorded
        return _relay(gateway, ctx, reply, reservation, method, path, chunks)
    reply.close()
    data = b"".join(chunks)
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        answer = None
    makes = method == "POST" and not path.endswith("/cancel")  # as _relay bills
    _account(gateway, ctx, reservation, _usage_in(answer) if makes else None)
    if method == "POST":
        await owners.claim(key.name, answer, skip=named)
    await owners.adopt(key, answer)
    return buffered(reply, data)


def _relay(
    gateway: Gateway,
    ctx: Ctx,
    reply: RawReply,
    reservation: Reservation | None,
    method: str,
    path: str,
    read: list[bytes] | None = None,
) -> Response:
    """The answer streamed back; `read`: its first chunks, already read."""
    # Only an answer that made something is billed: reading a stored object again (GET) or
    # cancelling it repeats the usage of what was made before.
    creates = method == "POST" and not path.endswith("/cancel")
    scan = creates and reply.status == 200 and _is_json(reply)
    kept: list[bytes] = []
    state = {"size": 0, "outcome": "client_gone", "closed": False}

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in read or ():
            yield chunk
        async for chunk in reply.chunks():
            yield chunk

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks():
                if scan and state["size"] <= MAX_USAGE_SCAN_BYTES:
                    kept.append(chunk)
                state["size"] += len(chunk)
                yield chunk
            state["outcome"] = "complete"
        except BaseException:
            state["outcome"] = "interrupted"
            raise

    def close() -> None:
        if state["closed"]:
            return
        state["closed"] = True
        reply.close()
        usage = None
        if state["outcome"] == "complete" and kept and state["size"] <= MAX_USAGE_SCAN_BYTES:
            usage = _usage_of(b"".join(kept))
        _account(gateway, ctx, reservation, usage)
        status = reply.status if state["outcome"] == "complete" else 499
        gateway.finisher.record(ctx, status, method, {"passthrough": state["outcome"]})

    response = RelayResponse(body(), reply.status)
    response.raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in reply.headers
        if name.lower() not in OWN_HEADERS
    ]
    response.on_close = close
    return response


def _usage_of(data: bytes) -> tuple[str | None, TokenUsage] | None:
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return _usage_in(answer)


def _usage_in(answer: Any) -> tuple[str | None, TokenUsage] | None:
    if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
        return None
    model = answer.get("model")
    return (model if isinstance(model, str) else None), TokenUsage.of(answer["usage"])


def _account(
    gateway: Gateway,
    ctx: Ctx,
    reservation: Reservation | None,
    usage: tuple[str | None, TokenUsage] | None,
) -> None:
    if usage is None:
        if reservation is not None:
            gateway.after(gateway.limits.release(reservation))
        return
    model, tokens = usage
    resolved = gateway.config.models.resolve(model) if model else None
    cost = gateway.prices.cost_of(resolved, tokens) if resolved in gateway.prices else 0.0
    if reservation is not None and gateway.pipeline is not None:
        gateway.pipeline.settle(reservation, tokens, cost)
    gateway.metrics.count_usage(ctx.key, resolved or ctx.route, tokens, cost)


def _family_handler(family: Family) -> Any:
    async def handler(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
        path = request.url.path
        limit = body_limit(family, gateway)
        objects = route_of(path)
        if objects is None or request.method != "POST" or objects.kind not in NAMING_BODIES:
            return await forward(gateway, request, ctx, path, limit, objects=objects)
        # A small JSON body that may name files: read, so that another key's are refused.
        body = await _read_body(request, limit)
        try:
            references = body_file_references(orjson.loads(body)) if body else []
        except orjson.JSONDecodeError:
            references = []  # the provider refuses it
        return await forward(
            gateway, request, ctx, path, limit, body, objects=objects, references=references
        )

    return handler


# Families whose JSON bodies name files (a batch's input, a vector store's files).
NAMING_BODIES = (BATCHES, VECTOR_STORES)


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    async for chunk in _BoundedBody(request, limit):
        chunks.append(chunk)
    return b"".join(chunks)


# (path, metric route label, handler, methods): each family's prefix and everything below it.
PASSTHROUGH_ROUTES = tuple(
    (path, family.label, _family_handler(family), ["GET", "POST", "DELETE"])
    for family in FAMILIES
    for path in (family.prefix, family.prefix + "/{rest:path}")
)
