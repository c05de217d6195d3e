"""`POST /v1/embeddings`: deterministic unit vectors, one per input item.

A vector depends only on the model and the item (a text, or a token array as its own key), never
on its position or the other items. SHAKE-256 over them picks one of a few unit base vectors (made
once per model and size) and the sign of each component: flipping signs keeps the norm, and works
on the float32 bytes at once, so thousands of inputs cost milliseconds. A shorter `dimensions`
gives the first components of the full vector, renormalised, as OpenAI's shortened
text-embedding-3 vectors do. Values are float32, so the float and base64 (little-endian float32,
what the openai SDK decodes) encodings carry exactly the same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from functools import lru_cache
from typing import Any

import orjson

from app.simulator import text
from app.simulator.model import SimulatedModel
from app.simulator.stats import SimulatorStats
from app.simulator.wire import BadRequest, Request, send_result, sleep

NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_DIMENSIONS = 1536  # an embedding model the simulator does not know
SHORTENABLE_PREFIX = "text-embedding-3"  # only these accept `dimensions`
MAX_INPUTS = 2048
BASE_VECTORS = 16
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


class EmbeddingsRoutes:
    def __init__(self, model: SimulatedModel, stats: SimulatorStats) -> None:
        self.model = model
        self.stats = stats

    def observe(self, payload: Any) -> None:
        """The input items of every embeddings request received, refused ones included."""
        if isinstance(payload, dict):
            items = input_items(payload.get("input"))
            if items is not None:
                self.stats.count_embedding_inputs(items)

    async def create(self, request: Request) -> None:
        payload = request.payload
        model = self.model.check_model(payload)
        items = input_items(payload.get("input"))
        if items is None or any(len(item) == 0 for item in items):
            raise BadRequest(_INVALID_INPUT, param="input")
        if len(items) > MAX_INPUTS:
            raise BadRequest(
                f"Invalid 'input': array too long. Expected an array with maximum length "
                f"{MAX_INPUTS}, but got an array with length {len(items)} instead.",
                param="input",
                code="array_above_max_length",
            )
        dimensions = _dimensions(model, payload.get("dimensions"))
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(
                f"Invalid value: {orjson.dumps(encoding).decode()}. Supported values are: "
                "'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        tokens = [text.count_tokens(i) if isinstance(i, str) else len(i) for i in items]
        _check_lengths(tokens)
        data = []
        for index, item in enumerate(items):
            vector = embedding_bytes(model, item, dimensions)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": _encoded(vector, encoding),
                }
            )
        ttft, _ = self.model.latency(request.headers)
        await sleep(ttft)
        total = sum(tokens)
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        await send_result(request, body)


def input_items(value: Any) -> list[Any] | None:
    """A string, a token array, a list of strings or a list of token arrays, as a list of items
    (strings or token arrays); None for anything else."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(_is_token(t) for t in value):
        return [value]
    if all(isinstance(v, str) or (isinstance(v, list) and all(map(_is_token, v))) for v in value):
        return value
    return None


def embedding_bytes(model: str, item: str | list[int], dimensions: int | None) -> bytes:
    """The unit vector of `item` as little-endian float32 bytes, `dimensions` components
    (default: the model's native size)."""
    size = dimensions or NATIVE_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    key = (
        b"text\0" + item.encode("utf-8", "surrogatepass")
        if isinstance(item, str)
        else b"tokens\0" + orjson.dumps(item)
    )
    digest = hashlib.shake_256(model.encode() + b"\0" + key).digest(1 + 4 * size)
    base = _base_vectors(model, size)[digest[0] % BASE_VECTORS]
    signs = int.from_bytes(digest[1:], "little") & _sign_bits(size)
    return (base ^ signs).to_bytes(4 * size, "little")


@lru_cache(maxsize=64)
def _base_vectors(model: str, size: int) -> tuple[int, ...]:
    """BASE_VECTORS unit vectors of `size` components, as little-endian float32 bytes read as
    integers. A shorter one is the renormalised start of a longer one (SHAKE's output for a
    shorter length is the start of a longer one)."""
    bases = []
    for index in range(BASE_VECTORS):
        seed = model.encode() + b"\0base\0" + bytes([index])
        components = array("h", hashlib.shake_256(seed).digest(2 * size))
        if sys.byteorder == "big":
            components.byteswap()  # the same vector on every machine
        scale = 1 / (math.hypot(*components) or 1)
        vector = array("f", [c * scale for c in components])
        if sys.byteorder == "big":
            vector.byteswap()
        bases.append(int.from_bytes(vector.tobytes(), "little"))
    return tuple(bases)


@lru_cache(maxsize=64)
def _sign_bits(size: int) -> int:
    """The sign bit of each of `size` little-endian float32 values."""
    return int.from_bytes(b"\0\0\0\x80" * size, "little")


def _encoded(little_endian: bytes, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(little_endian).decode()
    vector = array("f", little_endian)
    if sys.byteorder == "big":
        vector.byteswap()
    return vector.tolist()


def _dimensions(model: str, value: Any) -> int | None:
    if value is None:
        return None
    if not model.startswith(SHORTENABLE_PREFIX):
        raise BadRequest("This model does not support specifying dimensions.", param="dimensions")
    native = NATIVE_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= native:
        raise BadRequest(
            f"Invalid 'dimensions': expected an integer from 1 to {native} for {model}, "
            f"got {orjson.dumps(value).decode()}.",
            param="dimensions",
        )
    return value


def _check_lengths(tokens: list[int]) -> None:
    for count in tokens:
        if count > MAX_INPUT_TOKENS:
            raise BadRequest(
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                f"requested {count} tokens ({count} in your prompt; 0 for the completion). "
                "Please reduce your prompt; or completion length.",
            )
    total = sum(tokens)
    if total > MAX_REQUEST_TOKENS:
        raise BadRequest(f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
