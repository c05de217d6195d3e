"""How the simulated provider behaves, and the model catalog it answers for."""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = ("429", "500", "502", "503", "504", "timeout", "cut", "401")
DEFAULT_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o4-mini-2025-04-16",
    "o4-mini",
    "gpt-5-mini-2025-08-07",
    "gpt-5-mini",
    "gpt-3.5-turbo-instruct",
    "omni-moderation-latest",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "gpt-image-1",
    "whisper-1",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-tts",
    "tts-1",
)
# The provider answers with the pinned version of a floating name.
PINNED_VERSIONS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
}
# Models that think before answering: hidden reasoning tokens, counted in the output tokens and
# reported as reasoning tokens, all within the output cap.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
REASONING_TOKENS = {"minimal": 0, "low": 64, "medium": 192, "high": 512}  # plus up to as many


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulated provider behaves. Every delay may be 0 (benchmarks)."""

    ttft_ms: float = 50.0  # time to first token
    token_ms: float = 5.0  # delay between tokens
    fault_rate: float = 0.0  # share of API requests that get a random fault
    fault_kinds: tuple[str, ...] = ("429", "500", "503")
    seed: int = 0  # output text and the fault sequence are reproducible for a seed
    timeout_fault_s: float = 600.0  # how long a "timeout" fault hangs (longer than any client read)
    retry_after_s: float = 1.0  # what a 429 asks the client to wait
    length_range: tuple[int, int] = (16, 64)  # natural completion length in tokens
    revoked_keys: frozenset[str] = frozenset({"sk-sim-revoked"})
    models: tuple[str, ...] | None = None  # None: any model name is served
    stored_responses: int = 10_000  # Responses API objects kept for retrieval, oldest dropped
    stored_objects: int = 1_000  # files, uploads, batches, vector stores kept (each kind)
    stored_file_bytes: int = 1 << 30  # bytes of file content kept, oldest files dropped

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "token_ms", "timeout_fault_s", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"SimulatorOptions.{name} must be a number >= 0, got {value!r}")
        for name in ("stored_responses", "stored_objects", "stored_file_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SimulatorOptions.{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(
                f"SimulatorOptions.fault_rate must be in [0, 1], got {self.fault_rate!r}"
            )
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown or not self.fault_kinds:
            raise ValueError(
                f"SimulatorOptions.fault_kinds must be a non-empty subset of {list(FAULT_KINDS)}, "
                f"got {list(self.fault_kinds)!r}"
            )
        low, high = self.length_range
        if not 1 <= low <= high:
            raise ValueError(
                f"SimulatorOptions.length_range must be (low, high) with 1 <= low <= high, "
                f"got {self.length_range!r}"
            )
