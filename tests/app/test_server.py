"""The gateway's routes end to end against the simulator: headers, cache, single flight, usage,
admin invalidation, models, metrics, OpenAPI, moderation, user hashing, budgets and limits."""

from __future__ import annotations

import asyncio
import hashlib

import orjson

from tests.app.gateway_harness import (
    ADMIN,
    ALICE,
    BOB,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
)

DETERMINISTIC = {"temperature": 0}


async def test_response_headers_and_openai_shape(simulator):
    async with running(make_config(simulator.url)) as gw:
        response = await gw.chat(headers={"x-request-id": "req-abc-123"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini-2024-07-18"  # alias "fast" resolved to the pinned version
    headers = response.headers
    assert headers["x-request-id"] == "req-abc-123"
    assert headers["x-liftoff-cache"] == "bypass"  # temperature defaults to 1: not cached
    assert float(headers["x-liftoff-overhead-ms"]) >= 0
    for kind in ("requests", "tokens"):
        for what in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{what}-{kind}" in headers


async def test_request_id_made_when_missing_or_unsafe(simulator):
    async with running(make_config(simulator.url)) as gw:
        made = await gw.chat()
        unsafe = await gw.chat(headers={"x-request-id": "bad id\twith spaces"})
    assert len(made.headers["x-request-id"]) == 32
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


async def test_deterministic_requests_are_cached_and_saved_cost_is_tracked(simulator):
    async with running(make_config(simulator.url)) as gw:
        first = await gw.chat(**DETERMINISTIC)
        second = await gw.chat(**DETERMINISTIC)
        other_max_tokens = await gw.chat(max_tokens=7, **DETERMINISTIC)
        seeded = await gw.chat(seed=42)
        seeded_again = await gw.chat(seed=42)
        metrics = (await gw.client.get("/metrics")).text
        await gw.gateway.flush()
        usage = (await gw.client.get("/v1/usage", headers=auth())).json()
    assert first.headers["x-liftoff-cache"] == "miss"
    assert second.headers["x-liftoff-cache"] == "hit"
    # The same answer under its own id; the stored answer's id is in a header.
    assert {**second.json(), "id": first.json()["id"]} == first.json()
    assert second.json()["id"] != first.json()["id"]
    assert second.headers["x-liftoff-cache-origin-id"] == first.json()["id"]
    assert "x-liftoff-cache-origin-id" not in first.headers
    assert other_max_tokens.headers["x-liftoff-cache"] == "miss"  # max_tokens is in the key
    assert seeded.headers["x-liftoff-cache"] == "miss"
    assert seeded_again.headers["x-liftoff-cache"] == "hit"
    assert 'liftoff_cache_results_total{result="hit"} 2.0' in metrics
    assert "liftoff_cache_saved_usd_total" in metrics
    assert usage["key"] == "alice"
    assert usage["usage"]["cache_hits"] == 2
    assert usage["usage"]["saved_usd"] > 0
    assert usage["usage"]["requests"] == 5


async def test_cache_directives_force_bypass_and_no_cache(simulator):
    async with running(make_config(simulator.url)) as gw:
        forced = await gw.chat(headers={"x-liftoff-cache": "force"})
        forced_again = await gw.chat(headers={"x-liftoff-cache": "force"})
        await gw.chat(**DETERMINISTIC)
        bypass = await gw.chat(headers={"x-liftoff-cache": "bypass"}, **DETERMINISTIC)
        no_cache = await gw.chat(headers={"cache-control": "no-cache"}, **DETERMINISTIC)
    assert forced.headers["x-liftoff-cache"] == "miss"
    assert forced_again.headers["x-liftoff-cache"] == "hit"
    assert bypass.headers["x-liftoff-cache"] == "bypass"
    assert no_cache.headers["x-liftoff-cache"] == "bypass"


async def test_single_flight_makes_one_upstream_call_for_identical_requests(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        headers = {"x-simulator-ttft-ms": "200"}
        responses = await asyncio.gather(
            *(gw.chat(headers=headers, **DETERMINISTIC) for _ in range(8))
        )
    assert {r.status_code for r in responses} == {200}
    assert len({orjson.dumps({**r.json(), "id": ""}) for r in responses}) == 1
    assert len({r.json()["id"] for r in responses}) == 8  # each response has its own id
    assert simulator.app.stats.by_route["POST /v1/chat/completions"] == 1
    assert sorted(r.headers["x-liftoff-cache"] for r in responses).count("miss") == 1


async def test_admin_invalidation_by_model_and_all(simulator):
    async with running(make_config(simulator.url)) as gw:
        await gw.chat(**DETERMINISTIC)
        assert (await gw.chat(**DETERMINISTIC)).headers["x-liftoff-cache"] == "hit"
        denied = await gw.client.post("/admin/cache/invalidate", headers=auth(ALICE))
        other = await gw.client.post(
            "/admin/cache/invalidate", json={"model": "smart"}, headers=auth(ADMIN)
        )
        still = await gw.chat(**DETERMINISTIC)
        done = await gw.client.post(
            "/admin/cache/invalidate", json={"model": "fast"}, headers=auth(ADMIN)
        )
        after = await gw.chat(**DETERMINISTIC)
        everything = await gw.client.post("/admin/cache/invalidate", headers=auth(ADMIN))
        after_all = await gw.chat(**DETERMINISTIC)
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert other.status_code == 200 and still.headers["x-liftoff-cache"] == "hit"
    assert done.json()["model"] == "gpt-4o-mini-2024-07-18"
    assert after.headers["x-liftoff-cache"] == "miss"
    assert everything.status_code == 200 and after_all.headers["x-liftoff-cache"] == "miss"


async def test_models_usage_health_metrics_and_openapi(simulator):
    async with running(make_config(simulator.url)) as gw:
        await gw.chat()
        await gw.chat(key=BOB)
        await gw.gateway.flush()
        models = (await gw.client.get("/v1/models", headers=auth())).json()
        one = await gw.client.get("/v1/models/smart", headers=auth())
        missing = await gw.client.get("/v1/models/nope", headers=auth())
        mine = (await gw.client.get("/v1/usage", headers=auth())).json()
        other = await gw.client.get("/v1/usage?key=bob", headers=auth())
        everyone = (await gw.client.get("/v1/usage", headers=auth(ADMIN))).json()
        bad_month = await gw.client.get("/v1/usage?month=2024-13", headers=auth())
        health = await gw.client.get("/healthz")
        ready = await gw.client.get("/readyz")
        metrics = await gw.client.get("/metrics")
        openapi = (await gw.client.get("/openapi.json")).json()
        unknown = await gw.client.get("/v2/nothing")
        wrong_method = await gw.client.get("/v1/chat/completions")
    ids = {m["id"] for m in models["data"]}
    assert {"fast", "smart", "gpt-4o-mini-2024-07-18"} <= ids
    assert one.json()["pinned"] == "gpt-4o-2024-08-06"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert mine["key"] == "alice" and mine["usage"]["spent_usd"] > 0
    assert other.status_code == 403
    assert {"alice", "bob"} <= set(everyone["keys"])
    assert bad_month.status_code == 400
    assert health.status_code == 200 and ready.status_code == 200
    text = metrics.text
    for name in (
        "liftoff_requests_total",
        "liftoff_request_duration_seconds",
        "liftoff_tokens_total",
        "liftoff_cost_usd_total",
        "liftoff_upstream_in_flight",
        "liftoff_circuit_state",
    ):
        assert name in text
    assert (
        'liftoff_requests_total{model="gpt-4o-mini-2024-07-18",route="chat",status="200"}' in text
    )
    assert set(openapi["paths"]) >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/usage",
        "/admin/cache/invalidate",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


async def test_user_is_forwarded_as_stable_hash(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        await gw.chat(user="user-42@example.com")
        await gw.chat(user="user-42@example.com")
    sent = [r["body"]["user"] for r in simulator.app.recent_requests()[-2:]]
    assert sent[0] == sent[1]
    assert "user-42" not in sent[0] and sent[0].startswith("u-")
    expected = hashlib.sha256(b"alice\x00user-42@example.com").hexdigest()[:32]
    assert sent[0] == "u-" + expected


async def test_upstream_always_gets_the_resolved_model_and_clamped_max_tokens(simulator):
    simulator.app.reset()
    async with running(make_config(simulator.url)) as gw:
        await gw.chat(model="smart", max_tokens=1_000_000)
    sent = simulator.app.recent_requests()[-1]["body"]
    assert sent["model"] == "gpt-4o-2024-08-06"
    assert sent["max_tokens"] == 16384


async def test_moderation_rejects_flagged_input_before_the_call(simulator):
    simulator.app.reset()
    config = make_config(simulator.url, upstream={"moderation": {"enabled": True}})
    async with running(config) as gw:
        flagged = await gw.chat(messages=[{"role": "user", "content": "please FLAG_ME now"}])
        fine = await gw.chat()
    assert flagged.status_code == 400
    assert flagged.json()["error"]["code"] == "content_policy_violation"
    assert fine.status_code == 200
    routes = simulator.app.stats.by_route
    assert routes["POST /v1/moderations"] == 2
    assert routes["POST /v1/chat/completions"] == 1


async def test_rate_limit_429_with_retry_after_and_openai_headers(simulator):
    keys = client_keys_json(alice={"rpm": 20})  # 2 at once with the default burst fraction
    async with running(make_config(simulator.url), {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        ok = [await gw.chat() for _ in range(2)]
        limited = await gw.chat()
        other_key = await gw.chat(key=BOB)
        metrics = (await gw.client.get("/metrics")).text
    assert [r.status_code for r in ok] == [200, 200]
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-limit-requests"] == "20"
    assert other_key.status_code == 200
    assert 'liftoff_rate_limit_rejections_total{reason="rate_limit_requests"} 1.0' in metrics


RATE_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


async def test_rate_limit_headers_on_responses_rejected_before_the_limiter(simulator):
    keys = client_keys_json(alice={"rpm": 50, "tpm": 100_000})  # 5 requests at once
    async with running(make_config(simulator.url), {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        post = gw.client.post
        # Nothing admitted yet for bob: his full limits (the defaults), nothing to wait for.
        fresh = await gw.chat(key=BOB, model="gpt-9-ultra")
        admitted = [await gw.chat() for _ in range(2)]
        invalid = await gw.chat(temperature=9)
        unknown_model = await gw.chat(model="gpt-9-ultra")
        wrong_type = await post(
            "/v1/chat/completions",
            content=b"model=fast",
            headers={**auth(), "content-type": "text/plain"},
        )
        too_large = await post(
            "/v1/completions", json={"model": "fast", "prompt": "x" * 1_100_000}, headers=auth()
        )
        models = await gw.client.get("/v1/models", headers=auth())
        unauthenticated = await gw.chat(key="not-a-key", temperature=9)
        no_key = await post("/v1/chat/completions", json={"model": "fast"})
    assert [r.status_code for r in admitted] == [200, 200]
    rejected = {400: invalid, 404: unknown_model, 415: wrong_type, 413: too_large}
    assert {status: r.status_code for status, r in rejected.items()} == {s: s for s in rejected}
    last = admitted[-1].headers
    for response in [*rejected.values(), models]:
        headers = response.headers
        assert all(name in headers for name in RATE_HEADERS), headers
        assert headers["x-ratelimit-limit-requests"] == "50"
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        # The latest admission's figures (nothing refilled a whole request since): 5 - 2 = 3.
        assert headers["x-ratelimit-remaining-requests"] == "3"
        assert int(headers["x-ratelimit-remaining-tokens"]) >= int(
            last["x-ratelimit-remaining-tokens"]
        )
        reset = headers["x-ratelimit-reset-requests"]
        assert reset.endswith("s") and reset != "0s"
    assert fresh.status_code == 404
    assert fresh.headers["x-ratelimit-limit-requests"] == "600"
    # What may be sent at once: the default bursts, 10% of rpm and 25% of tpm (app/gcra.py).
    assert fresh.headers["x-ratelimit-remaining-requests"] == "60"
    assert fresh.headers["x-ratelimit-remaining-tokens"] == "50000"
    assert fresh.headers["x-ratelimit-reset-requests"] == "0s"
    # No key recognised: no limits to report (and none of the configured ones disclosed).
    for response in (unauthenticated, no_key):
        assert response.status_code == 401
        assert not [name for name in response.headers if name.startswith("x-ratelimit-")]


def test_known_limit_headers_age_with_time():
    from app.gcra import DEFAULT_BURSTS
    from app.limit_view import LimitView
    from app.limits import KeyPolicy

    view = LimitView({"k": KeyPolicy("k", 60, None, None)}, DEFAULT_BURSTS)
    assert view.known_headers("nobody") == {}
    # rpm 60 with the default burst fraction 0.1: 6 at once, refilled at 55 a minute.
    assert view.known_headers("k") == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "6",
        "x-ratelimit-reset-requests": "0s",
    }
    # An admission left 4.363 s of backlog (4 of the 6 used) at t=100.
    view.seen["k"] = (100.0, {"x-ratelimit-reset-requests": "4.363s"}, None)
    assert view.known_headers("k", now=100.0)["x-ratelimit-remaining-requests"] == "2"
    aged = view.known_headers("k", now=102.2)
    assert aged["x-ratelimit-remaining-requests"] == "4"
    assert aged["x-ratelimit-reset-requests"] == "2.163s"
    drained = view.known_headers("k", now=500.0)
    assert drained["x-ratelimit-remaining-requests"] == "6"
    assert drained["x-ratelimit-reset-requests"] == "0s"


async def test_budget_hard_limit_is_insufficient_quota_before_the_call(simulator):
    simulator.app.reset()
    keys = client_keys_json(alice={"monthly_budget_usd": 0.001})
    async with running(make_config(simulator.url), {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        # Worst case of smart with max_tokens 200: 200 * $10/1M = $0.002 > $0.001.
        refused = await gw.chat(model="smart", max_tokens=200)
        small = await gw.chat(model="fast", max_tokens=20)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert simulator.app.stats.by_route.get("POST /v1/chat/completions", 0) == 1
    assert small.status_code == 200
    remaining = float(small.headers["x-liftoff-budget-remaining"])
    assert 0 < remaining < 0.001


async def test_budget_soft_threshold_metric(simulator):
    keys = client_keys_json(alice={"monthly_budget_usd": 0.0001})
    config = make_config(simulator.url, budgets={"soft_fraction": 0.01})
    async with running(config, {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        await gw.chat(max_tokens=10)
        await gw.chat(max_tokens=10)
        metrics = (await gw.client.get("/metrics")).text
    assert 'liftoff_budget_soft_threshold_total{key="alice"}' in metrics


async def test_batching_merges_concurrent_single_prompt_completions(simulator):
    simulator.app.reset()
    config = make_config(simulator.url, batching={"enabled": True, "window_ms": 50})
    async with running(config) as gw:

        async def one(i: int):
            return await gw.client.post(
                "/v1/completions",
                json={"model": "fast", "prompt": f"Prompt number {i}", "max_tokens": 8},
                headers=auth(),
            )

        responses = await asyncio.gather(*(one(i) for i in range(10)))
        metrics = (await gw.client.get("/metrics")).text
    assert {r.status_code for r in responses} == {200}
    for r in responses:
        body = r.json()
        assert [c["index"] for c in body["choices"]] == [0]
        assert body["usage"]["prompt_tokens"] > 0
    assert simulator.app.stats.completions_requests < 10
    assert "liftoff_batch_size_count" in metrics


async def test_error_bodies_never_leak_internals(simulator):
    config = make_config(simulator.url, upstream={"retry": {"max_attempts": 1}})
    async with running(config) as gw:
        failed = await gw.chat(headers={"x-simulator-fault": "500"})
        bad_key = await gw.chat(key="not-a-key")
    assert failed.status_code == 502
    for response in (failed, bad_key):
        text = response.text
        assert set(orjson.loads(text)["error"]) == {"message", "type", "param", "code"}
        for secret in (PROVIDER_KEY, "127.0.0.1", "Traceback", "sha256", simulator.url):
            assert secret not in text


async def test_prompts_and_completions_are_logged_only_when_enabled(simulator, caplog):
    caplog.set_level("INFO")
    secret_prompt = "my-private-prompt-4711"

    def logged() -> str:
        return "\n".join(str(r.__dict__) for r in caplog.records)

    async with running(make_config(simulator.url)) as gw:
        await gw.chat(messages=[{"role": "user", "content": secret_prompt}])
    assert secret_prompt not in logged()
    assert "liftoff.access" in logged()
    caplog.clear()
    async with running(make_config(simulator.url, server={"log_prompts": True})) as gw:
        response = await gw.chat(messages=[{"role": "user", "content": secret_prompt}])
        streamed = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "fast", "stream": True, "messages": [{"role": "user", "content": "s"}]},
            headers=auth(),
        )
    assert streamed.status_code == 200
    assert secret_prompt in logged()
    assert response.json()["choices"][0]["message"]["content"] in logged()
    access = [r for r in caplog.records if r.name == "liftoff.access"]
    assert any(getattr(r, "completion", None) for r in access if getattr(r, "stream", None))


async def test_large_inputs_are_tokenized_off_the_event_loop(simulator):
    import threading

    config = make_config(simulator.url, server={"token_count_offload_chars": 2000})
    async with running(config) as gw:
        threads: list[str] = []
        counter = gw.gateway.counter
        original = counter.count_message_bounds

        def spy(messages, encoding):
            threads.append(threading.current_thread().name)
            return original(messages, encoding)

        counter.count_message_bounds = spy
        await gw.chat(messages=[{"role": "user", "content": "short"}])
        await gw.chat(messages=[{"role": "user", "content": "long " * 1000}])
    assert threads[0] == threading.main_thread().name
    assert threads[1] != threading.main_thread().name


async def test_embedded_simulator_when_no_upstream_url():
    async with running(make_config(None), {"LIFTOFF_UPSTREAM_API_KEY": None}) as gw:
        response = await gw.chat(
            headers={"x-simulator-fault": "503", "x-simulator-fail-times": "1"}
        )
        assert gw.gateway.simulator is not None
    assert response.status_code == 200


async def test_global_budget_caps_all_keys_together(simulator):
    config = make_config(simulator.url, budgets={"global_monthly_usd": 0.00008})
    async with running(config) as gw:
        # fast: $0.60 per 1M output tokens. Worst case of the first: ~$0.0000615, it fits; it
        # really spends at least 16 tokens' worth, after which bob's worst case (~$0.0000735)
        # no longer fits in what is left of the global budget.
        first = await gw.chat(max_tokens=100)
        await gw.gateway.flush()
        second = await gw.chat(key=BOB, max_tokens=120)
        usage = (await gw.client.get("/v1/usage", headers=auth(ADMIN))).json()
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert "global" in second.json()["error"]["message"]
    assert usage["global_monthly_budget_usd"] == 0.00008
    assert usage["global"]["spent_usd"] > 0


async def test_invalidate_rejects_unknown_model(simulator):
    async with running(make_config(simulator.url)) as gw:
        response = await gw.client.post(
            "/admin/cache/invalidate", json={"model": "gpt-9"}, headers=auth(ADMIN)
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
