"""``kind: bedrock``: Amazon Bedrock's OpenAI-compatible endpoints, so traffic stays in the stack's
AWS region under its IAM role.

``url`` is the regional endpoint: ``https://bedrock-runtime.<region>.amazonaws.com`` (SigV4
service ``bedrock``) or ``https://bedrock-mantle.<region>.api.aws`` (service ``bedrock-mantle``);
OpenAI paths go under ``/openai`` (``/openai/v1/chat/completions``). Catalog model names are
Bedrock model ids (``openai.gpt-oss-120b-1:0``).

Auth: ``sigv4`` signs each request with the AWS credentials of botocore's default chain (EKS Pod
Identity or IRSA, the environment, ...), fetched in a worker thread and kept 5 minutes (botocore
refreshes temporary credentials well before they expire); a streamed passthrough body is signed
as ``UNSIGNED-PAYLOAD``. ``api_key`` sends a Bedrock API key as ``Authorization: Bearer``.

Bedrock's errors (``{"message": ...}`` with ``x-amzn-errortype``) become OpenAI-shaped ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import yarl

from app.config import ProviderConfig
from app.errors import UpstreamError, UpstreamUnreachable
from app.providers.base import Credential, Provider, Refusal, json_object

AWS_CREDENTIALS_TTL_S = 300  # botocore's mandatory refresh is 10 minutes before expiry


class AwsCredential(Credential):
    """AWS credentials from botocore's default chain, resolved off the event loop."""

    def __init__(self) -> None:
        import botocore.session

        self._session = botocore.session.get_session()
        self._frozen: Any = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self) -> str | None:
        return None  # requests are signed, not keyed

    async def frozen(self) -> Any:
        """The current ``ReadOnlyCredentials`` (access key, secret key, token)."""
        if self._frozen is not None and time.monotonic() - self._fetched_at < AWS_CREDENTIALS_TTL_S:
            return self._frozen
        async with self._lock:
            if self._frozen is None or time.monotonic() - self._fetched_at >= AWS_CREDENTIALS_TTL_S:
                await self._fetch()
        return self._frozen

    async def refresh(self) -> bool:
        before = self._frozen
        async with self._lock:
            await self._fetch()
        return self._frozen != before

    async def _fetch(self) -> None:
        def resolve() -> Any:
            credentials = self._session.get_credentials()
            return None if credentials is None else credentials.get_frozen_credentials()

        frozen = await asyncio.to_thread(resolve)
        if frozen is None:
            raise UpstreamUnreachable("no AWS credentials for Bedrock")
        self._frozen, self._fetched_at = frozen, time.monotonic()


class BedrockProvider(Provider):
    kind = "bedrock"

    def __init__(
        self, name: str, url: str, credential: Credential, region: str, auth: str = "sigv4"
    ) -> None:
        super().__init__(name, url, credential)
        self.region = region
        self.auth = auth
        host = self.url.host or ""
        self.service = "bedrock-mantle" if "bedrock-mantle" in host else "bedrock"

    @classmethod
    def from_config(cls, config: ProviderConfig, credential: Credential) -> BedrockProvider:
        assert config.aws_region is not None  # the config refuses bedrock without one
        return cls(config.name, config.url, credential, config.aws_region, config.auth)

    def url_for(self, path: str, model: str | None) -> yarl.URL:
        return self.url.with_path(f"{self.url.path.rstrip('/')}/openai{path}")

    def headers(self, key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    async def auth_headers(
        self, method: str, url: yarl.URL, payload: bytes | None
    ) -> dict[str, str]:
        if self.auth != "sigv4":
            return await super().auth_headers(method, url, payload)
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        assert isinstance(self.credential, AwsCredential)
        # Only the host and the x-amz-* headers are signed: the rest may be set later freely.
        unsigned = {} if payload is not None else {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
        request = AWSRequest(method, str(url), data=payload or b"", headers=unsigned)
        SigV4Auth(await self.credential.frozen(), self.service, self.region).add_auth(request)
        return dict(request.headers.items())

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Refusal:
        parsed = json_object(body)
        if "error" in parsed or not isinstance(parsed.get("message"), str):
            return super().classify(status, headers, body)
        code = headers.get("x-amzn-errortype", "").split(":")[0] or None
        shaped = {
            "error": {
                "message": parsed["message"],
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None,
                "code": code,
            }
        }
        refusal = super().classify(status, headers, body)
        return Refusal(
            UpstreamError(status, shaped, refusal.error.retry_after_s), refusal.retry_reason
        )
