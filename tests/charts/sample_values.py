"""Hand-written values that turn every optional part of the chart on, with realistic AWS ids."""

from __future__ import annotations

from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-2"
DIGEST = "sha256:" + "ab" * 32
TARGET_GROUP_ARN = (
    f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/liftoff-prod-gw/0123456789abcdef"
)
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/liftoff-prod-gateway"
_SECRET_PREFIX = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:liftoff/prod"
SECRET_ARNS = {
    "upstreamApiKeyArn": f"{_SECRET_PREFIX}/llm-api-key-AbCdEf",
    "redisAuthTokenArn": f"{_SECRET_PREFIX}/redis-auth-GhIjKl",
    "clientKeysArn": f"{_SECRET_PREFIX}/client-keys-MnOpQr",
}
REDIS_URL = "rediss://master.liftoff-prod.abc123.use2.cache.amazonaws.com:6379/0"


def everything_on() -> dict[str, Any]:
    return {
        "image": {
            "repository": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/liftoff-gateway",
            "tag": "2026.11.25-1",
            "digest": DIGEST,
        },
        "autoscaling": {"minReplicas": 3, "maxReplicas": 12, "targetCPUUtilizationPercentage": 60},
        "vpa": {"enabled": True, "updateMode": "Recreate", "controlledResources": ["memory"]},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        "serviceAccount": {"roleArn": ROLE_ARN},
        "targetGroupBinding": {
            "targetGroupArn": TARGET_GROUP_ARN,
            "albSecurityGroupId": "sg-0123456789abcdef0",
        },
        "networkPolicy": {"ingressCIDRs": ["10.42.0.0/16"], "redisCIDRs": ["10.42.0.0/16"]},
        "redis": {"url": REDIS_URL},
        "secrets": dict(SECRET_ARNS),
        "aws": {"region": REGION},
        "extraEnv": [{"name": "LIFTOFF__LIMITS__DEFAULT_RPM", "value": "1200"}],
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        # dashboards.enabled adds ConfigMaps beside the gateway's; test_monitoring.py covers them.
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gateway"}],
        "config": {
            "models": {
                "aliases": {"fast": "gpt-4o-mini-2024-07-18"},
                "max_tokens_policy": "reject",
            },
            "limits": {"default_rpm": 300, "default_tpm": 100000, "on_redis_failure": "local"},
            "budgets": {"global_monthly_usd": 500.0, "soft_fraction": 0.8},
            "cache": {"enabled": True, "ttl_s": 600},
        },
    }
