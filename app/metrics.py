"""Prometheus metrics, all prefixed ``liftoff_``, on a registry owned by one gateway instance.

Each gateway has its own ``CollectorRegistry`` so two instances in one process (tests, or an
embedding application) never collide. With several uvicorn workers (``LIFTOFF_WORKERS`` > 1) the
values live in prometheus_client's multiprocess files (`worker_metrics_dir`), and any worker's
/metrics reports the whole process group: counters and histograms summed over every worker of
this start (one that died keeps its counts), gauges by their ``multiprocess_mode``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from app.accounting import TokenUsage

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files of gauges whose mode only counts live processes: `gauge_livesum_<pid>.db`, ...
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._usage_series: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._group_dir = os.environ.get(MULTIPROC_DIR_ENV)
        self._group: CollectorRegistry | None = None
        if self._group_dir:
            self._group = CollectorRegistry()
            MultiProcessCollector(self._group, path=self._group_dir)
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
        # By client key: key names come from the gateway's configuration (LIFTOFF_CLIENT_KEYS or
        # its secret), never from the request, so the series stay bounded (keys x models x kinds).
        self.tokens = Counter(
            "liftoff_tokens_total",
            "Tokens by client key, model and kind (prompt, completion; of them cached_input, "
            "reasoning).",
            ["key", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "liftoff_cost_usd_total",
            "Provider cost in USD by client key and model.",
            ["key", "model"],
            registry=r,
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
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_fallbacks = Counter(
            "liftoff_upstream_fallbacks_total",
            "Requests served by a fallback model.",
            ["model", "fallback"],
            registry=r,
        )
        # Overload (app/overload.py): the line for a model's concurrency slots, and the budget
        # that keeps retries a share of first calls.
        self.upstream_queue_length = Gauge(
            "liftoff_upstream_queue_length",
            "Calls waiting for one of the model's concurrency slots.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_queue_wait = Histogram(
            "liftoff_upstream_queue_wait_seconds",
            "Time a call waited for a concurrency slot (shed ones until they were shed).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_shed = Counter(
            "liftoff_upstream_shed_total",
            "Calls refused before reaching the provider (503 overloaded), by reason: drain (the "
            "line could not drain in time), timeout (the wait ran out).",
            ["model", "reason"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            "liftoff_upstream_retry_budget_exhausted_total",
            "Retries and fallbacks not made because the provider's retry budget was spent.",
            ["model"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "liftoff_circuit_state",
            "Circuit breaker per model: 0 closed, 1 half-open, 2 open.",
            ["model"],
            multiprocess_mode="livemax",  # each worker has its own breaker: the worst one
            registry=r,
        )
        self.circuit_transitions = Counter(
            "liftoff_circuit_transitions_total",
            "Circuit breaker state changes per model, by the state entered.",
            ["model", "state"],
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
            # Any live worker degraded, as each last set it (the /metrics route sets it on the
            # worker serving the scrape).
            multiprocess_mode="livemax",
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

    def count_usage(self, key: str, model: str, usage: TokenUsage, cost: float) -> None:
        """A response's tokens and cost, by client key name and the model that served it."""
        series = self._usage_series.get((key, model))
        if series is None:
            series = self._usage_series[(key, model)] = (
                self.tokens.labels(key, model, "prompt"),
                self.tokens.labels(key, model, "completion"),
                self.cost.labels(key, model),
            )
        series[0].inc(usage.prompt)
        series[1].inc(usage.completion)
        series[2].inc(cost)
        # Only for the models that report them: no zero series per key for the others.
        if usage.cached_input:
            self.child(self.tokens, key, model, "cached_input").inc(usage.cached_input)
        if usage.reasoning:
            self.child(self.tokens, key, model, "reasoning").inc(usage.reasoning)

    def set_circuit(self, model: str, state: str) -> None:
        self.circuit_state.labels(model).set(BREAKER_STATES[state])

    def circuit_changed(self, model: str, state: str) -> None:
        """A breaker entered `state`: the gauge and the transitions counter."""
        self.set_circuit(model, state)
        self.circuit_transitions.labels(model, state).inc()

    def render(self) -> bytes:
        """The exposition text: this process' registry, or with several workers the group's."""
        if self._group is None:
            return generate_latest(self.registry)
        self._forget_dead_workers()
        return generate_latest(self._group)

    def _forget_dead_workers(self) -> None:
        """mark_process_dead for workers that exited (uvicorn restarts a worker that dies): their
        live gauges (calls in flight, breaker, degraded) stop counting; counters keep their files.
        Done at scrape time, by whichever worker serves it: the parent process is uvicorn's."""
        assert self._group_dir is not None
        for name in os.listdir(self._group_dir):
            found = _LIVE_GAUGE_FILE.fullmatch(name)
            if found and not _alive(int(found.group(1))):
                mark_process_dead(int(found.group(1)), self._group_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


@contextlib.contextmanager
def worker_metrics_dir() -> Iterator[str]:
    """A fresh private directory for prometheus_client's multiprocess files, exported as
    PROMETHEUS_MULTIPROC_DIR for the worker processes started inside the block (they read it when
    they import prometheus_client), removed with its files when the block exits.

    Per gateway start, never shared: files left by an earlier run would add its counts to ours."""
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="liftoff-metrics-") as path:
        os.environ[MULTIPROC_DIR_ENV] = path
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop(MULTIPROC_DIR_ENV, None)
            else:
                os.environ[MULTIPROC_DIR_ENV] = previous
