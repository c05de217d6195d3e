"""Costs the provider actually charges (issue 8 §6): for a mixed run through the official SDK
(prompt-cached and uncached input, reasoning, streams, batched completions, a gateway cache hit)
the totals in /v1/usage and the cost metric equal the sum computed here from every response's
`usage` and the catalog's prices, to the cent."""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from collections import defaultdict

import httpx
import openai
import pytest
from pydantic import ValidationError

from app.accounting import ModelPrice, PriceTable, TokenUsage
from app.server import create_app
from tests.app.gateway_harness import PROVIDER_KEY, client_keys_json, make_config, served

CAROL = "carol-key-0123456789abcdef"


def _long_system_prompt() -> str:
    # ~5,000 tokens, unique per run so the simulator's prompt cache starts cold for it.
    nonce = os.urandom(6).hex()
    return f"[{nonce}] " + " ".join(f"rule {i}: answer briefly and well." for i in range(700))


def test_usage_and_metrics_equal_the_sum_of_every_response_priced_from_the_catalog(
    simulator,
) -> None:
    simulator.app.reset()
    config = make_config(simulator.url, batching={"enabled": True, "window_ms": 50})
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        # Limits far above the run's bursts: this test is about the money, not the limiter.
        "LIFTOFF_CLIENT_KEYS": client_keys_json(
            carol={"key": CAROL, "rpm": 100_000, "tpm": 10_000_000}
        ),
    }
    app = create_app(config, env)
    system = _long_system_prompt()
    # (served model, usage dict, answered from the gateway's cache)
    answers: list[tuple[str, dict, bool]] = []

    with served(app) as url:
        client = openai.OpenAI(base_url=url, api_key=CAROL, max_retries=0, timeout=30)

        def chat(model: str, question: str, **extra) -> None:
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                **extra,
            )
            completion = raw.parse()
            hit = raw.headers["x-liftoff-cache"] == "hit"
            answers.append((completion.model, completion.usage.model_dump(), hit))

        def stream(model: str, question: str) -> None:
            chunks = list(
                client.chat.completions.create(
                    model=model,
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            answers.append((chunks[-1].model, chunks[-1].usage.model_dump(), False))

        def complete(i: int) -> None:
            result = client.completions.create(model="fast", prompt=f"Item {i}:", max_tokens=8)
            answers.append((result.model, result.usage.model_dump(), False))

        for i in range(4):
            chat("smart", f"Question {i}?", max_tokens=40)
        for i in range(2):
            stream("smart", f"Streamed question {i}?")
        for i in range(2):
            chat("o4-mini", f"Hard question {i}?", extra_body={"reasoning_effort": "low"})
        stream("o4-mini", "Streamed hard question?")
        chat("gpt-4o-mini", "Deterministic?", temperature=0)
        for _ in range(100):  # the cache write lands after the response
            chat("gpt-4o-mini", "Deterministic?", temperature=0)
            if answers[-1][2]:
                break
        else:
            pytest.fail("never served from the gateway's cache")
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(complete, range(6)))

        gateway = app.state.gateway
        for _ in range(200):  # settlements follow the responses, off their path
            usage = client.get("/usage", cast_to=object)["usage"]
            if usage["requests"] == len(answers):
                break
            time.sleep(0.02)
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text

    assert usage["requests"] == len(answers)
    batched = simulator.app.stats.prompts_per_completions_request
    assert max(batched) > 1, batched  # some completions really were batched

    catalog = gateway.config.models.catalog
    expected: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    full_price_total = 0.0
    for model, body, hit in answers:
        spec = catalog[model]
        cached = (body.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (body.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        prompt, completion = body["prompt_tokens"], body["completion_tokens"]
        cached_price = spec.cached_input_usd_per_1m
        cost = (
            (prompt - cached) * spec.input_usd_per_1m
            + cached * cached_price
            + completion * spec.output_usd_per_1m
        ) / 1e6
        row = expected[model]
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        row["cached_input_tokens"] += cached
        row["reasoning_tokens"] += reasoning
        row["saved_usd" if hit else "cost_usd"] += cost
        if not hit:
            full_price_total += (
                prompt * spec.input_usd_per_1m + completion * spec.output_usd_per_1m
            ) / 1e6

    # The run really had everything it claims.
    assert expected["gpt-4o-2024-08-06"]["cached_input_tokens"] > 0
    assert expected["o4-mini-2025-04-16"]["reasoning_tokens"] > 0
    assert expected["o4-mini-2025-04-16"]["cached_input_tokens"] > 0
    assert expected["gpt-4o-mini-2024-07-18"]["saved_usd"] > 0

    for model, row in expected.items():
        stored = usage["models"][model]
        for metric in ("prompt_tokens", "completion_tokens", "cached_input_tokens"):
            assert stored[metric] == row[metric], (model, metric)
        assert stored["reasoning_tokens"] == row["reasoning_tokens"], model
        assert round(stored["cost_usd"], 2) == round(row["cost_usd"], 2), model
        assert stored["cost_usd"] == pytest.approx(row["cost_usd"], abs=1e-9), model
        assert stored["saved_usd"] == pytest.approx(row["saved_usd"], abs=1e-9), model
        # Summed over the client keys (the counter is by key and model).
        shown = re.findall(
            rf'liftoff_cost_usd_total\{{key="[^"]+",model="{re.escape(model)}"\}} (\S+)', metrics
        )
        assert shown, model
        assert sum(map(float, shown)) == pytest.approx(row["cost_usd"], abs=1e-9), model

    total = sum(row["cost_usd"] for row in expected.values())
    assert round(usage["cost_usd"], 2) == round(total, 2)
    assert round(usage["spent_usd"], 2) == round(total, 2)
    # Pricing cached input at the full price would be off by more than a cent.
    assert full_price_total - total > 0.01


def test_cached_input_is_priced_at_the_cached_price_and_details_never_exceed_totals() -> None:
    prices = PriceTable({"m": ModelPrice(2.50, 10.00, 1.25), "plain": ModelPrice(1.0, 2.0)})
    usage = TokenUsage.of(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1536},
            "completion_tokens_details": {"reasoning_tokens": 200},
        }
    )
    assert (usage.cached_input, usage.reasoning) == (1536, 200)
    assert prices.cost_of("m", usage) == pytest.approx(
        (464 * 2.50 + 1536 * 1.25 + 300 * 10.00) / 1e6
    )
    # No cached price: the full input price (gpt-3.5-turbo-instruct has no prompt caching).
    assert prices.cost_of("plain", usage) == pytest.approx((2000 * 1.0 + 300 * 2.0) / 1e6)
    assert prices.cost_of("unpriced", usage) == 0.0
    odd = TokenUsage.of({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 99}})
    assert odd.cached_input == 10


def test_a_cached_price_above_the_input_price_is_refused() -> None:
    with pytest.raises(ValidationError, match="cached_input_usd_per_1m"):
        make_config(
            None, models={"catalog": {"gpt-4o-2024-08-06": {"cached_input_usd_per_1m": 3.0}}}
        )
