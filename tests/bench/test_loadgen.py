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
        {"miss_rps_over_bare_proxy": 0.2, "x": "a"},
        {"miss_rps_over_bare_proxy": 0.7, "x": "b"},
        {"miss_rps_over_bare_proxy": 0.6, "x": "c"},
    ]
    figures = median_figures(runs)
    assert figures == {"miss_rps_over_bare_proxy": 0.6, "x": "c"}
    by_name = {v["name"]: v for v in verdicts(figures)}
    assert by_name["miss_rps_over_bare_proxy"]["pass"] is True
    assert by_name["cache_hit_p50_ms"]["pass"] is None  # not measured is not a pass
    slow = {v["name"]: v for v in verdicts({"miss_rps_over_bare_proxy": 0.49})}
    assert slow["miss_rps_over_bare_proxy"]["pass"] is False


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


def test_harness_measures_gateway_and_bare_proxy_in_turn_and_reports_ratios(tmp_path):
    out = tmp_path / "results.json"
    options = ["--duration", "0.3", "--warmup", "0", "--repeat", "2", "--rate", "100"]
    options += ["--stream-rate", "20", "--connections", "8", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "bench", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert len(runs) == 2 and results["settings"]["repeat"] == 2
    phases = list(runs[0]["phases"])
    # each kind of load: direct, then the gateway, then the bare proxy
    for gateway, bare in (
        ("gateway_closed_cache_miss", "bare_proxy_closed_chat"),
        ("gateway_open_cache_miss", "bare_proxy_open_chat"),
        ("gateway_open_stream", "bare_proxy_open_stream"),
    ):
        assert phases.index(bare) == phases.index(gateway) + 1
    figures = results["figures"]
    for name in (
        "miss_rps_over_bare_proxy",
        "cpu_per_request_over_bare_proxy",
        "miss_rps_over_direct",
        "cpu_per_request_over_direct",
    ):
        per_run = [r["figures"][name] for r in runs]
        assert all(v > 0 for v in per_run)
        assert figures[name] == round((per_run[0] + per_run[1]) / 2, 3)  # median of two
    first = runs[0]
    assert first["figures"]["miss_rps_over_bare_proxy"] == round(
        first["phases"]["gateway_closed_cache_miss"]["rps"]
        / first["phases"]["bare_proxy_closed_chat"]["rps"],
        3,
    )
    # what infra.capacity reads
    assert figures["cache_miss_gateway_cpu_us_per_request"] > 0
    for phase in ("gateway_open_cache_miss", "gateway_open_cache_hit", "gateway_open_stream"):
        assert results["phases"][phase]["cpu_us_per_request"]["gateway"] > 0
    assert results["phases"]["gateway_open_stream"]["header_values"] == {
        "bypass": results["phases"]["gateway_open_stream"]["ok"]
    }
    assert 0 < figures["gateway_rss_mib_after_start"] < 150
    assert {t["name"] for t in results["targets"]} >= {
        "miss_rps_over_bare_proxy",
        "added_latency_p50_ms",
        "added_latency_p99_ms",
        "stream_ttft_overhead_ms",
    }
