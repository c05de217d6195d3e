"""`liftoff:providers` and `liftoff:providerApiKeys` (infra/provider_settings.py): validated before
any resource, one KMS-encrypted secret per further keyed provider whose value never reaches state
or outputs, the pod role reading exactly those ARNs (and invoking Bedrock only in the Bedrock
providers' regions), the values the chart renders, readiness, the plan's scrubbing and verify."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra import mocking, readiness, stack
from infra.mocking import (
    ACCOUNT_ID,
    LiftoffMocks,
    ProgramRun,
    RecordingMonitor,
    flat_config,
    mocked_runtime,
    run_program,
)
from infra.plan import main as plan_main
from infra.preflight import load_settings_for
from infra.provider_settings import env_name
from infra.settings import SettingsError, load_settings, load_stack_file, read_stack_config
from infra.verify.checks import Target
from infra.verify.secrets import provider_secret_checks, secret_checks

SECRET = "aws:secretsmanager/secret:Secret"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
AZURE_KEY = "az-SENTINEL-3c9e71d2-provider-key"
UPSTREAM_KEY = "sk-SENTINEL-upstream-5a0f"
OPENAI = {"name": "openai", "kind": "openai", "url": "https://api.openai.com"}
AZURE = {
    "name": "azure-east",
    "kind": "azure",
    "url": "https://acme-east.openai.azure.com",
    "apiVersion": "2024-10-21",
    "deployments": {"gpt-4o-mini-2024-07-18": "gpt4o-mini-prod"},
    "models": ["gpt-4o-mini-2024-07-18"],
}
BEDROCK = {
    "name": "bedrock",
    "kind": "bedrock",
    "url": "https://bedrock-runtime.us-west-2.amazonaws.com",
}


def config(providers: list[dict[str, Any]], **keys: str) -> dict[str, str]:
    """Overrides setting `providers`, llmApiKey and the further providers' `keys`."""
    overrides = {"liftoff:providers": json.dumps(providers), "liftoff:llmApiKey": UPSTREAM_KEY}
    if keys:
        overrides["liftoff:providerApiKeys"] = json.dumps(keys)
    return overrides


@pytest.fixture(scope="module")
def two_providers() -> ProgramRun:
    return run_program("dev", config([OPENAI, AZURE], **{"azure-east": AZURE_KEY}))


def _gateway_values(run: ProgramRun) -> dict[str, Any]:
    (release,) = [
        r
        for r in run.resources
        if r.type.startswith("kubernetes:helm.sh/v3:Release") and r.inputs.get("name") == "gateway"
    ]
    return release.inputs["values"]


def _app_policy(run: ProgramRun) -> dict[str, Any]:
    (policy,) = [r for r in run.of_type(ROLE_POLICY) if r.name.endswith("-app-policy")]
    return json.loads(policy.inputs["policy"])


def _secret_arn(run: ProgramRun, slug: str) -> str:
    (secret,) = [r for r in run.of_type(SECRET) if r.inputs["name"].endswith(f"/{slug}")]
    return secret.id


# --- a valid config: openai first, azure second ------------------------------------------------


def test_a_further_provider_gets_its_own_encrypted_secret(two_providers: ProgramRun) -> None:
    (secret,) = [
        r for r in two_providers.of_type(SECRET) if "provider-azure-east-api-key" in r.name
    ]
    assert secret.inputs["name"] == "liftoff-dev/provider-azure-east-api-key"
    data_key = two_providers.outputs["dataKeyArn"]
    assert secret.inputs["kmsKeyId"] == data_key
    (version,) = [
        r for r in two_providers.of_type(SECRET_VERSION) if "provider-azure-east" in r.name
    ]
    assert version.inputs["secretStringWo"] == AZURE_KEY
    assert version.secret_inputs == {"secretStringWo"}
    assert "secretString" not in version.inputs  # write-only: never in state
    # The first provider keeps the upstream-api-key secret: no secret of its own.
    assert not [r for r in two_providers.of_type(SECRET) if "provider-openai" in r.name]
    assert two_providers.outputs["providerSecretArns"] == {"azure-east": secret.id}


