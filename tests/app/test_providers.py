"""Provider adapters against a recording provider on 127.0.0.1: URL shapes (OpenAI-kind base URLs,
Azure's deployment URLs with api-version and its v1 API), auth headers, Azure's content-filter
refusals and rate-limit headers, fallbacks that cross providers with a breaker and a connection
pool per provider, per-provider keys from env and Secrets Manager, the built-in simulator's
default provider."""

from __future__ import annotations

import time

import boto3
import pytest
from moto import mock_aws

from app.errors import UpstreamError, to_api_error
from app.providers import SIMULATOR_KEY, build_providers
from app.secrets import SecretStore
from app.upstream import CallStats
from tests.app.gateway_harness import make_config
from tests.app.providers_harness import (
    BIG,
    CHAT,
    MINI,
    RecordingProvider,
    chat_ok,
    client_for,
    json_answer,
    providers_config,
)

KEY_OPENAI = "sk-openai-0123456789abcdef"
KEY_AZURE = "azure-key-0123456789abcdef"
REGION = "us-west-2"


def azure(url: str, **fields) -> dict:
    return {"name": "azure", "kind": "azure", "url": url, "api_version": "2024-10-21", **fields}


async def test_azure_dated_api_deployment_urls_and_api_key_header():
    async with RecordingProvider() as server:
        config = providers_config(
            [azure(server.url, deployments={MINI: "mini-prod"})],
        )
        env = {"LIFTOFF_PROVIDER_AZURE_API_KEY": KEY_AZURE}
        async with client_for(config, env) as client:
            reply = await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
            await client.post_json("/v1/embeddings", {"input": "x"}, BIG, CallStats())
    chat, embeddings = server.seen
    assert reply.status == 200
    assert chat.path == "/openai/deployments/mini-prod/chat/completions"
    assert chat.query == {"api-version": "2024-10-21"}
    assert chat.headers["api-key"] == KEY_AZURE
    assert "authorization" not in chat.headers
    # A model without a deployment entry uses its own name as the deployment.
    assert embeddings.path == f"/openai/deployments/{BIG}/embeddings"


async def test_azure_v1_api_puts_the_deployment_in_the_body():
    async with RecordingProvider() as server:
        config = providers_config(
            [azure(server.url, api_version="v1", deployments={MINI: "mini-eu"})]
        )
        env = {"LIFTOFF_PROVIDER_AZURE_API_KEY": KEY_AZURE}
        async with client_for(config, env) as client:
            await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
            await client.post_json("/v1/responses", {"input": "hi"}, MINI, CallStats())
    chat, responses = server.seen
    assert chat.path == "/openai/v1/chat/completions"
    assert chat.query == {}
    assert chat.json()["model"] == "mini-eu"
    assert chat.json()["messages"] == CHAT["messages"]  # the rest of the body as the client sent it
    assert responses.path == "/openai/v1/responses"


async def test_openai_kind_appends_the_path_to_its_base_url_with_a_bearer_key():
    async with RecordingProvider() as server:
        config = providers_config([{"name": "vllm", "url": f"{server.url}/serving/"}])
        env = {"LIFTOFF_PROVIDER_VLLM_API_KEY": KEY_OPENAI}
        async with client_for(config, env) as client:
            await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    (seen,) = server.seen
    assert seen.path == "/serving/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY_OPENAI}"
    assert "api-key" not in seen.headers
    assert seen.json()["model"] == MINI


CONTENT_FILTER = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": True, "severity": "high"},
                "self_harm": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}


