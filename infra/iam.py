"""IAM policy documents and roles, spelled in one place for every component."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.settings import StackSettings
from infra.tags import tags

POLICY_VERSION = "2012-10-17"


def policy_document(*statements: Mapping[str, Any]) -> str:
    """An identity, resource or trust policy as the JSON string AWS takes."""
    return json.dumps({"Version": POLICY_VERSION, "Statement": list(statements)})


def assume_role_policy(service: str) -> str:
    """Trust policy letting one AWS service (`eks.amazonaws.com`, ...) assume the role."""
    return policy_document(
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    )


def irsa_trust_policy(
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer_url: pulumi.Input[str],
    namespace: str,
    service_account: str,
) -> pulumi.Output[str]:
    """Trust policy letting exactly one Kubernetes service account assume the role (IRSA)."""

    def render(args: list[str]) -> str:
        arn, url = args
        issuer = url.removeprefix("https://")
        subject = f"system:serviceaccount:{namespace}:{service_account}"
        return policy_document(
            {
                "Effect": "Allow",
                "Principal": {"Federated": arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer}:sub": subject,
                        f"{issuer}:aud": "sts.amazonaws.com",
                    }
                },
            }
        )

    return pulumi.Output.all(oidc_provider_arn, oidc_issuer_url).apply(render)


def role(
    resource_name: str,
    settings: StackSettings,
    role_name: str,
    trust_policy: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> aws.iam.Role:
    """A role named and tagged `role_name` (settings keep every role name within the 64
    characters IAM allows: infra/names.py)."""
    return aws.iam.Role(
        resource_name,
        name=role_name,
        assume_role_policy=trust_policy,
        tags=tags(settings, role_name),
        opts=opts,
    )
