"""HTTPS: an ACM certificate validated by DNS for liftoff:domainName, or liftoff:certificateArn in
the stack's region; plain HTTP in prod is a policy error for a real run, a warning offline."""

from __future__ import annotations

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from infra.certificate import is_dns_name
from infra.mocking import ProgramRun, run_program
from infra.policies import RULES_BY_ID, ResourceRecord, RuleContext, StackView, evaluate
from infra.settings import SettingsError, load_stack_file

ZONE = "Z0123456789ABCDEFGHIJ"
DOMAIN = {"liftoff:domainName": "api.example.com", "liftoff:hostedZoneId": ZONE}
ARN_WEST_2 = "arn:aws:acm:us-west-2:123456789012:certificate/0e3f2a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
CERTIFICATE = "aws:acm/certificate:Certificate"
VALIDATION = "aws:acm/certificateValidation:CertificateValidation"
RECORD = "aws:route53/record:Record"
LISTENER = "aws:lb/listener:Listener"
ALB = "aws:lb/loadBalancer:LoadBalancer"


@pytest.fixture(scope="module")
def domain_run() -> ProgramRun:
    return run_program("prod", DOMAIN)


def test_the_stack_requests_a_dns_validated_certificate(domain_run: ProgramRun) -> None:
    certificate = domain_run.one(CERTIFICATE)
    assert certificate.inputs["domainName"] == "api.example.com"
    assert certificate.inputs["validationMethod"] == "DNS"
    validation = domain_run.one(RECORD, "liftoff-prod-domain-validation")
    assert validation.inputs["zoneId"] == ZONE and validation.inputs["allowOverwrite"] is True
    # The record is what ACM asked for (the mock answers like ACM: a CNAME under the domain).
    assert validation.inputs["type"] == "CNAME"
    assert validation.inputs["name"].endswith(".api.example.com.")
    assert validation.inputs["records"][0].endswith(".acm-validations.aws.")
    waiting = domain_run.one(VALIDATION)
    assert waiting.inputs["certificateArn"] == certificate.id
    assert waiting.inputs["validationRecordFqdns"] == [validation.inputs["name"].rstrip(".")]


def test_the_https_listener_waits_for_validation(domain_run: ProgramRun) -> None:
    https = next(r for r in domain_run.of_type(LISTENER) if r.inputs["protocol"] == "HTTPS")
    validation = domain_run.one(VALIDATION)
    assert https.inputs["certificateArn"] == domain_run.one(CERTIFICATE).id
    assert validation.urn in https.options["dependencies"]
    http = next(r for r in domain_run.of_type(LISTENER) if r.inputs["protocol"] == "HTTP")
    assert http.inputs["defaultActions"][0]["redirect"]["protocol"] == "HTTPS"


def test_the_domain_points_at_the_load_balancer(domain_run: ProgramRun) -> None:
    alias = domain_run.one(RECORD, "liftoff-prod-domain-alias-a")
    alb = domain_run.one(ALB)
    assert alias.inputs["name"] == "api.example.com" and alias.inputs["type"] == "A"
    [target] = alias.inputs["aliases"]
    assert target["name"].startswith("liftoff-prod-alb-") and target["zoneId"] == "Z35SXDOTRQ7X7K"
    assert alb.inputs["ipAddressType"] == "ipv4"  # no AAAA record for an IPv4 load balancer
    assert not [r for r in domain_run.of_type(RECORD) if r.inputs["type"] == "AAAA"]
    assert domain_run.outputs["url"] == "https://api.example.com"


def test_without_a_domain_no_certificate_or_records_are_declared(prod_run: ProgramRun) -> None:
    assert not prod_run.of_type(CERTIFICATE) and not prod_run.of_type(RECORD)
    assert prod_run.outputs["url"].startswith("http://")


