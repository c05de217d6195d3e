"""Shutdown and keep-alive timings are sized together; inconsistent ones refuse to render.

Order of events on a pod's deletion: the ALB starts deregistering it; the native preStop sleep keeps
it serving until the ALB stops sending new requests; SIGTERM starts the server's graceful shutdown
(in-flight streams finish); all of it inside terminationGracePeriodSeconds. The server's keep-alive
outlives the ALB idle timeout so the ALB, not the server, closes idle connections.
"""

from __future__ import annotations

import pytest

from tests.charts.chart import render, template


def test_default_timings_are_consistent() -> None:
    manifests = render()
    pod = manifests.pod_spec
    pre_stop = manifests.container["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "native sleep action, no shell needed in the image"
    sleep_s = pre_stop["sleep"]["seconds"]
    graceful_s = int(manifests.env["LIFTOFF__SERVER__GRACEFUL_SHUTDOWN_S"])
    keepalive_s = int(manifests.env["LIFTOFF__SERVER__KEEPALIVE_TIMEOUT_S"])
    assert 15 <= sleep_s <= 30
    assert pod["terminationGracePeriodSeconds"] > sleep_s + graceful_s
    assert keepalive_s > 60, "above the ALB's default idle timeout"


def test_the_gateway_shutdown_delay_is_0_unless_config_sets_it() -> None:
    """The preStop sleep waits out the ALB's deregistration: the app's own default delay (35 s,
    for load balancers that only see /readyz) would only lengthen every rollout."""
    assert render().env["LIFTOFF__SERVER__SHUTDOWN_DELAY_S"] == "0"
    manifests = render(
        {"config": {"server": {"shutdown_delay_s": 5}}, "terminationGracePeriodSeconds": 160}
    )
    assert manifests.env["LIFTOFF__SERVER__SHUTDOWN_DELAY_S"] == "5"


def test_timings_follow_values() -> None:
    manifests = render(
        {
            "lifecycle": {"preStopSleepSeconds": 25},
            "server": {"gracefulShutdownSeconds": 300, "keepAliveTimeoutSeconds": 400},
            "loadBalancer": {"idleTimeoutSeconds": 350},
            "terminationGracePeriodSeconds": 330,
        }
    )
    assert manifests.container["lifecycle"]["preStop"]["sleep"]["seconds"] == 25
    assert manifests.pod_spec["terminationGracePeriodSeconds"] == 330
    assert manifests.env["LIFTOFF__SERVER__GRACEFUL_SHUTDOWN_S"] == "300"
    assert manifests.env["LIFTOFF__SERVER__KEEPALIVE_TIMEOUT_S"] == "400"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"terminationGracePeriodSeconds": 140},
            "terminationGracePeriodSeconds (140) must be greater than "
            "lifecycle.preStopSleepSeconds (20) + server.gracefulShutdownSeconds (120) = 140",
        ),
        (
            {"lifecycle": {"preStopSleepSeconds": 40}},
            "terminationGracePeriodSeconds (150) must be greater than "
            "lifecycle.preStopSleepSeconds (40)",
        ),
        (
            {"server": {"keepAliveTimeoutSeconds": 60}},
            "server.keepAliveTimeoutSeconds (60) must be greater than "
            "loadBalancer.idleTimeoutSeconds (60)",
        ),
        (
            {"config": {"server": {"shutdown_delay_s": 15}}},
            "terminationGracePeriodSeconds (150) must be greater than "
            "lifecycle.preStopSleepSeconds (20) + config.server.shutdown_delay_s (15) "
            "+ server.gracefulShutdownSeconds (120) = 155",
        ),
        (
            {"loadBalancer": {"idleTimeoutSeconds": 180}},
            "server.keepAliveTimeoutSeconds (130) must be greater than "
            "loadBalancer.idleTimeoutSeconds (180)",
        ),
    ],
    ids=[
        "grace-equal",
        "long-prestop",
        "keepalive-equal-idle",
        "app-shutdown-delay",
        "idle-above-keepalive",
    ],
)
def test_inconsistent_timings_fail_with_the_numbers(values: dict, message: str) -> None:
    result = template(values)
    assert result.returncode != 0
    assert message in result.stderr
