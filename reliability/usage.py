"""Client keys of a run and their usage as `/v1/usage` records it."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import uuid

from bench.stack import http_json
from reliability.cluster import Cluster

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "requests", "cache_hits", "cost_usd")


def token(name: str) -> str:
    return f"lk-{name}-{TOKEN_SUFFIX}"


TOKEN_SUFFIX = uuid.uuid4().hex[:12]


async def settled_usage(cluster: Cluster, key_name: str, limit_s: float = 15.0) -> dict:
    """The key's usage once settlements (written after each response, off its path) stopped
    changing it: two reads 0.5 s apart agree, at most `limit_s`."""
    deadline = time.monotonic() + limit_s
    last = await asyncio.to_thread(usage_of, cluster, key_name)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        current = await asyncio.to_thread(usage_of, cluster, key_name)
        if current == last:
            break
        last = current
    return last


def usage_of(cluster: Cluster, key_name: str) -> dict[str, float]:
    """The key's month totals (every model), read from one gateway."""
    headers = {"authorization": f"Bearer {token(key_name)}"}
    for attempt in range(10):  # a 503: Redis answered later than redis.socket_timeout_s
        try:
            body = http_json(f"{cluster.gateways[0].base}/v1/usage", headers)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 9:
                raise
            time.sleep(0.5)
    spent = body.get("usage") or {}
    totals = {name: spent.get(name, 0) for name in USAGE_FIELDS}
    return totals
