"""`POST /v1/moderations`: a text carrying FLAG_MARKER is flagged for harassment and violence."""

from __future__ import annotations

from typing import Any

from app.simulator import text
from app.simulator.options import PINNED_VERSIONS
from app.simulator.wire import BadRequest, Request, Route, object_id, send_result

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
FLAG_MARKER = "FLAG_ME"


class ModerationRoutes:
    def routes(self) -> list[Route]:
        return [Route("POST", "/v1/moderations", self.create)]

    async def create(self, request: Request) -> None:
        payload = request.payload
        inputs = payload.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest("'input' must be a string or a non-empty array.", param="input")
        model = payload.get("model") or "omni-moderation-latest"
        if not isinstance(model, str):
            raise BadRequest("'model' must be a string.", param="model")
        body = {
            "id": object_id("modr-"),
            "model": PINNED_VERSIONS.get(model, model),
            "results": [moderation_result(text.content_text(item)) for item in inputs],
        }
        await send_result(request, body)


def moderation_result(content: str) -> dict[str, Any]:
    flagged = FLAG_MARKER in content
    flagged_categories = {"harassment", "violence"} if flagged else set()
    return {
        "flagged": flagged,
        "categories": {c: c in flagged_categories for c in MODERATION_CATEGORIES},
        "category_scores": {
            c: (0.97 if c in flagged_categories else 0.0001) for c in MODERATION_CATEGORIES
        },
        "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
    }
