"""The `StackSettings` model: every `liftoff:` config key (plus `aws:region`) as a typed,
documented field, with the per-environment defaults and the field <-> config key naming.

No checks and no config reading here, so the check modules can import it: `infra.settings_checks`
validates values, `infra.settings` loads them (and re-exports what other code imports).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from infra.cache_engines import versions_allowed_text
from infra.eks_versions import DEFAULT_KUBERNETES_VERSION
from infra.names import resource_prefix
from infra.provider_settings import PROVIDER_KEYS_ALLOWED, PROVIDERS_ALLOWED, ProviderSettings

PROJECT = "liftoff"
ENVIRONMENTS = ("dev", "staging", "prod")
US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
# Regions where many accounts only get two availability zones.
TWO_AZ_REGIONS = {"us-west-1": 2}
VPA_MODES = ("Off", "Initial", "Recreate", "Auto")

CACHE_NODE_TYPE_RE = (
    r"^cache\.[a-z]+[0-9]+[a-z0-9-]*\.(micro|small|medium|large|xlarge|[1-9][0-9]*xlarge)$"
)
ACM_ARN_RE = r"^arn:aws:acm:us-(east|west)-[12]:[0-9]{12}:certificate/[0-9a-f-]{36}$"
IAM_ROLE_ARN_RE = r"^arn:aws:iam::[0-9]{12}:role/[\w+=,.@/-]+$"
# The shape of a minor version; which ones EKS offers is infra/data/eks-versions.json's to say.
K8S_VERSION_RE = r"^1\.[0-9]{1,2}$"
NAME_RE = r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$"
IMAGE_RE = r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$"

LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400)
SECRET_KEYS = ("liftoff:llmApiKey", "liftoff:clientKeys", "liftoff:providerApiKeys")
CLUSTER_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")


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
        "https://api.openai.com",
        "an https:// base URL without /v1 (the gateway appends /v1/...)",
        "OpenAI-compatible upstream base URL the gateway forwards to (unset when "
        "liftoff:providers lists them).",
        alias="upstreamUrl",
        pattern=r"^https://[^\s]+$",
    )
    providers: list[ProviderSettings] = _setting(
        [],
        PROVIDERS_ALLOWED,
        "Named upstream providers (infra/provider_settings.py); each serves the catalog models it "
        "lists in `models` (rendered as models.catalog.<model>.provider), the first every other "
        "one. Keys: the first's is "
        "liftoff:llmApiKey, the others' liftoff:providerApiKeys; bedrock uses the pod's IAM role "
        "(bedrock:InvokeModel* on that region's foundation models). Empty: one provider from "
        "liftoff:upstreamUrl.",
    )
    provider_api_keys: dict[str, SecretStr] = _setting(
        {},
        PROVIDER_KEYS_ALLOWED,
        "API keys of the providers after the first; each stored in its own Secrets Manager "
        "secret. Secret.",
        alias="providerApiKeys",
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
        "Upstream LLM API key (of the first of liftoff:providers when set); stored in Secrets "
        "Manager. Secret.",
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
        "Bump after changing llmApiKey, providerApiKeys or clientKeys: secret values are sent "
        "write-only (kept out of Pulumi state), so a new version is what makes Pulumi send them "
        "again.",
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

FIELDS = StackSettings.model_fields


def config_key(field_name: str) -> str:
    """`liftoff:<alias>` (or `aws:region`) of a field."""
    alias = FIELDS[field_name].alias or field_name
    return alias if ":" in alias else f"{PROJECT}:{alias}"


KEY_TO_FIELD: dict[str, str] = {config_key(name): name for name in FIELDS}


def allowed_text(field_name: str) -> str:
    """The field's `allowed` phrase, as docs and error messages show it."""
    extra = FIELDS[field_name].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra["allowed"])


def shown_value(key: str, value: object) -> str:
    """A config value as docs and error messages show it; secrets never."""
    if key in SECRET_KEYS:
        return "[secret]"
    if isinstance(value, str):
        return value
    return json.dumps(value)
