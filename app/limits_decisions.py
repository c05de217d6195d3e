"""What both back ends share around their atomic step: turning its raw result (`RawDecision`)
into an `Admission` (rate-limit headers, retry time, budget figures, soft threshold), checking
`admit`/`settle` arguments, and the usage counters a settlement adds and the usage document read
back from them.

Separate from the stores so that the in-process and the Redis store compute headers, retry
times and budget figures with one piece of code (the raw decisions themselves are the stores').
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass

from app.gcra import Bucket, BurstFractions, TokenMark, figures
from app.limits_types import (
    EPSILON_USD,
    REASONS,
    USAGE_FLOAT_METRICS,
    USAGE_INT_METRICS,
    Admission,
    KeyPolicy,
    LimitStore,
    Reservation,
)


@functools.lru_cache(maxsize=4096)
def bucket_of(limit: int, burst_fraction: float) -> Bucket:
    return Bucket.of(limit, burst_fraction)


def format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format (Go duration style): "250ms", "1s", "6m0s", "1.5s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest_ms = divmod(ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole, frac = divmod(rest_ms, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") + "s" if frac else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


@dataclass(frozen=True, slots=True)
class RawDecision:
    """What a back end's atomic step decided and observed; everything else derives from it."""

    code: int  # index into REASONS
    request_level: int  # the live bucket levels before this request (units * PERIOD_US)
    token_level: int
    key_committed_usd: float  # spent + reserved before this request's reservation
    global_committed_usd: float
    token_mark: TokenMark | None  # where an admitted request's tokens went in the token bucket


def build_admission(
    raw: RawDecision,
    policy: KeyPolicy,
    model: str,
    tokens: int,
    worst_case_usd: float,
    global_budget_usd: float | None,
    soft_fraction: float,
    month: str,
    owner: LimitStore,
    bursts: BurstFractions,
) -> Admission:
    reason = REASONS[raw.code]
    admitted = reason == "ok"
    headers: dict[str, str] = {}
    retry_after = 0.0
    for kind, limit, fraction, level, cost, denying in (
        ("requests", policy.rpm, bursts.requests, raw.request_level, 1, "rate_limit_requests"),
        ("tokens", policy.tpm, bursts.tokens, raw.token_level, tokens, "rate_limit_tokens"),
    ):
        if limit is None:
            continue
        shown = figures(bucket_of(limit, fraction), level, cost, admitted)
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(shown.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(shown.reset_s)
        if reason == denying:
            retry_after = shown.retry_s

    reserve = worst_case_usd if admitted and has_budget(policy, global_budget_usd) else 0.0
    remaining_budgets = []
    soft = False
    for budget, committed in (
        (policy.monthly_budget_usd, raw.key_committed_usd),
        (global_budget_usd, raw.global_committed_usd),
    ):
        if budget is None:
            continue
        after = committed + reserve
        remaining_budgets.append(max(0.0, budget - after))
        if after >= soft_fraction * budget - EPSILON_USD:
            soft = True
    reservation = None
    if admitted:
        held = tokens if policy.tpm is not None else 0
        reservation = Reservation(
            policy.key_id,
            model,
            month,
            reserve,
            held,
            policy.tpm,
            token_mark=raw.token_mark,
            owner=owner,
        )
    return Admission(
        allowed=admitted,
        reason=reason,
        retry_after_s=retry_after,
        headers=headers,
        budget_remaining_usd=min(remaining_budgets) if remaining_budgets else None,
        soft_exceeded=soft,
        reservation=reservation,
    )


def has_budget(policy: KeyPolicy, global_budget_usd: float | None) -> bool:
    return policy.monthly_budget_usd is not None or global_budget_usd is not None


def check_admit_args(tokens: int, worst_case_usd: float, soft_fraction: float) -> None:
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0, got {tokens!r}")
    if not math.isfinite(worst_case_usd) or worst_case_usd < 0:
        raise ValueError(f"worst_case_usd must be a number >= 0, got {worst_case_usd!r}")
    if not 0 < soft_fraction <= 1:
        raise ValueError(f"soft_fraction must be in (0, 1], got {soft_fraction!r}")


def check_settle_args(
    actual_usd: float,
    prompt_tokens: int,
    completion_tokens: int,
    saved_usd: float,
    cached_input_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> None:
    for name, value in (("actual_usd", actual_usd), ("saved_usd", saved_usd)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("cached_input_tokens", cached_input_tokens),
        ("reasoning_tokens", reasoning_tokens),
    ):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def tpm_tokens_used(
    prompt_tokens: int, completion_tokens: int, cached: bool, count_cache_hits_tokens: bool
) -> int:
    """What a settled request counts against tokens per minute: the provider's usage, and nothing
    for an answer from the gateway's cache unless `limits.count_cache_hits_tokens`."""
    if cached and not count_cache_hits_tokens:
        return 0
    return prompt_tokens + completion_tokens


def usage_field(model: str, metric: str) -> str:
    # Metric first: model names may contain ":" (fine-tuned models), metric names never do.
    return f"{metric}:{model}"


@functools.lru_cache(maxsize=1024)
def _usage_fields(model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A model's usage hash fields, integer and float ones (built once per model: settling runs
    for every request)."""
    return (
        tuple(usage_field(model, m) for m in USAGE_INT_METRICS),
        tuple(usage_field(model, m) for m in USAGE_FLOAT_METRICS),
    )


def settle_increments(
    reservation: Reservation,
    actual_usd: float,
    prompt_tokens: int,
    completion_tokens: int,
    cached: bool,
    saved_usd: float,
    cached_input_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> tuple[dict[str, int], dict[str, float]]:
    """The usage counters one settled request adds (zero increments left out)."""
    int_names, float_names = _usage_fields(reservation.model)
    ints = (prompt_tokens, completion_tokens, cached_input_tokens, reasoning_tokens, 1, int(cached))
    floats = (actual_usd, saved_usd)
    return (
        {name: value for name, value in zip(int_names, ints, strict=True) if value},
        {name: value for name, value in zip(float_names, floats, strict=True) if value},
    )


def key_usage(spent: float, reserved: float, fields: dict[str, float]) -> dict:
    """One key's usage document from its stored counters."""
    models: dict[str, dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(USAGE_INT_METRICS, 0) | dict.fromkeys(USAGE_FLOAT_METRICS, 0.0)
    )
    for name, value in fields.items():
        metric, _, model = name.partition(":")
        models[model][metric] = int(value) if metric in USAGE_INT_METRICS else float(value)
    totals = {
        metric: sum(m[metric] for m in models.values())
        for metric in USAGE_INT_METRICS + USAGE_FLOAT_METRICS
    }
    return {
        "spent_usd": spent,
        "reserved_usd": max(0.0, reserved),
        **totals,
        "models": dict(models),
    }
