"""HTTP routes of the gateway (Starlette). The pipeline behind them lives in ``app/gateway.py``."""

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
from app.errors import MethodNotAllowed, RouteNotFound, to_api_error
from app.gateway import Ctx, Gateway, api_error_response, json_response

log = logging.getLogger("liftoff.server")

SERVING_GC_THRESHOLD = 10_000  # young-generation collection threshold while serving
Handler = Callable[[Request, Ctx], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(gateway: Gateway, route: str, handler: Handler) -> Endpoint:
    """Wrap a handler: request id, the error boundary, headers every response gets, metrics."""

    async def endpoint(request: Request) -> Response:
        ctx = gateway.new_ctx(route, request)
        try:
            response = await handler(request, ctx)
        except Exception as exc:  # the boundary: every error becomes an OpenAI-shaped body
            response = gateway.error_response(ctx, exc)
        return gateway.finish(ctx, response, request.method)

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


def openapi_document() -> dict[str, Any]:
    """A hand-written OpenAPI 3.1 description of the gateway's routes."""
    error = {"$ref": "#/components/schemas/Error"}
    errors = {
        code: {"description": text, "content": {"application/json": {"schema": error}}}
        for code, text in {
            "400": "invalid request (bad type or value, context_length_exceeded, "
            "content_policy_violation)",
            "401": "missing or unknown client key (invalid_api_key)",
            "404": "unknown model (model_not_found)",
            "413": "body over server.max_body_bytes",
            "415": "content type is not application/json",
            "429": "rate_limit_exceeded or insufficient_quota; Retry-After is set",
            "502": "the provider failed, or its stream was interrupted",
            "503": "circuit open, not ready, or limits unavailable (fail closed)",
            "504": "the provider timed out",
        }.items()
    }
    headers = {
        "x-request-id": {
            "schema": {"type": "string"},
            "description": "taken from the request or made",
        },
        "x-liftoff-cache": {"schema": {"enum": ["hit", "miss", "bypass"]}},
        "x-liftoff-overhead-ms": {
            "schema": {"type": "number"},
            "description": "the gateway's own time, upstream wait excluded",
        },
        "x-liftoff-budget-remaining": {"schema": {"type": "number"}, "description": "USD"},
        **{
            f"x-ratelimit-{what}-{kind}": {"schema": {"type": "string"}}
            for what in ("limit", "remaining", "reset")
            for kind in ("requests", "tokens")
        },
    }
    generation_params = [
        {
            "name": "x-liftoff-cache",
            "in": "header",
            "schema": {"enum": ["force", "bypass"]},
            "description": "force: cache even a non-deterministic request; bypass: skip the cache",
        },
        {
            "name": "Cache-Control",
            "in": "header",
            "schema": {"type": "string"},
            "description": "no-cache skips the cache",
        },
    ]

    def generation(summary: str, schema: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "parameters": generation_params,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "the completion (JSON), or SSE chunks when stream is true",
                        "headers": headers,
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **errors,
                },
            }
        }

    def simple(summary: str, secured: bool = True, method: str = "get") -> dict[str, Any]:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
        if secured:
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = errors["401"]
        return {method: op}

    stop = {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
    }
    common = {
        "model": {
            "type": "string",
            "description": "an alias (fast, smart) or a pinned catalog model",
        },
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "n": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "stop": stop,
        "max_tokens": {"type": "integer", "minimum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "seed": {"type": "integer"},
        "user": {"type": "string", "description": "forwarded to the provider as a stable hash"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Liftoff gateway",
            "version": "0.1.0",
            "description": "An OpenAI-compatible gateway: cache, shared rate limits, budgets, "
            "retries, batching, moderation and metrics in front of an LLM provider.",
        },
        "paths": {
            "/v1/chat/completions": generation("Create a chat completion", "ChatRequest"),
            "/v1/completions": generation(
                "Create a completion (up to 20 prompts)", "CompletionRequest"
            ),
            "/v1/models": simple("List the models (aliases and pinned versions)"),
            "/v1/models/{model}": simple("Retrieve one model"),
            "/v1/usage": {
                "get": {
                    **simple("This key's tokens, cost and budget for a month (admin: every key)")[
                        "get"
                    ],
                    "parameters": [
                        {
                            "name": "month",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^\\d{4}-\\d{2}$"},
                        },
                        {
                            "name": "key",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "admin only: one key's usage",
                        },
                    ],
                }
            },
            "/admin/cache/invalidate": simple(
                "Invalidate cached answers (all, one model's, one client key's, or one key's "
                "for one model: body {model?, key?}) by bumping the namespace version",
                method="post",
            ),
            "/healthz": simple("Liveness", secured=False),
            "/readyz": simple("Readiness (503 while starting or draining)", secured=False),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": simple("This document", secured=False),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
                "ChatRequest": {
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        **common,
                        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                        "max_completion_tokens": {"type": "integer", "minimum": 1},
                        "tools": {"type": "array"},
                        "response_format": {"type": "object"},
                    },
                },
                "CompletionRequest": {
                    "type": "object",
                    "required": ["model", "prompt"],
                    "properties": {
                        **common,
                        "prompt": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}, "maxItems": 20},
                            ]
                        },
                        "best_of": {"type": "integer", "minimum": 1},
                        "echo": {"type": "boolean"},
                        "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
                        "suffix": {"type": "string"},
                    },
                },
            },
        },
    }


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
    openapi = json_response(openapi_document()).body

    async def chat(request: Request, ctx: Ctx) -> Response:
        return await gateway.generate("chat", request, ctx)

    async def completions(request: Request, ctx: Ctx) -> Response:
        return await gateway.generate("completions", request, ctx)

    async def models(request: Request, ctx: Ctx) -> Response:
        gateway.authenticate(request, ctx)
        return json_response({"object": "list", "data": gateway.models_list()})

    async def model(request: Request, ctx: Ctx) -> Response:
        gateway.authenticate(request, ctx)
        name = request.path_params["model"]
        for entry in gateway.models_list():
            if entry["id"] == name:
                return json_response(entry)
        from app.errors import ModelNotFound

        raise ModelNotFound(name)

    async def healthz(request: Request, ctx: Ctx) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request, ctx: Ctx) -> Response:
        ready = gateway.ready and not gateway.draining
        state = getattr(gateway.limits, "state", "in-process")
        body = {"ready": ready, "draining": gateway.draining, "state_backend": state}
        return json_response(body, 200 if ready else 503)

    async def metrics(request: Request, ctx: Ctx) -> Response:
        state = getattr(gateway.limits, "state", "healthy")
        gateway.metrics.state_degraded.set(1 if state == "degraded" else 0)
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    async def openapi_json(request: Request, ctx: Ctx) -> Response:
        return Response(openapi, media_type="application/json")

    def route(path: str, name: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _endpoint(gateway, name, handler), methods=methods)

    hot_routes = {
        "/v1/chat/completions": _endpoint(gateway, "chat", chat),
        "/v1/completions": _endpoint(gateway, "completions", completions),
    }
    routes = [
        Route("/v1/chat/completions", hot_routes["/v1/chat/completions"], methods=["POST"]),
        Route("/v1/completions", hot_routes["/v1/completions"], methods=["POST"]),
        route("/v1/models", "models", models, ["GET"]),
        route("/v1/models/{model:path}", "models", model, ["GET"]),
        route("/v1/usage", "usage", gateway.usage, ["GET"]),
        route("/admin/cache/invalidate", "invalidate", gateway.invalidate, ["POST"]),
        route("/healthz", "healthz", healthz, ["GET"]),
        route("/readyz", "readyz", readyz, ["GET"]),
        route("/metrics", "metrics", metrics, ["GET"]),
        route("/openapi.json", "openapi", openapi_json, ["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        mapped = MethodNotAllowed() if status == 405 else RouteNotFound()
        response = api_error_response(to_api_error(mapped))
        if status == 405 and isinstance(exc, HTTPException) and exc.headers:
            response.headers["allow"] = exc.headers.get("Allow", "")
        return response

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
