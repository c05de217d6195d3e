"""Every `liftoff:` config key (plus `aws:region`) as one typed, validated, documented model.

The program reads config once at the edge (`load_settings`) and passes `StackSettings` down typed.
Invalid config fails before any resource is declared, with one line per problem:
`liftoff:<key> = <value>: <what is allowed>`.

`python -m infra.settings --markdown` prints the reference table kept in docs/configuration.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
)

from infra import aws_limits, eks_versions, instance_types
from infra.cache_engines import versions_allowed_text
from infra.eks_versions import DEFAULT_KUBERNETES_VERSION
from infra.names import resource_prefix

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = "liftoff"
ENVIRONMENTS = ("dev", "staging", "prod")
US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
# Regions where many accounts only get two availability zones.
TWO_AZ_REGIONS = {"us-west-1": 2}
VPA_MODES = ("Off", "Initial", "Recreate", "Auto")

INSTANCE_TYPE_RE = (
    r"^[a-z]+[0-9]+[a-z0-9-]*\.(nano|micro|small|medium|large|xlarge|[1-9][0-9]*xlarge|metal)$"
)
CACHE_NODE_TYPE_RE = (
    r"^cache\.[a-z]+[0-9]+[a-z0-9-]*\.(micro|small|medium|large|xlarge|[1-9][0-9]*xlarge)$"
)
CPU_RE = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"
MEMORY_RE = r"^[0-9]+(Ki|Mi|Gi|Ti)$"
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[a-zA-Z]{2,}$"
ACM_ARN_RE = r"^arn:aws:acm:us-(east|west)-[12]:[0-9]{12}:certificate/[0-9a-f-]{36}$"
IAM_ROLE_ARN_RE = r"^arn:aws:iam::[0-9]{12}:role/[\w+=,.@/-]+$"
# What an EKS access entry can name: IAM roles and users (paths kept), the account root; never an
# STS session ARN (arn:aws:sts::...:assumed-role/...).
IAM_PRINCIPAL_ARN_RE = r"^arn:aws:iam::[0-9]{12}:((role|user)/[\w+=,.@/-]+|root)$"
# The shape of a minor version; which ones EKS offers is infra/data/eks-versions.json's to say.
K8S_VERSION_RE = r"^1\.[0-9]{1,2}$"
NAME_RE = r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$"
IMAGE_RE = r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$"
TAG_KEY_RE = r"^[\w .:/=+@-]{1,128}$"

LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400)
SECRET_KEYS = ("liftoff:llmApiKey", "liftoff:clientKeys")
CLUSTER_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")


class SettingsError(ValueError):
    """Invalid stack config; `problems` holds one `key = value: allowed` line per failure."""

    def __init__(self, problems: list[str], header: str | None = None) -> None:
        self.problems = problems
        count = len(problems)
        header = (
            header or f"invalid Liftoff stack config ({count} problem{'s' if count != 1 else ''}):"
        )
        super().__init__("\n".join([header, *(f"  {p}" for p in problems)]))


def _setting(default: Any, allowed: str, description: str, **kwargs: Any) -> Any:
    """A documented field; `allowed` is the human phrase used in docs and error messages."""
    return Field(default, description=description, json_schema_extra={"allowed": allowed}, **kwargs)


class StackSettings(BaseModel):
    """Validated settings of one stack. Field aliases are the config keys without `liftoff:`."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    # --- general -------------------------------------------------------------------------
    region: Literal["us-east-1", "us-east-2", "us-west-1", "us-west-2"] = _setting(
        "us-east-1",
        "a US region: " + ", ".join(US_REGIONS),
        "AWS region of the stack (standard `aws:region` key).",
        alias="aws:region",
    )
    environment: Literal["dev", "staging", "prod"] = _setting(
        "dev",
        "dev, staging or prod",
        "Environment class; defaults to the stack name. Prod turns on protective defaults "
        "(deletion protection, access logs, snapshots).",
    )
    name: str = _setting(
        PROJECT,
        "3-20 lowercase letters, digits or '-', starting with a letter",
        "Prefix of every resource name (`<name>-<stack>-...`; a stack named dev, staging or prod "
        "gives `<name>-<environment>-...`). With the stack name at most 24 characters: AWS "
        "limits target group names to 32.",
        pattern=NAME_RE,
    )
    tags: dict[str, str] = _setting(
        {}, "a map of tag key -> value", "Extra tags applied to every taggable resource."
    )
    # --- network -------------------------------------------------------------------------
    vpc_cidr: str = _setting(
        "10.0.0.0/16",
        "an IPv4 CIDR with prefix /16-/20 in a private range",
        "VPC address range; split into public and private subnets per availability zone.",
        alias="vpcCidr",
    )
    az_count: int = _setting(
        3,
        "an integer 2-3",
        "Availability zones to spread subnets, nodes and cache over. us-west-1 offers 2 to many "
        "accounts: a request for 3 there is reduced to 2 with a warning.",
        alias="azCount",
    )
    availability_zone_ids: list[str] = _setting(
        [],
        "2-3 distinct zone IDs of the region like use1-az1, not use1-az3 or usw1-az2 (EKS "
        "refuses control-plane subnets there), as many as liftoff:azCount",
        "Pin the availability zones by zone ID (the same physical zone in every account; names "
        "like us-east-1a differ per account). Unset: the first azCount zones EKS accepts.",
        alias="availabilityZoneIds",
    )
    nat_gateways: Literal["single", "perAz"] = _setting(
        "single",
        "single or perAz",
        "One NAT gateway for the VPC (cheap) or one per availability zone (survives an AZ outage).",
        alias="natGateways",
    )
    flow_logs_retention_days: int = _setting(
        30,
        "a CloudWatch retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)),
        "Days VPC flow logs and EKS control-plane logs are kept in CloudWatch Logs.",
        alias="flowLogsRetentionDays",
    )
    # --- cluster -------------------------------------------------------------------------
    kubernetes_version: str = _setting(
        DEFAULT_KUBERNETES_VERSION,
        "a Kubernetes minor version like 1.35 that EKS offers (infra/data/eks-versions.json), "
        "1.30 or later, not past its end of extended support",
        "EKS control plane version; managed add-ons and nodes follow it. A version in extended "
        "support costs the extended rate and needs liftoff:eksSupportType=EXTENDED.",
        alias="kubernetesVersion",
        pattern=K8S_VERSION_RE,
    )
    eks_support_type: Literal["STANDARD", "EXTENDED"] = _setting(
        "STANDARD",
        "STANDARD or EXTENDED",
        "Cluster upgrade policy: STANDARD lets EKS upgrade the control plane at the end of "
        "standard support; EXTENDED keeps the version into extended support (billed at the "
        "extended-support rate).",
        alias="eksSupportType",
    )
    service_cidr: str = _setting(
        "172.20.0.0/16",
        "a private IPv4 CIDR /12-/24 (10/8, 172.16/12, 192.168/16) not overlapping the VPC",
        "Kubernetes service IP range.",
        alias="serviceCidr",
    )
    cluster_endpoint_public: bool = _setting(
        True,
        "true or false",
        "Expose the EKS API endpoint publicly.",
        alias="clusterEndpointPublic",
    )
    cluster_endpoint_public_cidrs: list[str] = _setting(
        ["0.0.0.0/0"],
        "a list of IPv4 CIDRs",
        "Who may reach the public EKS API endpoint. Restrict it in prod.",
        alias="clusterEndpointPublicCidrs",
    )
    cluster_log_types: list[
        Literal["api", "audit", "authenticator", "controllerManager", "scheduler"]
    ] = _setting(
        list(CLUSTER_LOG_TYPES),
        "a list of: " + ", ".join(CLUSTER_LOG_TYPES),
        "EKS control-plane log types sent to CloudWatch.",
        alias="clusterLogTypes",
    )
    node_instance_types: list[str] = _setting(
        ["m7i.large"],
        "a non-empty list of EC2 instance types like m7i.large, in infra/data/instances.json and "
        "priced in infra/data/prices.json, all needing one AL2023 AMI type",
        "Instance types of the managed node group (vertical node knob). GPU families get the "
        "NVIDIA AMI, Inferentia/Trainium the Neuron AMI; pod requests and appMinReplicas must "
        "fit them.",
        alias="nodeInstanceTypes",
        min_length=1,
    )
    allow_unknown_instance_types: bool = _setting(
        False,
        "true or false",
        "Accept EC2 instance and ElastiCache node types missing from Liftoff's instance and price "
        "data (infra/data/); their capacity and cost cannot be checked.",
        alias="allowUnknownInstanceTypes",
    )
    node_capacity_type: Literal["ON_DEMAND", "SPOT"] = _setting(
        "ON_DEMAND",
        "ON_DEMAND or SPOT (SPOT: at least 3 nodeInstanceTypes of one vCPU/memory size)",
        "Purchase option of the workload nodes. SPOT adds a small on-demand system node group "
        "that the cluster add-ons are pinned to, so an interruption never takes them along.",
        alias="nodeCapacityType",
    )
    node_min_size: int = _setting(
        2,
        "an integer 1-100 (the gateway needs a node), <= nodeDesiredSize",
        "Node group minimum size.",
        alias="nodeMinSize",
    )
    node_desired_size: int = _setting(
        2,
        "an integer 0-100 between nodeMinSize and nodeMaxSize",
        "Node group initial size; ignored after creation so the cluster autoscaler owns it.",
        alias="nodeDesiredSize",
    )
    node_max_size: int = _setting(
        4, "an integer 1-100, >= nodeDesiredSize", "Node group maximum size.", alias="nodeMaxSize"
    )
    node_disk_size_gb: int = _setting(
        50,
        "an integer 20-1000",
        "Encrypted gp3 root volume size of each node.",
        alias="nodeDiskSizeGb",
    )
    node_metadata_hop_limit: int = _setting(
        1,
        "1 or 2",
        "IMDSv2 response hop limit; 1 keeps pods off the node's instance role (pods use IRSA).",
        alias="nodeMetadataHopLimit",
    )
    kubeconfig_role_arn: str | None = _setting(
        None,
        "an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
        "Role assumed by `aws eks get-token` in the exported kubeconfig.",
        alias="kubeconfigRoleArn",
        pattern=IAM_ROLE_ARN_RE,
    )
    cluster_admins: list[str] = _setting(
        [],
        "a list of IAM role or user ARNs (arn:aws:iam::<account>:role/<path/name>), not STS "
        "session ARNs",
        "Principals given an EKS access entry with AmazonEKSClusterAdminPolicy; whoever runs "
        "`pulumi up` is added unless listed.",
        alias="clusterAdmins",
    )
    cluster_viewers: list[str] = _setting(
        [],
        "a list of IAM role or user ARNs (arn:aws:iam::<account>:role/<path/name>), not STS "
        "session ARNs",
        "Principals given an EKS access entry with AmazonEKSViewPolicy (read-only).",
        alias="clusterViewers",
    )
    kubeconfig_profile: str | None = _setting(
        None,
        "an AWS CLI profile name",
        "AWS CLI profile used by `aws eks get-token` in the exported kubeconfig.",
        alias="kubeconfigProfile",
        pattern=r"^[\w.-]{1,64}$",
    )
    # --- load balancer -------------------------------------------------------------------
    certificate_arn: str | None = _setting(
        None,
        "an ACM certificate ARN in a US region",
        "ACM certificate for the HTTPS listener; with it, HTTP redirects to HTTPS.",
        alias="certificateArn",
        pattern=ACM_ARN_RE,
    )
    domain_name: str | None = _setting(
        None,
        "a DNS name like api.example.com (at most 64 characters), with liftoff:hostedZoneId",
        "Public name of the gateway: the stack requests an ACM certificate for it, validated by "
        "DNS in liftoff:hostedZoneId, and points it at the load balancer (url https://<name>).",
        alias="domainName",
    )
    hosted_zone_id: str | None = _setting(
        None,
        "a Route 53 hosted zone id like Z0123456789ABCDEFGHIJ, with liftoff:domainName",
        "Route 53 public hosted zone holding liftoff:domainName (certificate validation and "
        "alias records).",
        alias="hostedZoneId",
        pattern=r"^Z[A-Z0-9]{1,32}$",
    )
    alb_ingress_cidrs: list[str] = _setting(
        ["0.0.0.0/0"],
        "a non-empty list of IPv4 CIDRs",
        "Who may reach the load balancer on 80/443.",
        alias="albIngressCidrs",
        min_length=1,
    )
    alb_deletion_protection: bool = _setting(
        False,
        "true or false",
        "ALB deletion protection (default on in prod); while on, `pulumi destroy` also keeps the "
        "ALB access-log bucket and the image repository when they hold objects.",
        alias="albDeletionProtection",
    )
    alb_access_logs: bool = _setting(
        False,
        "true or false",
        "ALB access logs to an encrypted S3 bucket (default on in prod).",
        alias="albAccessLogs",
    )
    waf_enabled: bool = _setting(
        False,
        "true or false",
        "Attach a WAF web ACL with AWS managed rules to the ALB.",
        alias="wafEnabled",
    )
    longest_stream_seconds: int = _setting(
        120,
        "an integer 10-3000",
        "Longest streamed response the app serves; sizes ALB idle timeout, deregistration delay "
        "and graceful shutdown.",
        alias="longestStreamSeconds",
    )
    # --- cache ---------------------------------------------------------------------------
    cache_engine: Literal["valkey", "redis"] = _setting(
        "valkey", "valkey or redis", "ElastiCache engine.", alias="cacheEngine"
    )
    cache_engine_version: str = _setting(
        "8.0",
        "a major.minor version ElastiCache offers for the engine: " + versions_allowed_text(),
        "ElastiCache engine version.",
        alias="cacheEngineVersion",
        pattern=r"^[0-9]+\.[0-9]+$",
    )
    cache_node_type: str = _setting(
        "cache.t4g.small",
        "an ElastiCache node type like cache.t4g.small",
        "Cache node size (vertical cache knob).",
        alias="cacheNodeType",
        pattern=CACHE_NODE_TYPE_RE,
    )
    cache_replicas: int = _setting(
        0,
        "an integer 0-5",
        "Read replicas; >= 1 turns on multi-AZ and automatic failover.",
        alias="cacheReplicas",
    )
    cache_snapshot_retention_days: int = _setting(
        0,
        "an integer 0-35",
        "Days of automatic cache snapshots (0 = none; default 7 in prod).",
        alias="cacheSnapshotRetentionDays",
    )
    cache_auth_token_version: int = _setting(
        1,
        "an integer >= 1",
        "Bump to rotate the cache AUTH token: a new random token is generated, written to its "
        "secret and applied with the ROTATE strategy (old and new accepted until the next change).",
        alias="cacheAuthTokenVersion",
    )
    # --- application ---------------------------------------------------------------------
    image: str | None = _setting(
        None,
        "an image reference registry/repository[:tag][@sha256:digest]",
        "Gateway image; unset builds app/ into an ECR repository on `pulumi up`.",
        pattern=IMAGE_RE,
    )
    app_min_replicas: int = _setting(
        2, "an integer 1-100, <= appMaxReplicas", "HPA minimum replicas.", alias="appMinReplicas"
    )
    app_max_replicas: int = _setting(
        10, "an integer 1-500, >= appMinReplicas", "HPA maximum replicas.", alias="appMaxReplicas"
    )
    hpa_cpu_target: int = _setting(
        70, "an integer 1-100 (percent)", "HPA target CPU utilisation.", alias="hpaCpuTarget"
    )
    hpa_memory_target: int | None = _setting(
        None,
        "an integer 1-100 (percent)",
        "HPA target memory utilisation (unset: CPU only).",
        alias="hpaMemoryTarget",
    )
    pod_cpu_request: str = _setting(
        "250m",
        "a CPU quantity like 250m or 1",
        "Gateway container CPU request.",
        alias="podCpuRequest",
    )
    pod_cpu_limit: str | None = _setting(
        None,
        "a CPU quantity like 1 or 500m, >= podCpuRequest",
        "Gateway container CPU limit (unset: no CPU throttling).",
        alias="podCpuLimit",
    )
    pod_memory_request: str = _setting(
        "256Mi",
        "a memory quantity like 256Mi or 1Gi",
        "Gateway container memory request.",
        alias="podMemoryRequest",
    )
    pod_memory_limit: str = _setting(
        "512Mi",
        "a memory quantity like 512Mi, >= podMemoryRequest",
        "Gateway container memory limit.",
        alias="podMemoryLimit",
    )
    vpa_mode: Literal["Off", "Initial", "Recreate", "Auto"] = _setting(
        "Off",
        "one of " + ", ".join(VPA_MODES),
        "VerticalPodAutoscaler update mode; anything but Off installs the VPA controller.",
        alias="vpaMode",
    )
    vpa_min_cpu: str = _setting(
        "100m", "a CPU quantity, <= vpaMaxCpu", "VPA lower bound for CPU.", alias="vpaMinCpu"
    )
    vpa_max_cpu: str = _setting(
        "2", "a CPU quantity, >= vpaMinCpu", "VPA upper bound for CPU.", alias="vpaMaxCpu"
    )
    vpa_min_memory: str = _setting(
        "128Mi",
        "a memory quantity, <= vpaMaxMemory",
        "VPA lower bound for memory.",
        alias="vpaMinMemory",
    )
    vpa_max_memory: str = _setting(
        "2Gi",
        "a memory quantity, >= vpaMinMemory",
        "VPA upper bound for memory.",
        alias="vpaMaxMemory",
    )
    gateway_workers: int = _setting(
        1, "an integer 1-16", "Gateway worker processes per pod.", alias="gatewayWorkers"
    )
    max_body_bytes: int = _setting(
        1_048_576,
        "an integer 1024-67108864 (bytes)",
        "Largest request body the gateway accepts (413 above); the WAF lets every body up to "
        "this size through.",
        alias="maxBodyBytes",
    )
    upstream_url: str = _setting(
        "https://api.openai.com/v1",
        "an https:// URL",
        "OpenAI-compatible upstream base URL the gateway forwards to.",
        alias="upstreamUrl",
        pattern=r"^https://[^\s]+$",
    )
    default_rpm: int = _setting(
        600, "an integer >= 1", "Default requests per minute per client key.", alias="defaultRpm"
    )
    default_tpm: int = _setting(
        200000, "an integer >= 1", "Default tokens per minute per client key.", alias="defaultTpm"
    )
    gateway_monthly_budget_usd: float | None = _setting(
        None,
        "a number > 0",
        "Global monthly spend cap enforced by the gateway (unset: none).",
        alias="gatewayMonthlyBudgetUsd",
    )
    llm_api_key: SecretStr | None = _setting(
        None,
        "a string (set with `pulumi config set --secret`)",
        "Upstream LLM API key; stored in Secrets Manager. Secret.",
        alias="llmApiKey",
    )
    client_keys: SecretStr | None = _setting(
        None,
        'a JSON list of {"name", "key"|"key_sha256", ...} (set with --secret)',
        "Gateway client keys; stored in Secrets Manager. Secret.",
        alias="clientKeys",
    )
    secrets_version: int = _setting(
        1,
        "an integer >= 1",
        "Bump after changing llmApiKey or clientKeys: secret values are sent write-only (kept "
        "out of Pulumi state), so a new version is what makes Pulumi send them again.",
        alias="secretsVersion",
    )
    # --- cost and alerts -----------------------------------------------------------------
    monthly_budget_usd: float = _setting(
        300.0, "a number > 0", "AWS Budgets monthly cost limit.", alias="monthlyBudgetUsd"
    )
    budget_thresholds: list[int] = _setting(
        [50, 80, 100],
        "a list of integers 1-200 (percent of budget, actual spend)",
        "Budget notifications on actual spend.",
        alias="budgetThresholds",
    )
    budget_forecast_threshold: int | None = _setting(
        100,
        "an integer 1-200 (percent of budget)",
        "Budget notification on forecasted spend (unset: none).",
        alias="budgetForecastThreshold",
    )
    alert_emails: list[str] = _setting(
        [], "a list of email addresses", "Subscribers of the alert SNS topic.", alias="alertEmails"
    )
    alarm_5xx_count: int = _setting(
        10,
        "an integer >= 1",
        "ALB 5xx responses per 5 minutes that raise an alarm.",
        alias="alarm5xxCount",
    )
    alarm_response_time_seconds: float = _setting(
        30.0,
        "a number > 0",
        "Average target response time (s) that raises an alarm; LLM calls are slow.",
        alias="alarmResponseTimeSeconds",
    )
    alarm_cache_cpu_percent: int = _setting(
        80,
        "an integer 1-100",
        "Cache engine CPU (%) that raises an alarm.",
        alias="alarmCacheCpuPercent",
    )
    alarm_cache_memory_percent: int = _setting(
        85,
        "an integer 1-100",
        "Cache memory usage (%) that raises an alarm.",
        alias="alarmCacheMemoryPercent",
    )
    monitoring: bool = _setting(
        False,
        "true or false",
        "Ship the gateway chart's ServiceMonitor, PrometheusRule (alerts) and Grafana dashboards; "
        "needs kube-prometheus-stack (Prometheus Operator CRDs) in the cluster.",
    )

    # Set by load_settings: not a config key.
    _stack: str | None = PrivateAttr(default=None)

    # --- derived -------------------------------------------------------------------------
    @property
    def effective_az_count(self) -> int:
        """AZs actually used: the pinned zone IDs, else azCount capped where the region offers
        fewer to many accounts."""
        if self.availability_zone_ids:
            return len(self.availability_zone_ids)
        return min(self.az_count, TWO_AZ_REGIONS.get(self.region, 3))

    @property
    def az_note(self) -> str | None:
        """Why fewer AZs are used than asked for, or None."""
        if not self.availability_zone_ids and self.effective_az_count < self.az_count:
            return (
                f"liftoff:azCount = {self.az_count}: {self.region} offers only "
                f"{self.effective_az_count} availability zones to many accounts; using "
                f"{self.effective_az_count}."
            )
        return None

    @property
    def stack(self) -> str:
        """The Pulumi stack these settings were loaded for (the environment when built
        directly, without a stack)."""
        return self._stack or self.environment

    @property
    def prefix(self) -> str:
        """Name prefix of every resource: `<name>-<stack>`, which is `<name>-<environment>` for
        the dev, staging and prod stacks (infra/names.py)."""
        return resource_prefix(self.name, self.stack)

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def recovery_window_days(self) -> int:
        """Days a deleted KMS key or secret stays recoverable: AWS's maximum in prod."""
        return 30 if self.is_prod else 7


