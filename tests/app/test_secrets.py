"""Secrets from AWS Secrets Manager (moto) by ARN, refreshed when the provider answers 401, and
never visible in a response body, a header or a log line."""

from __future__ import annotations

import logging

import boto3
import orjson
import pytest
from moto import mock_aws

from app.secrets import SecretError, SecretStore, region_of
from tests.app.gateway_harness import ALICE, PROVIDER_KEY, make_config, running

REGION = "us-west-2"


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


def test_region_comes_from_the_arn():
    arn = "arn:aws:secretsmanager:us-east-2:123456789012:secret:liftoff/upstream-AbCdEf"
    assert region_of(arn, "us-west-1") == "us-east-2"
    assert region_of("not-an-arn", "us-west-1") == "us-west-1"


def test_value_and_arn_together_is_an_error():
    with pytest.raises(SecretError, match="only one of LIFTOFF_UPSTREAM_API_KEY and"):
        SecretStore(
            {"LIFTOFF_UPSTREAM_API_KEY": "x", "LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN": "arn:y"}
        )
    with pytest.raises(SecretError, match="expected an ARN"):
        SecretStore({"LIFTOFF_CLIENT_KEYS_SECRET_ARN": "liftoff/keys"})


def test_repr_shows_sources_not_values():
    store = SecretStore({"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY})
    assert PROVIDER_KEY not in repr(store)
    assert "UPSTREAM_API_KEY=LIFTOFF_UPSTREAM_API_KEY" in repr(store)


async def test_missing_secret_names_variable_and_arn_not_value(aws):
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-AbCdEf"
    store = SecretStore({"LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN": arn})
    with pytest.raises(SecretError) as err:
        await store.resolve()
    assert "LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN" in str(err.value)
    assert "ResourceNotFoundException" in str(err.value)


async def test_secrets_from_manager_and_refresh_on_provider_401(aws, simulator, caplog):
    caplog.set_level(logging.INFO)  # the level the gateway runs at
    upstream = aws.create_secret(Name="liftoff/upstream", SecretString="sk-sim-revoked")["ARN"]
    keys = aws.create_secret(
        Name="liftoff/client-keys",
        SecretString=orjson.dumps([{"name": "alice", "key": ALICE}]).decode(),
    )["ARN"]
    env = {
        "LIFTOFF_UPSTREAM_API_KEY": None,
        "LIFTOFF_CLIENT_KEYS": None,
        "LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN": upstream,
        "LIFTOFF_CLIENT_KEYS_SECRET_ARN": keys,
    }
    simulator.app.reset()
    async with running(make_config(simulator.url), env) as gw:
        # The provider refuses the revoked key; refreshing finds the same value: a clean 502.
        refused = await gw.chat()
        # Rotation: the secret gets a new value; the next 401 triggers a refresh and a retry.
        aws.put_secret_value(SecretId=upstream, SecretString=PROVIDER_KEY)
        gw.gateway.secrets._fetched_at.clear()  # skip the refresh rate limit for the test
        rotated = await gw.chat()
        later = await gw.chat()
    assert refused.status_code == 502
    assert rotated.status_code == 200 and later.status_code == 200
    fingerprints = [r["api_key_sha256"] for r in simulator.app.recent_requests()]
    assert len(set(fingerprints)) == 2  # the old key, then the rotated one
    everything = "\n".join(
        [refused.text, rotated.text, str(refused.headers), str(rotated.headers)]
        + [r.getMessage() + str(r.__dict__) for r in caplog.records]
    )
    assert PROVIDER_KEY not in everything
    assert ALICE not in everything
    assert any("secret refreshed" in r.getMessage() for r in caplog.records)


async def test_refresh_is_rate_limited(aws):
    arn = aws.create_secret(Name="liftoff/k", SecretString="one")["ARN"]
    store = SecretStore({"LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN": arn})
    await store.resolve()
    aws.put_secret_value(SecretId=arn, SecretString="two")
    assert await store.refresh("UPSTREAM_API_KEY") is True
    aws.put_secret_value(SecretId=arn, SecretString="three")
    assert await store.refresh("UPSTREAM_API_KEY") is False  # within the minimum interval
    assert store.get("UPSTREAM_API_KEY") == "two"
    assert await SecretStore({"LIFTOFF_UPSTREAM_API_KEY": "v"}).refresh("UPSTREAM_API_KEY") is False


def test_provider_keys_are_found_by_name_in_the_environment():
    from app.secrets import provider_key_name

    assert provider_key_name("azure-east") == "PROVIDER_AZURE_EAST_API_KEY"
    store = SecretStore(
        {
            "LIFTOFF_PROVIDER_AZURE_EAST_API_KEY": "k-east",
            "LIFTOFF_PROVIDER_OPENAI_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:x",
            "LIFTOFF_PROVIDER_EMPTY_API_KEY": "",
        }
    )
    assert store.get("PROVIDER_AZURE_EAST_API_KEY") == "k-east"
    assert store.source("PROVIDER_OPENAI_API_KEY") == "LIFTOFF_PROVIDER_OPENAI_API_KEY_SECRET_ARN"
    assert store.source("PROVIDER_EMPTY_API_KEY") == "unset"
    assert store.get("PROVIDER_OTHER_API_KEY") is None
    assert "k-east" not in repr(store)
    with pytest.raises(SecretError, match="only one of LIFTOFF_PROVIDER_A_API_KEY and"):
        SecretStore(
            {"LIFTOFF_PROVIDER_A_API_KEY": "x", "LIFTOFF_PROVIDER_A_API_KEY_SECRET_ARN": "arn:y"}
        )


async def test_provider_key_from_secrets_manager_is_resolved_at_startup(aws):
    arn = aws.create_secret(Name="liftoff/azure-east", SecretString="azure-east-key")["ARN"]
    store = SecretStore({"LIFTOFF_PROVIDER_AZURE_EAST_API_KEY_SECRET_ARN": arn})
    await store.resolve()
    assert store.get("PROVIDER_AZURE_EAST_API_KEY") == "azure-east-key"
