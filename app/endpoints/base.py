"""What a generation endpoint kind tells the shared pipeline (app/pipeline.py).

The pipeline runs the same steps for every kind: auth, read, validate, count, admit together with
the cache lookup, moderate, call, respond, then settle, fill the cache and count. Each kind says
only what differs: how its body is validated and counted, which fields make its cache key, which
path it calls, how its answer and stream carry usage, how a cached answer is served again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from app.accounting import TokenCounter, TokenUsage
from app.cache import Lookup
from app.config import ModelsConfig
from app.context import Ctx
from app.errors import ApiError
from app.replay import as_hit, replay
from app.schemas import ParsedRequest, apply_token_limits
from app.streaming import StreamRelay, error_event

if TYPE_CHECKING:
    from app.auth import ClientKey
    from app.pipeline import Pipeline


class GenerationEndpoint:
    """An OpenAI generation route: its name (route label and kind) and its upstream path."""

    name: str
    path: str
    moderated = True  # its input goes to the moderation model when upstream.moderation is on
    caches_items = False  # True: the kind caches parts of a request itself, in `respond`
    # Whether a provider stream event is its last; None: `data: [DONE]`.
    stream_end: Callable[[bytes], bool] | None = None
    # True: its requests name or make stored objects (app/object_owners.py): the pipeline calls
    # `check_objects` before admission and `track_objects` on each stream (others: this check).
    stores_objects = False

    def validate(self, body: dict[str, Any], models: ModelsConfig) -> ParsedRequest:
        raise NotImplementedError

    def count(self, counter: TokenCounter, parsed: ParsedRequest) -> tuple[int, int]:
        """(tokens of the largest prompt, tokens of all prompts together)."""
        raise NotImplementedError

    def limit_tokens(self, parsed: ParsedRequest, prompt_tokens: int, policy: str) -> None:
        """Check the prompt against the context window and set the completion cap."""
        apply_token_limits(parsed, prompt_tokens, policy)

    def prompt_for_log(self, parsed: ParsedRequest) -> Any:
        """What the access log records as the prompt when server.log_prompts is on."""
        raise NotImplementedError

    def moderation_text(self, parsed: ParsedRequest) -> str:
        raise NotImplementedError

    def canonical(self, body: dict[str, Any], model: str) -> dict[str, Any] | None:
        """The request reduced to what determines its answer: the cache key's input.

        None: this request can never be replayed honestly, and is never cached (not even when
        the client forces the cache).
        """
        raise NotImplementedError

    def completion_for_log(self, response: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def check_objects(
        self, pipeline: Pipeline, parsed: ParsedRequest, key: ClientKey
    ) -> None:
        """Refuse a request naming a stored object its key may not reach."""

    def track_objects(
        self, pipeline: Pipeline, parsed: ParsedRequest, relay: Any, ctx: Ctx
    ) -> None:
        """Record the owner of what a stream makes, as its events pass."""

    def stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body sent upstream for a stream: with usage (what the budget settles on)."""
        options = {**(body.get("stream_options") or {}), "include_usage": True}
        return {**body, "stream_options": options}

    def relay(self, parsed: ParsedRequest, keep_for_cache: bool) -> StreamRelay:
        return StreamRelay(self.name, parsed.include_usage, keep_for_cache=keep_for_cache)

    def stream_usage(self, relay: StreamRelay) -> TokenUsage | None:
        """The usage the provider's stream reported; None when it never came (a broken stream)."""
        return TokenUsage.of(relay.usage) if relay.usage else None

    def usage(self, response: dict[str, Any]) -> TokenUsage:
        return TokenUsage.of(response.get("usage"))

    def error_event(self, error: ApiError, relay: StreamRelay) -> bytes:
        """The in-band event that ends a stream the provider broke off (after `relay`'s)."""
        return error_event(error)

    def as_hit(self, cached: bytes) -> tuple[dict[str, Any], dict[str, str]]:
        """A cached answer under a fresh id, and the header naming the stored answer's id."""
        return as_hit(cached, self.name)

    def replay(self, response: dict[str, Any], parsed: ParsedRequest) -> list[bytes]:
        """A cached (JSON) answer as the events a live stream of it would have been."""
        return replay(response, self.name, parsed.include_usage)

    async def respond(
        self,
        pipeline: Pipeline,
        parsed: ParsedRequest,
        body: dict[str, Any],
        reservation: Any,
        cache_key: str | None,
        ctx: Ctx,
        found: Lookup,
    ) -> Response:
        """A JSON (not streamed) answer, after admission: single flight over one `call`."""
        return await pipeline.complete(self, parsed, body, reservation, cache_key, ctx, found)

    async def call(
        self, pipeline: Pipeline, parsed: ParsedRequest, body: dict[str, Any], ctx: Ctx
    ) -> tuple[bytes, str]:
        """One upstream call: the answer's bytes and the model that served it."""
        reply = await pipeline.upstream.post_json(
            self.path, body, parsed.model, ctx.stats, pipeline.forward_headers(ctx)
        )
        return reply.body, reply.model
