"""Provider adapters behind one interface (:class:`Provider`, in ``base.py``), one module per kind.

:func:`build_providers` turns ``upstream`` into named providers, each with its credential:
- ``upstream.providers`` empty: one ``kind: openai`` provider named ``default`` at
  ``upstream.url`` (null: the built-in simulator, which gets the key ``sk-liftoff-simulator``);
- otherwise one per entry, in order (the first serves catalog models that name no provider).

Keys: ``LIFTOFF_PROVIDER_<NAME>_API_KEY`` or ``..._SECRET_ARN`` (NAME upper-cased, ``-`` -> ``_``);
the first provider also accepts ``LIFTOFF_UPSTREAM_API_KEY[_SECRET_ARN]``. ``auth: entra`` takes
an Entra ID token from azure-identity instead, ``auth: sigv4`` signs with the AWS credentials.
"""

from __future__ import annotations

from app.config import DEFAULT_PROVIDER, GatewayConfig, ProviderConfig
from app.providers.azure import AzureProvider, EntraCredential
from app.providers.base import Credential, KeyCredential, Provider, ProviderError, Refusal
from app.providers.bedrock import AwsCredential, BedrockProvider
from app.providers.openai import OpenAIProvider
from app.secrets import UPSTREAM_API_KEY, SecretStore, provider_key_name

__all__ = [
    "KINDS",
    "SIMULATOR_KEY",
    "AwsCredential",
    "AzureProvider",
    "BedrockProvider",
    "Credential",
    "EntraCredential",
    "KeyCredential",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "Refusal",
    "build_providers",
]

SIMULATOR_KEY = "sk-liftoff-simulator"  # what the gateway sends to its built-in simulator
KINDS: dict[str, type[OpenAIProvider | AzureProvider | BedrockProvider]] = {
    OpenAIProvider.kind: OpenAIProvider,
    AzureProvider.kind: AzureProvider,
    BedrockProvider.kind: BedrockProvider,
}


def build_providers(
    config: GatewayConfig, secrets: SecretStore, simulator_url: str | None = None
) -> dict[str, Provider]:
    """Named providers in config order; ``simulator_url`` is where the built-in simulator
    listens (required when ``config.uses_simulator``)."""
    upstream = config.upstream
    if not upstream.providers:
        url = upstream.url or simulator_url
        if url is None:
            raise ProviderError("upstream.url is null: the built-in simulator's URL is needed")
        fallback = SIMULATOR_KEY if upstream.url is None else None
        key = _secret_key(secrets, DEFAULT_PROVIDER, first=True, fallback=fallback)
        return {DEFAULT_PROVIDER: OpenAIProvider(DEFAULT_PROVIDER, url, key)}
    return {
        provider.name: KINDS[provider.kind].from_config(
            provider, _credential(provider, secrets, first=index == 0)
        )
        for index, provider in enumerate(upstream.providers)
    }


def _credential(provider: ProviderConfig, secrets: SecretStore, first: bool) -> Credential:
    if provider.auth == "entra":
        return EntraCredential(provider.name)
    if provider.auth == "sigv4":
        return AwsCredential()
    return _secret_key(secrets, provider.name, first)


def _secret_key(
    secrets: SecretStore, provider: str, first: bool, fallback: str | None = None
) -> KeyCredential:
    name = provider_key_name(provider)
    if first and secrets.source(name) == "unset":
        name = UPSTREAM_API_KEY
    return KeyCredential(lambda: secrets.get(name) or fallback, lambda: secrets.refresh(name))
