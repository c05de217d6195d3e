"""Stack settings: every stack file loads, bad config fails with `key = value: allowed` for every
problem at once, CLI-style string values are decoded, and docs/configuration.md is current."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.settings import (
    ENVIRONMENTS,
    KEY_TO_FIELD,
    REPO_ROOT,
    SettingsError,
    StackSettings,
    load_settings,
    load_stack_file,
    reference_markdown,
)


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_every_stack_file_is_valid(stack: str) -> None:
    settings = load_stack_file(stack)
    assert settings.environment == stack
    assert settings.region.startswith("us-")


def test_environment_shapes() -> None:
    dev, staging, prod = (load_stack_file(s) for s in ENVIRONMENTS)
    assert dev.nat_gateways == "single" and prod.nat_gateways == "perAz"
    assert prod.effective_az_count == 3 and dev.effective_az_count == 2
    assert prod.cache_replicas >= 1 and dev.cache_replicas == 0
    assert prod.alb_deletion_protection and prod.alb_access_logs
    assert not dev.alb_deletion_protection and not dev.alb_access_logs
    assert "0.0.0.0/0" not in prod.cluster_endpoint_public_cidrs
    assert staging.cache_replicas == 1


def test_prod_protective_defaults_apply_when_unset() -> None:
    settings = load_settings({"aws:region": "us-east-1"}, "prod")
    assert settings.alb_deletion_protection and settings.alb_access_logs
    assert settings.cache_replicas == 1 and settings.cache_snapshot_retention_days == 7
    assert settings.nat_gateways == "perAz"
    # An explicit value still wins over the environment default.
    assert not load_settings({"liftoff:albAccessLogs": "false"}, "prod").alb_access_logs


def test_environment_defaults_to_stack_name_else_dev() -> None:
    assert load_settings({}, "staging").environment == "staging"
    assert load_settings({}, "feature-x").environment == "dev"


def test_cli_strings_are_decoded() -> None:
    """The Pulumi CLI hands every value over as a string; structured ones are JSON."""
    settings = load_settings(
        {
            "liftoff:nodeInstanceTypes": '["m7g.xlarge", "m7g.large"]',
            "liftoff:nodeMaxSize": "6",
            "liftoff:wafEnabled": "true",
            "liftoff:tags": '{"team": "ml"}',
            "liftoff:monthlyBudgetUsd": "99.5",
        },
        "dev",
    )
    assert settings.node_instance_types == ["m7g.xlarge", "m7g.large"]
    assert settings.node_max_size == 6 and settings.waf_enabled
    assert settings.tags == {"team": "ml"} and settings.monthly_budget_usd == 99.5


INVALID = [
    (
        {"liftoff:kubernetesVersion": "1.29"},
        "liftoff:kubernetesVersion = 1.29: 1.30 or later (the gateway chart's preStop hook "
        "uses the native sleep action",
    ),
    (
        {"aws:region": "eu-west-1"},
        "aws:region = eu-west-1: a US region: us-east-1, us-east-2, us-west-1, us-west-2",
    ),
    (
        {"liftoff:vpcCidr": "10.0.0.0/33"},
        "liftoff:vpcCidr = 10.0.0.0/33: an IPv4 CIDR with prefix /16-/20",
    ),
    (
        {"liftoff:vpcCidr": "8.8.0.0/16"},
        "liftoff:vpcCidr = 8.8.0.0/16: an IPv4 CIDR with prefix /16-/20 in a private range",
    ),
    (
        {"liftoff:vpcCidr": "10.0.0.0/16", "liftoff:serviceCidr": "10.0.128.0/20"},
        "liftoff:serviceCidr = 10.0.128.0/20: must not overlap liftoff:vpcCidr (10.0.0.0/16)",
    ),
    (
        {"liftoff:albIngressCidrs": '["10.0.1.0/24"]', "liftoff:vpcCidr": "10.0.0.0/16"},
        'liftoff:albIngressCidrs = ["10.0.1.0/24"]: '
        "10.0.1.0/24 overlaps liftoff:vpcCidr (10.0.0.0/16)",
    ),
    (
        {"liftoff:clusterEndpointPublicCidrs": '["1.2.3.4/40"]'},
        'liftoff:clusterEndpointPublicCidrs = ["1.2.3.4/40"]: a list of IPv4 CIDRs',
    ),
    (
        {"liftoff:nodeMinSize": "3", "liftoff:nodeDesiredSize": "2", "liftoff:nodeMaxSize": "4"},
        "liftoff:nodeDesiredSize = 2: "
        "must be between liftoff:nodeMinSize (3) and liftoff:nodeMaxSize (4)",
    ),
    (
        {"liftoff:nodeMinSize": "5", "liftoff:nodeMaxSize": "4"},
        "liftoff:nodeMinSize = 5: must be <= liftoff:nodeMaxSize (4)",
    ),
    (
        {"liftoff:appMinReplicas": "8", "liftoff:appMaxReplicas": "4"},
        "liftoff:appMinReplicas = 8: must be <= liftoff:appMaxReplicas (4)",
    ),
    ({"liftoff:hpaCpuTarget": "0"}, "liftoff:hpaCpuTarget = 0: an integer 1-100 (percent)"),
    ({"liftoff:hpaCpuTarget": "150"}, "liftoff:hpaCpuTarget = 150: an integer 1-100 (percent)"),
    ({"liftoff:vpaMode": "On"}, "liftoff:vpaMode = On: one of Off, Initial, Recreate, Auto"),
    (
        {"liftoff:nodeInstanceTypes": '["m7i-large"]'},
        'liftoff:nodeInstanceTypes = ["m7i-large"]: '
        "a non-empty list of EC2 instance types like m7i.large",
    ),
    (
        {"liftoff:nodeInstanceTypes": '["m7i.large", "m7g.large"]'},
        "instance types of one architecture",
    ),
    (
        {"liftoff:cacheNodeType": "t4g.small"},
        "liftoff:cacheNodeType = t4g.small: an ElastiCache node type like cache.t4g.small",
    ),
    ({"liftoff:monthlyBudgetUsd": "0"}, "liftoff:monthlyBudgetUsd = 0: a number > 0"),
    ({"liftoff:monthlyBudgetUsd": "lots"}, "liftoff:monthlyBudgetUsd = lots: a number > 0"),
    ({"liftoff:azCount": "4"}, "liftoff:azCount = 4: an integer 2-3"),
    ({"liftoff:azCount": "1"}, "liftoff:azCount = 1: an integer 2-3"),
    (
        {"liftoff:podCpuRequest": "1", "liftoff:podCpuLimit": "500m"},
        "liftoff:podCpuLimit = 500m: must be >= liftoff:podCpuRequest (1)",
    ),
    (
        {"liftoff:podMemoryRequest": "1Gi", "liftoff:podMemoryLimit": "512Mi"},
        "liftoff:podMemoryLimit = 512Mi: must be >= liftoff:podMemoryRequest (1Gi)",
    ),
    (
        {"liftoff:podMemoryRequest": "256MB"},
        "liftoff:podMemoryRequest = 256MB: a memory quantity like 256Mi or 1Gi",
    ),
    (
        {"liftoff:vpaMinMemory": "4Gi", "liftoff:vpaMaxMemory": "2Gi"},
        "liftoff:vpaMinMemory = 4Gi: must be <= liftoff:vpaMaxMemory (2Gi)",
    ),
    (
        {"liftoff:vpaMinCpu": "3", "liftoff:vpaMaxCpu": "2"},
        "liftoff:vpaMinCpu = 3: must be <= liftoff:vpaMaxCpu (2)",
    ),
    (
        {"liftoff:budgetThresholds": "[50, 250]"},
        "liftoff:budgetThresholds = [50, 250]: a list of integers 1-200",
    ),
    (
        {"liftoff:budgetForecastThreshold": "0"},
        "liftoff:budgetForecastThreshold = 0: an integer 1-200",
    ),
    (
        {"liftoff:alertEmails": '["not-an-email"]'},
        'liftoff:alertEmails = ["not-an-email"]: a list of email addresses',
    ),
    (
        {"liftoff:certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/x"},
        "liftoff:certificateArn = arn:aws:acm:eu-west-1:123456789012:certificate/x: "
        "an ACM certificate ARN in a US region",
    ),
    (
        {"liftoff:cacheEngine": "redis", "liftoff:cacheEngineVersion": "8.0"},
        "liftoff:cacheEngineVersion = 8.0: a version ElastiCache offers for redis: 7.0, 7.1",
    ),
    (
        {"liftoff:vpaMode": "Auto", "liftoff:hpaMemoryTarget": "80"},
        "liftoff:hpaMemoryTarget = 80: unset while liftoff:vpaMode is not Off",
    ),
    (
        {"liftoff:flowLogsRetentionDays": "10"},
        "liftoff:flowLogsRetentionDays = 10: a CloudWatch retention",
    ),
    ({"liftoff:nodeMetadataHopLimit": "3"}, "liftoff:nodeMetadataHopLimit = 3: 1 or 2"),
    (
        {"liftoff:tags": '{"aws:owner": "me"}'},
        'liftoff:tags = {"aws:owner": "me"}: a map of tag key -> value',
    ),
    (
        {"liftoff:nodeMaxSize": "ten"},
        "liftoff:nodeMaxSize = ten: an integer 1-100, >= nodeDesiredSize",
    ),
    (
        {"liftoff:nodeDesireSize": "3"},
        "liftoff:nodeDesireSize = 3: unknown key; see docs/configuration.md",
    ),
]


@pytest.mark.parametrize(("config", "message"), INVALID, ids=[next(iter(c)) for c, _ in INVALID])
def test_invalid_config_names_key_value_and_what_is_allowed(config: dict, message: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings(config, "dev")
    assert message in str(excinfo.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings(
            {
                "aws:region": "eu-central-1",
                "liftoff:vpaMode": "sometimes",
                "liftoff:monthlyBudgetUsd": "-5",
                "liftoff:appMinReplicas": "9",
                "liftoff:appMaxReplicas": "3",
            },
            "dev",
        )
    problems = excinfo.value.problems
    assert len(problems) == 4
    assert [p.split(" = ")[0] for p in problems] == [
        "aws:region",
        "liftoff:vpaMode",
        "liftoff:monthlyBudgetUsd",
        "liftoff:appMinReplicas",
    ]
    assert str(excinfo.value).startswith("invalid Liftoff stack config (4 problems):")


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"liftoff:clientKeys": "sk-live-TOPSECRET-not-json"}, "dev")
    assert "TOPSECRET" not in str(excinfo.value)
    assert "liftoff:clientKeys = [secret]:" in str(excinfo.value)


def test_secrets_stay_wrapped_in_the_model() -> None:
    keys = json.dumps([{"name": "svc", "key": "lk-abc"}])
    settings = load_settings(
        {"liftoff:llmApiKey": "sk-TOPSECRET", "liftoff:clientKeys": keys}, "dev"
    )
    assert settings.llm_api_key is not None and settings.client_keys is not None
    assert settings.llm_api_key.get_secret_value() == "sk-TOPSECRET"
    assert "TOPSECRET" not in repr(settings) and "TOPSECRET" not in str(settings)


def test_us_west_1_adapts_to_two_azs_and_says_so() -> None:
    settings = load_settings({"aws:region": "us-west-1", "liftoff:azCount": "3"}, "prod")
    assert settings.az_count == 3 and settings.effective_az_count == 2
    assert settings.az_note is not None and "us-west-1" in settings.az_note
    assert load_settings({"aws:region": "us-west-2"}, "prod").az_note is None


def test_overrides_win_over_the_stack_file() -> None:
    settings = load_stack_file("prod", {"aws:region": "us-east-1", "liftoff:nodeMaxSize": "20"})
    assert settings.region == "us-east-1" and settings.node_max_size == 20


def test_unknown_stack_file() -> None:
    with pytest.raises(
        SettingsError, match=r"no Pulumi\.qa\.yaml; known stacks: dev, prod, staging"
    ):
        load_stack_file("qa")


def test_model_is_frozen() -> None:
    settings = load_settings({}, "dev")
    with pytest.raises(ValueError):
        settings.node_max_size = 9  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    for name, info in StackSettings.model_fields.items():
        assert info.description, name
        assert isinstance(info.json_schema_extra, dict) and info.json_schema_extra["allowed"], name
    assert len(KEY_TO_FIELD) == len(StackSettings.model_fields)


def test_configuration_docs_are_up_to_date() -> None:
    docs = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert docs == reference_markdown(), (
        "docs/configuration.md is stale: "
        "run `python -m infra.settings --markdown > docs/configuration.md`"
    )
    for key in KEY_TO_FIELD:
        assert f"| `{key}` |" in docs


def test_readme_configuration_table_is_up_to_date() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("<!-- BEGIN CONFIG REFERENCE -->")[1].split(
        "<!-- END CONFIG REFERENCE -->"
    )[0]
    table = [line for line in reference_markdown().splitlines() if line.startswith("|")]
    assert [line for line in section.splitlines() if line.startswith("|")] == table, (
        "README.md's configuration table is stale: copy the table from docs/configuration.md"
    )


def test_markdown_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert result.stdout == reference_markdown()


def test_validate_cli_exit_code() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "infra.settings", "--stack", "prod"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert ok.returncode == 0 and '"aws:region": "us-west-2"' in ok.stdout
    assert "llmApiKey" in ok.stdout
