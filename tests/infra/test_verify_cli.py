"""`python -m infra.verify`: the outputs from a file or the Pulumi CLI (never showing the
kubeconfig), the table, the JSON list, the exit status; and the stack outputs verify looks up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.mocking import ProgramRun
from infra.names import workload_node_group
from infra.settings import load_stack_file
from infra.verify import cli
from infra.verify.cli import main, run_verify
from tests.infra.verify_world import World, deploy, moto_account


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with moto_account(tmp_path, monkeypatch):
        yield


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def deployed_prod(aws: None, monkeypatch: pytest.MonkeyPatch) -> World:
    """prod deployed in moto; the command's session is the world's (moto, recorded entries)."""
    world = deploy(load_stack_file("prod"))
    monkeypatch.setattr(cli, "aws_session", lambda stack, region: world.clients)
    return world


def write_outputs(world: World, path: Path) -> Path:
    path.write_text(json.dumps(world.outputs))
    return path


def test_json_lists_every_check_and_never_the_kubeconfig(
    deployed_prod: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(deployed_prod, tmp_path / "outputs.json")
    assert main(["--stack", "prod", "--outputs", str(outputs), "--json"]) == 0
    printed = capsys.readouterr().out
    checks = json.loads(printed)
    assert isinstance(checks, list) and len(checks) > 40
    assert {tuple(c) for c in checks} == {
        ("resource", "check", "expected", "actual", "verdict", "fix")
    }
    assert "KUBECONFIG-SECRET-MARKER" not in printed
    deployed_prod.client("kms").disable_key_rotation(KeyId=deployed_prod.outputs["dataKeyArn"])
    assert main(["--stack", "prod", "--outputs", str(outputs), "--json"]) == 1
    drifted = [c for c in json.loads(capsys.readouterr().out) if c["verdict"] == "drift"]
    assert [c["check"] for c in drifted] == ["automatic rotation"]
    assert drifted[0]["fix"]


def test_the_table_shows_expected_actual_verdict_and_fix(
    deployed_prod: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(deployed_prod, tmp_path / "outputs.json")
    deployed_prod.client("cloudwatch").delete_alarms(
        AlarmNames=[deployed_prod.outputs["alarmNames"][0]]
    )
    assert main(["--stack", "prod", "--outputs", str(outputs)]) == 1
    table = capsys.readouterr().out
    for header in ("resource", "check", "expected", "actual", "verdict", "fix"):
        assert header in table
    assert "not found" in table and "pulumi up --stack prod" in table and "drift" in table
    assert "KUBECONFIG-SECRET-MARKER" not in table


def test_without_the_pulumi_cli_it_asks_for_an_outputs_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--stack", "prod"]) == 2
    error = capsys.readouterr().err
    assert "Pulumi CLI is not on PATH" in error and "--outputs FILE" in error


def fake_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pulumi = bin_dir / "pulumi"
    pulumi.write_text("#!/bin/sh\n" + script)
    pulumi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_it_reads_the_outputs_from_the_pulumi_cli(
    deployed_prod: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outputs = write_outputs(deployed_prod, tmp_path / "outputs.json")
    expected_args = "stack output --json --show-secrets --stack prod"
    fake_pulumi(
        tmp_path,
        monkeypatch,
        f'[ "$*" = "{expected_args}" ] || {{ echo "unexpected: $*" >&2; exit 3; }}\n'
        f"cat {outputs}\n",
    )
    assert main(["--stack", "prod", "--json"]) == 0
    assert "KUBECONFIG-SECRET-MARKER" not in capsys.readouterr().out


def test_a_failing_pulumi_cli_is_exit_2_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_pulumi(tmp_path, monkeypatch, 'echo "error: no stack named prod found" >&2\nexit 255\n')
    assert main(["--stack", "prod"]) == 2
    assert "no stack named prod found" in capsys.readouterr().err


def test_an_unreadable_outputs_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "outputs.json"
    broken.write_text("[secret]")
    assert main(["--stack", "prod", "--outputs", str(broken)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["--stack", "prod", "--outputs", str(tmp_path / "absent.json")]) == 2


def test_without_credentials_it_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"region": "us-west-2", "clusterName": "liftoff-prod-eks"}))
    assert main(["--stack", "prod", "--outputs", str(outputs)]) == 2
    assert "AWS credentials" in capsys.readouterr().err


def test_outputs_of_an_older_program_are_drift_to_redeploy(deployed_prod: World) -> None:
    for name in ("albArn", "nodeGroupNames", "dataKeyArn"):
        del deployed_prod.outputs[name]
    checks = run_verify(deployed_prod.target())
    drifted = [c for c in checks if c.verdict == "drift"]
    missing = {c.check for c in drifted if c.check.startswith("stack output")}
    assert missing == {
        "stack output albArn",
        "stack output nodeGroupNames",
        "stack output dataKeyArn",
    }
    assert all(c.fix.startswith("pulumi up --stack prod") for c in drifted)


# --- the program exports what verify looks up ------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_the_stack_exports_the_identifiers_verify_needs(
    stack_runs: dict[str, ProgramRun], stack: str
) -> None:
    run = stack_runs[stack]
    settings = load_stack_file(stack)
    out = run.outputs
    assert ":loadbalancer/app/" in out["albArn"] and ":targetgroup/" in out["targetGroupArn"]
    for key in ("clusterSecretsKeyArn", "dataKeyArn", "alertsKeyArn"):
        assert ":kms:" in out[key] and ":key/" in out[key], key
    assert len({out["clusterSecretsKeyArn"], out["dataKeyArn"], out["alertsKeyArn"]}) == 3
    cluster_key = run.one("aws:eks/cluster:Cluster").inputs["encryptionConfig"]["provider"]
    assert cluster_key["keyArn"] == out["clusterSecretsKeyArn"]
    cache = run.one("aws:elasticache/replicationGroup:ReplicationGroup")
    assert cache.inputs["kmsKeyId"] == out["dataKeyArn"]
    assert cache.inputs["replicationGroupId"] == out["cacheReplicationGroupId"]
    topic = run.one("aws:sns/topic:Topic")
    assert topic.inputs["kmsMasterKeyId"] == out["alertsKeyArn"]
    assert [
        n.startswith(f"{workload_node_group(settings.prefix)}-") for n in out["nodeGroupNames"]
    ] == [True]
    alarms = sorted(r.inputs["name"] for r in run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm"))
    assert sorted(out["alarmNames"]) == alarms
    if settings.waf_enabled:
        acl = run.one("aws:wafv2/webAcl:WebAcl")
        assert f":regional/webacl/{acl.inputs['name']}/" in out["webAclArn"]
    else:
        assert out["webAclArn"] is None
    assert out["deployerArn"].startswith("arn:aws:iam::")
    assert "kubeconfig" in run.secret_outputs and len(run.secret_outputs) == 1
