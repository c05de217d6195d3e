"""The WAF lets through every request the gateway accepts: managed body rules count, a size rule
blocks only over the gateway's limit, and a policy rule fails when the WAF would block a body size
the gateway accepts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from app.config import ServerConfig
from infra import policies, waf
from infra.mocking import ProgramRun, run_program
from infra.plan import _context, mock_resource_ids
from infra.policies import RULES_BY_ID, ResourceRecord, RuleContext, StackView
from infra.settings import SettingsError, load_stack_file

WEB_ACL = "aws:wafv2/webAcl:WebAcl"
RELEASE = "kubernetes:helm.sh/v3:Release"
RULE = RULES_BY_ID["LIFTOFF_WAF_BODY_SIZE"]
DEV = RuleContext(stack="dev", region="us-east-1", environment="dev")


def acl_rules(run: ProgramRun) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in run.one(WEB_ACL).inputs["rules"]}


def gateway_server_config(run: ProgramRun) -> dict[str, Any]:
    [release] = [r for r in run.of_type(RELEASE) if "config" in r.inputs.get("values", {})]
    return release.inputs["values"]["config"]["server"]


def records(run: ProgramRun) -> list[ResourceRecord]:
    ids = mock_resource_ids(run)
    return [
        ResourceRecord(r.type, r.name, r.inputs, urn=r.urn, id=ids.get(r.urn))
        for r in run.resources
    ]


def body_size_findings(resources: list[ResourceRecord]) -> list[str]:
    return [f.message for f in RULE.stack_findings(StackView(resources), DEV)]


def test_managed_body_rules_count_instead_of_block(prod_run: ProgramRun) -> None:
    rules = acl_rules(prod_run)
    assert set(rules) == set(waf.MANAGED_RULE_GROUPS)  # 1 MiB bodies: no WAF size rule
    core = rules["AWSManagedRulesCommonRuleSet"]["statement"]["managedRuleGroupStatement"]
    counted = {o["name"]: o["actionToUse"] for o in core["ruleActionOverrides"]}
    assert counted == {
        "SizeRestrictions_BODY": {"count": {}},
        "EC2MetaDataSSRF_BODY": {"count": {}},
        "GenericLFI_BODY": {"count": {}},
        "GenericRFI_BODY": {"count": {}},
        "CrossSiteScripting_BODY": {"count": {}},
    }
    bad_inputs = rules["AWSManagedRulesKnownBadInputsRuleSet"]["statement"]
    assert {o["name"] for o in bad_inputs["managedRuleGroupStatement"]["ruleActionOverrides"]} == {
        "JavaDeserializationRCE_BODY",
        "Log4JRCE_BODY",
    }
    # The groups still block everything else (headers, paths, query strings, IP reputation).
    assert all(r["overrideAction"] == {"none": {}} for r in rules.values())
    assert all(
        rule.endswith("_BODY") for rules_ in waf.MANAGED_RULE_GROUPS.values() for rule in rules_
    )


def test_the_stack_passes_one_body_limit_to_the_gateway_and_the_waf() -> None:
    run = run_program("prod", {"liftoff:maxBodyBytes": "4096"})
    assert gateway_server_config(run)["max_body_bytes"] == 4096
    size = acl_rules(run)[waf.BODY_SIZE_RULE]
    assert size["priority"] == 0 and size["action"] == {"block": {}}
    statement = size["statement"]["sizeConstraintStatement"]
    assert (statement["comparisonOperator"], statement["size"]) == ("GT", 4096)
    assert statement["fieldToMatch"] == {"body": {"oversizeHandling": "MATCH"}}
    priorities = sorted(r["priority"] for r in run.one(WEB_ACL).inputs["rules"])
    assert priorities == list(range(len(priorities)))
    assert body_size_findings(records(run)) == []


def test_a_limit_the_waf_cannot_see_is_left_to_the_gateway(prod_run: ProgramRun) -> None:
    assert gateway_server_config(prod_run)["max_body_bytes"] == 1_048_576
    assert waf.body_size_rule(policies.ALB_BODY_INSPECTION_BYTES + 1, 0) is None
    assert waf.body_size_rule(policies.ALB_BODY_INSPECTION_BYTES, 0) is not None
    assert body_size_findings(records(prod_run)) == []


def test_the_rule_over_the_real_program_passes(prod_run: ProgramRun) -> None:
    assert prod_run.settings is not None
    context = _context(prod_run, prod_run.settings, "prod")
    [verdict] = [v for v in policies.evaluate(records(prod_run), context) if v.rule is RULE]
    assert verdict.applicable and verdict.checked == 1 and verdict.passed


def _with_acl_rules(run: ProgramRun, rules: list[dict[str, Any]]) -> list[ResourceRecord]:
    changed = []
    for record in records(run):
        if record.type == WEB_ACL:
            record = ResourceRecord(record.type, record.name, {**record.inputs, "rules": rules})
        changed.append(record)
    return changed


def test_the_rule_fails_for_the_core_rule_set_without_the_override(prod_run: ProgramRun) -> None:
    rules = copy.deepcopy(prod_run.one(WEB_ACL).inputs["rules"])
    for rule in rules:
        rule["statement"]["managedRuleGroupStatement"].pop("ruleActionOverrides", None)
    [message] = body_size_findings(_with_acl_rules(prod_run, rules))
    assert "AWSManagedRulesCommonRuleSet blocks 8193-byte bodies" in message
    assert "accepts bodies up to 1048576 bytes" in message
    # Counting the whole group lets the bodies through as well.
    for rule in rules:
        rule["overrideAction"] = {"count": {}}
    assert body_size_findings(_with_acl_rules(prod_run, rules)) == []


def size_rule(operator: str, size: int, handling: str | None, action: str = "block") -> dict:
    body = {"oversizeHandling": handling} if handling else {}
    return {
        "name": "custom",
        "action": {action: {}},
        "statement": {
            "sizeConstraintStatement": {
                "comparisonOperator": operator,
                "size": size,
                "fieldToMatch": {"body": body},
            }
        },
    }


@pytest.mark.parametrize(
    ("rule", "blocked"),
    [
        (size_rule("GT", 1_048_576, "MATCH"), 8193),  # the ALB sends 8 KB: oversize matches
        (size_rule("GT", 4096, None), 4097),
        (size_rule("GE", 2048, "CONTINUE"), 2048),
        (size_rule("LT", 10, "NO_MATCH"), 0),  # empty bodies (GET) blocked
        (size_rule("GT", 1_048_576, "NO_MATCH"), None),
        (size_rule("GT", 1_048_576, "CONTINUE"), None),  # it sees 8 KB, never more
        (size_rule("GT", 4096, "MATCH", action="count"), None),
    ],
)
def test_body_sizes_a_size_rule_blocks_behind_an_alb(rule: dict, blocked: int | None) -> None:
    assert policies.smallest_blocked_body(rule) == blocked
    acl = ResourceRecord(WEB_ACL, "waf", {"rules": [rule]})
    assert bool(body_size_findings([acl])) is (blocked is not None)


def test_the_rule_reads_the_gateway_limit_from_its_release() -> None:
    acl = ResourceRecord(WEB_ACL, "waf", {"rules": [size_rule("GT", 4096, "MATCH")]})
    release = ResourceRecord(
        RELEASE, "gateway", {"values": {"config": {"server": {"max_body_bytes": 4096}}}}
    )
    assert body_size_findings([acl, release]) == []
    assert body_size_findings([acl])  # the gateway's default (1 MiB) is larger


def test_constants_match_the_gateway_and_aws() -> None:
    assert ServerConfig().max_body_bytes == policies.GATEWAY_DEFAULT_MAX_BODY_BYTES
    assert load_stack_file("dev").max_body_bytes == ServerConfig().max_body_bytes
    assert policies.ALB_BODY_INSPECTION_BYTES == 8192  # fixed for ALBs (AWS WAF docs)


@pytest.mark.parametrize("value", ["1023", str(64 * 1_048_576 + 1)])
def test_max_body_bytes_stays_within_what_the_gateway_accepts(value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_stack_file("dev", {"liftoff:maxBodyBytes": value})
    assert refused.value.problems == [
        f"liftoff:maxBodyBytes = {value}: an integer 1024-67108864 (bytes)"
    ]


def test_in_preview_the_stack_waf_passes_without_reading_release_values(
    prod_run: ProgramRun,
) -> None:
    """A first preview knows the web ACL but not the Helm values (they hold resource outputs)."""
    unknown_release = ResourceRecord(
        RELEASE, "gateway", unknown_checking_proxy({"values": UNKNOWN_STRING_VALUE})
    )
    acl = next(r for r in records(prod_run) if r.type == WEB_ACL)
    assert body_size_findings([acl, unknown_release]) == []
    blocking = ResourceRecord(WEB_ACL, "waf", {"rules": [size_rule("GT", 4096, "MATCH")]})
    with pytest.raises(UnknownValueError):  # CrossGuard: "can't run during preview"
        body_size_findings([blocking, unknown_release])
