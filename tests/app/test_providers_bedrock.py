"""Amazon Bedrock's OpenAI-compatible endpoint: paths under /openai, SigV4 signatures the
recording provider verifies itself (botocore's algorithm, the credentials of the environment),
the service name of each endpoint, Bedrock API keys, and Bedrock's errors made OpenAI-shaped."""

from __future__ import annotations

import re

import pytest
import yaml
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from app.config import ConfigError, load_config
from app.errors import UpstreamError, to_api_error
from app.providers import AwsCredential, BedrockProvider
from app.upstream import CallStats
from tests.app.providers_harness import (
    RecordingProvider,
    Seen,
    client_for,
    json_answer,
    providers_config,
)

GPT_OSS = "openai.gpt-oss-120b-1:0"
CATALOG = {
    GPT_OSS: {
        "context_window": 128000,
        "max_output_tokens": 16384,
        "default_max_tokens": 1024,
        "input_usd_per_1m": 0.15,
        "output_usd_per_1m": 0.60,
    }
}
CHAT = {"model": GPT_OSS, "messages": [{"role": "user", "content": "Say hello"}]}
ACCESS, SECRET, TOKEN = "AKIDLIFTOFFTEST", "liftoff-test-secret", "liftoff-session-token"
SIGNATURE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>\w+)"
)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Credentials from the environment only (no profile or instance metadata lookups)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def verify_sigv4(seen: Seen, url: str, body: bytes | None = None) -> dict[str, str]:
    """Recompute the request's SigV4 signature as AWS would; returns the signature's fields,
    or raises AssertionError when it does not match."""
    match = SIGNATURE.fullmatch(seen.headers["authorization"])
    assert match, seen.headers["authorization"]
    fields = match.groupdict()
    signed = fields["signed"].split(";")
    request = AWSRequest(
        seen.method,
        url,
        headers={name: seen.headers[name] for name in signed},
        data=seen.body if body is None else body,
    )
    request.context["timestamp"] = seen.headers["x-amz-date"]
    signer = SigV4Auth(
        ReadOnlyCredentials(ACCESS, SECRET, TOKEN), fields["service"], fields["region"]
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert fields["sig"] == expected, "signature does not match the request"
    return fields


async def test_sigv4_signed_chat_to_the_openai_path(aws_env):
    async with RecordingProvider() as server:
        config = providers_config(
            [
                {
                    "name": "bedrock",
                    "kind": "bedrock",
                    "url": server.url,
                    "region": "us-west-2",
                    "auth": "sigv4",
                }
            ],
            CATALOG,
        )
        async with client_for(config) as client:
            reply = await client.post_json("/v1/chat/completions", CHAT, GPT_OSS, CallStats())
            models = await client.open_raw("GET", "/v1/models", {"accept": "application/json"})
            models.close()
    chat, listing = server.seen
    assert reply.status == 200
    assert chat.path == "/openai/v1/chat/completions"
    assert chat.json()["model"] == GPT_OSS
    assert chat.headers["x-amz-security-token"] == TOKEN
    fields = verify_sigv4(chat, f"{server.url}/openai/v1/chat/completions")
    assert (fields["key"], fields["region"], fields["service"]) == (ACCESS, "us-west-2", "bedrock")
    assert "host" in fields["signed"].split(";")
    with pytest.raises(AssertionError, match="does not match"):
        verify_sigv4(chat, f"{server.url}/openai/v1/chat/completions", body=b"{}")  # tampered
    assert listing.path == "/openai/v1/models"
    verify_sigv4(listing, f"{server.url}/openai/v1/models")  # an empty body is signed too


async def test_endpoints_name_their_region_and_signing_service(aws_env):
    credential = AwsCredential()
    mantle = BedrockProvider(
        "m", "https://bedrock-mantle.us-east-2.api.aws", credential, "us-east-2"
    )
    runtime = BedrockProvider(
        "r", "https://bedrock-runtime.eu-west-1.amazonaws.com", credential, "eu-west-1"
    )
    url = mantle.url_for("/v1/responses", GPT_OSS)
    assert str(url) == "https://bedrock-mantle.us-east-2.api.aws/openai/v1/responses"
    headers = await mantle.auth_headers("POST", url, b"{}")
    assert "/us-east-2/bedrock-mantle/aws4_request" in headers["Authorization"]
    streamed = await runtime.auth_headers("POST", runtime.url_for("/v1/files", None), None)
    assert "/eu-west-1/bedrock/aws4_request" in streamed["Authorization"]
    assert streamed["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"  # a body sent as it streams
    config = providers_config(
        [
            {
                "name": "b",
                "kind": "bedrock",
                "url": "https://bedrock-runtime.ap-south-1.amazonaws.com",
            }
        ],
        CATALOG,
    )
    assert config.upstream.providers[0].aws_region == "ap-south-1"


async def test_bedrock_api_key_is_a_bearer_token():
    async with RecordingProvider() as server:
        config = providers_config(
            [{"name": "bedrock", "kind": "bedrock", "url": server.url, "region": "us-east-1"}],
            CATALOG,
        )
        env = {"LIFTOFF_PROVIDER_BEDROCK_API_KEY": "bedrock-api-key-abc"}
        async with client_for(config, env) as client:
            await client.post_json("/v1/chat/completions", CHAT, GPT_OSS, CallStats())
    (seen,) = server.seen
    assert seen.headers["authorization"] == "Bearer bedrock-api-key-abc"
    assert "x-amz-date" not in seen.headers


async def test_bedrock_errors_are_openai_shaped_and_throttling_is_retried(aws_env):
    throttled = json_answer(
        429, {"message": "Too many requests"}, {"x-amzn-errortype": "ThrottlingException:http://x/"}
    )
    invalid = json_answer(
        400,
        {"message": "Malformed input request: extraneous key [foo]"},
        {"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/"},
    )
    async with RecordingProvider() as server:
        server.answers = [throttled, invalid]
        config = providers_config(
            [
                {
                    "name": "bedrock",
                    "kind": "bedrock",
                    "url": server.url,
                    "region": "us-west-2",
                    "auth": "sigv4",
                }
            ],
            CATALOG,
        )
        async with client_for(config) as client:
            with pytest.raises(UpstreamError) as err:
                await client.post_json("/v1/chat/completions", CHAT, GPT_OSS, CallStats())
    api = to_api_error(err.value)
    assert (api.status, api.code, api.type) == (400, "ValidationException", "invalid_request_error")
    assert api.message == "Malformed input request: extraneous key [foo]"
    assert len(server.seen) == 2  # the 429 was retried, the 400 was final


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        (
            {"name": "b", "kind": "bedrock", "url": "https://bedrock.internal.example"},
            "upstream.providers.0: region: required for kind bedrock",
        ),
        (
            {"name": "o", "url": "https://api.openai.com", "auth": "sigv4"},
            "upstream.providers.0: auth: sigv4: only for kind bedrock (this provider is openai)",
        ),
        (
            {
                "name": "a",
                "kind": "azure",
                "url": "https://x.openai.azure.com",
                "api_version": "v1",
                "region": "us-east-1",
            },
            "upstream.providers.0: region: only for kind bedrock (this provider is azure)",
        ),
        (
            {"name": "b", "kind": "bedrock", "url": "https://x.example", "region": "mars"},
            "upstream.providers.0.region = 'mars': String should match pattern",
        ),
    ],
)
def test_bedrock_settings_are_checked(tmp_path, provider, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"upstream": {"providers": [provider]}}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    assert expected in str(err.value)
