"""Workload: the gateway's Helm release; its values come from one pure function of the settings."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.cache import CACHE_PORT
from infra.cluster import Cluster
from infra.loadbalancer import APP_PORT
from infra.provider_settings import (
    catalog_providers,
    first_takes_key,
    keyed_providers,
    secret_slug,
)
from infra.secrets import APP_NAMESPACE, APP_SERVICE_ACCOUNT
from infra.settings import REPO_ROOT, StackSettings
from infra.timings import ShutdownTimings

CHART_DIR = REPO_ROOT / "charts" / "gateway"
RELEASE_NAME = "gateway"
# The AWS Load Balancer Controller injects a readiness gate into pods of labelled namespaces, so a
# rollout only proceeds once new pods are healthy in the target group.
READINESS_GATE_LABEL = {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}


@dataclass(frozen=True)
class WorkloadRefs:
    """Plain strings the values need from other components (resolved outputs)."""

    image_repository: str
    image_tag: str
    image_digest: str | None
    cache_host: str
    cache_port: int
    upstream_api_key_secret_arn: str
    redis_auth_token_secret_arn: str
    client_keys_secret_arn: str
    target_group_arn: str
    service_account_role_arn: str
    vpc_cidr: str
    region: str
    # Provider name -> its key's secret ARN (the providers after the first that take a key).
    provider_api_key_secret_arns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def placeholder(cls, settings: StackSettings) -> WorkloadRefs:
        """Realistic stand-ins for tests and offline rendering."""
        account, region, prefix = "123456789012", settings.region, settings.prefix
        secret = f"arn:aws:secretsmanager:{region}:{account}:secret:{prefix}"
        return cls(
            image_repository=f"{account}.dkr.ecr.{region}.amazonaws.com/{prefix}-gateway",
            image_tag="0.1.0",
            image_digest="sha256:" + "0" * 64,
            cache_host=f"master.{prefix}-cache.abc123.use1.cache.amazonaws.com",
            cache_port=CACHE_PORT,
            upstream_api_key_secret_arn=(
                f"{secret}/upstream-api-key-AbCdEf" if first_takes_key(settings.providers) else ""
            ),
            redis_auth_token_secret_arn=f"{secret}/redis-auth-token-AbCdEf",
            client_keys_secret_arn=f"{secret}/client-keys-AbCdEf",
            target_group_arn=f"arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{prefix}-gateway/0123456789abcdef",
            service_account_role_arn=f"arn:aws:iam::{account}:role/{prefix}-{APP_SERVICE_ACCOUNT}",
            vpc_cidr=settings.vpc_cidr,
            region=region,
            provider_api_key_secret_arns={
                p.name: f"{secret}/{secret_slug(p.name)}-AbCdEf"
                for p in keyed_providers(settings.providers)
            },
        )


def split_image_ref(ref: str) -> tuple[str, str, str | None]:
    """`registry/repo[:tag][@sha256:...]` -> (repository, tag, digest)."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    match = re.match(r"^(.*?)(?::([\w.-]+))?$", ref)
    assert match is not None
    repository, tag = match.group(1), match.group(2) or ""
    # A port in the registry host is not a tag.
    if "/" in tag:
        repository, tag = ref, ""
    return repository, tag, digest


def gateway_config(settings: StackSettings, timings: ShutdownTimings) -> dict[str, Any]:
    """The gateway config sections the stack decides (no secrets; redis url comes via env)."""
    return {
        "server": {
            "host": "0.0.0.0",
            "port": APP_PORT,
            "keepalive_timeout_s": timings.server_keepalive_s,
            "graceful_shutdown_s": timings.graceful_shutdown_s,
            # The WAF (infra/waf.py) lets through every body up to this same limit.
            "max_body_bytes": settings.max_body_bytes,
        },
        # With liftoff:providers the chart renders them as upstream.providers (each has its url).
        "upstream": {
            **({} if settings.providers else {"url": settings.upstream_url}),
            "timeout_read_s": settings.longest_stream_seconds,
            "deadline_s": timings.upstream_deadline_s,
        },
        "limits": {
            "default_rpm": settings.default_rpm,
            "default_tpm": settings.default_tpm,
            "on_redis_failure": "local",
        },
        "budgets": {"global_monthly_usd": settings.gateway_monthly_budget_usd},
        # Merged over the image's catalog: only which provider serves each listed model.
        **(
            {"models": {"catalog": catalog_providers(settings.providers)}}
            if any(p.models for p in settings.providers)
            else {}
        ),
    }


