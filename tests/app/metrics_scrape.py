"""A /metrics scrape after traffic that touches most kinds of series the gateway exports, and
the names of every series the gateway can export."""

from __future__ import annotations

import re

from prometheus_client.metrics_core import Metric

from app.metrics import Metrics
from tests.app.gateway_harness import BOB, auth, client_keys_json, make_config, running

DETERMINISTIC = {"temperature": 0}
LIMITED = "carol-key-0123456789abcdef"
# Sample-name suffixes prometheus_client writes per metric type.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
}


async def scrape_after_traffic(upstream_url: str) -> str:
    """Chat (bypass), a cache miss then hit, a stream, a stream cut by the provider, a provider
    429 retried, a 5xx, an unknown model, a bad key, a rate-limited key, a batched completion;
    then the exposition text of /metrics."""
    config = make_config(upstream_url, batching={"enabled": True})
    keys = client_keys_json(carol={"key": LIMITED, "rpm": 1})
    async with running(config, {"LIFTOFF_CLIENT_KEYS": keys}) as gw:
        assert (await gw.chat()).status_code == 200
        assert (await gw.chat(**DETERMINISTIC)).headers["x-liftoff-cache"] == "miss"
        assert (await gw.chat(**DETERMINISTIC)).headers["x-liftoff-cache"] == "hit"
        stream = await gw.chat(stream=True)
        assert stream.status_code == 200 and b"[DONE]" in stream.content
        await gw.chat(stream=True, headers={"x-simulator-fault": "cut"})
        retried = await gw.chat(
            key=BOB,
            headers={
                "x-simulator-fault": "429",
                "x-simulator-fail-times": "1",
                "x-simulator-request-key": "metrics-scrape-429",
                "x-simulator-retry-after-ms": "1",
            },
        )
        assert retried.status_code == 200, retried.text
        assert (await gw.chat(headers={"x-simulator-fault": "500"})).status_code >= 500
        assert (await gw.chat(model="no-such-model")).status_code == 404
        assert (await gw.chat(key="not-a-key")).status_code == 401
        assert (await gw.chat(key=LIMITED)).status_code == 200
        assert (await gw.chat(key=LIMITED)).status_code == 429
        completion = await gw.client.post(
            "/v1/completions", json={"model": "fast", "prompt": "Say hello"}, headers=auth(BOB)
        )
        assert completion.status_code == 200, completion.text
        response = await gw.client.get("/metrics")
        assert response.status_code == 200
        return response.text


def registry_families() -> list[Metric]:
    return list(Metrics().registry.collect())


def exported_series_names(scraped: str) -> set[str]:
    """Every sample name the gateway can export: the registry's families with the suffixes of
    their type, plus every sample name seen in `scraped` (a real /metrics text)."""
    names = {
        family.name + suffix
        for family in registry_families()
        for suffix in _SUFFIXES.get(family.type, ("",))
    }
    for line in scraped.splitlines():
        if line and not line.startswith("#"):
            found = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert found, f"not an exposition line: {line!r}"
            names.add(found.group(0))
    return names
