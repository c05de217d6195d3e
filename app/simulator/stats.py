"""What the simulator received; tests read it to prove retries, batching, caching and forwarding."""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

RECENT_REQUESTS = 200


@dataclass
class SimulatorStats:
    requests_total: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    completions_requests: int = 0
    completions_prompts: int = 0
    prompts_per_completions_request: Counter[int] = field(default_factory=Counter)
    embeddings_requests: int = 0
    embeddings_inputs: int = 0
    inputs_per_embeddings_request: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    # The input items of each embeddings request, oldest first: what a per-item cache upstream
    # of the simulator really sent.
    recent_embedding_inputs: deque[list[Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS)
    )

    def remember(
        self, method: str, path: str, payload: Any, headers: dict[str, str], api_key: str
    ) -> dict[str, Any]:
        record = {
            "method": method,
            "path": path,
            "body": payload,
            "headers": {k: v for k, v in headers.items() if k != "authorization"},
            # Tests tell keys apart by fingerprint; the key itself is never kept.
            "api_key_sha256": hashlib.sha256(api_key.encode()).hexdigest()[:16]
            if api_key
            else None,
        }
        self.recent.append(record)
        return record

    def count_completions_prompts(self, count: int) -> None:
        """Prompts per received completions request: what batching saves shows up here."""
        self.completions_requests += 1
        self.completions_prompts += count
        self.prompts_per_completions_request[count] += 1

    def count_embedding_inputs(self, inputs: list[Any]) -> None:
        self.embeddings_requests += 1
        self.embeddings_inputs += len(inputs)
        self.inputs_per_embeddings_request[len(inputs)] += 1
        self.recent_embedding_inputs.append(inputs)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_route": dict(self.by_route),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "faults": dict(self.faults),
            "completions_requests": self.completions_requests,
            "completions_prompts": self.completions_prompts,
            "prompts_per_completions_request": {
                str(k): v for k, v in sorted(self.prompts_per_completions_request.items())
            },
            "embeddings_requests": self.embeddings_requests,
            "embeddings_inputs": self.embeddings_inputs,
            "inputs_per_embeddings_request": {
                str(k): v for k, v in sorted(self.inputs_per_embeddings_request.items())
            },
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }
