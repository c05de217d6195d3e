"""Rules on the load balancer and its listeners: headers, deletion protection, access logs,
TLS and HTTPS."""

from __future__ import annotations

from collections.abc import Iterator

from infra.rules.base import (
    ResourceRecord,
    RuleContext,
    StackFinding,
    StackView,
    as_list,
    as_map,
    is_true,
    label,
    resource_rule,
    stack_rule,
)
from infra.rules.resource_types import LISTENERS, LOAD_BALANCERS

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
    if _is_application_lb(resource) and not is_true(resource.inputs.get("dropInvalidHeaderFields")):
        yield f"{label(resource)} forwards requests with invalid header fields."


@resource_rule(
    "CKV_AWS_150",
    "In prod the load balancer has deletion protection",
    "error",
    LOAD_BALANCERS,
    "set liftoff:albDeletionProtection=true (enableDeletionProtection).",
    production_only=True,
)
def alb_deletion_protection(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not is_true(resource.inputs.get("enableDeletionProtection")):
        yield f"{label(resource)} can be deleted by a mistaken `pulumi destroy` or console click."


@resource_rule(
    "CKV_AWS_91",
    "In prod the load balancer writes access logs",
    "error",
    LOAD_BALANCERS,
    "set liftoff:albAccessLogs=true (accessLogs {bucket, enabled: true}).",
    production_only=True,
)
def alb_access_logs(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    logs = as_map(resource.inputs.get("accessLogs"))
    if not logs.get("bucket") or (
        logs.get("enabled") is not None and not is_true(logs.get("enabled"))
    ):
        yield f"{label(resource)} keeps no access logs."


def _redirects_to_https(listener: ResourceRecord) -> bool:
    for action in as_list(listener.inputs.get("defaultActions")):
        action = as_map(action)
        redirect = as_map(action.get("redirect"))
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
        yield f"{label(resource)} is HTTPS without a certificate."
    policy = resource.inputs.get("sslPolicy")
    if not policy or policy in LEGACY_TLS_POLICIES:
        yield f"{label(resource)} allows TLS older than 1.2 (sslPolicy {policy or 'default'})."


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
                f"{label(listener)} serves plain HTTP although an HTTPS listener exists.",
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
            yield listener, f"{label(listener)} serves prod traffic over plain HTTP only."
