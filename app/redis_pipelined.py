"""A redis.asyncio client whose commands share one pipelined connection.

The gateway sends a few Redis commands per request (admit + cache lookup before the provider call,
settle + cache store after it). Through redis-py's own path each costs 60-90 us of CPU: a pool
checkout, a retry wrapper, a timeout context per read, observability hooks, a socket write and a
read per command. Here every command issued in the same event-loop turn goes out in one write on
one connection, and replies are matched to callers in order (Redis answers in order); a request's
admit and lookup therefore share one round trip, and under load so do many requests' commands.

`PipelinedRedis` is a `redis.asyncio.Redis`: the commands it sends through `execute_command` take
the pipelined connection, parsed by redis-py's own response callbacks; blocking commands and those
that change a connection's state (SELECT, MULTI, SUBSCRIBE, ...), `pipeline()` and anything else
that checks a connection out of the pool still use the pool. A connection failure fails
the commands in flight (each is retried once on a fresh connection, as redis-py's one-retry policy
does; `aclose()` fails them without a retry); a reply later than the socket timeout fails every
command in flight and drops the connection, so a hung Redis costs at most that timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_MORE = object()  # hiredis: no complete reply buffered yet
_NEVER_DECODE = "NEVER_DECODE"
_EMPTY_RESPONSE = "EMPTY_RESPONSE"

# Commands that keep the shared connection waiting (every reply behind theirs is held up, and a
# wait past the socket timeout drops the connection) or change its state for every caller (its
# database, transaction, subscriptions, whether Redis replies at all): these take a pool connection.
_POOL_COMMANDS = frozenset(
    {
        *("BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP"),
        *("XREAD", "XREADGROUP", "WAIT", "WAITAOF"),
        *("SELECT", "AUTH", "HELLO", "RESET", "QUIT", "CLIENT REPLY", "MONITOR"),
        *("MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"),
        *("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"),
    }
)


class _ClientClosed(RedisConnectionError):
    """The client was closed: commands in flight fail rather than reconnect behind the close."""


class _Link(asyncio.Protocol):
    """One socket: commands written once per loop turn, replies handed out in FIFO order."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, reply_timeout_s: float, decoding: dict[str, str]
    ) -> None:
        self._loop = loop
        self._timeout = reply_timeout_s
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            notEnoughData=_MORE,
            **decoding,
        )
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self.failed: BaseException | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except InvalidResponse as error:
                self.fail(error)
                return
            if reply is _MORE:
                return
            if not waiting:
                self.fail(InvalidResponse("a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # a caller that gave up (cancelled) leaves its reply unread
                if isinstance(reply, Exception):  # an error reply, built by parse_error
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Connection closed by server."))

    # --- commands ---

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.failed is not None:
            raise RedisConnectionError("Connection closed.")
        loop = self._loop
        future = loop.create_future()
        self._waiting.append((future, loop.time() + self._timeout))
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_at(loop.time() + self._timeout, self._check_timeout)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.failed is None and self._transport is not None and self._out:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check_timeout(self) -> None:
        # Replies come in order: only the oldest command in flight can be overdue first.
        self._watchdog = None
        if not self._waiting or self.failed is not None:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.fail(RedisTimeoutError("Timeout reading from redis"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check_timeout)

    def fail(self, error: BaseException) -> None:
        """Fail every command in flight and drop the socket (its reply stream is unusable)."""
        if self.failed is None:
            self.failed = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._out.clear()
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()


class PipelinedRedis(aioredis.Redis):
    """`redis.asyncio.Redis` with `execute_command` on one pipelined connection (see above)."""

    _link: _Link | None = None
    _connecting: asyncio.Task[_Link] | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0]
        if (isinstance(name, str) and name.upper() in _POOL_COMMANDS) or (
            # The shared connection decodes every reply or none; DUMP and the like want bytes.
            _NEVER_DECODE in options and self.get_encoder().decode_responses
        ):
            return await super().execute_command(*args, **options)
        # redis-py spells some commands "SCRIPT FLUSH": Redis wants two words.
        command = (*name.split(), *args[1:]) if isinstance(name, str) and " " in name else args
        try:
            packed = hiredis.pack_command(command)
        except TypeError:
            # hiredis packs only str, int, float and bytes; redis-py's rules for the rest
            # (memoryview accepted, DataError naming any other type).
            encode = self.get_encoder().encode
            packed = hiredis.pack_command(tuple(bytes(encode(arg)) for arg in command))
        try:
            response = await self._send(packed)
        except ResponseError:
            if _EMPTY_RESPONSE in options:
                return options[_EMPTY_RESPONSE]
            raise
        callback = self.response_callbacks.get(name)
        if callback is None:
            return response
        if options:
            options.pop(_EMPTY_RESPONSE, None)
            options.pop(_NEVER_DECODE, None)
            options.pop("keys", None)
        result = callback(response, **options)
        return await result if inspect.isawaitable(result) else result

    async def _send(self, packed: bytes) -> Any:
        link = self._link
        if link is None or link.failed is not None:
            link = await self._connect()
        try:
            return await link.send(packed)
        except RedisConnectionError:
            if link.failed is None or isinstance(link.failed, _ClientClosed):
                raise  # an error reply (e.g. NOAUTH) or aclose(), not a broken connection
        # The connection broke (e.g. Redis restarted): one retry on a fresh one.
        return await (await self._connect()).send(packed)

    async def _connect(self) -> _Link:
        link = self._link
        if link is not None and link.failed is None:
            return link
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[_Link]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._link = task.result()

    async def _open(self) -> _Link:
        pool = self.connection_pool
        template = pool.connection_class(**pool.connection_kwargs)
        loop = asyncio.get_running_loop()
        encoder = template.encoder
        decoding = (
            {"encoding": encoder.encoding, "errors": encoder.encoding_errors}
            if encoder.decode_responses
            else {}
        )
        link = _Link(loop, template.socket_timeout or 5.0, decoding)
        try:
            async with asyncio.timeout(template.socket_connect_timeout or 5.0):
                if isinstance(template, UnixDomainSocketConnection):
                    await loop.create_unix_connection(lambda: link, template.path)
                else:
                    ssl_context = getattr(template, "ssl_context", None)
                    await loop.create_connection(
                        lambda: link,
                        template.host,
                        template.port,
                        ssl=ssl_context.get() if ssl_context is not None else None,
                    )
        except TimeoutError:
            link.fail(RedisTimeoutError("Timeout connecting to redis"))
            raise RedisTimeoutError("Timeout connecting to redis") from None
        except OSError as error:
            link.fail(RedisConnectionError("Error connecting to redis"))
            raise RedisConnectionError(f"Error connecting to redis: {error.errno}") from None
        handshake: list[tuple[Any, ...]] = []
        if template.username or template.password:
            user = (template.username,) if template.username else ()
            handshake.append(("AUTH", *user, template.password or ""))
        if template.client_name:
            handshake.append(("CLIENT", "SETNAME", template.client_name))
        if template.db:
            handshake.append(("SELECT", template.db))
        try:
            # gather reads every reply: after a failed AUTH the replies behind it fail too.
            await asyncio.gather(*(link.send(hiredis.pack_command(c)) for c in handshake))
        except BaseException:
            link.fail(RedisConnectionError("handshake failed"))
            raise
        return link

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                # Opened before the cancel took effect: close it too.
                (await self._connecting).fail(_ClientClosed("Client closed."))
        link, self._link = self._link, None
        if link is not None:
            link.fail(_ClientClosed("Client closed."))
        await super().aclose(close_connection_pool)
