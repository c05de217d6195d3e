"""LoadBalancer: an ALB owned by the stack, its target group, listeners, optional WAF
(`infra.waf`), the certificate of `liftoff:domainName` (`infra.dns`), and the AWS Load Balancer
Controller that registers the gateway's pods through a TargetGroupBinding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam
from infra.cluster import Chart, Cluster
from infra.dns import DomainCertificate, DomainCertificateArgs
from infra.names import alb_logs_bucket_prefix, alb_name, target_group_name
from infra.primitives import tcp_rule
from infra.quotas import alb_listener_ports
from infra.settings import StackSettings
from infra.tags import tags
from infra.timings import ShutdownTimings
from infra.waf import attach_web_acl

APP_PORT = 8080
HEALTH_CHECK_PATH = "/readyz"
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
LB_CONTROLLER_CHART = Chart(
    "aws-load-balancer-controller", "https://aws.github.io/eks-charts", "1.13.4"
)
LB_CONTROLLER_SA = "aws-load-balancer-controller"
# Accounts ELB writes access logs from, per region (regions older than 2022 use these, not the
# logdelivery service principal).
ELB_LOG_ACCOUNTS = {
    "us-east-1": "127311923021",
    "us-east-2": "033677994240",
    "us-west-1": "027434742980",
    "us-west-2": "797873946194",
}
ALB_IP_ADDRESS_TYPE = "ipv4"


@dataclass
class LoadBalancerArgs:
    settings: StackSettings
    vpc_id: pulumi.Input[str]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    cluster: Cluster
    timings: ShutdownTimings


class LoadBalancer(pulumi.ComponentResource):
    url: pulumi.Output[str]
    dns_name: pulumi.Output[str]
    arn: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    web_acl_arn: pulumi.Output[str] | None
    arn_suffix: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    controller: k8s.helm.v3.Release

    def __init__(
        self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:LoadBalancer", name, None, opts)
        s, t = args.settings, args.timings
        child = pulumi.ResourceOptions(parent=self)

        sg = aws.ec2.SecurityGroup(
            f"{name}-alb-sg",
            vpc_id=args.vpc_id,
            description=f"{s.prefix}: public load balancer",
            tags=tags(s, f"{s.prefix}-alb"),
            opts=child,
        )
        self._client_ingress(name, s, sg)
        tcp_rule(
            name,
            s,
            "alb-to-pods",
            "egress",
            security_group_id=sg.id,
            port=APP_PORT,
            referenced_security_group_id=args.cluster.node_security_group_id,
            description="to gateway pods",
            opts=child,
        )
        tcp_rule(
            name,
            s,
            "pods-from-alb",
            "ingress",
            security_group_id=args.cluster.node_security_group_id,
            port=APP_PORT,
            referenced_security_group_id=sg.id,
            description="gateway pods from the ALB",
            opts=child,
        )

        access_logs = None
        lb_depends: list[pulumi.Resource] = []
        if s.alb_access_logs:
            bucket, policy = self._access_log_bucket(name, s)
            access_logs = {"bucket": bucket.bucket, "prefix": "alb", "enabled": True}
            lb_depends.append(policy)

        alb = aws.lb.LoadBalancer(
            f"{name}-alb",
            name=alb_name(s.prefix),
            load_balancer_type="application",
            internal=False,
            security_groups=[sg.id],
            subnets=list(args.public_subnet_ids),
            drop_invalid_header_fields=True,
            desync_mitigation_mode="defensive",
            enable_http2=True,
            ip_address_type=ALB_IP_ADDRESS_TYPE,
            idle_timeout=t.alb_idle_timeout_s,
            enable_deletion_protection=s.alb_deletion_protection,
            access_logs=access_logs,
            tags=tags(s, f"{s.prefix}-alb"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=lb_depends),
        )
        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            name=target_group_name(s.prefix),
            port=APP_PORT,
            protocol="HTTP",
            target_type="ip",
            vpc_id=args.vpc_id,
            deregistration_delay=t.deregistration_delay_s,
            # Long, uneven LLM requests: send new work to the least busy pod.
            load_balancing_algorithm_type="least_outstanding_requests",
            health_check={
                "enabled": True,
                "path": HEALTH_CHECK_PATH,
                "port": "traffic-port",
                "protocol": "HTTP",
                "matcher": "200",
                "interval": 10,
                "timeout": 5,
                "healthy_threshold": 2,
                "unhealthy_threshold": 3,
            },
            tags=tags(s, f"{s.prefix}-gateway"),
            opts=child,
        )
        forward = [{"type": "forward", "target_group_arn": target_group.arn}]
        domain = (
            DomainCertificate(f"{name}-domain", DomainCertificateArgs(settings=s), opts=child)
            if s.domain_name
            else None
        )
        certificate_arn = domain.certificate_arn if domain else s.certificate_arn
        if certificate_arn:
            aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=alb.arn,
                port=443,
                protocol="HTTPS",
                ssl_policy=TLS_POLICY,
                certificate_arn=certificate_arn,
                default_actions=forward,
                tags=tags(s, f"{s.prefix}-https"),
                opts=child,
            )
            http_actions: list = [
                {
                    "type": "redirect",
                    "redirect": {"port": "443", "protocol": "HTTPS", "status_code": "HTTP_301"},
                }
            ]
        else:
            http_actions = forward
        aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=alb.arn,
            port=80,
            protocol="HTTP",
            default_actions=http_actions,
            tags=tags(s, f"{s.prefix}-http"),
            opts=child,
        )
        web_acl = attach_web_acl(name, s, alb, child) if s.waf_enabled else None

        self.controller = self._controller(name, s, args.cluster, args.vpc_id, target_group)
        self.dns_name = alb.dns_name
        if domain:
            domain.point_to(alb, ALB_IP_ADDRESS_TYPE)
            self.url = pulumi.Output.from_input(domain.url)
        else:
            scheme = "https" if certificate_arn else "http"
            self.url = alb.dns_name.apply(lambda dns: f"{scheme}://{dns}")
        self.arn = alb.arn
        self.target_group_arn = target_group.arn
        self.web_acl_arn = web_acl.arn if web_acl else None
        self.arn_suffix = alb.arn_suffix
        self.target_group_arn_suffix = target_group.arn_suffix
        self.register_outputs(
            {
                "url": self.url,
                "albArn": alb.arn,
                "targetGroupArn": target_group.arn,
                "webAclArn": self.web_acl_arn,
            }
        )

    def _access_log_bucket(
        self, name: str, s: StackSettings
    ) -> tuple[aws.s3.Bucket, aws.s3.BucketPolicy]:
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(
            f"{name}-alb-logs",
            bucket_prefix=alb_logs_bucket_prefix(s.prefix),
            # Deletion protection keeps the logs on destroy; without it destroy is one pass.
            force_destroy=not s.alb_deletion_protection,
            tags=tags(s, f"{s.prefix}-alb-logs"),
            opts=child,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-alb-logs-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-alb-logs-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        # ALB access logs support SSE-S3 only (not SSE-KMS).
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-alb-logs-encryption",
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-alb-logs-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-alb-logs-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-access-logs",
                    "status": "Enabled",
                    "filter": {"prefix": "alb/"},
                    "expiration": {"days": 90},
                    "noncurrent_version_expiration": {"noncurrent_days": 7},
                }
            ],
            opts=child,
        )
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        policy_doc = pulumi.Output.all(bucket.arn, account.account_id).apply(
            lambda a: iam.policy_document(
                {
                    "Sid": "ElbWritesAccessLogs",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ELB_LOG_ACCOUNTS[s.region]}:root"},
                    "Action": "s3:PutObject",
                    "Resource": f"{a[0]}/alb/AWSLogs/{a[1]}/*",
                },
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [a[0], f"{a[0]}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            )
        )
        policy = aws.s3.BucketPolicy(
            f"{name}-alb-logs-policy", bucket=bucket.id, policy=policy_doc, opts=child
        )
        return bucket, policy

    def _client_ingress(self, name: str, s: StackSettings, sg: aws.ec2.SecurityGroup) -> None:
        """Each listener port open to `liftoff:albIngressCidrs`: one rule per port, to the CIDR or,
        with several, to a prefix list holding them all (one place to edit; it counts as
        `max_entries` rules, so its size is the CIDR count: `infra.quotas`)."""
        child = pulumi.ResourceOptions(parent=self)
        cidrs = s.alb_ingress_cidrs
        # Rule names of a single CIDR stay as they were before prefix lists.
        source: dict[str, pulumi.Input[str]] = {"cidr_ipv4": cidrs[0]}
        suffix = "0"
        if len(cidrs) > 1:
            clients = aws.ec2.ManagedPrefixList(
                f"{name}-alb-clients",
                name=f"{s.prefix}-alb-clients",
                address_family="IPv4",
                max_entries=len(cidrs),
                entries=[{"cidr": cidr, "description": "load balancer clients"} for cidr in cidrs],
                tags=tags(s, f"{s.prefix}-alb-clients"),
                opts=child,
            )
            source, suffix = {"prefix_list_id": clients.id}, "clients"
        for port in alb_listener_ports(s.model_dump()):
            tcp_rule(
                name,
                s,
                f"alb-in-{port}-{suffix}",
                "ingress",
                security_group_id=sg.id,
                port=port,
                description=f"clients on {port}",
                opts=child,
                **source,
            )

    def _controller(
        self,
        name: str,
        s: StackSettings,
        cluster: Cluster,
        vpc_id: pulumi.Input[str],
        target_group: aws.lb.TargetGroup,
    ) -> k8s.helm.v3.Release:
        policy = target_group.arn.apply(lb_controller_policy)
        role = cluster.service_account_role(
            f"{name}-lb-controller", "kube-system", LB_CONTROLLER_SA, policy
        )
        return cluster.kube_system_release(
            f"{name}-lb-controller",
            LB_CONTROLLER_CHART,
            {
                "clusterName": cluster.name,
                "region": s.region,
                "vpcId": vpc_id,
                "replicaCount": 2,
                "enableServiceMutatorWebhook": False,
                "serviceAccount": {
                    "create": True,
                    "name": LB_CONTROLLER_SA,
                    "annotations": {"eks.amazonaws.com/role-arn": role.arn},
                },
            },
            parent=self,
            extra=[target_group],
        )


def lb_controller_policy(target_group_arn: str) -> str:
    """Least privilege for TargetGroupBinding: the controller registers pods in our one group.

    The stack owns the ALB, so the controller needs no rights to create load balancers.
    """
    return iam.policy_document(
        {
            "Effect": "Allow",
            "Action": [
                "elasticloadbalancing:DescribeLoadBalancers",
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetHealth",
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeTags",
                "elasticloadbalancing:DescribeTargetGroupAttributes",
                "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeInstances",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "ec2:DescribeVpcs",
                "ec2:DescribeAvailabilityZones",
            ],
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Action": [
                "elasticloadbalancing:RegisterTargets",
                "elasticloadbalancing:DeregisterTargets",
            ],
            "Resource": target_group_arn,
        },
    )
