"""The benchmark's yardstick: the least a proxy on the gateway's stack can do.

`python -m bench.bare_proxy --port P --upstream URL` serves POST /v1/chat/completions by passing
the body and the Authorization header to `URL` through one pooled aiohttp client and relaying the
answer (status, content type, body chunk by chunk, so a stream stays a stream), and GET /readyz.
Nothing else: no auth, limits, cache, accounting, metrics or logs. It runs on what the gateway runs
on (uvicorn with uvloop and httptools, an aiohttp client pool), so a gateway figure over this one
says what the gateway's features cost, whatever the machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import uvicorn

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROUTE = "/v1/chat/completions"
FORWARDED = (b"authorization", b"content-type")


class BareProxy:
    """ASGI app: one aiohttp session for the process, opened and closed by the lifespan."""

    def __init__(self, upstream: str, connections: int = 256) -> None:
        self.url = upstream.rstrip("/") + ROUTE
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["method"] == "POST" and scope["path"] == ROUTE:
                await self._forward(scope, receive, send)
            elif scope["method"] == "GET" and scope["path"] == "/readyz":
                await _answer(send, 200, b"application/json", b'{"ready":true}')
            else:
                await _answer(send, 404, b"text/plain", b"not found")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=60)
                self.session = aiohttp.ClientSession(
                    connector=connector,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                    skip_auto_headers=("User-Agent",),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert self.session is not None
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        async with self.session.post(self.url, data=bytes(body), headers=headers) as upstream:
            content_type = upstream.headers.get("content-type", "application/json").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": [(b"content-type", content_type)],
                }
            )
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _answer(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    uvicorn.run(
        BareProxy(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