async def test_azure_content_filter_is_an_openai_content_policy_violation_not_retried():
    async with RecordingProvider() as server:
        server.answers = [json_answer(400, CONTENT_FILTER)]
        # BIG falls back to MINI: a content refusal must not be tried on the fallback either.
        config = providers_config([azure(server.url)])
        async with client_for(config) as client:
            with pytest.raises(UpstreamError) as err:
                await client.post_json("/v1/chat/completions", CHAT, BIG, CallStats())
    api = to_api_error(err.value)
    assert (api.status, api.type, api.code, api.param) == (
        400,
        "invalid_request_error",
        "content_policy_violation",
        "prompt",
    )
    assert "content management policy" in api.message
    assert "(filtered: hate, violence)" in api.message
    assert len(server.seen) == 1


async def test_azure_other_400s_keep_their_own_code():
    body = {"error": {"code": "DeploymentNotFound", "message": "The API deployment ..."}}
    async with RecordingProvider() as server:
        server.answers = [json_answer(404, body)]
        async with client_for(providers_config([azure(server.url)])) as client:
            with pytest.raises(UpstreamError) as err:
                await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    api = to_api_error(err.value)
    assert (api.status, api.code) == (404, "DeploymentNotFound")


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after-ms": "300", "retry-after": "1"},
        {
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-reset-requests": "10ms",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "300ms",
        },
    ],
    ids=["retry-after-ms", "exhausted-tokens-reset"],
)
async def test_azure_429_waits_as_its_headers_say(headers):
    busy = {"error": {"code": "429", "message": "Requests to the deployment have exceeded ..."}}
    async with RecordingProvider() as server:
        server.answers = [json_answer(429, busy, headers)]
        async with client_for(providers_config([azure(server.url)])) as client:
            started = time.perf_counter()
            reply = await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
            elapsed = time.perf_counter() - started
            metrics = client.metrics.render().decode()
    assert reply.status == 200
    assert 0.3 <= elapsed < 0.9  # the provider's 300 ms, not the 1 s Retry-After or a backoff
    assert len(server.seen) == 2
    assert f'liftoff_upstream_retries_total{{model="{MINI}",reason="429"}} 1.0' in metrics


async def test_azure_408_is_retried():
    async with RecordingProvider() as server:
        server.answers = [json_answer(408, {"error": {"code": "Timeout", "message": "slow"}})]
        async with client_for(providers_config([azure(server.url)])) as client:
            reply = await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    assert reply.status == 200 and len(server.seen) == 2


async def test_fallback_crosses_from_openai_to_azure_each_with_its_breaker_and_key():
    down = json_answer(503, {"error": {"message": "overloaded"}})
    async with RecordingProvider(default=down) as primary, RecordingProvider() as secondary:
        config = providers_config(
            [
                {"name": "openai", "url": primary.url},
                azure(secondary.url, deployments={MINI: "mini-westeurope"}),
            ],
            {MINI: {"provider": "azure"}},  # BIG stays on the first provider, falls back to MINI
            retry={"max_attempts": 2},
            breaker={"failure_threshold": 2, "reset_after_s": 30},
        )
        env = {
            "LIFTOFF_PROVIDER_OPENAI_API_KEY": KEY_OPENAI,
            "LIFTOFF_PROVIDER_AZURE_API_KEY": KEY_AZURE,
        }
        async with client_for(config, env) as client:
            stats = CallStats()
            reply = await client.post_json(
                "/v1/chat/completions", {**CHAT, "model": BIG}, BIG, stats
            )
            metrics = client.metrics.render().decode()
            breakers = client.breaker(BIG).state, client.breaker(MINI).state
            # BIG's circuit is open now: the next call goes straight to the fallback.
            again = CallStats()
            await client.post_json("/v1/chat/completions", CHAT, BIG, again)
    assert reply.status == 200 and stats.model_used == MINI
    assert [s.headers["authorization"] for s in primary.seen] == [f"Bearer {KEY_OPENAI}"] * 2
    assert [s.path for s in secondary.seen] == [
        "/openai/deployments/mini-westeurope/chat/completions"
    ] * 2
    assert all(s.headers["api-key"] == KEY_AZURE for s in secondary.seen)
    assert all("authorization" not in s.headers for s in secondary.seen)
    assert breakers == ("open", "closed")
    assert len(primary.seen) == 2  # the open circuit answered the second call itself
    assert again.model_used == MINI
    assert f'liftoff_upstream_fallbacks_total{{fallback="{MINI}",model="{BIG}"}} 1.0' in metrics