def gateway_values(settings: StackSettings, refs: WorkloadRefs) -> dict[str, Any]:
    """Helm values of charts/gateway for this stack (pure: same inputs, same values)."""
    s = settings
    t = ShutdownTimings.from_settings(s)
    # The VPA must not control what the HPA scales on.
    hpa_on_memory = s.hpa_memory_target is not None
    limits: dict[str, str] = {"memory": s.pod_memory_limit}
    if s.pod_cpu_limit:
        limits["cpu"] = s.pod_cpu_limit
    return {
        "image": {
            "repository": refs.image_repository,
            "tag": refs.image_tag,
            "digest": refs.image_digest or "",
            "pullPolicy": "IfNotPresent",
        },
        "resources": {
            "requests": {"cpu": s.pod_cpu_request, "memory": s.pod_memory_request},
            "limits": limits,
        },
        "autoscaling": {
            "enabled": True,
            "minReplicas": s.app_min_replicas,
            "maxReplicas": s.app_max_replicas,
            "targetCPUUtilizationPercentage": s.hpa_cpu_target,
            "targetMemoryUtilizationPercentage": s.hpa_memory_target,
        },
        "vpa": {
            "enabled": s.vpa_mode != "Off",
            "updateMode": s.vpa_mode,
            "minAllowed": {"cpu": s.vpa_min_cpu, "memory": s.vpa_min_memory},
            "maxAllowed": {"cpu": s.vpa_max_cpu, "memory": s.vpa_max_memory},
            "controlledResources": [] if hpa_on_memory else ["memory"],
        },
        # A PDB must leave room to drain a node; with one replica it would block forever.
        "podDisruptionBudget": {"enabled": s.app_min_replicas > 1, "minAvailable": 1},
        "serviceAccount": {
            "create": True,
            "name": APP_SERVICE_ACCOUNT,
            "roleArn": refs.service_account_role_arn,
            "automountServiceAccountToken": False,
        },
        "targetGroupBinding": {"targetGroupArn": refs.target_group_arn},
        "networkPolicy": {
            "enabled": True,
            "ingressCIDRs": [refs.vpc_cidr],
            "redisPort": refs.cache_port,
            "redisCIDRs": [refs.vpc_cidr],
        },
        "server": {
            "port": APP_PORT,
            "workers": s.gateway_workers,
            "keepAliveTimeoutSeconds": t.server_keepalive_s,
            "gracefulShutdownSeconds": t.graceful_shutdown_s,
        },
        "loadBalancer": {"idleTimeoutSeconds": t.alb_idle_timeout_s},
        "lifecycle": {"preStopSleepSeconds": t.pre_stop_sleep_s},
        "terminationGracePeriodSeconds": t.termination_grace_period_s,
        # TLS (rediss) is required by the replication group; the AUTH token comes from its secret.
        "redis": {"url": f"rediss://{refs.cache_host}:{refs.cache_port}/0"},
        "secrets": {
            "upstreamApiKeyArn": refs.upstream_api_key_secret_arn,
            "redisAuthTokenArn": refs.redis_auth_token_secret_arn,
            "clientKeysArn": refs.client_keys_secret_arn,
            "providerApiKeyArns": dict(refs.provider_api_key_secret_arns),
        },
        "providers": [p.gateway_entry() for p in s.providers],
        "aws": {"region": refs.region},
        "topologySpread": {"enabled": True, "maxSkew": 1},
        # Prometheus Operator objects and Grafana dashboards (kube-prometheus-stack).
        "serviceMonitor": {"enabled": s.monitoring},
        "prometheusRule": {"enabled": s.monitoring},
        "dashboards": {"enabled": s.monitoring},
        "config": gateway_config(s, t),
    }


@dataclass
class WorkloadArgs:
    settings: StackSettings
    cluster: Cluster
    refs: pulumi.Output[WorkloadRefs]
    # Must outlive the release on destroy: the LB controller deregisters pods from the target group.
    depends_on: list[pulumi.Resource]


class Workload(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(
        self, name: str, args: WorkloadArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:Workload", name, None, opts)
        s = args.settings
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": APP_NAMESPACE,
                "labels": {
                    **READINESS_GATE_LABEL,
                    "app.kubernetes.io/part-of": "liftoff",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=args.cluster.helm_options(self, extra=args.depends_on),
        )
        values = args.refs.apply(lambda refs: gateway_values(s, refs))
        self.release = k8s.helm.v3.Release(
            f"{name}-gateway",
            name=RELEASE_NAME,
            chart=os.path.relpath(CHART_DIR, os.getcwd()),
            namespace=namespace.metadata.name,
            values=values,
            atomic=True,
            cleanup_on_fail=True,
            # Long enough for a rolling update that waits out pod drains.
            timeout=600,
            opts=args.cluster.helm_options(self, extra=[namespace, *args.depends_on]),
        )
        self.register_outputs({"release": self.release.status})
