"""`liftoff:providers`: the gateway's named upstream providers, and where each one's credentials
come from.

- `kind: openai`: any OpenAI-compatible base URL (OpenAI, vLLM, a server of your own), over https,
  without the `/v1` the gateway appends to it (`https://api.openai.com`).
- `kind: azure`: an Azure OpenAI resource endpoint (`https://<resource>.openai.azure.com` or
  `.cognitiveservices.azure.com`) with `apiVersion` (a dated version or `v1`) and `deployments`
  (catalog model -> deployment name).
- `kind: bedrock`: Amazon Bedrock's OpenAI-compatible endpoint
  `https://bedrock-runtime.<region>.amazonaws.com` in a US region, `auth: sigv4` (the default for
  it): no key, the pod's IAM role may invoke that region's foundation models.

Models: each provider lists the catalog models it serves (`models`, names of the gateway's catalog
in app/defaults.yaml); the first serves every other one. The stack renders them as
`models.catalog.<model>.provider`; an azure provider's `deployments` map models it serves.

Keys: the first provider's is `liftoff:llmApiKey` (the existing `upstream-api-key` secret, read
through `LIFTOFF_UPSTREAM_API_KEY_SECRET_ARN`), so a stack moving from `liftoff:upstreamUrl` to a
list keeps its secret; every other keyed provider's is `liftoff:providerApiKeys.<name>`, stored in
its own Secrets Manager secret (`LIFTOFF_PROVIDER_<NAME>_API_KEY_SECRET_ARN`).

No imports from the settings modules: `infra.settings_model` types its field with this model and
`infra.settings_checks` calls the checks below.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field

from infra.zones import REGION_CODES

PROVIDER_NAME_RE = r"^[a-z][a-z0-9-]{0,31}$"
PROVIDER_KINDS = ("openai", "azure", "bedrock")
PROVIDER_AUTHS = ("api_key", "entra", "sigv4")
# Each provider adds a secret ARN to the pod role's inline policy (10,240 characters per role).
MAX_PROVIDERS = 16
AZURE_HOST_RE = r"^[a-z0-9][a-z0-9-]{0,62}\.(openai|cognitiveservices)\.azure\.com$"
AZURE_API_VERSION_RE = r"^(v1|[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?)$"
# Azure OpenAI deployment names: letters, digits, '-', '_' and '.', at most 64.
AZURE_DEPLOYMENT_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CATALOG_MODEL_RE = r"^[\w.:/-]{1,128}$"
# The regions the stack deploys to (the US ones) are the Bedrock regions a provider may use.
BEDROCK_REGIONS = tuple(REGION_CODES)
BEDROCK_HOST_RE = (
    r"^bedrock-runtime\.(" + "|".join(map(re.escape, BEDROCK_REGIONS)) + r")\.amazonaws\.com$"
)
# The gateway image is built from app/: its catalog is what `models` may name.
GATEWAY_DEFAULTS = Path(__file__).resolve().parent.parent / "app" / "defaults.yaml"
ENTRY_KEYS = ("name", "kind", "url", "apiVersion", "auth", "deployments", "models")
BEDROCK_INVOKE_ACTIONS = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]

PROVIDERS_ALLOWED = (
    f"a list of at most {MAX_PROVIDERS} providers {{name, kind, url, apiVersion, auth, "
    "deployments, models}: name unique, matching "
    + PROVIDER_NAME_RE
    + "; kind openai (an https:// "
    "OpenAI-compatible base URL without /v1), azure (https://<resource>.openai.azure.com or "
    ".cognitiveservices.azure.com, apiVersion YYYY-MM-DD[-preview] or v1, deployments model -> "
    "deployment name) or bedrock (https://bedrock-runtime.<us-region>.amazonaws.com); auth "
    "api_key (bedrock: sigv4); models: catalog models it serves (the first serves the rest)"
)
PROVIDER_KEYS_ALLOWED = (
    "a map provider name -> API key (set each with `pulumi config set --secret --path "
    "'liftoff:providerApiKeys.<name>' <key>`), for the openai and azure providers after the "
    "first (whose key is liftoff:llmApiKey)"
)


class ProviderSettings(BaseModel):
    """One entry of `liftoff:providers` (camelCase keys in the stack config)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    name: str = Field(pattern=PROVIDER_NAME_RE)
    kind: Literal["openai", "azure", "bedrock"]
    url: str
    api_version: str | None = Field(None, alias="apiVersion")
    # Unset: sigv4 for bedrock, api_key for the others (`effective_auth`).
    auth: Literal["api_key", "entra", "sigv4"] | None = None
    deployments: dict[str, str] = {}
    # Catalog models this provider serves (the first provider: also every model no other lists).
    models: list[str] = []

    @property
    def effective_auth(self) -> str:
        return self.auth or ("sigv4" if self.kind == "bedrock" else "api_key")

    @property
    def takes_api_key(self) -> bool:
        """Bedrock signs requests with the pod's IAM role; the others send a key."""
        return self.kind != "bedrock"

    @property
    def bedrock_region(self) -> str | None:
        match = re.match(BEDROCK_HOST_RE, urlsplit(self.url).hostname or "")
        return match.group(1) if self.kind == "bedrock" and match else None

    def gateway_entry(self) -> dict[str, Any]:
        """The entry as the chart's `providers` values take it (camelCase)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "apiVersion": self.api_version,
            "auth": self.effective_auth,
            "deployments": dict(self.deployments),
        }


@functools.cache
def catalog_models() -> tuple[str, ...]:
    """The model names of the gateway's default catalog (app/defaults.yaml)."""
    document = yaml.safe_load(GATEWAY_DEFAULTS.read_text())
    return tuple(document["models"]["catalog"])


