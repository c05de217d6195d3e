"""The rendered pod's command, env and ConfigMap start the real gateway (`python -m app`, as the
image's ENTRYPOINT does), its probe paths answer, and SIGTERM drains it to a clean exit well
inside terminationGracePeriodSeconds. Loopback only: the host is overridden to 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.charts.chart import REPO_ROOT, render
from tests.fixtures.redis import free_port


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gateway exited early: {process.stderr.read()}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout_s}s")


def test_rendered_pod_spec_boots_the_gateway_and_drains_on_sigterm(tmp_path: Path) -> None:
    manifests = render()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(manifests.one("ConfigMap")["data"]["config.yaml"])
    port = free_port()
    env = {
        **manifests.env,
        "LIFTOFF_CONFIG": str(config_file),
        "LIFTOFF__SERVER__HOST": "127.0.0.1",
        "LIFTOFF__SERVER__PORT": str(port),
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    container = manifests.container
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + container["startupProbe"]["httpGet"]["path"], process)
        for probe in ("readinessProbe", "livenessProbe"):
            assert (
                httpx.get(base + container[probe]["httpGet"]["path"], timeout=2).status_code == 200
            )
        # A stream in flight when SIGTERM arrives still completes; then the process exits.
        body = {
            "model": "fast",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "stream": True,
            "max_tokens": 400,
        }
        # The built-in simulator takes per-request pacing headers: 60 tokens, 30 ms apart.
        headers = {
            "authorization": "Bearer liftoff-dev-key",
            "x-simulator-tokens": "60",
            "x-simulator-token-ms": "30",
        }
        chunks = 0
        with httpx.stream(
            "POST", base + "/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    chunks += 1
                    break
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            tail = [line for line in lines if line.startswith("data: ")]
            streamed_after_sigterm_s = time.monotonic() - started
        assert tail and tail[-1] == "data: [DONE]", "the stream finished after SIGTERM"
        chunks += len(tail)
        assert streamed_after_sigterm_s > 1.0, "the stream was still running when SIGTERM came"
        assert chunks > 20
        returncode = process.wait(timeout=manifests.pod_spec["terminationGracePeriodSeconds"])
        # uvicorn re-raises the captured SIGTERM once its graceful shutdown is complete, so a clean
        # drain ends "terminated by SIGTERM" (exit code 143 in Kubernetes); a crash would not.
        assert returncode in (0, -signal.SIGTERM), process.stderr.read()
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
