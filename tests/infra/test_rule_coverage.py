"""Every rule of severity error (a mandatory policy: it blocks `pulumi up`) catches the
misconfiguration it is about, on the real prod stack.

Each case starts from the prod program run under mocks, serving HTTPS as a real prod deployment
does, and misconfigures exactly one thing: through a stack setting where settings allow the bad
value, else by changing one resource's inputs as a hand edit of infra/ or a fork would. The rules
then run as a real preview runs them (not offline) and exactly that rule must fail, with severity
error. A new error rule without a case here fails `test_every_error_rule_has_a_case`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from infra.mocking import ProgramRun, run_program
from infra.plan import policy_records
from infra.policies import (
    EKS_CLUSTER,
    EKS_NODE_GROUP,
    KMS_KEY,
    LAUNCH_TEMPLATE,
    REPLICATION_GROUP,
    RULES,
    SECRET,
    Finding,
    ResourceRecord,
    RuleContext,
    evaluate,
)

CERTIFICATE = "arn:aws:acm:us-west-2:123456789012:certificate/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
WITH_HTTPS = {"liftoff:certificateArn": CERTIFICATE}

ADDON = "aws:eks/addon:Addon"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
LB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SUBNET = "aws:ec2/subnet:Subnet"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
BUDGET = "aws:budgets/budget:Budget"
WEB_ACL = "aws:wafv2/webAcl:WebAcl"
ROLE = "aws:iam/role:Role"

DROP = object()  # an input value that removes the input
Records = list[ResourceRecord]
Change = Callable[[Records], Records]


@functools.cache
def _run(overrides: tuple[tuple[str, str], ...]) -> ProgramRun:
    return run_program("prod", dict(overrides))


def _pick(records: Records, type_: str, name: str | None) -> ResourceRecord:
    """The one record of `type_` named `name`; the first of its type when `name` is None."""
    found = [r for r in records if r.type == type_ and (name is None or r.name == name)]
    assert found, f"the prod stack has no {type_} {name or ''}"
    assert name is None or len(found) == 1, f"{len(found)} {type_} named {name}"
    return found[0]


def set_inputs(type_: str, name: str | None = None, **changes: Any) -> Change:
    """Change inputs of one resource (DROP removes an input)."""

    def change(records: Records) -> Records:
        target = _pick(records, type_, name)
        inputs = {**target.inputs, **changes}
        inputs = {k: v for k, v in inputs.items() if v is not DROP}
        changed = dataclasses.replace(target, inputs=inputs)
        return [changed if r is target else r for r in records]

    return change


def edit_inputs(type_: str, name: str | None, edit: Callable[[Records, dict], dict]) -> Change:
    """Replace one resource's inputs by `edit(records, inputs)` (for nested or derived values)."""

    def change(records: Records) -> Records:
        target = _pick(records, type_, name)
        inputs = edit(records, json.loads(json.dumps(dict(target.inputs))))
        changed = dataclasses.replace(target, inputs=inputs)
        return [changed if r is target else r for r in records]

    return change


def remove(type_: str) -> Change:
    def change(records: Records) -> Records:
        assert any(r.type == type_ for r in records), f"the prod stack has no {type_}"
        return [r for r in records if r.type != type_]

    return change


def _metadata_optional(records: Records, inputs: dict) -> dict:
    inputs["metadataOptions"]["httpTokens"] = "optional"
    return inputs


def _volumes_unencrypted(records: Records, inputs: dict) -> dict:
    for mapping in inputs["blockDeviceMappings"]:
        mapping["ebs"]["encrypted"] = "false"
    return inputs


def _nodes_in_public_subnets(records: Records, inputs: dict) -> dict:
    public = [
        r for r in records if r.type == SUBNET and r.inputs["tags"]["liftoff/tier"] == "public"
    ]
    inputs["subnetIds"] = [r.id for r in public]
    return inputs


def _node_role_id(records: Records) -> str:
    [role] = [
        r for r in records if r.type == ROLE and "ec2.amazonaws.com" in r.inputs["assumeRolePolicy"]
    ]
    assert role.id
    return role.id


