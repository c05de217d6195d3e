"""The provider interface: how to reach a model (URL, body, auth) and how to read a refusal.

A :class:`Provider` is pure mapping, no I/O: the client in ``app/upstream.py`` owns connections,
retries, breakers and fallbacks and asks the model's provider, per attempt, where to send the
call, with which headers and body, and what a non-200 answer means. The rate-limit headers every
OpenAI-shaped provider sends (``retry-after-ms``, ``retry-after``, ``x-ratelimit-reset-*``) are
read here once, so each provider's 429s follow the same backoff rules.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import yarl

from app.errors import UpstreamError

# Worth another attempt: the provider is overloaded, failing or timed out (408), not refusing.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s", or plain seconds "2.5"."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
        pos = match.end()
    return total if pos == len(text) else None


def retry_hint(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the provider asked us to wait, from its headers; None when it did not say."""
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    if (value := headers.get("retry-after")) is not None:
        seconds = parse_duration(value)
        if seconds is not None:
            return seconds
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return max(0.0, when - (time.time() if now is None else now))
    resets = [
        parse_duration(headers[name])
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in headers
    ]
    # Only a limit that is exhausted matters; the provider sends both on every 429.
    exhausted = []
    for kind, reset in zip(("requests", "tokens"), resets, strict=False):
        if reset is not None and headers.get(f"x-ratelimit-remaining-{kind}", "1") == "0":
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    known = [r for r in resets if r is not None]
    return min(known) if known else None


def json_object(body: bytes) -> dict[str, Any]:
    """A provider's error body as a dict ({} when it is not a JSON object)."""
    try:
        parsed = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


class ProviderError(RuntimeError):
    """A provider cannot be set up (e.g. a missing optional package); names the provider."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a non-200 answer means: the error to report and whether another attempt may help.

    ``retry_reason`` is None for a final answer, "401" when a fresh key may help, else the
    retryable status (the ``reason`` label of ``liftoff_upstream_retries_total``).
    """

    error: UpstreamError
    retry_reason: str | None


class Credential(ABC):
    """Where a provider's key or token comes from."""

    @abstractmethod
    async def key(self) -> str | None:
        """The current key or token (None: send no auth header)."""

    @abstractmethod
    async def refresh(self) -> bool:
        """After a 401: fetch it again; True when the value changed (worth a retry)."""

    async def close(self) -> None:  # noqa: B027 - most credentials hold nothing to release
        """Release what the credential holds (sessions, subprocess pools)."""


class KeyCredential(Credential):
    """A key from the secret store (env value or Secrets Manager ARN, refreshed on 401)."""

    def __init__(self, get: Callable[[], str | None], refresh: Callable[[], Awaitable[bool]]):
        self._get = get
        self._refresh = refresh

    async def key(self) -> str | None:
        return self._get()

    async def refresh(self) -> bool:
        return await self._refresh()


class Provider(ABC):
    """One named provider. Paths are the OpenAI ones ("/v1/chat/completions", "/v1/files/x")."""

    kind: ClassVar[str]

    def __init__(self, name: str, url: str, credential: Credential) -> None:
        self.name = name
        self.url = yarl.URL(url.rstrip("/"))
        self.credential = credential

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {str(self.url)!r})"

    @abstractmethod
    def url_for(self, path: str, model: str | None) -> yarl.URL:
        """Where the OpenAI ``path`` for ``model`` (None: a call not bound to a model) goes."""

    @abstractmethod
    def headers(self, key: str | None) -> dict[str, str]:
        """The auth headers for ``key`` ({} without one)."""

    async def auth_headers(
        self, method: str, url: yarl.URL, payload: bytes | None
    ) -> dict[str, str]:
        """The auth headers of one request (``payload`` None: a streamed body). By default the
        credential's key as :meth:`headers` sends it; a signing provider overrides this."""
        return self.headers(await self.credential.key())

    def body_for(self, path: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON body to send for ``model`` (the client's own, model resolved)."""
        return body if body.get("model") == model else {**body, "model": model}

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Refusal:
        """A non-200 answer of an OpenAI-shaped provider."""
        error = UpstreamError(status, json_object(body), retry_hint(headers))
        retryable = status in RETRY_STATUSES or status == 401
        return Refusal(error, str(status) if retryable else None)