def catalog_providers(providers: Sequence[ProviderSettings]) -> dict[str, dict[str, str]]:
    """`models.catalog` entries of the gateway config: model -> {"provider": name}."""
    return {model: {"provider": p.name} for p in providers for model in p.models}


def env_name(provider: str) -> str:
    """`LIFTOFF_PROVIDER_<NAME>_API_KEY_SECRET_ARN`: the gateway's env var of a provider's key."""
    return f"LIFTOFF_PROVIDER_{provider.upper().replace('-', '_')}_API_KEY_SECRET_ARN"


def secret_slug(provider: str) -> str:
    """The Secrets Manager slug of a provider's key (`<prefix>/provider-<name>-api-key`)."""
    return f"provider-{provider}-api-key"


def first_takes_key(providers: Sequence[ProviderSettings]) -> bool:
    """Whether `liftoff:llmApiKey` is used: always without a list, else if the first takes a key."""
    return not providers or providers[0].takes_api_key


def keyed_providers(providers: Sequence[ProviderSettings]) -> list[ProviderSettings]:
    """Providers after the first that need a key of their own from `liftoff:providerApiKeys`."""
    return [p for p in providers[1:] if p.takes_api_key]


def bedrock_regions(providers: Sequence[ProviderSettings]) -> list[str]:
    return sorted({p.bedrock_region for p in providers if p.bedrock_region})


def bedrock_statement(regions: Sequence[str]) -> dict[str, Any]:
    """Invoke the foundation models of exactly these regions (no other Bedrock action)."""
    return {
        "Effect": "Allow",
        "Action": BEDROCK_INVOKE_ACTIONS,
        "Resource": [f"arn:aws:bedrock:{r}::foundation-model/*" for r in regions],
    }


# --- checks --------------------------------------------------------------------------------


def _https_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or re.search(r"\s", url):
        return "an https:// URL (the stack runs in AWS: the provider is reached over TLS)"
    if "@" in parts.netloc:
        return "a URL without credentials (value withheld): keys go to liftoff:providerApiKeys"
    if parts.query or parts.fragment:
        return "a base URL without ?query or #fragment"
    return None


