"""The simulated model behind every text endpoint: which names it serves, how long it takes, what
it writes, how long it thinks and what the provider's prompt cache already holds."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from app.simulator import text
from app.simulator.options import (
    PINNED_VERSIONS,
    REASONING_PREFIXES,
    REASONING_TOKENS,
    SimulatorOptions,
)
from app.simulator.wire import BadRequest, float_header

# The provider's prompt cache: prefixes of 1024 tokens and more, matched in 128-token steps.
PROMPT_CACHE_MIN_TOKENS = 1024
PROMPT_CACHE_STEP = 128
PROMPT_CACHE_ENTRIES = 50_000


def is_reasoning(model: str) -> bool:
    return model.startswith(REASONING_PREFIXES)


class SimulatedModel:
    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self._prompt_prefixes: OrderedDict[bytes, None] = OrderedDict()

    def check_model(self, payload: dict[str, Any]) -> str:
        """The model the request names, as the provider answers it (pinned version)."""
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

    def latency(self, headers: dict[str, str]) -> tuple[float, float]:
        """(time to first token, delay per token) in seconds."""
        ttft = float_header(headers, "x-simulator-ttft-ms", self.options.ttft_ms)
        token = float_header(headers, "x-simulator-token-ms", self.options.token_ms)
        return ttft / 1000, token / 1000

    def natural_length(self, seed: int, headers: dict[str, str]) -> int:
        forced = headers.get("x-simulator-tokens")
        if forced is not None and forced.isdigit() and int(forced) > 0:
            return int(forced)
        low, high = self.options.length_range
        return low + seed % (high - low + 1)

    def generations(
        self,
        model: str,
        input_key: Any,
        headers: dict[str, str],
        *,
        count: int = 1,
        temperature: Any = 1,
        seed: Any = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        reasoning: int = 0,
    ) -> list[text.Generation]:
        """`count` answers to `input_key`; greedy decoding (temperature 0) makes them equal."""
        if max_tokens is not None:
            max_tokens -= reasoning  # reasoning comes first and counts against the cap
        base = text.seed_for(model, input_key, seed, temperature, self.options.seed)
        length = self.natural_length(base, headers)
        out = []
        for index in range(count):
            choice_seed = base if temperature == 0 else text.seed_for(base, index)
            out.append(text.generate(choice_seed, length, max_tokens, stop))
        return out

    def reasoning_tokens(
        self, model: str, input_key: Any, effort: Any, seed: Any, cap: int | None
    ) -> int:
        """Hidden reasoning tokens per answer: by effort (default medium), within the cap."""
        if not is_reasoning(model):
            return 0
        base = REASONING_TOKENS.get(effort or "medium", 192)
        digest = text.seed_for(model, input_key, seed, self.options.seed)
        tokens = base + (digest % (base + 1))
        return tokens if cap is None else min(tokens, cap)

    def cached_prefix(self, model: str, messages: Any, prompt_tokens: int) -> int:
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
