"""A recording provider for the provider-adapter tests: a real aiohttp server on 127.0.0.1 that
keeps every request it got (method, path, query, headers, body, client port) and answers from a
script (one answer per request, in order), else with a chat completion."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from app.config import GatewayConfig
from app.metrics import Metrics
from app.providers import build_providers
from app.secrets import SecretStore
from app.upstream import UpstreamClient
from tests.app.gateway_harness import make_config

MINI = "gpt-4o-mini-2024-07-18"
BIG = "gpt-4o-2024-08-06"  # its default fallback is MINI
CHAT = {"model": MINI, "messages": [{"role": "user", "content": "Say hello"}]}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    peer_port: int

    def json(self) -> Any:
        return orjson.loads(self.body)


Answer = Callable[[web.Request, Seen], Awaitable[web.StreamResponse] | web.StreamResponse]


def json_answer(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Answer:
    def answer(request: web.Request, seen: Seen) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps(payload),
            content_type="application/json",
            headers=dict(headers or {}),
        )

    return answer


def chat_ok(request: web.Request, seen: Seen) -> web.Response:
    model = seen.json().get("model") if seen.body else None
    return json_answer(
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        },
    )(request, seen)


class RecordingProvider:
    def __init__(self, default: Answer = chat_ok) -> None:
        self.seen: list[Seen] = []
        self.answers: list[Answer] = []
        self.default = default
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            request.headers,
            body,
            peer[1] if peer else 0,
        )
        self.seen.append(seen)
        answer = self.answers.pop(0) if self.answers else self.default
        result = answer(request, seen)
        return await result if inspect.isawaitable(result) else result

    async def __aenter__(self) -> RecordingProvider:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def providers_config(
    providers: list[dict[str, Any]],
    catalog: Mapping[str, Mapping[str, Any]] | None = None,
    **upstream: Any,
) -> GatewayConfig:
    """The embedded defaults with `upstream.providers` and catalog entries merged in."""
    return make_config(
        None, upstream={"providers": providers, **upstream}, models={"catalog": catalog or {}}
    )


@contextlib.asynccontextmanager
async def client_for(
    config: GatewayConfig, env: Mapping[str, str] | None = None
) -> AsyncIterator[UpstreamClient]:
    """The gateway's provider client for `config`, its keys from `env` (resolved first)."""
    secrets = SecretStore(dict(env or {}))
    await secrets.resolve()
    client = UpstreamClient(
        build_providers(config, secrets), config.upstream, config.models, Metrics()
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()