# Protective defaults for prod when the stack file does not set the key.
ENVIRONMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {},
    "staging": {"natGateways": "perAz", "cacheReplicas": 1},
    "prod": {
        "natGateways": "perAz",
        "cacheReplicas": 1,
        "cacheSnapshotRetentionDays": 7,
        "albDeletionProtection": True,
        "albAccessLogs": True,
    },
}

_FIELDS = StackSettings.model_fields


def config_key(field_name: str) -> str:
    """`liftoff:<alias>` (or `aws:region`) of a field."""
    alias = _FIELDS[field_name].alias or field_name
    return alias if ":" in alias else f"{PROJECT}:{alias}"


KEY_TO_FIELD: dict[str, str] = {config_key(name): name for name in _FIELDS}
# One validator per field (type + the Field's own constraints) so every bad key is reported.
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Annotated[(info.annotation, Field(), *info.metadata)])  # type: ignore[misc]
    for name, info in _FIELDS.items()
}


def _allowed(field_name: str) -> str:
    extra = _FIELDS[field_name].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra["allowed"])


def _shown(key: str, value: object) -> str:
    if key in SECRET_KEYS:
        return "[secret]"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _memory_bytes(quantity: str) -> int:
    return int(quantity[:-2]) * _MEMORY_UNITS[quantity[-2:]]


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


