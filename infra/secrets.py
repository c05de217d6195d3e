"""Secrets: a customer-managed KMS key, the gateway secrets (upstream key, Redis AUTH token,
client keys, one key per further provider: infra/provider_settings.py), and the app's IRSA role.

Secret values are sent with write-only inputs (`secret_string_wo`), so Pulumi state never holds
them; bump `liftoff:secretsVersion` to push a changed value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra import iam
from infra.cluster import Cluster
from infra.names import secret_name
from infra.primitives import kms_key
from infra.provider_settings import (
    bedrock_regions,
    bedrock_statement,
    first_takes_key,
    keyed_providers,
    secret_slug,
)
from infra.settings import StackSettings
from infra.tags import tags

APP_NAMESPACE = "liftoff"
APP_SERVICE_ACCOUNT = "liftoff-gateway"
# The gateway reads each secret at startup and on provider 401; nothing else.
SECRET_READ_ACTIONS = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]


@dataclass
class SecretsArgs:
    settings: StackSettings
    cluster: Cluster


class Secrets(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]
    redis_auth_token: pulumi.Output[str]
    upstream_api_key_arn: pulumi.Output[str]
    redis_auth_token_arn: pulumi.Output[str]
    client_keys_arn: pulumi.Output[str]
    secret_arns: pulumi.Output[dict[str, str]]
    # Provider name -> ARN of its key, for the providers after the first that take one.
    provider_secret_arns: pulumi.Output[dict[str, str]]
    app_role_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: SecretsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:Secrets", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)

        key = kms_key(
            f"{name}-key",
            s,
            description=f"{s.prefix}: Secrets Manager secrets and cache data at rest",
            tag_name=f"{s.prefix}-data",
            alias=True,
            opts=child,
        )
        self.key_arn = key.arn

        # ElastiCache AUTH tokens: 16-128 printable chars, no '@', '"' or '/'.
        redis_token = random.RandomPassword(
            f"{name}-redis-auth-token",
            length=64,
            special=True,
            override_special="!&#$^<>-",
            # A new version means a new token (rotation).
            keepers={"version": str(s.cache_auth_token_version)},
            opts=child,
        )
        self.redis_auth_token = pulumi.Output.secret(redis_token.result)

        client_keys: pulumi.Input[str]
        if s.client_keys is not None:
            client_keys = pulumi.Output.secret(s.client_keys.get_secret_value())
        else:
            # No keys configured: one generated key, so the gateway never runs open.
            generated = random.RandomPassword(
                f"{name}-default-client-key", length=48, special=False, opts=child
            )
            client_keys = pulumi.Output.secret(
                generated.result.apply(
                    lambda k: json.dumps([{"name": "default", "key": f"lk-{k}", "admin": True}])
                )
            )
        upstream_key = (
            pulumi.Output.secret(s.llm_api_key.get_secret_value()) if s.llm_api_key else None
        )

        wanted: list[tuple[str, pulumi.Input[str] | None, int, str]] = [
            ("upstream-api-key", upstream_key, s.secrets_version, "Upstream LLM API key"),
            (
                "redis-auth-token",
                self.redis_auth_token,
                s.cache_auth_token_version,
                "ElastiCache AUTH token",
            ),
            ("client-keys", client_keys, s.secrets_version, "Gateway client keys (JSON list)"),
        ]
        # A first provider on Bedrock signs with the pod's role: no upstream key to hold.
        if not first_takes_key(s.providers):
            wanted.pop(0)
        provider_keys = {p.name: secret_slug(p.name) for p in keyed_providers(s.providers)}
        for provider, slug in provider_keys.items():
            key_value = s.provider_api_keys.get(provider)
            wanted.append(
                (
                    slug,
                    pulumi.Output.secret(key_value.get_secret_value()) if key_value else None,
                    s.secrets_version,
                    f"API key of upstream provider {provider}",
                )
            )

        secrets = {}
        for slug, value, version, description in wanted:
            secret = aws.secretsmanager.Secret(
                f"{name}-{slug}",
                name=secret_name(s.prefix, slug),
                description=f"{s.prefix}: {description}",
                kms_key_id=key.arn,
                recovery_window_in_days=secret_recovery_window_days(s),
                tags=tags(s, f"{s.prefix}-{slug}"),
                opts=child,
            )
            if value is not None:
                aws.secretsmanager.SecretVersion(
                    f"{name}-{slug}-version",
                    secret_id=secret.id,
                    secret_string_wo=value,
                    secret_string_wo_version=version,
                    opts=pulumi.ResourceOptions(parent=secret),
                )
            secrets[slug] = secret

        upstream = secrets.get("upstream-api-key")
        # "": the chart then sets no LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN.
        self.upstream_api_key_arn = upstream.arn if upstream else pulumi.Output.from_input("")
        self.redis_auth_token_arn = secrets["redis-auth-token"].arn
        self.client_keys_arn = secrets["client-keys"].arn
        self.secret_arns = pulumi.Output.all(
            **({"upstreamApiKey": upstream.arn} if upstream else {}),
            redisAuthToken=self.redis_auth_token_arn,
            clientKeys=self.client_keys_arn,
        )
        self.provider_secret_arns = pulumi.Output.from_input(
            {provider: secrets[slug].arn for provider, slug in provider_keys.items()}
        )

        regions = bedrock_regions(s.providers)
        policy = pulumi.Output.all([sec.arn for sec in secrets.values()], key.arn).apply(
            lambda a: app_secrets_policy(a[0], a[1], s.region, regions)
        )
        role = args.cluster.service_account_role(
            f"{name}-app", APP_NAMESPACE, APP_SERVICE_ACCOUNT, policy
        )
        self.app_role_arn = role.arn
        self.register_outputs(
            {
                "secretArns": self.secret_arns,
                "providerSecretArns": self.provider_secret_arns,
                "appRoleArn": role.arn,
                "keyArn": key.arn,
            }
        )


def secret_recovery_window_days(settings: StackSettings) -> int:
    """Prod keeps a deleted secret recoverable for 30 days (AWS's maximum). Elsewhere it is
    deleted at once (0 = without recovery): a deleted secret holds its name for its whole
    window, so a dev or staging stack destroyed and brought up again the same week could not
    recreate it. Nothing is lost: the values live in the stack's config or are regenerated."""
    return settings.recovery_window_days if settings.is_prod else 0


def app_secrets_policy(
    secret_arns: list[str], key_arn: str, region: str, bedrock_regions: Sequence[str] = ()
) -> str:
    """Read exactly these secrets, decrypt with exactly this key and only via Secrets Manager;
    invoke the foundation models of the Bedrock providers' regions, if any."""
    bedrock = [bedrock_statement(bedrock_regions)] if bedrock_regions else []
    return iam.policy_document(
        {"Effect": "Allow", "Action": SECRET_READ_ACTIONS, "Resource": sorted(secret_arns)},
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key_arn,
            "Condition": {
                "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
            },
        },
        *bedrock,
    )