def _cni_policy_on_node_role(records: Records, inputs: dict) -> dict:
    inputs["role"] = _node_role_id(records)
    return inputs


def _http_forwards(records: Records, inputs: dict) -> dict:
    target_group = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/gw/1"
    inputs["defaultActions"] = [{"type": "forward", "targetGroupArn": target_group}]
    return inputs


def _bucket_without_environment_tag(records: Records, inputs: dict) -> dict:
    inputs["tags"] = {k: v for k, v in inputs["tags"].items() if k != "environment"}
    return inputs


def _waf_blocks_large_bodies(records: Records, inputs: dict) -> dict:
    for rule in inputs["rules"]:
        managed = rule["statement"].get("managedRuleGroupStatement", {})
        if managed.get("name") == "AWSManagedRulesCommonRuleSet":
            managed["ruleActionOverrides"] = [
                o for o in managed["ruleActionOverrides"] if o["name"] != "SizeRestrictions_BODY"
            ]
    return inputs


@dataclass(frozen=True)
class Misconfiguration:
    """Prod with `overrides` (default: serving HTTPS), then `change` applied to its resources,
    checked in `region` (default: the stack's)."""

    overrides: Mapping[str, str] = field(default_factory=lambda: WITH_HTTPS)
    change: Change | None = None
    region: str | None = None

    def records_and_context(self) -> tuple[Records, RuleContext]:
        run = _run(tuple(sorted(self.overrides.items())))
        assert run.settings is not None
        records = policy_records(run)
        if self.change is not None:
            records = self.change(records)
        context = RuleContext(
            stack="prod",
            region=self.region or run.settings.region,
            environment=run.settings.environment,
        )
        return records, context


def _with_https(**overrides: str) -> dict[str, str]:
    return {**WITH_HTTPS, **overrides}


