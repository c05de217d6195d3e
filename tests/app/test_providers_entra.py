"""Azure OpenAI with Microsoft Entra ID: the token comes from azure-identity's
DefaultAzureCredential (here its Azure CLI source, a stand-in `az` on PATH that prints what
`az account get-access-token` prints), is sent as a bearer token without an api-key, is cached,
and is fetched again when Azure answers 401."""

from __future__ import annotations

import json
import sys
import time

import pytest

from app.errors import UpstreamError, UpstreamUnreachable
from app.providers import EntraCredential, ProviderError, build_providers
from app.secrets import SecretStore
from app.upstream import CallStats
from tests.app.providers_harness import (
    CHAT,
    MINI,
    RecordingProvider,
    chat_ok,
    client_for,
    json_answer,
    providers_config,
)

ENTRA = {
    "name": "azure",
    "kind": "azure",
    "url": "",
    "api_version": "2024-10-21",
    "auth": "entra",
}


@pytest.fixture
def az(tmp_path, monkeypatch):
    """A stand-in Azure CLI: prints the token in `token.json`, logs each call's arguments."""
    token_file, log_file = tmp_path / "token.json", tmp_path / "calls.log"
    script = tmp_path / "bin" / "az"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {log_file}\ncat {token_file}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")

    def issue(token: str, lifetime_s: float = 3600) -> None:
        token_file.write_text(
            json.dumps(
                {
                    "accessToken": token,
                    "expires_on": int(time.time() + lifetime_s),
                    "tokenType": "Bearer",
                }
            )
        )

    def calls() -> list[str]:
        return log_file.read_text().splitlines() if log_file.exists() else []

    issue.calls = calls
    return issue


async def test_entra_token_is_a_bearer_without_api_key_and_cached(az):
    az("entra-token-1")
    async with RecordingProvider() as server:
        config = providers_config([{**ENTRA, "url": server.url}])
        # An api-key in the environment must not be sent with entra auth.
        env = {"LIFTOFF_PROVIDER_AZURE_API_KEY": "unused-api-key"}
        async with client_for(config, env) as client:
            for _ in range(3):
                await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    assert [s.headers["authorization"] for s in server.seen] == ["Bearer entra-token-1"] * 3
    assert all("api-key" not in s.headers for s in server.seen)
    assert server.seen[0].path == f"/openai/deployments/{MINI}/chat/completions"
    (call,) = az.calls()  # one token for three calls
    assert "--resource https://cognitiveservices.azure.com" in call


async def test_entra_token_near_expiry_is_replaced(az):
    az("short-lived", lifetime_s=60)  # inside the 5-minute early-refresh window
    async with (
        RecordingProvider() as server,
        client_for(providers_config([{**ENTRA, "url": server.url}])) as client,
    ):
        await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
        az("fresh")
        await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    assert [s.headers["authorization"] for s in server.seen] == [
        "Bearer short-lived",
        "Bearer fresh",
    ]


async def test_entra_401_fetches_a_new_token_and_retries(az):
    az("revoked")

    def check(request, seen):
        if seen.headers.get("authorization") != "Bearer rotated":
            return json_answer(401, {"error": {"code": "401", "message": "Unauthorized"}})(
                request, seen
            )
        return chat_ok(request, seen)

    async with (
        RecordingProvider(default=check) as server,
        client_for(providers_config([{**ENTRA, "url": server.url}])) as client,
    ):
        # The same token again after the 401: not worth a retry.
        with pytest.raises(UpstreamError) as refused:
            await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
        az("rotated")
        reply = await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    assert refused.value.status == 401
    assert reply.status == 200
    assert [s.headers["authorization"] for s in server.seen] == [
        "Bearer revoked",
        "Bearer revoked",  # the cached token, refused, then a fresh one
        "Bearer rotated",
    ]


async def test_entra_without_a_token_source_is_an_unreachable_provider(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no az
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
    async with (
        RecordingProvider() as server,
        client_for(providers_config([{**ENTRA, "url": server.url}])) as client,
    ):
        with pytest.raises(UpstreamUnreachable):
            await client.post_json("/v1/chat/completions", CHAT, MINI, CallStats())
    assert server.seen == []


def test_entra_without_azure_identity_is_a_clear_startup_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)  # import fails as if missing
    config = providers_config([{**ENTRA, "url": "https://x.openai.azure.com"}])
    with pytest.raises(ProviderError, match="'azure': auth entra needs the azure-identity"):
        build_providers(config, SecretStore({}))
    with pytest.raises(ProviderError):
        EntraCredential("azure")
