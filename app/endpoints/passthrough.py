"""Every other OpenAI route, passed through: files, uploads, batches, vector stores, images,
audio, moderations.

Forwarded with the client's key checked and its request limit applied (admitted as a request of
no tokens and no cost; budgets refuse only a key already past them), within a body limit per
route family. Neither body is buffered: the client's body streams up as it arrives (multipart
uploads of hundreds of MB included) and the provider's answer streams back with its status and
headers, its own 404 for a route it does not have included. Not cached. When a JSON answer
carries `usage` (image and audio models report tokens), its tokens are added to the key's usage
and, for a model in the catalog, its cost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.accounting import TokenUsage
from app.context import Ctx
from app.errors import NotReady, PayloadTooLarge, RateLimited, StateUnavailable
from app.limits import Reservation
from app.redis_backend import BackendUnavailable
from app.response_types import RelayResponse
from app.upstream import RawReply

if TYPE_CHECKING:
    from app.gateway import Gateway

log = logging.getLogger("liftoff.gateway")

MIB = 1024 * 1024
# A JSON answer up to this size is kept while it is relayed, to read its usage at the end.
MAX_USAGE_SCAN_BYTES = MIB
# Headers of the provider's answer that are the gateway's to set (its x-ratelimit-* describe
# the provider account's limits; the client is told its own key's).
_OWN_HEADERS = frozenset(
    {"x-request-id", "content-length", "server", "date"}
    | {
        f"x-ratelimit-{what}-{kind}"
        for what in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    }
)


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
    ctx.admitted = True
    ctx.headers.update(admission.headers)
    gateway.limit_view.remember(key_name, admission.headers, admission.budget_remaining_usd)
    if not admission.allowed:
        gateway.metrics.child(gateway.metrics.rate_limited, admission.reason).inc()
        raise RateLimited(admission.reason, admission.retry_after_s, admission.headers)
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
) -> Response:
    """`request` passed to the provider at `path`, its answer streamed back.

    `body`: bytes already read (and perhaps rewritten) by the caller; otherwise the client's
    body streams up as it arrives, refused with a 413 past `limit` bytes.
    """
    if not gateway.ready:
        raise NotReady()
    key = gateway.authenticate(ctx)
    length = ctx.h.get("content-length")
    if body is None and length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(limit)
    reservation = await admit_request(gateway, key.name, model or "-", ctx)
    streamed = _BoundedBody(request, limit) if body is None and _has_body(request, ctx) else None
    try:
        reply = await gateway.upstream.open_raw(
            request.method,
            path,
            ctx.h,
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
    return _relay(gateway, ctx, reply, reservation, request.method, path)


def _relay(
    gateway: Gateway,
    ctx: Ctx,
    reply: RawReply,
    reservation: Reservation | None,
    method: str,
    path: str,
) -> Response:
    # Only an answer that made something is billed: reading a stored object again (GET) or
    # cancelling it repeats the usage of what was made before.
    creates = method == "POST" and not path.endswith("/cancel")
    scan = (
        creates
        and reply.status == 200
        and any(
            name.lower() == "content-type" and value.startswith("application/json")
            for name, value in reply.headers
        )
    )
    kept: list[bytes] = []
    state = {"size": 0, "outcome": "client_gone", "closed": False}

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in reply.chunks():
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
        if name.lower() not in _OWN_HEADERS
    ]
    response.on_close = close
    return response


def _usage_of(data: bytes) -> tuple[str | None, TokenUsage] | None:
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
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
        return await forward(gateway, request, ctx, request.url.path, body_limit(family, gateway))

    return handler


# (path, metric route label, handler, methods): each family's prefix and everything below it.
PASSTHROUGH_ROUTES = tuple(
    (path, family.label, _family_handler(family), ["GET", "POST", "DELETE"])
    for family in FAMILIES
    for path in (family.prefix, family.prefix + "/{rest:path}")
)
