"""Two gateway instances sharing one real redis-server: limits, budgets and the cache hold across
replicas, and Redis going away degrades service (per limits.on_redis_failure) and recovers."""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.app.gateway_harness import auth, client_keys_json, make_config, running


@contextlib.asynccontextmanager
async def two_gateways(simulator_url: str, redis_url: str, env: dict | None = None, **sections):
    config = make_config(simulator_url, redis_url, **sections)
    async with running(config, env) as first, running(config, env) as second:
        yield first, second


async def test_rate_limit_holds_across_two_instances(simulator, redis_url):
    # 60 rpm with the default burst fraction: 6 at once, then 55 a minute (app/gcra.py).
    keys = client_keys_json(alice={"rpm": 60})
    async with two_gateways(simulator.url, redis_url, {"LIFTOFF_CLIENT_KEYS": keys}) as (a, b):
        statuses = []
        started = time.monotonic()
        for i in range(12):
            statuses.append((await (a if i % 2 else b).chat()).status_code)
        refilled = int((time.monotonic() - started) * 55 / 60)
    assert 6 <= statuses.count(200) <= 6 + refilled
    assert statuses.count(429) == 12 - statuses.count(200)


async def test_token_limit_holds_across_two_instances(simulator, redis_url):
    # 12,000 tpm with the default burst fraction: 3,000 tokens at once.
    keys = client_keys_json(alice={"tpm": 12_000})
    async with two_gateways(simulator.url, redis_url, {"LIFTOFF_CLIENT_KEYS": keys}) as (a, b):
        # Each request in flight holds its prompt tokens plus max_tokens (1000) against the
        # bucket until its answer settles it to the tokens used: concurrent ones cannot overshoot.
        slow = {"x-simulator-ttft-ms": "200"}
        results = await asyncio.gather(
            *(gw.chat(max_tokens=1000, headers=slow) for gw in (a, b, a, b))
        )
    codes = [r.status_code for r in results]
    assert codes.count(200) == 2, codes
    refused = results[codes.index(429)]
    assert refused.json()["error"]["type"] == "tokens"
    assert refused.headers["x-ratelimit-remaining-tokens"]


async def test_budget_never_overshoots_under_concurrency(simulator, redis_url):
    # smart: $10 / 1M output tokens; max_tokens 100 -> worst case ~$0.001 per request.
    budget = 0.0035
    keys = client_keys_json(alice={"monthly_budget_usd": budget, "rpm": 10_000})
    async with two_gateways(simulator.url, redis_url, {"LIFTOFF_CLIENT_KEYS": keys}) as (a, b):
        slow = {"x-simulator-ttft-ms": "50"}
        responses = await asyncio.gather(
            *(
                (a if i % 2 else b).chat(model="smart", max_tokens=100, headers=slow)
                for i in range(30)
            )
        )
        await a.gateway.flush()
        await b.gateway.flush()
        usage = (await a.client.get("/v1/usage", headers=auth())).json()
    codes = [r.status_code for r in responses]
    assert 0 < codes.count(200) < 30
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    worst_case = (100 * 10.0 + 20 * 2.5) / 1_000_000
    assert usage["usage"]["spent_usd"] <= budget + worst_case
    assert usage["usage"]["reserved_usd"] == 0  # every reservation settled or released


async def test_cache_is_shared_between_instances(simulator, redis_url):
    async with two_gateways(simulator.url, redis_url) as (a, b):
        first = await a.chat(temperature=0)
        await a.gateway.flush()
        second = await b.chat(temperature=0)
        await b.client.post("/admin/cache/invalidate", headers=auth("admin-key-0123456789abcdef"))
        third = await a.chat(temperature=0)
    assert first.headers["x-liftoff-cache"] == "miss"
    assert second.headers["x-liftoff-cache"] == "hit"
    assert {**second.json(), "id": first.json()["id"]} == first.json()
    assert second.headers["x-liftoff-cache-origin-id"] == first.json()["id"]
    assert third.headers["x-liftoff-cache"] == "miss"


async def _until(predicate, timeout_s: float = 25.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_redis_outage_degrades_to_local_limits_and_recovers(
    simulator, redis_server, redis_url
):
    keys = client_keys_json(alice={"rpm": 1000})
    config = make_config(simulator.url, redis_url)
    async with running(config, {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        assert (await gw.chat(temperature=0)).headers["x-liftoff-cache"] == "miss"
        await gw.gateway.flush()
        assert (await gw.chat(temperature=0)).headers["x-liftoff-cache"] == "hit"
        redis_server.stop()
        try:
            during = [await gw.chat(temperature=0) for _ in range(3)]
            ready = (await gw.client.get("/readyz")).json()
            metrics = (await gw.client.get("/metrics")).text
        finally:
            redis_server.start()
        # Requests were served (no cache), limits decided in-process.
        assert [r.status_code for r in during] == [200, 200, 200]
        assert all(r.headers["x-liftoff-cache"] == "miss" for r in during)
        assert all("x-ratelimit-remaining-requests" in r.headers for r in during)
        assert ready["state_backend"] == "degraded"
        assert "liftoff_state_degraded 1.0" in metrics

        async def recovered() -> bool:
            response = await gw.chat(temperature=0, seed=7)
            await gw.gateway.flush()
            return (await gw.client.get("/readyz")).json()["state_backend"] == "healthy" and (
                response.status_code == 200
            )

        assert await _until(recovered)
        await gw.chat(temperature=0, seed=8)
        await gw.gateway.flush()

        async def cache_back() -> bool:
            response = await gw.chat(temperature=0, seed=8)
            await gw.gateway.flush()
            return response.headers["x-liftoff-cache"] == "hit"

        assert await _until(cache_back)


async def test_redis_outage_with_closed_mode_refuses_with_503(simulator, redis_server, redis_url):
    config = make_config(simulator.url, redis_url, limits={"on_redis_failure": "closed"})
    async with running(config) as gw:
        assert (await gw.chat()).status_code == 200
        redis_server.stop()
        try:
            refused = await gw.chat()
        finally:
            redis_server.start()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert "127.0.0.1" not in refused.text
