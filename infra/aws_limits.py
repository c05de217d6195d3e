"""Settings AWS would refuse at deploy time, refused at load time instead: names and their
lengths, ElastiCache versions and node types, Budgets limits, zone IDs.

`problems` is called by `infra.settings_checks` with the typed values that passed their own
checks; each problem is (field, what is allowed), and the field "stack" means the Pulumi stack
name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from infra.cache_engines import cache_problems
from infra.names import name_problems
from infra.zones import pinned_zone_count, zone_id_problems

# AWS Budgets: at most 10 notifications per budget and 10 e-mail subscribers per notification.
BUDGET_NOTIFICATIONS_MAX = 10
EMAIL_SUBSCRIBERS_MAX = 10


def budget_problems(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    forecast = 1 if v.get("budget_forecast_threshold") is not None else 0
    thresholds = set(v.get("budget_thresholds") or [])
    if len(thresholds) + forecast > BUDGET_NOTIFICATIONS_MAX:
        yield (
            "budget_thresholds",
            f"at most {BUDGET_NOTIFICATIONS_MAX - forecast} distinct thresholds (AWS Budgets "
            f"allows {BUDGET_NOTIFICATIONS_MAX} notifications per budget"
            + (", and liftoff:budgetForecastThreshold takes one)" if forecast else ")"),
        )
    emails = [e.lower() for e in v.get("alert_emails") or []]
    if len(emails) > EMAIL_SUBSCRIBERS_MAX:
        yield (
            "alert_emails",
            f"at most {EMAIL_SUBSCRIBERS_MAX} addresses (the AWS Budgets limit of e-mail "
            "subscribers per notification); use a distribution list for more",
        )
    elif len(set(emails)) != len(emails):
        yield ("alert_emails", "each address once (every alert reaches each address once)")


def problems(v: Mapping[str, Any], raw: Mapping[str, Any], stack: str) -> list[tuple[str, str]]:
    """Every AWS limit the settings `v` (defaults included) break for `stack`; `raw` holds what
    the stack set itself."""
    found = [*cache_problems(v), *budget_problems(v)]
    found += zone_id_problems(
        v.get("region", ""), v.get("availability_zone_ids") or [], pinned_zone_count(raw)
    )
    if v.get("name"):
        found += name_problems(v["name"], stack)
    return found
