"""Liftoff's one policy rule set, over resource records as Pulumi's engine sees them.

Each rule is a small function over a resource's type, name and camelCase inputs (`encryptionConfig`,
`metadataOptions.httpTokens`, ...), or over the whole resource list where a rule needs to relate
resources (a node group and its subnets, a security group and the load balancer using it).
Rule ids follow checkov's where one exists, so users of that scanner recognise them.

The same `RULES` are used by the offline plan (`infra.plan`) and, adapted without a second copy of
their logic, by the CrossGuard policy pack in `infra/policy/` for `pulumi preview --policy-pack`.

Inputs are read only through `Mapping`/`Sequence` methods (`.get`, iteration) so that CrossGuard's
unknown-checking proxies can stand in for plain dicts: a value unknown during preview raises where
it is read and the pack reports that rule as not yet checkable instead of guessing.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import ipaddress
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from infra.address_space import parse_cidr, world_open_versions

Severity = Literal["error", "warning"]

US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
REQUIRED_TAGS = ("project", "environment")
PRODUCTION_ENVIRONMENTS = ("prod", "production")
EKS_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
# ELB security policies that allow TLS 1.0/1.1 (everything else AWS offers is TLS 1.2+).
LEGACY_TLS_POLICIES = (
    "ELBSecurityPolicy-2016-08",
    "ELBSecurityPolicy-2015-05",
    "ELBSecurityPolicy-TLS-1-0-2015-04",
    "ELBSecurityPolicy-TLS-1-1-2017-01",
    "ELBSecurityPolicy-FS-2018-06",
    "ELBSecurityPolicy-FS-1-1-2019-08",
    "ELBSecurityPolicy-TLS13-1-0-2021-06",
    "ELBSecurityPolicy-TLS13-1-1-2021-06",
)
PUBLIC_HTTP_PORTS = frozenset({80, 443})
ALL_PROTOCOLS = "-1"
# Security group protocols by number, as the EC2 API also accepts them.
PROTOCOL_NAMES = {"all": ALL_PROTOCOLS, "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}

EKS_CLUSTER = "aws:eks/cluster:Cluster"
EKS_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
EC2_INSTANCE = "aws:ec2/instance:Instance"
EBS_VOLUME = "aws:ebs/volume:Volume"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE_TABLE_ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
VPC = "aws:ec2/vpc:Vpc"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
SECRET = "aws:secretsmanager/secret:Secret"
KMS_KEY = "aws:kms/key:Key"
LOAD_BALANCERS = ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
LISTENERS = ("aws:lb/listener:Listener", "aws:alb/listener:Listener")
BUDGET = "aws:budgets/budget:Budget"
AWS_PROVIDER = "pulumi:providers:aws"
PREFIX_LIST = "aws:ec2/managedPrefixList:ManagedPrefixList"
PREFIX_LIST_ENTRY = "aws:ec2/managedPrefixListEntry:ManagedPrefixListEntry"
WEB_ACL = "aws:wafv2/webAcl:WebAcl"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


@dataclass(frozen=True)
class ResourceRecord:
    """One resource as declared: `inputs` are camelCase, as the engine sends them.

    `property_dependencies` maps an input name to the URNs of the resources it was computed from
    (how a node group's `subnetIds` are traced back to subnets); `id` is known only for resources
    that exist (CrossGuard stack validation after an update, mocks).
    """

    type: str
    name: str
    inputs: Mapping[str, Any]
    urn: str = ""
    parent: str | None = None
    id: str | None = None
    property_dependencies: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleContext:
    """What environment-aware rules need to know about the stack being checked."""

    stack: str
    region: str | None
    environment: str
    default_tags: Mapping[str, str] = field(default_factory=dict)
    required_tags: tuple[str, ...] = REQUIRED_TAGS
    # True under the mock runtime (`make plan`): rules with an `offline_severity` use it there.
    offline: bool = False

    @property
    def is_production(self) -> bool:
        return self.environment in PRODUCTION_ENVIRONMENTS


@dataclass(frozen=True)
class Finding:
    """One failed check: `resource` is the resource's name, or "stack" for stack-wide findings."""

    rule: str
    severity: Severity
    resource: str
    message: str
    resource_type: str = ""
    urn: str = ""


class StackView:
    """The whole resource list, with lookups used by rules that relate resources."""

    def __init__(self, resources: Sequence[ResourceRecord]) -> None:
        self.resources = list(resources)
        self._by_urn = {r.urn: r for r in self.resources if r.urn}
        self._by_id = {r.id: r for r in self.resources if r.id}

    def of_type(self, *types: str) -> list[ResourceRecord]:
        return [r for r in self.resources if r.type in types]

    def referenced(self, resource: ResourceRecord, prop: str) -> list[ResourceRecord] | None:
        """Resources that input `prop` refers to, or None when that cannot be traced."""
        urns = resource.property_dependencies.get(prop)
        if urns:
            found = [self._by_urn[u] for u in urns if u in self._by_urn]
            if found:
                return found
        values = _as_list(resource.inputs.get(prop))
        found = [self._by_id[v] for v in values if isinstance(v, str) and v in self._by_id]
        return found or None


# What a stack check yields: the offending resource (None: the stack as a whole), a message.
StackFinding = tuple[ResourceRecord | None, str]
ResourceCheck = Callable[[ResourceRecord, RuleContext], Iterable[str]]
StackCheck = Callable[[StackView, RuleContext], Iterable[StackFinding]]


@dataclass(frozen=True)
class Rule:
    """Checks each resource of `types` (`check_resource`) or the whole stack (`check_stack`)."""

    id: str
    title: str
    severity: Severity
    fix: str
    types: tuple[str, ...] = ()
    check_resource: ResourceCheck | None = None
    check_stack: StackCheck | None = None
    production_only: bool = False
    also: tuple[str, ...] = ()  # other scanners' ids covering the same control
    # Severity in an offline plan, for values only the user can supply (a certificate): a fresh
    # clone plans clean while a real preview or up is blocked.
    offline_severity: Severity | None = None
    # What the rule reference says it applies to, where `types` cannot (every AWS resource).
    scope: str = ""

    def severity_in(self, context: RuleContext) -> Severity:
        if context.offline and self.offline_severity is not None:
            return self.offline_severity
        return self.severity

    def applies(self, context: RuleContext) -> bool:
        return context.is_production or not self.production_only

    def applies_to(self, resource_type: str) -> bool:
        return self.check_resource is not None and (not self.types or resource_type in self.types)

    def resource_findings(self, resource: ResourceRecord, context: RuleContext) -> list[Finding]:
        assert self.check_resource is not None
        return [
            self._finding(resource, message, context)
            for message in self.check_resource(resource, context)
        ]

    def stack_findings(self, view: StackView, context: RuleContext) -> list[Finding]:
        assert self.check_stack is not None
        return [
            self._finding(resource, message, context)
            for resource, message in self.check_stack(view, context)
        ]

    def _finding(
        self, resource: ResourceRecord | None, message: str, context: RuleContext
    ) -> Finding:
        return Finding(
            rule=self.id,
            severity=self.severity_in(context),
            resource=resource.name if resource else "stack",
            message=f"{message} Fix: {self.fix}",
            resource_type=resource.type if resource else "",
            urn=resource.urn if resource else "",
        )


RULES: list[Rule] = []


def resource_rule(
    rule_id: str,
    title: str,
    severity: Severity,
    types: Sequence[str],
    fix: str,
    *,
    production_only: bool = False,
    also: Sequence[str] = (),
    offline_severity: Severity | None = None,
    scope: str = "",
) -> Callable[[ResourceCheck], ResourceCheck]:
    def register(check: ResourceCheck) -> ResourceCheck:
        RULES.append(
            Rule(
                rule_id,
                title,
                severity,
                fix,
                tuple(types),
                check_resource=check,
                production_only=production_only,
                also=tuple(also),
                offline_severity=offline_severity,
                scope=scope,
            )
        )
        return check

    return register


def stack_rule(
    rule_id: str,
    title: str,
    severity: Severity,
    fix: str,
    *,
    production_only: bool = False,
    also: Sequence[str] = (),
    offline_severity: Severity | None = None,
) -> Callable[[StackCheck], StackCheck]:
    def register(check: StackCheck) -> StackCheck:
        RULES.append(
            Rule(
                rule_id,
                title,
                severity,
                fix,
                check_stack=check,
                production_only=production_only,
                also=tuple(also),
                offline_severity=offline_severity,
            )
        )
        return check

    return register


# --- value helpers -----------------------------------------------------------------------


def _true(value: Any) -> bool:
    """Pulumi sends some booleans as strings (launch template `ebs.encrypted`)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, str | bytes | Mapping):
        return [] if value is None else [value]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def _as_map(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value.startswith("{"):
        # Provider config objects (defaultTags) arrive JSON-encoded.
        decoded = json.loads(value)
        return decoded if isinstance(decoded, Mapping) else {}
    return {}


def _label(resource: ResourceRecord) -> str:
    short = resource.type.rsplit(":", 1)[-1]
    return f"{short} '{resource.name}'"


def _is_world(cidr: Any) -> bool:
    if not isinstance(cidr, str):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# --- EKS ---------------------------------------------------------------------------------


@resource_rule(
    "CKV_AWS_58",
    "EKS encrypts Kubernetes secrets with a KMS key (envelope encryption)",
    "error",
    [EKS_CLUSTER],
    "set encryptionConfig {resources: [secrets], provider: {keyArn: <customer-managed key>}}.",
)
def eks_secrets_encrypted(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    config = _as_map(resource.inputs.get("encryptionConfig"))
    resources = [str(r) for r in _as_list(config.get("resources"))]
    key_arn = _as_map(config.get("provider")).get("keyArn")
    if "secrets" not in resources or not key_arn:
        yield f"{_label(resource)} does not encrypt Kubernetes secrets with a KMS key."


@resource_rule(
    "CKV_AWS_37",
    "EKS control-plane logging is on for every log type",
    "error",
    [EKS_CLUSTER],
    "set enabledClusterLogTypes to " + ", ".join(EKS_LOG_TYPES) + " (liftoff:clusterLogTypes).",
)
def eks_control_plane_logging(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    enabled = {str(t) for t in _as_list(resource.inputs.get("enabledClusterLogTypes"))}
    missing = [t for t in EKS_LOG_TYPES if t not in enabled]
    if missing:
        yield f"{_label(resource)} does not log control-plane types: {', '.join(missing)}."


@resource_rule(
    "CKV_AWS_38",
    "In prod the EKS public API endpoint is off or limited to an allowlist",
    "error",
    [EKS_CLUSTER],
    "set liftoff:clusterEndpointPublicCidrs to your office/VPN CIDRs "
    "(vpcConfig.publicAccessCidrs), or liftoff:clusterEndpointPublic=false.",
    production_only=True,
    also=["CKV_AWS_39"],
)
def eks_public_endpoint_restricted(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    vpc = _as_map(resource.inputs.get("vpcConfig"))
    public = vpc.get("endpointPublicAccess")
    if public is not None and not _true(public):
        return
    cidrs = _as_list(vpc.get("publicAccessCidrs"))
    if not cidrs or world_open_versions(cidrs):
        yield f"{_label(resource)} exposes its public API endpoint to the whole internet."


@resource_rule(
    "LIFTOFF_NODES_LAUNCH_TEMPLATE",
    "Managed node groups launch from the stack's launch template",
    "error",
    [EKS_NODE_GROUP],
    "pass launchTemplate {id, version} of a launch template with IMDSv2 required and encrypted "
    "volumes (infra/cluster.py declares one per node group).",
)
def node_group_launch_template(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    template = _as_map(resource.inputs.get("launchTemplate"))
    if not (template.get("id") or template.get("name")):
        # EKS's own template answers IMDSv1 and leaves volume encryption to the account default.
        yield (
            f"{_label(resource)} has no launch template, so its nodes get EKS's default one "
            "(IMDSv1 allowed, volumes not encrypted by the stack)."
        )


# --- EKS: what the security section promises is enforced ---------------------------------

EKS_ADDON = "aws:eks/addon:Addon"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
IAM_ROLE = "aws:iam/role:Role"
CNI_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"


def _json_map(value: Any) -> Mapping[str, Any]:
    """An add-on's `configurationValues` (a JSON string) as a map; {} when absent or not JSON."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return {}
        return decoded if isinstance(decoded, Mapping) else {}
    return _as_map(value)


@stack_rule(
    "LIFTOFF_NETWORK_POLICY_ENFORCED",
    "NetworkPolicy objects a Helm release renders are enforced by the VPC CNI",
    "error",
    'set the vpc-cni add-on\'s configurationValues to {"enableNetworkPolicy": "true"} '
    "(infra/addons.py); without it EKS accepts NetworkPolicy objects and enforces none.",
)
def network_policy_enforced(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    releases = [
        r
        for r in view.of_type(HELM_RELEASE)
        if _true(_as_map(_as_map(r.inputs.get("values")).get("networkPolicy")).get("enabled"))
    ]
    if not releases:
        return
    cni = [a for a in view.of_type(EKS_ADDON) if a.inputs.get("addonName") == "vpc-cni"]
    enforcing = [
        a
        for a in cni
        if str(_json_map(a.inputs.get("configurationValues")).get("enableNetworkPolicy")).lower()
        == "true"
    ]
    if enforcing:
        return
    names = ", ".join(_label(r) for r in releases)
    where = f"{_label(cni[0])} does not set enableNetworkPolicy" if cni else "no vpc-cni add-on"
    yield (cni[0] if cni else releases[0]), f"{names} render NetworkPolicy objects but {where}."


@stack_rule(
    "LIFTOFF_CNI_OWN_ROLE",
    "The VPC CNI's permissions are on its service account's role, not on the node role",
    "error",
    "attach AmazonEKS_CNI_Policy to an IRSA or Pod Identity role for kube-system/aws-node "
    "(the vpc-cni add-on's serviceAccountRoleArn) instead of the node role.",
)
def cni_policy_off_node_role(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    for attachment in view.of_type(ROLE_POLICY_ATTACHMENT):
        if attachment.inputs.get("policyArn") != CNI_POLICY_ARN:
            continue
        for role in view.referenced(attachment, "role") or []:
            if role.type == IAM_ROLE and "ec2.amazonaws.com" in str(
                role.inputs.get("assumeRolePolicy", "")
            ):
                yield (
                    attachment,
                    f"{_label(attachment)} gives {_label(role)}, an EC2 (node) role, the VPC "
                    "CNI's permissions: every pod on the node can use them.",
                )


# --- EC2 instances and volumes -----------------------------------------------------------


@resource_rule(
    "CKV_AWS_79",
    "Instance metadata requires IMDSv2 tokens with a hop limit of 1 or 2",
    "error",
    [LAUNCH_TEMPLATE, EC2_INSTANCE],
    "set metadataOptions {httpTokens: required, httpPutResponseHopLimit: 1 (2 if pods need IMDS)}.",
)
def imdsv2_required(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    options = _as_map(resource.inputs.get("metadataOptions"))
    if options.get("httpEndpoint") == "disabled":
        return
    if options.get("httpTokens") != "required":
        yield f"{_label(resource)} allows IMDSv1 (metadataOptions.httpTokens is not 'required')."
    hop_limit = _int(options.get("httpPutResponseHopLimit"), 1)
    if hop_limit > 2:
        yield (
            f"{_label(resource)} has metadata hop limit {hop_limit}: containers several hops away "
            "can steal the node role."
        )


def _ebs_encrypted_problems(resource: ResourceRecord) -> Iterator[str]:
    inputs = resource.inputs
    if resource.type == EBS_VOLUME:
        if not _true(inputs.get("encrypted")):
            yield f"{_label(resource)} is not encrypted."
        return
    if resource.type == EC2_INSTANCE:
        root = _as_map(inputs.get("rootBlockDevice"))
        if not _true(root.get("encrypted")):
            yield f"{_label(resource)} has an unencrypted root volume."
        devices = [_as_map(d) for d in _as_list(inputs.get("ebsBlockDevices"))]
        for device in devices:
            if not _true(device.get("encrypted")):
                yield f"{_label(resource)} has unencrypted volume {device.get('deviceName')}."
        return
    mappings = [_as_map(m) for m in _as_list(inputs.get("blockDeviceMappings"))]
    ebs_mappings = [m for m in mappings if m.get("ebs") is not None]
    if not ebs_mappings:
        yield (
            f"{_label(resource)} declares no EBS block device mapping, so the AMI's "
            "(unencrypted by default) root volume is used."
        )
    for mapping in ebs_mappings:
        if not _true(_as_map(mapping.get("ebs")).get("encrypted")):
            yield f"{_label(resource)} volume {mapping.get('deviceName')} is not encrypted."


@resource_rule(
    "CKV_AWS_8",
    "EBS volumes of nodes and instances are encrypted",
    "error",
    [LAUNCH_TEMPLATE, EC2_INSTANCE, EBS_VOLUME],
    "declare the root volume with ebs {encrypted: true, volumeType: gp3}.",
    also=["CKV_AWS_3"],
)
def ebs_encrypted(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    yield from _ebs_encrypted_problems(resource)


# --- ElastiCache -------------------------------------------------------------------------


@resource_rule(
    "CKV_AWS_29",
    "ElastiCache encrypts data at rest",
    "error",
    [REPLICATION_GROUP],
    "set atRestEncryptionEnabled: true (and kmsKeyId to the stack's key).",
)
def cache_at_rest(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not _true(resource.inputs.get("atRestEncryptionEnabled")):
        yield f"{_label(resource)} does not encrypt data at rest."


@resource_rule(
    "CKV_AWS_191",
    "ElastiCache at-rest encryption uses the customer-managed KMS key",
    "warning",
    [REPLICATION_GROUP],
    "set kmsKeyId to the stack's customer-managed key.",
)
def cache_cmk(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if _true(resource.inputs.get("atRestEncryptionEnabled")) and not resource.inputs.get(
        "kmsKeyId"
    ):
        yield f"{_label(resource)} encrypts at rest with the AWS-owned key, not the stack's CMK."


@resource_rule(
    "CKV_AWS_30",
    "ElastiCache encrypts data in transit (TLS)",
    "error",
    [REPLICATION_GROUP],
    "set transitEncryptionEnabled: true (clients connect with rediss://).",
)
def cache_in_transit(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not _true(resource.inputs.get("transitEncryptionEnabled")):
        yield f"{_label(resource)} does not use TLS in transit."
    elif resource.inputs.get("transitEncryptionMode") == "preferred":
        yield f"{_label(resource)} still accepts plaintext (transitEncryptionMode 'preferred')."


@resource_rule(
    "CKV_AWS_31",
    "ElastiCache requires an AUTH token (or RBAC user group) over TLS",
    "error",
    [REPLICATION_GROUP],
    "set authTokenWo (write-only, keeps it out of state) from a generated secret, with TLS on.",
)
def cache_auth(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    inputs = resource.inputs
    has_auth = bool(
        inputs.get("authTokenWo") or inputs.get("authToken") or _as_list(inputs.get("userGroupIds"))
    )
    if not has_auth:
        yield f"{_label(resource)} accepts clients without an AUTH token."
    elif not _true(inputs.get("transitEncryptionEnabled")):
        yield f"{_label(resource)} sends its AUTH token without TLS."


def _cache_node_count(inputs: Mapping[str, Any]) -> int:
    if inputs.get("numCacheClusters") is not None:
        return _int(inputs.get("numCacheClusters"), 1)
    replicas = _int(inputs.get("replicasPerNodeGroup"), 0)
    return replicas + 1


@resource_rule(
    "LIFTOFF_CACHE_FAILOVER",
    "ElastiCache has a replica in another AZ with automatic failover (prod), and failover is on "
    "whenever replicas exist",
    "error",
    [REPLICATION_GROUP],
    "set liftoff:cacheReplicas >= 1 (turns on automaticFailoverEnabled and multiAzEnabled).",
)
def cache_failover(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    inputs = resource.inputs
    nodes = _cache_node_count(inputs)
    failover = _true(inputs.get("automaticFailoverEnabled")) and _true(inputs.get("multiAzEnabled"))
    if context.is_production and nodes < 2:
        yield f"{_label(resource)} has a single node: an AZ or node failure loses the cache."
    elif nodes >= 2 and not failover:
        yield f"{_label(resource)} has replicas but no multi-AZ automatic failover."


# --- secrets and keys --------------------------------------------------------------------


@resource_rule(
    "CKV_AWS_149",
    "Secrets Manager secrets are encrypted with the customer-managed KMS key",
    "error",
    [SECRET],
    "set kmsKeyId to the stack's customer-managed key.",
)
def secret_on_cmk(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not resource.inputs.get("kmsKeyId"):
        yield f"{_label(resource)} uses the default aws/secretsmanager key, not the stack's CMK."


@resource_rule(
    "CKV_AWS_7",
    "Customer-managed KMS keys rotate automatically",
    "error",
    [KMS_KEY],
    "set enableKeyRotation: true.",
)
def kms_rotation(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    spec = resource.inputs.get("customerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    if spec == "SYMMETRIC_DEFAULT" and not _true(resource.inputs.get("enableKeyRotation")):
        yield f"{_label(resource)} does not rotate its key material."


# --- load balancer -----------------------------------------------------------------------


def _is_application_lb(resource: ResourceRecord) -> bool:
    return (resource.inputs.get("loadBalancerType") or "application") == "application"


@resource_rule(
    "CKV_AWS_131",
    "The ALB drops invalid HTTP header fields",
    "error",
    LOAD_BALANCERS,
    "set dropInvalidHeaderFields: true.",
)
def alb_drops_invalid_headers(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if _is_application_lb(resource) and not _true(resource.inputs.get("dropInvalidHeaderFields")):
        yield f"{_label(resource)} forwards requests with invalid header fields."


@resource_rule(
    "CKV_AWS_150",
    "In prod the load balancer has deletion protection",
    "error",
    LOAD_BALANCERS,
    "set liftoff:albDeletionProtection=true (enableDeletionProtection).",
    production_only=True,
)
def alb_deletion_protection(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not _true(resource.inputs.get("enableDeletionProtection")):
        yield f"{_label(resource)} can be deleted by a mistaken `pulumi destroy` or console click."


@resource_rule(
    "CKV_AWS_91",
    "In prod the load balancer writes access logs",
    "error",
    LOAD_BALANCERS,
    "set liftoff:albAccessLogs=true (accessLogs {bucket, enabled: true}).",
    production_only=True,
)
def alb_access_logs(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    logs = _as_map(resource.inputs.get("accessLogs"))
    if not logs.get("bucket") or (
        logs.get("enabled") is not None and not _true(logs.get("enabled"))
    ):
        yield f"{_label(resource)} keeps no access logs."


def _redirects_to_https(listener: ResourceRecord) -> bool:
    for action in _as_list(listener.inputs.get("defaultActions")):
        action = _as_map(action)
        redirect = _as_map(action.get("redirect"))
        if action.get("type") == "redirect" and redirect.get("protocol") == "HTTPS":
            return True
    return False


@resource_rule(
    "CKV_AWS_103",
    "HTTPS listeners have a certificate and a TLS 1.2+ security policy",
    "error",
    LISTENERS,
    "set certificateArn and sslPolicy ELBSecurityPolicy-TLS13-1-2-2021-06.",
)
def https_listener_tls(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if resource.inputs.get("protocol") != "HTTPS":
        return
    if not resource.inputs.get("certificateArn"):
        yield f"{_label(resource)} is HTTPS without a certificate."
    policy = resource.inputs.get("sslPolicy")
    if not policy or policy in LEGACY_TLS_POLICIES:
        yield f"{_label(resource)} allows TLS older than 1.2 (sslPolicy {policy or 'default'})."


@stack_rule(
    "CKV2_AWS_20",
    "With a certificate, every HTTP listener redirects to HTTPS",
    "error",
    "make the HTTP listener's default action a redirect {protocol: HTTPS, port: 443, HTTP_301}.",
    also=["CKV_AWS_2"],
)
def http_redirects_to_https(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    listeners = view.of_type(*LISTENERS)
    if not any(_is_https_with_certificate(lst) for lst in listeners):
        return
    for listener in listeners:
        if listener.inputs.get("protocol") == "HTTP" and not _redirects_to_https(listener):
            yield (
                listener,
                f"{_label(listener)} serves plain HTTP although an HTTPS listener exists.",
            )


def _is_https_with_certificate(listener: ResourceRecord) -> bool:
    return listener.inputs.get("protocol") == "HTTPS" and bool(
        listener.inputs.get("certificateArn")
    )


@stack_rule(
    "LIFTOFF_PROD_HTTPS",
    "In prod the load balancer serves HTTPS",
    "error",
    "set liftoff:domainName and liftoff:hostedZoneId (the stack requests and validates an ACM "
    "certificate), or liftoff:certificateArn; HTTP then redirects to HTTPS.",
    production_only=True,
    offline_severity="warning",
)
def prod_serves_https(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    listeners = view.of_type(*LISTENERS)
    # The protocol alone: a certificate the stack requests is unknown until validated (preview),
    # and CKV_AWS_103 checks that every HTTPS listener has one.
    if listeners and not any(lst.inputs.get("protocol") == "HTTPS" for lst in listeners):
        for listener in listeners:
            yield listener, f"{_label(listener)} serves prod traffic over plain HTTP only."


# --- S3 ----------------------------------------------------------------------------------

BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
BUCKET_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ACCOUNT_PUBLIC_ACCESS_BLOCK = "aws:s3/accountPublicAccessBlock:AccountPublicAccessBlock"
PUBLIC_ACCESS_FLAGS = (
    "blockPublicAcls",
    "blockPublicPolicy",
    "ignorePublicAcls",
    "restrictPublicBuckets",
)


def _flags_off(block: ResourceRecord) -> list[str]:
    return [flag for flag in PUBLIC_ACCESS_FLAGS if not _true(block.inputs.get(flag))]


def _blocks_bucket(view: StackView, block: ResourceRecord, bucket: ResourceRecord) -> bool:
    """Whether a public access block's `bucket` refers to `bucket` (by dependency, id or name)."""
    if any(r.urn == bucket.urn for r in view.referenced(block, "bucket") or []):
        return True
    name = bucket.inputs.get("bucket")
    return bool(name) and block.inputs.get("bucket") == name


@stack_rule(
    "CKV2_AWS_6",
    "Every S3 bucket has a public access block with all four settings on",
    "error",
    "add an aws.s3.BucketPublicAccessBlock for the bucket with blockPublicAcls, "
    "blockPublicPolicy, ignorePublicAcls and restrictPublicBuckets true.",
    also=["CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56"],
)
def s3_public_access_blocked(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    # The account-wide block, all on, covers every bucket of the account.
    if any(not _flags_off(b) for b in view.of_type(ACCOUNT_PUBLIC_ACCESS_BLOCK)):
        return
    blocks = view.of_type(BUCKET_PUBLIC_ACCESS_BLOCK)
    for bucket in view.of_type(*BUCKETS):
        own = [b for b in blocks if _blocks_bucket(view, b, bucket)]
        if not own:
            yield bucket, f"{_label(bucket)} has no public access block."
        elif all(_flags_off(b) for b in own):
            off = ", ".join(_flags_off(own[0]))
            yield bucket, f"{_label(bucket)} has a public access block with {off} off."


# --- network -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ingress:
    owner: ResourceRecord  # the security group or rule resource that declares it
    group: ResourceRecord | None  # the security group it opens, when known
    protocol: str
    from_port: int
    to_port: int
    cidrs: tuple[str, ...]

    @property
    def group_key(self) -> str:
        """What ingresses of one security group share: its URN, else its id, else the owner's."""
        if self.group is not None:
            return self.group.urn
        group_id = self.owner.inputs.get("securityGroupId")
        return f"id:{group_id}" if isinstance(group_id, str) and group_id else self.owner.urn


def _ports_of(protocol: Any, from_port: Any, to_port: Any) -> tuple[str, int, int]:
    protocol = str(protocol if protocol is not None else ALL_PROTOCOLS).lower()
    protocol = PROTOCOL_NAMES.get(protocol, protocol)
    if protocol == ALL_PROTOCOLS:
        return protocol, 0, 65535
    return protocol, _int(from_port, 0), _int(to_port, 65535)


def _classic_ingress(
    view: StackView, owner: ResourceRecord, group: ResourceRecord | None, rule: Mapping[str, Any]
) -> _Ingress:
    """An ingress in the EC2 API's shape: an inline `ingress` block or a SecurityGroupRule."""
    protocol, low, high = _ports_of(rule.get("protocol"), rule.get("fromPort"), rule.get("toPort"))
    cidrs = [*_as_list(rule.get("cidrBlocks")), *_as_list(rule.get("ipv6CidrBlocks"))]
    list_ids = _as_list(rule.get("prefixListIds"))
    if list_ids and owner.type == SECURITY_GROUP:
        # An inline block shares the `ingress` dependencies with its sibling blocks: those trace
        # its prefix lists only when it is the one block that has any.
        blocks = [
            b for b in _as_list(owner.inputs.get("ingress")) if _as_map(b).get("prefixListIds")
        ]
        cidrs += _prefix_list_cidrs(view, owner, "ingress", list_ids, traced=len(blocks) == 1)
    elif list_ids:
        cidrs += _prefix_list_cidrs(view, owner, "prefixListIds", list_ids)
    return _Ingress(owner, group, protocol, low, high, tuple(cidrs))


def _ingresses(view: StackView) -> Iterator[_Ingress]:
    for group in view.of_type(SECURITY_GROUP):
        for rule in _as_list(group.inputs.get("ingress")):
            yield _classic_ingress(view, group, group, _as_map(rule))
    for rule in view.of_type(SECURITY_GROUP_RULE):
        if rule.inputs.get("type") == "ingress":
            groups = view.referenced(rule, "securityGroupId")
            yield _classic_ingress(view, rule, groups[0] if groups else None, rule.inputs)
    for rule in view.of_type(INGRESS_RULE):
        protocol, low, high = _ports_of(
            rule.inputs.get("ipProtocol"), rule.inputs.get("fromPort"), rule.inputs.get("toPort")
        )
        cidrs = [c for c in (rule.inputs.get("cidrIpv4"), rule.inputs.get("cidrIpv6")) if c]
        if rule.inputs.get("prefixListId"):
            cidrs += _prefix_list_cidrs(view, rule, "prefixListId", [rule.inputs["prefixListId"]])
        groups = view.referenced(rule, "securityGroupId")
        yield _Ingress(rule, groups[0] if groups else None, protocol, low, high, tuple(cidrs))


def _prefix_list_cidrs(
    view: StackView,
    owner: ResourceRecord,
    prop: str,
    list_ids: Sequence[Any],
    *,
    traced: bool = True,
) -> list[str]:
    """CIDRs of the stack's prefix lists that `list_ids` (input `prop` of `owner`) name: found by
    id, else (when `traced`) through `prop`'s dependencies. None for AWS-managed lists."""
    lists = [p for p in view.of_type(PREFIX_LIST) if p.id and p.id in list_ids]
    if not lists and traced:
        lists = [p for p in view.referenced(owner, prop) or [] if p.type == PREFIX_LIST]
    cidrs = [
        str(_as_map(entry).get("cidr"))
        for plist in lists
        for entry in _as_list(plist.inputs.get("entries"))
    ]
    for entry in view.of_type(PREFIX_LIST_ENTRY):
        if any(p in lists for p in view.referenced(entry, "prefixListId") or []):
            cidrs.append(str(entry.inputs.get("cidr")))
    return cidrs


def _load_balancer_groups(view: StackView) -> set[str] | None:
    """URNs of security groups attached to a load balancer; None when that cannot be traced."""
    urns: set[str] = set()
    for lb in view.of_type(*LOAD_BALANCERS):
        groups = view.referenced(lb, "securityGroups")
        if groups is None and _as_list(lb.inputs.get("securityGroups")):
            return None
        urns.update(g.urn for g in groups or [])
    return urns


@dataclass(frozen=True)
class _WorldWindow:
    """Ports of one protocol that a security group's ingresses together open to every public
    address; `ingresses` are those whose CIDRs make up the cover."""

    protocol: str
    from_port: int
    to_port: int
    ingresses: tuple[_Ingress, ...]

    @property
    def cidrs(self) -> list[str]:
        """The CIDRs that cover the public space; just the /0s when there are any."""
        cidrs = list(dict.fromkeys(c for i in self.ingresses for c in i.cidrs))
        versions = world_open_versions(cidrs)
        covering = [c for c in cidrs if (net := parse_cidr(c)) and net.version in versions]
        return [c for c in covering if _is_world(c)] or covering

    @property
    def web_only(self) -> bool:
        return (
            self.protocol == "tcp"
            and self.from_port == self.to_port
            and self.from_port in PUBLIC_HTTP_PORTS
        )


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    """`items` without repeats, in order (records hold dicts: compared by identity)."""
    return tuple({id(item): item for item in items}.values())


def _world_windows(ingresses: Sequence[_Ingress]) -> Iterator[_WorldWindow]:
    """Port windows that the ingresses of one security group open to all public addresses.

    Per protocol, the ports split at every rule's bounds; a window is world-open when the CIDRs of
    the rules spanning it cover the public space (`infra.address_space`). Rules for all protocols
    count for each; a window that they open on their own is reported once, as protocol -1.
    """
    for protocol in sorted({i.protocol for i in ingresses}):
        spanning = [i for i in ingresses if i.protocol in (protocol, ALL_PROTOCOLS)]
        bounds = sorted({i.from_port for i in spanning} | {i.to_port + 1 for i in spanning})
        windows: list[_WorldWindow] = []
        for low, next_low in itertools.pairwise(bounds):
            covering = [i for i in spanning if i.from_port <= low and next_low - 1 <= i.to_port]
            if not world_open_versions(c for i in covering for c in i.cidrs):
                continue
            if protocol != ALL_PROTOCOLS and world_open_versions(
                c for i in covering if i.protocol == ALL_PROTOCOLS for c in i.cidrs
            ):
                continue
            last = windows[-1] if windows else None
            if last is not None and last.to_port + 1 == low:
                merged = _unique([*last.ingresses, *covering])
                windows[-1] = _WorldWindow(protocol, last.from_port, next_low - 1, merged)
            else:
                windows.append(_WorldWindow(protocol, low, next_low - 1, tuple(covering)))
        yield from windows


@stack_rule(
    "CKV_AWS_260",
    "No ingress from the whole internet (0.0.0.0/0, ::/0, or CIDRs that together cover every "
    "public address), except HTTP/HTTPS to the load balancer",
    "error",
    "open only 80/443 to the internet, on the load balancer's security group; reach nodes, cache "
    "and admin ports through security-group references or the VPC.",
    also=["CKV_AWS_24", "CKV_AWS_25", "CKV_AWS_277"],
)
def no_world_ingress(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    lb_groups = _load_balancer_groups(view)
    by_group: dict[str, list[_Ingress]] = {}
    for ingress in _ingresses(view):
        by_group.setdefault(ingress.group_key, []).append(ingress)
    for ingresses in by_group.values():
        for window in _world_windows(ingresses):
            group = window.ingresses[0].group
            if window.web_only and (lb_groups is None or group is None or group.urn in lb_groups):
                continue
            owners = _unique(i.owner for i in window.ingresses)
            subject = owners[0] if len(owners) == 1 or group is None else group
            ports = f"{window.protocol} {window.from_port}-{window.to_port}"
            cidrs = window.cidrs
            message = f"{_label(subject)} opens {ports} to {', '.join(cidrs)}"
            if not any(_is_world(c) for c in cidrs):
                message += f", which cover{'s' if len(cidrs) == 1 else ''} every public address"
            if len(owners) > 1:
                message += f" (rules {', '.join(_label(o) for o in owners)})"
            if window.web_only:
                message += " on a security group that no load balancer uses"
            yield subject, message + "."


def _internet_routed_subnets(view: StackView) -> set[str]:
    """URNs of subnets whose route table has a route to an internet gateway."""
    public_tables: set[str] = set()
    for route in view.of_type(ROUTE):
        if str(route.inputs.get("gatewayId") or "").startswith("igw-"):
            public_tables.update(t.urn for t in view.referenced(route, "routeTableId") or [])
    for table in view.of_type(ROUTE_TABLE):
        for route in _as_list(table.inputs.get("routes")):
            if str(_as_map(route).get("gatewayId") or "").startswith("igw-"):
                public_tables.add(table.urn)
    subnets: set[str] = set()
    for association in view.of_type(ROUTE_TABLE_ASSOCIATION):
        tables = view.referenced(association, "routeTableId") or []
        if any(t.urn in public_tables for t in tables):
            subnets.update(s.urn for s in view.referenced(association, "subnetId") or [])
    return subnets


def _is_public_subnet(subnet: ResourceRecord, internet_routed: set[str]) -> bool:
    tags = _as_map(subnet.inputs.get("tags"))
    return (
        _true(subnet.inputs.get("mapPublicIpOnLaunch"))
        or "kubernetes.io/role/elb" in tags
        or subnet.urn in internet_routed
    )


@stack_rule(
    "LIFTOFF_NODES_PRIVATE",
    "Node groups run in private subnets only",
    "error",
    "pass the private subnet ids to the node group's subnetIds.",
)
def nodes_in_private_subnets(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    internet_routed = _internet_routed_subnets(view)
    for group in view.of_type(EKS_NODE_GROUP):
        subnets = view.referenced(group, "subnetIds")
        if not _as_list(group.inputs.get("subnetIds")):
            yield group, f"{_label(group)} names no subnets."
            continue
        if subnets is None:
            yield group, f"{_label(group)} uses subnets that are not declared in this stack."
            continue
        public = [s.name for s in subnets if _is_public_subnet(s, internet_routed)]
        if public:
            yield group, f"{_label(group)} places nodes in public subnets: {', '.join(public)}."


@stack_rule(
    "CKV2_AWS_11",
    "Every VPC has flow logs",
    "error",
    "add an aws.ec2.FlowLog for the VPC (traffic type ALL).",
)
def vpc_flow_logs(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    flow_logs = view.of_type(FLOW_LOG)
    for vpc in view.of_type(VPC):
        # A flow log whose VPC cannot be traced is given the benefit of the doubt.
        logged = any(
            (refs := view.referenced(log, "vpcId")) is None or any(r.urn == vpc.urn for r in refs)
            for log in flow_logs
        )
        if not logged:
            yield vpc, f"{_label(vpc)} has no flow log."


# --- cost, tags, region ------------------------------------------------------------------


@stack_rule(
    "LIFTOFF_BUDGET",
    "A monthly cost budget with notifications exists",
    "error",
    "keep the stack's aws.budgets.Budget (liftoff:monthlyBudgetUsd, liftoff:budgetThresholds).",
)
def budget_exists(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    budgets = [b for b in view.of_type(BUDGET) if b.inputs.get("budgetType", "COST") == "COST"]
    if not budgets:
        yield None, "The stack declares no AWS Budgets cost budget."
        return
    for budget in budgets:
        if not _as_list(budget.inputs.get("notifications")):
            yield budget, f"{_label(budget)} sends no notifications."


@functools.cache
def supports_tags(resource_type: str) -> bool:
    """Whether a pulumi-aws resource type takes a `tags` map (read from the SDK's signatures)."""
    if not resource_type.startswith("aws:") or resource_type.count(":") != 2:
        return False
    _, module_path, class_name = resource_type.split(":")
    module = module_path.split("/")[0]
    try:
        package = importlib.import_module(
            "pulumi_aws" if module == "index" else f"pulumi_aws.{module}"
        )
    except ImportError:
        return False
    cls = getattr(package, class_name, None)
    init = getattr(cls, "_internal_init", None)
    if init is None:
        return False
    return "tags" in inspect.signature(init).parameters


@resource_rule(
    "LIFTOFF_TAGS",
    "Every taggable AWS resource carries the required tags",
    "error",
    [],
    "tag it with " + ", ".join(REQUIRED_TAGS) + " (the stack's provider default tags do this).",
    scope="every taggable AWS resource",
)
def required_tags(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not supports_tags(resource.type):
        return
    tags = {**context.default_tags, **_as_map(resource.inputs.get("tags"))}
    missing = [t for t in context.required_tags if not tags.get(t)]
    if missing:
        yield f"{_label(resource)} lacks tags: {', '.join(missing)}."


@stack_rule(
    "LIFTOFF_US_REGION",
    "The stack deploys to a US region",
    "error",
    "set aws:region to one of " + ", ".join(US_REGIONS) + ".",
)
def us_region(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    if context.region not in US_REGIONS:
        yield None, f"Stack region {context.region or '(unset)'} is not a US region."


@resource_rule(
    "LIFTOFF_RESOURCE_US_REGION",
    "No resource or aws provider is placed outside the US regions",
    "error",
    [],
    "drop the resource's region input (it then uses the stack's aws:region) or set one of "
    + ", ".join(US_REGIONS)
    + ".",
    scope="every AWS resource and aws provider with its own region",
)
def resource_in_us_region(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    # pulumi-aws v7 gives most resources their own `region`, overriding the provider's.
    if not (resource.type.startswith("aws:") or resource.type == AWS_PROVIDER):
        return
    region = resource.inputs.get("region")
    if region and region not in US_REGIONS:
        yield f"{_label(resource)} is placed in {region}, not a US region."


# --- WAF and the gateway's body limit ------------------------------------------------------

# An ALB forwards at most this much of a body to the WAF (fixed; CloudFront's is 16-64 KB).
ALB_BODY_INSPECTION_BYTES = 8192
# The gateway's server.max_body_bytes when no Helm release sets it (app/config.py ServerConfig).
GATEWAY_DEFAULT_MAX_BODY_BYTES = 1_048_576
# Managed rules that block a body by size: group -> (rule, largest body it lets through).
MANAGED_BODY_SIZE_RULES = {"AWSManagedRulesCommonRuleSet": ("SizeRestrictions_BODY", 8192)}
_NON_BLOCKING_ACTIONS = ("count", "allow")
_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "EQ": lambda a, b: a == b,
    "NE": lambda a, b: a != b,
    "LE": lambda a, b: a <= b,
    "LT": lambda a, b: a < b,
    "GE": lambda a, b: a >= b,
    "GT": lambda a, b: a > b,
}


def _gateway_body_limit(view: StackView) -> int:
    """`config.server.max_body_bytes` of the gateway's Helm release, else the gateway default."""
    for release in view.of_type(HELM_RELEASE):
        config = _as_map(_as_map(release.inputs.get("values")).get("config"))
        limit = _as_map(config.get("server")).get("max_body_bytes")
        if limit is not None:
            return _int(limit, GATEWAY_DEFAULT_MAX_BODY_BYTES)
    return GATEWAY_DEFAULT_MAX_BODY_BYTES


def _body_size_matches(size: int, statement: Mapping[str, Any]) -> bool:
    """Whether a size constraint on the body matches a body of `size` bytes behind an ALB."""
    body = _as_map(_as_map(statement.get("fieldToMatch")).get("body"))
    seen = size
    if size > ALB_BODY_INSPECTION_BYTES:
        handling = body.get("oversizeHandling") or "CONTINUE"
        if handling in ("MATCH", "NO_MATCH"):
            return handling == "MATCH"
        seen = ALB_BODY_INSPECTION_BYTES  # CONTINUE: the WAF measures what it was sent
    compare = _COMPARISONS.get(str(statement.get("comparisonOperator")))
    return compare is not None and compare(seen, _int(statement.get("size"), 0))


def smallest_blocked_body(rule: Mapping[str, Any]) -> int | None:
    """The smallest body size (bytes) a web ACL rule blocks behind an ALB, or None."""
    statement = _as_map(rule.get("statement"))
    managed = _as_map(statement.get("managedRuleGroupStatement"))
    if managed:
        size_rule = MANAGED_BODY_SIZE_RULES.get(str(managed.get("name")))
        if size_rule is None or "count" in _as_map(rule.get("overrideAction")):
            return None
        name, allowed = size_rule
        for override in _as_list(managed.get("ruleActionOverrides")):
            override = _as_map(override)
            action = _as_map(override.get("actionToUse"))
            if override.get("name") == name and any(a in action for a in _NON_BLOCKING_ACTIONS):
                return None
        return allowed + 1
    size = _as_map(statement.get("sizeConstraintStatement"))
    if not size or "body" not in _as_map(size.get("fieldToMatch")):
        return None
    if "block" not in _as_map(rule.get("action")):
        return None
    # The comparisons are monotone in the size the WAF sees: their breakpoints suffice.
    bound = _int(size.get("size"), 0)
    candidates = {0, bound - 1, bound, bound + 1, ALB_BODY_INSPECTION_BYTES + 1}
    return min((c for c in candidates if c >= 0 and _body_size_matches(c, size)), default=None)


@stack_rule(
    "LIFTOFF_WAF_BODY_SIZE",
    "The WAF lets through every request body size the gateway accepts",
    "error",
    "override the managed SizeRestrictions_BODY rule to count and block by size only over the "
    "gateway's server.max_body_bytes (liftoff:maxBodyBytes; infra/waf.py does both).",
)
def waf_passes_gateway_bodies(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    limit: int | None = None
    for acl in view.of_type(WEB_ACL):
        for rule in _as_list(acl.inputs.get("rules")):
            rule = _as_map(rule)
            blocked = smallest_blocked_body(rule)
            if blocked is None:
                continue
            # Read only when needed: the release's values are unknown during a first preview.
            limit = _gateway_body_limit(view) if limit is None else limit
            if blocked <= limit:
                yield (
                    acl,
                    f"{_label(acl)} rule {rule.get('name')} blocks {blocked}-byte bodies; the "
                    f"gateway accepts bodies up to {limit} bytes.",
                )


RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}


# --- evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleVerdict:
    """A rule's outcome on one stack: `checked` counts resources examined (stack rules: 1)."""

    rule: Rule
    applicable: bool
    checked: int
    findings: tuple[Finding, ...]

    @property
    def passed(self) -> bool:
        return not self.findings


def evaluate(resources: Sequence[ResourceRecord], context: RuleContext) -> list[RuleVerdict]:
    """Every rule over every resource it applies to, in rule order."""
    view = StackView(resources)
    verdicts: list[RuleVerdict] = []
    for rule in RULES:
        if not rule.applies(context):
            verdicts.append(RuleVerdict(rule, False, 0, ()))
            continue
        if rule.check_stack is not None:
            verdicts.append(RuleVerdict(rule, True, 1, tuple(rule.stack_findings(view, context))))
            continue
        targets = [r for r in resources if rule.applies_to(r.type)]
        findings = [f for r in targets for f in rule.resource_findings(r, context)]
        verdicts.append(RuleVerdict(rule, True, len(targets), tuple(findings)))
    return verdicts


def default_tags_of(provider_inputs: Mapping[str, Any]) -> dict[str, str]:
    """`defaultTags.tags` of an aws provider's inputs (objects may arrive JSON-encoded)."""
    tags = _as_map(_as_map(provider_inputs.get("defaultTags")).get("tags"))
    return {str(k): str(v) for k, v in tags.items()}


# --- reference docs ----------------------------------------------------------------------


def rules_markdown() -> str:
    """The rule reference (infra/policy/README.md and the CrossGuard pack's readme)."""
    lines = [
        "# Liftoff policy rules",
        "",
        "<!-- Generated by `python -m infra.policies > infra/policy/README.md`; "
        "tests/infra/test_policies.py fails when it is stale. -->",
        "",
        "One rule set (`infra/policies.py`) checked by the offline plan (`make plan STACK=<env>`) "
        "and enforced for real by this CrossGuard pack: "
        "`pulumi preview --policy-pack infra/policy` (or `pulumi up --policy-pack infra/policy`). "
        "Severity error is a mandatory policy (blocks the update), warning is advisory. "
        "Ids follow checkov where it has a matching check; `LIFTOFF_*` rules have no checkov "
        "equivalent. Prod-only rules apply on the stack named prod, whatever its tags say, and on "
        "a stack of another name whose `environment` tag (else a `-prod` name suffix) is prod.",
        "",
        "| Rule | Also | Severity | Applies to | Checks | Fix |",
        "|---|---|---|---|---|---|",
    ]
    for rule in RULES:
        scope = ", ".join(f"`{t}`" for t in rule.types) if rule.check_resource else "the stack"
        scope = rule.scope or scope
        if rule.production_only:
            scope += " (prod only)"
        row = [f"`{rule.id}`", ", ".join(rule.also), rule.severity, scope, rule.title, rule.fix]
        cells = (cell.replace("|", "\\|").replace("<", "&lt;") for cell in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(rules_markdown(), end="")
