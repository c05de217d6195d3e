"""Who may use the cluster: one EKS access entry per IAM principal, for the team's admins and
viewers (`liftoff:clusterAdmins`, `liftoff:clusterViewers`) and for whoever runs `pulumi up`.

The cluster is created with `authentication_mode = "API"` and without the one-time creator
bootstrap, so access is exactly what is declared here. The deployer (from
`aws.get_caller_identity`) is made an admin unless already listed: the program's Kubernetes
provider acts as the deployer. Each principal gets one entry whatever lists name it (an admin
listed as a viewer stays an admin), so EKS's 409 "access entry already in use" cannot happen.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws

from infra.settings import IAM_PRINCIPAL_ARN_RE, SettingsError, StackSettings
from infra.tags import tags

ADMIN_POLICY_ARN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
VIEW_POLICY_ARN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy"
ASSUMED_ROLE_RE = re.compile(
    r"^arn:aws:sts::(?P<account>[0-9]{12}):assumed-role/(?P<role>[\w+=,.@-]+)/[\w+=,.@-]+$"
)
IAM_PRINCIPAL_RE = re.compile(IAM_PRINCIPAL_ARN_RE)

Level = Literal["admin", "viewer"]


@dataclass(frozen=True)
class Grant:
    """One access entry: a principal and the access policy it is associated with."""

    principal_arn: str
    level: Level

    @property
    def policy_arn(self) -> str:
        return ADMIN_POLICY_ARN if self.level == "admin" else VIEW_POLICY_ARN

    @property
    def slug(self) -> str:
        """A stable resource-name part: the principal's name plus a hash of its full ARN, so
        a principal keeps its resources when the lists are reordered."""
        name = re.sub(r"[^a-z0-9-]", "-", self.principal_arn.rsplit("/", 1)[-1].lower())
        digest = hashlib.sha256(self.principal_arn.encode()).hexdigest()[:8]
        return f"{name[:40]}-{digest}"


def deployer_principal(caller_arn: str, role_arn: Callable[[str], str]) -> str:
    """The IAM principal behind the caller identity of `pulumi up`.

    An assumed-role session (`arn:aws:sts::<acct>:assumed-role/<role>/<session>`) maps back to its
    role; STS drops the role's path from the session ARN, so `role_arn(<role name>)` (iam:GetRole)
    supplies the role's real ARN, path included, which is what the access entry must name.
    """
    assumed = ASSUMED_ROLE_RE.match(caller_arn)
    if assumed:
        return role_arn(assumed.group("role"))
    if IAM_PRINCIPAL_RE.match(caller_arn):
        return caller_arn
    raise SettingsError(
        [
            f"deployer identity = {caller_arn}: an IAM role, an assumed-role session or an IAM "
            "user; EKS access entries cannot name other STS sessions (federated users): deploy "
            "with an IAM role"
        ],
        header="the identity running `pulumi up` cannot be given access to the cluster:",
    )


def grants(admins: Sequence[str], viewers: Sequence[str], deployer: str) -> list[Grant]:
    """One grant per principal: admins (the deployer among them) first, then viewers who are not
    admins; duplicates merged, order kept."""
    admin_arns = list(dict.fromkeys([*admins, deployer]))
    viewer_arns = [arn for arn in dict.fromkeys(viewers) if arn not in admin_arns]
    return [Grant(arn, "admin") for arn in admin_arns] + [
        Grant(arn, "viewer") for arn in viewer_arns
    ]


class ClusterAccess(pulumi.ComponentResource):
    """The access entries of one cluster and their access policy associations."""

    associations: list[aws.eks.AccessPolicyAssociation]
    deployer_arn: str

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        cluster: aws.eks.Cluster,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("liftoff:index:ClusterAccess", name, None, opts)
        s = settings
        invoke = pulumi.InvokeOptions(parent=self)
        caller = aws.get_caller_identity(opts=invoke)
        self.deployer_arn = deployer_principal(
            caller.arn, lambda role: aws.iam.get_role(name=role, opts=invoke).arn
        )
        self.associations = []
        for grant in grants(s.cluster_admins, s.cluster_viewers, self.deployer_arn):
            entry = aws.eks.AccessEntry(
                f"{name}-{grant.slug}",
                cluster_name=cluster.name,
                principal_arn=grant.principal_arn,
                type="STANDARD",
                tags=tags(s, f"{s.prefix}-access-{grant.level}"),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.associations.append(
                aws.eks.AccessPolicyAssociation(
                    f"{name}-{grant.slug}-{grant.level}",
                    cluster_name=cluster.name,
                    principal_arn=entry.principal_arn,
                    policy_arn=grant.policy_arn,
                    access_scope={"type": "cluster"},
                    opts=pulumi.ResourceOptions(parent=entry),
                )
            )
        self.register_outputs({"deployerArn": self.deployer_arn})
