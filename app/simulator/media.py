"""Images and audio: `POST /v1/images/generations` (a tiny real PNG per image),
`POST /v1/audio/transcriptions` and `/translations` (multipart, text derived from the audio
bytes, which are hashed as they arrive and never kept), `POST /v1/audio/speech` (silent MP3 frames,
WAV or PCM of a plausible duration, streamed in chunks)."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import zlib
from typing import Any

import orjson

from app.simulator import text
from app.simulator.model import SimulatedModel
from app.simulator.multipart import read_form
from app.simulator.wire import (
    BadRequest,
    Request,
    Route,
    chunked,
    send_result,
    send_stream,
    sleep,
)

IMAGE_SIZES = {
    "gpt-image": ("auto", "1024x1024", "1536x1024", "1024x1536"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
}
# gpt-image output tokens by quality, square and portrait/landscape (OpenAI's image pricing).
IMAGE_OUTPUT_TOKENS = {
    "low": (272, 408),
    "medium": (1056, 1584),
    "high": (4160, 6240),
}
PNG_SIDE = 8
AUDIO_BYTES_PER_S = 16_000  # a 128 kbit/s upload
AUDIO_TOKENS_PER_S = 10  # what gpt-4o transcription bills for audio input (app/parts.py)
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
TOKEN_BILLED_TRANSCRIPTION_FORMATS = ("json", "text")
SPEECH_CHARS_PER_S = 15
SPEECH_MAX_CHARS = 4096
SPEECH_CONTENT_TYPES = {"mp3": b"audio/mpeg", "wav": b"audio/wav", "pcm": b"audio/pcm"}
MP3_FRAME = b"\xff\xfb\x90\x64" + bytes(413)  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz, silent
MP3_FRAMES_PER_S = 44_100 / 1152
PCM_RATE = 24_000  # 16-bit mono, as OpenAI's pcm output
SPEECH_CHUNK_BYTES = 16 * 1024


class MediaRoutes:
    def __init__(self, model: SimulatedModel) -> None:
        self.model = model

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/images/generations", self.generate_images),
            Route("POST", "/v1/audio/transcriptions", self.transcribe, body="multipart"),
            Route("POST", "/v1/audio/translations", self.transcribe, body="multipart"),
            Route("POST", "/v1/audio/speech", self.speech),
        ]

    # ---- images ---------------------------------------------------------------------------
    async def generate_images(self, request: Request) -> None:
        payload = request.payload
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("Missing required parameter: 'prompt'.", param="prompt")
        model = payload.get("model") or "dall-e-2"
        family = "gpt-image" if model.startswith("gpt-image") else model
        n = payload.get("n", 1)
        most = 1 if family == "dall-e-3" else 10
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= most:
            raise BadRequest(f"Invalid 'n': expected an integer from 1 to {most}.", param="n")
        sizes = IMAGE_SIZES.get(family, IMAGE_SIZES["dall-e-2"])
        size = payload.get("size") or sizes[0]
        if size not in sizes:
            raise BadRequest(
                f"Invalid value: {size!r}. Supported values are: "
                + ", ".join(f"'{s}'" for s in sizes)
                + ".",
                param="size",
                code="invalid_value",
            )
        if payload.get("stream"):
            raise BadRequest("The simulator does not stream partial images.", param="stream")
        images = [
            base64.b64encode(tiny_png(text.seed_for(model, prompt, index))).decode()
            for index in range(n)
        ]
        ttft, _ = self.model.latency(request.headers)
        await sleep(ttft)
        body: dict[str, Any] = {"created": int(time.time())}
        if family == "gpt-image":
            quality = payload.get("quality") or "auto"
            quality = "medium" if quality == "auto" else quality
            square = size in ("auto", "1024x1024")
            per_image = IMAGE_OUTPUT_TOKENS.get(quality, IMAGE_OUTPUT_TOKENS["medium"])
            prompt_tokens = text.count_tokens(prompt)
            output_tokens = n * per_image[0 if square else 1]
            body.update(
                data=[{"b64_json": image} for image in images],
                background="opaque",
                output_format="png",
                quality=quality,
                size="1024x1024" if size == "auto" else size,
                usage={
                    "input_tokens": prompt_tokens,
                    "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
                    "output_tokens": output_tokens,
                    "total_tokens": prompt_tokens + output_tokens,
                },
            )
        elif payload.get("response_format") == "b64_json":
            body["data"] = [{"b64_json": image, "revised_prompt": prompt} for image in images]
        else:
            # No image host here: the URL carries the image itself.
            body["data"] = [
                {"url": "data:image/png;base64," + image, "revised_prompt": prompt}
                for image in images
            ]
        await send_result(request, body)

    # ---- audio ----------------------------------------------------------------------------
    async def transcribe(self, request: Request) -> None:
        audio = _Digest()
        form = await read_form(request, lambda name, filename, content_type: audio)
        if "file" not in form.files:
            raise BadRequest("Missing required parameter: 'file'.", param="file")
        model = form.fields.get("model")
        if not model:
            raise BadRequest("you must provide a model parameter", param="model")
        self.model.check_model({"model": model})
        response_format = form.fields.get("response_format") or "json"
        token_billed = model != "whisper-1"
        allowed = TOKEN_BILLED_TRANSCRIPTION_FORMATS if token_billed else TRANSCRIPTION_FORMATS
        if response_format not in allowed:
            raise BadRequest(
                f"response_format '{response_format}' is not compatible with model '{model}'. "
                "Use " + " or ".join(f"'{f}'" for f in allowed) + ".",
                param="response_format",
            )
        seconds = max(0.1, form.files["file"].size / AUDIO_BYTES_PER_S)
        generation = self.model.generations(
            model, audio.hexdigest(), request.headers, temperature=0
        )[0]
        said = generation.text
        ttft, _ = self.model.latency(request.headers)
        await sleep(ttft)
        if response_format in ("text", "srt", "vtt"):
            body = _subtitles(said, seconds, response_format).encode()
            await send_stream(request, b"text/plain; charset=utf-8", [body], 0, 0, len(body))
            return
        if token_billed:
            prompt_tokens = text.count_tokens(form.fields.get("prompt", ""))
            audio_tokens = math.ceil(seconds * AUDIO_TOKENS_PER_S)
            usage: dict[str, Any] = {
                "type": "tokens",
                "input_tokens": audio_tokens + prompt_tokens,
                "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_tokens},
                "output_tokens": generation.completion_tokens,
                "total_tokens": audio_tokens + prompt_tokens + generation.completion_tokens,
            }
        else:
            usage = {"type": "duration", "seconds": math.ceil(seconds)}
        body_json: dict[str, Any] = {"text": said, "usage": usage}
        if response_format == "verbose_json":
            body_json = {
                "task": "translate" if request.path.endswith("translations") else "transcribe",
                "language": form.fields.get("language") or "english",
                "duration": round(seconds, 3),
                "text": said,
                "segments": [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": round(seconds, 3),
                        "text": said,
                        "tokens": [],
                        "temperature": 0.0,
                        "avg_logprob": -0.2,
                        "compression_ratio": 1.0,
                        "no_speech_prob": 0.01,
                    }
                ],
                "usage": usage,
            }
        await send_result(request, body_json)

    async def speech(self, request: Request) -> None:
        payload = request.payload
        self.model.check_model(payload)
        said = payload.get("input")
        if not isinstance(said, str) or not said:
            raise BadRequest("Missing required parameter: 'input'.", param="input")
        if len(said) > SPEECH_MAX_CHARS:
            raise BadRequest(
                f"Invalid 'input': string too long. Expected a string with maximum length "
                f"{SPEECH_MAX_CHARS}, but got a string with length {len(said)} instead.",
                param="input",
                code="string_above_max_length",
            )
        if not isinstance(payload.get("voice"), str | dict):
            raise BadRequest("Missing required parameter: 'voice'.", param="voice")
        speed = payload.get("speed", 1.0)
        if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
            raise BadRequest("Invalid 'speed': expected a number from 0.25 to 4.0.", "speed")
        audio_format = payload.get("response_format") or "mp3"
        if audio_format not in SPEECH_CONTENT_TYPES:
            raise BadRequest(
                "The simulator produces mp3, wav or pcm audio, not "
                f"{orjson.dumps(audio_format).decode()}.",
                param="response_format",
            )
        seconds = max(0.5, len(said) / SPEECH_CHARS_PER_S) / speed
        audio = silent_audio(audio_format, seconds)
        ttft, per_token = self.model.latency(request.headers)
        await send_stream(
            request,
            SPEECH_CONTENT_TYPES[audio_format],
            chunked(audio, SPEECH_CHUNK_BYTES),
            ttft,
            per_token,
        )


def tiny_png(seed: int) -> bytes:
    """A real PNG of PNG_SIDE x PNG_SIDE pixels in one colour chosen by `seed`."""
    rgb = seed.to_bytes(8, "big")[:3]
    rows = b"".join(b"\x00" + rgb * PNG_SIDE for _ in range(PNG_SIDE))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", PNG_SIDE, PNG_SIDE, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def silent_audio(audio_format: str, seconds: float) -> bytes:
    if audio_format == "mp3":
        return MP3_FRAME * math.ceil(seconds * MP3_FRAMES_PER_S)
    samples = bytes(2 * math.ceil(seconds * PCM_RATE))
    if audio_format == "pcm":
        return samples
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(samples),
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        PCM_RATE,
        PCM_RATE * 2,
        2,
        16,
        b"data",
        len(samples),
    )
    return header + samples


class _Digest:
    """A sink that hashes what it is given and keeps nothing."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _subtitles(said: str, seconds: float, response_format: str) -> str:
    if response_format == "text":
        return said + "\n"
    end = _timestamp(seconds, "," if response_format == "srt" else ".")
    start = _timestamp(0, "," if response_format == "srt" else ".")
    if response_format == "srt":
        return f"1\n{start} --> {end}\n{said}\n\n"
    return f"WEBVTT\n\n{start} --> {end}\n{said}\n\n"


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"
