"""Lists within AWS's quotas: the ALB security group's inbound rules (a prefix list when several
CIDRs are given) and the EKS public endpoint's CIDRs."""

from __future__ import annotations

import json

import pytest

from infra.mocking import ProgramRun, run_program
from infra.plan import mock_resource_ids
from infra.policies import RULES_BY_ID, ResourceRecord, RuleContext, StackView
from infra.quotas import EKS_PUBLIC_ACCESS_CIDRS, SG_INBOUND_RULES
from infra.settings import SettingsError, load_stack_file

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
PREFIX_LIST = "aws:ec2/managedPrefixList:ManagedPrefixList"
ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0e3f2a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
HTTPS = {"liftoff:certificateArn": ARN}


def cidrs(count: int, first: int = 1) -> str:
    return json.dumps([f"100.{first + i // 256}.{i % 256}.0/24" for i in range(count)])


def alb_client_rules(run: ProgramRun) -> list:
    return [r for r in run.of_type(INGRESS) if "-alb-in-" in r.name]


def test_one_cidr_keeps_one_rule_per_port(dev_run: ProgramRun) -> None:
    [rule] = alb_client_rules(dev_run)
    assert rule.name == "liftoff-dev-alb-in-80-0" and rule.inputs["cidrIpv4"] == "0.0.0.0/0"
    assert not dev_run.of_type(PREFIX_LIST)


def test_several_cidrs_go_into_one_prefix_list_sized_to_them() -> None:
    run = run_program("dev", {**HTTPS, "liftoff:albIngressCidrs": cidrs(3)})
    plist = run.one(PREFIX_LIST)
    assert plist.inputs["maxEntries"] == 3 and plist.inputs["addressFamily"] == "IPv4"
    assert [e["cidr"] for e in plist.inputs["entries"]] == json.loads(cidrs(3))
    rules = alb_client_rules(run)
    assert sorted(r.inputs["fromPort"] for r in rules) == [80, 443]
    assert {r.inputs["prefixListId"] for r in rules} == {plist.id}
    assert not any(r.inputs.get("cidrIpv4") for r in rules)


def test_world_ingress_in_a_prefix_list_is_still_checked() -> None:
    run = run_program("dev", {"liftoff:albIngressCidrs": '["0.0.0.0/0", "100.1.0.0/24"]'})
    ids = mock_resource_ids(run)
    records = [
        ResourceRecord(r.type, r.name, r.inputs, urn=r.urn, id=ids.get(r.urn))
        for r in run.resources
    ]
    rule = RULES_BY_ID["CKV_AWS_260"]
    context = RuleContext("dev", "us-east-1", "dev")
    assert rule.stack_findings(StackView(records), context) == []  # 80 on the ALB: allowed
    on_ssh = [
        ResourceRecord(r.type, r.name, {**r.inputs, "fromPort": 22, "toPort": 22}, r.urn, id=r.id)
        if r.type == INGRESS and "-alb-in-" in r.name
        else r
        for r in records
    ]
    [finding] = rule.stack_findings(StackView(on_ssh), context)
    assert "tcp 22-22 to 0.0.0.0/0" in finding.message


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        ({**HTTPS, "liftoff:albIngressCidrs": cidrs(SG_INBOUND_RULES // 2)}, True),
        ({**HTTPS, "liftoff:albIngressCidrs": cidrs(SG_INBOUND_RULES // 2 + 1)}, False),
        ({"liftoff:albIngressCidrs": cidrs(SG_INBOUND_RULES)}, True),  # HTTP only: one port
        ({"liftoff:albIngressCidrs": cidrs(SG_INBOUND_RULES + 1)}, False),
    ],
)
def test_alb_ingress_stays_within_the_security_group_rule_quota(
    overrides: dict[str, str], allowed: bool
) -> None:
    if allowed:
        load_stack_file("dev", overrides)
        return
    with pytest.raises(SettingsError) as refused:
        load_stack_file("dev", overrides)
    [problem] = refused.value.problems
    assert problem.startswith("liftoff:albIngressCidrs = [")
    assert f"a security group holds {SG_INBOUND_RULES} inbound rules by default" in problem


def test_duplicate_alb_cidrs_are_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        load_stack_file("dev", {"liftoff:albIngressCidrs": '["100.1.0.0/24", "100.1.0.0/24"]'})
    assert refused.value.problems == [
        'liftoff:albIngressCidrs = ["100.1.0.0/24", "100.1.0.0/24"]: distinct CIDRs (AWS refuses '
        "a duplicate rule)"
    ]


def test_eks_public_access_cidrs_within_the_eks_limit() -> None:
    key = "liftoff:clusterEndpointPublicCidrs"
    load_stack_file("dev", {key: cidrs(EKS_PUBLIC_ACCESS_CIDRS)})
    with pytest.raises(SettingsError) as refused:
        load_stack_file("dev", {key: cidrs(EKS_PUBLIC_ACCESS_CIDRS + 1)})
    [problem] = refused.value.problems
    assert problem.endswith("at most 40 CIDRs (EKS's limit per cluster, not adjustable)")
    # A private endpoint does not use the list.
    private = {key: cidrs(EKS_PUBLIC_ACCESS_CIDRS + 1), "liftoff:clusterEndpointPublic": "false"}
    load_stack_file("dev", private)
