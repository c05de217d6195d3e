"""Token counting, prices and the accounting month.

Token counts feed the tokens-per-minute limit and the worst-case budget reservation before a request
goes upstream, so counting sits on every request's path: tokenizers are loaded once per process and
counting goes straight to the Rust tokenizer of `bpe_openai` (tiktoken-compatible, offline).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from bpe_openai import _bindings

ENCODINGS: tuple[str, ...] = ("o200k_base", "cl100k_base")

# OpenAI cookbook "How to count tokens with tiktoken": every chat message costs 3 framing tokens
# (<|start|>{role/name}\n{content}<|end|>\n), a `name` one more, and every reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# Images are billed by size and detail, which the gateway cannot see without fetching them; these
# are the provider's figures for a low-detail image and a 1024x1024 high-detail one (85 + 4 * 170).
IMAGE_TOKENS_LOW_DETAIL = 85
IMAGE_TOKENS_HIGH_DETAIL = 765


@functools.cache
def _tokenizer(encoding: str) -> Any:
    """The Rust tokenizer for `encoding`, built once per process (building costs ~50 ms)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not supported; allowed: {', '.join(ENCODINGS)}")
    # `count` avoids materialising the token list and, unlike `Encoding.encode_ordinary`, has no
    # 200k-token / 1M-character guard that would raise instead of counting a large prompt.
    return _bindings.tokenizer_for_encoding(encoding)


def _utf8_safe(text: str) -> str:
    # Lone surrogates (possible in JSON "\ud800") cannot be encoded to UTF-8; count them as U+FFFD,
    # which is what the provider sees after decoding.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class TokenCounter:
    """Counts tokens like the provider does: plain text, and chat messages with their framing."""

    def __init__(self, preload: Iterable[str] = ENCODINGS) -> None:
        for encoding in preload:
            _tokenizer(encoding)

    def count_text(self, text: str, encoding: str = "o200k_base") -> int:
        if not text:
            return 0
        try:
            return _tokenizer(encoding).count(text)
        except UnicodeEncodeError:
            return _tokenizer(encoding).count(_utf8_safe(text))

    def count_messages(
        self, messages: Iterable[Mapping[str, Any]], encoding: str = "o200k_base"
    ) -> int:
        """Prompt tokens of a chat request's `messages`, framing and reply priming included."""
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for field, value in message.items():
                total += self._count_value(value, encoding)
                if field == "name":
                    total += TOKENS_PER_NAME
        return total

    def count_tools(self, tools: Iterable[Mapping[str, Any]], encoding: str = "o200k_base") -> int:
        """Estimated prompt tokens that `tools`/`functions` definitions add (their JSON)."""
        return sum(self.count_text(orjson.dumps(tool).decode(), encoding) for tool in tools)

    def _count_value(self, value: Any, encoding: str) -> int:
        if value is None:
            return 0
        if isinstance(value, str):
            return self.count_text(value, encoding)
        if isinstance(value, list):  # content parts or tool calls
            return sum(self._count_part(part, encoding) for part in value)
        if isinstance(value, Mapping):  # function_call, audio reference, ...
            return sum(self._count_value(inner, encoding) for inner in value.values())
        return self.count_text(str(value), encoding)

    def _count_part(self, part: Any, encoding: str) -> int:
        if not isinstance(part, Mapping):
            return self._count_value(part, encoding)
        kind = part.get("type")
        if kind == "text":
            return self.count_text(part.get("text") or "", encoding)
        if kind == "image_url":
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, Mapping) else None
            return IMAGE_TOKENS_LOW_DETAIL if detail == "low" else IMAGE_TOKENS_HIGH_DETAIL
        return sum(
            self._count_value(value, encoding) for key, value in part.items() if key != "type"
        )


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Price of one model in USD per million tokens."""

    input_usd_per_1m: float
    output_usd_per_1m: float

    def __post_init__(self) -> None:
        for field in ("input_usd_per_1m", "output_usd_per_1m"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")


class UnknownModelPrice(KeyError):
    """A cost was asked for a model that has no price."""

    def __str__(self) -> str:
        return str(self.args[0])


class PriceTable:
    """Per-model prices; costs are computed in USD."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def price(self, model: str) -> ModelPrice:
        try:
            return self._prices[model]
        except KeyError:
            known = ", ".join(sorted(self._prices)) or "none"
            message = f"no price for model {model!r}; priced models: {known}"
            raise UnknownModelPrice(message) from None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.price(model)
        return (
            prompt_tokens * price.input_usd_per_1m + completion_tokens * price.output_usd_per_1m
        ) / 1_000_000

    def worst_case(self, model: str, prompt_tokens: int, max_output_tokens: int) -> float:
        """The most a request can cost: every allowed output token generated.

        `max_output_tokens` is the total the request may generate, i.e. max_tokens * max(n, best_of)
        (times the number of prompts for a completions request).
        """
        return self.cost(model, prompt_tokens, max_output_tokens)


def month_key(now: float | None = None) -> str:
    """The accounting month of `now` (epoch seconds, default the current time) as "YYYY-MM", UTC."""
    moment = time.gmtime(time.time() if now is None else now)
    return f"{moment.tm_year:04d}-{moment.tm_mon:02d}"
