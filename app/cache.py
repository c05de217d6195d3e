"""Exact-match response cache: canonical request keys, memory and Redis back ends, single flight.

A cache key must change whenever the answer could: it covers every field that affects the output,
with the provider's defaults applied (a missing temperature is 1, not 0) and unknown fields kept (a
needless miss is cheap, a wrong hit is not). Fields that only affect delivery or bookkeeping
(`user`, `stream`, ...) are left out so that streamed and non-streamed callers share entries.

Invalidation bumps a namespace version (global, or one model's) that is part of every key: O(1),
seen by every replica at once, and old entries simply age out.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis

from app.redis_backend import (
    BackendHealth,
    BackendUnavailable,
    register_script,
    unavailable_on_error,
)

T = TypeVar("T")

# Part of every digest: bump it when canonicalisation rules change so old entries stop matching.
KEY_SCHEMA_VERSION = 1

# Fields that do not change what the model generates.
NON_OUTPUT_FIELDS = frozenset(
    {
        "user",
        "stream",
        "stream_options",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)

# The provider's defaults for omitted (or null) parameters.
_SHARED_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logit_bias": {},
}
CHAT_DEFAULTS: dict[str, Any] = {
    **_SHARED_DEFAULTS,
    "logprobs": False,
    "response_format": {"type": "text"},
    "modalities": ["text"],
}
COMPLETIONS_DEFAULTS: dict[str, Any] = {
    **_SHARED_DEFAULTS,
    "max_tokens": 16,
    "best_of": 1,
    "echo": False,
}
# Numbers that are floats for the provider: 1 and 1.0 must give the same key.
FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _as_float(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def canonical_request(
    kind: Literal["chat", "completions"], body: dict, resolved_model: str
) -> dict:
    """The request reduced to what determines its output, defaults applied.

    `body` is the request as it will be sent upstream (after max_tokens defaults and clamping);
    `resolved_model` is the pinned model an alias maps to.
    """
    if kind == "chat":
        defaults = CHAT_DEFAULTS
    elif kind == "completions":
        defaults = COMPLETIONS_DEFAULTS
    else:
        raise ValueError(f"kind must be 'chat' or 'completions', got {kind!r}")
    canonical = {
        name: value
        for name, value in body.items()
        if value is not None and name not in NON_OUTPUT_FIELDS
    }
    canonical["model"] = resolved_model
    for name, value in defaults.items():
        canonical.setdefault(name, value)
    for name in FLOAT_FIELDS:
        canonical[name] = _as_float(canonical[name])
    if isinstance(canonical["logit_bias"], dict):
        canonical["logit_bias"] = {k: _as_float(v) for k, v in canonical["logit_bias"].items()}

    stop = canonical.pop("stop", None)
    if isinstance(stop, str):
        canonical["stop"] = [stop]
    elif stop:
        canonical["stop"] = stop

    if kind == "chat":
        # max_tokens is the deprecated spelling of max_completion_tokens; both mean the same cap.
        if "max_tokens" in canonical and "max_completion_tokens" not in canonical:
            canonical["max_completion_tokens"] = canonical.pop("max_tokens")
        _tool_defaults(canonical, "tools", "tool_choice")
        _tool_defaults(canonical, "functions", "function_call")
        if canonical.get("tools"):
            canonical.setdefault("parallel_tool_calls", True)
    return canonical


def _tool_defaults(canonical: dict, tools_field: str, choice_field: str) -> None:
    # Without tools the choice can only be "none"; with tools the provider defaults to "auto".
    if canonical.get(tools_field):
        canonical.setdefault(choice_field, "auto")
    else:
        canonical.pop(tools_field, None)
        if canonical.get(choice_field) == "none":
            del canonical[choice_field]


def is_deterministic(canonical: dict) -> bool:
    """Whether the request asks for a repeatable answer (cached by default only then)."""
    return canonical.get("temperature") == 0 or canonical.get("seed") is not None


def request_digest(canonical: dict) -> str:
    payload = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"%d\n%s" % (KEY_SCHEMA_VERSION, payload)).hexdigest()


class ResponseCache(Protocol):
    async def key_for(self, canonical: dict) -> str: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...

    async def invalidate(self, model: str | None = None) -> None: ...


def _check_ttl(ttl_s: int) -> int:
    if not isinstance(ttl_s, int) or ttl_s < 1:
        raise ValueError(f"ttl_s must be an integer >= 1 (seconds), got {ttl_s!r}")
    return ttl_s


class MemoryResponseCache:
    """In-process LRU with per-entry TTL, bounded by `max_entries`."""

    def __init__(
        self, max_entries: int, ttl_s: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        self._max_entries = max_entries
        self._ttl_s = _check_ttl(ttl_s)
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._global_version = 0
        self._model_versions: dict[str, int] = {}
        self.evictions_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def key_for(self, canonical: dict) -> str:
        model = canonical["model"]
        version = f"{self._global_version}.{self._model_versions.get(model, 0)}"
        return f"{version}:{request_digest(canonical)}"

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        ttl = self._ttl_s if ttl_s is None else _check_ttl(ttl_s)
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self.evictions_total += 1

    async def invalidate(self, model: str | None = None) -> None:
        if model is None:
            self._global_version += 1
            self._entries.clear()
        else:
            # Entries under the old version are unreachable now and leave by LRU or TTL.
            self._model_versions[model] = self._model_versions.get(model, 0) + 1


_LUA_DIR = Path(__file__).parent / "lua"
_DIGEST_LENGTH = 64


class RedisResponseCache:
    """Response cache in Redis shared by every replica; one script call per lookup and per store.

    `key_for` needs no round trip: its key names the model and the request digest. `get` resolves
    the namespace versions and reads the entry in one script, and remembers the versions it saw;
    `set` stores under those versions only if they are still current, so an answer computed before
    an invalidation is never stored under the new namespace.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        ttl_s: int,
        prefix: str = "liftoff",
        max_pending: int = 10_000,
    ) -> None:
        self._redis = redis
        self._ttl_s = _check_ttl(ttl_s)
        self._prefix = f"{prefix}:cache"
        self._get = register_script(redis, (_LUA_DIR / "cache_get.lua").read_text())
        self._set = register_script(redis, (_LUA_DIR / "cache_set.lua").read_text())
        # Versions seen by get() for keys that may be set next; bounded, oldest dropped first (a
        # dropped key is then stored under the versions current at set time).
        self._seen: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()
        self._max_pending = max_pending

    def _version_keys(self, model: str) -> list[str]:
        return [f"{self._prefix}:ns", f"{self._prefix}:ns:{model}"]

    @staticmethod
    def _split(key: str) -> tuple[str, str]:
        if len(key) <= _DIGEST_LENGTH + 1 or key[_DIGEST_LENGTH] != ":":
            raise ValueError("not a key made by RedisResponseCache.key_for")
        return key[:_DIGEST_LENGTH], key[_DIGEST_LENGTH + 1 :]

    async def key_for(self, canonical: dict) -> str:
        return f"{request_digest(canonical)}:{canonical['model']}"

    async def get(self, key: str) -> bytes | None:
        digest, model = self._split(key)
        with unavailable_on_error("cache get"):
            global_version, model_version, value = await self._get(
                keys=self._version_keys(model), args=[f"{self._prefix}:", digest]
            )
        self._seen[key] = (global_version, model_version)
        self._seen.move_to_end(key)
        if len(self._seen) > self._max_pending:
            self._seen.popitem(last=False)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        ttl = self._ttl_s if ttl_s is None else _check_ttl(ttl_s)
        digest, model = self._split(key)
        seen_global, seen_model = self._seen.pop(key, (b"", b""))
        with unavailable_on_error("cache set"):
            await self._set(
                keys=self._version_keys(model),
                args=[f"{self._prefix}:", digest, value, ttl * 1000, seen_global, seen_model],
            )

    async def invalidate(self, model: str | None = None) -> None:
        global_key, model_key = self._version_keys(model or "")
        with unavailable_on_error("cache invalidate"):
            await self._redis.incr(global_key if model is None else model_key)


