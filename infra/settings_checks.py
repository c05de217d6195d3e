"""Checks of settings values before any resource is declared: each field's own range or shape
(`RANGES`, `field_value_ok`) and the checks across fields (`cross_field_problems`), which also
call the concern modules (certificate, quotas, capacity_checks, aws_limits, eks_versions).

`infra.settings.load_settings` runs them; a problem is a `liftoff:<key> = <value>: <allowed>` line.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from infra import aws_limits, eks_versions
from infra.capacity_checks import node_problems
from infra.certificate import certificate_problems, is_dns_name
from infra.provider_settings import provider_key_problems, provider_problems
from infra.quantities import CPU_RE, MEMORY_RE, cpu_cores, memory_bytes
from infra.quotas import quota_problems
from infra.settings_model import LOG_RETENTION_DAYS, PROJECT, config_key, shown_value

INSTANCE_TYPE_RE = (
    r"^[a-z]+[0-9]+[a-z0-9-]*\.(nano|micro|small|medium|large|xlarge|[1-9][0-9]*xlarge|metal)$"
)
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[a-zA-Z]{2,}$"
# What an EKS access entry can name: IAM roles and users (paths kept), the account root; never an
# STS session ARN (arn:aws:sts::...:assumed-role/...).
IAM_PRINCIPAL_ARN_RE = r"^arn:aws:iam::[0-9]{12}:((role|user)/[\w+=,.@/-]+|root)$"
TAG_KEY_RE = r"^[\w .:/=+@-]{1,128}$"


def _cidr(text: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        return None


def _is_private(net: ipaddress.IPv4Network) -> bool:
    return any(
        net.subnet_of(ipaddress.IPv4Network(r))
        for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    )


# Per-field bounds (inclusive) of numeric fields.
RANGES: dict[str, tuple[float, float]] = {
    "az_count": (2, 3),
    "node_min_size": (0, 100),
    "node_desired_size": (0, 100),
    "node_max_size": (1, 100),
    "node_disk_size_gb": (20, 1000),
    "node_metadata_hop_limit": (1, 2),
    "longest_stream_seconds": (10, 3000),
    "cache_replicas": (0, 5),
    "cache_snapshot_retention_days": (0, 35),
    "app_min_replicas": (1, 100),
    "app_max_replicas": (1, 500),
    "hpa_cpu_target": (1, 100),
    "hpa_memory_target": (1, 100),
    "gateway_workers": (1, 16),
    "max_body_bytes": (1024, 64 * 1_048_576),
    "default_rpm": (1, float("inf")),
    "secrets_version": (1, float("inf")),
    "cache_auth_token_version": (1, float("inf")),
    "default_tpm": (1, float("inf")),
    "alarm_5xx_count": (1, float("inf")),
    "alarm_cache_cpu_percent": (1, 100),
    "alarm_cache_memory_percent": (1, 100),
    "budget_forecast_threshold": (1, 200),
}


def _valid_vpc_cidr(v: str) -> bool:
    net = _cidr(v)
    return net is not None and 16 <= net.prefixlen <= 20 and _is_private(net)


def _valid_service_cidr(v: str) -> bool:
    net = _cidr(v)
    return net is not None and 12 <= net.prefixlen <= 24 and _is_private(net)


def _valid_cidrs(v: list[str]) -> bool:
    return all(_cidr(c) is not None for c in v)


def _valid_cpu(v: str) -> bool:
    """A positive Kubernetes CPU quantity (`250m`, `1`, `1.5`)."""
    return bool(re.match(CPU_RE, v)) and cpu_cores(v) > 0


def _valid_memory(v: str) -> bool:
    """A positive Kubernetes memory quantity in binary units (`256Mi`, `1Gi`)."""
    return bool(re.match(MEMORY_RE, v)) and memory_bytes(v) > 0


def _valid_client_keys(text: str) -> bool:
    try:
        keys = json.loads(text)
    except ValueError:
        return False
    return isinstance(keys, list) and all(
        isinstance(k, dict) and isinstance(k.get("name"), str) and ("key" in k or "key_sha256" in k)
        for k in keys
    )


# Per-field checks beyond the type: each returns True when the (typed) value is acceptable.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "vpc_cidr": _valid_vpc_cidr,
    "flow_logs_retention_days": lambda v: v in LOG_RETENTION_DAYS,
    "service_cidr": _valid_service_cidr,
    "cluster_endpoint_public_cidrs": _valid_cidrs,
    "alb_ingress_cidrs": _valid_cidrs,
    "domain_name": is_dns_name,
    "node_instance_types": lambda v: all(re.match(INSTANCE_TYPE_RE, t) for t in v),
    "pod_cpu_request": _valid_cpu,
    "pod_cpu_limit": _valid_cpu,
    "vpa_min_cpu": _valid_cpu,
    "vpa_max_cpu": _valid_cpu,
    "pod_memory_request": _valid_memory,
    "pod_memory_limit": _valid_memory,
    "vpa_min_memory": _valid_memory,
    "vpa_max_memory": _valid_memory,
    "monthly_budget_usd": lambda v: v > 0,
    "gateway_monthly_budget_usd": lambda v: v > 0,
    "alarm_response_time_seconds": lambda v: v > 0,
    "budget_thresholds": lambda v: len(v) > 0 and all(1 <= t <= 200 for t in v),
    "alert_emails": lambda v: all(re.match(EMAIL_RE, e) for e in v),
    "tags": lambda v: (
        all(re.match(TAG_KEY_RE, k) and len(val) <= 256 for k, val in v.items())
        and not any(k.lower().startswith("aws:") for k in v)
    ),
    "client_keys": lambda v: _valid_client_keys(v.get_secret_value()),
    "cluster_admins": lambda v: all(re.match(IAM_PRINCIPAL_ARN_RE, a) for a in v),
    "cluster_viewers": lambda v: all(re.match(IAM_PRINCIPAL_ARN_RE, a) for a in v),
    # The gateway appends /v1/... to the base URL.
    "upstream_url": lambda v: not v.rstrip("/").endswith("/v1"),
    "providers": lambda v: not provider_problems([p.model_dump(by_alias=True) for p in v]),
}


def field_problems(name: str, raw: Any) -> list[str]:
    """`key = value: allowed` lines naming the part of a structured value that failed (a
    provider's url, say); empty when the field's one `allowed` phrase says it best."""
    if name != "providers":
        return []
    return [
        f"{PROJECT}:{key} = {_shown_part(value)}: {allowed}"
        for key, value, allowed in provider_problems(raw)
    ]


def _shown_part(value: object) -> str:
    if value is None:
        return "unset"
    return value if isinstance(value, str) else json.dumps(value)


def field_value_ok(name: str, value: Any) -> bool:
    """The typed `value` of field `name` is within its range and passes its own check."""
    if value is None:
        return True
    if name in RANGES:
        low, high = RANGES[name]
        if not low <= value <= high:
            return False
    check = _CHECKS.get(name)
    return check is None or bool(check(value))


def cross_field_problems(v: dict[str, Any], raw: dict[str, Any], stack: str) -> list[str]:
    """Checks across fields; only fields that passed their own checks are in `v`."""
    problems: list[str] = []

    def fail(field: str, allowed: str) -> None:
        key = config_key(field)
        problems.append(f"{key} = {shown_value(key, raw.get(field, v.get(field)))}: {allowed}")

    def have(*names: str) -> bool:
        return all(v.get(n) is not None for n in names)

    if have("node_min_size", "node_desired_size", "node_max_size"):
        lo, want, hi = v["node_min_size"], v["node_desired_size"], v["node_max_size"]
        if lo > hi:
            fail("node_min_size", f"must be <= liftoff:nodeMaxSize ({hi})")
        elif not lo <= want <= hi:
            fail(
                "node_desired_size",
                f"must be between liftoff:nodeMinSize ({lo}) and liftoff:nodeMaxSize ({hi})",
            )
    if v.get("vpa_mode", "Off") != "Off" and v.get("hpa_memory_target") is not None:
        fail(
            "hpa_memory_target",
            "unset while liftoff:vpaMode is not Off (the VPA controls memory; HPA and VPA "
            "must not act on the same resource)",
        )
    if (
        have("app_min_replicas", "app_max_replicas")
        and v["app_min_replicas"] > v["app_max_replicas"]
    ):
        fail("app_min_replicas", f"must be <= liftoff:appMaxReplicas ({v['app_max_replicas']})")
    if have("pod_cpu_request", "pod_cpu_limit") and cpu_cores(v["pod_cpu_limit"]) < cpu_cores(
        v["pod_cpu_request"]
    ):
        fail("pod_cpu_limit", f"must be >= liftoff:podCpuRequest ({v['pod_cpu_request']})")
    if have("pod_memory_request", "pod_memory_limit") and memory_bytes(
        v["pod_memory_limit"]
    ) < memory_bytes(v["pod_memory_request"]):
        fail("pod_memory_limit", f"must be >= liftoff:podMemoryRequest ({v['pod_memory_request']})")
    if have("vpa_min_cpu", "vpa_max_cpu") and cpu_cores(v["vpa_min_cpu"]) > cpu_cores(
        v["vpa_max_cpu"]
    ):
        fail("vpa_min_cpu", f"must be <= liftoff:vpaMaxCpu ({v['vpa_max_cpu']})")
    if have("vpa_min_memory", "vpa_max_memory") and memory_bytes(
        v["vpa_min_memory"]
    ) > memory_bytes(v["vpa_max_memory"]):
        fail("vpa_min_memory", f"must be <= liftoff:vpaMaxMemory ({v['vpa_max_memory']})")
    if have("vpc_cidr", "service_cidr"):
        vpc, svc = _cidr(v["vpc_cidr"]), _cidr(v["service_cidr"])
        if vpc and svc and vpc.overlaps(svc):
            fail("service_cidr", f"must not overlap liftoff:vpcCidr ({v['vpc_cidr']})")
    if v.get("vpc_cidr"):
        vpc = _cidr(v["vpc_cidr"])
        for field in ("cluster_endpoint_public_cidrs", "alb_ingress_cidrs"):
            for text in v.get(field) or []:
                net = _cidr(text)
                # 0.0.0.0/0 means "anyone", not an address clash; a narrower overlap is a mistake.
                if vpc and net and net.prefixlen > 0 and net.overlaps(vpc):
                    fail(
                        field,
                        f"{text} overlaps liftoff:vpcCidr ({v['vpc_cidr']}); list public CIDRs",
                    )
    if v.get("kubeconfig_role_arn") and v.get("kubeconfig_profile") == "":
        fail("kubeconfig_profile", "a non-empty profile name")
    if v.get("kubeconfig_role_arn") and v["kubeconfig_role_arn"] not in (
        v.get("cluster_admins") or []
    ):
        fail(
            "kubeconfig_role_arn",
            "one of liftoff:clusterAdmins (the role `aws eks get-token` assumes needs the admin "
            "access entry); add it there",
        )
    version_problem = v.get("kubernetes_version") and eks_versions.version_problem(
        v["kubernetes_version"]
    )
    if version_problem:
        fail("kubernetes_version", version_problem)
    for field, allowed in [*certificate_problems(v), *quota_problems(v), *node_problems(v)]:
        fail(field, allowed)
    # Providers: keys no provider takes; liftoff:upstreamUrl beside a list that has its own urls.
    if v.get("providers") is not None:
        for field, allowed in provider_key_problems(
            v["providers"], list(v.get("provider_api_keys") or {}), v.get("llm_api_key") is not None
        ):
            fail(field, allowed)
        if v["providers"] and "upstream_url" in raw:
            fail("upstream_url", "unset while liftoff:providers is set (each provider has its url)")
    for field, allowed in aws_limits.problems(v, raw, stack):
        if field == "stack":
            problems.append(f"stack = {stack}: {allowed}")
        else:
            fail(field, allowed)
    return problems
