"""The gateway's parts and their lifecycle (routes: app/server.py, pipeline: app/pipeline.py).

`Gateway` starts what the configuration asks for (secrets, client keys, the provider client or
the built-in simulator, Redis or in-process state, the cache, single flight, batching) and builds
the shared pipeline over them; endpoint kinds (app/endpoints/) tell the pipeline what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from app import cache as cache_mod
from app.accounting import ModelPrice, PriceTable, TokenCounter
from app.auth import ClientKey, KeyRing, parse_client_keys
from app.config import GatewayConfig
from app.context import Ctx
from app.embedding_batching import EmbeddingBatcher
from app.errors import PayloadTooLarge
from app.finisher import ResponseFinisher
from app.limit_view import LimitView
from app.limits import KeyPolicy, build_limit_store
from app.log import AccessLog
from app.metrics import Metrics
from app.object_owners import ObjectOwners, build_object_owners
from app.pipeline import Pipeline
from app.providers import build_providers
from app.redis_backend import create_redis
from app.schemas import check_envelope, parse_json_object
from app.secrets import CLIENT_KEYS, REDIS_AUTH_TOKEN, SecretStore
from app.single_flight import CacheFlights
from app.telemetry_env import telemetry_requested
from app.upstream import CallStats, UpstreamClient

if TYPE_CHECKING:
    from app.telemetry import Telemetry

log = logging.getLogger("liftoff.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.secrets = SecretStore(self.env)
        self.counter = TokenCounter()
        self.prices = PriceTable(
            {
                name: ModelPrice(
                    spec.input_usd_per_1m, spec.output_usd_per_1m, spec.cached_input_usd_per_1m
                )
                for name, spec in config.models.catalog.items()
            }
        )
        self.ready = False
        self.draining = False
        self.keys = KeyRing([])
        self.policies: dict[str, KeyPolicy] = {}
        self.upstream: UpstreamClient | None = None
        self.redis: Any = None
        self.cache: Any = None
        self.flights: CacheFlights | None = None  # single flight for cacheable requests
        self.limits: Any = None
        self.owners: ObjectOwners | None = None  # who owns each stored object (started: set)
        self.batcher: Any = None
        self.embedding_batcher: EmbeddingBatcher | None = None
        self.simulator: Any = None
        self.pipeline: Pipeline | None = None  # built once the parts are started
        self.telemetry: Telemetry | None = None  # OpenTelemetry export (off: None)
        self._after: set[asyncio.Task[None]] = set()
        self.limit_view = LimitView(self.policies, config.limits.bursts)
        self.access_log = AccessLog()
        self.finisher = ResponseFinisher(config, self.metrics, self.access_log, self.limit_view)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        await self.secrets.resolve()
        keys = parse_client_keys(self.secrets.get(CLIENT_KEYS))
        self.keys = KeyRing(keys)
        limits = cfg.limits
        self.policies.clear()
        self.policies.update(
            {
                k.name: KeyPolicy(
                    k.name,
                    k.rpm if k.rpm is not None else limits.default_rpm,
                    k.tpm if k.tpm is not None else limits.default_tpm,
                    k.monthly_budget_usd,
                )
                for k in keys
            }
        )
        if self.keys.dev_mode:
            self.policies["dev"] = KeyPolicy("dev", limits.default_rpm, limits.default_tpm, None)
            log.warning(
                "no client keys configured: accepting only the development key 'liftoff-dev-key' "
                "(set LIFTOFF_CLIENT_KEYS or LIFTOFF_CLIENT_KEYS_SECRET_ARN for real keys)"
            )
        simulator_url = None
        if cfg.uses_simulator:
            from app.simulator import SimulatorOptions, SimulatorServer

            self.simulator = await asyncio.to_thread(SimulatorServer(SimulatorOptions()).start)
            simulator_url = self.simulator.url
            log.warning("upstream.url is null: using the built-in simulator at %s", simulator_url)
        self.upstream = UpstreamClient(
            build_providers(cfg, self.secrets, simulator_url),
            cfg.upstream,
            cfg.models,
            self.metrics,
        )
        await self.upstream.start()
        if cfg.redis.url:
            self.redis = create_redis(
                cfg.redis.url,
                self.secrets.get(REDIS_AUTH_TOKEN),
                socket_timeout_s=cfg.redis.socket_timeout_s,
                connect_timeout_s=cfg.redis.socket_timeout_s,
                max_connections=cfg.redis.max_connections,
            )
            self.cache = cache_mod.ResilientCache(
                cache_mod.RedisResponseCache(
                    self.redis, cfg.cache.ttl_s, lease_s=cfg.cache.single_flight_wait_s
                )
            )
        else:
            self.cache = cache_mod.MemoryResponseCache(
                cfg.cache.max_entries, cfg.cache.ttl_s, lease_s=cfg.cache.single_flight_wait_s
            )
        self.limits = build_limit_store(cfg.limits, self.redis)
        health = getattr(self.limits, "health", None)
        # One Redis health for limits and owner records: one degraded state, one log line each way.
        self.owners = build_object_owners(cfg.objects, self.redis, health)
        if health is not None:
            health.on_change = lambda degraded: self.metrics.state_degraded.set(int(degraded))
        self.flights = CacheFlights(
            self.cache,
            cfg.cache.single_flight_wait_s,
            self.after,
            self.metrics.single_flight_waits.inc,
            self.metrics.single_flight_timeouts.inc,
        )
        if cfg.batching.enabled:
            from app.batching import CompletionBatcher

            self.batcher = CompletionBatcher(
                cfg.batching.window_ms,
                cfg.batching.max_batch,
                self.send_batch,
                count_tokens=self.counter.count_text,
            )
        if cfg.batching.enabled:
            self.embedding_batcher = EmbeddingBatcher(cfg.batching.window_ms, self.send_embeddings)
        if telemetry_requested(self.env):
            from app.telemetry import telemetry_from_env  # the SDK is imported only when on

            self.telemetry = telemetry_from_env(
                self.env, self.upstream.provider_for, cfg.server.log_prompts
            )
        self.pipeline = Pipeline(self)
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        for batcher in (self.batcher, self.embedding_batcher):
            if batcher is not None:
                await batcher.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=5)
        if self.upstream is not None:
            await self.upstream.close()
        if self.limits is not None:
            await self.limits.aclose()  # settlements still waiting for Redis get one more try
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.simulator is not None:
            await asyncio.to_thread(self.simulator.stop)
            self.simulator = None
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown)  # exports what is left
            self.telemetry = None
        self.access_log.flush()

    def begin_drain(self) -> None:
        """SIGTERM: readiness goes false at once; in-flight work carries on."""
        if not self.draining:
            self.draining = True
            log.warning("draining: readiness is now false, in-flight requests finish")

    def after(self, coro: Any) -> None:
        """Run work after the response, off its path; errors are logged.

        The backlog stays bounded without a queue: each request schedules at most two tasks, and
        each task ends within Redis' socket timeout (or at once in-process).
        """
        task = asyncio.ensure_future(coro)
        self._after.add(task)
        task.add_done_callback(self._after_done)

    async def flush(self) -> None:
        """Wait for the after-work scheduled so far (settlements, cache writes)."""
        while self._after:
            await asyncio.wait(set(self._after))

    def _after_done(self, task: asyncio.Task[None]) -> None:
        self._after.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("after-work failed: %s", type(exc).__name__, exc_info=exc)

    # --- request helpers ---------------------------------------------------------------------

    def authenticate(self, ctx: Ctx) -> ClientKey:
        key = self.keys.authenticate(ctx.h.get("authorization"))
        ctx.key = key.name
        return key

    async def read_json(self, request: Request, ctx: Ctx) -> tuple[dict[str, Any], int]:
        limit = self.config.server.max_body_bytes
        length = ctx.h.get("content-length")
        check_envelope(
            ctx.h.get("content-type"),
            int(length) if length and length.isdigit() else None,
            limit,
        )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
        return parse_json_object(b"".join(chunks)), size

    async def send_batch(
        self, model: str, params: dict, prompts: list[str], traces: list[Any]
    ) -> dict:
        """One provider call for a batch of single-prompt completions (app/batching.py)."""
        self.metrics.batch_size.observe(len(prompts))
        reply = await self.upstream.post_json(
            "/v1/completions",
            {**params, "model": model, "prompt": prompts},
            model,
            self._batch_stats(traces),
        )
        return reply.json()

    async def send_embeddings(
        self, model: str, params: dict, inputs: list, traces: list[Any]
    ) -> dict:
        """One provider call for the inputs of concurrent embedding requests."""
        self.metrics.batch_size.observe(len(inputs))
        reply = await self.upstream.post_json(
            "/v1/embeddings",
            {**params, "model": model, "input": inputs},
            model,
            self._batch_stats(traces),
        )
        return reply.json()

    def _batch_stats(self, traces: list[Any]) -> CallStats:
        """The stats of a call made for the requests whose traces (None: off) are given: a lone
        request's attempts are its own spans, a batch's are linked to every request's."""
        members = [t for t in traces if t is not None]
        if not members or self.telemetry is None:
            return CallStats()
        if len(traces) == 1:
            return CallStats(trace=members[0])
        return CallStats(trace=self.telemetry.batch(members))
