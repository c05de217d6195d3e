"""`python -m app` with LIFTOFF_WORKERS=2: whichever worker serves /metrics reports the process
group's totals (prometheus_client's multiprocess mode over a private directory made per start and
removed at exit), tokens and cost carry the client key, promtool accepts the aggregated text, and a
worker that dies stops counting in the live gauges while its counts stay in the totals."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.app.gateway_harness import ALICE, BOB, app_processes, auth, client_keys_json
from tests.fixtures.promtool import run_promtool

KEYS = {"alice": ALICE, "bob": BOB}
REQUESTS = 60  # per round; rounds go on (at most 8) until both workers have served some
SCRAPES = 6


def _env(tmp: Path, workers: int) -> dict[str, str]:
    # TMPDIR: the gateway's private metrics directory is made under it, where the test can see it.
    return {
        "LIFTOFF_WORKERS": str(workers),
        "LIFTOFF_CLIENT_KEYS": client_keys_json(),
        "LIFTOFF__SERVER__ACCESS_LOG": "false",
        "TMPDIR": str(tmp),
    }


@contextlib.contextmanager
def _gateway(tmp: Path, workers: int) -> Iterator[str]:
    with app_processes(1, _env(tmp, workers)) as (url,):
        yield url.removesuffix("/v1")


def _group_dir(tmp: Path) -> Path:
    (found,) = tmp.glob("liftoff-metrics-*")
    return found


def _chat(base: str, key: str) -> dict[str, Any]:
    # A fresh connection per request (httpx.post), so the kernel hands them to either worker.
    response = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "Say hello"}]},
        headers=auth(KEYS[key]),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _values(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _per_worker(group: Path, name: str, **labels: str) -> dict[int, float]:
    """`name` summed from each worker's own counter/histogram files (pid in the file name)."""
    out: dict[int, float] = {}
    for path in group.glob("*_*.db"):
        pid = int(re.fullmatch(r"\w+?_(\d+)\.db", path.name).group(1))
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    out[pid] = out.get(pid, 0.0) + sample.value
    return out


def _scrape(base: str) -> str:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def test_two_workers_report_the_group_totals_by_key_and_pass_promtool(tmp_path: Path) -> None:
    sent = 0
    usage: dict[tuple[str, str], Counter[str]] = {}  # (key, model that served) -> tokens
    with _gateway(tmp_path, workers=2) as base, ThreadPoolExecutor(8) as pool:
        group = _group_dir(tmp_path)
        for _ in range(8):
            keys = [("alice", "bob")[i % 2] for i in range(REQUESTS)]
            for key, answer in zip(keys, pool.map(lambda k: _chat(base, k), keys), strict=True):
                counted = usage.setdefault((key, answer["model"]), Counter())
                counted.update(
                    {f: answer["usage"][f] for f in ("prompt_tokens", "completion_tokens")}
                )
            sent += REQUESTS
            served = _per_worker(group, "liftoff_requests_total", route="chat")
            if len([n for n in served.values() if n]) == 2:
                break
        assert len([n for n in served.values() if n]) == 2, f"one worker served all: {served}"
        assert sum(served.values()) == sent

        for _ in range(SCRAPES):  # fresh connections: different workers serve the scrapes
            text = _scrape(base)
            assert _values(text, "liftoff_requests_total", route="chat", status="200") == sent
            for histogram in ("liftoff_request_duration_seconds", "liftoff_overhead_seconds"):
                assert _values(text, f"{histogram}_count", route="chat") == sent
                assert _values(text, f"{histogram}_bucket", route="chat", le="+Inf") == sent
            assert {key for key, _ in usage} == set(KEYS)
            for (key, model), totals in usage.items():
                for kind in ("prompt", "completion"):
                    counted = _values(text, "liftoff_tokens_total", key=key, model=model, kind=kind)
                    assert counted == totals[f"{kind}_tokens"] > 0, (key, model, kind)
                assert _values(text, "liftoff_cost_usd_total", key=key, model=model) > 0
            # The label set is (key, model): no series without the key.
            for family in text_string_to_metric_families(text):
                if family.name in ("liftoff_tokens", "liftoff_cost_usd"):
                    assert all(s.labels.get("key") in KEYS for s in family.samples), family.name

        result = run_promtool("check", "metrics", stdin=text)
        assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"
        assert not (result.stdout + result.stderr).strip()
    assert not group.exists(), "the metrics directory outlived the gateway"


def test_one_worker_uses_no_multiprocess_directory(tmp_path: Path) -> None:
    with _gateway(tmp_path, workers=1) as base:
        _chat(base, "alice")
        text = _scrape(base)
        assert _values(text, "liftoff_requests_total", route="chat") == 1
        # The single-process registry: its counters carry _created samples, multiprocess ones don't.
        assert "liftoff_requests_created{" in text
        assert not list(tmp_path.glob("liftoff-metrics-*"))


def _bought(text: str) -> float:
    return sum(
        _values(text, "liftoff_tokens_total", key="alice", kind=kind)
        for kind in ("prompt", "completion")
    )


def _in_flight_worker(group: Path) -> int | None:
    for pid, value in _per_worker_gauges(group).items():
        if value == 1:
            return pid
    return None


def _per_worker_gauges(group: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for path in group.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "liftoff_upstream_in_flight":
                    out[pid] = out.get(pid, 0.0) + sample.value
    return out


def test_a_killed_worker_leaves_the_live_gauges_and_keeps_its_counts(tmp_path: Path) -> None:
    with _gateway(tmp_path, workers=2) as base:
        group = _group_dir(tmp_path)
        answers = [_chat(base, "alice")["usage"] for _ in range(4)]
        bought = sum(a["prompt_tokens"] + a["completion_tokens"] for a in answers)

        def slow_stream() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream(
                    "POST",
                    f"{base}/v1/chat/completions",
                    json={
                        "model": "fast",
                        "messages": [{"role": "user", "content": "a long story"}],
                        "stream": True,
                        "max_tokens": 200,
                    },
                    headers={**auth(ALICE), "x-simulator-token-ms": "100"},
                    timeout=60,
                ) as response,
            ):
                for _ in response.iter_bytes():
                    pass

        streamer = threading.Thread(target=slow_stream, daemon=True)
        streamer.start()
        deadline = time.monotonic() + 20
        while (pid := _in_flight_worker(group)) is None:
            assert time.monotonic() < deadline, "the stream never showed as in flight"
            time.sleep(0.05)
        assert _values(_scrape(base), "liftoff_upstream_in_flight") == 1
        assert _bought(_scrape(base)) == bought > 0

        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:  # until uvicorn has reaped it and a scrape has swept its live gauges
            with contextlib.suppress(httpx.TransportError):
                text = _scrape(base)
                if _values(text, "liftoff_upstream_in_flight") == 0:
                    break
            assert time.monotonic() < deadline, "the dead worker's in-flight call still counts"
            time.sleep(0.2)
        assert not list(group.glob(f"gauge_live*_{pid}.db"))
        assert list(group.glob(f"counter_{pid}.db"))
        # Its tokens (if it served some of the four) stay in the totals.
        assert _bought(text) == bought
        streamer.join(timeout=30)
