"""Token counting, prices and the accounting month.

Token counts feed the tokens-per-minute limit and the worst-case budget reservation before a request
goes upstream, so counting sits on every request's path: tokenizers are loaded once per process and
counting goes straight to the Rust tokenizer of `bpe_openai` (tiktoken-compatible, offline).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import importlib.util
import math
import mmap
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import orjson

from app.parts import part_tokens

ENCODINGS: tuple[str, ...] = ("o200k_base", "cl100k_base")

# OpenAI cookbook "How to count tokens with tiktoken": every chat message costs 3 framing tokens
# (<|start|>{role/name}\n{content}<|end|>\n), a `name` one more, and every reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


BINDINGS = "bpe_openai._bindings"


@functools.cache
def _bindings() -> ModuleType:
    """bpe_openai's compiled tokenizers, without running the package's ``__init__``: that builds
    its tiktoken-compatibility tables (every encoding's ranks as Python dicts, ~65 MiB that stay
    resident), which counting never uses. Shared with ``import bpe_openai`` in either order."""
    if BINDINGS in sys.modules:
        return sys.modules[BINDINGS]
    package = importlib.util.find_spec("bpe_openai")
    assert package is not None and package.submodule_search_locations is not None
    spec = importlib.machinery.PathFinder.find_spec(BINDINGS, package.submodule_search_locations)
    if spec is None:
        raise ImportError(f"{BINDINGS} not found in {package.submodule_search_locations}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[BINDINGS] = module  # a compiled module can be initialised once per process
    spec.loader.exec_module(module)
    return module


@functools.cache
def _tokenizer(encoding: str) -> Any:
    """The Rust tokenizer for `encoding`, built once per process (building costs ~50 ms)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not supported; allowed: {', '.join(ENCODINGS)}")
    # `count` avoids materialising the token list and, unlike `Encoding.encode_ordinary`, has no
    # 200k-token / 1M-character guard that would raise instead of counting a large prompt.
    built = _bindings().tokenizer_for_encoding(encoding)
    _release_file_pages(os.path.realpath(_bindings().__file__))  # as the kernel names it
    return built


def _release_file_pages(path: str) -> None:
    """Drop the resident pages of `path`'s read-only, never-written mappings (Linux only).

    The tokenizers are built from data embedded in the compiled module (72 MB of .rodata); building
    both reads ~45 MiB of it, which then stays resident though counting never reads it again. Such
    pages are clean copies of the file: MADV_DONTNEED only unmaps them, a later read faults them
    back in. A mapping holding written (anonymous) pages, like the relocated RELRO segment, is
    left alone: dropping those would lose the writes."""
    try:
        smaps = Path("/proc/self/smaps").read_text()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        header = block.split("\n", 1)[0].split(maxsplit=5)
        if (
            len(header) == 6
            and header[1] == "r--p"
            and header[5] == path
            and re.search(r"^Anonymous:\s+0 kB$", block, re.MULTILINE)
        ):
            start, end = (int(address, 16) for address in header[0].split("-"))
            madvise(start, end - start, mmap.MADV_DONTNEED)