def test_no_key_in_plain_text_in_inputs_or_outputs(two_providers: ProgramRun) -> None:
    public = json.dumps(
        [
            {k: v for k, v in r.inputs.items() if k not in r.secret_inputs}
            for r in two_providers.resources
        ]
        + [two_providers.outputs],
        default=str,
    )
    assert AZURE_KEY not in public and UPSTREAM_KEY not in public
    assert "providerSecretArns" not in two_providers.secret_outputs  # ARNs, not secrets


def test_the_pod_role_reads_exactly_the_stack_secrets(two_providers: ProgramRun) -> None:
    statements = _app_policy(two_providers)["Statement"]
    read = next(s for s in statements if "secretsmanager:GetSecretValue" in s["Action"])
    slugs = ("upstream-api-key", "redis-auth-token", "client-keys", "provider-azure-east-api-key")
    expected = [_secret_arn(two_providers, slug) for slug in slugs]
    assert read["Resource"] == sorted(expected)
    assert not any("bedrock:InvokeModel" in str(s["Action"]) for s in statements)


def test_the_release_gets_the_providers_and_their_key_arns(two_providers: ProgramRun) -> None:
    values = _gateway_values(two_providers)
    by_name = {p["name"]: p for p in values["providers"]}
    assert list(by_name) == ["openai", "azure-east"]
    assert by_name["azure-east"]["apiVersion"] == "2024-10-21"
    assert by_name["azure-east"]["deployments"] == AZURE["deployments"]
    # Which provider serves a model is the gateway catalog's `provider`, merged over the image's.
    assert values["config"]["models"] == {
        "catalog": {"gpt-4o-mini-2024-07-18": {"provider": "azure-east"}}
    }
    assert values["secrets"]["providerApiKeyArns"] == {
        "azure-east": two_providers.outputs["providerSecretArns"]["azure-east"]
    }
    assert values["secrets"]["upstreamApiKeyArn"] == _secret_arn(two_providers, "upstream-api-key")
    # Each provider has its url: the single-upstream url is not rendered beside them.
    assert "url" not in values["config"]["upstream"]
    assert env_name("azure-east") == "LIFTOFF_PROVIDER_AZURE_EAST_API_KEY_SECRET_ARN"


def test_without_providers_nothing_changes(dev_run: ProgramRun) -> None:
    values = _gateway_values(dev_run)
    assert values["providers"] == [] and values["secrets"]["providerApiKeyArns"] == {}
    assert values["config"]["upstream"]["url"] == "https://api.openai.com"
    assert dev_run.outputs["providerSecretArns"] == {}
    assert not [r for r in dev_run.of_type(SECRET) if "/provider-" in r.inputs["name"]]


# --- bedrock: the pod role instead of a key ----------------------------------------------------


def test_bedrock_gets_invoke_on_its_regions_foundation_models_and_no_secret() -> None:
    run = run_program("dev", config([OPENAI, BEDROCK]))
    statements = _app_policy(run)["Statement"]
    (bedrock,) = [s for s in statements if "bedrock:InvokeModel" in s["Action"]]
    assert bedrock == {
        "Effect": "Allow",
        "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
        "Resource": ["arn:aws:bedrock:us-west-2::foundation-model/*"],
    }
    assert not [r for r in run.of_type(SECRET) if "/provider-" in r.inputs["name"]]
    assert not any("providerApiKeys" in w for w in run.warnings)
    values = _gateway_values(run)
    assert values["secrets"]["providerApiKeyArns"] == {}
    assert [p["auth"] for p in values["providers"]] == ["api_key", "sigv4"]


