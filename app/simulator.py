"""A simulator of an OpenAI-compatible provider, for local runs, tests and benchmarks.

Raw ASGI + orjson so it stays out of the way when it is the "provider" in a load test. Output is
deterministic (a hash of model, input, seed and temperature), usage is counted with the o200k_base
tokenizer, latency is a time to first token plus a per-token delay, and faults are injected either
per request (`x-simulator-fault` header, optionally only for the first K attempts of a logical
request) or at a configured rate from a seeded, reproducible sequence.

Usage is realistic for accounting tests: image, audio and file parts are billed as the provider
documents (`app/parts.py`), a chat prompt of 1024+ tokens whose prefix an earlier request to the
same model sent reports it in `prompt_tokens_details.cached_tokens` (in 128-token steps), and
reasoning models (o1/o3/o4/gpt-5) spend `completion_tokens_details.reasoning_tokens` (by
`reasoning_effort`) within `max_completion_tokens`, and refuse `max_tokens` as the provider does.

Run on its own: `python -m app.simulator --host 127.0.0.1 --port 8081 --ttft-ms 50 --token-ms 5`.

Per-request control headers (all optional):
- `x-simulator-fault: 429|500|502|503|504|timeout|cut|401` - answer with that fault. 429 carries
  `retry-after` (whole seconds), `retry-after-ms` and `x-ratelimit-*` (reset in "1s" style);
  `timeout` hangs for `timeout_fault_s` then answers 504; `cut` drops the connection half way
  (mid-stream without `[DONE]`, or mid-body).
- `x-simulator-fail-times: K` + `x-simulator-request-key: ID` - only the first K attempts of the
  logical request ID fail (with the fault above, else 503), later ones succeed. Without a key the
  body identifies the request.
- `x-simulator-retry-after-ms`, `x-simulator-ttft-ms`, `x-simulator-token-ms`,
  `x-simulator-tokens` (natural completion length) - override the options for one request.
Authorization: any non-empty bearer key works except the revoked ones (`sk-sim-revoked`: 401).
Test hooks: `GET /_simulator/stats`, `GET /_simulator/requests` (last 200, key fingerprints only),
`POST /_simulator/reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvicorn

from app import simulator_text as text
from app.limits import format_duration

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

FAULT_KINDS = ("429", "500", "502", "503", "504", "timeout", "cut", "401")
DEFAULT_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o4-mini-2025-04-16",
    "o4-mini",
    "gpt-5-mini-2025-08-07",
    "gpt-5-mini",
    "gpt-3.5-turbo-instruct",
    "omni-moderation-latest",
)
# The provider answers with the pinned version of a floating name.
PINNED_VERSIONS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
}
# Models that think before answering: hidden reasoning tokens, counted in completion_tokens and
# reported in completion_tokens_details.reasoning_tokens, all within max_completion_tokens.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
REASONING_TOKENS = {"minimal": 0, "low": 64, "medium": 192, "high": 512}  # plus up to as many
# The provider's prompt cache: prefixes of 1024 tokens and more, matched in 128-token steps.
PROMPT_CACHE_MIN_TOKENS = 1024
PROMPT_CACHE_STEP = 128
PROMPT_CACHE_ENTRIES = 50_000
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
FLAG_MARKER = "FLAG_ME"
MAX_BODY_BYTES = 16 * 1024 * 1024
RECENT_REQUESTS = 200
FAIL_TIMES_KEYS = 10_000
SYSTEM_FINGERPRINT = "fp_sim0a1b2c3d"
_UNPARSEABLE = object()


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulated provider behaves. Every delay may be 0 (benchmarks)."""

    ttft_ms: float = 50.0  # time to first token
    token_ms: float = 5.0  # delay between tokens
    fault_rate: float = 0.0  # share of API requests that get a random fault
    fault_kinds: tuple[str, ...] = ("429", "500", "503")
    seed: int = 0  # output text and the fault sequence are reproducible for a seed
    timeout_fault_s: float = 600.0  # how long a "timeout" fault hangs (longer than any client read)
    retry_after_s: float = 1.0  # what a 429 asks the client to wait
    length_range: tuple[int, int] = (16, 64)  # natural completion length in tokens
    revoked_keys: frozenset[str] = frozenset({"sk-sim-revoked"})
    models: tuple[str, ...] | None = None  # None: any model name is served

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "token_ms", "timeout_fault_s", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"SimulatorOptions.{name} must be a number >= 0, got {value!r}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(
                f"SimulatorOptions.fault_rate must be in [0, 1], got {self.fault_rate!r}"
            )
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown or not self.fault_kinds:
            raise ValueError(
                f"SimulatorOptions.fault_kinds must be a non-empty subset of {list(FAULT_KINDS)}, "
                f"got {list(self.fault_kinds)!r}"
            )
        low, high = self.length_range
        if not 1 <= low <= high:
            raise ValueError(
                f"SimulatorOptions.length_range must be (low, high) with 1 <= low <= high, "
                f"got {self.length_range!r}"
            )


