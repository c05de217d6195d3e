"""The simulator's ASGI application: routing, authentication, faults and bookkeeping shared by
every endpoint family, and a uvicorn server on a loopback port for tests and the gateway."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

import orjson
import uvicorn

from app.simulator.batches import BatchRoutes
from app.simulator.chat import ChatRoutes
from app.simulator.embeddings import EmbeddingsRoutes
from app.simulator.faults import FaultInjector, send_fault, send_invalid_key
from app.simulator.files import FileRoutes, FileStore
from app.simulator.media import MediaRoutes
from app.simulator.model import SimulatedModel
from app.simulator.moderations import ModerationRoutes
from app.simulator.options import DEFAULT_MODELS, SimulatorOptions
from app.simulator.responses import ResponsesRoutes
from app.simulator.stats import SimulatorStats
from app.simulator.vector_stores import VectorStoreRoutes
from app.simulator.wire import (
    MAX_BODY_BYTES,
    BadRequest,
    Receive,
    Request,
    Route,
    Scope,
    Send,
    bearer,
    hang,
    lifespan,
    read_body,
    send_bad_request,
    send_error,
    send_json,
)

_UNPARSEABLE = object()
_TEMPLATE_PARAM = re.compile(r"\{(\w+)(:path)?\}")


class Simulator:
    """The ASGI application. One instance holds its stats, fault sequence, fail-times ledger,
    prompt cache and stored objects (responses, files, batches...)."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self._build()

    def _build(self) -> None:
        options = self.options
        self.stats = SimulatorStats()
        self.faults = FaultInjector(options)
        self.model = SimulatedModel(options)
        self.files = FileStore(options)
        chat = ChatRoutes(self.model, self.stats)
        self.responses = ResponsesRoutes(self.model, options)
        embeddings = EmbeddingsRoutes(self.model, self.stats)
        routes = [
            Route("POST", "/v1/chat/completions", chat.chat),
            Route("POST", "/v1/completions", chat.completions, observe=chat.observe_completions),
            *self.responses.routes(),
            Route("POST", "/v1/embeddings", embeddings.create, observe=embeddings.observe),
            *ModerationRoutes().routes(),
            *FileRoutes(self.files).routes(),
            *BatchRoutes(self.files, options).routes(),
            *VectorStoreRoutes(self.files, options).routes(),
            *MediaRoutes(self.model).routes(),
            Route("GET", "/v1/models", self._models, body="none"),
            Route("GET", "/v1/models/{model:path}", self._model, body="none"),
            Route("GET", "/_simulator/stats", self._stats, body="none"),
            Route("GET", "/_simulator/requests", self._recent, body="none"),
            Route("GET", "/_simulator/embeddings", self._embedding_inputs, body="none"),
            Route("POST", "/_simulator/reset", self._reset, body="none"),
        ]
        self._exact: dict[tuple[str, str], Route] = {}
        self._templates: list[tuple[re.Pattern[str], Route]] = []
        for route in routes:
            if "{" in route.path:
                self._templates.append((_template_regex(route.path), route))
            else:
                self._exact[(route.method, route.path)] = route

    def recent_requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """The last requests received (method, path, body, headers, key fingerprint), oldest
        first; only those to `path` when given. Multipart bodies are summarised (fields, and
        each file's name and size)."""
        return [r for r in self.stats.recent if path is None or r["path"] == path]

    def embedding_inputs(self) -> list[list[Any]]:
        """The input items of each embeddings request received (the last 200), oldest first; a
        single input is a list of one."""
        return list(self.stats.recent_embedding_inputs)

    def reset(self) -> None:
        """Forget everything: stats, faults, prompt cache and every stored object."""
        self.responses.close()
        self._build()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        route = self._exact.get((method, path))
        params = None
        if route is None:
            route, params, other_method = self._match(method, path)
            if route is None:
                await _send_unknown_route(send, method, path, other_method)
                return
        stats = self.stats
        stats.requests_total += 1
        stats.by_route[f"{method} {route.path}"] += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = Request(
            method,
            path,
            headers,
            receive,
            _StatusRecorder(send, stats),
            scope.get("query_string", b""),
            params,
        )
        try:
            await self._dispatch(route, request)
        finally:
            stats.in_flight -= 1

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str] | None, bool]:
        other_method = any(p == path for m, p in self._exact if m != method)
        for pattern, route in self._templates:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route.method == method:
                return route, match.groupdict(), False
            other_method = True
        return None, None, other_method

    async def _dispatch(self, route: Route, request: Request) -> None:
        send, headers = request.send, request.headers
        streamed = route.body == "multipart"
        body = b""
        if not streamed:
            read = await read_body(request.receive)
            request.body_done = True
            if read is None:
                await send_error(send, 413, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
                return
            body = read
        if not request.path.startswith("/v1/"):
            await route.handler(request)
            return
        api_key = bearer(headers.get("authorization", ""))
        payload: Any = None
        if body:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = _UNPARSEABLE
        request.record = self.stats.remember(
            request.method,
            request.path,
            None if payload is _UNPARSEABLE else payload,
            headers,
            api_key,
        )
        if route.observe is not None:
            route.observe(payload)
        if not api_key or api_key in self.options.revoked_keys:
            await request.drain()
            if api_key:
                await send_invalid_key(send)
                return
            await send_error(
                send,
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
            return
        if request.method != "GET" and await self._faulted(request, body):
            return
        if route.body in ("json", "optional") and payload is _UNPARSEABLE:
            await send_error(
                send,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly.)",
            )
            return
        if route.body == "json" and not isinstance(payload, dict):
            await send_error(send, 400, "The request body must be a JSON object.")
            return
        request.payload = payload if isinstance(payload, dict) else None
        try:
            await route.handler(request)
        except BadRequest as exc:
            await request.drain()
            await send_bad_request(send, exc)

    async def _faulted(self, request: Request, body: bytes) -> bool:
        """Apply an injected fault; True when it answered. A `cut` marks the request instead.
        Without a request key a streamed (multipart) body is identified by its route and size."""
        headers = request.headers
        identity = body or (
            f"{request.method} {request.path} {headers.get('content-length', '')}".encode()
        )
        fault = self.faults.fault_for(headers, identity)
        if fault is None:
            return False
        self.stats.faults[fault] += 1
        if fault == "cut":
            request.cut = True
            return False
        await request.drain()
        if fault == "timeout":
            await hang(request.receive, self.options.timeout_fault_s)
            await send_error(request.send, 504, "Gateway timeout.", error_type="server_error")
            return True
        await send_fault(request.send, fault, self.faults.retry_after_s(headers))
        return True

    # ---- models and test hooks ------------------------------------------------------------
    async def _models(self, request: Request) -> None:
        names = self.options.models or DEFAULT_MODELS
        body = {"object": "list", "data": [_model_card(name) for name in names]}
        await send_json(request.send, 200, body)

    async def _model(self, request: Request) -> None:
        name = request.param("model")
        if self.options.models is not None and name not in self.options.models:
            await send_error(
                request.send,
                404,
                f"The model '{name}' does not exist",
                param="model",
                code="model_not_found",
            )
            return
        await send_json(request.send, 200, _model_card(name))

    async def _stats(self, request: Request) -> None:
        await send_json(request.send, 200, self.stats.snapshot())

    async def _recent(self, request: Request) -> None:
        path = request.query().get("path")
        await send_json(request.send, 200, {"requests": self.recent_requests(path)})

    async def _embedding_inputs(self, request: Request) -> None:
        await send_json(request.send, 200, {"requests": self.embedding_inputs()})

    async def _reset(self, request: Request) -> None:
        self.reset()
        await send_json(request.send, 200, {"reset": True})


def create_app(options: SimulatorOptions | None = None) -> Simulator:
    """The simulator as an ASGI app (its `.stats` and `.reset()` are usable in-process)."""
    return Simulator(options or SimulatorOptions())


def _template_regex(template: str) -> re.Pattern[str]:
    pattern, end = "", 0
    for match in _TEMPLATE_PARAM.finditer(template):
        pattern += re.escape(template[end : match.start()])
        pattern += f"(?P<{match.group(1)}>{'.+' if match.group(2) else '[^/]+'})"
        end = match.end()
    return re.compile(pattern + re.escape(template[end:]))


async def _send_unknown_route(send: Send, method: str, path: str, other_method: bool) -> None:
    """OpenAI's answers to a path it does not serve, or serves for another method."""
    if other_method:
        await send_error(send, 405, f"Invalid method for URL ({method} {path})")
        return
    await send_error(send, 404, f"Invalid URL ({method} {path})")


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1721172741, "owned_by": "system"}


class _StatusRecorder:
    """Wraps `send` to count response statuses."""

    __slots__ = ("_send", "_stats")

    def __init__(self, send: Send, stats: SimulatorStats) -> None:
        self._send = send
        self._stats = stats

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self._stats.by_status[message["status"]] += 1
        await self._send(message)


class SimulatorServer:
    """The simulator served by uvicorn on a loopback port in a background thread."""

    def __init__(
        self, options: SimulatorOptions | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(options)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=130,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="simulator",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
