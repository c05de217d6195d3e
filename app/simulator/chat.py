"""`/v1/chat/completions` and `/v1/completions`: JSON answers and their SSE chunk streams."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from app.simulator import text
from app.simulator.model import SimulatedModel, is_reasoning
from app.simulator.stats import SimulatorStats
from app.simulator.wire import (
    RATELIMIT_OK_HEADERS,
    BadRequest,
    Receive,
    Request,
    Send,
    request_id,
    send_body,
    sleep,
)

SYSTEM_FINGERPRINT = "fp_sim0a1b2c3d"


class ChatRoutes:
    def __init__(self, model: SimulatedModel, stats: SimulatorStats) -> None:
        self.model = model
        self.stats = stats

    def observe_completions(self, payload: Any) -> None:
        """Prompts per received completions request, counted even when the request then fails."""
        if not isinstance(payload, dict):
            return
        try:
            count = len(prompts_of(payload.get("prompt")))
        except BadRequest:
            return
        self.stats.count_completions_prompts(count)

    async def chat(self, request: Request) -> None:
        payload = request.payload
        model = self.model.check_model(payload)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(
                "'messages' must be a non-empty array of message objects.", param="messages"
            )
        n = _n(payload)
        reasoning = self._reasoning_tokens(model, messages, payload)
        generations = self.model.generations(
            model,
            messages,
            request.headers,
            count=n,
            temperature=payload.get("temperature", 1),
            seed=payload.get("seed"),
            max_tokens=_max_tokens(payload),
            stop=_stop(payload),
            reasoning=reasoning,
        )
        prompt_tokens = text.count_message_tokens(messages)
        completion_tokens = sum(g.completion_tokens for g in generations) + reasoning * n
        usage = _usage(prompt_tokens, completion_tokens, chat=True)
        usage["prompt_tokens_details"]["cached_tokens"] = self.model.cached_prefix(
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

        await self._respond(request, model, generations, usage, body, chat=True)

    async def completions(self, request: Request) -> None:
        payload = request.payload
        model = self.model.check_model(payload)
        prompts = prompts_of(payload.get("prompt"))
        n = _n(payload)
        echo = payload.get("echo") is True
        generations: list[text.Generation] = []
        choice_texts: list[str] = []
        prompt_tokens = 0
        for prompt in prompts:
            prompt_tokens += text.count_prompt_tokens(prompt)
            for g in self.model.generations(
                model,
                prompt,
                request.headers,
                count=n,
                temperature=payload.get("temperature", 1),
                seed=payload.get("seed"),
                max_tokens=_max_tokens(payload),
                stop=_stop(payload),
            ):
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

        await self._respond(request, model, generations, usage, body, chat=False)

    def _reasoning_tokens(self, model: str, messages: Any, payload: dict[str, Any]) -> int:
        if payload.get("max_tokens") is not None and is_reasoning(model):
            raise BadRequest(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                param="max_tokens",
                code="unsupported_parameter",
            )
        return self.model.reasoning_tokens(
            model,
            messages,
            payload.get("reasoning_effort"),
            payload.get("seed"),
            _max_tokens(payload),
        )

    async def _respond(
        self,
        request: Request,
        model: str,
        generations: list[text.Generation],
        usage: dict[str, Any],
        body: Callable[[str, int], dict[str, Any]],
        *,
        chat: bool,
    ) -> None:
        """Stream the chunks or send `body` after the latency a real provider would take."""
        ttft, per_token = self.model.latency(request.headers)
        response_id = ("chatcmpl-" if chat else "cmpl-") + os.urandom(15).hex()[:29]
        created = int(time.time())
        payload = request.payload
        if payload.get("stream"):
            chunks = _chat_chunks if chat else _completion_chunks
            steps = chunks(response_id, created, model, generations, usage, _include_usage(payload))
            await _stream(request.send, request.receive, steps, ttft, per_token, request.cut)
            return
        await sleep(ttft + per_token * max(len(g.pieces) for g in generations))
        await send_body(request.send, orjson.dumps(body(response_id, created)), request.cut)


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


def prompts_of(prompt: Any) -> list[Any]:
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
    await sse_stream(
        send,
        receive,
        [b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in step) for step in steps],
        ttft_s,
        token_s,
        cut,
        done=b"data: [DONE]\n\n",
    )


async def sse_stream(
    send: Send,
    receive: Receive,
    frames: list[bytes],
    ttft_s: float,
    token_s: float,
    cut: bool,
    done: bytes = b"",
) -> None:
    """Send encoded SSE frames: the first after `ttft_s`, the next ones `token_s` apart (the
    second comes at once: it holds the first token). A cut stream stops half way, without
    `done`, and the connection drops; a client that leaves ends it."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", request_id()),
                *RATELIMIT_OK_HEADERS,
            ],
        }
    )
    disconnected = asyncio.ensure_future(receive())
    cut_at = max(1, len(frames) // 2) if cut else None
    try:
        await sleep(ttft_s)
        for number, frame in enumerate(frames):
            if disconnected.done():
                return
            if number == cut_at:
                # Return without finishing the response: the server closes the connection.
                return
            if number > 1:
                await sleep(token_s)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": done, "more_body": False})
    finally:
        disconnected.cancel()
