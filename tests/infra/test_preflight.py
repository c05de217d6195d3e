"""`python -m infra.preflight`: the deployer's tools on a fake PATH, the AWS account through moto,
and the values only the user can supply."""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws
from moto.route53.models import HostedZoneIdentifier
from moto.utilities.id_generator import moto_id_manager

from infra import settings as settings_module
from infra.preflight import SECURE_PLACEHOLDER, PreflightReport, main, run_preflight

REGION = "us-west-2"  # prod's region
ZONE_ID = "Z0LIFTOFFTEST01"
READY = {
    "liftoff:clusterEndpointPublicCidrs": '["198.51.99.0/24"]',
    "liftoff:llmApiKey": "sk-test-PREFLIGHT-0123456789",
    "liftoff:domainName": "api.example.com",
    "liftoff:hostedZoneId": ZONE_ID,
}


def statuses(report: PreflightReport) -> dict[str, str]:
    return {c.check: c.status for c in report.checks}


def check(report: PreflightReport, name: str):
    return next(c for c in report.checks if c.check == name)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put fake executables on an otherwise empty PATH: tools(aws=0, docker=1) makes `aws` and
    a `docker` whose every command exits 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))

    def install(**exit_codes: int) -> None:
        for name, code in exit_codes.items():
            script = bin_dir / name
            script.write_text(f"#!/bin/sh\nexit {code}\n")
            script.chmod(0o755)

    return install


@pytest.fixture
def no_aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials from the machine running the tests: no files, no profile, no IMDS."""
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def account(no_aws_files: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def hosted_zone(name: str, zone_id: str = ZONE_ID, *, private: bool = False) -> None:
    """A Route 53 zone with an id shaped like the real ones (Z...)."""
    identifier = HostedZoneIdentifier("123456789012", f"{name}.", None)
    moto_id_manager.set_custom_id(identifier, zone_id)
    extra = {}
    if private:
        vpc = boto3.client("ec2", region_name=REGION).create_vpc(CidrBlock="10.9.0.0/16")
        extra = {
            "VPC": {"VPCRegion": REGION, "VPCId": vpc["Vpc"]["VpcId"]},
            "HostedZoneConfig": {"PrivateZone": True},
        }
    try:
        boto3.client("route53").create_hosted_zone(Name=name, CallerReference=name, **extra)
    finally:
        moto_id_manager.unset_custom_id(identifier)


def issued_certificate(domain: str) -> str:
    """An imported certificate (ACM marks imports ISSUED) in the stack's region."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    acm = boto3.client("acm", region_name=REGION)
    return acm.import_certificate(
        Certificate=cert.public_bytes(serialization.Encoding.PEM),
        PrivateKey=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )["CertificateArn"]


def test_a_ready_prod_stack_passes_every_check(tools, account, capsys) -> None:
    tools(aws=0, docker=0)
    hosted_zone("example.com")
    report = run_preflight("prod", READY)
    assert report.ready, report.checks
    assert statuses(report) == {
        "aws CLI": "ok",
        "stack config": "ok",
        "container engine": "ok",
        "AWS credentials": "ok",
        "user-supplied values": "ok",
        "hosted zone": "ok",
    }
    assert "account 123456789012" in check(report, "AWS credentials").detail
    argv = ["--stack", "prod", "--json", *(f"--set={k}={v}" for k, v in READY.items())]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ready"] is True and printed["blockers"] == 0
    assert {c["check"] for c in printed["checks"]} == set(statuses(report))
    assert "PREFLIGHT-0123456789" not in json.dumps(printed)  # the key itself is never shown


def test_the_stock_prod_stack_lists_every_value_to_supply(tools, account, capsys) -> None:
    tools(aws=0, docker=0)
    report = run_preflight("prod")
    blockers = {c.check: c for c in report.blockers}
    assert set(blockers) == {
        "value: liftoff:clusterEndpointPublicCidrs",
        "value: liftoff:llmApiKey",
        "value: liftoff:domainName",
    }
    assert blockers["value: liftoff:llmApiKey"].fix == (
        "pulumi config set --stack prod --secret liftoff:llmApiKey <provider-api-key>"
    )
    assert check(report, "certificate").status == "skipped"
    assert main(["--stack", "prod"]) == 1
    human = capsys.readouterr().out
    assert "3 blockers" in human and "liftoff:clusterEndpointPublicCidrs" in human


def test_a_missing_aws_cli_is_a_blocker(tools, account) -> None:
    tools(docker=0)
    hosted_zone("example.com")
    report = run_preflight("prod", READY)
    assert [c.check for c in report.blockers] == ["aws CLI"]
    assert "aws eks get-token" in report.blockers[0].detail
    assert shutil.which("aws") is None


