"""The Redis connection shared by the cache and the limiter, and how its failures are contained.

Redis is on every request's path, so a slow or absent Redis must cost little: short socket
timeouts, one immediate reconnect (a pooled connection goes stale after a restart or failover) and
no backed-off retries inside redis-py. Failures surface as `BackendUnavailable`; `BackendHealth`
decides when callers stop trying Redis and when they probe it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, KeyT

from app.redis_pipelined import PipelinedRedis

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Errors that mean "Redis cannot answer now" (down, unreachable, slow, loading, failing over); any
# other RedisError (a script bug, WRONGTYPE) is a programming error and propagates unchanged.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    OSError,
    asyncio.TimeoutError,
)


class BackendUnavailable(Exception):
    """Redis could not be reached or did not answer in time."""


class unavailable_on_error:
    """Re-raise connection-level Redis failures of `operation` as `BackendUnavailable`.

    A class, not a @contextmanager generator: it wraps every Redis call on the hot path.
    """

    __slots__ = ("operation",)

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> bool:
        if kind is not None and issubclass(kind, UNAVAILABLE_ERRORS):
            # The message names the operation and error class only: redis-py messages can carry
            # the host name, which must not reach clients.
            raise BackendUnavailable(f"redis {self.operation} failed: {kind.__name__}") from error
        return False


def create_redis(
    url: str,
    auth_token: str | None = None,
    *,
    username: str | None = None,
    socket_timeout_s: float = 0.5,
    connect_timeout_s: float = 0.5,
    max_connections: int = 128,
    pool_timeout_s: float = 0.5,
    health_check_interval_s: int = 30,
) -> aioredis.Redis:
    """A redis.asyncio client for `url` (redis://, or rediss:// for TLS) using the AUTH token.

    The AUTH token is passed separately so that it never has to be written into a URL (URLs end up
    in config files and logs). The pool holds at most `max_connections`; a burst beyond that waits
    up to `pool_timeout_s` for a free connection instead of failing at once or opening hundreds of
    connections together (Lua calls take well under a millisecond, so a few dozen go far).
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"redis url must start with redis://, rediss:// or unix://, got {url!r}")
    if min(socket_timeout_s, connect_timeout_s, pool_timeout_s) <= 0:
        raise ValueError("socket_timeout_s, connect_timeout_s and pool_timeout_s must be > 0")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
    options: dict[str, object] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": health_check_interval_s,
        "max_connections": max_connections,
        "timeout": pool_timeout_s,
        "retry": Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        "client_name": "liftoff-gateway",
    }
    if auth_token is not None:
        options["password"] = auth_token
        if username is not None:
            options["username"] = username
    # Commands share one pipelined connection; the pool serves pipelines (see redis_pipelined).
    return PipelinedRedis.from_pool(aioredis.BlockingConnectionPool.from_url(url, **options))


class Script:
    """A Lua script run by EVALSHA; after NOSCRIPT (restart, flush) one EVAL runs and loads it.

    Lighter than redis-py's AsyncScript (which answers NOSCRIPT with SCRIPT LOAD and a second
    EVALSHA: two more round trips) and it goes through `client.execute_command`, so it takes
    the client's pipelined connection.
    """

    __slots__ = ("client", "sha", "source")

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[KeyT] = (), args: Iterable[EncodableT] = ()) -> Any:
        try:
            return await self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.execute_command("EVAL", self.source, len(keys), *keys, *args)


def register_script(client: aioredis.Redis, source: str) -> Script:
    """A Lua script run by EVALSHA, loaded again by itself after NOSCRIPT (restart, flush)."""
    return Script(client, source)


async def ping(client: aioredis.Redis) -> None:
    with unavailable_on_error("PING"):
        await client.ping()


HealthState = Literal["healthy", "degraded"]


class BackendHealth:
    """Tracks whether Redis is usable and when to probe it again after failures.

    After a failure callers skip Redis for a back-off period (doubling per consecutive failure up to
    `backoff_cap_s`); once it has passed, one caller at a time is let through as the probe, and its
    success restores normal operation.

    The switch each way is logged once: a WARNING at the first failure, naming what each user
    does meanwhile ("state backend degraded (limits: local, cache: off)"), and an INFO line with
    the outage's duration when Redis answers again. Users sharing one health object share the
    lines; users with their own each log theirs. No host names or credentials: the reason is the
    failed operation and the error class only (see unavailable_on_error).
    """

    def __init__(
        self,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._clock = clock
        self._consecutive_failures = 0
        self._retry_at = 0.0
        self._probing = False
        self._degraded_at = 0.0
        self._users: dict[str, str] = {}
        self.failures_total = 0
        self.recoveries_total = 0
        # Called with True when Redis is lost and False when it is back (e.g. to set a gauge
        # in the worker that saw it, which a scrape served by another worker would miss).
        self.on_change: Callable[[bool], None] | None = None

    def serve(self, user: str, degraded_mode: str) -> None:
        """Register a user of this Redis and what it does while Redis is down (for the logs)."""
        self._users[user] = degraded_mode

    @property
    def degraded_modes(self) -> str:
        """ "limits: local, cache: off": each user and what it does while Redis is down."""
        return ", ".join(f"{user}: {mode}" for user, mode in self._users.items()) or "no users"

    @property
    def state(self) -> HealthState:
        return "healthy" if self._consecutive_failures == 0 else "degraded"

    def try_acquire(self) -> bool:
        """Whether this call may use Redis now (always when healthy; one probe at a time after)."""
        if self._consecutive_failures == 0:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def seconds_until_probe(self, minimum_s: float = 0.05) -> float:
        """How long until a caller may try Redis again (`minimum_s` while another probes)."""
        return max(minimum_s, self._retry_at - self._clock())

    def record_success(self) -> None:
        if self._consecutive_failures:
            self.recoveries_total += 1
            outage_s = round(self._clock() - self._degraded_at, 3)
            logger.info(
                "state backend recovered after %.1f s (%s)",
                outage_s,
                self.degraded_modes,
                extra={"state_backend": "healthy", "outage_s": outage_s},
            )
            if self.on_change is not None:
                self.on_change(False)
        self._consecutive_failures = 0
        self._probing = False

    def record_failure(self, reason: str = "") -> None:
        """Count a failure; `reason` (logged at the first) must hold no host name or secret."""
        self.failures_total += 1
        if not self._consecutive_failures:
            self._degraded_at = self._clock()
            logger.warning(
                "state backend degraded (%s)%s",
                self.degraded_modes,
                f": {reason}" if reason else "",
                extra={"state_backend": "degraded", "degraded_modes": self.degraded_modes},
            )
            if self.on_change is not None:
                self.on_change(True)
        self._consecutive_failures += 1
        self._probing = False
        delay = min(self._cap, self._base * 2 ** (self._consecutive_failures - 1))
        self._retry_at = self._clock() + delay

    def release(self) -> None:
        """Give up a probe slot without a verdict (the call was cancelled)."""
        self._probing = False

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` (which raises BackendUnavailable on failure), recording the outcome.

        Raises BackendUnavailable at once, without calling, while Redis is being skipped.
        """
        if not self.try_acquire():
            raise BackendUnavailable("redis skipped during back-off after recent failures")
        try:
            result = await operation()
        except BackendUnavailable as exc:
            self.record_failure(str(exc))
            raise
        except BaseException:
            self.release()
            raise
        self.record_success()
        return result
