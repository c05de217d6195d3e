"""The benchmark's own parts: the load generator measures what it claims, the harness reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.simulator import SimulatorServer
from bench import loadgen
from bench.__main__ import median_figures, verdicts

ROOT = Path(__file__).resolve().parents[2]


def chat_spec(target: str, **extra: object) -> dict:
    return {
        "target": target,
        "request": {
            "path": "/v1/chat/completions",
            "headers": {"Authorization": "Bearer sk-test"},
            "body": {"model": "m", "messages": [{"role": "user", "content": "q __N__"}]},
        },
        "capture_header": "x-ratelimit-remaining-requests",
        **extra,
    }


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile(values, 100) == 100
    assert loadgen.percentile([7.0], 99) == 7


def test_template_renders_unique_bodies_with_right_length():
    template = loadgen.RequestTemplate.from_spec(
        "http://127.0.0.1:9", chat_spec("http://127.0.0.1:9")["request"]
    )
    first, second = template.render(1), template.render(2)
    assert first != second
    for raw in (first, second):
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        assert loadgen.RUN_NONCE in body and b"__N__" not in body
        json.loads(body)


async def test_closed_loop_counts_every_answer_and_never_repeats_a_prompt(make_simulator):
    server: SimulatorServer = make_simulator(ttft_ms=0, token_ms=0)
    result = await loadgen.run(chat_spec(server.url, mode="closed", connections=4, duration_s=0.3))
    stats = server.app.stats
    assert result["ok"] == result["requests"] == stats.by_status[200] > 0
    assert result["statuses"] == {"200": result["ok"]}
    assert result["header_values"] == {"9999": result["ok"]}
    contents = [r["body"]["messages"][0]["content"] for r in server.app.recent_requests()]
    assert len(set(contents)) == len(contents)
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]


async def test_open_loop_offers_the_scheduled_rate(make_simulator):
    server: SimulatorServer = make_simulator(ttft_ms=0, token_ms=0)
    result = await loadgen.run(
        chat_spec(server.url, mode="open", rate=200, connections=8, duration_s=0.5)
    )
    assert result["requests"] == 100 == server.app.stats.by_status[200]
    assert 100 <= result["rps"] <= 210  # the last answers may land after the schedule ends


async def test_open_loop_latency_includes_a_slow_target(make_simulator):
    # 50 ms per answer at 40/s with only 1 connection: requests queue, and the schedule shows it.
    server: SimulatorServer = make_simulator(ttft_ms=50, token_ms=0)
    result = await loadgen.run(
        chat_spec(server.url, mode="open", rate=40, connections=1, duration_s=0.5)
    )
    assert result["latency_ms"]["p50"] >= 50
    assert result["latency_from_schedule_ms"]["p99"] > result["latency_ms"]["p99"]


def test_median_figures_and_verdicts():
    runs = [
        {"cache_miss_rps": 100.0, "x": "a"},
        {"cache_miss_rps": 4000.0, "x": "b"},
        {"cache_miss_rps": 3500.0, "x": "c"},
    ]
    figures = median_figures(runs)
    assert figures == {"cache_miss_rps": 3500.0, "x": "c"}
    by_name = {v["name"]: v for v in verdicts(figures)}
    assert by_name["cache_miss_rps"]["pass"] is True
    assert by_name["cache_hit_p50_ms"]["pass"] is None  # not measured is not a pass


def test_harness_runs_against_the_simulator_alone(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--simulator-only",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    assert set(results["phases"]) == {
        "direct_open_chat",
        "direct_closed_chat",
        "direct_open_stream",
    }
    assert results["phases"]["direct_open_chat"]["ok"] > 0
    assert results["machine"]["cpus"] >= 1 and results["settings"]["open_loop_rps"] == 500
    assert all(t["pass"] is None for t in results["targets"])


@pytest.mark.parametrize("bad", [["--duration", "0"], ["--connections", "0"], ["--repeat", "0"]])
def test_harness_rejects_bad_options(bad):
    run = subprocess.run(
        [sys.executable, "-m", "bench", *bad], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2 and bad[0] in run.stderr
