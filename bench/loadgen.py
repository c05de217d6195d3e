"""Load generator: a lean HTTP/1.1 keep-alive client (uvloop + httptools), run as its own process.

`python -m bench.loadgen '<json spec>'` prints one JSON result line. Two modes:
- closed loop: `connections` workers each send the next request as soon as the last one answered,
  for `duration_s`; gives the maximum sustained requests/s.
- open loop: requests start on a fixed schedule (`rate` per second) whatever the answers do, and
  latency is measured from the scheduled start, so queueing shows up in the figures instead of
  silently lowering the load (no coordinated omission).

Every request is pre-rendered bytes; a `__N__` placeholder in the body becomes a per-request
counter so cache-miss runs never repeat a prompt. Time to first body byte is recorded too (for
streams that is the first SSE event).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httptools

PLACEHOLDER = b"__N__"
# Prefix of every unique value: runs (and warm-up vs measured phases) never repeat a prompt.
RUN_NONCE = os.urandom(6).hex().encode()
SEQUENCE = itertools.count()


@dataclass
class Sample:
    status: int
    latency_s: float  # from writing the request to the last byte of the answer
    first_byte_s: float  # from writing the request to the first body byte
    header: str | None
    start_delay_s: float = 0.0  # open loop: how late the request went out versus its schedule
    numeric: float | None = None  # value of the numeric header asked for (x-liftoff-overhead-ms)


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, capture_header: bytes | None, numeric_header: bytes | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.capture_header = capture_header
        self.numeric_header = numeric_header
        self.numeric_value: float | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.first_body_at = 0.0
        self.status = 0
        self.header_value: str | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == self.capture_header:
            self.header_value = value.decode()
        elif lowered == self.numeric_header:
            try:
                self.numeric_value = float(value)
            except ValueError:
                self.numeric_value = None

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_body_at:
            self.first_body_at = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def request(self, data: bytes) -> Sample:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.first_body_at = 0.0
        self.status = 0
        self.header_value = None
        self.numeric_value = None
        started = time.perf_counter()
        self.transport.write(data)
        await self.waiter
        done = time.perf_counter()
        first = (self.first_body_at or done) - started
        return Sample(
            self.status, done - started, first, self.header_value, numeric=self.numeric_value
        )


@dataclass
class RequestTemplate:
    head: bytes  # request line + headers up to (not including) Content-Length
    body_prefix: bytes
    body_suffix: bytes | None  # None: the body has no placeholder

    @classmethod
    def from_spec(cls, target: str, spec: dict[str, Any]) -> RequestTemplate:
        url = urlparse(target)
        headers = {
            "Host": url.netloc,
            "Content-Type": "application/json",
            "Connection": "keep-alive",
            **spec.get("headers", {}),
        }
        method = spec.get("method", "POST")
        head = f"{method} {spec['path']} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        body = json.dumps(spec["body"]).encode() if "body" in spec else b""
        if PLACEHOLDER in body:
            prefix, suffix = body.split(PLACEHOLDER, 1)
            return cls(head.encode(), prefix, suffix)
        return cls(head.encode(), body, None)

    def render(self, n: int) -> bytes:
        body = (
            self.body_prefix
            if self.body_suffix is None
            else self.body_prefix + RUN_NONCE + b"-" + str(n).encode() + self.body_suffix
        )
        return self.head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


HeaderNames = tuple[bytes | None, bytes | None]


async def connect(target: str, capture: HeaderNames) -> Connection:
    url = urlparse(target)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: Connection(*capture), url.hostname, url.port)
    return protocol


async def closed_loop(
    target: str,
    template: RequestTemplate,
    connections: int,
    duration_s: float,
    capture: HeaderNames,
) -> tuple[Recorder, float]:
    recorder = Recorder()
    conns = [await connect(target, capture) for _ in range(connections)]
    deadline = 0.0

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            if conn.closed:
                conn = await connect(target, capture)
            try:
                recorder.samples.append(await conn.request(template.render(next(SEQUENCE))))
            except Exception as exc:
                recorder.errors[type(exc).__name__] += 1

    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return recorder, elapsed


async def open_loop(
    target: str,
    template: RequestTemplate,
    rate: float,
    duration_s: float,
    connections: int,
    capture: HeaderNames,
) -> tuple[Recorder, float]:
    recorder = Recorder()
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await connect(target, capture))
    total = int(rate * duration_s)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        conn = await idle.get()
        try:
            if conn.closed:
                conn = await connect(target, capture)
            sample = await conn.request(template.render(next(SEQUENCE)))
            sample.start_delay_s = time.perf_counter() - sample.latency_s - scheduled
            recorder.samples.append(sample)
        except Exception as exc:
            recorder.errors[type(exc).__name__] += 1
        finally:
            idle.put_nowait(conn)

    start = time.perf_counter()
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        conn = idle.get_nowait()
        if conn.transport is not None:
            conn.transport.close()
    return recorder, elapsed


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    # Nearest rank: the smallest value with at least q% of the values at or below it.
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


def _numeric_summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values.sort()
    return {"p50": round(percentile(values, 50), 3), "p99": round(percentile(values, 99), 3)}


def summarize(recorder: Recorder, elapsed: float) -> dict[str, Any]:
    ok = [s for s in recorder.samples if 200 <= s.status < 300]
    latencies = sorted(s.latency_s * 1000 for s in ok)
    first_bytes = sorted(s.first_byte_s * 1000 for s in ok)
    # Open loop: latency counted from the schedule, so a stalled target cannot hide queueing.
    from_schedule = sorted((s.latency_s + s.start_delay_s) * 1000 for s in ok)
    return {
        "requests": len(recorder.samples),
        "ok": len(ok),
        "statuses": {str(k): v for k, v in Counter(s.status for s in recorder.samples).items()},
        "errors": dict(recorder.errors),
        "elapsed_s": round(elapsed, 3),
        "rps": round(len(ok) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 3),
            "p90": round(percentile(latencies, 90), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(latencies[-1], 3) if latencies else None,
        },
        "latency_from_schedule_ms": {
            "p50": round(percentile(from_schedule, 50), 3),
            "p99": round(percentile(from_schedule, 99), 3),
        },
        "late_starts_over_1ms": sum(1 for s in ok if s.start_delay_s > 0.001),
        "first_byte_ms": {
            "p50": round(percentile(first_bytes, 50), 3),
            "p99": round(percentile(first_bytes, 99), 3),
        },
        "numeric_header": _numeric_summary([s.numeric for s in ok if s.numeric is not None]),
        "header_values": dict(Counter(s.header for s in recorder.samples if s.header is not None)),
    }


def _header(name: str | None) -> bytes | None:
    return name.lower().encode() if name else None


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    template = RequestTemplate.from_spec(spec["target"], spec["request"])
    capture_bytes = (_header(spec.get("capture_header")), _header(spec.get("numeric_header")))
    mode = spec["mode"]
    connections = int(spec.get("connections", 64))

    async def phase(duration: float) -> tuple[Recorder, float]:
        if mode == "closed":
            return await closed_loop(spec["target"], template, connections, duration, capture_bytes)
        return await open_loop(
            spec["target"], template, float(spec["rate"]), duration, connections, capture_bytes
        )

    warmup_requests = 0
    if spec.get("warmup_s"):
        warmup, _ = await phase(float(spec["warmup_s"]))
        warmup_requests = len(warmup.samples)
    recorder, elapsed = await phase(float(spec["duration_s"]))
    return {**summarize(recorder, elapsed), "warmup_requests": warmup_requests}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.loadgen '<json spec>'")
    spec = json.loads(args[0])
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
