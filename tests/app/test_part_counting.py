"""Non-text parts are not counted as text (issue 8 §7): images by the tile rule, audio by its
duration, PDFs by their pages; the context window refuses only what certainly exceeds it, limits
reserve the upper estimate and settle to the provider's usage. Real small PNG, WAV and PDF files
are made here."""

from __future__ import annotations

import base64
import io
import os
import re
import struct
import wave
import zlib
from collections.abc import Iterator

import openai
import pytest

from app.accounting import TokenCounter
from app.gcra import Bucket, BurstFractions
from app.parts import PDF_PAGE_HIGH, PDF_PAGE_LIKELY, PDF_PAGE_LOW, audio_tokens, image_tokens
from app.server import create_app
from tests.app.gateway_harness import (
    ALICE,
    BOB,
    PROVIDER_KEY,
    client_keys_json,
    make_config,
    served,
)

# --- files made here ---------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A real PNG (RGB, 8 bit), all black."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x00" * 3 * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A real WAV (mono, 16 bit) of noise."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(os.urandom(int(seconds * rate) * 2))
    return out.getvalue()


def pdf(pages: int, padding_bytes: int = 0) -> bytes:
    """A minimal PDF with `pages` pages of text, and an unused stream of random bytes."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages)).encode()
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages)
    for i in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R >>"
            % (4 + 2 * i)
        )
        text = b"BT /F1 12 Tf 72 720 Td (Page %d of the report) Tj ET" % (i + 1)
        objects.append(b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream")
    if padding_bytes:
        noise = os.urandom(padding_bytes)
        objects.append(b"<< /Length %d >>\nstream\n" % len(noise) + noise + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def data_url(media: str, data: bytes) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes, detail: str | None = None) -> dict:
    image = {"url": data_url("image/png", data)}
    if detail:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def audio_part(data: bytes) -> dict:
    return {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"},
    }


def file_part(data: bytes) -> dict:
    return {
        "type": "file",
        "file": {"filename": "report.pdf", "file_data": data_url("application/pdf", data)},
    }


# --- the counting rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        ((1024, 1024), "high", 765),  # 768x768: 4 tiles
        ((2048, 4096), "high", 1105),  # 1024x2048 -> 768x1536: 6 tiles
        ((512, 512), "high", 255),  # 1 tile
        ((4000, 300), "high", 85 + 170 * 4),  # 2048x154: 4 x 1 tiles
        ((1024, 1024), "low", 85),
    ],
)
def test_png_by_the_tile_rule_from_its_header(size, detail, tokens) -> None:
    counted = image_tokens(image_part(png(*size), detail)["image_url"])
    assert (counted.low, counted.likely, counted.high) == (tokens, tokens, tokens)


def test_auto_detail_and_unknown_dimensions_are_bounded() -> None:
    auto = image_tokens(image_part(png(1024, 1024))["image_url"])
    assert (auto.low, auto.high) == (85, 765)  # the provider may pick low detail
    remote = image_tokens({"url": "https://example.com/cat.png", "detail": "high"})
    assert (remote.low, remote.high) == (255, 1445)  # 1 to 8 tiles


def test_gif_and_jpeg_dimensions_from_their_headers() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 2048, 4096) + b"\x00" * 16
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 1024, 1024, 1) + b"\x01\x11\x00"
    jpeg = b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"
    for media, data, tokens in (("image/gif", gif, 1105), ("image/jpeg", jpeg, 765)):
        counted = image_tokens({"url": data_url(media, data), "detail": "high"})
        assert (counted.low, counted.high) == (tokens, tokens), media


def test_compressed_audio_is_bounded_by_its_size() -> None:
    mp3 = {"data": base64.b64encode(os.urandom(40_000)).decode(), "format": "mp3"}
    counted = audio_tokens(mp3)
    # 40 KB: 1 s at 320 kbit/s to 40 s at 8 kbit/s.
    assert (counted.low, counted.high) == (5, 800)


def test_wav_by_its_duration() -> None:
    counted = audio_tokens(audio_part(wav(3.0))["input_audio"])
    assert (counted.low, counted.likely, counted.high) == (15, 30, 60)  # 10 tokens/s, /2, x2


def test_pdf_by_its_pages() -> None:
    counter = TokenCounter()
    empty = counter.count_message_bounds([{"role": "user", "content": []}])
    low, high = counter.count_message_bounds([{"role": "user", "content": [file_part(pdf(3))]}])
    name = counter.count_text("report.pdf")
    assert low - empty[0] == 3 * PDF_PAGE_LOW + name
    assert high - empty[1] == 3 * PDF_PAGE_HIGH + name


def test_text_messages_have_one_count() -> None:
    counter = TokenCounter()
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    low, high = counter.count_message_bounds(messages)
    assert low == high == counter.count_messages(messages)


# --- through the official SDK ------------------------------------------------------------------

TINY = "tiny-vision-2024-01-01"


class FrozenClock:
    now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def gateway(simulator) -> Iterator[tuple[str, object]]:
    tiny = {
        "context_window": 4000,
        "max_output_tokens": 1000,
        "default_max_tokens": 256,
        "input_usd_per_1m": 1.0,
        "output_usd_per_1m": 2.0,
    }
    config = make_config(simulator.url, models={"catalog": {TINY: tiny}})
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF_CLIENT_KEYS": client_keys_json(
            alice={"tpm": 100_000, "rpm": 10_000}, bob={"tpm": 100_000, "rpm": 10_000}
        ),
    }
    app = create_app(config, env)
    with served(app) as url:
        app.state.gateway.limits.clock = FrozenClock()  # token figures below are exact
        yield url, app.state.gateway


def ask(url: str, model: str, parts: list[dict], max_tokens: int = 20, key: str = ALICE):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Summarise"}, *parts]}]
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens
    )
    return raw, messages


def test_a_600_kb_pdf_and_wav_are_billed_by_pages_and_seconds_not_base64(gateway) -> None:
    url, _ = gateway
    document = pdf(2, padding_bytes=450_000)
    recording = wav(19.0)  # 608 KB of 16 kHz mono
    assert len(base64.b64encode(document)) > 590_000
    raw, _ = ask(url, "fast", [file_part(document)])
    usage = raw.parse().usage
    # The provider (simulator) bills the pages: nowhere near the ~400,000 tokens of the base64.
    assert 2 * PDF_PAGE_LIKELY <= usage.prompt_tokens < 2 * PDF_PAGE_LIKELY + 50
    raw, _ = ask(url, "fast", [audio_part(recording)])
    assert 190 <= raw.parse().usage.prompt_tokens < 240  # 19 s at 10 tokens/s, and the text


def test_context_window_refuses_only_what_certainly_exceeds_it(gateway) -> None:
    url, _ = gateway
    # 3 pages: at most 3 x 2945 tokens (over the 4,000 window), at least 3 x 85: sent on.
    raw, _ = ask(url, TINY, [file_part(pdf(3))])
    assert raw.status_code == 200
    # 60 pages are at least 60 x 85 = 5,100 tokens: certainly over.
    with pytest.raises(openai.BadRequestError) as refused:
        ask(url, TINY, [file_part(pdf(60))])
    assert refused.value.code == "context_length_exceeded"
    counted = re.search(r"resulted in (\d+) tokens", str(refused.value))
    assert counted is not None and 5100 <= int(counted.group(1)) < 5200


def test_limits_reserve_the_upper_estimate_and_settle_to_the_providers_usage(gateway) -> None:
    """A key of its own, on the limiter's frozen clock: every token figure is exact."""
    url, _ = gateway
    counter = TokenCounter()
    images = [image_part(png(1024, 1024)), image_part(png(300, 200), "low")]
    parts = [file_part(pdf(2)), audio_part(wav(2.0)), *images]
    first, messages = ask(url, "fast", parts, max_tokens=30, key=BOB)
    # Bob's 100,000 tpm may be reserved a quarter at once (the default tpm burst fraction).
    burst = Bucket.of(100_000, BurstFractions().tokens).burst
    reserved = burst - int(first.headers["x-ratelimit-remaining-tokens"])
    low, high = counter.count_message_bounds(messages)
    # The upper estimate and max_tokens (to a token: arrival times are float epoch seconds).
    assert reserved == pytest.approx(high + 30, abs=1)
    usage = first.parse().usage
    assert low <= usage.prompt_tokens < high

    second, messages = ask(url, "fast", [], max_tokens=10, key=BOB)
    reserved_second = counter.count_messages(messages) + 10
    used_first = usage.prompt_tokens + usage.completion_tokens
    # The first request now counts what the provider billed, not what was reserved for it.
    expected = burst - used_first - reserved_second
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == pytest.approx(expected, abs=1)
