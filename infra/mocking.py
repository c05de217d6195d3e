"""Run the real Liftoff program under Pulumi's mock runtime and record what it declares.

`run_program(stack, overrides)` is what the offline plan, the policy checks and the tests use: no
cloud account and no Pulumi CLI. The recording monitor captures every registration with its
inputs, which inputs were secret, and its resource options (parent, ignore_changes, depends_on,
protect, delete_before_replace, provider), so invariants such as destroy ordering are testable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from infra.cache import member_cluster_ids
from infra.settings import PROJECT, SECRET_KEYS, StackSettings, load_settings, read_stack_config
from infra.zones import REGION_CODES

ACCOUNT_ID = "123456789012"
MOCK_CALLER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/liftoff-mock"
# base64 of a PEM-shaped placeholder certificate
MOCK_CA_DATA = (
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSU1PQ0sKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="
)
# Zone names map to IDs differently in every account: a shuffled mapping, with the IDs EKS
# refuses (use1-az3, usw1-az2) among the first zones so that choosing by ID is exercised.
AZ_IDS = {
    "us-east-1": ["use1-az4", "use1-az3", "use1-az6", "use1-az1", "use1-az2", "use1-az5"],
    "us-east-2": ["use2-az3", "use2-az1", "use2-az2"],
    "us-west-1": ["usw1-az2", "usw1-az1", "usw1-az3"],
    "us-west-2": ["usw2-az2", "usw2-az1", "usw2-az3", "usw2-az4"],
}
AZ_NAMES = {
    "us-east-1": [
        "us-east-1a",
        "us-east-1b",
        "us-east-1c",
        "us-east-1d",
        "us-east-1e",
        "us-east-1f",
    ],
    "us-east-2": ["us-east-2a", "us-east-2b", "us-east-2c"],
    "us-west-1": ["us-west-1a", "us-west-1b", "us-west-1c"],
    "us-west-2": ["us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"],
}


@dataclass(frozen=True)
class RecordedResource:
    type: str
    name: str
    urn: str
    parent_urn: str
    custom: bool
    inputs: dict[str, Any]
    secret_inputs: set[str]
    options: dict[str, Any]
    # The id LiftoffMocks gave it (deterministic), to trace id-valued inputs to resources.
    id: str = ""


@dataclass(frozen=True)
class ProgramRun:
    resources: list[RecordedResource]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    settings: StackSettings | None = None
    # Warnings the program logged (e.g. the AZ count adapting to the region).
    warnings: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> RecordedResource:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        if len(found) != 1:
            names = [r.name for r in self.of_type(type_)]
            raise LookupError(f"expected one {type_} named {name!r}, found {len(found)}: {names}")
        return found[0]

    def by_urn(self, urn: str) -> RecordedResource:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise LookupError(urn)


def addon_build(addon: str, kubernetes_version: str) -> str:
    """A newest EKS add-on build for a Kubernetes minor version, shaped as EKS publishes them:
    kube-proxy tracks the Kubernetes version, coredns moves to 1.12 from 1.33, the VPC CNI and the
    pod identity agent get newer builds for newer versions."""
    minor = int(kubernetes_version.split(".")[1])
    builds = {
        "vpc-cni": f"v1.20.{max(minor - 30, 0)}-eksbuild.1",
        "kube-proxy": f"v{kubernetes_version}.{max(minor - 28, 0)}-eksbuild.2",
        "coredns": "v1.11.4-eksbuild.14" if minor < 33 else f"v1.12.{minor - 32}-eksbuild.1",
        "eks-pod-identity-agent": f"v1.3.{max(minor - 28, 0)}-eksbuild.1",
    }
    if addon not in builds:
        raise ValueError(f"no EKS add-on named {addon} (describe-addon-versions)")
    return builds[addon]


def _short_hash(*parts: str, length: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def _uuid(h: str) -> str:
    """A UUID-shaped id (ACM certificate ids) from a hex hash."""
    return f"{h[:8]}-{h[8:12]}-4{h[12:15]}-8{h[15:17]}{h[:1]}-{_short_hash(h, 'u', length=12)}"


class LiftoffMocks(pulumi.runtime.Mocks):
    """Realistic ids, ARNs, endpoints and computed outputs for every resource type Liftoff uses."""

    def __init__(
        self,
        region: str,
        stack: str,
        caller_arn: str = MOCK_CALLER_ARN,
        role_paths: Mapping[str, str] | None = None,
    ) -> None:
        self.region = region
        self.stack = stack
        # Who runs `pulumi up` (getCallerIdentity) and the paths of the account's IAM roles
        # (getRole; a role not listed has the default path "/").
        self.caller_arn = caller_arn
        self.role_paths = dict(role_paths or {})

    def _arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:aws:{service}:{region}:{ACCOUNT_ID}:{resource}"

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {
                "names": AZ_NAMES[self.region],
                "zoneIds": AZ_IDS[self.region],
                "id": self.region,
                "state": "available",
            }, []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            # STS answers an assumed role as arn:aws:sts::<acct>:assumed-role/<role>/<session>
            # (no role path) with the user id AROA...:<session>.
            session = self.caller_arn.rsplit("/", 1)[-1]
            assumed = ":assumed-role/" in self.caller_arn
            return {
                "accountId": self.caller_arn.split(":")[4],
                "arn": self.caller_arn,
                "userId": f"AROAMOCKROLE:{session}" if assumed else "AIDAMOCKUSER",
                "id": ACCOUNT_ID,
            }, []
        if token == "aws:iam/getRole:getRole":
            role_name = str(args.args["name"])
            path = self.role_paths.get(role_name, "/")
            return {
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:role{path}{role_name}",
                "name": role_name,
                "path": path,
                "id": role_name,
                "uniqueId": f"AROA{_short_hash(role_name).upper()}",
            }, []
        if token == "aws:eks/getAddonVersion:getAddonVersion":
            addon, version = str(args.args["addonName"]), str(args.args["kubernetesVersion"])
            return {
                "addonName": addon,
                "kubernetesVersion": version,
                "mostRecent": bool(args.args.get("mostRecent")),
                "version": addon_build(addon, version),
                "id": addon,
            }, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}, []
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            registry = f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com"
            return {
                "authorizationToken": "QVdTOm1vY2stcmVnaXN0cnktcGFzc3dvcmQ=",
                "userName": "AWS",
                "password": "mock-registry-password",
                "proxyEndpoint": f"https://{registry}",
                "expiresAt": "2030-01-01T00:00:00Z",
                "id": registry,
            }, []
        if token == "aws:ec2/getManagedPrefixList:getManagedPrefixList":
            return {"id": "pl-63a5400a", "name": args.args.get("name", "")}, []
        raise NotImplementedError(f"LiftoffMocks has no answer for invoke {token}")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        typ, name, inputs = args.typ, args.name, dict(args.inputs)
        h = _short_hash(self.stack, typ, name)
        outputs: dict[str, Any] = {}
        resource_id = f"{name}-{h[:8]}"

        if typ.startswith("pulumi:providers:"):
            return f"{name}-provider-id", inputs
        if typ == "aws:ec2/vpc:Vpc":
            resource_id = f"vpc-{h}"
            outputs = {
                "arn": self._arn("ec2", f"vpc/{resource_id}"),
                "defaultSecurityGroupId": f"sg-{_short_hash(h, 'default')}",
                "mainRouteTableId": f"rtb-{_short_hash(h, 'main')}",
            }
        elif typ == "aws:ec2/subnet:Subnet":
            resource_id = f"subnet-{h}"
            outputs = {"arn": self._arn("ec2", f"subnet/{resource_id}")}
        elif typ == "aws:ec2/internetGateway:InternetGateway":
            resource_id = f"igw-{h}"
            outputs = {"arn": self._arn("ec2", f"internet-gateway/{resource_id}")}
        elif typ == "aws:ec2/eip:Eip":
            resource_id = f"eipalloc-{h}"
            octets = bytes.fromhex(h[:6])
            outputs = {
                "allocationId": resource_id,
                "publicIp": f"3.{octets[0]}.{octets[1]}.{octets[2]}",
            }
        elif typ == "aws:ec2/natGateway:NatGateway":
            resource_id = f"nat-{h}"
        elif typ == "aws:ec2/routeTable:RouteTable":
            resource_id = f"rtb-{h}"
            outputs = {"arn": self._arn("ec2", f"route-table/{resource_id}")}
        elif typ == "aws:ec2/vpcEndpoint:VpcEndpoint":
            resource_id = f"vpce-{h}"
            outputs = {
                "arn": self._arn("ec2", f"vpc-endpoint/{resource_id}"),
                "prefixListId": "pl-63a5400a",
            }
        elif typ == "aws:ec2/securityGroup:SecurityGroup":
            resource_id = f"sg-{h}"
            outputs = {"arn": self._arn("ec2", f"security-group/{resource_id}")}
        elif typ.startswith("aws:vpc/securityGroup"):
            resource_id = f"sgr-{h}"
        elif typ == "aws:ec2/flowLog:FlowLog":
            resource_id = f"fl-{h}"
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            resource_id = f"lt-{h}"
            outputs = {
                "arn": self._arn("ec2", f"launch-template/{resource_id}"),
                "latestVersion": 1,
            }
        elif typ == "aws:cloudwatch/logGroup:LogGroup":
            resource_id = inputs.get("name", name)
            outputs = {"arn": self._arn("logs", f"log-group:{resource_id}")}
        elif typ == "aws:iam/role:Role":
            resource_id = inputs.get("name", name)
            outputs = {
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{resource_id}",
                "uniqueId": f"AROA{h.upper()}",
            }
        elif typ == "aws:iam/policy:Policy":
            resource_id = f"arn:aws:iam::{ACCOUNT_ID}:policy/{inputs.get('name', name)}"
            outputs = {"arn": resource_id}
        elif typ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
            url = str(inputs.get("url", "")).removeprefix("https://")
            resource_id = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{url}"
            outputs = {"arn": resource_id}
        elif typ == "aws:kms/key:Key":
            resource_id = (
                f"{h[:8]}-{h[8:12]}-4{h[12:15]}-a{h[15:17]}{h[:1]}-{_short_hash(h, 'k', length=12)}"
            )
            outputs = {"arn": self._arn("kms", f"key/{resource_id}"), "keyId": resource_id}
        elif typ == "aws:kms/alias:Alias":
            resource_id = inputs.get("name", f"alias/{name}")
            outputs = {"arn": self._arn("kms", resource_id)}
        elif typ == "aws:eks/cluster:Cluster":
            resource_id = inputs.get("name", name)
            oidc_id = _short_hash(h, "oidc", length=32).upper()
            outputs = {
                "arn": self._arn("eks", f"cluster/{resource_id}"),
                "endpoint": f"https://{oidc_id}.gr7.{self.region}.eks.amazonaws.com",
                "certificateAuthority": {"data": MOCK_CA_DATA},
                "identities": [
                    {
                        "oidcs": [
                            {"issuer": f"https://oidc.eks.{self.region}.amazonaws.com/id/{oidc_id}"}
                        ]
                    }
                ],
                "platformVersion": "eks.1",
                "status": "ACTIVE",
                "vpcConfig": {
                    **(inputs.get("vpcConfig") or {}),
                    "clusterSecurityGroupId": f"sg-{_short_hash(h, 'cluster')}",
                    "vpcId": f"vpc-{_short_hash(self.stack, 'aws:ec2/vpc:Vpc')}",
                },
            }
        elif typ == "aws:eks/nodeGroup:NodeGroup":
            # With a prefix the provider appends a 26-character unique suffix.
            suffix = f"{int(h, 16):026d}"
            group_name = (
                inputs.get("nodeGroupName") or inputs.get("nodeGroupNamePrefix", "") + suffix
            )
            resource_id = f"{inputs.get('clusterName')}:{group_name}"
            outputs = {
                "nodeGroupName": group_name,
                "arn": self._arn("eks", f"nodegroup/{resource_id.replace(':', '/')}/{h[:8]}"),
                "status": "ACTIVE",
                "resources": [{"autoscalingGroups": [{"name": f"eks-{name}-{h[:8]}"}]}],
            }
        elif typ == "aws:eks/addon:Addon":
            resource_id = f"{inputs.get('clusterName')}:{inputs.get('addonName')}"
            outputs = {
                "arn": self._arn(
                    "eks", f"addon/{inputs.get('clusterName')}/{inputs.get('addonName')}/{h[:8]}"
                )
            }
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            lb_name = inputs.get("name", name)
            suffix = f"app/{lb_name}/{h[:16]}"
            resource_id = self._arn("elasticloadbalancing", f"loadbalancer/{suffix}")
            outputs = {
                "arn": resource_id,
                "arnSuffix": suffix,
                "dnsName": f"{lb_name}-{int(h[:8], 16)}.{self.region}.elb.amazonaws.com",
                "zoneId": "Z35SXDOTRQ7X7K",
            }
        elif typ == "aws:lb/targetGroup:TargetGroup":
            suffix = f"targetgroup/{inputs.get('name', name)}/{h[:16]}"
            resource_id = self._arn("elasticloadbalancing", suffix)
            outputs = {"arn": resource_id, "arnSuffix": suffix}
        elif typ == "aws:lb/listener:Listener":
            resource_id = self._arn("elasticloadbalancing", f"listener/app/{name}/{h[:16]}")
            outputs = {"arn": resource_id}
        elif typ == "aws:s3/bucket:Bucket":
            resource_id = inputs.get("bucket") or f"{name}-{h[:8]}"
            outputs = {
                "arn": f"arn:aws:s3:::{resource_id}",
                "bucket": resource_id,
                "bucketDomainName": f"{resource_id}.s3.amazonaws.com",
            }
        elif typ == "aws:acm/certificate:Certificate":
            resource_id = self._arn("acm", f"certificate/{_uuid(h)}")
            domain = str(inputs.get("domainName", ""))
            # What ACM answers for DNS validation: one CNAME per name on the certificate.
            outputs = {
                "arn": resource_id,
                "status": "PENDING_VALIDATION",
                "domainValidationOptions": [
                    {
                        "domainName": name_,
                        "resourceRecordName": f"_{_short_hash(h, name_, length=32)}.{name_}.",
                        "resourceRecordType": "CNAME",
                        "resourceRecordValue": (
                            f"_{_short_hash(h, name_, 'value', length=32)}.acm-validations.aws."
                        ),
                    }
                    for name_ in [domain, *(inputs.get("subjectAlternativeNames") or [])]
                ],
            }
        elif typ == "aws:acm/certificateValidation:CertificateValidation":
            resource_id = str(inputs.get("certificateArn"))
        elif typ == "aws:route53/record:Record":
            record_name = str(inputs.get("name", "")).rstrip(".")
            resource_id = f"{inputs.get('zoneId')}_{record_name}_{inputs.get('type')}"
            outputs = {"fqdn": record_name}
        elif typ == "aws:ec2/managedPrefixList:ManagedPrefixList":
            resource_id = f"pl-{h}"
            outputs = {"arn": self._arn("ec2", f"prefix-list/{resource_id}"), "version": 1}
        elif typ == "aws:wafv2/webAcl:WebAcl":
            resource_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}"
            outputs = {
                "arn": self._arn(
                    "wafv2", f"regional/webacl/{inputs.get('name', name)}/{resource_id}"
                )
            }
        elif typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            resource_id = inputs.get("replicationGroupId", name)
            host = f"{resource_id}.{h[:6]}.{REGION_CODES[self.region]}.cache.amazonaws.com"
            # The program sets numCacheClusters (primary + replicas), not replicasPerNodeGroup.
            replicas = int(inputs.get("numCacheClusters", 1)) - 1
            outputs = {
                "arn": self._arn("elasticache", f"replicationgroup:{resource_id}"),
                "primaryEndpointAddress": f"master.{host}",
                "readerEndpointAddress": f"replica.{host}",
                "port": 6379,
                "memberClusters": member_cluster_ids(resource_id, replicas),
            }
        elif typ.startswith("aws:elasticache/"):
            resource_id = inputs.get("name", name)
            outputs = {
                "arn": self._arn(
                    "elasticache", f"{typ.split('/')[1].split(':')[0].lower()}:{resource_id}"
                )
            }
        elif typ == "aws:secretsmanager/secret:Secret":
            secret_name = inputs.get("name", name)
            resource_id = self._arn("secretsmanager", f"secret:{secret_name}-{h[:6]}")
            outputs = {"arn": resource_id}
        elif typ == "aws:secretsmanager/secretVersion:SecretVersion":
            resource_id = f"{inputs.get('secretId')}|{h[:32]}"
            outputs = {"versionId": h[:32], "arn": inputs.get("secretId")}
        elif typ == "aws:sns/topic:Topic":
            resource_id = self._arn("sns", inputs.get("name", name))
            outputs = {"arn": resource_id}
        elif typ == "aws:sns/topicSubscription:TopicSubscription":
            resource_id = f"{inputs.get('topic')}:{h[:8]}"
            outputs = {"arn": resource_id}
        elif typ == "aws:budgets/budget:Budget":
            resource_id = f"{ACCOUNT_ID}:{inputs.get('name', name)}"
            outputs = {"arn": f"arn:aws:budgets::{ACCOUNT_ID}:budget/{inputs.get('name', name)}"}
        elif typ == "aws:cloudwatch/metricAlarm:MetricAlarm":
            resource_id = inputs.get("name", name)
            outputs = {"arn": self._arn("cloudwatch", f"alarm:{resource_id}")}
        elif typ == "aws:ecr/repository:Repository":
            repo = inputs.get("name", name)
            resource_id = repo
            outputs = {
                "arn": self._arn("ecr", f"repository/{repo}"),
                "repositoryUrl": f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com/{repo}",
                "registryId": ACCOUNT_ID,
            }
        elif typ == "random:index/randomPassword:RandomPassword":
            length = int(inputs.get("length", 32))
            outputs = {
                "result": (_short_hash(self.stack, name, length=64) * 2)[:length],
                "bcryptHash": "$2a$10$mock",
            }
            resource_id = "none"
        elif typ == "docker-build:index:Image":
            digest = "sha256:" + _short_hash(self.stack, name, length=64)
            outputs = {
                "digest": digest,
                "ref": f"{(inputs.get('tags') or ['image'])[0].split(':')[0]}@{digest}",
            }
        elif typ.startswith("kubernetes:helm.sh/v3:Release"):
            resource_id = f"{inputs.get('namespace', 'default')}/{inputs.get('name', name)}"
            outputs = {
                "status": {
                    "status": "deployed",
                    "name": inputs.get("name", name),
                    "namespace": inputs.get("namespace"),
                }
            }
        elif typ.startswith("kubernetes:"):
            metadata = dict(inputs.get("metadata") or {})
            metadata.setdefault("name", name)
            resource_id = metadata["name"]
            outputs = {"metadata": metadata}
        # Write-only inputs (auth_token_wo, secret_string_wo) are never part of provider state.
        state = {k: v for k, v in inputs.items() if not k.endswith("Wo")}
        return resource_id, {**state, "id": resource_id, **outputs}


def _secret_paths(value: struct_pb2.Value, path: str) -> set[str]:
    """Dotted paths under `path` whose serialized value carries Pulumi's secret signature."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        fields = value.struct_value.fields
        sig = fields.get(rpc._special_sig_key)
        if sig is not None and sig.string_value == rpc._special_secret_sig:
            return {path}
        found: set[str] = set()
        for key, child in fields.items():
            found |= _secret_paths(child, f"{path}.{key}")
        return found
    if kind == "list_value":
        found = set()
        for i, child in enumerate(value.list_value.values):
            found |= _secret_paths(child, f"{path}[{i}]")
        return found
    return set()