# Per-field checks beyond the type: each returns True when the (typed) value is acceptable.
_RANGES: dict[str, tuple[float, float]] = {
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


def is_arm(instance_type: str) -> bool:
    """Graviton (arm64): the instance data's architecture, else the family name (a1, and every
    family with a `g` after the generation digit: m7g, c6gd, c7gn, t4g, x2gd, g5g)."""
    return instance_types.is_arm(instance_type)


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
    return bool(re.match(CPU_RE, v)) and _cpu_cores(v) > 0


def _valid_memory(v: str) -> bool:
    """A positive Kubernetes memory quantity in binary units (`256Mi`, `1Gi`)."""
    return bool(re.match(MEMORY_RE, v)) and _memory_bytes(v) > 0


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "vpc_cidr": _valid_vpc_cidr,
    "flow_logs_retention_days": lambda v: v in LOG_RETENTION_DAYS,
    "service_cidr": _valid_service_cidr,
    "cluster_endpoint_public_cidrs": _valid_cidrs,
    "alb_ingress_cidrs": _valid_cidrs,
    "domain_name": lambda v: _is_dns_name(v),  # defined below, with the cross-field checks
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
}


def _valid_client_keys(text: str) -> bool:
    try:
        keys = json.loads(text)
    except ValueError:
        return False
    return isinstance(keys, list) and all(
        isinstance(k, dict) and isinstance(k.get("name"), str) and ("key" in k or "key_sha256" in k)
        for k in keys
    )


