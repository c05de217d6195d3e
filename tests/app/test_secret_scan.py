"""Secrets scan (issue 10, §3): with known secret values configured, a representative mixed load
leaves none of them, in any obvious encoding, in any log line, response body or header, the
/metrics output, /openapi.json, or the output of `python -m infra.plan --stack prod`.

The gateway is a real `python -m app` process (two providers, both the simulator; a Redis server
that requires a password), run twice: with `log_prompts` off and on. Every loop is bounded."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.app.gateway_harness import ROOT, SIM_HEADERS, app_processes
from tests.app.test_http_limits import _gateway_pid
from tests.fixtures.redis import RedisServer, free_port, server_binary


def _secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"


ALICE = _secret("alice")
BOB = _secret("bob")  # configured by its sha256 digest only
ADMIN = _secret("admin")
LIMITED = _secret("limited")  # rpm 1: its second request is a 429
WRONG = _secret("wrong")  # presented, never configured: not to be logged either
UPSTREAM_KEY = _secret("sk-upstream")
SECOND_KEY = _secret("sk-second")  # LIFTOFF_PROVIDER_SECOND_API_KEY
REDIS_PASSWORD = _secret("redis")
SECRETS = {
    "alice client key": ALICE,
    "bob client key": BOB,
    "admin client key": ADMIN,
    "limited client key": LIMITED,
    "wrong client key": WRONG,
    "LIFTOFF_UPSTREAM_API_KEY": UPSTREAM_KEY,
    "LIFTOFF_PROVIDER_SECOND_API_KEY": SECOND_KEY,
    "LIFTOFF_REDIS_AUTH_TOKEN": REDIS_PASSWORD,
}
# bob's key is configured as its sha256 digest: that form is the config's own, not a leak.
CONFIGURED_DIGESTS = {hashlib.sha256(BOB.encode()).hexdigest()}
SECOND_MODEL = "gpt-4o-2024-08-06"  # served by the second provider
FRAGMENT = 16  # any 16-character piece of a secret's random part counts as a hit


def encodings(value: str) -> dict[str, str]:
    """The forms a secret could leak in: itself, base64 (plain, URL-safe, of `Bearer <key>` and
    of `:<key>` as Basic auth or Redis AUTH would), hex, its sha256/sha1/md5 hex digests, and
    each FRAGMENT-long piece of its random part (a "masked" key that shows too much)."""
    raw = value.encode()
    forms = {
        "plain": value,
        "base64": base64.b64encode(raw).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base64-bearer": base64.b64encode(b"Bearer " + raw).decode().rstrip("="),
        "base64-basic": base64.b64encode(b":" + raw).decode().rstrip("="),
        "hex": raw.hex(),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "sha1": hashlib.sha1(raw).hexdigest(),
        "md5": hashlib.md5(raw).hexdigest(),
        "url-escaped": httpx.URL("http://x/", params={"k": value}).query.decode()[2:],
    }
    random_part = value.rsplit("-", 1)[1]
    for start in range(0, len(random_part) - FRAGMENT + 1, 4):
        forms[f"fragment@{start}"] = random_part[start : start + FRAGMENT]
    return {name: form for name, form in forms.items() if form not in CONFIGURED_DIGESTS}


def hits(text: str, where: str) -> list[str]:
    lowered = text.lower()
    found = []
    for secret_name, value in SECRETS.items():
        for form_name, form in encodings(value).items():
            # Hex forms are compared case-insensitively; the rest exactly.
            haystack = lowered if form_name in ("hex", "sha256", "sha1", "md5") else text
            if form in haystack:
                found.append(f"{where}: {secret_name} ({form_name})")
    return found


def _client_keys() -> str:
    return orjson.dumps(
        [
            {"name": "alice", "key": ALICE},
            {"name": "bob", "key_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
            {"name": "admin", "key": ADMIN, "admin": True},
            {"name": "limited", "key": LIMITED, "rpm": 1},
        ]
    ).decode()


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(
        server_binary(), free_port(), tmp_path_factory.mktemp("redis"), password=REDIS_PASSWORD
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def gateway(
    simulator_url: str, redis: RedisServer, log_prompts: bool, tmp: Path
) -> Iterator[tuple[str, list[bytes]]]:
    """A gateway process with every secret configured; yields its base URL and a list that holds,
    once the block has ended and the process has stopped, its whole stdout+stderr."""
    config = {
        "upstream": {
            "providers": [
                {"name": "sim", "url": simulator_url},
                {"name": "second", "url": simulator_url},
            ],
            "forward_headers": list(SIM_HEADERS),
            "retry": {"base_s": 0.01, "cap_s": 0.05, "max_attempts": 2},
        },
        "models": {"catalog": {SECOND_MODEL: {"provider": "second"}}},
        "batching": {"enabled": False},
        "server": {"log_prompts": log_prompts, "access_log": True},
    }
    path = tmp / f"gateway-{log_prompts}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        "LIFTOFF_CONFIG": str(path),
        "LIFTOFF_REDIS_URL": redis.url,
        "LIFTOFF_REDIS_AUTH_TOKEN": REDIS_PASSWORD,
        "LIFTOFF_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "LIFTOFF_PROVIDER_SECOND_API_KEY": SECOND_KEY,
        "LIFTOFF_CLIENT_KEYS": _client_keys(),
        "LIFTOFF_LOG_LEVEL": "DEBUG",
    }
    output: list[bytes] = []
    with contextlib.ExitStack() as files:
        logs = []
        try:
            with app_processes(1, env) as urls:
                # The process' own log file, reopened through /proc: still readable once
                # app_processes has stopped the process and removed its directory.
                fd = Path(f"/proc/{_gateway_pid(urls[0])}/fd/1")
                logs.append(files.enter_context(fd.open("rb")))
                yield urls[0].removesuffix("/v1"), output
        finally:
            output.extend(log.read() for log in logs)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _record(response: httpx.Response, seen: list[str]) -> httpx.Response:
    head = "\n".join(f"{k.decode()}: {v.decode('latin-1')}" for k, v in response.headers.raw)
    seen.append(f"HTTP {response.status_code} {response.request.url.path}\n{head}\n")
    seen.append(response.text)
    return response


def mixed_load(base: str, seen: list[str]) -> dict[str, int]:
    """Every kind of request once or twice; returns the count of each status seen."""
    chat = {"model": "fast", "messages": [{"role": "user", "content": "Say hello"}]}
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=base, timeout=30) as http:

        def call(method: str, path: str, key: str | None = ALICE, **kwargs: Any) -> httpx.Response:
            headers = {**(bearer(key) if key else {}), **kwargs.pop("headers", {})}
            response = _record(http.request(method, path, headers=headers, **kwargs), seen)
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            return response

        call("POST", "/v1/chat/completions", json={**chat, "max_tokens": 20})
        call("POST", "/v1/chat/completions", BOB, json={**chat, "stream": True})
        call("POST", "/v1/chat/completions", json={**chat, "model": SECOND_MODEL})
        call("POST", "/v1/completions", json={"model": "fast", "prompt": "hi", "max_tokens": 5})
        created = call("POST", "/v1/responses", json={"model": "fast", "input": "hi"})
        call("POST", "/v1/responses", json={"model": "fast", "input": "hi", "stream": True})
        if created.status_code == 200:
            call("GET", f"/v1/responses/{created.json()['id']}")
            call("GET", f"/v1/responses/{created.json()['id']}/input_items")
        call("POST", "/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a"]})
        call("POST", "/v1/moderations", json={"input": "hi"})
        call("GET", "/v1/files")
        call("GET", "/v1/models")
        call("GET", "/v1/usage")
        call("GET", "/v1/usage", ADMIN)
        call("GET", "/v1/usage?key=bob", ALICE)  # 403
        call("POST", "/admin/cache/invalidate", ADMIN, json={"model": "fast"})
        call("POST", "/v1/chat/completions", WRONG, json=chat)  # 401
        call("POST", "/v1/chat/completions", None, json=chat)  # 401
        call("POST", "/v1/chat/completions", "x" + ALICE, json=chat)  # 401, a near miss
        call("POST", "/v1/chat/completions", json={"model": 5})  # 400
        call("POST", "/v1/chat/completions", LIMITED, json=chat)
        call("POST", "/v1/chat/completions", LIMITED, json=chat)  # 429
        for fault in ("500", "503", "429", "401"):  # provider faults; a 401 refreshes the key
            call("POST", "/v1/chat/completions", json=chat, headers={"x-simulator-fault": fault})
        call(
            "POST",
            "/v1/chat/completions",
            json={**chat, "stream": True},
            headers={"x-simulator-fault": "cut"},
        )
        call("GET", "/metrics")
        call("GET", "/openapi.json")
        ready = call("GET", "/readyz").json()
        assert ready["state_backend"] == "healthy", ready  # it authenticated to Redis
    return statuses


def test_the_scan_finds_every_encoding_of_a_secret():
    token = SECRETS["LIFTOFF_REDIS_AUTH_TOKEN"]
    for name, form in encodings(token).items():
        assert hits(f"... {form.upper() if name == 'sha256' else form} ...", "x"), name
    assert hits(f"masked: {token[:8]}...{token[-20:]}", "x")  # shows a 16-character piece
    assert hits(hashlib.sha256(BOB.encode()).hexdigest(), "x") == []  # the config's own form
    assert hits("nothing to see", "x") == []


@pytest.mark.parametrize("log_prompts", [False, True], ids=["log_prompts-off", "log_prompts-on"])
def test_no_secret_in_logs_responses_metrics_or_openapi(
    simulator, redis_with_password, tmp_path, log_prompts
):
    seen: list[str] = []
    simulator.app.reset()
    with gateway(simulator.url, redis_with_password, log_prompts, tmp_path) as (base, output):
        statuses = mixed_load(base, seen)
    # The provider keys were really in use: the provider saw each one.
    used = {r["api_key_sha256"] for r in simulator.app.recent_requests()}
    assert {hashlib.sha256(k.encode()).hexdigest()[:16] for k in (UPSTREAM_KEY, SECOND_KEY)} <= used
    [logs] = output
    if log_prompts:  # the prompts reached the logs: the scan reads what log_prompts adds
        assert b"Say hello" in logs
    assert {"200", "400", "401", "403", "429"} <= set(statuses), statuses
    assert any(status.startswith("5") for status in statuses), statuses
    lines = logs.decode(errors="replace").splitlines()
    assert any('"liftoff.access"' in line for line in lines)  # the access log is in there
    found = [hit for i, line in enumerate(lines) for hit in hits(line, f"log line {i + 1}")]
    found += [hit for i, text in enumerate(seen) for hit in hits(text, f"response {i}")]
    assert found == [], "\n".join(found[:50])


def test_no_secret_in_the_plan_output(tmp_path):
    keys = orjson.dumps([{"name": "alice", "key": ALICE}, {"name": "admin", "key": ADMIN}])
    providers = [
        {"name": "openai", "kind": "openai", "url": "https://api.openai.com"},
        {
            "name": "second",
            "kind": "openai",
            "url": "https://second.example.com",
            "models": [SECOND_MODEL],
        },
    ]
    settings = {
        "liftoff:llmApiKey": UPSTREAM_KEY,
        "liftoff:clientKeys": keys.decode(),
        "liftoff:providers": json.dumps(providers),
        "liftoff:providerApiKeys": json.dumps({"second": SECOND_KEY}),
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    # The human and the JSON plan, run at once: each is a whole program run of seconds.
    plans = {
        mode: subprocess.Popen(
            [sys.executable, "-m", "infra.plan", "--stack", "prod", *args, *mode],
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ((), ("--json",))
    }
    outputs = []
    try:
        for mode, plan in plans.items():
            stdout, stderr = plan.communicate(timeout=300)
            assert plan.returncode in (0, 1), stderr[-2000:]  # 1: a policy error, still a plan
            assert "Resources by component" in stdout or mode, stdout[-500:]
            outputs += [stdout, stderr]
    finally:
        for plan in plans.values():
            if plan.poll() is None:
                plan.kill()
                plan.wait()
    assert "[secret]" in outputs[0]
    found = [hit for i, text in enumerate(outputs) for hit in hits(text, f"plan output {i}")]
    assert found == [], "\n".join(found)
