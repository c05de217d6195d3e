"""The response classes the gateway answers with: JSON, OpenAI-shaped errors, relayed streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from app.errors import ApiError


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


class RelayResponse(StreamingResponse):
    """A streaming response relayed from the task that serves the request.

    Starlette's StreamingResponse (for ASGI servers before spec 2.4, uvicorn included) starts an
    anyio task group and a second task before its first chunk, ~0.2 ms on the time to first
    token. Here the chunks go out from this task, and a light watcher task cancels it when the
    client disconnects, so the provider stream is not read to its end for nobody. The upstream
    stream is always released, even when the client went away before the first chunk (the body
    generator then never starts, so its finally never runs).
    """

    on_close: Callable[[], None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        relaying = True
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            with contextlib.suppress(Exception):  # a broken receive: no watch, as no disconnect
                while (await receive())["type"] != "http.disconnect":
                    pass
                if relaying:  # only while the relay awaits: never cancel the code after it
                    gone = True
                    task.cancel()

        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        # From ASGI 2.4 on, a send to a client that left raises OSError: no watcher needed.
        modern = tuple(map(int, spec.split("."))) >= (2, 4)
        watcher = None if modern else asyncio.ensure_future(watch_disconnect())
        try:
            await self.stream_response(send)
        except OSError:
            raise ClientDisconnect() from None
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            relaying = False
            if watcher is not None:
                watcher.cancel()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                self.on_close()


async def iter_list(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def api_error_response(api: ApiError) -> Response:
    return Response(api.body(), api.status, api.headers, media_type="application/json")
