"""A simulator of an OpenAI-compatible provider, for local runs, tests and benchmarks.

Raw ASGI + orjson so it stays out of the way when it is the "provider" in a load test. Output is
deterministic (a hash of model, input, seed and temperature), usage is counted with the o200k_base
tokenizer, latency is a time to first token plus a per-token delay, and faults are injected either
per request (`x-simulator-fault` header, optionally only for the first K attempts of a logical
request) or at a configured rate from a seeded, reproducible sequence.

Usage is realistic for accounting tests: image, audio and file parts are billed as the provider
documents (`app/parts.py`), a prompt of 1024+ tokens whose prefix an earlier request to the same
model sent reports it in `cached_tokens` (in 128-token steps), and reasoning models
(o1/o3/o4/gpt-5) spend reasoning tokens (by effort) within the output cap, and refuse
`max_tokens` on chat as the provider does.

Routes, by module:
- `chat.py`: `POST /v1/chat/completions`, `POST /v1/completions` (JSON and SSE chunks).
- `responses.py` (+ `responses_input.py`, `responses_output.py`): `POST /v1/responses` (JSON,
  `stream: true` events, function calls, `background: true`), `GET|DELETE /v1/responses/{id}`,
  `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items`,
  `POST /v1/responses/input_tokens`; `previous_response_id` continues a stored response.
- `embeddings.py`: `POST /v1/embeddings`: deterministic unit vectors per text, float or base64.
- `moderations.py`: `POST /v1/moderations` (`FLAG_ME` in a text flags it).
- `files.py`: `/v1/files` (multipart upload, list, get, content, delete), `/v1/uploads` (create,
  parts, complete, cancel).
- `batches.py`: `/v1/batches` (create from an uploaded file, get, list, cancel);
  `vector_stores.py`: `/v1/vector_stores` (create, get, list, delete).
- `media.py`: `POST /v1/images/generations` (a tiny PNG), `POST /v1/audio/transcriptions`
  and `/translations` (multipart), `POST /v1/audio/speech` (MP3/WAV/PCM bytes, streamed in chunks).
- `server.py`: `GET /v1/models[/{model}]`, the dispatch every route shares, and any other path:
  OpenAI's 404 `Invalid URL (POST /v1/xyz)` (405 for a known path and another method).

Run on its own: `python -m app.simulator --host 127.0.0.1 --port 8081 --ttft-ms 50 --token-ms 5`.

Per-request control headers (all optional; faults apply to every API request but GETs):
- `x-simulator-fault: 429|500|502|503|504|timeout|cut|401` - answer with that fault. 429 carries
  `retry-after` (whole seconds), `retry-after-ms` and `x-ratelimit-*` (reset in "1s" style);
  `timeout` hangs for `timeout_fault_s` then answers 504; `cut` drops the connection half way
  (mid-stream without `[DONE]` / `response.completed`, or mid-body).
- `x-simulator-fail-times: K` + `x-simulator-request-key: ID` - only the first K attempts of the
  logical request ID fail (with the fault above, else 503), later ones succeed. Without a key the
  body identifies the request (a multipart one: its route and content-length).
- `x-simulator-retry-after-ms`, `x-simulator-ttft-ms`, `x-simulator-token-ms`,
  `x-simulator-tokens` (natural completion length) - override the options for one request.
Authorization: any non-empty bearer key works except the revoked ones (`sk-sim-revoked`: 401).
Test hooks: `GET /_simulator/stats`, `GET /_simulator/requests[?path=/v1/...]` (last 200, key
fingerprints only), `GET /_simulator/embeddings` (the inputs of each embeddings request),
`POST /_simulator/reset`; in-process: `Simulator.recent_requests(path)`,
`Simulator.embedding_inputs()`, `Simulator.stats`, `Simulator.reset()`.
"""

from app.limits import format_duration
from app.simulator.cli import main, parse_args
from app.simulator.options import SimulatorOptions
from app.simulator.server import Simulator, SimulatorServer, create_app

__all__ = [
    "Simulator",
    "SimulatorOptions",
    "SimulatorServer",
    "create_app",
    "format_duration",
    "main",
    "parse_args",
]
