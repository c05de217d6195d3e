"""LoadBalancer: an ALB owned by the stack, its target group, listeners, optional WAF, and the AWS
Load Balancer Controller that registers the gateway's pods through a TargetGroupBinding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam
from infra.cluster import Chart, Cluster
from infra.primitives import tcp_rule
from infra.settings import StackSettings
from infra.tags import tags
from infra.timings import ShutdownTimings

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
WAF_MANAGED_RULES = (
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesAmazonIpReputationList",
)


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
    target_group_arn: pulumi.Output[str]
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
        listener_ports = (80, 443) if s.certificate_arn else (80,)
        for port in listener_ports:
            for i, cidr in enumerate(s.alb_ingress_cidrs):
                tcp_rule(
                    name,
                    s,
                    f"alb-in-{port}-{i}",
                    "ingress",
                    security_group_id=sg.id,
                    port=port,
                    cidr_ipv4=cidr,
                    description=f"clients on {port}",
                    opts=child,
                )
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
            name=f"{s.prefix}-alb"[:32],
            load_balancer_type="application",
            internal=False,
            security_groups=[sg.id],
            subnets=list(args.public_subnet_ids),
            drop_invalid_header_fields=True,
            desync_mitigation_mode="defensive",
            enable_http2=True,
            idle_timeout=t.alb_idle_timeout_s,
            enable_deletion_protection=s.alb_deletion_protection,
            access_logs=access_logs,
            tags=tags(s, f"{s.prefix}-alb"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=lb_depends),
        )
        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            name=f"{s.prefix}-gateway"[:32],
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
        if s.certificate_arn:
            aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=alb.arn,
                port=443,
                protocol="HTTPS",
                ssl_policy=TLS_POLICY,
                certificate_arn=s.certificate_arn,
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
        if s.waf_enabled:
            self._waf(name, s, alb)

        self.controller = self._controller(name, s, args.cluster, args.vpc_id, target_group)
        scheme = "https" if s.certificate_arn else "http"
        self.dns_name = alb.dns_name
        self.url = alb.dns_name.apply(lambda dns: f"{scheme}://{dns}")
        self.target_group_arn = target_group.arn
        self.arn_suffix = alb.arn_suffix
        self.target_group_arn_suffix = target_group.arn_suffix
        self.register_outputs({"url": self.url, "targetGroupArn": target_group.arn})

    def _access_log_bucket(
        self, name: str, s: StackSettings
    ) -> tuple[aws.s3.Bucket, aws.s3.BucketPolicy]:
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(
            f"{name}-alb-logs",
            bucket_prefix=f"{s.prefix}-alb-logs-",
            force_destroy=not s.is_prod,
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

    def _waf(self, name: str, s: StackSettings, alb: aws.lb.LoadBalancer) -> None:
        child = pulumi.ResourceOptions(parent=self)

        def visibility(metric: str) -> dict:
            return {
                "cloudwatch_metrics_enabled": True,
                "metric_name": metric,
                "sampled_requests_enabled": True,
            }

        rules = [
            {
                "name": rule,
                "priority": i,
                "override_action": {"none": {}},
                "statement": {"managed_rule_group_statement": {"name": rule, "vendor_name": "AWS"}},
                "visibility_config": visibility(rule),
            }
            for i, rule in enumerate(WAF_MANAGED_RULES)
        ]
        acl = aws.wafv2.WebAcl(
            f"{name}-waf",
            name=f"{s.prefix}-alb",
            scope="REGIONAL",
            default_action={"allow": {}},
            rules=rules,
            visibility_config=visibility(f"{s.prefix}-alb"),
            tags=tags(s, f"{s.prefix}-waf"),
            opts=child,
        )
        aws.wafv2.WebAclAssociation(
            f"{name}-waf-association", resource_arn=alb.arn, web_acl_arn=acl.arn, opts=child
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