def _field_check(name: str, value: Any) -> bool:
    if value is None:
        return True
    if name in _RANGES:
        low, high = _RANGES[name]
        if not low <= value <= high:
            return False
    check = _CHECKS.get(name)
    return check is None or bool(check(value))


def _cross_field_problems(v: dict[str, Any], raw: dict[str, Any], stack: str) -> list[str]:
    """Checks across fields; only fields that passed their own checks are in `v`."""
    problems: list[str] = []

    def fail(field: str, allowed: str) -> None:
        key = config_key(field)
        problems.append(f"{key} = {_shown(key, raw.get(field, v.get(field)))}: {allowed}")

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
    if have("pod_cpu_request", "pod_cpu_limit") and _cpu_cores(v["pod_cpu_limit"]) < _cpu_cores(
        v["pod_cpu_request"]
    ):
        fail("pod_cpu_limit", f"must be >= liftoff:podCpuRequest ({v['pod_cpu_request']})")
    if have("pod_memory_request", "pod_memory_limit") and _memory_bytes(
        v["pod_memory_limit"]
    ) < _memory_bytes(v["pod_memory_request"]):
        fail("pod_memory_limit", f"must be >= liftoff:podMemoryRequest ({v['pod_memory_request']})")
    if have("vpa_min_cpu", "vpa_max_cpu") and _cpu_cores(v["vpa_min_cpu"]) > _cpu_cores(
        v["vpa_max_cpu"]
    ):
        fail("vpa_min_cpu", f"must be <= liftoff:vpaMaxCpu ({v['vpa_max_cpu']})")
    if have("vpa_min_memory", "vpa_max_memory") and _memory_bytes(
        v["vpa_min_memory"]
    ) > _memory_bytes(v["vpa_max_memory"]):
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
    # Imported here: these modules read config_key from this one.
    from infra.capacity_checks import node_problems
    from infra.certificate import certificate_problems
    from infra.quotas import quota_problems

    for field, allowed in [*certificate_problems(v), *quota_problems(v), *node_problems(v)]:
        fail(field, allowed)
    for field, allowed in aws_limits.problems(v, raw, stack):
        if field == "stack":
            problems.append(f"stack = {stack}: {allowed}")
        else:
            fail(field, allowed)
    return problems


