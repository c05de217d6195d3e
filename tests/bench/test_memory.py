"""The gateway's resident memory: under 150 MiB once ready with the embedded defaults (issue 11),
and the soak's verdict on growth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.accounting import ENCODINGS, token_ids
from bench.soak import rss_growth
from bench.stack import free_port, rss_mib

ROOT = Path(__file__).resolve().parents[2]
LIMIT_MIB = 150
DEV_KEY = {"Authorization": "Bearer liftoff-dev-key"}


def test_gateway_rss_after_start_is_under_150_mib():
    # `python -m app` as a user first runs it: defaults.yaml, the built-in simulator, in-process
    # cache and limiter, the development key; only the port is chosen here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
    port = free_port()
    env["LIFTOFF__SERVER__PORT"] = str(port)
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the gateway exited at start"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.1)
        after_start = rss_mib(process.pid)
        assert after_start < LIMIT_MIB, f"RSS after start {after_start:.1f} MiB"
        # Both encodings of the default catalog in use: nothing was merely put off to later.
        chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 8}
        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", legacy)):
            answer = httpx.post(url + path, json=body, headers=DEV_KEY, timeout=10)
            assert answer.status_code == 200, answer.text
        after_requests = rss_mib(process.pid)
        assert after_requests < LIMIT_MIB, f"RSS after a request per encoding {after_requests:.1f}"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as that user would: no shutdown delay
        process.wait(timeout=30)


RESIDENT_TOKENIZER_DATA = """
import os, sys
from pathlib import Path
from app.accounting import ENCODINGS, TokenCounter, _bindings
counter = TokenCounter()  # builds every encoding
assert all(counter.count_text("tiktoken is great!", e) == 6 for e in ENCODINGS)
path, kib, current = os.path.realpath(_bindings().__file__), 0, False
for line in Path("/proc/self/smaps").read_text().splitlines():
    fields = line.split()
    if "-" in fields[0] and len(fields) >= 5:
        current = fields[1] == "r--p" and fields[-1] == path
    elif current and fields[0] == "Rss:":
        kib += int(fields[1])
print(kib)
"""


def test_tokenizers_leave_no_build_data_resident_and_still_count():
    # A fresh interpreter: what one gateway process keeps of the compiled module's read-only
    # data once both tokenizers are built (it carries 72 MB; building reads ~45 MiB of it).
    run = subprocess.run(
        [sys.executable, "-c", RESIDENT_TOKENIZER_DATA],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    resident_kib = int(run.stdout.strip())
    assert resident_kib < 8 * 1024, f"{resident_kib} KiB of the tokenizer module still resident"


def test_token_ids_are_the_tiktoken_compatible_ids():
    # What the simulator counts with since it stopped loading bpe_openai's Python Encoding.
    import bpe_openai

    for encoding in ENCODINGS:
        reference = bpe_openai.get_encoding(encoding)
        for text in ("hello world", "a <|endoftext|> b", "ünïcödé 日本語 🙂", '{"role":"user"}'):
            assert token_ids(text, encoding) == reference.encode(text, disallowed_special=())
    assert token_ids("\ud800x") == token_ids("\ufffdx")  # a lone surrogate counts as U+FFFD


def test_soak_verdict_is_growth_after_the_warmup():
    samples = [{"t_s": t, "rss_mib": rss} for t, rss in ((0, 90), (5, 120), (10, 121), (15, 124))]
    flat = rss_growth(samples, warmup_s=5)
    assert flat["rss_mib_after_warmup"] == 120 and flat["rss_mib_end"] == 124
    assert flat["growth_fraction"] == pytest.approx(0.0333, abs=1e-4)  # start-up growth ignored
    leaking = rss_growth([*samples, {"t_s": 20, "rss_mib": 127}], warmup_s=5)
    assert leaking["growth_fraction"] > 0.05
    with pytest.raises(ValueError, match="need 2"):
        rss_growth(samples, warmup_s=15)


def test_short_soak_passes_and_writes_its_report(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--duration",
            "20",
            "--warmup",
            "8",
            "--interval",
            "2",
            "--rate",
            "100",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = json.loads(out.read_text())
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["pass"] is True and report["figures"]["growth_fraction"] <= 0.05
    assert len(report["samples"]) >= 8
    assert {load["kind"] for load in report["loads"]} == {
        "cache_miss",
        "cache_hit",
        "stream",
        "batched_completion",
    }
    assert all(load["ok"] == load["requests"] > 0 for load in report["loads"])
