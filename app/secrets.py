"""Secrets from the environment or from AWS Secrets Manager by ARN.

For each secret ``NAME`` the gateway reads ``LIFTOFF_NAME`` (the value itself) or
``LIFTOFF_NAME_SECRET_ARN`` (a Secrets Manager ARN, fetched with boto3 in a worker thread so the
event loop never blocks). The provider key is fetched again when the provider answers 401, so a
rotated key is picked up without a restart. Values never appear in repr(), logs or errors.

Besides the fixed names, every ``LIFTOFF_PROVIDER_<NAME>_API_KEY[_SECRET_ARN]`` in the
environment is a secret too: the key of the provider ``<name>`` of ``upstream.providers``
(see :func:`provider_key_name`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("liftoff.secrets")

UPSTREAM_API_KEY = "UPSTREAM_API_KEY"
REDIS_AUTH_TOKEN = "REDIS_AUTH_TOKEN"
CLIENT_KEYS = "CLIENT_KEYS"
NAMES = (UPSTREAM_API_KEY, REDIS_AUTH_TOKEN, CLIENT_KEYS)
_PROVIDER_KEY = re.compile(r"^LIFTOFF_(PROVIDER_[A-Z][A-Z0-9_]{0,31}_API_KEY)(_SECRET_ARN)?$")


def provider_key_name(provider: str) -> str:
    """The secret holding a provider's key: ``azure-east`` -> ``PROVIDER_AZURE_EAST_API_KEY``
    (read from ``LIFTOFF_PROVIDER_AZURE_EAST_API_KEY`` or ``..._SECRET_ARN``)."""
    return f"PROVIDER_{provider.upper().replace('-', '_')}_API_KEY"


# A burst of 401s triggers one refresh, then at most one more per this many seconds.
MIN_REFRESH_INTERVAL_S = 5.0


class SecretError(RuntimeError):
    """A secret could not be resolved; the message names the variable and ARN, never a value."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    value: str | None
    arn: str | None

    @property
    def source(self) -> str:
        if self.arn:
            return f"LIFTOFF_{self.name}_SECRET_ARN"
        return f"LIFTOFF_{self.name}" if self.value is not None else "unset"


def region_of(arn: str, default: str | None) -> str | None:
    parts = arn.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == "secretsmanager" and parts[3]:
        return parts[3]
    return default


class SecretStore:
    """Resolved secret values, with refresh for the ones that come from Secrets Manager."""

    def __init__(
        self,
        env: Mapping[str, str],
        client_factory: Callable[[str | None], Any] | None = None,
    ) -> None:
        self._refs: dict[str, SecretRef] = {}
        providers = {m.group(1) for m in map(_PROVIDER_KEY.match, env) if m and env[m.group(0)]}
        for name in (*NAMES, *sorted(providers)):
            value = env.get(f"LIFTOFF_{name}") or None
            arn = env.get(f"LIFTOFF_{name}_SECRET_ARN") or None
            if value and arn:
                raise SecretError(
                    f"set only one of LIFTOFF_{name} and LIFTOFF_{name}_SECRET_ARN, not both"
                )
            if arn and not arn.startswith("arn:"):
                raise SecretError(f"LIFTOFF_{name}_SECRET_ARN: expected an ARN (arn:aws:...)")
            self._refs[name] = SecretRef(name, value, arn)
        self._region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        self._client_factory = client_factory or _boto3_client
        self._values: dict[str, str | None] = {n: r.value for n, r in self._refs.items()}
        self._fetched_at: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        sources = ", ".join(f"{n}={r.source}" for n, r in self._refs.items())
        return f"SecretStore({sources})"

    def source(self, name: str) -> str:
        ref = self._refs.get(name)
        return "unset" if ref is None else ref.source

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def _fetch(self, ref: SecretRef) -> str:
        assert ref.arn is not None
        client = self._client_factory(region_of(ref.arn, self._region))
        try:
            answer = client.get_secret_value(SecretId=ref.arn)
        except Exception as exc:  # botocore errors carry no secret values
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise SecretError(
                f"LIFTOFF_{ref.name}_SECRET_ARN: Secrets Manager refused {ref.arn} ({code})"
            ) from None
        value = answer.get("SecretString")
        if value is None:
            raise SecretError(f"LIFTOFF_{ref.name}_SECRET_ARN: {ref.arn} has no SecretString")
        return value.strip()

    async def resolve(self) -> None:
        """Fetch every ARN-backed secret (in worker threads, concurrently)."""
        refs = [r for r in self._refs.values() if r.arn]
        values = await asyncio.gather(*(asyncio.to_thread(self._fetch, r) for r in refs))
        for ref, value in zip(refs, values, strict=True):
            self._values[ref.name] = value
            log.info("secret resolved", extra={"secret": ref.name, "source": ref.source})

    async def refresh(self, name: str) -> bool:
        """Fetch one secret again (e.g. after a provider 401); True when the value changed."""
        ref = self._refs.get(name)
        if ref is None or not ref.arn:
            return False
        before = self._values[name]
        async with self._lock:
            if self._values[name] != before:
                return True  # another caller refreshed it while we waited
            last = self._fetched_at.get(name, 0.0)
            if time.monotonic() - last < MIN_REFRESH_INTERVAL_S:
                return False
            try:
                value = await asyncio.to_thread(self._fetch, ref)
            except SecretError as exc:
                log.error("secret refresh failed", extra={"secret": name, "error": str(exc)})
                self._fetched_at[name] = time.monotonic()
                return False
            self._fetched_at[name] = time.monotonic()
            changed = value != before
            self._values[name] = value
            log.info("secret refreshed", extra={"secret": name, "changed": changed})
            return changed


def _boto3_client(region: str | None) -> Any:
    import boto3  # imported lazily: only deployments that use ARNs pay for it

    return boto3.client("secretsmanager", region_name=region)
