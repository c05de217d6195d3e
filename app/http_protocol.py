"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol plus the limits it lacks.

uvicorn's httptools protocol (the fast one, kept for normal traffic) bounds neither the size nor
the count of request headers, has no deadline for reading a request's head or body, keeps a
connection that never sends a request (or only sends CRLFs) open forever, and answers an
unparsable request with a plain-text 400. :class:`LimitedHttpProtocol` enforces, before the ASGI
app sees a request, the ``server`` settings:

- request line + headers within ``max_header_bytes`` and ``max_headers`` fields, else 431
  (bytes beyond the limit are never handed to the parser, so they are never buffered);
- the head read within ``header_timeout_s`` of its first byte and the body within
  ``body_timeout_s`` of the end of the head, else 408;
- a new connection sends its first request within ``idle_timeout_s``, else it is closed silently
  (later idle periods are uvicorn's keep-alive timeout, ``keepalive_timeout_s``);
- at most ``max_connections`` open connections per process: a request on a connection opened
  beyond them gets 503 with ``Retry-After``, which every OpenAI SDK retries (a dropped connection
  would reach the client as the load balancer's bare 502);
- an unparsable request (bad request line, method or version) gets 400;
- once the server drains (:mod:`app.drain`), every answer closes its connection.

Every refusal is an OpenAI-shaped JSON error with ``Connection: close``; the connection then
half-closes and discards what the client still sends for :data:`LINGER_S` before closing, so the
client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.config import ServerConfig
from app.drain import Drain
from app.errors import ApiError

log = logging.getLogger("liftoff.http")

# After a refusal: long enough for a client to read the answer, short enough that a client that
# keeps sending cannot hold the connection.
LINGER_S = 2.0
# A process at its connection bound logs it at most this often.
CAPACITY_WARNING_EVERY_S = 10.0
_last_capacity_warning = 0.0

MALFORMED = ApiError(
    400,
    "Malformed HTTP request: the request line or a header could not be parsed.",
    "invalid_request_error",
    None,
    "invalid_http_request",
)
OVER_CAPACITY = ApiError(
    503,
    "The gateway has too many open connections; try again shortly.",
    "server_error",
    None,
    "too_many_connections",
    {"retry-after": "1"},
)


def _headers_too_large(limits: ServerConfig) -> ApiError:
    return ApiError(
        431,
        f"Request headers too large: at most {limits.max_headers} header fields and "
        f"{limits.max_header_bytes} bytes of request line and headers.",
        "invalid_request_error",
        None,
        "request_header_fields_too_large",
    )


def _timeout(part: str, seconds: float) -> ApiError:
    return ApiError(
        408,
        f"The request {part} did not arrive within {seconds:g} s.",
        "invalid_request_error",
        None,
        "request_timeout",
    )


def _response_head(error: ApiError, body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in error.headers.items()),
    ]


async def _over_capacity_app(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app of a connection opened beyond ``max_connections``: 503, then close."""
    body = OVER_CAPACITY.body()
    await send(
        {
            "type": "http.response.start",
            "status": OVER_CAPACITY.status,
            "headers": _response_head(OVER_CAPACITY, body),
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is in ``_refusal``."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, read deadlines, a connection bound,
    JSON refusals and drain-aware keep-alive. Build it with
    ``functools.partial(LimitedHttpProtocol, limits=server_config, drain=drain)`` as uvicorn's
    ``Config(http=...)``, with ``ws="none"`` (no connection is ever upgraded)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerConfig,
        drain: Drain,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._drain = drain
        self._max_header_bytes = limits.max_header_bytes
        # Bytes handed to the parser since the last request ended (leading CRLFs included).
        self._head_bytes = 0
        self._heads_read = 0
        self._in_head = False  # a request's first byte arrived, its head has not ended
        self._in_body = False  # its head ended, its body has not
        # Bytes of the body still to come, by its Content-Length (None: chunked, or no body).
        self._body_left: int | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: tuple[bool, int] | None = None  # (in body, heads read) it guards
        self._refusal: ApiError | None = None  # set by a callback before it raises _Refused
        self._refused = False

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's keep-alive timer doubles as the wait for the first request; either is
        # cancelled by a request's first byte, not by any byte (a CRLF a second keeps nothing).
        self.timeout_keep_alive_task = self.loop.call_later(
            self._limits.idle_timeout_s, self.timeout_keep_alive_handler
        )
        if len(self.connections) > self._limits.max_connections:
            self.app = _over_capacity_app
            _warn_at_capacity(len(self.connections), self._limits.max_connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: what the client still sends is dropped
        if self._in_body:
            self._feed(data)
        else:
            room = self._max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                self._feed(data)
            else:
                # Hand the parser only what the head may still take; the rest only once the
                # head has ended within it.
                view = memoryview(data)
                heads_read = self._heads_read
                self._head_bytes += room
                self._feed(view[:room])
                if self._refused:
                    return
                if self._heads_read == heads_read:
                    self._refuse(_headers_too_large(self._limits))
                    return
                self.data_received(view[room:])
                return
        if not self._refused and (self._in_head or self._in_body or self._deadline is not None):
            self._arm_deadline()

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrade is served (uvicorn runs with ws="none"): the request was handed to the
            # app as plain HTTP, and the parser takes no more bytes on this connection, so the
            # connection closes after the answer.
            if self.cycle is not None:
                self.cycle.keep_alive = False
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            self._refuse(refusal or MALFORMED)

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._in_head = True

    def on_headers_complete(self) -> None:
        if len(self.headers) > self._limits.max_headers:
            self._refusal = _headers_too_large(self._limits)
            raise _Refused
        self._in_head = False
        self._in_body = True
        self._heads_read += 1
        self._body_left = _content_length(self.headers)
        if self.timeout_keep_alive_task is not None:
            # This head began before the previous response ended, which then armed the timer.
            self._unset_keepalive_if_required()
        super().on_headers_complete()
        self._drain.saw_request(self.scope["path"])
        if self._drain.began:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_body(self, body: bytes) -> None:
        if self._body_left is not None:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        unread_body = self._in_body
        super().on_response_complete()
        if unread_body and not self._refused and not self.transport.is_closing():
            # The app answered before the request's body ended (413, 401, 415 ...): the rest is
            # never wanted. A short rest is read and dropped (uvicorn ignores a body after its
            # answer) and the connection kept: its answer did not say `Connection: close`, so a
            # client may already be sending its next request on it. A long or unbounded rest is
            # not read: half-close after the answer, drop what still comes for LINGER_S so the
            # client reads the answer rather than a reset, then close.
            left = self._body_left
            if left is not None and left <= self._limits.max_body_bytes:
                return
            self._refused = True
            self._cancel_deadline()
            self._unset_keepalive_if_required()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    def close_after_answer(self) -> None:
        """The drain began: the answers whose head is not sent yet close their connection (the
        head says so, ``Connection: close``, so the load balancer does not reuse it)."""
        cycles = [self.cycle, *(cycle for cycle, _ in self.pipeline)]
        for cycle in cycles:
            if cycle is not None and not cycle.response_started:
                cycle.keep_alive = False

    # --- read deadlines ----------------------------------------------------------------------

    def _arm_deadline(self) -> None:
        """The deadline of the head or body being read, armed once per head and per body."""
        if not (self._in_head or self._in_body):
            self._cancel_deadline()
            return
        guards = (self._in_body, self._heads_read)
        if guards == self._deadline_for:
            return
        self._cancel_deadline()
        self._deadline_for = guards
        delay = self._limits.body_timeout_s if self._in_body else self._limits.header_timeout_s
        self._deadline = self.loop.call_later(delay, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        limits = self._limits
        if self.flow.read_paused or (self._in_body and self.cycle.waiting_for_100_continue):
            # The gateway is the one waiting (it paused reading until the app takes the body
            # read so far or a pipelined request is served, or the client waits for its
            # 100 Continue): the delay is not the client's.
            self._deadline_for = None
            self._arm_deadline()
        elif self._in_body:
            self._refuse(_timeout("body", limits.body_timeout_s))
        elif self._in_head:
            self._refuse(_timeout("headers", limits.header_timeout_s))

    # --- refusing ----------------------------------------------------------------------------

    def _refuse(self, error: ApiError) -> None:
        """Answer ``error`` and close. A request whose head was read sees a disconnect: the app
        stops waiting for its body and whatever it answers goes nowhere."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if self._in_body:
            # The request being read: answerable while its app has not begun an answer.
            busy = cycle.response_started or bool(self.pipeline)
        else:
            # A new head: answerable when no response is under way.
            busy = bool(self.pipeline) or (cycle is not None and not cycle.response_complete)
        if busy:
            # A refusal cannot be put in order with another answer: the connection just closes.
            self.transport.close()
            return
        if self._in_body:
            cycle.disconnected = True
            cycle.message_event.set()
        body = error.body()
        phrase = http.HTTPStatus(error.status).phrase.encode()
        lines = [b"HTTP/1.1 %d %s\r\n" % (error.status, phrase)]
        for name, value in [*self.server_state.default_headers, *_response_head(error, body)]:
            lines.append(b"%s: %s\r\n" % (name, value))
        self.transport.write(b"".join([*lines, b"\r\n", body]))
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body length (None without one, or with chunked encoding: its end is only
    known when it comes); the parser has already refused a malformed or conflicting one."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length


def _warn_at_capacity(open_connections: int, bound: int) -> None:
    global _last_capacity_warning
    now = time.monotonic()
    if now - _last_capacity_warning >= CAPACITY_WARNING_EVERY_S:
        _last_capacity_warning = now
        log.warning(
            "connection bound reached: %d open, server.max_connections = %d; "
            "requests on further connections get 503",
            open_connections,
            bound,
        )
