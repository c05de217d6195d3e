"""A bounded open-loop mixed load and what each request got.

Requests start on a fixed schedule (`rate` per second for `duration_s`, never more than
`max_in_flight` at once, each cut off at `timeout_s`), whatever the answers do. Every answer is
read to its end and classified: a complete answer is a parsed JSON body (success or an
OpenAI-shaped error), or a stream that ended with `[DONE]`, `response.completed` or an error
event; anything else (reset, truncated body, timeout) is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT_MODEL = "fast"
EMBEDDING_MODEL = "text-embedding-3-small"
MAX_TOKENS = 32
CACHEABLE_PROMPTS = 8
RESPONSES_ANSWERED = {"response.completed", "response.incomplete"}
RESPONSES_TERMINAL = RESPONSES_ANSWERED | {"response.failed", "error"}
_SEQUENCE = itertools.count()
_NONCE = uuid.uuid4().hex[:8]


@dataclass
class Spec:
    """One request to send."""

    kind: str  # chat | responses | embeddings
    stream: bool
    body: dict[str, Any]
    token: str  # the client key
    headers: dict[str, str] = field(default_factory=dict)
    tag: str = ""  # what the phase did to it (the fault it carries), "" for a clean request

    @property
    def path(self) -> str:
        return {
            "chat": "/v1/chat/completions",
            "responses": "/v1/responses",
            "embeddings": "/v1/embeddings",
        }[self.kind]


@dataclass
class Outcome:
    spec: Spec
    started: float  # monotonic seconds
    ended: float = 0.0
    status: int = 0  # 0: no HTTP answer
    complete: bool = False
    error_code: str | None = None  # error.code of an error body or error event
    stream_error: bool = False  # a 200 stream that ended with an error event
    cache: str | None = None  # x-liftoff-cache
    usage: dict[str, Any] | None = None
    chunks: int = 0  # chat: data chunks relayed (the gateway bills a cut stream by them)
    content_tokens: int = 0  # chat: chunks carrying content; Responses: delta events
    detail: str = ""  # why it is lost

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000

    @property
    def succeeded(self) -> bool:
        return self.complete and self.status == 200 and not self.stream_error


def unique() -> str:
    return f"{_NONCE}-{next(_SEQUENCE)}"


def chat_body(prompt: str, stream: bool, cacheable: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0 if cacheable else 0.7,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def responses_body(prompt: str, stream: bool, cacheable: bool) -> dict[str, Any]:
    return {
        "model": CHAT_MODEL,
        "input": prompt,
        "max_output_tokens": MAX_TOKENS,
        "temperature": 0 if cacheable else 0.7,
        "stream": stream,
        "store": False,
    }


def mixed(rng: random.Random, token: str) -> Spec:
    """One request of the mix: chat (JSON and streams, cacheable and not), Responses (JSON and
    streams) and embeddings. Cacheable prompts come from a small pool, so they repeat."""
    draw = rng.random()
    cacheable = rng.random() < 0.4
    prompt = (
        f"Reliability question {rng.randrange(CACHEABLE_PROMPTS)}: what is a queue?"
        if cacheable
        else f"Reliability question {unique()}: what is a load balancer?"
    )
    if draw < 0.35:
        return Spec("chat", False, chat_body(prompt, False, cacheable), token)
    if draw < 0.65:
        return Spec("chat", True, chat_body(prompt, True, cacheable), token)
    if draw < 0.75:
        return Spec("responses", False, responses_body(prompt, False, cacheable), token)
    if draw < 0.88:
        return Spec("responses", True, responses_body(prompt, True, cacheable), token)
    inputs = [prompt] if cacheable else [prompt, f"second input {unique()}"]
    return Spec("embeddings", False, {"model": EMBEDDING_MODEL, "input": inputs}, token)


async def send(session: aiohttp.ClientSession, url: str, spec: Spec, timeout_s: float) -> Outcome:
    outcome = Outcome(spec, time.monotonic())
    headers = {"authorization": f"Bearer {spec.token}", **spec.headers}
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url + spec.path, json=spec.body, headers=headers) as response:
                outcome.status = response.status
                outcome.cache = response.headers.get("x-liftoff-cache")
                streamed = response.content_type == "text/event-stream"
                if streamed:
                    await _read_stream(response, outcome)
                else:
                    _read_json(await response.read(), outcome)
    except TimeoutError:
        outcome.detail = f"no complete answer within {timeout_s} s"
    except (aiohttp.ClientError, ConnectionError) as exc:
        outcome.detail = f"{type(exc).__name__}: {exc}"[:200]
    outcome.ended = time.monotonic()
    return outcome


def _read_json(raw: bytes, outcome: Outcome) -> None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        outcome.detail = f"unparsable body ({len(raw)} bytes)"
        return
    if not isinstance(body, dict):
        outcome.detail = "body is not an object"
        return
    if outcome.status == 200:
        outcome.complete = body.get("object") in ("chat.completion", "response", "list")
        outcome.usage = body.get("usage")
        if not outcome.complete:
            outcome.detail = f"200 without an answer object: {str(body)[:120]}"
        return
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error:
        outcome.complete = True  # a clean, OpenAI-shaped error
        outcome.error_code = error.get("code")
    else:
        outcome.detail = f"{outcome.status} not OpenAI-shaped: {raw[:120]!r}"


async def _read_stream(response: aiohttp.ClientResponse, outcome: Outcome) -> None:
    event_name = None
    async for raw_line in response.content:
        line = raw_line.rstrip(b"\r\n")
        if line.startswith(b"event:"):
            event_name = line[6:].strip().decode()
            continue
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            outcome.complete = True
            continue
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            outcome.detail = "unparsable SSE data"
            continue
        kind = payload.get("type") if isinstance(payload, dict) else None
        name = event_name or kind
        event_name = None
        if outcome.spec.kind == "responses":
            if name and name.endswith(".delta"):
                outcome.content_tokens += 1
            if name in RESPONSES_TERMINAL:
                outcome.complete = True
                if name in RESPONSES_ANSWERED:  # incomplete: max_output_tokens reached
                    outcome.usage = payload.get("response", {}).get("usage")
                else:
                    outcome.stream_error = True
                    outcome.error_code = _error_code(payload)
            continue
        if isinstance(payload, dict) and "error" in payload:
            outcome.complete = True
            outcome.stream_error = True
            outcome.error_code = _error_code(payload)
            continue
        outcome.chunks += 1
        if payload.get("usage"):
            outcome.usage = payload["usage"]
        for choice in payload.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                outcome.content_tokens += 1
    if not outcome.complete:
        outcome.detail = outcome.detail or "stream ended without [DONE], completion or error"


def _error_code(payload: dict[str, Any]) -> str | None:
    error = payload.get("error")
    if isinstance(error, dict):
        return error.get("code")
    response = payload.get("response")
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        return response["error"].get("code")
    return payload.get("code")


async def open_loop(
    url: str,
    make: Callable[[int], Spec],
    *,
    rate: float,
    duration_s: float,
    timeout_s: float = 30.0,
    max_in_flight: int = 512,
    stop: Callable[[], bool] | None = None,
) -> list[Outcome]:
    """`rate` requests a second for `duration_s` (or until `stop()` is true) from `make(n)`;
    waits for every answer."""
    total = max(1, int(rate * duration_s))
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=False)
    outcomes: list[Outcome] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        start = time.monotonic()
        tasks = []
        for n in range(total):
            if stop is not None and stop():
                break
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, make(n), timeout_s)))
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes


async def burst(urls: list[str], specs: list[Spec], timeout_s: float = 30.0) -> list[Outcome]:
    """Every spec at once, spread round robin over `urls` (one connection each)."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        return list(
            await asyncio.gather(
                *(
                    send(session, urls[i % len(urls)], spec, timeout_s)
                    for i, spec in enumerate(specs)
                )
            )
        )
