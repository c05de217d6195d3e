"""Cluster: EKS control plane, IRSA, add-ons, managed nodes, a Kubernetes provider, autoscalers.

Built from pulumi_aws primitives (no pulumi-eks) so every resource is visible to mocks and policies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import addons, iam
from infra.access import ClusterAccess
from infra.nodes import NodeGroups, NodeGroupsArgs
from infra.primitives import kms_key, log_group
from infra.settings import StackSettings
from infra.tags import tags


class Chart(NamedTuple):
    name: str
    repository: str
    version: str


# Chart versions are pinned so `pulumi up` is repeatable; bump them deliberately.
CLUSTER_AUTOSCALER_CHART = Chart(
    "cluster-autoscaler", "https://kubernetes.github.io/autoscaler", "9.46.6"
)
METRICS_SERVER_CHART = Chart(
    "metrics-server", "https://kubernetes-sigs.github.io/metrics-server/", "3.12.2"
)
VPA_CHART = Chart("vpa", "https://charts.fairwinds.com/stable", "4.7.2")


def build_kubeconfig(
    cluster_name: str,
    endpoint: str,
    ca_data: str,
    region: str,
    role_arn: str | None,
    profile: str | None,
) -> str:
    """A kubeconfig whose token comes from `aws eks get-token` for whoever runs it."""
    args = [
        "eks",
        "get-token",
        "--cluster-name",
        cluster_name,
        "--region",
        region,
        "--output",
        "json",
    ]
    if role_arn:
        args += ["--role-arn", role_arn]
    exec_config: dict[str, object] = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "aws",
        "args": args,
        "interactiveMode": "Never",
    }
    if profile:
        exec_config["env"] = [{"name": "AWS_PROFILE", "value": profile}]
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster_name,
                    "cluster": {"server": endpoint, "certificate-authority-data": ca_data},
                }
            ],
            "contexts": [
                {"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}
            ],
            "current-context": cluster_name,
            "users": [{"name": cluster_name, "user": {"exec": exec_config}}],
        },
        indent=2,
    )


@dataclass
class ClusterArgs:
    settings: StackSettings
    cluster_name: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    # Network resources that must outlive the nodes and releases (destroy ordering).
    network_dependencies: Sequence[pulumi.Resource]


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    node_security_group_id: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer_url: pulumi.Output[str]
    secrets_key_arn: pulumi.Output[str]
    deployer_arn: str

    def __init__(
        self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:Cluster", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self._settings = s

        cluster_role = iam.role(
            f"{name}-cluster-role",
            s,
            f"{s.prefix}-eks-cluster",
            iam.assume_role_policy("eks.amazonaws.com"),
            child,
        )
        cluster_policy = aws.iam.RolePolicyAttachment(
            f"{name}-cluster-policy",
            role=cluster_role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=child,
        )
        secrets_key = kms_key(
            f"{name}-secrets-key",
            s,
            description=f"{s.prefix}: envelope encryption of Kubernetes secrets",
            tag_name=f"{s.prefix}-eks-secrets",
            alias=True,
            opts=child,
        )
        # Created before the cluster so its retention is ours, not "never expire".
        control_plane_logs = log_group(
            f"{name}-control-plane-logs",
            s,
            log_group_name=f"/aws/eks/{args.cluster_name}/cluster",
            tag_name=f"{s.prefix}-eks-logs",
            opts=child,
        )
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=args.cluster_name,
            role_arn=cluster_role.arn,
            version=s.kubernetes_version,
            vpc_config={
                "subnet_ids": list(args.private_subnet_ids),
                "endpoint_private_access": True,
                "endpoint_public_access": s.cluster_endpoint_public,
                "public_access_cidrs": s.cluster_endpoint_public_cidrs
                if s.cluster_endpoint_public
                else None,
            },
            encryption_config={"provider": {"key_arn": secrets_key.arn}, "resources": ["secrets"]},
            enabled_cluster_log_types=list(s.cluster_log_types),
            kubernetes_network_config={"service_ipv4_cidr": s.service_cidr, "ip_family": "ipv4"},
            # Access is only the entries in infra/access.py: no aws-auth ConfigMap, no
            # one-time admin entry for whoever happened to create the cluster.
            access_config={
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": False,
            },
            upgrade_policy={"support_type": s.eks_support_type},
            tags=tags(s, args.cluster_name),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[cluster_policy, control_plane_logs, *args.network_dependencies],
                # Only read at creation, and a change replaces the cluster: clusters created
                # with the bootstrap keep it (docs/upgrading.md).
                ignore_changes=["accessConfig.bootstrapClusterCreatorAdminPermissions"],
            ),
        )
        self.name = cluster.name
        self.secrets_key_arn = secrets_key.arn
        # Pods run on the EKS-managed cluster security group (VPC CNI uses the node's ENIs).
        self.node_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.oidc_issuer_url = cluster.identities[0].oidcs[0].issuer
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc",
            url=self.oidc_issuer_url,
            client_id_lists=["sts.amazonaws.com"],
            tags=tags(s, f"{s.prefix}-eks-oidc"),
            opts=child,
        )
        self.oidc_provider_arn = oidc.arn

        access = ClusterAccess(f"{name}-access", s, cluster, child)
        self.deployer_arn = access.deployer_arn

        node_addons = addons.addons_before_nodes(
            name, s, cluster, oidc.arn, self.oidc_issuer_url, self
        )
        self.node_groups = NodeGroups(
            name,
            NodeGroupsArgs(
                settings=s,
                cluster=cluster,
                cluster_name=args.cluster_name,
                private_subnet_ids=args.private_subnet_ids,
                # Nodes become Ready only once the VPC CNI (and its role) is in place.
                depends_on=[*node_addons, *args.network_dependencies],
            ),
            child,
        )
        node_groups = self.node_groups.groups
        cluster_addons = [
            *node_addons,
            *(
                addons.managed_addon(
                    name,
                    s,
                    cluster,
                    addon,
                    self,
                    depends_on=node_groups,
                    configuration_values=self.node_groups.addon_configuration(addon),
                )
                for addon in addons.AFTER_NODES
            ),
        ]

        kubeconfig = pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.certificate_authority.data
        ).apply(
            lambda a: build_kubeconfig(
                a[0], a[1], a[2], s.region, s.kubeconfig_role_arn, s.kubeconfig_profile
            )
        )
        self.kubeconfig = pulumi.Output.secret(kubeconfig)
        # The provider acts as the deployer (or liftoff:kubeconfigRoleArn): it is let in only
        # once the access policies are associated, so everything using it waits for them.
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=access.associations),
        )
        # Everything deployed into the cluster waits for access, nodes and add-ons, and is
        # destroyed before them (and before the network they run in).
        self.workload_dependencies: list[pulumi.Resource] = [
            *access.associations,
            *node_groups,
            *cluster_addons,
            *args.network_dependencies,
        ]

        self._cluster_autoscaler(name, args.cluster_name)
        self.kube_system_release(
            f"{name}-metrics-server",
            METRICS_SERVER_CHART,
            {"args": ["--kubelet-preferred-address-types=InternalIP"]},
        )
        if s.vpa_mode != "Off":
            self.kube_system_release(
                f"{name}-vpa",
                VPA_CHART,
                {
                    "recommender": {"enabled": True, **self.node_groups.placement},
                    "updater": {
                        "enabled": s.vpa_mode in ("Recreate", "Auto"),
                        **self.node_groups.placement,
                    },
                    "admissionController": {"enabled": True, **self.node_groups.placement},
                },
                pin=False,
            )

        self.register_outputs(
            {
                "clusterName": cluster.name,
                "endpoint": cluster.endpoint,
                "oidcProviderArn": oidc.arn,
                "kubeconfig": self.kubeconfig,
                "secretsKeyArn": secrets_key.arn,
                "deployerArn": access.deployer_arn,
            }
        )

    def service_account_role(
        self, name: str, namespace: str, service_account: str, policy: pulumi.Input[str]
    ) -> aws.iam.Role:
        """An IRSA role for one service account with one inline policy; child of this cluster."""
        account_role = iam.role(
            f"{name}-role",
            self._settings,
            f"{self._settings.prefix}-{service_account}",
            iam.irsa_trust_policy(
                self.oidc_provider_arn, self.oidc_issuer_url, namespace, service_account
            ),
            pulumi.ResourceOptions(parent=self),
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            role=account_role.id,
            policy=policy,
            opts=pulumi.ResourceOptions(parent=account_role),
        )
        return account_role

    def helm_options(
        self, parent: pulumi.Resource, extra: Sequence[pulumi.Resource] = ()
    ) -> pulumi.ResourceOptions:
        """Options for a Helm release in this cluster: its provider and destroy-ordering deps."""
        return pulumi.ResourceOptions(
            parent=parent,
            provider=self.provider,
            depends_on=[*self.workload_dependencies, *extra],
        )

    def kube_system_release(
        self,
        resource_name: str,
        chart: Chart,
        values: Mapping[str, Any],
        *,
        parent: pulumi.Resource | None = None,
        extra: Sequence[pulumi.Resource] = (),
        pin: bool = True,
    ) -> k8s.helm.v3.Release:
        """A pinned add-on chart released under its own name in kube-system; atomic, so a failed
        install or upgrade rolls back instead of half-applying. `pin` adds the top-level
        nodeSelector/tolerations that keep its pods on the system node group (when there is one);
        charts with per-component placement pass False and place each component themselves."""
        return k8s.helm.v3.Release(
            resource_name,
            name=chart.name,
            chart=chart.name,
            version=chart.version,
            repository_opts={"repo": chart.repository},
            namespace="kube-system",
            values={**values, **self.node_groups.placement} if pin else values,
            atomic=True,
            cleanup_on_fail=True,
            opts=self.helm_options(parent or self, extra),
        )

    def _cluster_autoscaler(self, name: str, cluster_name: str) -> None:
        s = self._settings
        policy = iam.policy_document(
            {
                "Effect": "Allow",
                "Action": [
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeLaunchConfigurations",
                    "autoscaling:DescribeScalingActivities",
                    "autoscaling:DescribeTags",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplateVersions",
                    "ec2:GetInstanceTypesFromInstanceRequirements",
                    "eks:DescribeNodegroup",
                ],
                "Resource": "*",
            },
            {
                # Only groups tagged as this cluster's may be resized.
                "Effect": "Allow",
                "Action": [
                    "autoscaling:SetDesiredCapacity",
                    "autoscaling:TerminateInstanceInAutoScalingGroup",
                ],
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"
                    }
                },
            },
        )
        autoscaler_role = self.service_account_role(
            f"{name}-cluster-autoscaler", "kube-system", "cluster-autoscaler", policy
        )
        self.kube_system_release(
            f"{name}-cluster-autoscaler",
            CLUSTER_AUTOSCALER_CHART,
            {
                "cloudProvider": "aws",
                "awsRegion": s.region,
                # The autoscaler's minor version must match the cluster's (its compatibility rule).
                "image": {"tag": f"v{s.kubernetes_version}.0"},
                "autoDiscovery": {"clusterName": cluster_name},
                "rbac": {
                    "serviceAccount": {
                        "name": "cluster-autoscaler",
                        "annotations": {"eks.amazonaws.com/role-arn": autoscaler_role.arn},
                    }
                },
                "extraArgs": {
                    "balance-similar-node-groups": "true",
                    "skip-nodes-with-system-pods": "false",
                    "expander": "least-waste",
                },
            },
        )