class BadRequest(Exception):
    """A request the provider refuses; answered as an OpenAI error body naming `param`."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


@dataclass
class SimulatorStats:
    """What the simulator received; tests read it to prove retries, batching and forwarding."""

    requests_total: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    completions_requests: int = 0
    completions_prompts: int = 0
    prompts_per_completions_request: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_route": dict(self.by_route),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "faults": dict(self.faults),
            "completions_requests": self.completions_requests,
            "completions_prompts": self.completions_prompts,
            "prompts_per_completions_request": {
                str(k): v for k, v in sorted(self.prompts_per_completions_request.items())
            },
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


class Simulator:
    """The ASGI application. One instance holds its stats, fault sequence and fail-times ledger."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.stats = SimulatorStats()
        self._fault_rng = random.Random(options.seed)
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._prompt_prefixes: OrderedDict[bytes, None] = OrderedDict()
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/moderations"): self._moderations,
            ("GET", "/v1/models"): self._models,
            ("GET", "/_simulator/stats"): self._stats,
            ("GET", "/_simulator/requests"): self._recent,
            ("POST", "/_simulator/reset"): self._reset,
        }

    def recent_requests(self) -> list[dict[str, Any]]:
        """The last requests received (path, body, headers, key fingerprint), oldest first."""
        return list(self.stats.recent)

    def reset(self) -> None:
        self.stats = SimulatorStats()
        self._fault_rng = random.Random(self.options.seed)
        self._attempts.clear()
        self._prompt_prefixes.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        handler = self._routes.get((method, path))
        if handler is None and method == "GET" and path.startswith("/v1/models/"):
            handler = self._model
        if handler is None:
            await _send_error(
                send, 404, f"Unknown request URL: {method} {path}.", code="unknown_url"
            )
            return
        stats = self.stats
        stats.requests_total += 1
        stats.by_route[f"{method} {path}"] += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        status_box = _StatusRecorder(send, stats)
        try:
            await self._dispatch(handler, scope, receive, status_box, path)
        finally:
            stats.in_flight -= 1

    async def _dispatch(
        self,
        handler: Callable[..., Awaitable[None]],
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await _read_body(receive)
        if body is None:
            await _send_error(send, 413, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
            return
        if not path.startswith("/v1/"):
            await handler(send)
            return
        api_key = _bearer(headers.get("authorization", ""))
        try:
            payload: Any = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = _UNPARSEABLE
        self._remember(path, payload, headers, api_key)
        if path == "/v1/completions" and isinstance(payload, dict):
            self._count_prompts(payload.get("prompt"))
        if not api_key:
            await _send_error(
                send,
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
            return
        if api_key in self.options.revoked_keys:
            await _send_invalid_key(send)
            return
        if scope["method"] == "GET":
            await handler(send, path)
            return
        fault = self._fault_for(headers, body)
        if fault is not None:
            self.stats.faults[fault] += 1
            if fault not in ("timeout", "cut"):
                await _send_fault(send, fault, self._retry_after_s(headers))
                return
            if fault == "timeout":
                await _hang(receive, self.options.timeout_fault_s)
                await _send_error(send, 504, "Gateway timeout.", error_type="server_error")
                return
        if payload is _UNPARSEABLE:
            await _send_error(
                send,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly.)",
            )
            return
        if not isinstance(payload, dict):
            await _send_error(send, 400, "The request body must be a JSON object.")
            return
        try:
            await handler(send, receive, payload, headers, fault == "cut")
        except BadRequest as exc:
            await _send_error(send, exc.status, exc.message, param=exc.param, code=exc.code)

    # ---- request bookkeeping ------------------------------------------------------------
    def _remember(self, path: str, payload: Any, headers: dict[str, str], api_key: str) -> None:
        self.stats.recent.append(
            {
                "path": path,
                "body": None if payload is _UNPARSEABLE else payload,
                "headers": {k: v for k, v in headers.items() if k != "authorization"},
                # Tests tell keys apart by fingerprint; the key itself is never kept.
                "api_key_sha256": hashlib.sha256(api_key.encode()).hexdigest()[:16]
                if api_key
                else None,
            }
        )

    def _count_prompts(self, prompt: Any) -> None:
        """Prompts per received completions request: what batching saves shows up here."""
        try:
            count = len(_prompts(prompt))
        except BadRequest:
            return
        self.stats.completions_requests += 1
        self.stats.completions_prompts += count
        self.stats.prompts_per_completions_request[count] += 1

    def _fault_for(self, headers: dict[str, str], body: bytes) -> str | None:
        requested = headers.get("x-simulator-fault")
        if requested is not None and requested not in FAULT_KINDS:
            requested = None
        fail_times = headers.get("x-simulator-fail-times")
        if fail_times is not None:
            key = headers.get("x-simulator-request-key") or hashlib.blake2b(body).hexdigest()
            attempt = self._attempts.pop(key, 0) + 1
            self._attempts[key] = attempt
            while len(self._attempts) > FAIL_TIMES_KEYS:
                self._attempts.popitem(last=False)
            try:
                limit = int(fail_times)
            except ValueError:
                limit = 0
            return (requested or "503") if attempt <= limit else None
        if requested is not None:
            return requested
        if self.options.fault_rate and self._fault_rng.random() < self.options.fault_rate:
            return self._fault_rng.choice(self.options.fault_kinds)
        return None

    def _retry_after_s(self, headers: dict[str, str]) -> float:
        override = headers.get("x-simulator-retry-after-ms")
        if override is not None:
            try:
                return max(0.0, float(override) / 1000)
            except ValueError:
                pass
        return self.options.retry_after_s

    def _latency(self, headers: dict[str, str]) -> tuple[float, float]:
        ttft = _float_header(headers, "x-simulator-ttft-ms", self.options.ttft_ms)
        token = _float_header(headers, "x-simulator-token-ms", self.options.token_ms)
        return ttft / 1000, token / 1000

    def _natural_length(self, seed: int, headers: dict[str, str]) -> int:
        forced = headers.get("x-simulator-tokens")
        if forced is not None and forced.isdigit() and int(forced) > 0:
            return int(forced)
        low, high = self.options.length_range
        return low + seed % (high - low + 1)

    def _check_model(self, payload: dict[str, Any]) -> str:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter", param="model")
        if self.options.models is not None and model not in self.options.models:
            raise BadRequest(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                status=404,
                code="model_not_found",
            )
        return PINNED_VERSIONS.get(model, model)

    def _generations(
        self,
        model: str,
        input_key: Any,
        payload: dict[str, Any],
        headers: dict[str, str],
        count: int,
        reasoning: int = 0,
    ) -> list[text.Generation]:
        temperature = payload.get("temperature", 1)
        max_tokens = _max_tokens(payload)
        if max_tokens is not None:
            max_tokens -= reasoning  # reasoning comes first and counts against the cap
        stop = _stop(payload)
        base = text.seed_for(model, input_key, payload.get("seed"), temperature, self.options.seed)
        length = self._natural_length(base, headers)
        out = []
        for index in range(count):
            # Greedy decoding gives every choice the same text; sampling gives each its own.
            seed = base if temperature == 0 else text.seed_for(base, index)
            out.append(text.generate(seed, length, max_tokens, stop))
        return out

    def _reasoning_tokens(self, model: str, messages: Any, payload: dict[str, Any]) -> int:
        """Hidden reasoning tokens per choice: by `reasoning_effort`, within the completion cap."""
        if not model.startswith(REASONING_PREFIXES):
            return 0
        if payload.get("max_tokens") is not None:
            raise BadRequest(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                param="max_tokens",
                code="unsupported_parameter",
            )
        base = REASONING_TOKENS.get(payload.get("reasoning_effort") or "medium", 192)
        seed = text.seed_for(model, messages, payload.get("seed"), self.options.seed)
        tokens = base + (seed % (base + 1))
        cap = _max_tokens(payload)
        return tokens if cap is None else min(tokens, cap)

    def _cached_prefix(self, model: str, messages: Any, prompt_tokens: int) -> int:
        """Prompt tokens served from the provider's prompt cache: the longest prefix, in
        128-token steps from 1024 on, that an earlier request to the same model started with."""
        if prompt_tokens < PROMPT_CACHE_MIN_TOKENS:
            return 0
        ids = text.prompt_token_ids(messages)
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        cached = 0
        seen = self._prompt_prefixes
        end = PROMPT_CACHE_MIN_TOKENS
        digest.update(orjson.dumps(ids[:end]))
        while end <= min(len(ids), prompt_tokens):
            key = digest.copy().digest()
            if key in seen:
                cached = end
                seen.move_to_end(key)
            else:
                seen[key] = None
            digest.update(orjson.dumps(ids[end : end + PROMPT_CACHE_STEP]))
            end += PROMPT_CACHE_STEP
        while len(seen) > PROMPT_CACHE_ENTRIES:
            seen.popitem(last=False)
        return cached

    # ---- routes ---------------------------------------------------------------------------
    async def _chat(
        self,
        send: Send,
        receive: Receive,
        payload: dict[str, Any],
        headers: dict[str, str],
        cut: bool,
    ) -> None:
        model = self._check_model(payload)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(
                "'messages' must be a non-empty array of message objects.", param="messages"
            )
        n = _n(payload)
        reasoning = self._reasoning_tokens(model, messages, payload)
        generations = self._generations(model, messages, payload, headers, n, reasoning)
        prompt_tokens = text.count_message_tokens(messages)
        completion_tokens = sum(g.completion_tokens for g in generations) + reasoning * n
        usage = _usage(prompt_tokens, completion_tokens, chat=True)
        usage["prompt_tokens_details"]["cached_tokens"] = self._cached_prefix(
            model, messages, prompt_tokens
        )
        usage["completion_tokens_details"]["reasoning_tokens"] = reasoning * n

        def body(response_id: str, created: int) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": g.text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": g.finish_reason,
                    }
                    for i, g in enumerate(generations)
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }

        await self._respond(
            send, receive, payload, headers, cut, model, generations, usage, body, chat=True
        )

    async def _completions(
        self,
        send: Send,
        receive: Receive,
        payload: dict[str, Any],
        headers: dict[str, str],
        cut: bool,
    ) -> None:
        model = self._check_model(payload)
        prompts = _prompts(payload.get("prompt"))
        n = _n(payload)
        echo = payload.get("echo") is True
        generations: list[text.Generation] = []
        choice_texts: list[str] = []
        prompt_tokens = 0
        for prompt in prompts:
            prompt_tokens += text.count_prompt_tokens(prompt)
            for g in self._generations(model, prompt, payload, headers, n):
                generations.append(g)
                prefix = prompt if echo and isinstance(prompt, str) else ""
                choice_texts.append(prefix + g.text)
        completion_tokens = sum(g.completion_tokens for g in generations)
        usage = _usage(prompt_tokens, completion_tokens, chat=False)

        def body(response_id: str, created: int) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {"text": t, "index": i, "logprobs": None, "finish_reason": g.finish_reason}
                    for i, (t, g) in enumerate(zip(choice_texts, generations, strict=True))
                ],
                "usage": usage,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }

        await self._respond(
            send, receive, payload, headers, cut, model, generations, usage, body, chat=False
        )

    async def _respond(
        self,
        send: Send,
        receive: Receive,
        payload: dict[str, Any],
        headers: dict[str, str],
        cut: bool,
        model: str,
        generations: list[text.Generation],
        usage: dict[str, Any],
        body: Callable[[str, int], dict[str, Any]],
        *,
        chat: bool,
    ) -> None:
        """Stream the chunks or send `body` after the latency a real provider would take."""
        ttft, per_token = self._latency(headers)
        response_id = ("chatcmpl-" if chat else "cmpl-") + os.urandom(15).hex()[:29]
        created = int(time.time())
        if payload.get("stream"):
            chunks = _chat_chunks if chat else _completion_chunks
            steps = chunks(response_id, created, model, generations, usage, _include_usage(payload))
            await _stream(send, receive, steps, ttft, per_token, cut)
            return
        await _sleep(ttft + per_token * max(len(g.pieces) for g in generations))
        await _send_body(send, orjson.dumps(body(response_id, created)), cut)

    async def _moderations(
        self,
        send: Send,
        receive: Receive,
        payload: dict[str, Any],
        headers: dict[str, str],
        cut: bool,
    ) -> None:
        inputs = payload.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest("'input' must be a string or a non-empty array.", param="input")
        model = payload.get("model") or "omni-moderation-latest"
        if not isinstance(model, str):
            raise BadRequest("'model' must be a string.", param="model")
        results = [_moderation_result(text.content_text(item)) for item in inputs]
        body = {
            "id": "modr-" + os.urandom(12).hex(),
            "model": PINNED_VERSIONS.get(model, model),
            "results": results,
        }
        await _send_body(send, orjson.dumps(body), cut)

    async def _models(self, send: Send, path: str) -> None:
        names = self.options.models or DEFAULT_MODELS
        body = {"object": "list", "data": [_model_card(name) for name in names]}
        await _send_json(send, 200, body)

    async def _model(self, send: Send, path: str) -> None:
        name = path.removeprefix("/v1/models/")
        names = self.options.models or DEFAULT_MODELS
        if self.options.models is not None and name not in names:
            await _send_error(
                send,
                404,
                f"The model '{name}' does not exist",
                param="model",
                code="model_not_found",
            )
            return
        await _send_json(send, 200, _model_card(name))

    async def _stats(self, send: Send) -> None:
        await _send_json(send, 200, self.stats.snapshot())

    async def _recent(self, send: Send) -> None:
        await _send_json(send, 200, {"requests": self.recent_requests()})

    async def _reset(self, send: Send) -> None:
        self.reset()
        await _send_json(send, 200, {"reset": True})


