"""Prometheus metrics, all prefixed ``liftoff_``, on a registry owned by one gateway instance.

Each gateway has its own ``CollectorRegistry`` so two instances in one process (tests, or an
embedding application) never collide. With several uvicorn workers each process reports its own
series; scrape each pod, and aggregate with sum() in queries.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "liftoff_requests_total",
            "Requests by route, model and status.",
            ["route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "liftoff_request_duration_seconds",
            "Total request latency.",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "liftoff_overhead_seconds",
            "The gateway's own time per request (upstream wait excluded).",
            ["route"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "liftoff_time_to_first_token_seconds",
            "Time from request to the first streamed chunk.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "liftoff_tokens_total",
            "Tokens by kind (prompt, completion).",
            ["model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "liftoff_cost_usd_total", "Provider cost in USD.", ["model"], registry=r
        )
        self.cache = Counter(
            "liftoff_cache_results_total",
            "Cache lookups by result (hit, miss, bypass).",
            ["result"],
            registry=r,
        )
        self.single_flight_waits = Counter(
            "liftoff_cache_single_flight_waits_total",
            "Identical requests that waited for another process' call (its cache lease).",
            registry=r,
        )
        self.single_flight_timeouts = Counter(
            "liftoff_cache_single_flight_timeouts_total",
            "Waits for another process' call that timed out (the request then called itself).",
            registry=r,
        )
        self.cache_saved_tokens = Counter(
            "liftoff_cache_saved_tokens_total",
            "Tokens not bought thanks to cache hits.",
            ["model"],
            registry=r,
        )
        self.cache_saved_usd = Counter(
            "liftoff_cache_saved_usd_total",
            "Cost avoided thanks to cache hits.",
            ["model"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "liftoff_upstream_retries_total",
            "Retries towards the provider by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "liftoff_upstream_in_flight",
            "Calls to the provider in flight.",
            ["model"],
            registry=r,
        )
        self.upstream_fallbacks = Counter(
            "liftoff_upstream_fallbacks_total",
            "Requests served by a fallback model.",
            ["model", "fallback"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "liftoff_circuit_state",
            "Circuit breaker per model: 0 closed, 1 half-open, 2 open.",
            ["model"],
            registry=r,
        )
        self.rate_limited = Counter(
            "liftoff_rate_limit_rejections_total",
            "Requests refused by our limits, by reason.",
            ["reason"],
            registry=r,
        )
        self.budget_soft = Counter(
            "liftoff_budget_soft_threshold_total",
            "Requests admitted past a budget's soft threshold.",
            ["key"],
            registry=r,
        )
        self.batch_size = Histogram(
            "liftoff_batch_size",
            "Prompts per upstream /v1/completions call.",
            buckets=(1, 2, 3, 4, 5, 8, 10, 15, 20),
            registry=r,
        )
        self.stream_interruptions = Counter(
            "liftoff_stream_interruptions_total",
            "Provider streams that broke mid-way.",
            ["model"],
            registry=r,
        )
        self.moderation_flagged = Counter(
            "liftoff_moderation_flagged_total",
            "Requests refused by the moderation check.",
            registry=r,
        )
        self.state_degraded = Gauge(
            "liftoff_state_degraded",
            "1 while Redis is unreachable and the gateway runs degraded.",
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, resolved once: labels() takes a lock and builds a tuple.

        Label values come from bounded sets (routes, catalog models, client keys, reasons).
        """
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_circuit(self, model: str, state: str) -> None:
        self.circuit_state.labels(model).set(BREAKER_STATES[state])

    def render(self) -> bytes:
        return generate_latest(self.registry)
