"""A cached answer replayed as a stream is the same answer.

A recording provider returns answers of many shapes (tool calls, logprobs, refusals, a legacy
function_call, n > 1 with mixed finish reasons); the official openai SDK asks the gateway for each
once as JSON (`create()`, a cache miss) and once as a stream (`chat.completions.stream()`, a cache
hit replayed) and the accumulated stream must equal the JSON answer field by field. Streamed
answers (split the way a provider splits them) are cached too: the JSON hit and the replay equal
what the SDK accumulated from the live stream. Ignored: the response `id` (a hit has its own, the
stored one is in x-liftoff-cache-origin-id) and what the SDK's accumulation itself adds to any
provider stream (`message.parsed`, a tool call's `index` and `function.parsed_arguments`; a live
stream's per-chunk `obfuscation` padding). langchain-openai's `bind_tools(...).stream()` rebuilds
the tool calls that `invoke()` returned.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.replay import replay
from app.server import create_app
from tests.app.gateway_harness import ALICE, PROVIDER_KEY, client_keys_json, make_config, served

MODEL = "gpt-4o-mini-2024-07-18"
SDK_ADDED = ("parsed",)  # message fields the SDK's stream helper adds to any provider stream
CORPUS_SIZE = 80


class RecordingProvider:
    """Answers each chat request with the answer registered for its last message; records the
    requests it receives."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        answer = self.answers[body["messages"][-1]["content"]]
        if body.get("stream"):
            events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in provider_stream(answer)]
            events.append(b"data: [DONE]\n\n")
            return StreamingResponse(iter(events), media_type="text/event-stream")
        return Response(orjson.dumps(answer), media_type="application/json")


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _choice_deltas(choice: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """(delta, logprobs) pairs for one choice, split as a provider splits them: text per token
    with its logprob, tool call and function arguments in small fragments."""
    message = choice["message"]
    logprobs = choice["logprobs"] or {}
    first = {"role": "assistant", "content": "" if isinstance(message["content"], str) else None}
    first["refusal"] = None
    out: list[tuple[dict[str, Any], Any]] = [(first, None)]
    for name in ("content", "refusal"):
        tokens = logprobs.get(name)
        if tokens:
            out += [
                (
                    {name: t["token"]},
                    {name: [t], "refusal" if name == "content" else "content": None},
                )
                for t in tokens
            ]
        elif message.get(name):
            out += [({name: piece}, None) for piece in _split(message[name], 3)]
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        header = {
            **call,
            "index": position,
            "function": {"name": function["name"], "arguments": ""},
        }
        out.append(({"tool_calls": [header]}, None))
        out += [
            ({"tool_calls": [{"index": position, "function": {"arguments": piece}}]}, None)
            for piece in _split(function["arguments"], 5)
        ]
    if message.get("function_call"):
        function = message["function_call"]
        out.append(({"function_call": {"name": function["name"], "arguments": ""}}, None))
        out += [
            ({"function_call": {"arguments": p}}, None) for p in _split(function["arguments"], 5)
        ]
    return out


def provider_stream(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a provider streaming `answer`, choices interleaved, usage last."""
    top = {k: v for k, v in answer.items() if k not in ("object", "choices", "usage")}
    top["object"] = "chat.completion.chunk"
    per_choice = []
    for choice in answer["choices"]:
        pieces = [
            {"index": choice["index"], "delta": delta, "logprobs": lp, "finish_reason": None}
            for delta, lp in _choice_deltas(choice)
        ]
        pieces.append(
            {
                "index": choice["index"],
                "delta": {},
                "logprobs": None,
                "finish_reason": choice["finish_reason"],
            }
        )
        per_choice.append(pieces)
    chunks = []
    for step in range(max(len(p) for p in per_choice)):
        for pieces in per_choice:
            if step < len(pieces):
                chunks.append({**top, "obfuscation": f"pad{step}", "choices": [pieces[step]]})
    chunks.append({**top, "obfuscation": "end", "choices": [], "usage": answer["usage"]})
    return chunks


# --- a corpus of answers ------------------------------------------------------------------------


def _text(rng: random.Random) -> str:
    words = ["Hello", "world", "naïve", "café", "日本語", "emoji 🚀", "a\nb", '"quoted"', "{json}"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))


def _token_logprobs(rng: random.Random, text: str) -> list[dict[str, Any]]:
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]

    def entry(token: str) -> dict[str, Any]:
        return {
            "token": token,
            "logprob": -rng.random() * 3,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": -rng.random() * 5, "bytes": list(t.encode())}
                for t in rng.sample(["a", "b", "c", "d"], rng.randint(0, 2))
            ],
        }

    return [entry(p) for p in pieces]


def _tool_call(rng: random.Random) -> dict[str, Any]:
    arguments = orjson.dumps({"city": _text(rng), "days": rng.randint(1, 9)}).decode()
    return {
        "id": "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24)),
        "type": "function",
        "function": {
            "name": rng.choice(["get_weather", "lookup", "send_mail"]),
            "arguments": arguments,
        },
    }


def _choice(rng: random.Random, index: int, finish: str) -> dict[str, Any]:
    shape = rng.choice(
        ["text", "tool_calls", "text+tool_calls", "refusal", "function_call", "empty"]
    )
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if rng.random() < 0.5:
        message["annotations"] = []
    logprobs: dict[str, Any] | None = None
    if shape in ("text", "text+tool_calls", "empty"):
        message["content"] = "" if shape == "empty" else _text(rng)
        if rng.random() < 0.5:
            logprobs = {"content": _token_logprobs(rng, message["content"]), "refusal": None}
    if shape in ("tool_calls", "text+tool_calls"):
        message["tool_calls"] = [_tool_call(rng) for _ in range(rng.randint(1, 3))]
    if shape == "refusal":
        message["refusal"] = "I can't help with that: " + _text(rng)
        if rng.random() < 0.5:
            logprobs = {"content": None, "refusal": _token_logprobs(rng, message["refusal"])}
    if shape == "function_call":
        call = _tool_call(rng)["function"]
        message["function_call"] = call
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def make_answer(rng: random.Random, number: int) -> dict[str, Any]:
    finishes = ["stop", "tool_calls", "function_call", "length", "content_filter"]
    n = rng.choice([1, 1, 2, 3])
    answer: dict[str, Any] = {
        "id": f"chatcmpl-corpus{number:04d}",
        "object": "chat.completion",
        "created": 1_700_000_000 + number,
        "model": MODEL,
        "choices": [_choice(rng, i, rng.choice(finishes)) for i in range(n)],
        "usage": {
            "prompt_tokens": rng.randint(1, 99),
            "completion_tokens": rng.randint(1, 99),
            "total_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": rng.choice([None, "fp_corpus"]),
    }
    if rng.random() < 0.5:
        answer["service_tier"] = "default"
    usage = answer["usage"]
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return answer


def corpus() -> list[dict[str, Any]]:
    rng = random.Random(20261201)
    answers = [make_answer(rng, i) for i in range(CORPUS_SIZE)]
    choices = [c for a in answers for c in a["choices"]]
    # The corpus covers every shape the issue names.
    assert any("tool_calls" in c["message"] for c in choices)
    assert any("function_call" in c["message"] for c in choices)
    assert any(c["message"]["refusal"] for c in choices)
    assert any(c["logprobs"] and c["logprobs"]["content"] for c in choices)
    assert any(c["logprobs"] and c["logprobs"]["refusal"] for c in choices)
    assert any(len({c["finish_reason"] for c in a["choices"]}) > 1 for a in answers)
    return answers


# --- the gateway in front of the recording provider --------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[RecordingProvider]:
    recorder = RecordingProvider()
    with served(recorder.app) as url:
        recorder.url = url.removesuffix("/v1")
        yield recorder


@pytest.fixture(scope="module")
def gateway_url(provider: RecordingProvider) -> Iterator[str]:
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF_CLIENT_KEYS": client_keys_json(alice={"rpm": 100_000, "tpm": 100_000_000}),
    }
    with served(create_app(make_config(provider.url), env)) as url:
        yield url


def comparable(completion: Any) -> dict[str, Any]:
    """The completion as data, without its id and what the SDK's accumulation adds."""
    data = completion.model_dump(mode="json")
    del data["id"]
    data.pop("obfuscation", None)
    for choice in data["choices"]:
        message = choice["message"]
        for name in SDK_ADDED:
            message.pop(name, None)
        for call in message.get("tool_calls") or []:
            call.pop("index", None)
            call["function"].pop("parsed_arguments", None)
    return data


def ask(provider: RecordingProvider, answer: dict[str, Any], prompt: str) -> list[dict]:
    provider.answers[prompt] = answer
    return [{"role": "user", "content": prompt}]


def test_every_cached_answer_replays_as_the_same_answer(gateway_url, provider):
    client = openai.OpenAI(base_url=gateway_url, api_key=ALICE, max_retries=0, timeout=30)
    sdk_final = 0
    for number, answer in enumerate(corpus()):
        messages = ask(provider, answer, f"corpus answer {number}")
        expected = client.chat.completions.create(model="fast", messages=messages, temperature=0)
        assert expected.id == answer["id"]
        with client.chat.completions.stream(
            model="fast",
            messages=messages,
            temperature=0,
            stream_options={"include_usage": True},
        ) as stream:
            chunks = [event.chunk for event in stream if event.type == "chunk"]
            headers = stream._response.headers
            snapshot = stream.current_completion_snapshot
            finishes = {c.finish_reason for c in expected.choices}
            if finishes & {"length", "content_filter"}:
                # The SDK's helper refuses these finish reasons for any stream; its accumulated
                # snapshot is what it would have parsed.
                with pytest.raises(
                    (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError)
                ):
                    stream.get_final_completion()
                final = snapshot
            else:
                final = stream.get_final_completion()
                sdk_final += 1
        assert headers["x-liftoff-cache"] == "hit", number
        assert headers["x-liftoff-cache-origin-id"] == expected.id
        assert comparable(final) == comparable(expected), number
        # Every chunk carries the hit's own id.
        assert len({c.id for c in chunks}) == 1 and chunks[0].id != expected.id
        assert chunks[0].id.startswith("chatcmpl-") and final.id == chunks[0].id
    assert sdk_final >= CORPUS_SIZE // 4  # get_final_completion() itself compared often enough
    assert len(provider.requests) >= CORPUS_SIZE  # each answer was asked of the provider once


def accumulate(client: openai.OpenAI, messages: list[dict]) -> tuple[Any, Any]:
    """chat.completions.stream() with usage: (what the SDK rebuilt, the stream's headers)."""
    with client.chat.completions.stream(
        model="fast", messages=messages, temperature=0, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        finishes = {c.finish_reason for c in stream.current_completion_snapshot.choices}
        if finishes & {"length", "content_filter"}:
            return stream.current_completion_snapshot, stream._response.headers
        return stream.get_final_completion(), stream._response.headers


def test_streamed_answers_are_cached_as_what_the_sdk_rebuilt_from_them(gateway_url, provider):
    client = openai.OpenAI(base_url=gateway_url, api_key=ALICE, max_retries=0, timeout=30)
    asked = len(provider.requests)
    answers = corpus()[: CORPUS_SIZE // 2]
    for number, answer in enumerate(answers):
        messages = ask(provider, answer, f"streamed answer {number}")
        live, live_headers = accumulate(client, messages)
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=messages, temperature=0
        )
        replayed, replay_headers = accumulate(client, messages)
        assert live_headers["x-liftoff-cache"] == "miss"
        assert raw.headers["x-liftoff-cache"] == replay_headers["x-liftoff-cache"] == "hit", number
        assert raw.headers["x-liftoff-cache-origin-id"] == answer["id"]
        assert comparable(raw.parse()) == comparable(live), number
        assert comparable(replayed) == comparable(live), number
        assert raw.parse().choices[0].message.role == "assistant"
    assert len(provider.requests) - asked == len(answers)  # only the live streams reached it


def test_replay_without_usage_is_the_answer_without_usage(gateway_url, provider):
    client = openai.OpenAI(base_url=gateway_url, api_key=ALICE, max_retries=0, timeout=30)
    answer = make_answer(random.Random(7), 900)
    answer["choices"] = [_choice(random.Random(3), 0, "tool_calls")]
    answer["choices"][0]["message"]["tool_calls"] = [_tool_call(random.Random(i)) for i in range(2)]
    messages = ask(provider, answer, "no usage please")
    expected = client.chat.completions.create(model="fast", messages=messages, temperature=0)
    with client.chat.completions.stream(model="fast", messages=messages, temperature=0) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.usage is None
    assert {**comparable(final), "usage": None} == {**comparable(expected), "usage": None}
    assert [c.function.name for c in final.choices[0].message.tool_calls] == [
        c["function"]["name"] for c in answer["choices"][0]["message"]["tool_calls"]
    ]


def test_langchain_bind_tools_stream_rebuilds_the_tool_calls(gateway_url, provider):
    answer = make_answer(random.Random(11), 901)
    answer["choices"] = [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [_tool_call(random.Random(i)) for i in (1, 2)],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    prompt = "weather in two cities"
    provider.answers[prompt] = answer

    def get_weather(city: str, days: int) -> str:
        """The forecast for a city."""
        return city

    model = ChatOpenAI(
        base_url=gateway_url, api_key=ALICE, model="fast", temperature=0, max_retries=0
    ).bind_tools([get_weather])
    invoked = model.invoke(prompt)
    streamed: AIMessageChunk | None = None
    for chunk in model.stream(prompt):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert len(invoked.tool_calls) == 2
    assert streamed.tool_calls == invoked.tool_calls
    assert streamed.content == invoked.content
    assert streamed.response_metadata["finish_reason"] == "tool_calls"


def test_replayed_tool_call_chunks_have_the_provider_shape():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
    answer = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "tool_calls": [call]},
                "logprobs": lp,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    events = replay(answer, "chat", include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert all(
        c["object"] == "chat.completion.chunk" and c["service_tier"] == "default" for c in chunks
    )
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Hi"} and chunks[1]["choices"][0]["logprobs"] == lp
    assert deltas[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            }
        ]
    }
    assert deltas[3] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}
    assert chunks[4]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["total_tokens"] == 3


def test_replayed_completion_carries_its_logprobs():
    logprobs = {
        "tokens": ["Hi"],
        "token_logprobs": [-0.5],
        "top_logprobs": None,
        "text_offset": [0],
    }
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"index": 0, "text": "Hi", "logprobs": logprobs, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in replay(answer, "completions", False)[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["Hi", ""]
    assert chunks[0]["choices"][0]["logprobs"] == logprobs
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
