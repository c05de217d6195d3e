"""What this process last saw of each client key's limits, between two admissions.

From the latest admission of a key seen here: its x-ratelimit-* headers and budget left, aged to
now. Used for responses the limiter never saw (a 400 still tells the caller where its limits
stand, without a Redis round trip) and to decide whether a stream may be opened at the provider
before the limiter's verdict.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from app.gcra import Bucket, BurstFractions, remaining_after
from app.limits import KeyPolicy, format_duration
from app.upstream import parse_duration


class LimitView:
    def __init__(self, policies: Mapping[str, KeyPolicy], bursts: BurstFractions) -> None:
        self.policies = policies
        self.bursts = bursts
        # Per key name (bounded by the configured keys): when this process last saw an admission
        # of that key, its x-ratelimit-* headers and budget left.
        self.seen: dict[str, tuple[float, dict[str, str], float | None]] = {}

    def tokens_at_once(self, key_name: str) -> tuple[int, int] | None:
        """(tpm, the most tokens one request may reserve) of the key; None without a tpm."""
        policy = self.policies.get(key_name)
        if policy is None or policy.tpm is None:
            return None
        return policy.tpm, Bucket.of(policy.tpm, self.bursts.tokens).burst

    def remember(self, key_name: str, headers: dict[str, str], budget_left: float | None) -> None:
        self.seen[key_name] = (time.monotonic(), headers, budget_left)

    def known_headers(self, key_name: str, now: float | None = None) -> dict[str, str]:
        """The key's x-ratelimit-* headers as last known in this process, aged to `now`.

        Its backlog (the reset value) drains at the limit's rate, and `remaining` follows from it
        as the limiter computes it (app/gcra.py). Other replicas' admissions since
        then are not seen, so `remaining` may be high by what they admitted. With no admission
        seen yet: the full limit.
        """
        policy = self.policies.get(key_name)
        if policy is None:
            return {}
        seen = self.seen.get(key_name)
        elapsed = 0.0
        if seen is not None:
            elapsed = (time.monotonic() if now is None else now) - seen[0]
        out: dict[str, str] = {}
        for kind, limit in (("requests", policy.rpm), ("tokens", policy.tpm)):
            if limit is None:
                continue  # unlimited: the limiter sends no headers for it either
            backlog = 0.0
            if seen is not None:
                backlog = parse_duration(seen[1].get(f"x-ratelimit-reset-{kind}", "")) or 0.0
                backlog = max(0.0, backlog - elapsed)
            remaining = remaining_after(backlog, limit, self.bursts.for_kind(kind))
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            out[f"x-ratelimit-reset-{kind}"] = format_duration(backlog)
        return out

    def likely_admitted(self, key_name: str, tokens: int, worst_case_usd: float) -> bool:
        """Whether this process' last view of the key says the limiter will admit this request.

        False when nothing is known yet: a call to the provider before the verdict is made only
        when a refusal is unlikely, so a key over its limits or budget costs no provider calls.
        """
        seen = self.seen.get(key_name)
        if seen is None:
            return False
        budget_left = seen[2]
        if budget_left is not None and budget_left < 2 * worst_case_usd:
            return False
        headers = self.known_headers(key_name)
        requests = headers.get("x-ratelimit-remaining-requests")
        if requests is not None and int(requests) < 2:
            return False
        remaining_tokens = headers.get("x-ratelimit-remaining-tokens")
        return remaining_tokens is None or int(remaining_tokens) >= 2 * tokens
