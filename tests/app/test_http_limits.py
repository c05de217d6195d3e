"""The HTTP server refuses abusive connections (app/http_protocol.py), over raw sockets to a real
`python -m app`: 431 for too many or too large headers (and memory stays flat under a 64 MB header
flood), 408 for slow headers and stalled bodies, silent connections closed, a connection bound
answered with 503 + Retry-After, JSON 400 for malformed request lines, and an SDK client unaffected.
Every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import openai
import orjson
import pytest

from app.config import ConfigError, load_config
from tests.app.gateway_harness import PROVIDER_KEY, app_processes

TIMEOUT_S = 1.0  # header, body and idle timeouts of the gateway under test
MAX_HEADERS = 100
MAX_HEADER_BYTES = 65_536
DEV_KEY = "liftoff-dev-key"


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """One gateway with short read timeouts and the default header limits; yields its /v1 URL."""
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF__SERVER__HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "LIFTOFF__SERVER__BODY_TIMEOUT_S": str(TIMEOUT_S),
        "LIFTOFF__SERVER__IDLE_TIMEOUT_S": str(TIMEOUT_S),
    }
    with app_processes(1, env) as urls:
        yield urls[0]


def _address(url: str) -> tuple[str, int]:
    parts = urlparse(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


@contextlib.contextmanager
def _connection(url: str) -> Iterator[socket.socket]:
    sock = socket.create_connection(_address(url), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def _read_until_closed(sock: socket.socket, limit_s: float = 10) -> bytes:
    """Everything the server sends until it closes, at most `limit_s` seconds."""
    out = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"connection still open after {limit_s} s: {out[:300]!r}")


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _assert_refusal(raw: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = _parse(raw)
    assert got == status, raw[:500]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] is None and error["message"]
    return headers


def _exchange(url: str, request: bytes) -> bytes:
    """Send `request`, half-close, return everything the server sends until it closes."""
    with _connection(url) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return _read_until_closed(sock)


def _get(path: str, extra_headers: bytes = b"") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        + extra_headers
        + b"\r\n"
    )


def _memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of `pid`, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _gateway_pid(url: str) -> int:
    """The pid of this test's child `python -m app` serving `url` (found by its port in its
    environment)."""
    wanted = f"LIFTOFF__SERVER__PORT={_address(url)[1]}".encode()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and wanted in (stat.parent / "environ").read_bytes().split(
                b"\0"
            ):
                return int(stat.parent.name)
    raise AssertionError(f"no child process serves {url}")


# --- settings ------------------------------------------------------------------------------------


def test_the_limits_default_far_above_real_clients_and_refuse_values_out_of_range():
    server = load_config(env={}).server
    assert (server.max_header_bytes, server.max_headers) == (65_536, 100)
    assert (server.header_timeout_s, server.body_timeout_s, server.idle_timeout_s) == (30, 60, 60)
    assert (server.max_connections, server.keepalive_timeout_s) == (4096, 130)
    for key, value in [
        ("MAX_HEADER_BYTES", "1024"),
        ("MAX_HEADERS", "5"),
        ("HEADER_TIMEOUT_S", "0"),
        ("BODY_TIMEOUT_S", "-1"),
        ("IDLE_TIMEOUT_S", "0"),
        ("MAX_CONNECTIONS", "1"),
        ("SHUTDOWN_DELAY_S", "601"),
    ]:
        with pytest.raises(ConfigError, match=f"server.{key.lower()}"):
            load_config(env={f"LIFTOFF__SERVER__{key}": value})


# --- header limits -------------------------------------------------------------------------------


def test_headers_up_to_the_count_are_served_one_more_gets_431(gateway):
    # Host and Connection count too.
    at_limit = b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS - 2))
    assert _parse(_exchange(gateway, _get("/healthz", at_limit)))[0] == 200
    over = at_limit + b"x-one-more: v\r\n"
    _assert_refusal(
        _exchange(gateway, _get("/healthz", over)), 431, "request_header_fields_too_large"
    )
    # 2,000 small headers (well under the byte limit) are refused the same way.
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(2000))
    _assert_refusal(
        _exchange(gateway, _get("/healthz", many)), 431, "request_header_fields_too_large"
    )


def test_head_up_to_the_byte_limit_is_served_one_byte_more_gets_431(gateway):
    def padded(total: int) -> bytes:
        base = _get("/healthz", b"x-pad: \r\n")
        return _get("/healthz", b"x-pad: " + b"a" * (total - len(base)) + b"\r\n")

    assert len(padded(MAX_HEADER_BYTES)) == MAX_HEADER_BYTES
    assert _parse(_exchange(gateway, padded(MAX_HEADER_BYTES)))[0] == 200
    raw = _exchange(gateway, padded(MAX_HEADER_BYTES + 1))
    headers = _assert_refusal(raw, 431, "request_header_fields_too_large")
    assert "65536 bytes" in orjson.loads(_parse(raw)[2])["error"]["message"]
    assert "x-ratelimit-limit-requests" not in headers  # refused before the app


def _flood_headers(url: str, total_bytes: int, chunk_bytes: int = 1 << 20) -> bytes:
    """Send one header line of up to `total_bytes`, stopping as soon as the server answers;
    returns the answer."""
    with _connection(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-flood: ")
        chunk = b"a" * chunk_bytes
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(total_bytes // chunk_bytes):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered: the rest would be discarded
                sock.sendall(chunk)
        return _read_until_closed(sock)


def test_a_64_mb_header_flood_gets_431_and_memory_stays_flat(gateway):
    pid = _gateway_pid(gateway)
    assert _parse(_exchange(gateway, _get("/healthz")))[0] == 200  # warm
    before = _memory_kb(pid)
    _assert_refusal(_flood_headers(gateway, 64 << 20), 431, "request_header_fields_too_large")
    for _ in range(20):  # the 20 x 8 MB
        _assert_refusal(_flood_headers(gateway, 8 << 20), 431, "request_header_fields_too_large")
    after = _memory_kb(pid)
    # Without the limit: peak +131 MB, +24 MB kept. Now at most what 64 KiB heads cost.
    assert after["VmHWM"] - before["VmHWM"] < 4096, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 4096, (before, after)
    assert _parse(_exchange(gateway, _get("/healthz")))[0] == 200


# --- read deadlines ------------------------------------------------------------------------------


def _trickle(sock: socket.socket, piece: bytes, every_s: float = 0.2, count: int = 50) -> float:
    """Send `piece` every `every_s` s (at most `count` times) until the server answers; returns
    the seconds until then."""
    start = time.monotonic()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for _ in range(count):
            if select.select([sock], [], [], every_s)[0]:
                break
            sock.sendall(piece)
    return time.monotonic() - start


def test_slow_loris_headers_get_408(gateway):
    with _connection(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow: ")
        waited = _trickle(sock, b"a")  # a byte every 0.2 s, never ending the head
        raw = _read_until_closed(sock)
    _assert_refusal(raw, 408, "request_timeout")
    assert "headers" in orjson.loads(_parse(raw)[2])["error"]["message"]
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 2


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (b"Content-Length: 1000\r\n\r\n" + b'{"model": "fast", ', b""),  # stalls
        (b"Content-Length: 100000\r\n\r\n" + b'{"model": "fast", ', b" "),  # a byte every 0.2 s
        (b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n"),  # a chunk every 0.2 s
    ],
    ids=["stalled", "trickled", "chunked-never-ending"],
)
def test_a_body_not_received_in_time_gets_408(gateway, head, piece):
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + DEV_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\n" + head
    )
    with _connection(gateway) as sock:
        sock.sendall(request)
        waited = _trickle(sock, piece)
        raw = _read_until_closed(sock)
    _assert_refusal(raw, 408, "request_timeout")
    assert "body" in orjson.loads(_parse(raw)[2])["error"]["message"]
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 2
    assert _parse(_exchange(gateway, _get("/healthz")))[0] == 200  # still healthy


@pytest.mark.parametrize("piece", [b"", b"\r\n"], ids=["silent", "crlf-every-0.2s"])
def test_a_connection_that_sends_no_request_is_closed(gateway, piece):
    with _connection(gateway) as sock:
        start = time.monotonic()
        _trickle(sock, piece)
        assert _read_until_closed(sock) == b""  # nothing was asked, nothing is answered
        assert time.monotonic() - start < TIMEOUT_S + 2


# --- malformed requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
        b"GET /healthz\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["garbage", "method", "version", "header-line", "control-char"],
)
def test_a_malformed_request_gets_a_json_400(gateway, request_bytes):
    _assert_refusal(_exchange(gateway, request_bytes), 400, "invalid_http_request")


def test_an_upgrade_request_is_answered_as_plain_http_then_closed(gateway):
    upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    keep_alive = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + upgrade + b"\r\n"
    status, headers, body = _parse(_exchange(gateway, keep_alive))
    assert status == 200 and orjson.loads(body) == {"status": "ok"}
    assert headers["connection"] == "close"  # the parser takes no more bytes after an upgrade


# --- connection bound ----------------------------------------------------------------------------


def test_connections_beyond_the_bound_get_503_with_retry_after():
    bound = 16
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF__SERVER__MAX_CONNECTIONS": str(bound),
    }
    keep_alive = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with app_processes(1, env) as urls, contextlib.ExitStack() as open_connections:
        url = urls[0]
        for _ in range(bound):
            sock = open_connections.enter_context(_connection(url))
            sock.sendall(keep_alive)  # answered, so the server holds this connection
            assert _parse(sock.recv(65536))[0] == 200
        started = time.monotonic()
        headers = _assert_refusal(_exchange(url, _get("/healthz")), 503, "too_many_connections")
        assert headers["retry-after"] == "1"
        assert time.monotonic() - started < 2  # refused at once, not queued
        open_connections.close()
        deadline = time.monotonic() + 10
        while _parse(_exchange(url, _get("/healthz")))[0] != 200:  # slots free again
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_the_open_file_limit_is_raised_for_the_connection_bound():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.fail(f"this test needs a hard open-file limit >= 8192, the machine has {hard}")
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY}
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by the gateway
    try:
        with app_processes(1, env) as urls:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            limits = Path(f"/proc/{_gateway_pid(urls[0])}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    # max_connections 4096 + the provider (256) and Redis (128) pools + 64.
    assert int(line.split()[3]) >= 4096 + 256 + 128 + 64, line


# --- normal traffic ------------------------------------------------------------------------------


def test_sdk_traffic_is_unaffected(gateway):
    client = openai.OpenAI(base_url=gateway, api_key=DEV_KEY, max_retries=0, timeout=20)
    try:
        for _ in range(3):  # over one keep-alive connection
            completion = client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "Say hello"}], max_tokens=20
            )
            assert completion.choices[0].message.content
        chunks = list(
            client.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "a short story"}],
                max_tokens=20,
                stream=True,
            )
        )
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
    finally:
        client.close()


def _read_response(sock: socket.socket, limit_s: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One response (with a Content-Length) off a connection that stays open; ('', ...) on EOF."""
    raw = b""
    deadline = time.monotonic() + limit_s
    while True:
        _, sep, rest = raw.partition(b"\r\n\r\n")
        if sep:
            status, headers, _ = _parse(raw)
            if len(rest) >= int(headers.get("content-length", "0")):
                return status, headers, rest
        assert time.monotonic() < deadline, f"no complete response in {limit_s} s: {raw[:300]!r}"
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, raw  # the server closed the connection
        raw += chunk


def test_an_answer_before_a_short_body_keeps_the_connection(gateway):
    """A 401 answered from the head alone, before the body arrived (an SDK writes head and body
    apart): the rest of a short body is read and dropped, and the connection serves the next
    request. Half-closing it instead raced the client, which reused it: 'Server disconnected'."""
    body = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer wrong-key-0123456789abcdef\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with _connection(gateway) as sock:
        sock.sendall(head)
        status, headers, answer = _read_response(sock)
        assert status == 401 and orjson.loads(answer)["error"]["code"] == "invalid_api_key"
        assert headers.get("connection") != "close"
        sock.sendall(body)  # the rest of the refused request, then the next one
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, answer = _read_response(sock)
        assert status == 200, answer[:300]
        assert orjson.loads(answer) == {"status": "ok"}
