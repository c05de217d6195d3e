"""The Responses API: `POST /v1/responses` (JSON, `stream: true` events, `background: true`),
stored responses (`GET`/`DELETE /v1/responses/{id}`, `/cancel`, `/input_items`), the
`previous_response_id` chain and `POST /v1/responses/input_tokens`.

A stored response keeps the conversation a continuation sees (earlier turns, its input, its
output); the store keeps the last `stored_responses` of them. Usage is counted like the chat
path's (the conversation as chat messages), with the provider's prompt cache and reasoning tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from app.simulator import text
from app.simulator.chat import sse_stream
from app.simulator.model import SimulatedModel, is_reasoning
from app.simulator.options import SimulatorOptions
from app.simulator.responses_input import (
    chat_messages,
    function_to_call,
    input_items,
    pieces,
    validate,
    value_for_schema,
)
from app.simulator.responses_output import (
    item_text,
    json_schema,
    message_item,
    reasoning_item,
    response_object,
    response_usage,
    stream_frames,
)
from app.simulator.wire import (
    BadRequest,
    Request,
    Route,
    keep_last,
    list_page,
    not_found,
    object_id,
    send_json,
    send_result,
    sleep,
)

TERMINAL = ("completed", "incomplete", "failed", "cancelled")


@dataclass
class StoredResponse:
    response: dict[str, Any]  # as GET answers it now
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]]  # what a continuation sees: earlier turns, input, output
    task: asyncio.Task[None] | None = None  # a background response still being generated


@dataclass
class Plan:
    """A create request, read: the model, its items and the whole conversation."""

    model: str
    items: list[dict[str, Any]]
    context: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    input_tokens: int


@dataclass
class Answer:
    output: list[dict[str, Any]]
    usage: dict[str, Any]
    incomplete: bool
    streamed: dict[str, list[str]]  # item id -> the deltas its text or arguments arrive in


class ResponsesRoutes:
    def __init__(self, model: SimulatedModel, options: SimulatorOptions) -> None:
        self.model = model
        self.options = options
        self.store: OrderedDict[str, StoredResponse] = OrderedDict()

    def routes(self) -> list[Route]:
        template = "/v1/responses/{response_id}"
        return [
            Route("POST", "/v1/responses", self.create),
            Route("POST", "/v1/responses/input_tokens", self.input_tokens),
            Route("GET", template, self.retrieve, body="none"),
            Route("DELETE", template, self.delete, body="none"),
            Route("POST", template + "/cancel", self.cancel, body="optional"),
            Route("GET", template + "/input_items", self.list_input_items, body="none"),
        ]

    def close(self) -> None:
        """Stop the background responses still being generated (callable from any thread:
        tests reset the simulator from theirs)."""
        for entry in self.store.values():
            if entry.task is not None:
                entry.task.get_loop().call_soon_threadsafe(entry.task.cancel)

    # ---- create ---------------------------------------------------------------------------
    async def create(self, request: Request) -> None:
        payload = request.payload
        plan = self._plan(payload, require_model=True)
        store = payload.get("store") is not False
        background = payload.get("background") is True
        if background and not store:
            raise BadRequest(
                "Invalid value for 'background': background mode requires 'store' to be true.",
                param="background",
            )
        answer = self._answer(plan, payload, request.headers)
        response_id = object_id("resp_", 24)
        created = int(time.time())
        final = response_object(
            response_id,
            created,
            payload,
            plan.model,
            answer.output,
            answer.usage,
            answer.incomplete,
            store,
            background,
        )
        started = {**final, "status": "in_progress", "output": [], "usage": None}
        started.update(completed_at=None, incomplete_details=None)
        entry = StoredResponse(started, plan.items, plan.context + answer.output)
        if store:
            self._keep(response_id, entry)
        ttft, per_token = self.model.latency(request.headers)
        steps = max((len(p) for p in answer.streamed.values()), default=0)
        if background and not payload.get("stream"):
            entry.response = {**started, "status": "queued"}
            entry.task = asyncio.ensure_future(
                self._finish_later(entry, final, ttft, per_token * steps)
            )
            await send_json(request.send, 200, entry.response)
            return
        if payload.get("stream"):
            frames = stream_frames(started, final, answer.streamed)
            await sse_stream(request.send, request.receive, frames, ttft, per_token, request.cut)
            entry.response = final
            return
        await sleep(ttft + per_token * steps)
        entry.response = final
        await send_result(request, final)

    def _plan(self, payload: dict[str, Any], *, require_model: bool) -> Plan:
        model = (
            self.model.check_model(payload)
            if require_model or payload.get("model") is not None
            else ""
        )
        validate(payload)
        previous = payload.get("previous_response_id")
        earlier: list[dict[str, Any]] = []
        if previous is not None:
            entry = self.store.get(previous)
            if entry is None:
                raise BadRequest(
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            earlier = entry.context
        raw_input = payload.get("input")
        if raw_input is None and previous is None:
            raise BadRequest(
                "Missing required parameter: 'input'.",
                param="input",
                code="missing_required_parameter",
            )
        items = input_items(raw_input) if raw_input is not None else []
        context = earlier + items
        messages = chat_messages(payload.get("instructions"), context)
        return Plan(model, items, context, messages, text.count_message_tokens(messages))

    def _answer(self, plan: Plan, payload: dict[str, Any], headers: dict[str, str]) -> Answer:
        model, messages = plan.model, plan.messages
        cap = payload.get("max_output_tokens")
        reasoning_config = (
            payload.get("reasoning") if isinstance(payload.get("reasoning"), dict) else {}
        )
        seed = payload.get("seed")
        reasoning = self.model.reasoning_tokens(
            model, messages, reasoning_config.get("effort"), seed, cap
        )
        output: list[dict[str, Any]] = []
        streamed: dict[str, list[str]] = {}
        if is_reasoning(model):
            output.append(reasoning_item(messages, payload.get("include")))
        room = None if cap is None else cap - reasoning
        tool = function_to_call(
            payload.get("tools") or [], payload.get("tool_choice"), plan.context
        )
        incomplete = room is not None and room <= 0  # the reasoning used the whole cap
        written = 0
        if not incomplete:
            if tool is not None:
                item, deltas, written = self._function_call(model, messages, tool, seed)
            else:
                item, deltas, written, incomplete = self._text(plan, payload, headers, reasoning)
            if item is not None:
                output.append(item)
                streamed[item["id"]] = deltas
        cached = self.model.cached_prefix(model, messages, plan.input_tokens)
        usage = response_usage(plan.input_tokens, cached, written + reasoning, reasoning)
        return Answer(output, usage, incomplete, streamed)

    def _function_call(
        self, model: str, messages: list[dict[str, Any]], tool: dict[str, Any], seed: Any
    ) -> tuple[dict[str, Any], list[str], int]:
        """A call of `tool` with arguments that fit its parameters: (item, deltas, tokens)."""
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        call_seed = text.seed_for(model, messages, tool["name"], seed, self.options.seed)
        arguments = orjson.dumps(value_for_schema(parameters, call_seed)).decode()
        item = {
            "id": object_id("fc_", 24),
            "type": "function_call",
            "status": "completed",
            "arguments": arguments,
            "call_id": object_id("call_"),
            "name": tool["name"],
        }
        written = text.count_tokens(tool["name"]) + text.count_tokens(arguments)
        return item, pieces(arguments), written

    def _text(
        self, plan: Plan, payload: dict[str, Any], headers: dict[str, str], reasoning: int
    ) -> tuple[dict[str, Any] | None, list[str], int, bool]:
        """The assistant's message (JSON fitting the schema when structured output is asked):
        (item or None when nothing fit, deltas, tokens, cut by max_output_tokens)."""
        seed = payload.get("seed")
        generation = self.model.generations(
            plan.model,
            plan.messages,
            headers,
            temperature=payload.get("temperature", 1),
            seed=seed,
            max_tokens=payload.get("max_output_tokens"),
            reasoning=reasoning,
        )[0]
        content, deltas = generation.text, list(generation.pieces)
        incomplete = generation.finish_reason == "length"
        schema = json_schema(payload.get("text"))
        if schema is not None:
            json_seed = text.seed_for(plan.model, plan.messages, "json", seed, self.options.seed)
            content = orjson.dumps(value_for_schema(schema, json_seed)).decode()
            deltas, incomplete = pieces(content), False
        if not content and incomplete:
            return None, [], 0, True
        item = message_item(content, "incomplete" if incomplete else "completed")
        return item, deltas, text.count_tokens(content), incomplete

    async def _finish_later(
        self, entry: StoredResponse, final: dict[str, Any], ttft: float, generating: float
    ) -> None:
        """A background response: queued, in progress after the time to first token, done
        after its tokens; a cancel stops it on the way."""
        await sleep(ttft)
        entry.response = {**entry.response, "status": "in_progress"}
        await sleep(generating)
        entry.response = final
        entry.task = None

    def _keep(self, response_id: str, entry: StoredResponse) -> None:
        for dropped in keep_last(self.store, response_id, entry, self.options.stored_responses):
            if dropped.task is not None:
                dropped.task.cancel()

    # ---- stored responses -----------------------------------------------------------------
    def _stored(self, request: Request) -> tuple[str, StoredResponse]:
        response_id = request.param("response_id")
        entry = self.store.get(response_id)
        if entry is None:
            raise not_found(f"Response with id '{response_id}' not found.")
        return response_id, entry

    async def retrieve(self, request: Request) -> None:
        _, entry = self._stored(request)
        response = entry.response
        if request.query().get("stream") == "true" and response["status"] in TERMINAL:
            streamed = {
                item["id"]: pieces(item_text(item))
                for item in response["output"]
                if item["type"] in ("message", "function_call")
            }
            started = {**response, "status": "in_progress", "output": [], "usage": None}
            frames = stream_frames(started, response, streamed)
            await sse_stream(request.send, request.receive, frames, 0, 0, request.cut)
            return
        await send_json(request.send, 200, response)

    async def delete(self, request: Request) -> None:
        response_id, entry = self._stored(request)
        del self.store[response_id]
        if entry.task is not None:
            entry.task.cancel()
        await send_result(request, {"id": response_id, "object": "response", "deleted": True})

    async def cancel(self, request: Request) -> None:
        _, entry = self._stored(request)
        if not entry.response.get("background"):
            raise BadRequest("Cannot cancel a synchronous response.")
        if entry.response["status"] not in TERMINAL:
            if entry.task is not None:
                entry.task.cancel()
                entry.task = None
            entry.response = {**entry.response, "status": "cancelled"}
        await send_result(request, entry.response)

    async def list_input_items(self, request: Request) -> None:
        _, entry = self._stored(request)
        await send_json(request.send, 200, list_page(entry.input_items, request.query()))

    async def input_tokens(self, request: Request) -> None:
        plan = self._plan(request.payload, require_model=False)
        body = {"object": "response.input_tokens", "input_tokens": plan.input_tokens}
        await send_result(request, body)
