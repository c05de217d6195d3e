"""GET /v1/usage: a key's tokens, cost and budget for a month (an admin key: every key's)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from app.accounting import month_key
from app.context import Ctx
from app.errors import InvalidRequest, StateUnavailable
from app.redis_backend import BackendUnavailable
from app.response_types import json_response

if TYPE_CHECKING:
    from app.gateway import Gateway

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


async def usage(gateway: Gateway, request: Request, ctx: Ctx) -> Response:
    key = gateway.authenticate(ctx)
    month = request.query_params.get("month") or month_key()
    if not _MONTH.fullmatch(month):
        raise InvalidRequest("Invalid 'month': expected YYYY-MM.", "month", "invalid_value")
    wanted = request.query_params.get("key")
    if wanted is not None and wanted != key.name:
        gateway.keys.require_admin(key)
    try:
        if key.admin and wanted is None:
            data = await gateway.limits.usage(None, month)
            return json_response(
                {
                    "object": "usage",
                    "month": month,
                    "keys": data.get("keys", {}),
                    "global": data.get("global"),
                    "global_monthly_budget_usd": gateway.config.budgets.global_monthly_usd,
                }
            )
        name = wanted or key.name
        data = await gateway.limits.usage(name, month)
    except BackendUnavailable:
        raise StateUnavailable() from None
    spent = data.get("keys", {}).get(name, {})
    policy = gateway.policies.get(name)
    budget = policy.monthly_budget_usd if policy else None
    remaining = None
    if budget is not None:
        committed = spent.get("spent_usd", 0.0) + spent.get("reserved_usd", 0.0)
        remaining = max(0.0, budget - committed)
    return json_response(
        {
            "object": "usage",
            "month": month,
            "key": name,
            "monthly_budget_usd": budget,
            "budget_remaining_usd": remaining,
            "usage": spent,
        }
    )
