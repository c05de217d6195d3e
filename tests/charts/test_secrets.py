"""No secret value ever reaches a rendered object: only Secrets Manager ARNs do."""

from __future__ import annotations

import pytest

from tests.charts import sample_values
from tests.charts.chart import merge, render, template

# Values a careless integration might try to pass; none may appear in any manifest.
SENTINELS = {
    "upstream key": "sk-SENTINEL-upstream-7f3a9c",
    "redis token": "SENTINEL-redis-auth-4b1d",
    "client key": "lk-SENTINEL-client-91e2",
}


def test_credentials_reach_the_pod_only_as_secrets_manager_arns() -> None:
    manifests = render(sample_values.everything_on())
    credential_env = {
        name: value
        for name, value in manifests.env.items()
        if any(word in name for word in ("API_KEY", "AUTH_TOKEN", "CLIENT_KEYS", "PASSWORD"))
    }
    assert set(credential_env) == {
        "LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN",
        "LIFTOFF_REDIS_AUTH_TOKEN_SECRET_ARN",
        "LIFTOFF_CLIENT_KEYS_SECRET_ARN",
    }
    assert all(value.startswith("arn:aws:secretsmanager:") for value in credential_env.values())
    assert not manifests.of_kind("Secret"), "the chart never materialises secrets in the cluster"


@pytest.mark.parametrize(
    "config",
    [
        {"upstream": {"api_key": SENTINELS["upstream key"]}},
        {"redis": {"password": SENTINELS["redis token"]}},
        {"redis": {"auth_token": SENTINELS["redis token"]}},
        {"client_keys": [{"name": "a", "key": SENTINELS["client key"]}]},
        {"upstream": {"providers": [{"url": "https://x", "apiKey": SENTINELS["upstream key"]}]}},
    ],
    ids=["api_key", "password", "auth_token", "client_keys", "in-a-list"],
)
def test_config_with_a_credential_key_is_refused(config: dict) -> None:
    result = template(merge(sample_values.everything_on(), {"config": config}))
    assert result.returncode != 0
    assert "config must not hold secrets (found key" in result.stderr
    assert "Secrets Manager ARNs" in result.stderr
    for sentinel in SENTINELS.values():
        assert sentinel not in result.stdout + result.stderr


def test_redis_url_with_a_password_is_refused_without_echoing_it() -> None:
    url = f"rediss://default:{SENTINELS['redis token']}@master.example.cache.amazonaws.com:6379/0"
    result = template({"redis": {"url": url}})
    assert result.returncode != 0
    assert "redis.url must not contain credentials (value withheld)" in result.stderr
    assert SENTINELS["redis token"] not in result.stdout + result.stderr