def _utf8_safe(text: str) -> str:
    # Lone surrogates (possible in JSON "\ud800") cannot be encoded to UTF-8; count them as U+FFFD,
    # which is what the provider sees after decoding.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def token_ids(text: str, encoding: str = "o200k_base") -> list[int]:
    """`text` as token ids, special-token text as plain text (as the provider reads user input)."""
    try:
        return _tokenizer(encoding).encode(text)
    except UnicodeEncodeError:
        return _tokenizer(encoding).encode(_utf8_safe(text))


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
        """Prompt tokens of a chat request's `messages`, framing and reply priming included
        (non-text parts at their upper estimate, see `app/parts.py`)."""
        return self.count_message_bounds(messages, encoding)[1]

    def count_message_bounds(
        self, messages: Iterable[Mapping[str, Any]], encoding: str = "o200k_base"
    ) -> tuple[int, int]:
        """(fewest, most) prompt tokens `messages` can cost; equal unless non-text parts (images,
        audio, files) are present, whose billing the gateway can only bound."""
        count = self.count_text
        low = REPLY_PRIMING_TOKENS
        spread = 0  # high - low: only non-text parts have one
        for message in messages:
            low += TOKENS_PER_MESSAGE
            for field, value in message.items():
                if value.__class__ is str:  # the common case, kept cheap
                    low += count(value, encoding)
                else:
                    least, most = self._value_bounds(value, encoding)
                    low += least
                    spread += most - least
                if field == "name":
                    low += TOKENS_PER_NAME
        return low, low + spread

    def count_tools(self, tools: Iterable[Mapping[str, Any]], encoding: str = "o200k_base") -> int:
        """Estimated prompt tokens that `tools`/`functions` definitions add (their JSON)."""
        return sum(self.count_text(orjson.dumps(tool).decode(), encoding) for tool in tools)

    def _value_bounds(self, value: Any, encoding: str) -> tuple[int, int]:
        if value is None:
            return 0, 0
        if isinstance(value, str):
            tokens = self.count_text(value, encoding)
            return tokens, tokens
        if isinstance(value, list):  # content parts or tool calls
            return _sum_bounds(self._part_bounds(part, encoding) for part in value)
        if isinstance(value, Mapping):  # function_call, audio reference, ...
            return _sum_bounds(self._value_bounds(inner, encoding) for inner in value.values())
        tokens = self.count_text(str(value), encoding)
        return tokens, tokens

    def _part_bounds(self, part: Any, encoding: str) -> tuple[int, int]:
        if not isinstance(part, Mapping):
            return self._value_bounds(part, encoding)
        if part.get("type") == "text":
            tokens = self.count_text(part.get("text") or "", encoding)
            return tokens, tokens
        billed = part_tokens(part)
        if billed is None:
            return _sum_bounds(
                self._value_bounds(value, encoding) for key, value in part.items() if key != "type"
            )
        if part.get("type") == "file" and isinstance(part.get("file"), Mapping):
            name = part["file"].get("filename")
            if isinstance(name, str):
                tokens = self.count_text(name, encoding)
                return billed.low + tokens, billed.high + tokens
        return billed.low, billed.high


def _sum_bounds(bounds: Iterable[tuple[int, int]]) -> tuple[int, int]:
    low = high = 0
    for least, most in bounds:
        low += least
        high += most
    return low, high


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Price of one model in USD per million tokens.

    `cached_input_usd_per_1m` prices the prompt tokens the provider served from its prompt cache
    (None: the full input price). Reasoning tokens are part of the completion tokens and billed
    as output.
    """

    input_usd_per_1m: float
    output_usd_per_1m: float
    cached_input_usd_per_1m: float | None = None

    def __post_init__(self) -> None:
        for field in ("input_usd_per_1m", "output_usd_per_1m", "cached_input_usd_per_1m"):
            value = getattr(self, field)
            if value is None and field == "cached_input_usd_per_1m":
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")


class TokenUsage(NamedTuple):
    """A response's `usage`: prompt tokens (of which `cached_input` came from the provider's
    prompt cache) and completion tokens (of which `reasoning` were hidden reasoning).
    A NamedTuple: one is built per response, and a frozen dataclass builds several times slower."""

    prompt: int = 0
    completion: int = 0
    cached_input: int = 0
    reasoning: int = 0

    @classmethod
    def of(cls, usage: Mapping[str, Any] | None) -> TokenUsage:
        if not usage:
            return _NO_USAGE
        # Chat and completions say prompt/completion; the Responses API says input/output.
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        cached = reasoning = 0
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if details:
            cached = int(details.get("cached_tokens") or 0)
            if cached > prompt:  # a part never exceeds its whole, whatever a provider says
                cached = prompt
        details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
        if details:
            reasoning = int(details.get("reasoning_tokens") or 0)
            if reasoning > completion:
                reasoning = completion
        return cls(prompt, completion, cached, reasoning)


_NO_USAGE = TokenUsage()


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

    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_input_tokens: int = 0
    ) -> float:
        """USD for a request; `cached_input_tokens` (of `prompt_tokens`) at the cached price."""
        price = self.price(model)
        cached_price = price.cached_input_usd_per_1m
        if cached_price is None or not cached_input_tokens:
            return (
                prompt_tokens * price.input_usd_per_1m + completion_tokens * price.output_usd_per_1m
            ) / 1_000_000
        cached = min(cached_input_tokens, prompt_tokens)
        return (
            (prompt_tokens - cached) * price.input_usd_per_1m
            + cached * cached_price
            + completion_tokens * price.output_usd_per_1m
        ) / 1_000_000

    def cost_of(self, model: str, usage: TokenUsage) -> float:
        """USD the provider charges for `usage`; 0 for a model without a price."""
        if model not in self._prices:
            return 0.0
        return self.cost(model, usage.prompt, usage.completion, usage.cached_input)

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