class ResilientCache:
    """A cache whose back-end failures become misses and no-ops instead of failed requests.

    After a failure the back end is skipped for a back-off period, then probed (BackendHealth).
    `invalidate` still raises BackendUnavailable: an invalidation silently dropped would leave
    stale answers in place, so the caller must learn that it did not happen.
    """

    def __init__(self, inner: ResponseCache, health: BackendHealth | None = None) -> None:
        self.inner = inner
        self.health = health or BackendHealth()
        self.errors_total = 0

    @property
    def state(self) -> str:
        return self.health.state

    async def key_for(self, canonical: dict) -> str:
        return await self.inner.key_for(canonical)

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.health.call(lambda: self.inner.get(key))
        except BackendUnavailable:
            self.errors_total += 1
            return None

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        try:
            await self.health.call(lambda: self.inner.set(key, value, ttl_s))
        except BackendUnavailable:
            self.errors_total += 1

    async def invalidate(self, model: str | None = None) -> None:
        await self.health.call(lambda: self.inner.invalidate(model))


class SingleFlight:
    """Concurrent callers with the same key share one call of the factory.

    The shared call runs as its own task: a caller that is cancelled stops waiting without
    cancelling the call for the others; its result or exception reaches every waiter. At most
    `max_keys` calls are tracked; beyond that callers run their own call (bounded memory).
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self._max_keys = max_keys
        self._calls: dict[Hashable, asyncio.Future[Any]] = {}
        self.calls_total = 0  # factory calls made
        self.shared_total = 0  # callers served by another caller's call

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        call = self._calls.get(key)
        if call is None:
            self.calls_total += 1
            if len(self._calls) >= self._max_keys:
                return await factory()
            call = asyncio.ensure_future(factory())
            self._calls[key] = call
            call.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.shared_total += 1
        return await asyncio.shield(call)

    def _finished(self, key: Hashable, call: asyncio.Future[Any]) -> None:
        # (No need to retrieve an exception here: asyncio.shield marks it retrieved for waiters
        # that were cancelled, and the others receive it.)
        if self._calls.get(key) is call:
            del self._calls[key]