def test_bedrock_first_needs_no_upstream_key_and_refuses_one() -> None:
    run = run_program("dev", {"liftoff:providers": json.dumps([BEDROCK])})
    assert not [r for r in run.of_type(SECRET) if r.inputs["name"].endswith("/upstream-api-key")]
    assert _gateway_values(run)["secrets"]["upstreamApiKeyArn"] == ""
    assert "upstreamApiKey" not in run.outputs["secretArns"]
    assert not any("llmApiKey" in w for w in run.warnings)
    with pytest.raises(SettingsError) as refused:
        load_settings(config([BEDROCK]), "dev")
    assert refused.value.problems == [
        "liftoff:llmApiKey = [secret]: unset: the first of liftoff:providers (bedrock, bedrock) "
        "takes no API key"
    ]


# --- refusals, before any resource -------------------------------------------------------------


def _with(entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**entry, **changes}.items() if v is not None}


REFUSED = [
    (
        [_with(OPENAI, name="OpenAI")],
        "liftoff:providers[0].name = OpenAI: 1-32 lowercase letters, digits or '-', starting "
        "with a letter",
    ),
    (
        [OPENAI, _with(AZURE, name="openai")],
        "liftoff:providers[1].name = openai: a name no earlier provider has",
    ),
    ([_with(OPENAI, kind="vllm")], "liftoff:providers[0].kind = vllm: openai, azure or bedrock"),
    (
        [_with(OPENAI, url="http://api.openai.com")],
        "liftoff:providers[0].url = http://api.openai.com: an https:// URL (the stack runs "
        "in AWS: the provider is reached over TLS)",
    ),
    (
        [_with(OPENAI, url="https://user:sk-IN-URL@api.example.com")],
        "liftoff:providers[0].url = [withheld]: a URL without credentials (value withheld): "
        "keys go to liftoff:providerApiKeys",
    ),
    (
        [OPENAI, _with(AZURE, url="https://acme.example.com")],
        "liftoff:providers[1].url = https://acme.example.com: an Azure OpenAI resource endpoint "
        "https://<resource>.openai.azure.com or https://<resource>.cognitiveservices.azure.com "
        "(no path: the gateway adds it)",
    ),
    (
        [OPENAI, _with(AZURE, apiVersion=None)],
        "liftoff:providers[1].apiVersion = unset: an Azure OpenAI API version: a date YYYY-MM-DD "
        "(optionally -preview) like 2024-10-21, or v1",
    ),
    (
        [OPENAI, _with(AZURE, apiVersion="2024-13-01")],
        "liftoff:providers[1].apiVersion = 2024-13-01: an Azure OpenAI API version: a date "
        "YYYY-MM-DD (optionally -preview) like 2024-10-21, or v1",
    ),
    (
        [_with(OPENAI, apiVersion="v1")],
        "liftoff:providers[0].apiVersion = v1: unset: only kind azure takes an apiVersion",
    ),
    (
        [_with(OPENAI, deployments={"gpt-4o": "gpt4o"})],
        'liftoff:providers[0].deployments = {"gpt-4o": "gpt4o"}: unset: only kind azure maps '
        "models to deployments",
    ),
    (
        [OPENAI, _with(AZURE, deployments={"gpt-4o": "has space"})],
        'liftoff:providers[1].deployments = {"gpt-4o": "has space"}: a map catalog model -> '
        "Azure deployment name (letters, digits, '-', '_' or '.', at most 64)",
    ),
    (
        [OPENAI, _with(AZURE, auth="entra")],
        "liftoff:providers[1].auth = entra: api_key: an Entra ID token expires within hours and "
        "the stack sets up no workload identity federation to Azure for the pod; give the Azure "
        "resource's API key in liftoff:llmApiKey (first provider) or liftoff:providerApiKeys",
    ),
    (
        [_with(BEDROCK, url="https://bedrock-runtime.eu-west-1.amazonaws.com")],
        "liftoff:providers[0].url = https://bedrock-runtime.eu-west-1.amazonaws.com: "
        "https://bedrock-runtime.<region>.amazonaws.com (no path: the gateway adds "
        "/openai/v1/...) in a US region: us-east-1, us-east-2, us-west-1, us-west-2",
    ),
    (
        [_with(BEDROCK, url="https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1")],
        "liftoff:providers[0].url = https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1: "
        "https://bedrock-runtime.<region>.amazonaws.com (no path: the gateway adds "
        "/openai/v1/...) in a US region: us-east-1, us-east-2, us-west-1, us-west-2",
    ),
    (
        [_with(OPENAI, url="https://api.openai.com/v1")],
        "liftoff:providers[0].url = https://api.openai.com/v1: a base URL without /v1: the "
        "gateway appends /v1/... (https://api.openai.com)",
    ),
    (
        [_with(BEDROCK, auth="api_key")],
        "liftoff:providers[0].auth = api_key: sigv4 (or unset): the pod's IAM role signs Bedrock "
        "requests; the stack keeps no long-term Bedrock API key",
    ),
    (
        [_with(OPENAI, auth="sigv4")],
        "liftoff:providers[0].auth = sigv4: api_key: only kind bedrock signs with sigv4",
    ),
    (
        [_with(OPENAI, token="x")],
        "liftoff:providers[0] = token: only name, kind, url, apiVersion, auth, deployments, models",
    ),
    (
        [OPENAI, _with(AZURE, models=None)],
        "liftoff:providers[1].deployments = gpt-4o-mini-2024-07-18: models this provider serves: "
        "gpt-4o-mini-2024-07-18 is served by providers[0]; list it in providers[1].models",
    ),
    (
        [_with(OPENAI, models=["gpt-4o-mini-2024-07-18"]), _with(AZURE, deployments=None)],
        "liftoff:providers[1].models = gpt-4o-mini-2024-07-18: a model no earlier provider lists "
        "(providers[0] does)",
    ),
    (
        [OPENAI, _with(AZURE, models=["gpt-4o-mini-2024-07-18", "gpt-9"])],
        'liftoff:providers[1].models = ["gpt-4o-mini-2024-07-18", "gpt-9"]: a list of the '
        "gateway's catalog models (app/defaults.yaml): gpt-4o-mini-2024-07-18, "
        "gpt-4o-2024-08-06, o4-mini-2025-04-16, gpt-5-mini-2025-08-07, gpt-3.5-turbo-instruct, "
        "text-embedding-3-small, text-embedding-3-large, text-embedding-ada-002",
    ),
]


