"""The gateway's configuration: one YAML file plus environment overrides, validated once at startup.

Sources, later ones winning:
1. ``app/defaults.yaml``, deep-merged with the YAML file at ``$LIFTOFF_CONFIG`` (or the ``path``
   argument) when one is given, so a config file only needs the settings it changes;
2. ``LIFTOFF__SECTION__KEY=value`` (any depth, e.g. ``LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS=6``);
   the value is read as a YAML scalar, so ``null``, ``true``, ``3``, ``0.5`` and ``[a, b]`` work;
3. the shortcuts ``LIFTOFF_REDIS_URL`` and ``LIFTOFF_UPSTREAM_URL``.

Every problem is reported as a :class:`ConfigError` naming the setting, where it came from and
what is allowed. Secrets are never part of this model (see ``app/secrets.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.gcra import BurstFractions

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
ENV_PREFIX = "LIFTOFF__"


class ConfigError(ValueError):
    """The configuration is invalid; the message names every bad setting and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    keepalive_timeout_s: float = Field(
        130, gt=0, description="must exceed the load balancer idle timeout"
    )
    graceful_shutdown_s: float = Field(
        120, ge=0, description="drain time for in-flight requests/streams"
    )
    # 35 s: a load balancer that only learns of a drain from /readyz needs its health-check
    # interval x unhealthy threshold to stop sending (this stack's ALB: 10 s x 3 = 30 s; HAProxy's
    # defaults 2 s x 3), plus a few seconds for it to act. The chart sets 0: its preStop sleep
    # runs while the ALB deregisters the pod, before SIGTERM.
    shutdown_delay_s: float = Field(
        35,
        ge=0,
        le=600,
        description="after SIGTERM: stay up this long (readiness already false, answers close "
        "their connections) before draining",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    # Connection limits (app/http_protocol.py), far above what a real OpenAI client sends or
    # takes: the SDKs send ~20 headers in ~1 KB at once, and the ALB's own head limit is 64 KB.
    max_header_bytes: int = Field(
        65_536, ge=4096, le=1_048_576, description="request line + headers, larger -> 431"
    )
    max_headers: int = Field(100, ge=16, le=10_000, description="header fields, more -> 431")
    header_timeout_s: float = Field(
        30, gt=0, le=600, description="from a request's first byte to the end of its headers"
    )
    body_timeout_s: float = Field(
        60, gt=0, le=3600, description="from the end of the headers to the end of the body"
    )
    idle_timeout_s: float = Field(
        60, gt=0, le=3600, description="a new connection's wait for its first request"
    )
    max_connections: int = Field(
        4096, ge=16, le=1_000_000, description="open client connections per process"
    )
    log_prompts: bool = False
    access_log: bool = True
    token_count_offload_chars: int = Field(
        20_000, ge=0, description="inputs longer than this are tokenized in a worker thread"
    )


class RetryConfig(_Section):
    max_attempts: int = Field(4, ge=1, le=10)
    base_s: float = Field(0.25, gt=0, le=60)
    cap_s: float = Field(8, gt=0, le=300)
    # The retry budget (app/overload.py): retries in the last 10 s may add at most this share of
    # the first calls, plus the floor per second (a quiet gateway still retries its odd failure).
    budget_ratio: float = Field(0.2, ge=0, le=10, description="retries per first call")
    budget_min_per_s: float = Field(1, ge=0, le=10_000, description="retries/s always allowed")

    @model_validator(mode="after")
    def _cap_over_base(self) -> RetryConfig:
        if self.cap_s < self.base_s:
            raise ValueError(f"cap_s ({self.cap_s}) must be >= base_s ({self.base_s})")
        return self


class BreakerConfig(_Section):
    failure_threshold: int = Field(5, ge=1, le=1000)
    reset_after_s: float = Field(30, gt=0, le=3600)


class ModerationConfig(_Section):
    enabled: bool = False
    model: str = Field("omni-moderation-latest", min_length=1)


PROVIDER_NAME = r"^[a-z][a-z0-9-]{0,31}$"
# Azure OpenAI's dated API versions ("2024-10-21", "2025-04-01-preview") or its v1 API.
AZURE_API_VERSION = re.compile(r"v1|[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?")
AWS_REGION = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"
# Bedrock's regional endpoints (runtime, mantle, FIPS, VPC endpoint names): the region in the host.
BEDROCK_HOST = re.compile(
    r"(^|\.)bedrock-(runtime|mantle)(-fips)?\.(?P<region>[a-z]{2}(-[a-z]+)+-\d{1,2})\."
)
DEFAULT_PROVIDER = "default"  # the one provider `upstream.url` defines when `providers` is empty


def _http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"must be an http(s) URL such as https://api.openai.com, got {value!r}")
    if parsed.username or parsed.password:
        raise ValueError("must not contain credentials: set the provider's API key secret instead")
    return value.rstrip("/")


