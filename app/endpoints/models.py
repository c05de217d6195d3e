"""GET /v1/models and /v1/models/{model}: the aliases and the pinned catalog models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from app.config import ModelsConfig
from app.context import Ctx
from app.errors import ModelNotFound
from app.response_types import json_response

if TYPE_CHECKING:
    from app.gateway import Gateway


def model_cards(models: ModelsConfig) -> list[dict[str, Any]]:
    return [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "liftoff",
            "pinned": models.aliases.get(name, name),
        }
        for name in (*models.aliases, *models.catalog)
    ]


async def list_models(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    gateway.authenticate(ctx)
    return json_response({"object": "list", "data": model_cards(gateway.config.models)})


async def retrieve_model(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    gateway.authenticate(ctx)
    name = request.path_params["model"]
    for card in model_cards(gateway.config.models):
        if card["id"] == name:
            return json_response(card)
    raise ModelNotFound(name)
