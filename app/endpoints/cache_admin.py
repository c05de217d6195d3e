"""POST /admin/cache/invalidate: drop cached answers (all, a model's, a key's) by version bump."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from app.context import Ctx
from app.errors import InvalidRequest
from app.response_types import json_response

if TYPE_CHECKING:
    from app.gateway import Gateway

log = logging.getLogger("liftoff.gateway")


async def invalidate(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    key = gateway.authenticate(ctx)
    gateway.keys.require_admin(key)
    body: dict[str, Any] = {}
    if ctx.h.get("content-length", "0") != "0" or "transfer-encoding" in ctx.h:
        body, _ = await gateway.read_json(request, ctx)  # bounded, application/json only
    model = body.get("model")
    resolved: str | None = None
    if model is not None:
        if not isinstance(model, str):
            raise InvalidRequest("Invalid type for 'model': expected a string.", "model")
        resolved = gateway.config.models.resolve(model)
        if resolved is None:
            raise InvalidRequest(f"Unknown model '{model}'.", "model", "model_not_found")
    scope = _invalidation_scope(gateway, body.get("key"))
    await gateway.cache.invalidate(resolved, scope)
    log.info(
        "cache invalidated",
        extra={"model": resolved or "*", "cache_key_scope": scope or "*", "by": key.name},
    )
    return json_response(
        {"object": "cache.invalidation", "model": resolved, "key": scope, "invalidated": True}
    )


def _invalidation_scope(gateway: Gateway, name: Any) -> str | None:
    """The client key whose entries an invalidation is limited to (None: every key's)."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidRequest("Invalid type for 'key': expected a string.", "key")
    if gateway.config.cache.scope != "key":
        raise InvalidRequest(
            "'key' needs cache.scope = key: with cache.scope = global every client key shares "
            "the entries, invalidate by 'model' or everything.",
            "key",
            "invalid_value",
        )
    if name not in gateway.policies:
        raise InvalidRequest(f"Unknown client key '{name}'.", "key", "invalid_value")
    return name
