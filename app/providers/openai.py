"""``kind: openai``: any OpenAI-compatible server (OpenAI, vLLM, a local one, the simulator).

The OpenAI path is appended to the base URL as it is and the key goes in
``Authorization: Bearer``.
"""

from __future__ import annotations

import yarl

from app.config import ProviderConfig
from app.providers.base import Credential, Provider


class OpenAIProvider(Provider):
    kind = "openai"

    @classmethod
    def from_config(cls, config: ProviderConfig, credential: Credential) -> OpenAIProvider:
        return cls(config.name, config.url, credential)

    def url_for(self, path: str, model: str | None) -> yarl.URL:
        return self.url.with_path(self.url.path.rstrip("/") + path)

    def headers(self, key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}
