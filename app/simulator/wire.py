"""The simulator's HTTP plumbing: raw ASGI, orjson bodies, OpenAI-shaped errors and streams."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

MAX_BODY_BYTES = 16 * 1024 * 1024
STREAM_CHUNK_BYTES = 64 * 1024

RATELIMIT_OK_HEADERS: Headers = [
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-limit-tokens", b"10000000"),
    (b"x-ratelimit-remaining-tokens", b"9999000"),
    (b"x-ratelimit-reset-tokens", b"6ms"),
]


class BadRequest(Exception):
    """A request the provider refuses; answered as an OpenAI error body naming `param`."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code
        self.error_type = error_type


def not_found(message: str, param: str | None = None) -> BadRequest:
    return BadRequest(message, param=param, status=404)


@dataclass(slots=True)
class Request:
    """One API request as a route handler sees it."""

    method: str
    path: str
    headers: dict[str, str]
    receive: Receive
    send: Send
    query_string: bytes = b""
    params: dict[str, str] | None = None  # path parameters of a templated route
    payload: Any = None  # the JSON body (a dict for JSON routes), None when not read
    cut: bool = False  # the `cut` fault: drop the connection half way
    record: dict[str, Any] | None = None  # this request's entry in the recent-requests log
    body_done: bool = False  # the whole body has been received

    def param(self, name: str) -> str:
        assert self.params is not None
        return self.params[name]

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode("latin-1")))

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives, never held whole."""
        while not self.body_done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.body_done = True
                return
            if not message.get("more_body"):
                self.body_done = True
            chunk = message.get("body", b"")
            if chunk:
                yield chunk

    async def drain(self) -> None:
        """Read and drop what is left of the body, so an early answer reaches the client."""
        async for _ in self.body_chunks():
            pass


Handler = Callable[[Request], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """`path` is exact or a template: `{name}` matches one segment, `{name:path}` the rest.

    `body`: "json" (a JSON object, read before the handler), "optional" (JSON when sent),
    "none" (not looked at) or "multipart" (left for the handler to stream)."""

    method: str
    path: str
    handler: Handler
    body: str = "json"
    observe: Callable[[Any], None] | None = None  # sees every parsed body, even refused ones


def request_id() -> bytes:
    return b"req_" + os.urandom(16).hex().encode()


def object_id(prefix: str, size: int = 12) -> str:
    """A fresh id: `prefix` and `size` random bytes in hex."""
    return prefix + os.urandom(size).hex()


async def send_json(
    send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_body(send: Send, body: bytes, cut: bool) -> None:
    """A 200 JSON body; when cut, the connection drops after half of the promised bytes."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id()),
                (b"openai-processing-ms", b"1"),
                *RATELIMIT_OK_HEADERS,
            ],
        }
    )
    if cut:
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        return
    await send({"type": "http.response.body", "body": body})


async def send_result(request: Request, payload: Any) -> None:
    """A 200 JSON answer to `request`, cut half way under the `cut` fault."""
    await send_body(request.send, orjson.dumps(payload), request.cut)


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    error = {"message": message, "type": error_type, "param": param, "code": code}
    await send_json(send, status, {"error": error}, headers)


async def send_bad_request(send: Send, exc: BadRequest) -> None:
    await send_error(
        send, exc.status, exc.message, error_type=exc.error_type, param=exc.param, code=exc.code
    )


async def send_stream(
    request: Request,
    content_type: bytes,
    chunks: Iterable[bytes],
    first_delay_s: float,
    chunk_delay_s: float,
    content_length: int | None = None,
) -> None:
    """A 200 body sent chunk by chunk; a cut stream stops half way and drops the connection."""
    pieces = list(chunks)
    headers: Headers = [
        (b"content-type", content_type),
        (b"x-request-id", request_id()),
        *RATELIMIT_OK_HEADERS,
    ]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    send = request.send
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    cut_at = max(1, len(pieces) // 2) if request.cut else None
    await sleep(first_delay_s)
    for number, piece in enumerate(pieces):
        if number == cut_at:
            return  # the server closes the connection without finishing the response
        if number:
            await sleep(chunk_delay_s)
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def chunked(data: bytes | Iterable[bytes], size: int = STREAM_CHUNK_BYTES) -> list[bytes]:
    """Stored content as chunks of at most `size` bytes."""
    parts = [data] if isinstance(data, bytes) else list(data)
    out = []
    for part in parts:
        for start in range(0, len(part), size):
            out.append(part[start : start + size])
    return out


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when it passes MAX_BODY_BYTES."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def hang(receive: Receive, seconds: float) -> None:
    """Hold the request like a stalled provider, ending early if the client gives up."""
    disconnected = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({disconnected}, timeout=seconds)
    finally:
        disconnected.cancel()


async def sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def float_header(headers: dict[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


def keep_last(store: OrderedDict[str, Any], key: str, value: Any, limit: int) -> list[Any]:
    """Add to a bounded store; the oldest entries past `limit` are dropped (and returned)."""
    store[key] = value
    dropped = []
    while len(store) > limit:
        dropped.append(store.popitem(last=False)[1])
    return dropped


def list_page(
    items: list[dict[str, Any]],
    query: dict[str, str],
    *,
    default_limit: int = 20,
    max_limit: int = 100,
) -> dict[str, Any]:
    """OpenAI's cursor page: `limit` (1 to `max_limit`), `after` an id, `order` asc|desc (desc
    by default) over `items` (given oldest first)."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest(
            f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", param="order"
        )
    raw_limit = query.get("limit", str(default_limit))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= max_limit:
        raise BadRequest(
            f"Invalid 'limit': expected an integer from 1 to {max_limit}, got {raw_limit!r}.",
            param="limit",
        )
    ordered = items if order == "asc" else items[::-1]
    after = query.get("after")
    if after:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    page = ordered[: int(raw_limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > len(page),
    }