def _api_version_ok(text: object) -> bool:
    if not isinstance(text, str) or not re.match(AZURE_API_VERSION_RE, text):
        return False
    if text == "v1":
        return True
    try:
        datetime.date.fromisoformat(text[:10])
    except ValueError:
        return False
    return True


def _entry_problems(index: int, entry: Mapping[str, Any]) -> list[tuple[str, object, str]]:
    """(key suffix, value shown, allowed) for one entry."""
    at = f"providers[{index}]"
    found: list[tuple[str, object, str]] = []
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        found.append((at, ", ".join(unknown), "only " + ", ".join(ENTRY_KEYS)))
    models = entry.get("models", [])
    if not isinstance(models, list) or not all(m in catalog_models() for m in models):
        found.append(
            (
                f"{at}.models",
                models,
                "a list of the gateway's catalog models (app/defaults.yaml): "
                + ", ".join(catalog_models()),
            )
        )
    name, kind, url = entry.get("name"), entry.get("kind"), entry.get("url")
    if not isinstance(name, str) or not re.match(PROVIDER_NAME_RE, name):
        found.append(
            (f"{at}.name", name, "1-32 lowercase letters, digits or '-', starting with a letter")
        )
    if kind not in PROVIDER_KINDS:
        found.append((f"{at}.kind", kind, "openai, azure or bedrock"))
    url_problem = _https_url_problem(url) if isinstance(url, str) else "an https:// URL"
    if url_problem:
        # A URL holding credentials is not echoed.
        shown = "[withheld]" if isinstance(url, str) and "@" in url else url
        found.append((f"{at}.url", shown, url_problem))
    elif kind == "azure" and not (
        re.match(AZURE_HOST_RE, urlsplit(url).hostname or "") and urlsplit(url).path in ("", "/")
    ):
        found.append(
            (
                f"{at}.url",
                url,
                "an Azure OpenAI resource endpoint https://<resource>.openai.azure.com or "
                "https://<resource>.cognitiveservices.azure.com (no path: the gateway adds it)",
            )
        )
    elif kind == "bedrock" and not (
        re.match(BEDROCK_HOST_RE, urlsplit(url).hostname or "") and urlsplit(url).path in ("", "/")
    ):
        found.append(
            (
                f"{at}.url",
                url,
                "https://bedrock-runtime.<region>.amazonaws.com (no path: the gateway adds "
                "/openai/v1/...) in a US region: " + ", ".join(BEDROCK_REGIONS),
            )
        )
    elif kind == "openai" and urlsplit(url).path.rstrip("/").endswith("/v1"):
        found.append(
            (
                f"{at}.url",
                url,
                "a base URL without /v1: the gateway appends /v1/... (https://api.openai.com)",
            )
        )
    version = entry.get("apiVersion")
    if kind == "azure" and not _api_version_ok(version):
        found.append(
            (
                f"{at}.apiVersion",
                version,
                "an Azure OpenAI API version: a date YYYY-MM-DD (optionally -preview) like "
                "2024-10-21, or v1",
            )
        )
    elif kind != "azure" and version is not None:
        found.append((f"{at}.apiVersion", version, "unset: only kind azure takes an apiVersion"))
    auth = entry.get("auth")
    if kind == "bedrock" and auth not in (None, "sigv4"):
        found.append(
            (
                f"{at}.auth",
                auth,
                "sigv4 (or unset): the pod's IAM role signs Bedrock requests; the stack keeps no "
                "long-term Bedrock API key",
            )
        )
    elif kind != "bedrock" and auth == "sigv4":
        found.append((f"{at}.auth", auth, "api_key: only kind bedrock signs with sigv4"))
    elif auth not in (None, *PROVIDER_AUTHS):
        found.append((f"{at}.auth", auth, "api_key (bedrock: sigv4)"))
    elif auth == "entra":
        found.append(
            (
                f"{at}.auth",
                auth,
                "api_key: an Entra ID token expires within hours and the stack sets up no "
                "workload identity federation to Azure for the pod; give the Azure resource's "
                "API key in liftoff:llmApiKey (first provider) or liftoff:providerApiKeys",
            )
        )
    deployments = entry.get("deployments", {})
    if kind != "azure" and deployments:
        found.append(
            (f"{at}.deployments", deployments, "unset: only kind azure maps models to deployments")
        )
    elif not isinstance(deployments, dict) or not all(
        isinstance(m, str)
        and re.match(CATALOG_MODEL_RE, m)
        and isinstance(d, str)
        and re.match(AZURE_DEPLOYMENT_RE, d)
        for m, d in deployments.items()
    ):
        found.append(
            (
                f"{at}.deployments",
                deployments,
                "a map catalog model -> Azure deployment name (letters, digits, '-', '_' or '.', "
                "at most 64)",
            )
        )
    return found