class ProviderConfig(_Section):
    """One named provider; its key comes from LIFTOFF_PROVIDER_<NAME>_API_KEY[_SECRET_ARN]."""

    name: str = Field(pattern=PROVIDER_NAME)
    kind: Literal["openai", "azure", "bedrock"] = "openai"
    url: str
    api_version: str | None = None
    auth: Literal["api_key", "entra", "sigv4"] = "api_key"
    deployments: dict[str, str] = Field(default_factory=dict)
    region: str | None = Field(None, pattern=AWS_REGION)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _kind_fields(self) -> ProviderConfig:
        only = {
            "api_version": ("azure", self.api_version is not None),
            "deployments": ("azure", bool(self.deployments)),
            "auth: entra": ("azure", self.auth == "entra"),
            "auth: sigv4": ("bedrock", self.auth == "sigv4"),
            "region": ("bedrock", self.region is not None),
        }
        for setting, (kind, is_set) in only.items():
            if is_set and self.kind != kind:
                raise ValueError(f"{setting}: only for kind {kind} (this provider is {self.kind})")
        if self.kind == "azure":
            if self.api_version is None:
                raise ValueError(
                    "api_version: required for kind azure: a dated version such as "
                    "'2024-10-21' or 'v1' (the v1 API)"
                )
            if not AZURE_API_VERSION.fullmatch(self.api_version):
                raise ValueError(
                    f"api_version: {self.api_version!r} is not 'v1' or a dated version such as "
                    "'2024-10-21' or '2025-04-01-preview'"
                )
            bad = sorted(m for m, d in self.deployments.items() if not d or "/" in d)
            if bad:
                raise ValueError(f"deployments: {bad}: a deployment name is non-empty, no '/'")
        if self.kind == "bedrock" and self.aws_region is None:
            raise ValueError(
                "region: required for kind bedrock when the url is not a regional Bedrock "
                "endpoint such as https://bedrock-runtime.us-east-1.amazonaws.com"
            )
        return self

    @property
    def aws_region(self) -> str | None:
        """bedrock: ``region``, else the region in the endpoint's host name."""
        if self.region is not None:
            return self.region
        match = BEDROCK_HOST.search(urlparse(self.url).hostname or "")
        return match.group("region") if match else None


