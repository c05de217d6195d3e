"""The load balancer: state, attributes, listeners, WAF association, target group, targets."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from infra.loadbalancer import APP_PORT, HEALTH_CHECK_PATH, TLS_POLICY
from infra.readiness import config_set
from infra.secrets import APP_NAMESPACE
from infra.verify.checks import (
    Check,
    MissingOutput,
    Target,
    api_failure,
    compare,
    missing_output,
    pages,
    shown,
)

HTTPS_REDIRECT = "redirect to HTTPS:443 (HTTP_301)"


def load_balancer_checks(target: Target) -> list[Check]:
    try:
        arn = target.output("albArn")
        target_group_arn = target.output("targetGroupArn")
    except MissingOutput as missing:
        return [missing_output(target, "load balancer", str(missing))]
    elb = target.client("elbv2")
    resource = f"load balancer {arn.split('/')[-2]}"
    try:
        alb = elb.describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"][0]
        attributes = {
            a["Key"]: a["Value"]
            for a in elb.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]
        }
        listeners = {
            listener["Port"]: listener
            for listener in pages(elb, "describe_listeners", "Listeners", LoadBalancerArn=arn)
        }
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "active", exc)]
    s = target.settings
    protected = attributes.get("deletion_protection.enabled") == "true"
    logged = attributes.get("access_logs.s3.enabled") == "true"
    checks = [
        compare(
            resource,
            "state",
            "active",
            alb.get("State", {}).get("Code"),
            f"{alb.get('State', {}).get('Reason', 'see the EC2 console')}; {target.pulumi_up}",
        ),
        compare(
            resource,
            "deletion protection",
            s.alb_deletion_protection,
            protected,
            lambda: target.apply_or_keep("alb_deletion_protection", protected),
        ),
        compare(
            resource,
            "access logs",
            s.alb_access_logs,
            logged,
            lambda: target.apply_or_keep("alb_access_logs", logged),
        ),
        *_listener_checks(target, resource, listeners, target_group_arn),
        _web_acl_check(target, resource, arn),
        *target_group_checks(target, target_group_arn),
    ]
    return checks


def describe_action(action: dict[str, Any], target_group_arn: str) -> str:
    """A listener default action in words: the expected one compares as a string."""
    if action.get("Type") == "redirect":
        redirect = action.get("RedirectConfig", {})
        return (
            f"redirect to {redirect.get('Protocol')}:{redirect.get('Port')} "
            f"({redirect.get('StatusCode')})"
        )
    if action.get("Type") == "forward":
        arn = action.get("TargetGroupArn")
        if not arn:
            arns = [
                t["TargetGroupArn"] for t in action.get("ForwardConfig", {}).get("TargetGroups", [])
            ]
            arn = arns[0] if len(arns) == 1 else shown(arns)
        return (
            "forward to the gateway target group"
            if arn == target_group_arn
            else f"forward to {arn}"
        )
    return str(action.get("Type"))


def _listener_checks(
    target: Target, resource: str, listeners: dict[int, Any], target_group_arn: str
) -> list[Check]:
    s = target.settings
    https = bool(s.certificate_arn or s.domain_name)
    forward = describe_action(
        {"Type": "forward", "TargetGroupArn": target_group_arn}, target_group_arn
    )

    def action_of(port: int) -> str:
        listener = listeners.get(port)
        if listener is None:
            return "no listener"
        return ", ".join(describe_action(a, target_group_arn) for a in listener["DefaultActions"])

    checks = []
    if https:
        secure = listeners.get(443)
        checks.append(
            compare(
                resource,
                "HTTPS :443 TLS policy",
                TLS_POLICY,
                secure.get("SslPolicy") if secure else "no HTTPS listener",
                target.pulumi_up,
            )
        )
        checks.append(
            compare(resource, "HTTPS :443 action", forward, action_of(443), target.pulumi_up)
        )
    checks.append(
        compare(
            resource,
            "HTTP :80 action",
            HTTPS_REDIRECT if https else forward,
            action_of(80),
            target.pulumi_up,
        )
    )
    return checks


def _web_acl_check(target: Target, resource: str, alb_arn: str) -> Check:
    s = target.settings
    expected = target.outputs.get("webAclArn") if s.waf_enabled else None
    if s.waf_enabled and not expected:
        return missing_output(target, resource, "webAclArn")
    try:
        answer = target.client("wafv2").get_web_acl_for_resource(ResourceArn=alb_arn)
    except ClientError as exc:
        return api_failure(target, resource, "WAF web ACL", shown(expected), exc)
    actual = answer.get("WebACL", {}).get("ARN")
    fix = (
        f"{target.pulumi_up} (liftoff:wafEnabled is {shown(s.waf_enabled)}); to keep the live "
        f"association instead: {config_set(target.stack, 'waf_enabled', shown(bool(actual)))}"
    )
    return compare(resource, "WAF web ACL", expected, actual, fix)


def target_group_checks(target: Target, arn: str) -> list[Check]:
    elb = target.client("elbv2")
    resource = f"target group {arn.split('/')[-2]}"
    try:
        group = elb.describe_target_groups(TargetGroupArns=[arn])["TargetGroups"][0]
        health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "the gateway's pods", exc)]
    states = [h.get("TargetHealth", {}).get("State") for h in health]
    healthy = states.count("healthy")
    others = sorted({s for s in states if s != "healthy"})
    wanted = target.settings.app_min_replicas
    shape = f"{group.get('Protocol')}:{group.get('Port')} {group.get('TargetType')} targets"
    actual_health = f"{healthy} healthy" + (f" (others: {shown(others)})" if others else "")
    return [
        compare(
            resource,
            "protocol, port, target type",
            f"HTTP:{APP_PORT} ip targets",
            shape,
            target.pulumi_up,
        ),
        compare(
            resource,
            "health check path",
            HEALTH_CHECK_PATH,
            group.get("HealthCheckPath"),
            target.pulumi_up,
        ),
        Check(
            resource,
            "healthy targets",
            f">= {wanted} (liftoff:appMinReplicas)",
            actual_health,
            "ok" if healthy >= wanted else "drift",
            ""
            if healthy >= wanted
            else f"kubectl -n {APP_NAMESPACE} get pods,targetgroupbindings; a pod is a healthy "
            f"target once {HEALTH_CHECK_PATH} answers 200 (kubectl -n {APP_NAMESPACE} describe "
            "pods shows why not)",
        ),
    ]