def _plain(value: Any) -> Any:
    """Protobuf numbers arrive as floats: give whole numbers back their int type."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _plain(value.get("value"))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """A MockMonitor that also keeps every registration's request: options and secret inputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        secret_inputs: set[str] = set()
        for key, value in request.object.fields.items():
            secret_inputs |= _secret_paths(value, key)
        # Plaintext stays in memory only; consumers redact `secret_inputs` before printing.
        inputs = _plain(rpc.deserialize_properties(request.object))
        implicit = {urn for deps in request.propertyDependencies.values() for urn in deps.urns}
        all_deps = list(request.dependencies)
        self.recorded.append(
            RecordedResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent_urn=request.parent,
                custom=bool(request.custom),
                inputs=inputs,
                secret_inputs=secret_inputs,
                options={
                    "ignore_changes": list(request.ignoreChanges),
                    # Explicit depends_on; "dependencies" adds those implied by inputs.
                    "depends_on": [u for u in all_deps if u not in implicit],
                    "dependencies": all_deps,
                    "protect": bool(request.protect),
                    "retain_on_delete": bool(request.retainOnDelete),
                    "deleted_with": request.deletedWith,
                    "delete_before_replace": bool(request.deleteBeforeReplace),
                    "provider": request.provider,
                    "additional_secret_outputs": list(request.additionalSecretOutputs),
                    # Parents a resource was moved from (aliases): its old URNs still match.
                    "alias_parents": [
                        a.spec.parentUrn for a in request.aliases if a.HasField("spec")
                    ],
                },
                id=response.id,
            )
        )
        return response


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def flat_config(stack: str, overrides: Mapping[str, str] | None) -> dict[str, str]:
    """Stack file config plus overrides as the string map the Pulumi CLI would hand the program."""
    config = {**read_stack_config(stack), **(overrides or {})}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def ensure_event_loop() -> None:
    """Give this thread an open event loop: Pulumi's runtime uses the current one, and an
    earlier asyncio user in the same process (pytest-asyncio, asyncio.run) may have closed or
    unset it."""
    try:
        if not asyncio.get_event_loop_policy().get_event_loop().is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


