"""The bare proxy passes chat requests through unchanged, streams included, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.simulator import SimulatorServer
from bench.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture
def bare_proxy(make_simulator) -> Iterator[tuple[str, SimulatorServer]]:
    server: SimulatorServer = make_simulator(ttft_ms=0, token_ms=1)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", server.url],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "bare proxy exited at start"
            time.sleep(0.05)
        yield url, server
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_chat_answer_and_authorization_pass_through(bare_proxy):
    url, server = bare_proxy
    server.app.reset()
    answer = httpx.post(
        url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-x"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert server.app.stats.by_status[200] == 1
    assert server.app.recent_requests()[-1]["body"] == CHAT


def test_stream_is_relayed_event_by_event(bare_proxy):
    url, _ = bare_proxy
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": "Bearer sk-x"},
    ) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert len(events) > 2 and events[-1] == "data: [DONE]"


def test_upstream_errors_keep_their_status_and_other_routes_are_unknown(bare_proxy):
    url, _ = bare_proxy
    bad = httpx.post(
        url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sk-x"}
    )
    assert bad.status_code == 400
    assert httpx.post(url + "/v1/completions", json={}).status_code == 404
    assert httpx.get(url + "/metrics").status_code == 404
