"""Exact-match response cache: canonical request keys, memory and Redis back ends, leases.

A cache key must change whenever the answer could: it covers every field that affects the output,
with the provider's defaults applied (a missing temperature is 1, not 0) and unknown fields kept (a
needless miss is cheap, a wrong hit is not). Fields that only affect delivery or bookkeeping
(`user`, `stream`, ...) are left out so that streamed and non-streamed callers share entries.

With `cache.scope: key` the client key's name is part of every key (tenants never share answers);
with `global` every key shares one entry per request.

Invalidation bumps a namespace version (global, one model's, one client key's, or one key's for
one model) that is part of every key: O(1), seen by every replica at once, and old entries simply
age out.

A lookup may take a lease on a missing entry (`SET NX PX`, in the same script as the lookup): the
first caller of a request holds it until its answer is stored (or it fails), so other callers,
in any process, wait for the entry instead of calling the provider too (app/single_flight.py).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import redis.asyncio as aioredis

from app.redis_backend import (
    BackendHealth,
    BackendUnavailable,
    register_script,
    unavailable_on_error,
)

# How long a lookup's lease on a missing entry lasts unless the answer is stored or fails first.
DEFAULT_LEASE_S = 30.0

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


def request_digest(canonical: dict, scope: str | None = None) -> str:
    """The request's digest; `scope` (a client key's name) makes it that key's alone."""
    payload = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    if scope is None:
        return hashlib.sha256(b"%d\n%s" % (KEY_SCHEMA_VERSION, payload)).hexdigest()
    name = scope.encode()
    header = b"%d\nkey:%d:%s\n" % (KEY_SCHEMA_VERSION, len(name), name)
    return hashlib.sha256(header + payload).hexdigest()


LeaseState = Literal["none", "acquired", "taken_over", "held"]


@dataclass(slots=True)
class Lookup:
    """A lookup's answer: the entry (or None) and, on a miss, the lease: `acquired` by this
    caller (it was free or had expired), `taken_over` from a holder whose call failed, `held` by
    another, or `none` (not asked for, or the back end could not say)."""

    value: bytes | None
    lease: LeaseState = "none"


class ResponseCache(Protocol):
    async def key_for(self, canonical: dict, scope: str | None = None) -> str: ...

    async def get(self, key: str) -> bytes | None: ...

    async def lookup(self, key: str, lease: bool) -> Lookup: ...

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...

    async def release(self, key: str) -> None: ...

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> None: ...


def _check_ttl(ttl_s: int) -> int:
    if not isinstance(ttl_s, int) or ttl_s < 1:
        raise ValueError(f"ttl_s must be an integer >= 1 (seconds), got {ttl_s!r}")
    return ttl_s


class MemoryResponseCache:
    """In-process LRU with per-entry TTL, bounded by `max_entries`."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        self._max_entries = max_entries
        self._ttl_s = _check_ttl(ttl_s)
        self._clock = clock
        self._lease_s = lease_s
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        # key -> lease expiry, negated once released; gone once the entry is stored.
        self._leases: dict[str, float] = {}
        self._global_version = 0
        # Versions per model, per client key (scope) and per (client key, model).
        self._versions: dict[tuple[str | None, str | None], int] = {}
        self.evictions_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def key_for(self, canonical: dict, scope: str | None = None) -> str:
        model = canonical["model"]
        version = f"{self._global_version}.{self._versions.get((None, model), 0)}"
        if scope is not None:
            scoped = self._versions.get((scope, None), 0), self._versions.get((scope, model), 0)
            version = f"{version}.{scoped[0]}.{scoped[1]}"
        return f"{version}:{request_digest(canonical, scope)}"

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

    async def lookup(self, key: str, lease: bool) -> Lookup:
        value = await self.get(key)
        if value is not None or not lease:
            return Lookup(value)
        now = self._clock()
        expiry = self._leases.get(key, 0.0)
        if expiry > now:
            return Lookup(None, "held")
        self._leases[key] = now + self._lease_s
        if len(self._leases) > self._max_entries:  # bounded: forget leases past their expiry
            self._leases = {k: t for k, t in self._leases.items() if abs(t) > now}
        return Lookup(None, "taken_over" if -expiry > now else "acquired")

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        ttl = self._ttl_s if ttl_s is None else _check_ttl(ttl_s)
        self._leases.pop(key, None)
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self.evictions_total += 1

    async def release(self, key: str) -> None:
        expiry = self._leases.get(key, 0.0)
        if expiry > 0:
            self._leases[key] = -expiry

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> None:
        if model is None and scope is None:
            self._global_version += 1
            self._entries.clear()
        else:
            # Entries under the old version are unreachable now and leave by LRU or TTL.
            self._versions[(scope, model)] = self._versions.get((scope, model), 0) + 1


_LUA_DIR = Path(__file__).parent / "lua"
_DIGEST_LENGTH = 64
_LEASE_STATES: dict[int, LeaseState] = {0: "held", 1: "acquired", 2: "taken_over"}
# Lease tokens: a random per-process part and a sequence number.
_LEASE_OWNER = os.urandom(6).hex()
_LEASE_SEQUENCE = itertools.count()


class CacheKey(str):
    """A Redis cache key: the string `<digest>:<model>` (its identity), carrying its parts and
    the client key's name when the cache is scoped per key (the digest covers that name too)."""

    digest: str
    model: str
    scope: str | None

    def __new__(cls, digest: str, model: str, scope: str | None = None) -> CacheKey:
        key = super().__new__(cls, f"{digest}:{model}")
        key.digest, key.model, key.scope = digest, model, scope
        return key


