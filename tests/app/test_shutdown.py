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
import orjson
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


# --- a load balancer that sees the drain late ----------------------------------------------------

_CHAT = b'{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
_CHAT_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Bearer liftoff-dev-key\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_CHAT), _CHAT)
)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    """One answer read whole (status, headers, body), or None when the connection closed or
    reset before it was complete."""
    raw = b""
    try:
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except ConnectionError:
        return None
    return int(lines[0].split()[1]), headers, body


class _Balancer:
    """Sends chat requests one after another over a pool of keep-alive connections, as a load
    balancer that has not seen the drain yet (no retry, like the reliability run's HAProxy): a
    connection whose answer said ``Connection: close`` leaves the pool, a refused connection or
    one closed before a complete answer is a lost request."""

    def __init__(self, port: int, pool_size: int = 4) -> None:
        self.port = port
        self.pool: list[socket.socket | None] = [None] * pool_size
        self.answered: list[tuple[float, dict[str, str]]] = []  # (when, headers)
        self.lost: list[tuple[float, str]] = []  # (when, what happened)

    def send(self, slot: int) -> None:
        sock = self.pool[slot]
        try:
            if sock is None:
                sock = self.pool[slot] = socket.create_connection(("127.0.0.1", self.port), 5)
            sock.sendall(_CHAT_REQUEST)
            answer = _answer(sock)
        except OSError as exc:
            answer, sock = None, None
            self.lost.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
        else:
            if answer is None:
                self.lost.append((time.monotonic(), "closed before a complete answer"))
        if answer is not None:
            status, headers, body = answer
            assert status == 200, body
            self.answered.append((time.monotonic(), headers))
        if answer is None or answer[1].get("connection") == "close":
            if sock is not None:
                sock.close()
            self.pool[slot] = None

    def run(self, seconds: float, gap_s: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        slot = 0
        while time.monotonic() < deadline:
            self.send(slot)
            slot = (slot + 1) % len(self.pool)
            time.sleep(gap_s)

    def close(self) -> None:
        for sock in self.pool:
            if sock is not None:
                sock.close()


def test_a_balancer_still_sending_after_the_delay_loses_nothing():
    """A loaded gateway answers the balancer's checks late, so the balancer keeps sending past
    server.shutdown_delay_s (1.5 s here): every request still gets a complete answer. During the
    drain each answer says Connection: close and ends its connection (no pooled connection is
    left for the gateway to close under a request just sent on it), and the listener stays open
    while requests arrive; once they stop, the gateway exits."""
    port = _free_port()
    process = _start(port, LIFTOFF__SERVER__ACCESS_LOG="false")  # the log is a pipe: keep it short
    balancer = _Balancer(port)
    try:
        balancer.run(1.0)  # the pool is warm: its connections are reused
        assert balancer.answered and all(
            h.get("connection") != "close" for _, h in balancer.answered
        )
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        balancer.run(2.5)
        stopped = time.monotonic()
        assert balancer.lost == [], balancer.lost
        during = [h for when, h in balancer.answered if when > signalled + 0.2]
        assert all(h.get("connection") == "close" for h in during)
        assert sum(when > signalled + 1.7 for when, _ in balancer.answered) >= 2  # past the delay
        balancer.close()
        process.wait(timeout=15)
        assert time.monotonic() - stopped < 5  # it closed once requests stopped arriving
    finally:
        balancer.close()
        if process.poll() is None:
            process.kill()
    assert "listener closed" in process.stdout.read()  # the late balancer is logged


def test_an_answer_under_way_when_the_drain_begins_closes_its_connection():
    """A request whose answer has not begun at SIGTERM is answered whole with Connection: close,
    then its connection closes: the balancer never holds it idle for the gateway to close."""
    port = _free_port()
    process = _start(port, LIFTOFF__SERVER__ACCESS_LOG="false")
    try:
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            slow = _CHAT_REQUEST.replace(b"\r\n\r\n", b"\r\nx-simulator-ttft-ms: 1000\r\n\r\n", 1)
            sock.sendall(slow)
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            answer = _answer(sock)
            assert answer is not None and answer[0] == 200, answer
            assert orjson.loads(answer[2])["object"] == "chat.completion"
            assert answer[1].get("connection") == "close"
            sock.settimeout(2)
            assert sock.recv(1) == b""  # closed after the answer
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()


def test_a_balancer_that_never_stops_sending_is_cut_off_within_half_the_graceful_time():
    """The wait for the traffic to stop is bounded: the listener closes at the latest half of
    server.graceful_shutdown_s (4 s here) after the delay (1.5 s), so SIGTERM to exit stays
    within delay + graceful and the answers under way keep the other half."""
    port = _free_port()
    process = _start(
        port, LIFTOFF__SERVER__ACCESS_LOG="false", LIFTOFF__SERVER__GRACEFUL_SHUTDOWN_S="4"
    )
    balancer = _Balancer(port)
    try:
        balancer.run(0.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        deadline = signalled + 10
        while not balancer.lost and time.monotonic() < deadline:
            balancer.run(0.05)
        assert balancer.lost, "still answering 10 s after SIGTERM"
        cut_off = balancer.lost[0][0] - signalled
        assert 1.5 + 2 - 0.5 < cut_off < 1.5 + 2 + 1.5, (cut_off, balancer.lost[0])
        process.wait(timeout=15)
    finally:
        balancer.close()
        if process.poll() is None:
            process.kill()
