"""Clients that misbehave at the HTTP level: a trailing-slash URL, leaving mid-upload."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import orjson

from app.server import create_app
from tests.app.gateway_harness import (
    ALICE,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)
from tests.app.test_server_access_log import json_logging

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Say hello"}]}


async def test_trailing_slash_is_an_openai_404_and_never_reflects_host(simulator):
    async with running(make_config(simulator.url)) as gw:
        slashed = await gw.client.post(
            "/v1/chat/completions/", json=CHAT, headers={**auth(), "host": "evil.example"}
        )
        completions = await gw.client.post(
            "/v1/completions/", json=CHAT, headers={**auth(), "host": "evil.example"}
        )
        health = await gw.client.get("/healthz/", headers={"host": "evil.example"})
        exact = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth())
    for response in (slashed, completions, health):
        assert response.status_code == 404
        assert "location" not in response.headers
        assert "evil.example" not in response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == "unknown_url"
    assert exact.status_code == 200  # the route itself is unchanged


def _leave_mid_upload(url: str) -> None:
    """Headers announcing 100000 bytes, a part of the body, then close the socket."""
    parts = urlsplit(url)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {parts.hostname}:{parts.port}\r\n"
        f"Authorization: Bearer {ALICE}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"model": "fast", "messages": [')
        time.sleep(0.2)  # the gateway is now reading the body


def test_client_leaving_mid_upload_is_a_quiet_499():
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    app = create_app(make_config("http://127.0.0.1:9"), env)
    gateway = app.state.gateway
    with served(app) as url, json_logging() as stream:
        _leave_mid_upload(url)
        deadline = time.monotonic() + 10
        while "liftoff_requests_total{" not in gateway.metrics.render().decode():
            assert time.monotonic() < deadline, "the request was never recorded"
            time.sleep(0.02)
        time.sleep(0.1)  # the access line is written at the end of the server loop's turn
        metrics = gateway.metrics.render().decode()
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line.get("logger") == "liftoff.access"]
    assert [(line["route"], line["status"]) for line in access] == [("chat", 499)]
    assert 'status="499"' in metrics and 'status="500"' not in metrics
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines
    assert not [line for line in lines if "exc" in line or "Traceback" in str(line)], lines