def provider_problems(raw: object) -> list[tuple[str, object, str]]:
    """(key, value, allowed) for each problem of a `liftoff:providers` value (JSON-decoded)."""
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        return [("providers", raw, PROVIDERS_ALLOWED)]
    found: list[tuple[str, object, str]] = []
    if len(raw) > MAX_PROVIDERS:
        found.append(
            (
                "providers",
                f"{len(raw)} providers",
                f"at most {MAX_PROVIDERS} (each adds a secret to the pod role's policy)",
            )
        )
    seen: set[object] = set()
    for index, entry in enumerate(raw):
        found.extend(_entry_problems(index, entry))
        name = entry.get("name")
        if name in seen:
            found.append((f"providers[{index}].name", name, "a name no earlier provider has"))
        seen.add(name)
    # Which provider serves which model only once every entry is well-formed.
    return found or _serving_problems(raw)


def _serving_problems(raw: list[dict[str, Any]]) -> list[tuple[str, object, str]]:
    """One provider per model (the gateway routes a model to one provider; a fallback across
    providers is another catalog model), and deployments only for models the provider serves."""
    found: list[tuple[str, object, str]] = []
    served_by: dict[str, int] = {}
    for index, entry in enumerate(raw):
        for model in entry.get("models", []):
            if model in served_by:
                found.append(
                    (
                        f"providers[{index}].models",
                        model,
                        f"a model no earlier provider lists (providers[{served_by[model]}] does)",
                    )
                )
            served_by.setdefault(model, index)
    for index, entry in enumerate(raw):
        for model in entry.get("deployments", {}):
            server = served_by.get(model, 0)
            if server != index:
                found.append(
                    (
                        f"providers[{index}].deployments",
                        model,
                        f"models this provider serves: {model} is served by providers[{server}]; "
                        f"list it in providers[{index}].models",
                    )
                )
            elif model not in catalog_models():
                found.append(
                    (
                        f"providers[{index}].deployments",
                        model,
                        "models of the gateway's catalog (app/defaults.yaml): "
                        + ", ".join(catalog_models()),
                    )
                )
    return found


def provider_key_problems(
    providers: Sequence[ProviderSettings], key_names: Sequence[str], llm_key_set: bool
) -> list[tuple[str, str]]:
    """(field, allowed) for keys that no provider takes: `liftoff:providerApiKeys` entries and a
    `liftoff:llmApiKey` the first provider does not use."""
    found: list[tuple[str, str]] = []
    wanted = {p.name for p in keyed_providers(providers)}
    extra = sorted(set(key_names) - wanted)
    if extra:
        by_name = {p.name: p for p in providers}
        why = [
            f"{n} is not in liftoff:providers"
            if n not in by_name
            else f"{n} takes no key (bedrock signs with the pod's IAM role)"
            if not by_name[n].takes_api_key
            else f"{n} is the first provider (its key is liftoff:llmApiKey)"
            for n in extra
        ]
        found.append(("provider_api_keys", f"{PROVIDER_KEYS_ALLOWED}; " + "; ".join(why)))
    if llm_key_set and not first_takes_key(providers):
        found.append(
            (
                "llm_api_key",
                f"unset: the first of liftoff:providers ({providers[0].name}, bedrock) takes no "
                "API key",
            )
        )
    return found