def test_a_container_engine_is_needed_only_to_build_the_image(tools, account) -> None:
    tools(aws=0, docker=1)  # docker installed, daemon down
    engine = check(run_preflight("prod", READY), "container engine")
    assert engine.status == "blocker" and "docker found but `info` fails" in engine.detail
    assert "liftoff:image" in engine.fix
    tools(podman=0)
    assert check(run_preflight("prod", READY), "container engine").status == "ok"
    tools(podman=1)
    image = {**READY, "liftoff:image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/gw:1.0"}
    assert check(run_preflight("prod", image), "container engine").status == "skipped"


def test_no_credentials_is_a_blocker_naming_them(tools, no_aws_files) -> None:
    tools(aws=0, docker=0)
    report = run_preflight("prod", READY)
    assert [c.check for c in report.blockers] == ["AWS credentials"]
    assert "no AWS credentials found" in report.blockers[0].detail
    assert check(report, "hosted zone").status == "skipped"  # cannot be checked without them


def test_a_secure_api_key_in_the_stack_file_counts_as_set(
    tools, account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools(aws=0, docker=0)
    hosted_zone("example.com")
    repo = tmp_path / "repo"
    repo.mkdir()
    stack_yaml = (settings_module.REPO_ROOT / "Pulumi.prod.yaml").read_text()
    (repo / "Pulumi.prod.yaml").write_text(
        stack_yaml.replace("config:\n", "config:\n  liftoff:llmApiKey:\n    secure: AAABAJx1c2U=\n")
    )
    monkeypatch.setattr(settings_module, "REPO_ROOT", repo)
    without_key = {k: v for k, v in READY.items() if k != "liftoff:llmApiKey"}
    report = run_preflight("prod", without_key)
    assert report.ready, report.blockers
    assert SECURE_PLACEHOLDER not in json.dumps([c.detail for c in report.checks])
    (repo / "Pulumi.prod.yaml").write_text(stack_yaml)  # no secure key: a blocker again
    assert "value: liftoff:llmApiKey" in statuses(run_preflight("prod", without_key))


@pytest.mark.parametrize(
    ("zone", "domain", "private", "expected"),
    [
        ("example.com", "api.other.org", False, "does not hold liftoff:domainName"),
        ("example.com", "api.example.com", True, "is private"),
        ("other.org", "api.other.org", False, None),
    ],
)
def test_the_hosted_zone_must_hold_the_domain_and_be_public(
    tools, account, zone: str, domain: str, private: bool, expected: str | None
) -> None:
    tools(aws=0, docker=0)
    hosted_zone(zone, private=private)
    zone_check = check(
        run_preflight("prod", {**READY, "liftoff:domainName": domain}), "hosted zone"
    )
    if expected is None:
        assert zone_check.status == "ok"
    else:
        assert zone_check.status == "blocker" and expected in zone_check.detail


def test_an_unknown_hosted_zone_is_a_blocker(tools, account) -> None:
    tools(aws=0, docker=0)
    zone_check = check(run_preflight("prod", READY), "hosted zone")
    assert zone_check.status == "blocker" and "NoSuchHostedZone" in zone_check.detail


def _with_arn(arn: str) -> dict[str, str]:
    without_domain = {
        k: v for k, v in READY.items() if k not in ("liftoff:domainName", "liftoff:hostedZoneId")
    }
    return {**without_domain, "liftoff:certificateArn": arn}


def test_the_certificate_must_exist_in_the_region_and_be_issued(tools, account) -> None:
    tools(aws=0, docker=0)
    issued = issued_certificate("api.example.com")
    assert check(run_preflight("prod", _with_arn(issued)), "certificate").status == "ok"

    acm = boto3.client("acm", region_name=REGION)
    pending = acm.request_certificate(DomainName="api.example.com", ValidationMethod="DNS")
    pending_check = check(
        run_preflight("prod", _with_arn(pending["CertificateArn"])), "certificate"
    )
    assert pending_check.status == "blocker" and "PENDING_VALIDATION" in pending_check.detail

    missing = issued[: -len("0000-000000000000")] + "0000-000000000000"
    missing_check = check(run_preflight("prod", _with_arn(missing)), "certificate")
    assert missing_check.status == "blocker" and "ResourceNotFoundException" in missing_check.detail


def test_a_certificate_from_another_region_fails_the_config(tools, account) -> None:
    tools(aws=0, docker=0)
    elsewhere = issued_certificate("api.example.com").replace(REGION, "us-east-1")
    report = run_preflight("prod", _with_arn(elsewhere))
    config = check(report, "stack config")
    assert config.status == "blocker"
    assert "a certificate in the stack's region us-west-2" in config.detail
