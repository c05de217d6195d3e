"""The fault phases: each runs the mixed load through HAProxy while one thing goes wrong, and
says what every non-success was (explained by the fault, or not) and what the checks found."""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reliability import load
from reliability.cluster import Cluster
from reliability.load import Outcome, Spec
from reliability.usage import settled_usage, token, usage_of

LOAD_KEY = "rel-load"
LIMITED_KEY = "rel-limited"
CUT_KEY = "rel-cut"
CUT_STREAM_TOKENS = 24  # tokens the simulator generates for a stream it cuts mid-way
OUTAGE_KEY = "rel-outage"  # sent to only while Redis is down: its usage must reach Redis after
LIMITED_RPM = 60
RECOVERY_LIMIT_S = 20.0  # Redis back, every gateway must use it again within this
AFTER_RECOVERY_S = 2.0  # load kept up after recovery: the cache must serve hits again
RETRY_AFTER_MS = 300
# From app/defaults.yaml upstream.retry (the run does not change them).
BUDGET_RATIO = 0.2
BUDGET_MIN_PER_S = 1.0
BUDGET_WINDOW_S = 10.0
BURST_FRACTION = 0.1  # limits.rpm_burst_fraction default
EXHAUSTED = "liftoff_upstream_retry_budget_exhausted_total"
_CIRCUIT = re.compile(r'"msg":"circuit (open|half_open|closed)"')


def client_keys() -> list[dict[str, Any]]:
    return [
        {"name": LOAD_KEY, "key": token(LOAD_KEY), "rpm": 10**8, "tpm": 10**8},
        {"name": LIMITED_KEY, "key": token(LIMITED_KEY), "rpm": LIMITED_RPM, "tpm": 10**8},
        {"name": CUT_KEY, "key": token(CUT_KEY), "rpm": 10**8, "tpm": 10**8},
        {"name": OUTAGE_KEY, "key": token(OUTAGE_KEY), "rpm": 10**8, "tpm": 10**8},
    ]


@dataclass
class Phase:
    name: str
    outcomes: list[Outcome]
    started: float
    duration_s: float
    retries: int
    provider_calls: int
    circuit_transitions: int
    unexplained: list[Outcome] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


Explain = Callable[[Outcome, "Phase"], bool]


def _metric_sum(texts: list[str], name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for text in texts
        for line in text.splitlines()
        if line.startswith(name + "{")
    )


def _retries(texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        out.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("liftoff_upstream_retries_total{")
            )
        )
    return out


async def run_phase(
    cluster: Cluster,
    name: str,
    make: Callable[[int], Spec],
    *,
    rate: float,
    duration_s: float,
    explain: Explain,
    during: Callable[[], dict[str, Any]] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Phase, dict[str, Any]]:
    """Load for `duration_s` (or until `stop()`) while `during` (blocking, in a thread) does
    its harm."""
    retries_before = _retries(cluster.metrics())
    calls_before = cluster.simulator_stats()["requests_total"]
    log_offsets = cluster.log_offsets()
    started = time.monotonic()
    exhausted_before = _metric_sum(cluster.metrics(), EXHAUSTED)
    tasks = [load.open_loop(cluster.url, make, rate=rate, duration_s=duration_s, stop=stop)]
    if during is not None:
        tasks.append(asyncio.to_thread(during))
    results = await asyncio.gather(*tasks)
    outcomes: list[Outcome] = results[0]
    info: dict[str, Any] = results[1] if during is not None else {}
    elapsed = time.monotonic() - started
    retries_after = _retries(cluster.metrics())
    # A restarted gateway starts its counters at 0: count what each process added.
    retries = sum(
        after if after < before else after - before
        for before, after in zip(retries_before, retries_after, strict=True)
    )
    transitions = len(_CIRCUIT.findall(cluster.log_since(log_offsets)))
    exhausted = _metric_sum(cluster.metrics(), EXHAUSTED) - exhausted_before
    calls = cluster.simulator_stats()["requests_total"] - calls_before
    cluster.phase_calls.append((started, time.monotonic(), calls))
    phase = Phase(name, outcomes, started, elapsed, int(retries), calls, transitions)
    phase.checks["retry_budget_exhausted"] = int(max(0, exhausted))
    # An error is a complete answer other than success or a 429 (the load's limits, or the
    # provider's passed on): a 5xx, an error event, another 4xx. Each must have a reason.
    phase.unexplained = [
        o
        for o in outcomes
        if o.complete
        and (o.status >= 500 or o.stream_error or o.status not in (200, 429))
        and not explain(o, phase)
    ]
    if any(not o.complete for o in outcomes):
        phase.problems.append(f"{sum(not o.complete for o in outcomes)} requests lost")
    if phase.unexplained:
        phase.problems.append(f"{len(phase.unexplained)} unexplained errors")
    return phase, info