class UpstreamConfig(_Section):
    url: str | None = None
    providers: tuple[ProviderConfig, ...] = ()
    timeout_connect_s: float = Field(5, gt=0, le=120)
    timeout_read_s: float = Field(120, gt=0, le=3600)
    max_connections: int = Field(256, ge=1, le=10_000)
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    max_concurrency_per_model: int = Field(64, ge=1, le=10_000)
    # Longest wait for one of those slots; a call that cannot expect one in time is shed at once
    # (503 overloaded + Retry-After), see app/overload.py.
    queue_timeout_s: float = Field(5, gt=0, le=600)
    # The longest one request may spend on a model's provider calls in all: slot waits, attempts,
    # back-offs and fallbacks (for a stream: until its first event). Past it no new attempt
    # starts and the one under way is cut: 504 upstream_timeout. Set it under the load
    # balancer's idle timeout so the client gets this answer, not the balancer's own 504.
    deadline_s: float = Field(
        180, gt=0, le=3600, description="provider calls of one request in all, retries included"
    )
    moderation: ModerationConfig = ModerationConfig()
    forward_headers: tuple[str, ...] = Field(
        (), description="client request headers passed on to the provider (lower-case names)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else _http_url(value)

    @field_validator("providers")
    @classmethod
    def _unique(cls, value: tuple[ProviderConfig, ...]) -> tuple[ProviderConfig, ...]:
        names = [p.name for p in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique: {duplicates} appear more than once")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_providers(self) -> UpstreamConfig:
        if self.providers and self.url is not None:
            raise ValueError(
                "set upstream.url (one provider) or upstream.providers (each with its url), "
                "not both"
            )
        return self

    @property
    def provider_names(self) -> tuple[str, ...]:
        """The providers in order; the first serves catalog models that name none."""
        return tuple(p.name for p in self.providers) or (DEFAULT_PROVIDER,)

    @field_validator("forward_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        blocked = {"authorization", "api-key", "host", "content-length", "cookie"}
        names = tuple(v.strip().lower() for v in value)
        bad = sorted(blocked.intersection(names))
        if bad:
            raise ValueError(f"may not forward {', '.join(bad)}")
        return names


class ModelSpec(_Section):
    # chat: generation (chat, completions, Responses); embedding: /v1/embeddings only.
    kind: Literal["chat", "embedding"] = "chat"
    context_window: int = Field(ge=1)  # embedding: the most tokens of one input
    max_output_tokens: int = Field(0, ge=0)  # required (>= 1) for chat models
    default_max_tokens: int = Field(0, ge=0)  # required (>= 1) for chat models
    input_usd_per_1m: float = Field(ge=0)
    output_usd_per_1m: float = Field(0, ge=0)
    # embedding: the vector's length, and whether `dimensions` may shorten it (text-embedding-3).
    dimensions: int | None = Field(None, ge=1, le=16_384)
    shortenable: bool = False
    # Prompt tokens the provider served from its prompt cache; null: billed as input_usd_per_1m.
    cached_input_usd_per_1m: float | None = Field(None, ge=0)
    # The model also spends hidden reasoning tokens, billed as output within its completion cap.
    reasoning: bool = False
    encoding: Literal["o200k_base", "cl100k_base"] = "o200k_base"
    fallbacks: tuple[str, ...] = ()
    # One of upstream.providers by name; null: the first provider.
    provider: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.kind == "embedding":
            return self._embedding_consistent()
        for name in ("max_output_tokens", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is required (>= 1) for a chat model")
        if self.dimensions is not None or self.shortenable:
            raise ValueError("dimensions and shortenable are for kind: embedding models only")
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be <= "
                f"max_output_tokens ({self.max_output_tokens})"
            )
        if self.max_output_tokens > self.context_window:
            raise ValueError(
                f"max_output_tokens ({self.max_output_tokens}) must be <= "
                f"context_window ({self.context_window})"
            )
        cached = self.cached_input_usd_per_1m
        if cached is not None and cached > self.input_usd_per_1m:
            raise ValueError(
                f"cached_input_usd_per_1m ({cached}) must be <= "
                f"input_usd_per_1m ({self.input_usd_per_1m})"
            )
        return self

    def _embedding_consistent(self) -> ModelSpec:
        if self.dimensions is None:
            raise ValueError("dimensions (the vector length) is required for an embedding model")
        produced = {
            "max_output_tokens": self.max_output_tokens,
            "default_max_tokens": self.default_max_tokens,
            "output_usd_per_1m": self.output_usd_per_1m,
            "reasoning": self.reasoning,
            "cached_input_usd_per_1m": self.cached_input_usd_per_1m,
        }
        for name, value in produced.items():
            if value:
                raise ValueError(f"{name} does not apply to an embedding model (no output tokens)")
        return self


class ModelsConfig(_Section):
    aliases: dict[str, str] = Field(default_factory=dict)
    max_tokens_policy: Literal["clamp", "reject"] = "clamp"
    max_n: int = Field(4, ge=1, le=128)
    max_best_of: int = Field(4, ge=1, le=20)
    max_stop: int = Field(4, ge=0, le=4)
    max_prompts: int = Field(20, ge=1, le=20)
    catalog: dict[str, ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_exist(self) -> ModelsConfig:
        known = sorted(self.catalog)
        for alias, target in self.aliases.items():
            if target not in self.catalog:
                raise ValueError(
                    f"aliases.{alias} -> {target!r} is not in catalog (known: {known})"
                )
            if alias in self.catalog:
                raise ValueError(f"aliases.{alias} shadows a catalog model of the same name")
        for name, spec in self.catalog.items():
            for fallback in spec.fallbacks:
                if fallback not in self.catalog or fallback == name:
                    raise ValueError(
                        f"catalog.{name}.fallbacks: {fallback!r} must be another catalog model "
                        f"(known: {known})"
                    )
        return self

    def provider_of(self, model: str, providers: tuple[str, ...]) -> str:
        """Which of ``providers`` (in config order) serves ``model``: the one its catalog entry
        names, else the first (also for names outside the catalog, e.g. the moderation model)."""
        spec = self.catalog.get(model)
        if spec is not None and spec.provider is not None:
            return spec.provider
        return providers[0]

    def resolve(self, name: str) -> str | None:
        """Alias or pinned name -> pinned catalog name; None when unknown."""
        target = self.aliases.get(name, name)
        return target if target in self.catalog else None


class CacheConfig(_Section):
    enabled: bool = True
    ttl_s: int = Field(3600, ge=1, le=30 * 86400)
    max_entries: int = Field(10_000, ge=1, le=10_000_000)
    scope: Literal["key", "global"] = Field(
        "key", description="key: each client key has its own entries; global: keys share them"
    )
    single_flight_wait_s: float = Field(
        30,
        gt=0,
        le=600,
        description="lease on a missing entry; identical requests wait this long for it at most",
    )


class LimitsConfig(_Section):
    # At most 1e8: app/gcra.py MAX_LIMIT (exact integer arithmetic in the Lua scripts).
    default_rpm: int | None = Field(600, ge=1, le=100_000_000)
    default_tpm: int | None = Field(200_000, ge=1, le=100_000_000)
    # Answers from the gateway's cache cost the provider nothing: by default they do not count
    # against tokens per minute (their reservation is given back in full).
    count_cache_hits_tokens: bool = False
    # Share of each rpm / tpm admitted at once; any 60-s window stays at or under the limit, the
    # steady rate is limit + 1 - burst a minute (app/gcra.py has the proof). Tokens get more: a
    # request reserves its worst case, and one reserving more than the burst never fits.
    rpm_burst_fraction: float = Field(0.1, gt=0, le=1)
    tpm_burst_fraction: float = Field(0.25, gt=0, le=1)
    on_redis_failure: Literal["local", "open", "closed"] = "local"
    # Replicas that decide alone while Redis is down (mode local): each enforces limit / this.
    local_fallback_replicas: int = Field(1, ge=1, le=10_000)

    @property
    def bursts(self) -> BurstFractions:
        return BurstFractions(self.rpm_burst_fraction, self.tpm_burst_fraction)


class BudgetsConfig(_Section):
    global_monthly_usd: float | None = Field(None, gt=0)
    soft_fraction: float = Field(0.8, gt=0, le=1)


class BatchingConfig(_Section):
    enabled: bool = True
    window_ms: float = Field(5, ge=0, le=1000)
    max_batch: int = Field(20, ge=1, le=20)


class RedisConfig(_Section):
    url: str | None = None
    socket_timeout_s: float = Field(0.25, gt=0, le=30)
    max_connections: int = Field(128, ge=1, le=10_000)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got scheme {parsed.scheme!r}"
            )
        if parsed.password:
            raise ValueError(
                "must not contain a password: set LIFTOFF_REDIS_AUTH_TOKEN "
                "(or LIFTOFF_REDIS_AUTH_TOKEN_SECRET_ARN) instead"
            )
        return value


class ObjectsConfig(_Section):
    """Stored objects (responses, files, uploads, batches, vector stores) per client key
    (app/object_owners.py)."""

    # An id no owner was recorded for (made outside the gateway, or before owners were kept).
    unknown_owner: Literal["refuse", "allow"] = "refuse"
    # OpenAI keeps a stored response 30 days; a batch's record lasts as long. Files, uploads and
    # vector stores keep theirs until deleted, or to their own `expires_at` (+1 day).
    owner_ttl_s: int = Field(30 * 86400, ge=3600, le=400 * 86400)
    # In-process records (no Redis): the oldest past this many are forgotten (then refused).
    max_owners_in_memory: int = Field(100_000, ge=100, le=10_000_000)


class GatewayConfig(_Section):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    models: ModelsConfig
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    batching: BatchingConfig = BatchingConfig()
    redis: RedisConfig = RedisConfig()
    objects: ObjectsConfig = ObjectsConfig()

    @model_validator(mode="after")
    def _providers_known(self) -> GatewayConfig:
        """Cross-section checks: each catalog model's provider exists, deployments map models
        that provider serves."""
        known = self.upstream.provider_names
        problems = [
            f"models.catalog.{name}.provider = {spec.provider!r}: not a provider in "
            f"upstream.providers (known: {list(known)})"
            for name, spec in self.models.catalog.items()
            if spec.provider is not None and spec.provider not in known
        ]
        for index, provider in enumerate(self.upstream.providers):
            for model in provider.deployments:
                where = f"upstream.providers.{index}.deployments.{model}"
                if model not in self.models.catalog:
                    problems.append(
                        f"{where}: {model!r} is not a catalog model "
                        f"(known: {sorted(self.models.catalog)})"
                    )
                elif (served_by := self.models.provider_of(model, known)) != provider.name:
                    problems.append(
                        f"{where}: {model!r} is served by provider {served_by!r}, "
                        f"not {provider.name!r} (set models.catalog.{model}.provider)"
                    )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def uses_simulator(self) -> bool:
        return not self.upstream.providers and self.upstream.url is None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _set_path(tree: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _apply_env(tree: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply env overrides in place; returns setting path -> env var name, to cite in errors."""
    origins: dict[str, str] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            raise ConfigError(f"env {name}: empty path segment (use LIFTOFF__SECTION__KEY)")
        try:
            value = yaml.safe_load(env[name]) if env[name] != "" else None
        except yaml.YAMLError:
            value = env[name]
        _set_path(tree, keys, value, f"env {name}")
        origins[".".join(keys)] = name
    for name, keys in (
        ("LIFTOFF_REDIS_URL", ["redis", "url"]),
        ("LIFTOFF_UPSTREAM_URL", ["upstream", "url"]),
    ):
        if name in env:
            _set_path(tree, keys, env[name] or None, f"env {name}")
            origins[".".join(keys)] = name
    return origins


def _format_errors(exc: ValidationError, source: str, origins: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        where = f" (from env {origins[loc]})" if loc in origins else ""
        message = err["msg"].removeprefix("Value error, ")
        if not loc:  # cross-section checks: each line names its own setting
            lines.extend(f"  {line}" for line in message.splitlines())
            continue
        if err["type"] == "extra_forbidden":
            message = "unknown setting (see app/README.md for the allowed keys)"
        elif err["type"] == "missing":
            message = "required setting is missing"
        # URLs may carry credentials: never echo them back.
        # Whole sections (or lists of them) are not echoed either: they may hold URLs.
        value = err.get("input")
        items = value if isinstance(value, list | tuple) else [value]
        quiet = (
            err["type"] in ("missing", "extra_forbidden")
            or loc.endswith("url")
            or any(isinstance(item, Mapping | BaseModel) for item in items)
        )
        shown = "" if quiet else f" = {err.get('input')!r}"
        lines.append(f"  {loc or '<root>'}{shown}{where}: {message}")
    return f"invalid gateway config ({source}):\n" + "\n".join(lines)


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load, merge and validate the gateway config; raises ConfigError with every problem listed."""
    env = os.environ if env is None else env
    chosen = path or env.get("LIFTOFF_CONFIG") or None
    tree = _read_yaml(DEFAULTS_PATH)
    file_path = DEFAULTS_PATH
    if chosen:
        file_path = Path(chosen)
        _deep_merge(tree, _read_yaml(file_path))
    origins = _apply_env(tree, env)
    try:
        return GatewayConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(file_path), origins)) from None
