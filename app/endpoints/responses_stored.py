"""The Responses API routes around a stored response, and its token counter:

`GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`,
`GET /v1/responses/{id}/input_items`, `POST /v1/responses/input_tokens`.

Each is forwarded to the provider with the client's key checked and its request limit applied
(admitted as a request of no tokens and no cost, the reservation released after the answer);
the query string and the body go as the client sent them (`input_tokens`: the model alias
resolved) and the provider's answer comes back as it is, its own 404 included. A response is
stored at one provider: these go to the first configured one (a response id names no model).
A response another client key made is answered with the provider's 404 for an unknown id
(app/object_owners.py); a deleted one's owner record is dropped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.context import Ctx
from app.endpoints.passthrough import forward
from app.errors import InvalidRequest, ModelNotFound
from app.object_owners import RESPONSES, ObjectRoute

if TYPE_CHECKING:
    from app.gateway import Gateway

# Provider response ids are `resp_` and hex digits; anything else never reaches a provider path.
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")


async def stored_response(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    """GET (retrieve) or DELETE one stored response."""
    response_id = _response_id(request)
    return await _forward(gateway, request, ctx, f"/v1/responses/{response_id}", response_id)


async def cancel_response(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    response_id = _response_id(request)
    path = f"/v1/responses/{response_id}/cancel"
    return await _forward(gateway, request, ctx, path, response_id)


async def list_input_items(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    response_id = _response_id(request)
    path = f"/v1/responses/{response_id}/input_items"
    return await _forward(gateway, request, ctx, path, response_id)


async def count_input_tokens(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    """POST /v1/responses/input_tokens: the body as sent, its model alias resolved."""
    gateway.authenticate(ctx)
    body, _ = await gateway.read_json(request, ctx)
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise InvalidRequest(
                f"Invalid type for 'model': expected a string, got {type(model).__name__}.",
                "model",
                "invalid_type",
            )
        resolved = gateway.config.models.resolve(model)
        if resolved is None:
            raise ModelNotFound(model)
        body["model"] = ctx.model = resolved
    path = "/v1/responses/input_tokens"
    return await _forward(gateway, request, ctx, path, None, orjson.dumps(body), body.get("model"))


def _response_id(request: Request) -> str:
    response_id = request.path_params["response_id"]
    if not _RESPONSE_ID.fullmatch(response_id):
        raise InvalidRequest(
            "Invalid 'response_id': expected letters, digits, '_' or '-'.",
            "response_id",
            "invalid_value",
        )
    return response_id


async def _forward(
    gateway: Gateway,
    request: Request,
    ctx: Ctx,
    path: str,
    response_id: str | None,
    body: bytes | None = None,
    model: str | None = None,
) -> Response:
    """`response_id`: the stored response the path names (None: input_tokens, which names
    none and stores nothing)."""
    limit = gateway.config.server.max_body_bytes
    objects = None if response_id is None else ObjectRoute(RESPONSES, response_id)
    return await forward(gateway, request, ctx, path, limit, body, model, objects)


# (path, metric route label, handler, methods); input_tokens before "{response_id}" (no id).
STORED_ROUTES = (
    ("/v1/responses/input_tokens", "responses_input_tokens", count_input_tokens, ["POST"]),
    ("/v1/responses/{response_id}", "responses_stored", stored_response, ["GET", "DELETE"]),
    ("/v1/responses/{response_id}/cancel", "responses_cancel", cancel_response, ["POST"]),
    ("/v1/responses/{response_id}/input_items", "responses_input_items", list_input_items, ["GET"]),
)