def _faulted(
    spec: Spec, fault: str, *, fail_times: int | None = None, retry_after_ms: int | None = None
) -> Spec:
    spec.headers["x-simulator-fault"] = fault
    if fail_times is not None:
        spec.headers["x-simulator-fail-times"] = str(fail_times)
        spec.headers["x-simulator-request-key"] = uuid.uuid4().hex
    if retry_after_ms is not None:
        spec.headers["x-simulator-retry-after-ms"] = str(retry_after_ms)
    spec.tag = fault if fail_times is None else f"{fault}x{fail_times}"
    return spec


def _storm(rate: float, duration_s: float, share: tuple[float, float] = (0.25, 0.75)):
    """Whether request n falls in the storm: the middle part of the phase."""
    first, last = int(rate * duration_s * share[0]), int(rate * duration_s * share[1])
    return lambda n: first <= n < last


# --- the phases ----------------------------------------------------------------------------


def max_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, low = 0, 0
    for high, t in enumerate(times):
        while t - times[low] >= window_s:
            low += 1
        best = max(best, high - low + 1)
    return best


async def redis_kill(cluster: Cluster, rate: float, duration_s: float, seed: int) -> Phase:
    rng = random.Random(seed)
    outage = {"on": False}  # set while Redis is surely down (the during thread)

    def make(n: int) -> Spec:
        if n % 5 == 0:  # a fifth of the load hammers one rpm-limited key
            body = load.chat_body(f"limited {load.unique()}", False, False)
            return Spec("chat", False, body, token(LIMITED_KEY), tag="limited")
        if n % 5 == 1 and outage["on"]:
            # Decided without Redis: the answers' usage must be in /v1/usage once it is back.
            body = load.chat_body(f"outage {load.unique()}", False, False)
            return Spec("chat", False, body, token(OUTAGE_KEY), tag="outage")
        return load.mixed(rng, token(LOAD_KEY))

    recovered_at: list[float] = []

    def during() -> dict[str, Any]:
        time.sleep(duration_s * 0.15)
        down = time.monotonic()
        cluster.redis.stop()
        states: Counter[str] = Counter()
        time.sleep(0.5)
        outage["on"] = True
        while time.monotonic() < down + duration_s * 0.3:
            for ready in cluster.readiness():
                states[(ready or {}).get("state_backend", "no answer")] += 1
            time.sleep(0.2)
        outage["on"] = False
        cluster.redis.start()
        up = time.monotonic()
        # Each gateway probes Redis again after a back-off that doubles per failure (up to 15 s),
        # with the load's requests: the load goes on until all are back, at most 20 s.
        while time.monotonic() < up + RECOVERY_LIMIT_S:
            if all((r or {}).get("state_backend") == "healthy" for r in cluster.readiness()):
                recovered_at.append(time.monotonic())
                break
            time.sleep(0.1)
        return {
            "down": down,
            "up": up,
            "recovered": recovered_at[0] if recovered_at else None,
            "states_during": dict(states),
        }

    def explain(outcome: Outcome, phase: Phase) -> bool:
        return False  # with on_redis_failure: local nothing but the limited key's 429 is expected

    began = time.monotonic()
    phase, info = await run_phase(
        cluster, "redis-kill", make, rate=rate, duration_s=duration_s + RECOVERY_LIMIT_S,
        explain=explain, during=during,
        stop=lambda: bool(recovered_at)
        and time.monotonic() > max(recovered_at[0] + AFTER_RECOVERY_S, began + duration_s),
    )  # fmt: skip
    recovered = info.get("recovered")
    _limited_key_check(phase, cluster, info)
    await _outage_usage_check(phase, cluster)
    phase.checks["outage_s"] = round(info["up"] - info["down"], 2)
    phase.checks["states_during_outage"] = info["states_during"]
    phase.checks["recovery_s"] = None if recovered is None else round(recovered - info["up"], 2)
    if recovered is None:
        phase.problems.append(
            f"a gateway did not report the state backend healthy {RECOVERY_LIMIT_S} s after Redis "
            "came back"
        )
    else:
        after = [o for o in phase.outcomes if o.started > recovered + 0.2]
        hits = sum(o.cache == "hit" for o in after)
        phase.checks["cache_hits_after_recovery"] = hits
        if after and not hits:
            phase.problems.append("no cache hit after Redis came back")
    if "degraded" not in info["states_during"]:
        phase.problems.append(f"no gateway reported degraded during the outage: {info}")
    phase.checks["timeline_s"] = {
        name: None if info[name] is None else round(info[name] - phase.started, 2)
        for name in ("down", "up", "recovered")
    } | {"load_end": round(max(o.started for o in phase.outcomes) - phase.started, 2)}
    return phase


