"""`gateway_values`, the pure function from settings to the chart's values: every key exists in
the chart, the values pass its schema, the `config` is a valid gateway config without secrets,
and each knob lands where the chart reads it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from app.config import load_config
from infra.settings import ENVIRONMENTS, REPO_ROOT, load_settings, load_stack_file
from infra.timings import ShutdownTimings
from infra.workload import WorkloadRefs, gateway_values, split_image_ref

CHART = REPO_ROOT / "charts" / "gateway"


def values_for(overrides: dict[str, str] | None = None, stack: str = "dev") -> dict[str, Any]:
    settings = load_stack_file(stack, overrides)
    return gateway_values(settings, WorkloadRefs.placeholder(settings))


def _paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        found.add(path)
        # `config` is free-form (the gateway's config); its shape is checked by app.config.
        if isinstance(value, dict) and value and path != "config":
            found |= _paths(value, path)
    return found


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_every_key_exists_in_the_chart_values(stack: str) -> None:
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_paths = _paths(chart_values)
    produced = _paths(values_for(stack=stack))
    # minAllowed/maxAllowed etc. are nested under keys the chart defines.
    assert produced - chart_paths == set()


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_values_pass_the_chart_schema(stack: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    merged = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(base: dict, override: dict) -> None:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(merged, values_for(stack=stack))
    jsonschema.validate(merged, schema)


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_config_is_a_valid_gateway_config(stack: str, tmp_path) -> None:
    config = values_for(stack=stack)["config"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_stack_file(stack)
    timings = ShutdownTimings.from_settings(settings)
    loaded = load_config(str(path), env={})
    assert loaded.server.keepalive_timeout_s == timings.server_keepalive_s
    assert loaded.server.graceful_shutdown_s == timings.graceful_shutdown_s
    assert loaded.upstream.url == settings.upstream_url
    assert loaded.limits.default_rpm == settings.default_rpm
    assert loaded.redis.url is None  # the chart passes the URL as env, never in the ConfigMap


def test_no_secret_value_reaches_the_values() -> None:
    keys = json.dumps([{"name": "svc", "key": "lk-CLIENT-SECRET"}])
    settings = load_settings(
        {"liftoff:llmApiKey": "sk-UPSTREAM-SECRET", "liftoff:clientKeys": keys}, "dev"
    )
    text = json.dumps(gateway_values(settings, WorkloadRefs.placeholder(settings)))
    assert "UPSTREAM-SECRET" not in text and "CLIENT-SECRET" not in text
    values = gateway_values(settings, WorkloadRefs.placeholder(settings))
    assert values["secrets"]["upstreamApiKeyArn"].startswith("arn:aws:secretsmanager:")
    assert "@" not in values["redis"]["url"]  # no password in the URL


def test_refs_land_where_the_chart_reads_them() -> None:
    settings = load_stack_file("prod")
    refs = WorkloadRefs.placeholder(settings)
    values = gateway_values(settings, refs)
    assert values["image"] == {
        "repository": refs.image_repository,
        "tag": refs.image_tag,
        "digest": refs.image_digest,
        "pullPolicy": "IfNotPresent",
    }
    assert values["redis"]["url"] == f"rediss://{refs.cache_host}:6379/0"
    assert values["targetGroupBinding"]["targetGroupArn"] == refs.target_group_arn
    assert values["serviceAccount"]["roleArn"] == refs.service_account_role_arn
    assert values["networkPolicy"]["ingressCIDRs"] == [settings.vpc_cidr]
    assert values["aws"]["region"] == "us-west-2"
    assert values["secrets"] == {
        "upstreamApiKeyArn": refs.upstream_api_key_secret_arn,
        "redisAuthTokenArn": refs.redis_auth_token_secret_arn,
        "clientKeysArn": refs.client_keys_secret_arn,
        "providerApiKeyArns": {},
    }


def test_horizontal_knobs() -> None:
    values = values_for(
        {"liftoff:appMinReplicas": "3", "liftoff:appMaxReplicas": "9", "liftoff:hpaCpuTarget": "55"}
    )
    assert values["autoscaling"]["minReplicas"] == 3
    assert values["autoscaling"]["maxReplicas"] == 9
    assert values["autoscaling"]["targetCPUUtilizationPercentage"] == 55
    assert values["autoscaling"]["targetMemoryUtilizationPercentage"] is None


def test_vertical_knobs() -> None:
    values = values_for(
        {
            "liftoff:podCpuRequest": "750m",
            "liftoff:podCpuLimit": "2",
            "liftoff:podMemoryRequest": "1Gi",
            "liftoff:podMemoryLimit": "2Gi",
            "liftoff:vpaMode": "Recreate",
            "liftoff:vpaMaxMemory": "4Gi",
        }
    )
    assert values["resources"] == {
        "requests": {"cpu": "750m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert values["vpa"]["enabled"] is True and values["vpa"]["updateMode"] == "Recreate"
    assert values["vpa"]["maxAllowed"]["memory"] == "4Gi"
    # The HPA scales on CPU, so the VPA only controls memory.
    assert values["vpa"]["controlledResources"] == ["memory"]


def test_vpa_off_by_default_and_no_cpu_limit() -> None:
    values = values_for()
    assert values["vpa"]["enabled"] is False and values["vpa"]["updateMode"] == "Off"
    assert "cpu" not in values["resources"]["limits"]


def test_pdb_only_when_more_than_one_replica() -> None:
    assert values_for({"liftoff:appMinReplicas": "1"})["podDisruptionBudget"]["enabled"] is False
    assert values_for({"liftoff:appMinReplicas": "2"})["podDisruptionBudget"]["enabled"] is True


@pytest.mark.parametrize("stream", [30, 120, 900])
def test_shutdown_timings_come_from_one_place(stream: int) -> None:
    settings = load_settings({"liftoff:longestStreamSeconds": str(stream)}, "dev")
    values = gateway_values(settings, WorkloadRefs.placeholder(settings))
    t = ShutdownTimings.from_settings(settings)
    assert values["server"]["keepAliveTimeoutSeconds"] == t.server_keepalive_s
    assert values["server"]["gracefulShutdownSeconds"] == t.graceful_shutdown_s == stream
    assert values["loadBalancer"]["idleTimeoutSeconds"] == t.alb_idle_timeout_s
    assert values["lifecycle"]["preStopSleepSeconds"] == t.pre_stop_sleep_s
    assert values["terminationGracePeriodSeconds"] == t.termination_grace_period_s
    assert values["config"]["upstream"]["timeout_read_s"] == stream
    # The gateway answers 504 itself before the ALB would cut a silent request.
    assert values["config"]["upstream"]["deadline_s"] == t.upstream_deadline_s
    assert t.upstream_deadline_s < t.alb_idle_timeout_s


def test_pure() -> None:
    settings = load_stack_file("staging")
    refs = WorkloadRefs.placeholder(settings)
    assert gateway_values(settings, refs) == gateway_values(settings, refs)
    first = gateway_values(settings, refs)
    first["autoscaling"]["minReplicas"] = 99
    assert gateway_values(settings, refs)["autoscaling"]["minReplicas"] != 99


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("ghcr.io/acme/gateway:1.2.3", ("ghcr.io/acme/gateway", "1.2.3", None)),
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/liftoff@sha256:" + "a" * 64,
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com/liftoff", "", "sha256:" + "a" * 64),
        ),
        (
            "registry:5000/team/app:v1@sha256:" + "b" * 64,
            ("registry:5000/team/app", "v1", "sha256:" + "b" * 64),
        ),
        ("registry:5000/team/app", ("registry:5000/team/app", "", None)),
    ],
)
def test_split_image_ref(ref: str, expected: tuple) -> None:
    assert split_image_ref(ref) == expected
