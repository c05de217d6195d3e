"""Prompt tokens of non-text content parts (images, audio, files), counted as the provider bills
them rather than as the text of their base64.

Each part gets three figures: `low`, what it certainly costs at least (the context-window check
refuses only on these, so nothing is refused that the provider might accept); `likely`, the
provider's documented figure (what the built-in simulator bills); and `high`, a documented upper
estimate (what limits and budgets reserve, settled later to the provider's `usage`).

- Images (`image_url`): OpenAI's tile rule. `detail: low` is 85 tokens; high detail fits the image
  in 2048x2048, scales its shortest side down to 768 and bills 170 per 512 px tile plus 85.
  Dimensions are read from the header of a `data:` URL (PNG IHDR, GIF, JPEG SOF). Unknown
  dimensions (a remote URL): at most 8 tiles (1445 tokens, a 2048x768 image), at least 1 tile
  (255) for `high`, 85 for `auto` (the provider may choose low detail).
- Audio (`input_audio`): OpenAI bills audio input by duration, about 10 tokens per second
  (1 token per 100 ms). WAV duration comes from its header (byte rate, data size); other formats
  from the size between 320 kbit/s and 8 kbit/s. Bounds: half and twice the per-second rate.
- Files (`file`, PDF): the provider gives the model the text and an image of every page. Pages are
  the PDF's `/Type /Page` objects; per page at least 85 tokens (a low-detail page image), likely
  765 + 500 (a high-detail page image and a page of text), at most 1445 + 1500. A PDF whose pages
  cannot be counted (compressed object streams) or a `file_id` has no upper bound but the
  context window (the caller clamps `high` to it).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNBOUNDED = 2**31  # no upper estimate: callers clamp to the model's context window

IMAGE_LOW_DETAIL = 85
IMAGE_TILE = 170
IMAGE_BASE = 85
IMAGE_MAX_TILES_UNKNOWN = 8  # 2048x768 after scaling: 4 x 2 tiles

AUDIO_TOKENS_PER_S = 10.0
AUDIO_LOW_FACTOR, AUDIO_HIGH_FACTOR = 0.5, 2.0
AUDIO_MAX_BYTES_PER_S = 320_000 / 8  # 320 kbit/s: the shortest a compressed file can be
AUDIO_MIN_BYTES_PER_S = 8_000 / 8  # 8 kbit/s: the longest

PDF_PAGE_LOW = IMAGE_LOW_DETAIL
PDF_PAGE_LIKELY = 765 + 500
PDF_PAGE_HIGH = IMAGE_BASE + IMAGE_TILE * IMAGE_MAX_TILES_UNKNOWN + 1500
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_DATA_URL = re.compile(r"^data:([\w.+/-]*)(;[^,]*)?,", re.ASCII)


@dataclass(frozen=True, slots=True)
class PartTokens:
    low: int
    likely: int
    high: int

    def __add__(self, other: PartTokens) -> PartTokens:
        return PartTokens(self.low + other.low, self.likely + other.likely, self.high + other.high)


NOTHING = PartTokens(0, 0, 0)


def high_detail_image_tokens(width: int, height: int) -> int:
    """OpenAI's tile rule for a `detail: high` image of width x height pixels."""
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return IMAGE_BASE + IMAGE_TILE * tiles


def image_tokens(image: Any) -> PartTokens:
    """An `image_url` part's inner object: `{"url": ..., "detail": "low" | "high" | "auto"}`."""
    url = image.get("url") if isinstance(image, Mapping) else image
    detail = image.get("detail") if isinstance(image, Mapping) else None
    if detail == "low":
        return PartTokens(IMAGE_LOW_DETAIL, IMAGE_LOW_DETAIL, IMAGE_LOW_DETAIL)
    size = image_size(_data_url_bytes(url)) if isinstance(url, str) else None
    if size is not None:
        high = high_detail_image_tokens(*size)
        return PartTokens(high if detail == "high" else IMAGE_LOW_DETAIL, high, high)
    most = IMAGE_BASE + IMAGE_TILE * IMAGE_MAX_TILES_UNKNOWN
    least = IMAGE_BASE + IMAGE_TILE if detail == "high" else IMAGE_LOW_DETAIL
    return PartTokens(least, IMAGE_BASE + 4 * IMAGE_TILE, most)