# One case per error rule: the misconfiguration it exists to catch.
CASES: dict[str, Misconfiguration] = {
    "CKV_AWS_58": Misconfiguration(change=set_inputs(EKS_CLUSTER, encryptionConfig=DROP)),
    "CKV_AWS_37": Misconfiguration(_with_https(**{"liftoff:clusterLogTypes": '["api", "audit"]'})),
    "CKV_AWS_38": Misconfiguration(
        _with_https(**{"liftoff:clusterEndpointPublicCidrs": '["0.0.0.0/0"]'})
    ),
    "LIFTOFF_NODES_LAUNCH_TEMPLATE": Misconfiguration(
        change=set_inputs(EKS_NODE_GROUP, launchTemplate=DROP)
    ),
    "LIFTOFF_NETWORK_POLICY_ENFORCED": Misconfiguration(
        change=set_inputs(
            ADDON,
            "liftoff-prod-addon-vpc-cni",
            configurationValues='{"enableNetworkPolicy": "false"}',
        )
    ),
    "LIFTOFF_CNI_OWN_ROLE": Misconfiguration(
        change=edit_inputs(ATTACHMENT, "liftoff-prod-vpc-cni-policy", _cni_policy_on_node_role)
    ),
    "CKV_AWS_79": Misconfiguration(change=edit_inputs(LAUNCH_TEMPLATE, None, _metadata_optional)),
    "CKV_AWS_8": Misconfiguration(change=edit_inputs(LAUNCH_TEMPLATE, None, _volumes_unencrypted)),
    "CKV_AWS_29": Misconfiguration(
        change=set_inputs(REPLICATION_GROUP, atRestEncryptionEnabled=False)
    ),
    "CKV_AWS_30": Misconfiguration(
        change=set_inputs(REPLICATION_GROUP, transitEncryptionMode="preferred")
    ),
    "CKV_AWS_31": Misconfiguration(
        change=set_inputs(REPLICATION_GROUP, authTokenWo=DROP, authToken=DROP, userGroupIds=DROP)
    ),
    "LIFTOFF_CACHE_FAILOVER": Misconfiguration(_with_https(**{"liftoff:cacheReplicas": "0"})),
    "CKV_AWS_149": Misconfiguration(change=set_inputs(SECRET, kmsKeyId=DROP)),
    "CKV_AWS_7": Misconfiguration(change=set_inputs(KMS_KEY, enableKeyRotation=False)),
    "CKV_AWS_131": Misconfiguration(change=set_inputs(LB, dropInvalidHeaderFields=False)),
    "CKV_AWS_150": Misconfiguration(_with_https(**{"liftoff:albDeletionProtection": "false"})),
    "CKV_AWS_91": Misconfiguration(_with_https(**{"liftoff:albAccessLogs": "false"})),
    "CKV_AWS_103": Misconfiguration(
        change=set_inputs(LISTENER, "liftoff-prod-https", sslPolicy="ELBSecurityPolicy-2016-08")
    ),
    "CKV2_AWS_20": Misconfiguration(
        change=edit_inputs(LISTENER, "liftoff-prod-http", _http_forwards)
    ),
    # Prod as committed: no domain or certificate yet. Offline (`make plan`) this is a warning,
    # so a fresh clone plans clean; a real preview must refuse it.
    "LIFTOFF_PROD_HTTPS": Misconfiguration(overrides={}),
    "CKV2_AWS_6": Misconfiguration(change=remove(BUCKET_PAB)),
    "CKV_AWS_260": Misconfiguration(
        change=set_inputs(INGRESS_RULE, "liftoff-prod-endpoints-https", cidrIpv4="0.0.0.0/0")
    ),
    "LIFTOFF_NODES_PRIVATE": Misconfiguration(
        change=edit_inputs(EKS_NODE_GROUP, None, _nodes_in_public_subnets)
    ),
    "CKV2_AWS_11": Misconfiguration(change=remove(FLOW_LOG)),
    "LIFTOFF_BUDGET": Misconfiguration(change=remove(BUDGET)),
    "LIFTOFF_TAGS": Misconfiguration(
        change=edit_inputs(BUCKET, None, _bucket_without_environment_tag)
    ),
    # Settings refuse a non-US aws:region; the CrossGuard pack must refuse it on its own too.
    "LIFTOFF_US_REGION": Misconfiguration(region="eu-west-1"),
    "LIFTOFF_RESOURCE_US_REGION": Misconfiguration(change=set_inputs(BUCKET, region="eu-west-1")),
    "LIFTOFF_WAF_BODY_SIZE": Misconfiguration(
        change=edit_inputs(WEB_ACL, None, _waf_blocks_large_bodies)
    ),
}

ERROR_RULES = [rule.id for rule in RULES if rule.severity == "error"]


def _errors(records: Sequence[ResourceRecord], context: RuleContext) -> list[Finding]:
    return [f for v in evaluate(records, context) for f in v.findings if f.severity == "error"]


def test_every_error_rule_has_a_case() -> None:
    assert sorted(ERROR_RULES) == sorted(CASES), (
        "each error rule needs a Misconfiguration in CASES (and each case a rule): "
        f"missing {sorted(set(ERROR_RULES) - set(CASES))}, "
        f"unknown {sorted(set(CASES) - set(ERROR_RULES))}"
    )


def test_prod_serving_https_passes_every_rule_for_a_real_preview() -> None:
    records, context = Misconfiguration().records_and_context()
    assert _errors(records, context) == []


def test_prod_as_committed_plans_with_zero_errors_offline(prod_run: ProgramRun) -> None:
    assert prod_run.settings is not None
    offline = RuleContext(
        stack="prod", region=prod_run.settings.region, environment="prod", offline=True
    )
    assert _errors(policy_records(prod_run), offline) == []


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_each_error_rule_catches_its_misconfiguration(rule_id: str) -> None:
    records, context = CASES[rule_id].records_and_context()
    errors = _errors(records, context)
    assert errors, f"{rule_id} did not catch its misconfiguration"
    assert {f.rule for f in errors} == {rule_id}, [f"{f.rule}: {f.message}" for f in errors]