def create_app(options: SimulatorOptions | None = None) -> Simulator:
    """The simulator as an ASGI app (its `.stats` and `.reset()` are usable in-process)."""
    return Simulator(options or SimulatorOptions())


# ---- request parsing ----------------------------------------------------------------------
def _n(payload: dict[str, Any]) -> int:
    n = payload.get("n", 1)
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise BadRequest(
            f"{n!r} is not valid for 'n': expected an integer from 1 to 128.", param="n"
        )
    return n


def _max_tokens(payload: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(
                f"{value!r} is not valid for '{name}': expected an integer >= 1.", param=name
            )
        return value
    return None


def _stop(payload: dict[str, Any]) -> list[str]:
    stop = payload.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return stop
    raise BadRequest("'stop' must be a string or an array of up to 4 strings.", param="stop")


def _prompts(prompt: Any) -> list[Any]:
    """A completions prompt: a string, a list of strings, a token list, or a list of token lists."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if all(
            isinstance(p, str) or (isinstance(p, list) and all(isinstance(t, int) for t in p))
            for p in prompt
        ):
            return prompt
    raise BadRequest(
        "'prompt' must be a string, an array of strings, or an array of token arrays.",
        param="prompt",
    )


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_tokens: int, completion_tokens: int, chat: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if chat:
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def _float_header(headers: dict[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1721172741, "owned_by": "system"}


def _moderation_result(content: str) -> dict[str, Any]:
    flagged = FLAG_MARKER in content
    flagged_categories = {"harassment", "violence"} if flagged else set()
    return {
        "flagged": flagged,
        "categories": {c: c in flagged_categories for c in MODERATION_CATEGORIES},
        "category_scores": {
            c: (0.97 if c in flagged_categories else 0.0001) for c in MODERATION_CATEGORIES
        },
        "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
    }


# ---- streaming ----------------------------------------------------------------------------
def _chat_chunks(
    response_id: str,
    created: int,
    model: str,
    generations: Sequence[text.Generation],
    usage: dict[str, Any],
    include_usage: bool,
) -> list[list[dict[str, Any]]]:
    """Chunks grouped by step: step 0 is the role, then one token per choice per step."""

    def choice(index: int, piece: str | None, finish: str | None = None) -> dict[str, Any]:
        delta = {} if piece is None else {"content": piece}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    envelope = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    opening = [
        {
            "index": i,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
        for i in range(len(generations))
    ]
    return _chunk_steps(envelope, generations, usage, include_usage, choice, opening)


def _completion_chunks(
    response_id: str,
    created: int,
    model: str,
    generations: Sequence[text.Generation],
    usage: dict[str, Any],
    include_usage: bool,
) -> list[list[dict[str, Any]]]:
    def choice(index: int, piece: str | None, finish: str | None = None) -> dict[str, Any]:
        content = "" if piece is None else piece
        return {"text": content, "index": index, "logprobs": None, "finish_reason": finish}

    envelope = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    return _chunk_steps(envelope, generations, usage, include_usage, choice, opening=[])


def _chunk_steps(
    envelope: dict[str, Any],
    generations: Sequence[text.Generation],
    usage: dict[str, Any],
    include_usage: bool,
    choice: Callable[[int, str | None, str | None], dict[str, Any]],
    opening: list[dict[str, Any]],
) -> list[list[dict[str, Any]]]:
    """One chunk per choice per step: the `opening` choices, a token each, then the finish reasons.

    `choice(index, piece, finish)` shapes a choice; `piece` is None in the closing step.
    """

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {**envelope, "choices": choices}
        if include_usage:
            out["usage"] = None  # OpenAI sends usage: null on every chunk but the last
        return out

    steps = [[chunk([c]) for c in opening]] if opening else []
    for position in range(max(len(g.pieces) for g in generations)):
        steps.append(
            [
                chunk([choice(i, g.pieces[position], None)])
                for i, g in enumerate(generations)
                if position < len(g.pieces)
            ]
        )
    final = [chunk([choice(i, None, g.finish_reason)]) for i, g in enumerate(generations)]
    if include_usage:
        usage_chunk = chunk([])
        usage_chunk["usage"] = usage
        final.append(usage_chunk)
    steps.append(final)
    return steps


async def _stream(
    send: Send,
    receive: Receive,
    steps: list[list[dict[str, Any]]],
    ttft_s: float,
    token_s: float,
    cut: bool,
) -> None:
    """Send SSE chunks step by step; a cut stream stops half way and drops the connection."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", _request_id()),
                *_RATELIMIT_OK_HEADERS,
            ],
        }
    )
    disconnected = asyncio.ensure_future(receive())
    cut_at = max(1, len(steps) // 2) if cut else None
    try:
        await _sleep(ttft_s)
        for number, step in enumerate(steps):
            if disconnected.done():
                return
            if number == cut_at:
                # Return without finishing the response: the server closes the connection.
                return
            if number > 1:
                await _sleep(token_s)
            payload = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in step)
            await send({"type": "http.response.body", "body": payload, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
    finally:
        disconnected.cancel()


# ---- responses ----------------------------------------------------------------------------
_RATELIMIT_OK_HEADERS: Headers = [
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-limit-tokens", b"10000000"),
    (b"x-ratelimit-remaining-tokens", b"9999000"),
    (b"x-ratelimit-reset-tokens", b"6ms"),
]


def _request_id() -> bytes:
    return b"req_" + os.urandom(16).hex().encode()


async def _send_json(
    send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", _request_id()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_body(send: Send, body: bytes, cut: bool) -> None:
    """A 200 JSON body; when cut, the connection drops after half of the promised bytes."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", _request_id()),
                (b"openai-processing-ms", b"1"),
                *_RATELIMIT_OK_HEADERS,
            ],
        }
    )
    if cut:
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        return
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send,
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    error = {"message": message, "type": error_type, "param": param, "code": code}
    await _send_json(send, status, {"error": error}, headers)


async def _send_invalid_key(send: Send) -> None:
    await _send_error(
        send,
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


_SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    504: "Gateway timeout.",
}


async def _send_fault(send: Send, fault: str, retry_after_s: float) -> None:
    if fault == "401":
        await _send_invalid_key(send)
        return
    if fault == "429":
        reset = format_duration(retry_after_s).encode()
        await _send_error(
            send,
            429,
            "Rate limit reached for requests. Please try again in " + reset.decode() + ".",
            error_type="requests",
            code="rate_limit_exceeded",
            headers=[
                (b"retry-after", str(math.ceil(retry_after_s)).encode()),
                (b"retry-after-ms", str(round(retry_after_s * 1000)).encode()),
                (b"x-ratelimit-limit-requests", b"10000"),
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-reset-requests", reset),
                (b"x-ratelimit-limit-tokens", b"10000000"),
                (b"x-ratelimit-remaining-tokens", b"9999000"),
                (b"x-ratelimit-reset-tokens", b"6ms"),
            ],
        )
        return
    status = int(fault)
    await _send_error(send, status, _SERVER_ERRORS[status], error_type="server_error")


class _StatusRecorder:
    """Wraps `send` to count response statuses."""

    __slots__ = ("_send", "_stats")

    def __init__(self, send: Send, stats: SimulatorStats) -> None:
        self._send = send
        self._stats = stats

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self._stats.by_status[message["status"]] += 1
        await self._send(message)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _hang(receive: Receive, seconds: float) -> None:
    """Hold the request like a stalled provider, ending early if the client gives up."""
    disconnected = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({disconnected}, timeout=seconds)
    finally:
        disconnected.cancel()


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# ---- running it ---------------------------------------------------------------------------
class SimulatorServer:
    """The simulator served by uvicorn on a loopback port in a background thread."""

    def __init__(
        self, options: SimulatorOptions | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(options)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=130,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="simulator",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, SimulatorOptions]:
    defaults = SimulatorOptions()
    parser = argparse.ArgumentParser(
        prog="python -m app.simulator", description="A simulated OpenAI-compatible provider."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--ttft-ms", type=float, default=defaults.ttft_ms, help="time to first token"
    )
    parser.add_argument("--token-ms", type=float, default=defaults.token_ms, help="delay per token")
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument(
        "--fault-kinds",
        default=",".join(defaults.fault_kinds),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout-fault-s", type=float, default=defaults.timeout_fault_s)
    parser.add_argument("--retry-after-s", type=float, default=defaults.retry_after_s)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        options = SimulatorOptions(
            ttft_ms=args.ttft_ms,
            token_ms=args.token_ms,
            fault_rate=args.fault_rate,
            fault_kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()),
            seed=args.seed,
            timeout_fault_s=args.timeout_fault_s,
            retry_after_s=args.retry_after_s,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args, options


def main(argv: Sequence[str] | None = None) -> None:
    args, options = parse_args(argv)
    text.vocabulary()  # load the tokenizer before the first request
    print(f"simulator on http://{args.host}:{args.port} {asdict(options)}", flush=True)
    uvicorn.run(
        create_app(options),
        host=args.host,
        port=args.port,
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=130,
    )


if __name__ == "__main__":
    main()