@pytest.mark.parametrize(("providers", "message"), REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_an_invalid_provider_is_refused_with_its_message(
    providers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"liftoff:providers": json.dumps(providers)}, "dev")
    assert refused.value.problems == [message]
    assert "sk-IN-URL" not in str(refused.value)


def test_the_valid_variants_pass() -> None:
    settings = load_settings(
        config(
            [
                OPENAI,
                _with(AZURE, apiVersion="v1", url="https://acme.cognitiveservices.azure.com/"),
                _with(
                    AZURE,
                    name="azure-west",
                    apiVersion="2025-04-01-preview",
                    models=["gpt-4o-2024-08-06"],
                    deployments={"gpt-4o-2024-08-06": "gpt-4o"},
                ),
                _with(BEDROCK, url="https://bedrock-runtime.us-east-1.amazonaws.com"),
            ],
            **{"azure-east": AZURE_KEY, "azure-west": AZURE_KEY},
        ),
        "dev",
    )
    assert [p.kind for p in settings.providers] == ["openai", "azure", "azure", "bedrock"]
    assert settings.providers[3].bedrock_region == "us-east-1"


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({"nope": "k"}, "nope is not in liftoff:providers"),
        ({"openai": "k"}, "openai is the first provider (its key is liftoff:llmApiKey)"),
        ({"bedrock": "k"}, "bedrock takes no key (bedrock signs with the pod's IAM role)"),
    ],
)
def test_a_key_no_provider_takes_is_refused_without_its_value(
    keys: dict[str, str], why: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(config([OPENAI, BEDROCK], **keys), "dev")
    (problem,) = refused.value.problems
    assert problem.startswith("liftoff:providerApiKeys = [secret]: a map provider name -> API")
    assert problem.endswith(why)


def test_upstream_url_beside_providers_is_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({**config([OPENAI]), "liftoff:upstreamUrl": "https://x.example.com"}, "dev")
    assert refused.value.problems == [
        "liftoff:upstreamUrl = https://x.example.com: unset while liftoff:providers is set "
        "(each provider has its url)"
    ]


def test_upstream_url_is_a_base_url_without_v1() -> None:
    """The gateway appends /v1/chat/completions, ...: a /v1 base would call /v1/v1/..."""
    with pytest.raises(SettingsError) as refused:
        load_settings({"liftoff:upstreamUrl": "https://api.openai.com/v1"}, "dev")
    assert refused.value.problems == [
        "liftoff:upstreamUrl = https://api.openai.com/v1: an https:// base URL without /v1 (the "
        "gateway appends /v1/...)"
    ]
    assert load_settings({}, "dev").upstream_url == "https://api.openai.com"


def test_a_refused_provider_declares_no_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[str] = []
    original = mocking.RecordingMonitor.RegisterResource

    def spy(self: mocking.RecordingMonitor, request: object) -> object:
        registered.append(request.type)  # type: ignore[attr-defined]
        return original(self, request)

    monkeypatch.setattr(mocking.RecordingMonitor, "RegisterResource", spy)
    with pytest.raises(SettingsError, match=r"liftoff:providers\[1\]\.auth = entra"):
        run_program("dev", config([OPENAI, _with(AZURE, auth="entra")]))
    assert registered == []


# --- readiness: a missing key warns offline and refuses a real run ------------------------------


def test_a_missing_provider_key_warns_offline() -> None:
    run = run_program("dev", config([OPENAI, AZURE]))
    assert (
        "before a real deployment: liftoff:providerApiKeys.azure-east: unset: the gateway has no "
        "API key for provider azure-east (azure); its secret would stay empty; set it with: "
        "pulumi config set --stack dev --secret --path 'liftoff:providerApiKeys.azure-east' "
        "<provider-api-key>"
    ) in run.warnings
    # The secret exists, empty: setting the key later only adds its version.
    assert [r for r in run.of_type(SECRET) if "provider-azure-east" in r.name]
    assert not [r for r in run.of_type(SECRET_VERSION) if "provider-azure-east" in r.name]


def test_a_missing_provider_key_refuses_a_real_run(monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {
        "liftoff:domainName": "api.example.com",
        "liftoff:hostedZoneId": "Z0123456789ABCDEFGHIJ",
        "liftoff:clusterEndpointPublicCidrs": '["198.51.99.0/24"]',
        **config([OPENAI, AZURE]),
    }
    settings = load_stack_file("prod", overrides)
    assert [b.key for b in readiness.blockers(settings, "prod")] == [
        "liftoff:providerApiKeys.azure-east"
    ]
    monitor = RecordingMonitor(LiftoffMocks(settings.region, "prod"))
    monkeypatch.setattr(stack, "is_mocked", lambda: False)
    with (
        pytest.raises(SettingsError, match=r"liftoff:providerApiKeys\.azure-east: unset"),
        mocked_runtime("prod", flat_config("prod", overrides), monitor),
    ):
        stack.define_stack()
    assert monitor.recorded == []


# --- the stack file, the plan -------------------------------------------------------------------


def test_keys_set_with_secret_path_are_left_out_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pulumi config set --secret --path 'liftoff:providerApiKeys.<name>'` writes a map of
    `secure:` leaves; offline they are unreadable, so the key is left out of the plan and counted
    as set by preflight (like a secure llmApiKey)."""
    from infra import settings as settings_module

    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n"
        "  liftoff:providers: " + json.dumps([OPENAI, AZURE]) + "\n"
        "  liftoff:providerApiKeys:\n"
        "    azure-east:\n"
        "      secure: AAABAJx1c2U=\n"
    )
    monkeypatch.setattr(settings_module, "REPO_ROOT", tmp_path)
    config_read = read_stack_config("dev")
    assert "liftoff:providerApiKeys" not in config_read
    assert [p["name"] for p in config_read["liftoff:providers"]] == ["openai", "azure-east"]
    # Preflight counts the secure key as set, as it does a secure llmApiKey.
    keys = [b.key for b in readiness.blockers(load_settings_for("dev", {}), "dev")]
    assert "liftoff:providerApiKeys.azure-east" not in keys
    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n  liftoff:providers: " + json.dumps([OPENAI, AZURE]) + "\n"
    )
    keys = [b.key for b in readiness.blockers(load_settings_for("dev", {}), "dev")]
    assert "liftoff:providerApiKeys.azure-east" in keys


def test_the_plan_never_prints_a_provider_key() -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = plan_main(
            [
                "--stack",
                "dev",
                "--json",
                "--set",
                f"liftoff:providers={json.dumps([OPENAI, AZURE])}",
                "--set",
                f"liftoff:providerApiKeys={json.dumps({'azure-east': AZURE_KEY})}",
            ]
        )
    assert code in (0, 1), err.getvalue()
    assert "provider-azure-east-api-key" in out.getvalue()
    assert AZURE_KEY not in out.getvalue() + err.getvalue()


# --- verify: each provider's secret exists and has a value -------------------------------------


@pytest.fixture
def aws_account(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.Session(region_name="us-east-1")


def _target(session: boto3.Session, outputs: dict[str, Any]) -> Target:
    settings = load_settings(config([OPENAI, AZURE], **{"azure-east": AZURE_KEY}), "dev")
    return Target("dev", settings, outputs, session, ACCOUNT_ID)


def test_verify_checks_each_provider_secret(aws_account: boto3.Session) -> None:
    key_arn = aws_account.client("kms").create_key()["KeyMetadata"]["Arn"]
    manager = aws_account.client("secretsmanager")
    arn = manager.create_secret(
        Name="liftoff-dev/provider-azure-east-api-key", KmsKeyId=key_arn, SecretString="k" * 20
    )["ARN"]
    outputs = {"secretArns": {}, "dataKeyArn": key_arn, "providerSecretArns": {"azure-east": arn}}
    checks = secret_checks(_target(aws_account, outputs))
    assert [(c.check, c.verdict) for c in checks] == [
        ("exists", "ok"),
        ("KMS key", "ok"),
        ("current version", "ok"),
    ]

    empty = manager.create_secret(
        Name="liftoff-dev/provider-azure-east-api-key-2", KmsKeyId=key_arn
    )["ARN"]
    target = _target(aws_account, {**outputs, "providerSecretArns": {"azure-east": empty}})
    (drift,) = [c for c in provider_secret_checks(target, manager, key_arn) if c.verdict != "ok"]
    assert drift.check == "current version"
    assert drift.fix == (
        "pulumi config set --stack dev --secret --path 'liftoff:providerApiKeys.azure-east' "
        "<key>, bump liftoff:secretsVersion, then pulumi up --stack dev"
    )


def test_verify_reports_a_provider_secret_missing_from_the_outputs(
    aws_account: boto3.Session,
) -> None:
    manager = aws_account.client("secretsmanager")
    (missing,) = provider_secret_checks(_target(aws_account, {}), manager, "key")
    assert missing.check == "stack output providerSecretArns" and missing.verdict == "drift"
    target = _target(aws_account, {"providerSecretArns": {"other": "arn"}})
    (absent,) = provider_secret_checks(target, manager, "key")
    assert (absent.resource, absent.actual, absent.verdict) == (
        "secret of provider azure-east",
        "absent",
        "drift",
    )
