"""Deterministic text and realistic token counts for the provider simulator.

Output is a sequence of pieces that are each exactly one o200k_base token, so a stream chunk is one
token and `max_tokens` cuts at a token boundary, while usage is still counted by the real tokenizer.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from app.accounting import token_ids
from app.parts import part_tokens

ENCODING_NAME = "o200k_base"

# OpenAI's chat framing: 3 tokens per message (+1 with a name), 3 to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3

_CANDIDATE_WORDS_TEXT = """
the model answer request token stream cache latency budget limit provider gateway system user
value result data time first next every small large fast slow good clear simple service cluster
network region replica retry window batch prompt reply output input number price cost month key
call error state change test check build run start stop keep make take give find show read write
send move open close long short high low new old right left early late main real full part point
line file word text list order level rate path node pod load scale plan stack team work way day
year place thing should could would can will may must also then when where while because after
before with from into over under about between through and but or so yet not only just very
"""


def count_tokens(text: str) -> int:
    # The gateway's tokenizer (one copy per process, the in-process simulator shares it).
    return len(token_ids(text, ENCODING_NAME))


def _is_single_token(text: str) -> bool:
    return len(token_ids(text, ENCODING_NAME)) == 1


@lru_cache(maxsize=1)
def vocabulary() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Mid-sentence " word", sentence-start " Word" and first "Word" variants, each one token."""
    words = [
        w
        for w in _CANDIDATE_WORDS_TEXT.split()
        if _is_single_token(" " + w)
        and _is_single_token(" " + w.capitalize())
        and _is_single_token(w.capitalize())
    ]
    return (
        tuple(" " + w for w in words),
        tuple(" " + w.capitalize() for w in words),
        tuple(w.capitalize() for w in words),
    )


def count_message_tokens(messages: Sequence[Any]) -> int:
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            continue
        for field, value in message.items():
            if field == "name":
                total += TOKENS_PER_NAME
            if isinstance(value, list):
                total += _count_parts(value)
            else:
                total += count_tokens(content_text(value))
    return total


def _count_parts(parts: list[Any]) -> int:
    """Content parts: the text ones as text, images, audio and files as the provider bills them
    (its documented figure, `app/parts.py`), never the text of their base64."""
    texts: list[Any] = []
    billed = 0
    for part in parts:
        tokens = part_tokens(part) if isinstance(part, dict) else None
        if tokens is None:
            texts.append(part)
        else:
            billed += tokens.likely
    return (count_tokens(content_text(texts)) if texts else 0) + billed


def prompt_token_ids(messages: Sequence[Any]) -> list[int]:
    """The prompt as token ids, in order (what the provider's prompt cache matches prefixes of);
    an image, audio or file part stands as a digest of itself, not as its base64."""

    def stand_in(value: Any) -> Any:
        if isinstance(value, list):
            return [stand_in(v) for v in value]
        if isinstance(value, dict):
            if part_tokens(value) is not None:
                return hashlib.blake2b(orjson.dumps(value), digest_size=16).hexdigest()
            return {k: stand_in(v) for k, v in value.items()}
        return value

    text = orjson.dumps([stand_in(m) for m in messages]).decode()
    return token_ids(text, ENCODING_NAME)


def content_text(value: Any) -> str:
    """Text of a message field: a string, content parts, or structured data (tool calls)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                parts.append(orjson.dumps(part).decode())
        return " ".join(parts)
    return orjson.dumps(value).decode()


def count_prompt_tokens(prompt: Any) -> int:
    """One completions prompt: a string or a list of token ids."""
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if isinstance(prompt, list):
        return len(prompt)
    return count_tokens(str(prompt))


@dataclass(frozen=True, slots=True)
class Generation:
    pieces: tuple[str, ...]  # streamed in this order; each is at most one token
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


def seed_for(*parts: Any) -> int:
    digest = hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def generate(
    seed: int,
    natural_length: int,
    max_tokens: int | None,
    stop: Sequence[str],
) -> Generation:
    """The model's text: natural_length tokens unless max_tokens or a stop sequence ends it."""
    mid, start, first = vocabulary()
    rng = random.Random(seed)
    limit = natural_length if max_tokens is None else min(natural_length, max_tokens)
    pieces: list[str] = []
    sentence_left = rng.randint(6, 14)
    for position in range(limit):
        if position == 0:
            pieces.append(rng.choice(first))
        elif sentence_left == 0:
            pieces.append(".")
            sentence_left = rng.randint(6, 14)
        elif pieces[-1] == ".":
            pieces.append(rng.choice(start))
        else:
            pieces.append(rng.choice(mid))
        sentence_left -= 1
    finish_reason = "length" if limit < natural_length else "stop"
    text = "".join(pieces)
    cut = _earliest_stop(text, stop)
    if cut is not None:
        text = text[:cut]
        pieces = _pieces_up_to(pieces, cut)
        finish_reason = "stop"
    elif (
        finish_reason == "stop"
        and pieces
        and pieces[-1] != "."
        and (max_tokens is None or len(pieces) < max_tokens)
    ):
        # A natural end closes the sentence; the period fits only when under max_tokens.
        pieces.append(".")
        text += "."
    return Generation(tuple(pieces), text, finish_reason, count_tokens(text))


def _earliest_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def _pieces_up_to(pieces: list[str], cut: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for piece in pieces:
        if used + len(piece) <= cut:
            kept.append(piece)
            used += len(piece)
            continue
        if cut > used:
            kept.append(piece[: cut - used])
        break
    return kept