class RedisResponseCache:
    """Response cache in Redis shared by every replica; one script call per lookup and per store.

    `key_for` needs no round trip: its key names the model, the client key (scoped) and the request
    digest. `lookup` resolves the namespace versions, reads the entry and, on a miss, may take the
    lease in one script, and remembers the versions it saw; `set` stores under those versions only
    if they are still current (so an answer computed before an invalidation is never stored under
    the new namespace) and drops the lease in the same script.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        ttl_s: int,
        prefix: str = "liftoff",
        max_pending: int = 10_000,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._redis = redis
        self._ttl_s = _check_ttl(ttl_s)
        self._prefix = f"{prefix}:cache"
        self._lease_ms = max(1, round(lease_s * 1000))
        self._get = register_script(redis, (_LUA_DIR / "cache_get.lua").read_text())
        self._set = register_script(redis, (_LUA_DIR / "cache_set.lua").read_text())
        self._release = register_script(redis, (_LUA_DIR / "cache_release.lua").read_text())
        # Namespace versions seen by lookups for keys that may be set next, and the leases this
        # process holds (namespace, token); bounded, oldest dropped first (a dropped key is then
        # stored under the versions current at set time, a dropped lease expires by itself).
        self._seen: OrderedDict[str, bytes] = OrderedDict()
        self._held: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._max_pending = max_pending

    def _version_keys(self, model: str, scope: str | None) -> list[str]:
        keys = [f"{self._prefix}:ns", f"{self._prefix}:ns:{model}"]
        if scope is not None:
            # Length-prefixed: no key name and model name pair can spell another's version key.
            scoped = f"{self._prefix}:ns:key:{len(scope)}:{scope}"
            keys += [scoped, f"{scoped}:{model}"]
        return keys

    @staticmethod
    def _parts(key: str) -> tuple[str, str, str | None]:
        if isinstance(key, CacheKey):
            return key.digest, key.model, key.scope
        if len(key) <= _DIGEST_LENGTH + 1 or key[_DIGEST_LENGTH] != ":":
            raise ValueError("not a key made by RedisResponseCache.key_for")
        return key[:_DIGEST_LENGTH], key[_DIGEST_LENGTH + 1 :], None

    async def key_for(self, canonical: dict, scope: str | None = None) -> str:
        return CacheKey(request_digest(canonical, scope), canonical["model"], scope)

    async def get(self, key: str) -> bytes | None:
        return (await self.lookup(key, lease=False)).value

    async def lookup(self, key: str, lease: bool) -> Lookup:
        digest, model, scope = self._parts(key)
        token = f"{_LEASE_OWNER}:{next(_LEASE_SEQUENCE)}" if lease else ""
        with unavailable_on_error("cache get"):
            namespace, value, leased = await self._get(
                keys=self._version_keys(model, scope),
                args=[f"{self._prefix}:", digest, self._lease_ms if lease else 0, token],
            )
        _remember(self._seen, key, namespace, self._max_pending)
        if leased in (1, 2):
            _remember(self._held, key, (namespace, token), self._max_pending)
        if value is not None or not lease:
            return Lookup(value)
        return Lookup(None, _LEASE_STATES[leased])

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        ttl = self._ttl_s if ttl_s is None else _check_ttl(ttl_s)
        digest, model, scope = self._parts(key)
        seen = self._seen.pop(key, b"")
        self._held.pop(key, None)  # the store drops the lease
        with unavailable_on_error("cache set"):
            await self._set(
                keys=self._version_keys(model, scope),
                args=[f"{self._prefix}:", digest, value, ttl * 1000, seen],
            )

    async def release(self, key: str) -> None:
        """Give up the lease this lookup took (the call failed): a waiter takes over at once."""
        held = self._held.pop(key, None)
        if held is None:
            return
        digest, _, _ = self._parts(key)
        lease_key = f"{self._prefix}:lease:{held[0].decode()}:{digest}"
        with unavailable_on_error("cache release"):
            await self._release(keys=[lease_key], args=[held[1]])

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> None:
        keys = self._version_keys(model or "", scope)
        if scope is None:
            version_key = keys[0] if model is None else keys[1]
        else:
            version_key = keys[2] if model is None else keys[3]
        with unavailable_on_error("cache invalidate"):
            await self._redis.incr(version_key)


def _remember(table: OrderedDict[str, Any], key: str, value: Any, bound: int) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > bound:
        table.popitem(last=False)


class ResilientCache:
    """A cache whose back-end failures become misses and no-ops instead of failed requests.

    After a failure the back end is skipped for a back-off period, then probed (BackendHealth).
    `invalidate` still raises BackendUnavailable: an invalidation silently dropped would leave
    stale answers in place, so the caller must learn that it did not happen.
    """

    def __init__(self, inner: ResponseCache, health: BackendHealth | None = None) -> None:
        self.inner = inner
        self.health = health or BackendHealth()
        self.health.serve("cache", "off")  # lookups miss and writes are dropped while it is down
        self.errors_total = 0

    @property
    def state(self) -> str:
        return self.health.state

    async def key_for(self, canonical: dict, scope: str | None = None) -> str:
        return await self.inner.key_for(canonical, scope)

    async def get(self, key: str) -> bytes | None:
        return (await self.lookup(key, lease=False)).value

    async def lookup(self, key: str, lease: bool) -> Lookup:
        try:
            return await self.health.call(lambda: self.inner.lookup(key, lease))
        except BackendUnavailable:
            self.errors_total += 1
            return Lookup(None)

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        try:
            await self.health.call(lambda: self.inner.set(key, value, ttl_s))
        except BackendUnavailable:
            self.errors_total += 1

    async def release(self, key: str) -> None:
        try:
            await self.health.call(lambda: self.inner.release(key))
        except BackendUnavailable:
            self.errors_total += 1  # the lease expires by itself

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> None:
        await self.health.call(lambda: self.inner.invalidate(model, scope))
