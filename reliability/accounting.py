"""Accounting under concurrency: bursts of concurrent requests at one key, spread over every
gateway of the cluster (sharing one Redis), against the limiter's and the ledger's promises.

- rpm: in any interval of t seconds the key is admitted at most B + (L + 1 - B) x t / 60
  requests (app/README.md, limits: at most B at once, at most L in any 60 s). An admission
  happens between a request's send and its answer, so a request counts in an interval only when
  both lie inside it: the count is a lower bound of the admissions there, never an overcount.
- budget: the key's recorded spend never exceeds its hard budget by more than one request's
  worst-case cost (prompt tokens + max_tokens at the model's prices).
- usage: /v1/usage's totals equal the sum of the usage every response carried, exactly.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from app.config import load_config
from reliability import load
from reliability.cluster import Cluster
from reliability.faults import gcra_allowance
from reliability.load import Outcome, Spec
from reliability.usage import USAGE_FIELDS, settled_usage, token, usage_of

RPM_KEY = "acct-rpm"
BUDGET_KEY = "acct-budget"
USAGE_KEY = "acct-usage"
RPM = 120
BUDGET_USD = 0.004
BUDGET_MODEL = "smart"  # gpt-4o-2024-08-06: the priciest default, so the budget binds fast
BUDGET_MAX_TOKENS = 100


def client_keys() -> list[dict[str, Any]]:
    big = 10**8
    return [
        {"name": RPM_KEY, "key": token(RPM_KEY), "rpm": RPM, "tpm": big},
        {"name": BUDGET_KEY, "key": token(BUDGET_KEY), "rpm": big, "tpm": big,
         "monthly_budget_usd": BUDGET_USD},
        {"name": USAGE_KEY, "key": token(USAGE_KEY), "rpm": big, "tpm": big},
    ]  # fmt: skip


def urls(cluster: Cluster) -> list[str]:
    return [g.base for g in cluster.gateways]


def rpm_bound(t_s: float) -> float:
    return gcra_allowance(RPM, t_s)


def worst_rpm_interval(accepted: list[Outcome]) -> dict[str, Any]:
    """The interval where admissions come closest to (or past) the bound, and the most
    admissions inside any interval shorter than 60 s."""
    worst = {"count": 0, "seconds": 0.0, "bound": rpm_bound(0), "excess": -math.inf}
    in_60s = 0
    for first in accepted:
        start = first.started
        inside = sorted(o.ended - start for o in accepted if o.started >= start)
        for count, length in enumerate(inside, start=1):
            if length < 60:
                in_60s = max(in_60s, count)
            excess = count - rpm_bound(length)
            if excess > worst["excess"]:
                bound = round(rpm_bound(length), 2)
                worst = {"count": count, "seconds": round(length, 3), "bound": bound}
                worst["excess"] = round(excess, 2)
    return worst | {"max_in_60s": in_60s}


async def rpm_bursts(cluster: Cluster, bursts: int, size: int, every_s: float) -> dict[str, Any]:
    outcomes: list[Outcome] = []
    start = time.monotonic()
    for n in range(bursts):
        specs = [
            Spec("chat", False, load.chat_body(f"rpm {load.unique()}", False, False),
                 token(RPM_KEY))
            for _ in range(size)
        ]  # fmt: skip
        outcomes += await load.burst(urls(cluster), specs)
        await asyncio.sleep(max(0.0, start + (n + 1) * every_s - time.monotonic()))
    accepted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    worst = worst_rpm_interval(accepted)
    problems = []
    if worst["excess"] > 0:
        problems.append(
            f"{worst['count']} admitted within {worst['seconds']} s > bound {worst['bound']}"
        )
    if worst["max_in_60s"] > RPM:
        problems.append(f"{worst['max_in_60s']} admitted within 60 s > rpm {RPM}")
    if not refused:
        problems.append("no request refused: the bursts never reached the limit")
    others = [o for o in outcomes if o.status not in (200, 429) or not o.complete]
    if others:
        problems.append(f"{len(others)} answers neither 200 nor 429")
    return {
        "rpm": RPM,
        "sent": len(outcomes),
        "accepted": len(accepted),
        "refused_429": len(refused),
        "seconds": round(time.monotonic() - start, 1),
        "worst_interval": worst,
        "problems": problems,
    }


def _price(model: str) -> tuple[float, float, float]:
    config = load_config(env={})
    name = config.models.aliases.get(model, model)
    spec = config.models.catalog[name]
    return (spec.input_usd_per_1m, spec.output_usd_per_1m, spec.cached_input_usd_per_1m or 0)


async def budget_bursts(cluster: Cluster, bursts: int, size: int) -> dict[str, Any]:
    outcomes: list[Outcome] = []
    for _ in range(bursts):
        specs = []
        for _ in range(size):
            body = load.chat_body(f"budget {load.unique()}", False, False)
            body |= {"model": BUDGET_MODEL, "max_tokens": BUDGET_MAX_TOKENS}
            specs.append(Spec("chat", False, body, token(BUDGET_KEY)))
        outcomes += await load.burst(urls(cluster), specs)
    spent = (await settled_usage(cluster, BUDGET_KEY))["cost_usd"]
    input_price, output_price, _ = _price(BUDGET_MODEL)
    prompt = max((o.usage or {}).get("prompt_tokens", 0) for o in outcomes)
    worst = (prompt * input_price + BUDGET_MAX_TOKENS * output_price) / 1e6
    refused = [o for o in outcomes if o.status == 429 and o.error_code == "insufficient_quota"]
    problems = []
    if spent > BUDGET_USD + worst + 1e-12:
        problems.append(f"spent {spent:.6f} > budget {BUDGET_USD} + worst case {worst:.6f}")
    if not refused:
        problems.append("no request refused for the budget: it never bound")
    others = [o for o in outcomes if o.status not in (200, 429) or not o.complete]
    if others:
        problems.append(f"{len(others)} answers neither 200 nor 429")
    return {
        "budget_usd": BUDGET_USD,
        "spent_usd": spent,
        "worst_case_request_usd": round(worst, 8),
        "accepted": sum(o.status == 200 for o in outcomes),
        "refused_insufficient_quota": len(refused),
        "problems": problems,
    }


def _mix(n: int) -> Spec:
    prompt = f"usage {load.unique()}"
    kind = n % 5
    if kind == 0:
        return Spec("chat", False, load.chat_body(prompt, False, False), token(USAGE_KEY))
    if kind == 1:
        return Spec("chat", True, load.chat_body(prompt, True, False), token(USAGE_KEY))
    if kind == 2:
        return Spec("responses", False, load.responses_body(prompt, False, False), token(USAGE_KEY))
    if kind == 3:
        return Spec("responses", True, load.responses_body(prompt, True, False), token(USAGE_KEY))
    body = {"model": load.EMBEDDING_MODEL, "input": [prompt, f"{prompt} again"]}
    return Spec("embeddings", False, body, token(USAGE_KEY))


def answered_usage(outcome: Outcome) -> tuple[int, int]:
    usage = outcome.usage or {}
    if outcome.spec.kind == "responses":
        return usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)


async def usage_bursts(cluster: Cluster, bursts: int, size: int) -> dict[str, Any]:
    before = usage_of(cluster, USAGE_KEY)
    outcomes: list[Outcome] = []
    for b in range(bursts):
        outcomes += await load.burst(urls(cluster), [_mix(b * size + i) for i in range(size)])
    after = await settled_usage(cluster, USAGE_KEY)
    delta = {name: after[name] - before[name] for name in USAGE_FIELDS}
    ok = [o for o in outcomes if o.succeeded]
    prompt = sum(answered_usage(o)[0] for o in ok)
    completion = sum(answered_usage(o)[1] for o in ok)
    prices = {m: _price(m) for m in (load.CHAT_MODEL, load.EMBEDDING_MODEL)}
    cost = 0.0
    for o in ok:
        p, c = answered_usage(o)
        model = load.EMBEDDING_MODEL if o.spec.kind == "embeddings" else load.CHAT_MODEL
        cost += (p * prices[model][0] + c * prices[model][1]) / 1e6
    expected = {"prompt_tokens": prompt, "completion_tokens": completion, "requests": len(ok)}
    problems = [
        f"/v1/usage {name} {delta[name]} != {value} summed from the responses"
        for name, value in expected.items()
        if delta[name] != value
    ]
    if abs(delta["cost_usd"] - cost) > 1e-9:
        problems.append(f"/v1/usage cost_usd {delta['cost_usd']:.9f} != {cost:.9f} priced")
    if len(ok) != len(outcomes):
        problems.append(f"{len(outcomes) - len(ok)} requests did not succeed")
    missing = [o for o in ok if o.usage is None]
    if missing:
        problems.append(f"{len(missing)} successful answers carried no usage")
    return {
        "sent": len(outcomes),
        "usage_delta": delta,
        "from_responses": expected | {"cost_usd": round(cost, 9)},
        "problems": problems,
    }


async def run(cluster: Cluster, *, short: bool) -> dict[str, Any]:
    rpm = await rpm_bursts(
        cluster, bursts=5 if short else 36, size=40, every_s=1.0 if short else 2.0
    )
    budget = await budget_bursts(cluster, bursts=3, size=16)
    usage = await usage_bursts(cluster, bursts=2 if short else 5, size=40)
    return {"rpm": rpm, "budget": budget, "usage": usage}