def _is_dns_name(value: str) -> bool:
    from infra.certificate import is_dns_name

    return is_dns_name(value)


def _coerce_raw(field_name: str, value: object) -> object:
    """Config values from the CLI are strings: decode JSON for structured fields."""
    annotation = str(_FIELDS[field_name].annotation)
    if isinstance(value, str) and (
        annotation.startswith(("list", "dict")) or "list[" in annotation
    ):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def load_settings(config: Mapping[str, object], stack: str) -> StackSettings:
    """Validate a flat `{"aws:region": ..., "liftoff:<key>": ...}` dict.

    Raises SettingsError listing every problem at once.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(f"{PROJECT}:") and key != "aws:region":
            continue  # other providers' config (aws:profile, kubernetes:...) is not ours
        field = KEY_TO_FIELD.get(key)
        if field is None:
            problems.append(f"{key} = {_shown(key, value)}: unknown key; see docs/configuration.md")
            continue
        if value is None:
            continue
        raw[field] = value

    environment = raw.get("environment", stack if stack in ENVIRONMENTS else "dev")
    # A stack named dev, staging or prod is that environment: `liftoff:environment=dev` on the
    # prod stack would switch prod's defaults and prod-only policies off.
    if stack in ENVIRONMENTS and environment in ENVIRONMENTS and environment != stack:
        problems.append(
            f"{PROJECT}:environment = {environment}: must equal the stack name ({stack}); "
            "a stack named dev, staging or prod is that environment (choose freely on stacks "
            "with other names)"
        )
    for alias, default in ENVIRONMENT_DEFAULTS.get(str(environment), {}).items():
        field = KEY_TO_FIELD[f"{PROJECT}:{alias}"]
        raw.setdefault(field, default)
    raw.setdefault("environment", environment)

    valid: dict[str, Any] = {}
    for field, value in raw.items():
        key = config_key(field)
        try:
            typed = _ADAPTERS[field].validate_python(_coerce_raw(field, value))
            ok = _field_check(field, typed)
        except ValidationError:
            ok = False
        if not ok:
            problems.append(f"{key} = {_shown(key, value)}: {_allowed(field)}")
            continue
        valid[field] = typed
    problems.extend(_cross_field_problems({**_defaults(), **valid}, raw, stack))
    if problems:
        raise SettingsError(problems)
    settings = StackSettings(**valid)
    settings._stack = stack
    return settings


def _defaults() -> dict[str, Any]:
    return {name: f.get_default(call_default_factory=True) for name, f in _FIELDS.items()}


def stack_file(stack: str) -> Path:
    return REPO_ROOT / f"Pulumi.{stack}.yaml"


def read_stack_config(stack: str) -> dict[str, object]:
    """The `config:` map of Pulumi.<stack>.yaml (secure values are ciphertext: left out)."""
    path = stack_file(stack)
    if not path.exists():
        known = sorted(p.name.split(".")[1] for p in REPO_ROOT.glob("Pulumi.*.yaml"))
        raise SettingsError([f"stack = {stack}: no {path.name}; known stacks: {', '.join(known)}"])
    document = yaml.safe_load(path.read_text()) or {}
    config = document.get("config") or {}
    return {
        key: value
        for key, value in config.items()
        if not (isinstance(value, dict) and "secure" in value)
    }


def load_stack_file(stack: str, overrides: Mapping[str, str] | None = None) -> StackSettings:
    """Settings of Pulumi.<stack>.yaml plus `overrides` (key -> value), without Pulumi."""
    config = read_stack_config(stack)
    config.update(overrides or {})
    return load_settings(config, stack)


def settings_from_pulumi() -> StackSettings:
    """Settings from the running Pulumi program's config (CLI or mocks)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    flat: dict[str, object] = {}
    known = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    for key in set(known) | set(KEY_TO_FIELD):
        value = runtime_config.get_config(key)
        if value is not None:
            flat[key] = value
    return load_settings(flat, pulumi.get_stack())


