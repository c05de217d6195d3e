"""Helpers for the gateway tests: build a config from overrides, run the app in-process."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from app.config import DEFAULTS_PATH, GatewayConfig
from app.gateway import Gateway
from app.server import create_app
from tests.fixtures.redis import SLOW_MACHINE_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parents[2]

PROVIDER_KEY = "sk-provider-secret-0123456789abcdef"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
SIM_HEADERS = (
    "x-simulator-fault",
    "x-simulator-fail-times",
    "x-simulator-request-key",
    "x-simulator-retry-after-ms",
    "x-simulator-ttft-ms",
    "x-simulator-token-ms",
)


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(
    upstream_url: str | None, redis_url: str | None = None, **sections: Any
) -> GatewayConfig:
    tree = yaml.safe_load(DEFAULTS_PATH.read_text())
    base = {
        "upstream": {
            "url": upstream_url,
            "forward_headers": list(SIM_HEADERS),
            "retry": {"base_s": 0.01, "cap_s": 2},
        },
        # Functional tests must not degrade by accident on a loaded machine.
        "redis": {"url": redis_url, "socket_timeout_s": SLOW_MACHINE_TIMEOUT_S},
        "batching": {"enabled": False},
    }
    tree = merge(merge(tree, base), sections)
    return GatewayConfig.model_validate(tree)


def client_keys_json(**extra: dict[str, Any]) -> str:
    import orjson

    keys = {
        "alice": {"name": "alice", "key": ALICE},
        "bob": {"name": "bob", "key": BOB},
        "admin": {"name": "admin", "key": ADMIN, "admin": True},
    }
    for name, fields in extra.items():
        keys[name] = {**keys.get(name, {"name": name}), **fields}
    return orjson.dumps(list(keys.values())).decode()


def auth(key: str = ALICE) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Running:
    gateway: Gateway
    client: httpx.AsyncClient

    async def chat(
        self, key: str = ALICE, headers: Mapping[str, str] | None = None, **body: Any
    ) -> httpx.Response:
        payload = {"model": "fast", "messages": [{"role": "user", "content": "Say hello"}], **body}
        return await self.client.post(
            "/v1/chat/completions", json=payload, headers={**auth(key), **(headers or {})}
        )


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """`app` served by a real uvicorn on a loopback port in a thread; yields its /v1 URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", lifespan="on", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.asynccontextmanager
async def running(
    config: GatewayConfig, env: Mapping[str, str] | None = None
) -> AsyncIterator[Running]:
    environment = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF_CLIENT_KEYS": client_keys_json(),
    }
    environment.update(env or {})
    app = create_app(config, {k: v for k, v in environment.items() if v is not None})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=30
        ) as client:
            yield Running(app.state.gateway, client)


@contextlib.contextmanager
def app_processes(count: int, env: Mapping[str, str]) -> Iterator[list[str]]:
    """`count` `python -m app` processes, each on its own free port with `env` over this
    environment minus its LIFTOFF_* variables; yields their /v1 URLs once all are ready. A process
    that exits, or is not ready within 30 s, fails the test with its log. No load balancer
    watches them, so they drain at SIGTERM unless `env` sets server.shutdown_delay_s."""
    base = (
        {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
        | {"LIFTOFF__SERVER__SHUTDOWN_DELAY_S": "0"}
        | dict(env)
    )
    ports = [free_port() for _ in range(count)]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"gateway-{i}.log" for i in range(count)]
        try:
            for port, log in zip(ports, logs, strict=True):
                with log.open("w") as out:
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "app"],
                            cwd=ROOT,
                            env=base | {"LIFTOFF__SERVER__PORT": str(port)},
                            stdout=out,
                            stderr=out,
                        )
                    )
            deadline = time.monotonic() + 30
            for port, process, log in zip(ports, processes, logs, strict=True):
                while True:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, (
                        f"gateway did not become ready:\n{log.read_text()}"
                    )
                    with contextlib.suppress(httpx.TransportError):
                        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                        if ready.status_code == 200:
                            break
                    time.sleep(0.1)
            yield [f"http://127.0.0.1:{port}/v1" for port in ports]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