def image_size(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF or JPEG header; None when unknown."""
    if not data:
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def audio_tokens(audio: Any) -> PartTokens:
    """An `input_audio` part's inner object: `{"data": base64, "format": "wav" | "mp3" | ...}`."""
    if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
        return PartTokens(0, 0, UNBOUNDED)
    data = audio["data"]
    size = _decoded_length(data)
    seconds = _wav_seconds(data, size) if audio.get("format") == "wav" else None
    if seconds is not None:
        shortest = longest = seconds
    else:
        shortest, longest = size / AUDIO_MAX_BYTES_PER_S, size / AUDIO_MIN_BYTES_PER_S
    return PartTokens(
        math.floor(shortest * AUDIO_TOKENS_PER_S * AUDIO_LOW_FACTOR),
        math.ceil((shortest if seconds is not None else longest) * AUDIO_TOKENS_PER_S),
        math.ceil(longest * AUDIO_TOKENS_PER_S * AUDIO_HIGH_FACTOR),
    )


def _wav_seconds(data: str, size: int) -> float | None:
    """Duration of a base64 WAV from its RIFF header (fmt byte rate, data chunk size)."""
    head = _b64_prefix(data, 4096)
    if head is None or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    i, byte_rate = 12, 0
    while i + 8 <= len(head):
        chunk, length = head[i : i + 4], struct.unpack("<I", head[i + 4 : i + 8])[0]
        if chunk == b"fmt " and i + 20 <= len(head):
            byte_rate = struct.unpack("<I", head[i + 16 : i + 20])[0]
        elif chunk == b"data":
            if byte_rate <= 0:
                return None
            # A streamed WAV may say 0 or 0xFFFFFFFF: never more than the bytes that are there.
            available = max(0, size - i - 8)
            return (min(length, available) if length else available) / byte_rate
        i += 8 + length + (length & 1)
    return None


def file_tokens(file: Any) -> PartTokens:
    """A `file` part's inner object: `{"file_data": "data:application/pdf;base64,...", ...}`."""
    if not isinstance(file, Mapping) or not isinstance(file.get("file_data"), str):
        return PartTokens(0, 0, UNBOUNDED)  # a file_id: its size is not known here
    data = _data_url_bytes(file["file_data"])
    pages = len(_PDF_PAGE.findall(data)) if data else 0
    if not pages:
        return PartTokens(0, 0, UNBOUNDED)
    return PartTokens(pages * PDF_PAGE_LOW, pages * PDF_PAGE_LIKELY, pages * PDF_PAGE_HIGH)


def part_tokens(part: Mapping[str, Any]) -> PartTokens | None:
    """Tokens of one non-text content part; None for a part that is not one."""
    kind = part.get("type")
    if kind == "image_url":
        return image_tokens(part.get("image_url"))
    if kind == "input_audio":
        return audio_tokens(part.get("input_audio"))
    if kind == "file":
        return file_tokens(part.get("file"))
    return None


def _decoded_length(data: str) -> int:
    payload = data.partition(",")[2] if data.startswith("data:") else data
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def _b64_prefix(data: str, size: int) -> bytes | None:
    payload = data.partition(",")[2] if data.startswith("data:") else data
    chars = (size + 2) // 3 * 4
    try:
        return base64.b64decode(payload[:chars], validate=False)
    except (binascii.Error, ValueError):
        return None


def _data_url_bytes(url: str) -> bytes | None:
    """The decoded bytes of a base64 `data:` URL; None for anything else."""
    match = _DATA_URL.match(url)
    if match is None or "base64" not in (match.group(2) or ""):
        return None
    try:
        return base64.b64decode(url[match.end() :], validate=False)
    except (binascii.Error, ValueError):
        return None