async def test_each_provider_has_its_own_connection_pool():
    async with RecordingProvider() as server:
        config = providers_config(
            [{"name": "one", "url": server.url}, {"name": "two", "url": server.url}],
            {MINI: {"provider": "two"}},
        )
        async with client_for(config) as client:
            for _ in range(3):
                await client.post_json("/v1/chat/completions", CHAT, BIG, CallStats())
                await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    ports_one = {s.peer_port for s in server.seen[0::2]}
    ports_two = {s.peer_port for s in server.seen[1::2]}
    assert len(ports_one) == 1 and len(ports_two) == 1  # kept alive within each pool
    assert ports_one.isdisjoint(ports_two)  # same host and port, never the other's connection


async def test_first_provider_accepts_the_upstream_key_and_prefers_its_own():
    async with RecordingProvider() as first, RecordingProvider() as second:
        config = providers_config(
            [{"name": "main", "url": first.url}, {"name": "second-region", "url": second.url}],
            {MINI: {"provider": "second-region"}},
        )
        upstream_only = {
            "LIFTOFF_UPSTREAM_API_KEY": "sk-upstream",
            "LIFTOFF_PROVIDER_SECOND_REGION_API_KEY": "sk-second",
        }
        async with client_for(config, upstream_only) as client:
            await client.post_json("/v1/chat/completions", CHAT, BIG, CallStats())
            await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
        own = {**upstream_only, "LIFTOFF_PROVIDER_MAIN_API_KEY": "sk-main"}
        async with client_for(config, own) as client:
            await client.post_json("/v1/chat/completions", CHAT, BIG, CallStats())
    assert [s.headers["authorization"] for s in first.seen] == [
        "Bearer sk-upstream",
        "Bearer sk-main",
    ]
    assert second.seen[0].headers["authorization"] == "Bearer sk-second"


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


async def test_provider_key_from_secrets_manager_is_refreshed_on_a_401(aws):
    arn = aws.create_secret(Name="liftoff/azure", SecretString="azure-old")["ARN"]

    def check_key(request, seen):
        if seen.headers.get("api-key") != "azure-new":
            return json_answer(401, {"error": {"code": "401", "message": "Access denied"}})(
                request, seen
            )
        return chat_ok(request, seen)

    async with RecordingProvider(default=check_key) as server:
        config = providers_config([azure(server.url)])
        env = {"LIFTOFF_PROVIDER_AZURE_API_KEY_SECRET_ARN": arn}
        async with client_for(config, env) as client:
            aws.put_secret_value(SecretId=arn, SecretString="azure-new")
            reply = await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    assert reply.status == 200
    assert [s.headers["api-key"] for s in server.seen] == ["azure-old", "azure-new"]


async def test_without_providers_the_simulator_is_the_default_provider():
    config = make_config(None)
    assert config.uses_simulator
    (default,) = build_providers(config, SecretStore({}), "http://127.0.0.1:7").values()
    assert (default.name, default.kind, str(default.url)) == (
        "default",
        "openai",
        "http://127.0.0.1:7",
    )
    assert await default.credential.key() == SIMULATOR_KEY
    keyed = build_providers(
        config, SecretStore({"LIFTOFF_UPSTREAM_API_KEY": KEY_OPENAI}), "http://127.0.0.1:7"
    )
    assert await keyed["default"].credential.key() == KEY_OPENAI
    real = make_config("https://api.openai.com")
    assert not real.uses_simulator
    (openai,) = build_providers(real, SecretStore({})).values()
    assert await openai.credential.key() is None  # a real provider never gets the simulator's key
