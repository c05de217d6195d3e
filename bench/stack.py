"""The processes a benchmark or soak runs against, on free 127.0.0.1 ports, always stopped.

The provider simulator (no artificial latency by default), a redis-server when the binary exists
(else the gateway's in-process back ends, recorded as such), the gateway (`python -m app`, one
worker, every default feature on) and the bare proxy (`bench.bare_proxy`, the yardstick). Where the
machine has two CPUs or more, the gateway gets one to itself and the bare proxy shares it (they are
loaded in turn, never together), so both are measured on the same core.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODEL = "gpt-4o-mini-2024-07-18"
UPSTREAM_KEY = "sk-bench-upstream"
CLIENT_KEY = "lk-bench-" + os.urandom(8).hex()
# The highest limits a key may have (app/gcra.py MAX_LIMIT), far above the offered load: they
# are checked on every request but never reject.
CLIENT_KEYS = [{"name": "bench", "key": CLIENT_KEY, "rpm": 10**8, "tpm": 10**8}]
ROLES = ("gateway", "bare_proxy", "simulator", "loadgen", "redis")
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)

    def count_log_errors(self) -> int:
        """Error-level lines in the child's log (JSON logs or plain tracebacks)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(
            1 for line in text.splitlines() if '"level":"error"' in line or line.startswith("ERROR")
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class CpuPlan:
    """Which CPU each part runs on: the gateway (and the bare proxy, measured in turn with it)
    get one to itself whenever there are two."""

    def __init__(self) -> None:
        try:
            self.available = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux: no pinning
            self.available = []

    def cpus_for(self, role: str) -> set[int] | None:
        cpus = self.available
        if len(cpus) < 2:
            return None
        if role in ("gateway", "bare_proxy"):
            return {cpus[0]}
        others = cpus[1:]
        return {others[("simulator", "loadgen", "redis").index(role) % len(others)]}

    def describe(self) -> dict[str, Any]:
        return {role: sorted(self.cpus_for(role) or []) or "unpinned" for role in ROLES}


def spawn(
    name: str, cmd: Sequence[str], env: dict[str, str], cpus: set[int] | None, workdir: Path
) -> Child:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        list(cmd), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    return Child(name, process, log_path)


def http_json(url: str, headers: dict[str, str] | None = None, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def wait_ready(
    child: Child, url: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> Any:
    """The JSON answer of `url` once `child` serves it; RuntimeError with its log if never."""
    deadline = time.monotonic() + timeout
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited at start:\n{child.log_tail()}")
        try:
            return http_json(url, headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{child.name} not ready at {url}:\n{child.log_tail()}"
                ) from None
            time.sleep(0.1)


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split(" v=", 1)[1].split()[0] if " v=" in out else out.strip()


@dataclass
class Stack:
    """URLs and processes of a running stack; `gateway`/`bare_proxy` None when not started."""

    simulator: str
    redis: str
    children: dict[str, Child] = field(default_factory=dict)
    gateway: str | None = None
    bare_proxy: str | None = None
    config: dict[str, Any] | None = None
    gateway_rss_mib_after_start: float | None = None


@contextlib.contextmanager
def stack(
    plan: CpuPlan,
    workdir: Path,
    *,
    ttft_ms: float = 0.0,
    token_ms: float = 0.0,
    gateway: bool = True,
    bare_proxy: bool = True,
    use_redis: bool = True,
    log_level: str = "INFO",
) -> Iterator[Stack]:
    """Simulator, then (with `gateway`) redis-server, the gateway and (with `bare_proxy`) the bare
    proxy in front of the same simulator; every child is stopped on the way out."""
    started: list[Child] = []

    def start(name: str, cmd: Sequence[str], env: dict[str, str]) -> Child:
        child = spawn(name, cmd, env, plan.cpus_for(name), workdir)
        started.append(child)
        return child

    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
        sim_port = free_port()
        sim_cmd = [PYTHON, "-m", "app.simulator", "--port", str(sim_port)]
        sim_cmd += ["--ttft-ms", str(ttft_ms), "--token-ms", str(token_ms)]
        sim = start("simulator", sim_cmd, env)
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_ready(sim, sim_url + "/_simulator/stats")
        running = Stack(sim_url, "not started (no gateway)", {"simulator": sim})
        if not gateway:
            yield running
            return
        redis_binary = shutil.which("redis-server")
        redis_url = None
        if redis_binary and use_redis:
            redis_port = free_port()
            redis_cmd = [redis_binary, "--bind", "127.0.0.1", "--port", str(redis_port)]
            redis_cmd += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
            running.children["redis"] = start("redis", redis_cmd, env)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            running.redis = f"redis-server {redis_version(redis_binary)} at {redis_url}"
            time.sleep(0.3)
        else:
            reason = "not asked for" if not use_redis else "redis-server not found on PATH"
            running.redis = f"in-process cache and limiter ({reason})"
        gw_port = free_port()
        config = {
            # No load balancer to drain from: stop at once when the run ends.
            "server": {"host": "127.0.0.1", "port": gw_port, "shutdown_delay_s": 0},
            "upstream": {"url": sim_url},
            "redis": {"url": redis_url},
        }
        config_path = workdir / "gateway.yaml"
        config_path.write_text(json.dumps(config))
        gw_env = {
            **env,
            "LIFTOFF_CONFIG": str(config_path),
            "LIFTOFF_UPSTREAM_API_KEY": UPSTREAM_KEY,
            "LIFTOFF_CLIENT_KEYS": json.dumps(CLIENT_KEYS),
            "LIFTOFF_WORKERS": "1",
            "LIFTOFF_LOG_LEVEL": log_level,
        }
        gw = running.children["gateway"] = start("gateway", [PYTHON, "-m", "app"], gw_env)
        running.gateway = f"http://127.0.0.1:{gw_port}"
        wait_ready(gw, running.gateway + "/readyz")
        running.config = config
        running.gateway_rss_mib_after_start = round(gw.rss_mib(), 1)
        if bare_proxy:
            bare_port = free_port()
            bare_cmd = [PYTHON, "-m", "bench.bare_proxy", "--port", str(bare_port)]
            bare = start("bare_proxy", [*bare_cmd, "--upstream", sim_url], env)
            running.children["bare_proxy"] = bare
            running.bare_proxy = f"http://127.0.0.1:{bare_port}"
            wait_ready(bare, running.bare_proxy + "/readyz")
        yield running
    finally:
        for child in reversed(started):
            child.stop()
