"""Values only the user can supply (infra.readiness): warnings offline, refused before any
resource in a real run (the program with `is_mocked()` False under the mock runtime)."""

from __future__ import annotations

import json
import logging
import runpy

import pulumi
import pytest

from infra import readiness, stack
from infra.mocking import (
    LiftoffMocks,
    ProgramRun,
    RecordingMonitor,
    flat_config,
    mocked_runtime,
)
from infra.plan import main as plan_main
from infra.settings import SettingsError, load_stack_file

DOMAIN = {"liftoff:domainName": "api.example.com", "liftoff:hostedZoneId": "Z0123456789ABCDEFGHIJ"}
READY_PROD = {
    **DOMAIN,
    "liftoff:clusterEndpointPublicCidrs": '["198.51.99.0/24"]',
    "liftoff:llmApiKey": "sk-test-READY-0123456789",
}


def keys(stack_name: str, overrides: dict[str, str] | None = None) -> list[str]:
    return [b.key for b in readiness.blockers(load_stack_file(stack_name, overrides), stack_name)]


@pytest.mark.parametrize(
    ("overrides", "key", "fixed"),
    [
        (
            {"liftoff:albIngressCidrs": '["192.0.2.0/25"]'},
            "liftoff:albIngressCidrs",
            {"liftoff:albIngressCidrs": '["192.0.3.0/24"]'},
        ),
        (
            {"liftoff:clusterEndpointPublicCidrs": '["198.51.100.7/32"]'},
            "liftoff:clusterEndpointPublicCidrs",
            {"liftoff:clusterEndpointPublicCidrs": '["198.51.101.7/32"]'},
        ),
    ],
)
def test_documentation_ranges_block_and_real_ranges_do_not(
    overrides: dict[str, str], key: str, fixed: dict[str, str]
) -> None:
    assert key in keys("dev", overrides)
    assert key not in keys("dev", fixed)


def test_documentation_range_of_a_private_endpoint_does_not_matter() -> None:
    private = {
        "liftoff:clusterEndpointPublic": "false",
        "liftoff:clusterEndpointPublicCidrs": '["203.0.113.0/24"]',
    }
    assert "liftoff:clusterEndpointPublicCidrs" not in keys("dev", private)


def test_open_eks_api_blocks_in_prod_only() -> None:
    world = {**READY_PROD, "liftoff:clusterEndpointPublicCidrs": '["0.0.0.0/0"]'}
    assert keys("prod", world) == ["liftoff:clusterEndpointPublicCidrs"]
    assert "liftoff:clusterEndpointPublicCidrs" not in keys("dev")  # dev's default 0.0.0.0/0


def test_api_key_and_prod_certificate() -> None:
    assert keys("prod") == [
        "liftoff:clusterEndpointPublicCidrs",
        "liftoff:llmApiKey",
        "liftoff:domainName",
    ]
    assert keys("prod", READY_PROD) == []
    arn = "arn:aws:acm:us-west-2:123456789012:certificate/0e3f2a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    with_arn = {k: v for k, v in READY_PROD.items() if k not in DOMAIN}
    assert keys("prod", {**with_arn, "liftoff:certificateArn": arn}) == []
    assert keys("prod", with_arn) == ["liftoff:domainName"]
    assert "liftoff:domainName" not in keys("dev")  # plain HTTP is a choice outside prod


def test_every_message_names_the_key_and_the_exact_command() -> None:
    found = {b.key: b for b in readiness.blockers(load_stack_file("prod"), "prod")}
    assert found["liftoff:clusterEndpointPublicCidrs"].command == (
        "pulumi config set --stack prod --path 'liftoff:clusterEndpointPublicCidrs[0]' "
        "<your-egress-cidr>"
    )
    assert found["liftoff:llmApiKey"].command == (
        "pulumi config set --stack prod --secret liftoff:llmApiKey <provider-api-key>"
    )
    assert "liftoff:hostedZoneId <route53-zone-id>" in found["liftoff:domainName"].command
    for blocker in found.values():
        assert blocker.message.startswith(f"{blocker.key}: ")
        assert blocker.message.endswith(f"set it with: {blocker.command}")


def test_offline_they_are_warnings_and_the_plan_stays_policy_clean(
    capsys, prod_run: ProgramRun
) -> None:
    run = prod_run
    messages = [b.message for b in readiness.blockers(load_stack_file("prod"), "prod")]
    for message in messages:
        assert f"before a real deployment: {message}" in run.warnings
    assert run.resources  # the program went on to declare the stack
    # One message per problem: the secrets component no longer logs its own llmApiKey note.
    assert len([w for w in run.warnings if "llmApiKey" in w]) == 1

    assert plan_main(["--stack", "prod", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["warnings"] == messages and plan["violations"] == 0
    assert not any("llmApiKey" in n or "RFC 5737" in n for n in plan["notes"])
    assert plan_main(["--stack", "prod"]) == 0
    human = capsys.readouterr().out
    assert human.count("warning: liftoff:") == len(messages)
    assert "note: liftoff:llmApiKey" not in human


def _real_run(stack_name: str, overrides: dict[str, str], monkeypatch) -> RecordingMonitor:
    """The program as `pulumi up` runs it: real-run mode, registering into a recorder."""
    settings = load_stack_file(stack_name, overrides)
    monitor = RecordingMonitor(LiftoffMocks(settings.region, stack_name))
    logger = logging.getLogger(f"liftoff.test.{stack_name}")
    logger.propagate = False
    monkeypatch.setattr(stack, "is_mocked", lambda: False)
    with mocked_runtime(stack_name, flat_config(stack_name, overrides), monitor, logger):
        stack.define_stack()
    return monitor


def test_a_real_run_refuses_before_declaring_any_resource(monkeypatch) -> None:
    messages = [b.message for b in readiness.blockers(load_stack_file("prod"), "prod")]
    settings = load_stack_file("prod")
    monitor = RecordingMonitor(LiftoffMocks(settings.region, "prod"))
    monkeypatch.setattr(stack, "is_mocked", lambda: False)
    with (
        pytest.raises(SettingsError) as refused,
        mocked_runtime("prod", flat_config("prod", {}), monitor),
    ):
        stack.define_stack()
    assert refused.value.problems == messages
    assert str(refused.value).startswith("this stack cannot deploy to a real account")
    assert monitor.recorded == []


def test_the_entry_point_exits_with_a_run_error(monkeypatch) -> None:
    settings = load_stack_file("prod")
    monitor = RecordingMonitor(LiftoffMocks(settings.region, "prod"))
    monkeypatch.setattr(stack, "is_mocked", lambda: False)
    with (
        pytest.raises(pulumi.RunError) as refused,
        mocked_runtime("prod", flat_config("prod", {}), monitor),
    ):
        runpy.run_module("infra.__main__", run_name="__main__")
    assert "liftoff:llmApiKey: unset" in str(refused.value)
    assert monitor.recorded == []


def test_a_real_run_with_every_value_set_deploys(monkeypatch) -> None:
    monitor = _real_run("prod", READY_PROD, monkeypatch)
    types = {r.type for r in monitor.recorded}
    assert "aws:eks/cluster:Cluster" in types and "aws:acm/certificate:Certificate" in types
