"""Shutdown timings: the chain that lets a rollout or scale-in drop no in-flight stream holds
for every allowed stream length, and the ALB/target group limits are respected."""

from __future__ import annotations

import pytest

from infra.settings import load_settings
from infra.timings import ALB_IDLE_TIMEOUT_MAX, DEREGISTRATION_DELAY_MAX, ShutdownTimings


@pytest.mark.parametrize("stream", [10, 30, 60, 120, 600, 1800, 3000])
def test_chain_holds(stream: int) -> None:
    t = ShutdownTimings.for_stream(stream)
    assert t.alb_idle_timeout_s >= stream  # the ALB never cuts a stream it is still relaying
    assert t.server_keepalive_s > t.alb_idle_timeout_s  # the ALB closes idle connections first
    assert 15 <= t.pre_stop_sleep_s <= 30
    assert t.graceful_shutdown_s == stream
    assert t.termination_grace_period_s > t.pre_stop_sleep_s + t.graceful_shutdown_s
    assert t.deregistration_delay_s > t.pre_stop_sleep_s + stream
    assert t.alb_idle_timeout_s <= ALB_IDLE_TIMEOUT_MAX
    assert t.deregistration_delay_s <= DEREGISTRATION_DELAY_MAX


def test_defaults_match_the_chart_defaults() -> None:
    t = ShutdownTimings.from_settings(load_settings({}, "dev"))
    assert (t.server_keepalive_s, t.graceful_shutdown_s, t.pre_stop_sleep_s) == (130, 120, 20)
    assert t.termination_grace_period_s == 150


def test_settings_bound_keeps_the_chain_valid() -> None:
    """longestStreamSeconds is capped so the deregistration delay can still exceed it."""
    with pytest.raises(ValueError, match="liftoff:longestStreamSeconds = 3600: an integer 10-3000"):
        load_settings({"liftoff:longestStreamSeconds": "3600"}, "dev")
