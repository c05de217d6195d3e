"""HTTP routes of the gateway (Starlette).

Generation routes go to the shared pipeline (app/pipeline.py) with their endpoint kind
(app/endpoints/); the parts behind them are started by app/gateway.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import GatewayConfig, load_config
from app.context import Ctx, new_ctx
from app.endpoints import GENERATION_ENDPOINTS
from app.endpoints.base import GenerationEndpoint
from app.endpoints.cache_admin import invalidate
from app.endpoints.models import list_models, retrieve_model
from app.endpoints.passthrough import PASSTHROUGH_ROUTES
from app.endpoints.responses_stored import STORED_ROUTES
from app.endpoints.usage import usage
from app.errors import MethodNotAllowed, NotReady, RouteNotFound, to_api_error
from app.gateway import Gateway
from app.openapi import openapi_document
from app.response_types import api_error_response, json_response

log = logging.getLogger("liftoff.server")

SERVING_GC_THRESHOLD = 10_000  # young-generation collection threshold while serving
Handler = Callable[[Request, Ctx], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(gateway: Gateway, route: str, handler: Handler) -> Endpoint:
    """Wrap a handler: request id, the error boundary, headers every response gets, metrics."""
    finisher = gateway.finisher

    async def endpoint(request: Request) -> Response:
        ctx = new_ctx(route, request)
        try:
            response = await handler(request, ctx)
        except Exception as exc:  # the boundary: every error becomes an OpenAI-shaped body
            response = finisher.error_response(ctx, exc)
        return finisher.finish(ctx, response, request.method)

    return endpoint


class GatewayApp(Starlette):
    """Starlette, with the generation routes dispatched straight to their endpoints.

    They carry almost all the traffic and their endpoints are their own error boundary, so they
    skip the middleware stack, the route scan and the per-message send wrappers (tens of
    microseconds per request, and a wrapper call per streamed chunk). Everything else, and any
    request under a root_path, takes the ordinary Starlette path.
    """

    def __init__(self, *args: Any, hot_routes: Mapping[str, Endpoint], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Starlette would answer a trailing-slash variant with a redirect built from the Host
        # header; like OpenAI, such a URL is an unknown route (an OpenAI-shaped 404).
        self.router.redirect_slashes = False
        self.hot_routes = dict(hot_routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.hot_routes.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def tune_gc_for_serving() -> None:
    """After startup: fewer and cheaper garbage collections while serving (process-wide).

    Measured under the cache-miss bench load: with CPython's default thresholds (700, 10, 10)
    the collector ran ~200 times a second and took ~15% of the gateway's CPU (~75 us per
    request), and each full collection walked the whole startup heap (tokenizer vocabularies,
    config, the app) for ~50 ms, a stall every few seconds. Freezing what startup allocated
    takes it out of every later collection; a young-generation threshold of 10,000 lets request
    garbage die by reference counting before a collection has to look at it (cycles are still
    collected, in batches of at most that many new objects).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_GC_THRESHOLD, 20, 20)


def create_app(
    config: GatewayConfig | None = None,
    env: Mapping[str, str] | None = None,
    *,
    tune_gc: bool = False,
) -> Starlette:
    """The ASGI app; its lifespan starts and stops the gateway (``app.state.gateway``).

    `tune_gc`: once started, tune the process' garbage collector for serving
    (`tune_gc_for_serving`); for the server process, not for an app embedded in tests.
    """
    config = config or load_config(env=env)
    gateway = Gateway(config, env)
    openapi = json_response(openapi_document(config)).body

    def generation(endpoint: GenerationEndpoint) -> Handler:
        async def handler(request: Request, ctx: Ctx) -> Response:
            pipeline = gateway.pipeline
            if pipeline is None:
                raise NotReady()
            return await pipeline.generate(endpoint, request, ctx)

        return handler

    def bound(handler: Callable[[Gateway, Request, Ctx], Awaitable[Response]]) -> Handler:
        async def call(request: Request, ctx: Ctx) -> Response:
            return await handler(gateway, request, ctx)

        return call

    async def healthz(request: Request, ctx: Ctx) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request, ctx: Ctx) -> Response:
        ready = gateway.ready and not gateway.draining
        state = getattr(gateway.limits, "state", "in-process")
        body = {"ready": ready, "draining": gateway.draining, "state_backend": state}
        return json_response(body, 200 if ready else 503)

    async def metrics(request: Request, ctx: Ctx) -> Response:
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    async def openapi_json(request: Request, ctx: Ctx) -> Response:
        return Response(openapi, media_type="application/json")

    def route(path: str, name: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _endpoint(gateway, name, handler), methods=methods)

    def traced(template: str, handler: Handler) -> Handler:
        """A passthrough route: its requests get HTTP spans when telemetry is on."""

        async def call(request: Request, ctx: Ctx) -> Response:
            if gateway.telemetry is not None:
                gateway.telemetry.start_route(request.method, template, request.url.path, ctx)
            return await handler(request, ctx)

        return call

    hot_routes = {
        endpoint.path: _endpoint(gateway, endpoint.name, generation(endpoint))
        for endpoint in GENERATION_ENDPOINTS
    }
    routes = [
        *(Route(path, handler, methods=["POST"]) for path, handler in hot_routes.items()),
        route("/v1/models", "models", bound(list_models), ["GET"]),
        route("/v1/models/{model:path}", "models", bound(retrieve_model), ["GET"]),
        route("/v1/usage", "usage", bound(usage), ["GET"]),
        *(
            route(path, name, traced(path, bound(call)), methods)
            for path, name, call, methods in (*STORED_ROUTES, *PASSTHROUGH_ROUTES)
        ),
        route("/admin/cache/invalidate", "invalidate", bound(invalidate), ["POST"]),
        route("/healthz", "healthz", healthz, ["GET"]),
        route("/readyz", "readyz", readyz, ["GET"]),
        route("/metrics", "metrics", metrics, ["GET"]),
        route("/openapi.json", "openapi", openapi_json, ["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown routes and methods get the headers, metrics and log line of any response.
        status = getattr(exc, "status_code", 500)
        ctx = new_ctx("unknown", request)
        mapped = MethodNotAllowed() if status == 405 else RouteNotFound()
        response = api_error_response(to_api_error(mapped))
        if status == 405 and isinstance(exc, HTTPException) and exc.headers:
            response.headers["allow"] = exc.headers.get("Allow", "")
        return gateway.finisher.finish(ctx, response, request.method)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        if tune_gc:
            tune_gc_for_serving()
        try:
            yield
        finally:
            await gateway.close()

    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
        hot_routes=hot_routes,
    )
    app.state.gateway = gateway
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory app.server:create_app_from_env`` (config from the env).

    Used by each worker process when LIFTOFF_WORKERS > 1 (workers start as fresh interpreters,
    so logging is set up here too).
    """
    import os

    from app.log import setup_logging

    setup_logging(os.environ.get("LIFTOFF_LOG_LEVEL", "INFO").upper())
    return create_app(tune_gc=True)