def test_a_certificate_arn_stays_the_alternative() -> None:
    run = run_program("prod", {"liftoff:certificateArn": ARN_WEST_2})
    https = next(r for r in run.of_type(LISTENER) if r.inputs["protocol"] == "HTTPS")
    assert https.inputs["certificateArn"] == ARN_WEST_2
    assert not run.of_type(CERTIFICATE)
    assert run.outputs["url"].startswith("https://liftoff-prod-alb-")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"liftoff:certificateArn": ARN_WEST_2.replace("us-west-2", "us-east-1")},
            "liftoff:certificateArn = arn:aws:acm:us-east-1:123456789012:certificate/"
            "0e3f2a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b: a certificate in the stack's region us-west-2",
        ),
        (
            {"liftoff:domainName": "api.example.com"},
            "liftoff:domainName = api.example.com: set together with liftoff:hostedZoneId",
        ),
        (
            {"liftoff:hostedZoneId": ZONE},
            f"liftoff:hostedZoneId = {ZONE}: set together with liftoff:domainName",
        ),
        (
            {**DOMAIN, "liftoff:certificateArn": ARN_WEST_2},
            "liftoff:certificateArn = " + ARN_WEST_2 + ": unset when liftoff:domainName is set",
        ),
        (
            {**DOMAIN, "liftoff:hostedZoneId": "/hostedzone/Z0123"},
            "liftoff:hostedZoneId = /hostedzone/Z0123: a Route 53 hosted zone id",
        ),
        (
            {**DOMAIN, "liftoff:domainName": "https://api.example.com"},
            "liftoff:domainName = https://api.example.com: a DNS name like api.example.com",
        ),
    ],
)
def test_certificate_settings_refuse_what_aws_would(
    overrides: dict[str, str], expected: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_stack_file("prod", overrides)
    assert any(p.startswith(expected) for p in refused.value.problems), refused.value.problems


def test_certificate_settings_accept_the_regional_arn_and_a_domain() -> None:
    assert load_stack_file("prod", {"liftoff:certificateArn": ARN_WEST_2}).certificate_arn
    settings = load_stack_file("prod", DOMAIN)
    assert (settings.domain_name, settings.hosted_zone_id) == ("api.example.com", ZONE)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("api.example.com", True),
        ("a-1.b.example.io", True),
        (f"{'a' * 30}.{'b' * 30}.io", True),  # 64 characters: ACM's limit for the name
        (f"{'a' * 30}.{'b' * 31}.io", False),
        (f"{'a' * 64}.io", False),
        ("localhost", False),
        ("-api.example.com", False),
        ("api-.example.com", False),
        ("API.example.com", False),
        ("*.example.com", False),
        ("api..example.com", False),
        ("10.0.0.1", False),
    ],
)
def test_dns_names(name: str, valid: bool) -> None:
    assert is_dns_name(name) is valid


PROD = RuleContext(stack="prod", region="us-west-2", environment="prod")
PROD_OFFLINE = RuleContext(stack="prod", region="us-west-2", environment="prod", offline=True)


def _prod_https_findings(records: list[ResourceRecord], context: RuleContext) -> list:
    verdict = next(v for v in evaluate(records, context) if v.rule.id == "LIFTOFF_PROD_HTTPS")
    return list(verdict.findings)


def _listener(protocol: str, certificate: object = None) -> ResourceRecord:
    inputs = {"protocol": protocol, "port": 443 if protocol == "HTTPS" else 80}
    if certificate is not None:
        inputs["certificateArn"] = certificate
    return ResourceRecord(LISTENER, protocol.lower(), inputs)


def test_plain_http_in_prod_is_an_error_for_a_real_run_and_a_warning_offline() -> None:
    http_only = [_listener("HTTP")]
    [real] = _prod_https_findings(http_only, PROD)
    [offline] = _prod_https_findings(http_only, PROD_OFFLINE)
    assert (real.severity, offline.severity) == ("error", "warning")
    assert "liftoff:domainName" in real.message


def test_prod_https_passes_in_preview_while_the_certificate_is_not_yet_issued() -> None:
    """In a real preview the certificate ARN of the ACM path is unknown (CrossGuard's proxy
    raises on reading it): the rule must pass on the HTTPS listener, not skip or fail."""
    records = [
        ResourceRecord(
            LISTENER,
            "https",
            unknown_checking_proxy(_listener("HTTPS", UNKNOWN_STRING_VALUE).inputs),
        ),
        _listener("HTTP"),
    ]
    rule = RULES_BY_ID["LIFTOFF_PROD_HTTPS"]
    assert rule.stack_findings(StackView(records), PROD) == []
    assert rule.stack_findings(StackView(records[1:]), PROD)


def test_prod_https_rule_over_the_real_program(domain_run: ProgramRun) -> None:
    from infra.plan import _context, mock_resource_ids

    ids = mock_resource_ids(domain_run)
    records = [
        ResourceRecord(r.type, r.name, r.inputs, urn=r.urn, id=ids.get(r.urn))
        for r in domain_run.resources
    ]
    assert domain_run.settings is not None
    context = _context(domain_run, domain_run.settings, "prod")
    verdicts = {v.rule.id: v for v in evaluate(records, context)}
    for rule_id in ("LIFTOFF_PROD_HTTPS", "CKV_AWS_103", "CKV2_AWS_20"):
        assert verdicts[rule_id].applicable and verdicts[rule_id].passed, rule_id
