"""Token counting like the provider's, prices and worst cases, the UTC accounting month."""

from __future__ import annotations

import calendar
import os
import time

import pytest

from app import accounting
from app.accounting import ModelPrice, PriceTable, TokenCounter, UnknownModelPrice, month_key

# The example of OpenAI's cookbook "How to count tokens with tiktoken", whose counts the API
# itself reported: 129 prompt tokens for cl100k_base models, 124 for o200k_base ones.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.mark.parametrize(("encoding", "tokens"), [("cl100k_base", 129), ("o200k_base", 124)])
def test_chat_count_matches_the_provider(counter: TokenCounter, encoding: str, tokens: int) -> None:
    assert counter.count_messages(COOKBOOK_MESSAGES, encoding) == tokens


@pytest.mark.parametrize(
    ("text", "encoding", "tokens"),
    [
        ("tiktoken is great!", "cl100k_base", 6),
        ("tiktoken is great!", "o200k_base", 6),
        ("hello world", "o200k_base", 2),
        ("", "o200k_base", 0),
    ],
)
def test_text_counts(counter: TokenCounter, text: str, encoding: str, tokens: int) -> None:
    assert counter.count_text(text, encoding) == tokens


def test_framing_overhead(counter: TokenCounter) -> None:
    assert counter.count_messages([]) == 3  # reply priming only
    hello = counter.count_text("hello") + counter.count_text("user")
    assert counter.count_messages([{"role": "user", "content": "hello"}]) == 3 + hello + 3
    named = [{"role": "user", "content": "hello", "name": "bob"}]
    assert counter.count_messages(named) == 3 + hello + counter.count_text("bob") + 1 + 3


def test_content_parts_tool_calls_and_images(counter: TokenCounter) -> None:
    text = counter.count_messages([{"role": "user", "content": "describe this"}])
    parts = counter.count_messages(
        [{"role": "user", "content": [{"type": "text", "text": "describe this"}]}]
    )
    assert parts == text
    low = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
    high = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    assert counter.count_messages([{"role": "user", "content": [low]}]) == (
        counter.count_messages([{"role": "user", "content": []}]) + 85
    )
    # Unknown dimensions: the upper estimate, 8 tiles (see app/parts.py).
    assert counter.count_messages([{"role": "user", "content": [high]}]) == (
        counter.count_messages([{"role": "user", "content": []}]) + 1445
    )
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    counted = counter.count_messages([call])
    arguments = counter.count_text('{"city": "Paris"}')
    assert counted >= 3 + arguments + counter.count_text("lookup") + 3


def test_tools_definitions_are_counted(counter: TokenCounter) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "description": "Find a city"}}
    assert counter.count_tools([tool]) > counter.count_text("Find a city")
    assert counter.count_tools([]) == 0


def test_awkward_text_is_counted_not_rejected(counter: TokenCounter) -> None:
    # Special-token text in a prompt is plain text to the provider.
    assert counter.count_text("<|endoftext|>") > 1
    # A lone surrogate (valid in JSON) counts like the replacement character.
    assert counter.count_text("a\ud800b") == counter.count_text("a\ufffdb")
    # Far beyond the tokenizer package's 200k-token guard: counted, so the caller can reject
    # it as too long for the context window.
    assert counter.count_text(" hello" * 300_000) == 300_000


def test_unknown_encoding_is_named(counter: TokenCounter) -> None:
    with pytest.raises(ValueError, match=r"'p50k_base' is not supported; allowed: o200k_base"):
        counter.count_text("x", "p50k_base")


def test_tokenizers_are_loaded_once() -> None:
    TokenCounter()
    TokenCounter()
    assert accounting._tokenizer("o200k_base") is accounting._tokenizer("o200k_base")
    assert accounting._tokenizer.cache_info().currsize == len(accounting.ENCODINGS)


PRICES = PriceTable(
    {
        "gpt-4o-mini-2024-07-18": ModelPrice(input_usd_per_1m=0.15, output_usd_per_1m=0.60),
        "gpt-4o-2024-08-06": ModelPrice(input_usd_per_1m=2.50, output_usd_per_1m=10.00),
    }
)


def test_costs_and_worst_cases() -> None:
    assert PRICES.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert PRICES.cost("gpt-4o-2024-08-06", 1200, 300) == pytest.approx(0.006)
    # 1000 prompt tokens, max_tokens 500 with n=2: 1000 output tokens at most.
    assert PRICES.worst_case("gpt-4o-2024-08-06", 1000, 1000) == pytest.approx(0.0125)
    assert "gpt-4o-2024-08-06" in PRICES and "gpt-5" not in PRICES


def test_unknown_model_price_names_the_known_ones() -> None:
    with pytest.raises(
        UnknownModelPrice, match="no price for model 'gpt-5'; priced models: gpt-4o"
    ):
        PRICES.cost("gpt-5", 1, 1)


@pytest.mark.parametrize("bad", [-0.01, float("inf"), float("nan")])
def test_prices_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="input_usd_per_1m must be a finite number >= 0"):
        ModelPrice(input_usd_per_1m=bad, output_usd_per_1m=1.0)


def test_month_key_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    last_second = calendar.timegm((2026, 12, 31, 23, 59, 59))
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: already January locally
    time.tzset()
    try:
        assert month_key(last_second) == "2026-12"
        assert month_key(last_second + 1) == "2027-01"
        assert month_key(calendar.timegm((2026, 2, 28, 12, 0, 0))) == "2026-02"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert month_key() == time.strftime("%Y-%m", time.gmtime())
    assert os.environ.get("TZ") is None