# --- reference docs ----------------------------------------------------------------------


def _default_text(field: str) -> str:
    default = _FIELDS[field].get_default(call_default_factory=True)
    if default is None:
        return "unset"
    return f"`{_shown(config_key(field), default)}`"


def _stack_value_text(stack_config: dict[str, object], field: str) -> str:
    key = config_key(field)
    if key in SECRET_KEYS:
        return "secret"
    if key not in stack_config:
        return "·"
    return f"`{_shown(key, stack_config[key])}`"


def reference_markdown() -> str:
    """The configuration reference table (docs/configuration.md)."""
    stacks = {s: read_stack_config(s) for s in ENVIRONMENTS}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m infra.settings --markdown > docs/configuration.md`; "
        "tests/infra/test_settings.py fails when it is stale. -->",
        "",
        "Every key is set per stack with `pulumi config set <key> <value>` (structured values as "
        "JSON). Secrets use `pulumi config set --secret`. The dev/staging/prod columns show the "
        "values in `Pulumi.<stack>.yaml`; `·` means the default applies. Prod and staging add "
        "protective defaults for keys they do not set: "
        + "; ".join(
            f"{env}: " + ", ".join(f"`{k}`={json.dumps(val)}" for k, val in d.items())
            for env, d in ENVIRONMENT_DEFAULTS.items()
            if d
        )
        + ".",
        "",
        "| Key | Type | Default | dev | staging | prod | Allowed | Description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, info in _FIELDS.items():
        type_text = re.sub(r"typing\.|<class '(\w+)'>", r"\1", str(info.annotation))
        type_text = re.sub(r"Literal\[[^\]]*\]", "enum", type_text)
        type_text = (
            type_text.replace("pydantic.types.", "")
            .replace("SecretStr", "secret str")
            .replace("|", "\\|")
        )
        row = [
            f"`{config_key(name)}`",
            type_text,
            _default_text(name),
            *(_stack_value_text(stacks[s], name) for s in ENVIRONMENTS),
            _allowed(name).replace("|", "\\|"),
            (info.description or "").replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.settings", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the configuration reference")
    parser.add_argument("--stack", help="validate Pulumi.<stack>.yaml and print its settings")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(reference_markdown())
        return 0
    if args.stack:
        try:
            settings = load_stack_file(args.stack)
        except SettingsError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(settings.model_dump_json(indent=2, by_alias=True))
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
