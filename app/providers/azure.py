"""``kind: azure``: Azure OpenAI at its resource endpoint (``https://<resource>.openai.azure.com``).

URLs, by ``api_version``:
- a dated version (``2024-10-21``): calls bound to a model go to its deployment,
  ``/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21``; the others
  (files, batches, responses, ...) to ``/openai/files?api-version=...``;
- ``v1``: ``/openai/v1/chat/completions`` with the deployment name as the body's ``model``.

Auth: ``api_key`` sends the ``api-key`` header; ``entra`` sends ``Authorization: Bearer`` with a
Microsoft Entra ID token from ``azure-identity``'s DefaultAzureCredential (managed identity,
workload identity, environment, Azure CLI, ...), cached until shortly before it expires.

Content-filter refusals (400, ``error.code == "content_filter"``) become OpenAI's 400
``content_policy_violation``, naming the filtered categories; they are final (not retried, no
fallback). 429s carry ``retry-after-ms`` / ``retry-after`` like OpenAI's and follow the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import yarl

from app.config import ProviderConfig
from app.errors import UpstreamError, UpstreamUnreachable
from app.providers.base import (
    Credential,
    Provider,
    ProviderError,
    Refusal,
    json_object,
    retry_hint,
)

log = logging.getLogger("liftoff.providers")

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
ENTRA_EARLY_REFRESH_S = 300  # a token is replaced this long before it expires
# Dated-API routes served per deployment; every other route is resource-wide.
DEPLOYMENT_ROUTES = frozenset(
    {
        "chat/completions",
        "completions",
        "embeddings",
        "audio/transcriptions",
        "audio/translations",
        "audio/speech",
        "images/generations",
        "images/edits",
    }
)


class AzureProvider(Provider):
    kind = "azure"

    def __init__(
        self,
        name: str,
        url: str,
        credential: Credential,
        api_version: str,
        auth: str = "api_key",
        deployments: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, url, credential)
        self.api_version = api_version
        self.auth = auth
        self.deployments = dict(deployments or {})

    @classmethod
    def from_config(cls, config: ProviderConfig, credential: Credential) -> AzureProvider:
        assert config.api_version is not None  # the config refuses azure without one
        return cls(
            config.name,
            config.url,
            credential,
            config.api_version,
            config.auth,
            config.deployments,
        )

    def deployment(self, model: str) -> str:
        return self.deployments.get(model, model)

    def url_for(self, path: str, model: str | None) -> yarl.URL:
        route = path.removeprefix("/v1/") if path.startswith("/v1/") else path.lstrip("/")
        if self.api_version == "v1":
            return self.url.with_path(f"/openai/v1/{route}")
        if model is not None and route in DEPLOYMENT_ROUTES:
            target = f"/openai/deployments/{self.deployment(model)}/{route}"
        else:
            target = f"/openai/{route}"
        return self.url.with_path(target).with_query({"api-version": self.api_version})

    def headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        if self.auth == "entra":
            return {"authorization": f"Bearer {key}"}
        return {"api-key": key}

    def body_for(self, path: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        # The dated API takes the deployment from the URL; the v1 API from the body's model.
        name = self.deployment(model) if self.api_version == "v1" else model
        return body if body.get("model") == name else {**body, "model": name}

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Refusal:
        parsed = json_object(body)
        error = parsed.get("error")
        if status == 400 and isinstance(error, dict) and error.get("code") == "content_filter":
            return Refusal(_content_policy_violation(error, retry_hint(headers)), None)
        return super().classify(status, headers, body)


def _content_policy_violation(error: dict[str, Any], hint: float | None) -> UpstreamError:
    """Azure's content-filter refusal as OpenAI shapes one, naming the filtered categories."""
    inner = error.get("innererror")
    results = inner.get("content_filter_result") if isinstance(inner, dict) else None
    categories = sorted(
        name
        for name, verdict in (results.items() if isinstance(results, dict) else ())
        if isinstance(verdict, dict) and verdict.get("filtered")
    )
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = "The request was refused by the provider's content filter."
    if categories:
        message = f"{message} (filtered: {', '.join(categories)})"
    param = error.get("param") if isinstance(error.get("param"), str) else "prompt"
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": "content_policy_violation",
        }
    }
    return UpstreamError(400, body, hint)


class EntraCredential(Credential):
    """A Microsoft Entra ID token for Azure OpenAI from azure-identity's DefaultAzureCredential."""

    def __init__(self, provider: str) -> None:
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError:
            raise ProviderError(
                f"upstream.providers {provider!r}: auth entra needs the azure-identity package "
                "(pip install azure-identity), or use auth: api_key"
            ) from None
        self._provider = provider
        self._credential = DefaultAzureCredential()
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self) -> str | None:
        if self._token is not None and time.time() < self._expires_at - ENTRA_EARLY_REFRESH_S:
            return self._token
        async with self._lock:
            if self._token is None or time.time() >= self._expires_at - ENTRA_EARLY_REFRESH_S:
                await self._fetch()
        return self._token

    async def refresh(self) -> bool:
        before = self._token
        async with self._lock:
            if self._token != before:
                return True  # another caller fetched a new one while we waited
            await self._fetch()
        return self._token != before

    async def _fetch(self) -> None:
        try:
            token = await self._credential.get_token(ENTRA_SCOPE)
        except Exception as exc:  # azure-identity's errors name the credentials tried, no secret
            log.error(
                "entra token unavailable",
                extra={"provider": self._provider, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
            raise UpstreamUnreachable("Entra ID token unavailable") from None
        self._token, self._expires_at = token.token, float(token.expires_on)
        log.info("entra token acquired", extra={"provider": self._provider})

    async def close(self) -> None:
        await self._credential.close()
