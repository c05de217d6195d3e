"""Hardening, probes, the env contract and config wiring of the gateway pod and the test pod."""

from __future__ import annotations

from typing import Any

import yaml

from tests.charts import sample_values
from tests.charts.chart import FULLNAME, Manifests, render


def _assert_hardened_container(container: dict[str, Any]) -> None:
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] >= 1000
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["privileged"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def _assert_hardened_pod(spec: dict[str, Any]) -> None:
    ctx = spec["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] >= 1000 and ctx["runAsGroup"] >= 1000
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp_volume = next(
        volumes[m["name"]]
        for m in spec["containers"][0]["volumeMounts"]
        if m["mountPath"] == "/tmp"
    )
    assert "emptyDir" in tmp_volume and tmp_volume["emptyDir"]["sizeLimit"]
    assert "hostNetwork" not in spec and "hostPID" not in spec


def test_gateway_pod_is_hardened() -> None:
    manifests = render(sample_values.everything_on())
    _assert_hardened_pod(manifests.pod_spec)
    _assert_hardened_container(manifests.container)
    assert manifests.container["securityContext"]["runAsUser"] == 10001


def test_run_as_user_follows_values() -> None:
    manifests = render({"runAsUser": 20000})
    assert manifests.pod_spec["securityContext"]["runAsUser"] == 20000
    assert manifests.container["securityContext"]["runAsUser"] == 20000


def test_helm_test_pod_calls_readyz_and_is_hardened() -> None:
    manifests = render()
    (pod,) = [p for p in manifests.of_kind("Pod")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    _assert_hardened_pod(pod["spec"])
    (container,) = pod["spec"]["containers"]
    _assert_hardened_container(container)
    assert f"http://{FULLNAME}:80/readyz" in container["command"][-1]
    assert container["image"] == manifests.container["image"]
    selector = manifests.one("Service")["spec"]["selector"]
    labels = pod["metadata"]["labels"]
    assert any(labels.get(k) != v for k, v in selector.items()), (
        "the Service must not select the test pod"
    )


def test_probes_on_readyz_and_healthz() -> None:
    container = render().container
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["port"] == "http"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "startup gets time to load"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_env_contract() -> None:
    env = render(sample_values.everything_on()).env
    assert env["LIFTOFF_CONFIG"] == "/etc/liftoff/config.yaml"
    assert env["LIFTOFF__SERVER__HOST"] == "0.0.0.0"
    assert env["LIFTOFF__SERVER__PORT"] == "8080"
    assert env["LIFTOFF__SERVER__KEEPALIVE_TIMEOUT_S"] == "130"
    assert env["LIFTOFF__SERVER__GRACEFUL_SHUTDOWN_S"] == "120"
    assert env["LIFTOFF_WORKERS"] == "1"
    assert env["AWS_REGION"] == sample_values.REGION
    assert env["FORWARDED_ALLOW_IPS"] == "10.42.0.0/16", (
        "trust proxy headers from the ALB's network"
    )
    assert env["LIFTOFF_REDIS_URL"] == sample_values.REDIS_URL
    assert (
        env["LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN"] == sample_values.SECRET_ARNS["upstreamApiKeyArn"]
    )
    assert (
        env["LIFTOFF_REDIS_AUTH_TOKEN_SECRET_ARN"] == sample_values.SECRET_ARNS["redisAuthTokenArn"]
    )
    assert env["LIFTOFF_CLIENT_KEYS_SECRET_ARN"] == sample_values.SECRET_ARNS["clientKeysArn"]
    assert env["LIFTOFF__LIMITS__DEFAULT_RPM"] == "1200"
    assert all(isinstance(v, str) for v in env.values())


def test_unset_optional_env_is_left_out() -> None:
    env = render().env
    for name in (
        "LIFTOFF_REDIS_URL",
        "LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN",
        "LIFTOFF_REDIS_AUTH_TOKEN_SECRET_ARN",
        "LIFTOFF_CLIENT_KEYS_SECRET_ARN",
    ):
        assert name not in env


def test_server_port_and_workers_follow_values() -> None:
    manifests = render({"server": {"port": 9090, "workers": 3}})
    assert manifests.env["LIFTOFF__SERVER__PORT"] == "9090"
    assert manifests.env["LIFTOFF_WORKERS"] == "3"
    assert manifests.container["ports"][0]["containerPort"] == 9090
    assert manifests.one("NetworkPolicy")["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 9090}
    ]


def _config_of(manifests: Manifests) -> dict[str, Any]:
    return yaml.safe_load(manifests.one("ConfigMap")["data"]["config.yaml"])


def test_config_map_holds_the_gateway_config_and_is_mounted() -> None:
    values = sample_values.everything_on()
    manifests = render(values)
    assert _config_of(manifests) == values["config"]
    mount = next(m for m in manifests.container["volumeMounts"] if m["name"] == "config")
    assert mount == {"name": "config", "mountPath": "/etc/liftoff", "readOnly": True}
    volume = next(v for v in manifests.pod_spec["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == manifests.one("ConfigMap")["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": "config.yaml", "path": "config.yaml"}]
    assert _config_of(render()) == {}


def test_config_change_rolls_the_pods() -> None:
    def checksum(values: dict) -> str:
        return render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    base = checksum({"config": {"cache": {"ttl_s": 60}}})
    assert len(base) == 64
    assert checksum({"config": {"cache": {"ttl_s": 60}}}) == base
    assert checksum({"config": {"cache": {"ttl_s": 61}}}) != base


def test_rollout_never_drops_below_capacity() -> None:
    strategy = render().one("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_service_is_cluster_ip_to_the_named_port() -> None:
    service = render().one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