@contextmanager
def mocked_runtime(
    stack: str,
    config: Mapping[str, str],
    monitor: RecordingMonitor,
    logger: logging.Logger | None = None,
) -> Iterator[None]:
    """Pulumi's runtime as `pulumi up` on `stack` with `config` would set it up, registering
    into `monitor`; every registration is awaited on leaving and the runtime reset after."""
    ensure_event_loop()
    runtime_settings.reset_options(project=PROJECT, stack=stack, preview=False)
    set_all_config(dict(config), [k for k in SECRET_KEYS if k in config])
    pulumi_mocks.set_mocks(
        monitor.mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor, logger=logger
    )
    try:
        yield
        _sync_await(wait_for_rpcs())
    finally:
        runtime_settings.reset_options(project=PROJECT, stack=stack)
        set_all_config({}, [])


def run_program(
    stack: str,
    overrides: Mapping[str, str] | None = None,
    *,
    config_from: str | None = None,
    caller_arn: str = MOCK_CALLER_ARN,
    role_paths: Mapping[str, str] | None = None,
) -> ProgramRun:
    """Run the program for `stack` under mocks; SettingsError comes before any resource.

    `config_from` names the Pulumi.<stack>.yaml to read for a stack that has no file of its own
    (default: `stack`); `caller_arn` is who runs it (getCallerIdentity) and `role_paths` the
    paths of IAM roles by name (getRole)."""
    source = config_from or stack
    # Fails fast, before the runtime is touched.
    settings = load_settings({**read_stack_config(source), **(overrides or {})}, stack)
    config = flat_config(source, overrides)

    monitor = RecordingMonitor(LiftoffMocks(settings.region, stack, caller_arn, role_paths))
    logger = logging.getLogger(f"liftoff.mock.{stack}")
    logger.propagate = False
    handler = _ListHandler()
    logger.handlers = [handler]

    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    with mocked_runtime(stack, config, monitor, logger):
        from infra.stack import define_stack

        define_stack()
        _sync_await(wait_for_rpcs())
        root = runtime_settings.get_root_resource()
        assert root is not None
        for name, value in dict(root.outputs).items():  # type: ignore[attr-defined]
            output = pulumi.Output.from_input(value)
            outputs[name] = _sync_await(output.future())
            if _sync_await(output.is_secret()):
                secret_outputs.add(name)
    return ProgramRun(
        resources=list(monitor.recorded),
        outputs=outputs,
        secret_outputs=secret_outputs,
        settings=settings,
        warnings=handler.messages,
    )
