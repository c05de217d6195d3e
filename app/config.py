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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    shutdown_delay_s: float = Field(
        0,
        ge=0,
        description="after SIGTERM: stay up this long (readiness already false) before draining",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    log_prompts: bool = False
    access_log: bool = True
    token_count_offload_chars: int = Field(
        20_000, ge=0, description="inputs longer than this are tokenized in a worker thread"
    )


class RetryConfig(_Section):
    max_attempts: int = Field(4, ge=1, le=10)
    base_s: float = Field(0.25, gt=0, le=60)
    cap_s: float = Field(8, gt=0, le=300)

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


class UpstreamConfig(_Section):
    url: str | None = None
    timeout_connect_s: float = Field(5, gt=0, le=120)
    timeout_read_s: float = Field(120, gt=0, le=3600)
    max_connections: int = Field(256, ge=1, le=10_000)
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    max_concurrency_per_model: int = Field(64, ge=1, le=10_000)
    moderation: ModerationConfig = ModerationConfig()
    forward_headers: tuple[str, ...] = Field(
        (), description="client request headers passed on to the provider (lower-case names)"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"must be an http(s) URL such as https://api.openai.com, got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("forward_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        blocked = {"authorization", "host", "content-length", "cookie"}
        names = tuple(v.strip().lower() for v in value)
        bad = sorted(blocked.intersection(names))
        if bad:
            raise ValueError(f"may not forward {', '.join(bad)}")
        return names


class ModelSpec(_Section):
    context_window: int = Field(ge=1)
    max_output_tokens: int = Field(ge=1)
    default_max_tokens: int = Field(ge=1)
    input_usd_per_1m: float = Field(ge=0)
    output_usd_per_1m: float = Field(ge=0)
    # Prompt tokens the provider served from its prompt cache; null: billed as input_usd_per_1m.
    cached_input_usd_per_1m: float | None = Field(None, ge=0)
    # The model also spends hidden reasoning tokens, billed as output within its completion cap.
    reasoning: bool = False
    encoding: Literal["o200k_base", "cl100k_base"] = "o200k_base"
    fallbacks: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
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
    default_rpm: int | None = Field(600, ge=1)
    default_tpm: int | None = Field(200_000, ge=1)
    # Answers from the gateway's cache cost the provider nothing: by default they do not count
    # against tokens per minute (their reservation is given back in full).
    count_cache_hits_tokens: bool = False
    on_redis_failure: Literal["local", "open", "closed"] = "local"


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


class GatewayConfig(_Section):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    models: ModelsConfig
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    batching: BatchingConfig = BatchingConfig()
    redis: RedisConfig = RedisConfig()

    @property
    def uses_simulator(self) -> bool:
        return self.upstream.url is None


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
        if err["type"] == "extra_forbidden":
            message = "unknown setting (see app/README.md for the allowed keys)"
        elif err["type"] == "missing":
            message = "required setting is missing"
        # URLs may carry credentials: never echo them back.
        quiet = err["type"] in ("missing", "extra_forbidden") or loc.endswith("url")
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