def gcra_allowance(limit: int, seconds: float) -> float:
    """The most a GCRA bucket of `limit` a minute admits in `seconds` from full (app/gcra.py):
    the burst B, then the steady rate (limit + 1 - B) a minute."""
    burst = max(1, math.floor(BURST_FRACTION * limit))
    return burst + (limit + 1 - burst) * seconds / 60


def _limited_key_check(phase: Phase, cluster: Cluster, info: dict[str, Any]) -> None:
    """The rpm-limited key against what the limiter documents: Redis's bucket before the
    outage, each replica's local bucket of limit / local_fallback_replicas until it uses Redis
    again, and a new bucket after (the restarted server kept no state)."""
    limited = [o for o in phase.outcomes if o.spec.tag == "limited" and o.status == 200]
    replicas = len(cluster.gateways)
    local = max(1, LIMITED_RPM // replicas)
    end = max(o.ended for o in phase.outcomes)
    # The gateways decide locally from Redis's stop until each probed it again and found it.
    back = info["recovered"] or end
    before = info["down"] - phase.started
    outage = back - info["down"]
    after = end - back
    allowance = (
        gcra_allowance(LIMITED_RPM, before)
        + replicas * gcra_allowance(local, outage)
        + gcra_allowance(LIMITED_RPM, after)
    )
    in_60s = max_in_any_window([o.ended for o in limited], 60.0)
    phase.checks["limited_key"] = {
        "rpm": LIMITED_RPM,
        "sent": sum(o.spec.tag == "limited" for o in phase.outcomes),
        "accepted": len(limited),
        "documented_allowance": round(allowance, 1),
        "max_in_any_60s": in_60s,
        "local_fallback_per_replica_rpm": local,
    }
    if len(limited) > allowance:
        phase.problems.append(
            f"rpm-{LIMITED_RPM} key: {len(limited)} accepted > {allowance:.1f} the limiter and "
            "its local fallback allow"
        )
    if in_60s > LIMITED_RPM:
        phase.problems.append(
            f"rpm-{LIMITED_RPM} key accepted {in_60s} in one 60-s window through the outage"
        )


async def _outage_usage_check(phase: Phase, cluster: Cluster) -> None:
    """The answers given while Redis was down are in /v1/usage once it is back: the restarted
    server began empty, so the outage key's usage is exactly what the gateways recorded of them
    after the outage (settlements kept in each gateway and replayed)."""
    answered = [o for o in phase.outcomes if o.spec.tag == "outage" and o.succeeded]
    usage = await settled_usage(cluster, OUTAGE_KEY)
    expected = {
        "requests": len(answered),
        "prompt_tokens": sum((o.usage or {}).get("prompt_tokens", 0) for o in answered),
        "completion_tokens": sum((o.usage or {}).get("completion_tokens", 0) for o in answered),
    }
    recorded = {name: usage[name] for name in expected}
    phase.checks["usage_answered_during_outage"] = {"answers": expected, "recorded": recorded}
    if not answered:
        phase.problems.append("no request of the outage key was answered while Redis was down")
    elif recorded != expected:
        phase.problems.append(
            f"answered while Redis was down: {expected}, but /v1/usage recorded {recorded}"
        )


def _budget_check(phase: Phase, cluster: Cluster) -> None:
    """Retries within budget: ratio x the first calls in the phase and in the budget window
    before it (earned by the previous phase's calls, counted in full), plus the reserve."""
    gateways = len(cluster.gateways)
    first_calls = phase.provider_calls - phase.retries
    earned_before = sum(
        calls for _, end, calls in cluster.phase_calls[:-1] if end > phase.started - BUDGET_WINDOW_S
    )
    allowed = (
        BUDGET_RATIO * (first_calls + earned_before)
        + BUDGET_MIN_PER_S * (phase.duration_s + BUDGET_WINDOW_S) * gateways
    )
    phase.checks["retry_budget"] = {
        "first_calls": first_calls,
        "calls_in_window_before": earned_before,
        "retries": phase.retries,
        "allowed": round(allowed, 1),
        "provider_calls_per_request": round(phase.provider_calls / max(1, len(phase.outcomes)), 3),
    }
    if phase.retries > allowed:
        phase.problems.append(f"{phase.retries} retries > budget {allowed:.0f}")


async def storm_429(cluster: Cluster, rate: float, duration_s: float, seed: int) -> Phase:
    rng = random.Random(seed)
    in_storm = _storm(rate, duration_s)

    def make(n: int) -> Spec:
        spec = load.mixed(rng, token(LOAD_KEY))
        spec.headers["x-liftoff-cache"] = "bypass"  # every request reaches the provider
        if not in_storm(n):
            return spec
        if rng.random() < 0.5:
            return _faulted(spec, "429", fail_times=1, retry_after_ms=RETRY_AFTER_MS)
        return _faulted(spec, "429", retry_after_ms=RETRY_AFTER_MS)

    def explain(outcome: Outcome, phase: Phase) -> bool:
        return False  # a 429 (the provider's, passed on) is the only error a storm may cause

    phase, _ = await run_phase(
        cluster, "429-storm", make, rate=rate, duration_s=duration_s, explain=explain
    )
    _budget_check(phase, cluster)
    transient = [o for o in phase.outcomes if o.spec.tag == "429x1"]
    retried_ok = [o for o in transient if o.succeeded]
    early = [o for o in retried_ok if o.latency_ms < RETRY_AFTER_MS]
    phase.checks["retry_after"] = {
        "transient_429": len(transient),
        "succeeded_after_retry": len(retried_ok),
        "min_latency_ms_of_those": round(min((o.latency_ms for o in retried_ok), default=0), 1),
        "faster_than_retry_after": len(early),
    }
    if early:
        phase.problems.append(f"{len(early)} retried 429s answered before Retry-After")
    persistent = [o for o in phase.outcomes if o.spec.tag == "429"]
    wrong = [o for o in persistent if o.complete and o.status not in (200, 429)]
    if wrong:
        phase.problems.append(
            f"persistent 429s answered {Counter(o.status for o in wrong)} instead of 429"
        )
    clean = [o for o in phase.outcomes if not o.spec.tag and o.complete and not o.succeeded]
    if clean:
        phase.problems.append(
            f"{len(clean)} clean requests failed: "
            f"{Counter((o.status, o.error_code) for o in clean)}"
        )
    return phase


def _circuit_explains(outcome: Outcome) -> bool:
    return outcome.status == 503 and outcome.error_code == "upstream_unavailable"


async def storm_5xx(cluster: Cluster, rate: float, duration_s: float, seed: int) -> Phase:
    rng = random.Random(seed)
    in_storm = _storm(rate, duration_s, (0.1, 0.4))

    def make(n: int) -> Spec:
        spec = load.mixed(rng, token(LOAD_KEY))
        spec.headers["x-liftoff-cache"] = "bypass"
        if not in_storm(n):
            return spec
        if rng.random() < 0.3:
            return _faulted(spec, rng.choice(("500", "502")), fail_times=1)
        return _faulted(spec, rng.choice(("500", "502", "503")))

    def explain(outcome: Outcome, phase: Phase) -> bool:
        if _circuit_explains(outcome):
            return True  # the circuit is open: fail fast, by design
        if outcome.spec.tag in ("500x1", "502x1"):
            # Failed once, so a retry would have succeeded: only a spent budget explains it.
            return outcome.status == 502 and phase.checks["retry_budget_exhausted"] > 0
        if outcome.spec.tag in ("500", "502", "503"):
            return outcome.status in (502, 503) and outcome.error_code in (
                "upstream_error", "upstream_unavailable", "stream_interrupted", None,
            )  # fmt: skip
        return False

    phase, _ = await run_phase(
        cluster, "5xx", make, rate=rate, duration_s=duration_s, explain=explain
    )
    _budget_check(phase, cluster)
    await _circuit_cycle(phase, cluster)
    return phase


async def _circuit_cycle(phase: Phase, cluster: Cluster) -> None:
    """The circuit opened during the storm, and once the storm is over (and the breaker's reset
    time has passed) clean requests of every kind succeed and every circuit is closed."""
    if phase.circuit_transitions < 2:
        phase.problems.append(
            f"circuit transitions {phase.circuit_transitions}: expected it to open and close"
        )
    await asyncio.sleep(cluster.timings.breaker_reset_s + 0.5)
    rng = random.Random(len(phase.outcomes))
    probes: list[Outcome] = []
    for _ in range(3):  # the first answers may be half-open probes, one per model and gateway
        probes += await load.burst(
            [cluster.url], [load.mixed(rng, token(LOAD_KEY)) for _ in range(10)]
        )
    failed = Counter((o.spec.kind, o.status, o.error_code) for o in probes[10:] if not o.succeeded)
    phase.checks["after_storm"] = {
        "probes": len(probes),
        "failed_first_10": sum(not o.succeeded for o in probes[:10]),
        "failed_later": sum(failed.values()),
    }
    if failed:
        phase.problems.append(f"clean requests still failing after the storm: {dict(failed)}")
    open_now = [
        line
        for text in cluster.metrics()
        for line in text.splitlines()
        if line.startswith("liftoff_circuit_state{") and not line.endswith(" 0.0")
    ]
    if open_now:
        phase.problems.append(f"circuit not closed after the storm: {open_now}")


async def hung_upstream(cluster: Cluster, rate: float, duration_s: float, seed: int) -> Phase:
    rng = random.Random(seed)
    in_storm = _storm(rate, duration_s, (0.1, 0.4))

    def make(n: int) -> Spec:
        spec = load.mixed(rng, token(LOAD_KEY))
        spec.headers["x-liftoff-cache"] = "bypass"
        if in_storm(n) and rng.random() < 0.7:
            return _faulted(spec, "timeout")
        return spec

    def explain(outcome: Outcome, phase: Phase) -> bool:
        if _circuit_explains(outcome):
            return True
        if outcome.spec.tag == "timeout":
            return (outcome.status, outcome.error_code) in (
                (504, "upstream_timeout"), (503, "overloaded"),
            ) or (outcome.stream_error and outcome.error_code == "upstream_timeout")  # fmt: skip
        return False

    phase, _ = await run_phase(
        cluster, "hung-upstream", make, rate=rate, duration_s=duration_s, explain=explain
    )
    bound_ms = cluster.timings.worst_case_s() * 1000
    slowest = max((o.latency_ms for o in phase.outcomes), default=0.0)
    phase.checks["hang_bound_ms"] = round(bound_ms)
    phase.checks["slowest_ms"] = round(slowest)
    phase.checks["timeouts_504"] = sum(o.status == 504 for o in phase.outcomes)
    if slowest > bound_ms:
        phase.problems.append(f"a request took {slowest:.0f} ms > {bound_ms:.0f} ms bound")
    await _circuit_cycle(phase, cluster)
    return phase


async def stream_cut(cluster: Cluster, rate: float, duration_s: float, seed: int) -> Phase:
    rng = random.Random(seed)
    usage_before = await asyncio.to_thread(usage_of, cluster, CUT_KEY)

    def make(n: int) -> Spec:
        if n % 4:
            return load.mixed(rng, token(LOAD_KEY))
        prompt = f"cut stream {load.unique()}"
        if n % 8:
            spec = Spec("chat", True, load.chat_body(prompt, True, False), token(CUT_KEY))
        else:
            body = load.responses_body(prompt, True, False)
            spec = Spec("responses", True, body, token(CUT_KEY))
        spec.headers["x-simulator-tokens"] = str(CUT_STREAM_TOKENS)
        return _faulted(spec, "cut")

    def explain(outcome: Outcome, phase: Phase) -> bool:
        return (
            outcome.spec.tag == "cut"
            and outcome.stream_error
            and (outcome.error_code == "stream_interrupted")
        )

    phase, _ = await run_phase(
        cluster, "stream-cut", make, rate=rate, duration_s=duration_s, explain=explain
    )
    cut = [o for o in phase.outcomes if o.spec.tag == "cut"]
    no_error_event = [o for o in cut if o.status == 200 and o.complete and not o.stream_error]
    if no_error_event:
        phase.problems.append(f"{len(no_error_event)} cut streams ended without an error event")
    usage_after = await settled_usage(cluster, CUT_KEY)
    await asyncio.sleep(2.0)  # a settlement later than that is as good as lost: count it apart
    usage_late = await asyncio.to_thread(usage_of, cluster, CUT_KEY)
    billed = usage_after["completion_tokens"] - usage_before["completion_tokens"]
    delivered = sum(o.content_tokens for o in cut)
    relayed_chunks = sum(o.chunks if o.spec.kind == "chat" else o.content_tokens for o in cut)
    phase.checks["billing"] = {
        "cut_streams": len(cut),
        "billed_completion_tokens": billed,
        "tokens_delivered": delivered,
        "chunks_relayed": relayed_chunks,
        "billed_requests": usage_after["requests"] - usage_before["requests"],
        "billed_requests_2s_later": usage_late["requests"] - usage_before["requests"],
    }
    answered = sum(o.status == 200 for o in cut)
    # A client that gave up before any answer (lost, counted as such) may still have been
    # served into the void, and billed: at most its whole stream.
    gave_up = len(cut) - answered
    billed_requests = usage_late["requests"] - usage_before["requests"]
    phase.checks["billing"]["gave_up_before_an_answer"] = gave_up
    if not answered <= billed_requests <= answered + gave_up:
        phase.problems.append(
            f"{answered} cut streams answered ({gave_up} given up before an answer), "
            f"{billed_requests} billed (settled usage requests)"
        )
    if billed > delivered + gave_up * CUT_STREAM_TOKENS:
        phase.problems.append(
            f"cut streams billed {billed} completion tokens for {delivered} generated "
            f"({relayed_chunks} chunks relayed, role-only chunks included; {gave_up} given up "
            f"before an answer, up to {CUT_STREAM_TOKENS} each)"
        )
    return phase


async def rolling_restart(cluster: Cluster, rate: float, duration_s: float, seed: int) -> Phase:
    rng = random.Random(seed)

    finished: list[float] = []

    def during() -> dict[str, Any]:
        time.sleep(1.0)
        drains, back = [], []
        for gateway in cluster.gateways:
            drains.append(round(cluster.sigterm_gateway(gateway), 2))
            cluster.start_gateway(gateway)
            # The next one goes only once HAProxy sends to this one again and it answers
            # (a fixed wait may leave one gateway, cold or unseen, to carry the whole load).
            _, answered = cluster.balancer_view(gateway)
            back.append(round(cluster.wait_balanced(gateway, answered_more_than=answered), 2))
        finished.append(time.monotonic())
        return {"drain_s": drains, "back_in_balancer_s": back, "finished": finished[0]}

    phase, info = await run_phase(
        cluster, "rolling-restart", make=lambda n: load.mixed(rng, token(LOAD_KEY)), rate=rate,
        duration_s=duration_s, explain=lambda o, p: False, during=during,
        stop=lambda: bool(finished) and time.monotonic() > finished[0] + 1.0,
    )  # fmt: skip
    phase.checks["drain_s"] = info["drain_s"]
    phase.checks["back_in_balancer_s"] = info["back_in_balancer_s"]
    phase.checks["restarts_done_before_load_ended"] = info["finished"] <= max(
        o.started for o in phase.outcomes
    )
    if not phase.checks["restarts_done_before_load_ended"]:
        phase.problems.append("the load ended before both restarts were done: lengthen the phase")
    failed = [o for o in phase.outcomes if o.complete and not o.succeeded]
    if failed:
        phase.problems.append(
            f"{len(failed)} requests failed: {Counter((o.status, o.error_code) for o in failed)}"
        )
    return phase


PHASES = (
    ("redis-kill", redis_kill),
    ("429-storm", storm_429),
    ("5xx", storm_5xx),
    ("hung-upstream", hung_upstream),
    ("stream-cut", stream_cut),
    ("rolling-restart", rolling_restart),
)
