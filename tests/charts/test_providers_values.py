"""The chart's `providers` and `secrets.providerApiKeyArns` values, through the real `helm`: the
providers land in the ConfigMap as `config.upstream.providers` (the gateway's keys), each key ARN
as `LIFTOFF_PROVIDER_<NAME>_API_KEY_SECRET_ARN`, and bad values are refused by the schema or the
chart's cross-field checks; the stack's values for a multi-provider stack render the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import load_config
from infra.settings import load_settings
from infra.workload import WorkloadRefs, gateway_values
from tests.charts import sample_values
from tests.charts.chart import Manifests, lint, merge, render, template
from tests.charts.validation import validate_all

ARN = f"arn:aws:secretsmanager:{sample_values.REGION}:{sample_values.ACCOUNT}:secret:liftoff/prod"
OPENAI = {"name": "openai", "kind": "openai", "url": "https://api.openai.com"}
AZURE = {
    "name": "azure-east",
    "kind": "azure",
    "url": "https://acme-east.openai.azure.com",
    "apiVersion": "2024-10-21",
    "auth": "api_key",
    "deployments": {"gpt-4o-mini-2024-07-18": "gpt4o-mini-prod"},
}
BEDROCK = {
    "name": "bedrock",
    "kind": "bedrock",
    "url": "https://bedrock-runtime.us-east-2.amazonaws.com",
    "auth": "sigv4",
}
AZURE_ARN = f"{ARN}/provider-azure-east-api-key-AbCdEf"


def with_providers(providers: list[dict[str, Any]], arns: dict[str, str]) -> dict[str, Any]:
    return merge(
        sample_values.everything_on(),
        {"providers": providers, "secrets": {"providerApiKeyArns": arns}},
    )


def gateway_config(manifests: Manifests) -> dict[str, Any]:
    (configmap,) = [c for c in manifests.of_kind("ConfigMap") if "config.yaml" in c["data"]]
    return yaml.safe_load(configmap["data"]["config.yaml"])


def test_providers_render_as_the_gateway_config_and_key_env_vars() -> None:
    manifests = render(with_providers([OPENAI, AZURE, BEDROCK], {"azure-east": AZURE_ARN}))
    validate_all(manifests)
    upstream = gateway_config(manifests)["upstream"]
    assert upstream["providers"] == [
        {
            "name": "openai",
            "kind": "openai",
            "url": "https://api.openai.com",
            "api_version": None,
            "auth": "api_key",
            "deployments": {},
        },
        {
            "name": "azure-east",
            "kind": "azure",
            "url": "https://acme-east.openai.azure.com",
            "api_version": "2024-10-21",
            "auth": "api_key",
            "deployments": {"gpt-4o-mini-2024-07-18": "gpt4o-mini-prod"},
        },
        {
            "name": "bedrock",
            "kind": "bedrock",
            "url": "https://bedrock-runtime.us-east-2.amazonaws.com",
            "api_version": None,
            "auth": "sigv4",
            "deployments": {},
        },
    ]
    env = manifests.env
    assert env["LIFTOFF_PROVIDER_AZURE_EAST_API_KEY_SECRET_ARN"] == AZURE_ARN
    # The first provider's key stays the upstream one; bedrock has none.
    assert (
        env["LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN"] == sample_values.SECRET_ARNS["upstreamApiKeyArn"]
    )
    assert [n for n in env if n.startswith("LIFTOFF_PROVIDER_")] == [
        "LIFTOFF_PROVIDER_AZURE_EAST_API_KEY_SECRET_ARN"
    ]


def test_a_bedrock_provider_may_name_its_region_beside_any_url() -> None:
    vpc_endpoint = {**BEDROCK, "url": "https://bedrock.internal.example.com", "region": "us-east-2"}
    (rendered,) = gateway_config(render(with_providers([vpc_endpoint], {})))["upstream"][
        "providers"
    ]
    assert rendered["region"] == "us-east-2" and rendered["auth"] == "sigv4"


def test_the_config_checksum_follows_the_providers() -> None:
    def checksum(providers: list[dict[str, Any]]) -> str:
        deployment = render(with_providers(providers, {})).one("Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum([OPENAI]) != checksum([OPENAI, BEDROCK])


def test_without_providers_the_config_is_unchanged() -> None:
    manifests = render(sample_values.everything_on())
    assert "providers" not in gateway_config(manifests).get("upstream", {})
    assert not [n for n in manifests.env if n.startswith("LIFTOFF_PROVIDER_")]


SCHEMA_REFUSED = [
    ("bad-name", [{**OPENAI, "name": "OpenAI"}], {}, "at '/providers/0/name'"),
    ("long-name", [{**OPENAI, "name": "a" * 33}], {}, "at '/providers/0/name'"),
    ("bad-kind", [{**OPENAI, "kind": "vllm"}], {}, "at '/providers/0/kind': value must be one of"),
    (
        "bad-auth",
        [{**AZURE, "auth": "password"}],
        {},
        "at '/providers/0/auth': value must be one of",
    ),
    (
        "unknown-field",
        [{**OPENAI, "apiKey": "sk-x"}],
        {},
        "additional properties 'apiKey' not allowed",
    ),
    ("no-url", [{"name": "a", "kind": "openai"}], {}, "missing property 'url'"),
    (
        "url-credentials",
        [{**OPENAI, "url": "https://u:p@api.openai.com"}],
        {},
        "at '/providers/0/url'",
    ),
    (
        "azure-no-version",
        [{k: v for k, v in AZURE.items() if k != "apiVersion"}],
        {},
        "missing property 'apiVersion'",
    ),
    ("azure-bad-version", [{**AZURE, "apiVersion": "latest"}], {}, "at '/providers/0/apiVersion'"),
    ("azure-bad-host", [{**AZURE, "url": "https://acme.example.com"}], {}, "at '/providers/0/url'"),
    (
        "entra-on-openai",
        [{**OPENAI, "auth": "entra"}],
        {},
        "at '/providers/0/auth': value must be one of 'api_key', 'sigv4'",
    ),
    (
        "deployments-on-openai",
        [{**OPENAI, "deployments": {"m": "d"}}],
        {},
        "at '/providers/0/deployments'",
    ),
    ("version-on-openai", [{**OPENAI, "apiVersion": "v1"}], {}, "at '/providers/0/apiVersion'"),
    (
        "bedrock-bad-host",
        [{**BEDROCK, "url": "https://bedrock.example.com"}],
        {},
        "at '/providers/0': missing property 'region'",
    ),
    (
        "sigv4-on-openai",
        [{**OPENAI, "auth": "sigv4"}],
        {},
        "at '/providers/0/auth': 'not' failed",
    ),
    (
        "entra-on-bedrock",
        [{**BEDROCK, "auth": "entra"}],
        {},
        "at '/providers/0/auth': value must be one of 'api_key', 'sigv4'",
    ),
    (
        "region-on-openai",
        [{**OPENAI, "region": "us-east-1"}],
        {},
        "at '/providers/0/region': got string, want null",
    ),
    (
        "bad-deployment",
        [{**AZURE, "deployments": {"m": "has space"}}],
        {},
        "at '/providers/0/deployments/m'",
    ),
    (
        "arn-not-arn",
        [OPENAI, AZURE],
        {"azure-east": "sk-NOT-AN-ARN"},
        "at '/secrets/providerApiKeyArns/azure-east'",
    ),
    ("arn-bad-name", [OPENAI], {"Azure": AZURE_ARN}, "invalid propertyName 'Azure'"),
    ("not-a-list", {"openai": OPENAI}, {}, "at '/providers': got object, want array"),
]


@pytest.mark.parametrize(
    ("providers", "arns", "message"),
    [case[1:] for case in SCHEMA_REFUSED],
    ids=[case[0] for case in SCHEMA_REFUSED],
)
def test_the_schema_refuses_bad_provider_values(
    providers: Any, arns: dict[str, str], message: str
) -> None:
    values = with_providers(providers, arns)
    for result in (template(values), lint(values)):
        assert result.returncode != 0
        assert message in result.stdout + result.stderr, result.stdout + result.stderr
    assert "sk-NOT-AN-ARN" not in template(values).stdout


CROSS_FIELD_REFUSED = [
    (
        "duplicate-name",
        {"providers": [OPENAI, {**OPENAI, "url": "https://other.example.com/v1"}]},
        "providers[1].name (openai) is used by an earlier provider: names must be unique",
    ),
    (
        "key-of-unknown-provider",
        {"providers": [OPENAI], "secrets": {"providerApiKeyArns": {"azure-east": AZURE_ARN}}},
        "secrets.providerApiKeyArns.azure-east names no entry of providers (openai)",
    ),
    (
        "url-beside-providers",
        {"providers": [OPENAI], "config": {"upstream": {"url": "https://api.openai.com"}}},
        "config.upstream.url must be unset when providers is set: each provider has its url",
    ),
    (
        "providers-twice",
        {"providers": [OPENAI], "config": {"upstream": {"providers": [OPENAI]}}},
        "set providers or config.upstream.providers, not both",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [case[1:] for case in CROSS_FIELD_REFUSED],
    ids=[case[0] for case in CROSS_FIELD_REFUSED],
)
def test_the_chart_refuses_inconsistent_providers(values: dict[str, Any], message: str) -> None:
    merged = merge(sample_values.everything_on(), values)
    for result in (template(merged), lint(merged)):
        assert result.returncode != 0
        assert message in result.stdout + result.stderr, result.stdout + result.stderr


def test_the_stacks_values_for_three_providers_render(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "liftoff:providers": json.dumps(
                [OPENAI, {**AZURE, "models": ["gpt-4o-mini-2024-07-18"]}, BEDROCK]
            ),
            "liftoff:providerApiKeys": json.dumps({"azure-east": "az-SENTINEL-key-0001"}),
            "liftoff:llmApiKey": "sk-SENTINEL-upstream-0001",
        },
        "prod",
    )
    refs = WorkloadRefs.placeholder(settings)
    values = gateway_values(settings, refs)
    assert "SENTINEL" not in json.dumps(values)
    manifests = render(values)
    validate_all(manifests)
    upstream = gateway_config(manifests)["upstream"]
    assert [p["name"] for p in upstream["providers"]] == ["openai", "azure-east", "bedrock"]
    assert "url" not in upstream
    assert upstream["timeout_read_s"] == settings.longest_stream_seconds
    env = manifests.env
    azure_arn = refs.provider_api_key_secret_arns["azure-east"]
    assert env["LIFTOFF_PROVIDER_AZURE_EAST_API_KEY_SECRET_ARN"] == azure_arn
    assert env["LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN"] == refs.upstream_api_key_secret_arn
    # The gateway's own loader takes the rendered config as it is.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(gateway_config(manifests)))
    loaded = load_config(str(path), env={}).upstream
    assert loaded.provider_names == ("openai", "azure-east", "bedrock")
    assert [p.auth for p in loaded.providers] == ["api_key", "api_key", "sigv4"]
    assert loaded.providers[2].aws_region == "us-east-2"
    loaded_models = load_config(str(path), env={}).models
    assert loaded_models.provider_of("gpt-4o-mini-2024-07-18", loaded.provider_names) == (
        "azure-east"
    )
    assert loaded_models.provider_of("gpt-4o-2024-08-06", loaded.provider_names) == "openai"
