"""`python -m app` as a real process: embedded defaults banner, JSON logs, and SIGTERM drain
(readiness 503 at once, the in-flight stream completes, then the process exits)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.app.gateway_harness import PROVIDER_KEY

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(port: int, **extra: str | None) -> subprocess.Popen[str]:
    """`python -m app` on `port`; an `extra` variable set to None is left out (its default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")} | {
        "LIFTOFF__SERVER__PORT": str(port),
        "LIFTOFF__SERVER__SHUTDOWN_DELAY_S": "1.5",
        "LIFTOFF__SERVER__GRACEFUL_SHUTDOWN_S": "20",
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        **extra,
    }
    env = {k: v for k, v in env.items() if v is not None}
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("gateway did not become ready")


def test_sigterm_drains_in_flight_stream_and_readiness_fails_at_once():
    port = _free_port()
    process = _start(port)
    base = f"http://127.0.0.1:{port}"
    received: list[str] = []
    first_chunk = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json={
                "model": "fast",
                "messages": [{"role": "user", "content": "a long story"}],
                "stream": True,
                "max_tokens": 60,
            },
            headers={
                "authorization": "Bearer liftoff-dev-key",
                "x-simulator-token-ms": "40",
            },
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if line:
                    received.append(line)
                    first_chunk.set()

    try:
        worker = threading.Thread(target=stream)
        worker.start()
        assert first_chunk.wait(10), "stream did not start"
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{base}/readyz", timeout=2)
        health = httpx.get(f"{base}/healthz", timeout=2)
        assert ready.status_code == 503 and ready.json()["draining"] is True
        assert health.status_code == 200
        worker.join(timeout=30)
        assert received[-1] == "data: [DONE]"  # the in-flight stream finished whole
        assert len(received) > 10
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "EMBEDDED DEFAULTS" in output and "liftoff-dev-key" in output
    assert '"logger":"liftoff.access"' in output
    assert PROVIDER_KEY not in output
    # After the drain the port is closed.
    try:
        httpx.get(f"{base}/healthz", timeout=1)
        raise AssertionError("server still answering after shutdown")
    except httpx.TransportError:
        pass


def test_default_delay_keeps_answering_new_connections_after_sigterm():
    """With the default server.shutdown_delay_s, a load balancer that learns of the drain only
    from /readyz (and does not retry) loses nothing: after SIGTERM new connections are still
    accepted and answered while /readyz says 503; a second SIGTERM drains at once."""
    port = _free_port()
    process = _start(port, LIFTOFF__SERVER__SHUTDOWN_DELAY_S=None)
    base = f"http://127.0.0.1:{port}"
    try:
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert httpx.get(f"{base}/readyz", timeout=2).status_code == 503
        answered = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # each call opens a new connection
            response = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer liftoff-dev-key"},
                timeout=5,
            )
            assert response.status_code == 200, response.text
            answered += 1
            time.sleep(0.2)
        assert answered >= 5 and process.poll() is None
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()


def test_sigint_skips_the_shutdown_delay():
    """Ctrl-C at a terminal has no load balancer to wait for: SIGINT drains at once."""
    port = _free_port()
    process = _start(port, LIFTOFF__SERVER__SHUTDOWN_DELAY_S=None)
    try:
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
        assert time.monotonic() - started < 10  # not the 35 s default delay
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("not json", "not valid JSON"),
        ('[{"name": "web"}]', "client keys"),
    ],
)
def test_malformed_client_keys_exit_2_with_the_message_and_no_traceback(keys, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
    env["LIFTOFF_CLIENT_KEYS"] = keys
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_exits_with_a_clear_message():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
    env["LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "upstream.retry.max_attempts" in result.stderr
    assert "LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS" in result.stderr
