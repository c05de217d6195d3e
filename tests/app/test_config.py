"""Config: embedded defaults, YAML file merged over them, env overrides at any depth, and errors
that name the setting, its source and what is allowed."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_config


def test_embedded_defaults():
    config = load_config(env={})
    assert config.uses_simulator and config.redis.url is None
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"
    assert config.models.resolve("fast") == "gpt-4o-mini-2024-07-18"
    assert config.models.resolve("gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert config.models.resolve("nope") is None
    assert config.upstream.retry.max_attempts == 4


def test_yaml_file_is_merged_over_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server: {port: 9000}\nmodels: {aliases: {cheap: gpt-4o-mini-2024-07-18}}\n")
    config = load_config(env={"LIFTOFF_CONFIG": str(path)})
    assert config.server.port == 9000
    assert config.server.keepalive_timeout_s == 130  # untouched default
    assert config.models.resolve("cheap") == "gpt-4o-mini-2024-07-18"
    assert config.models.resolve("fast") == "gpt-4o-mini-2024-07-18"
    assert load_config(str(path), env={}).server.port == 9000


def test_env_overrides_any_depth_with_yaml_scalars():
    config = load_config(
        env={
            "LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS": "6",
            "LIFTOFF__SERVER__LOG_PROMPTS": "true",
            "LIFTOFF__BUDGETS__GLOBAL_MONTHLY_USD": "250.5",
            "LIFTOFF__LIMITS__DEFAULT_RPM": "null",
            "LIFTOFF__UPSTREAM__FORWARD_HEADERS": "[OpenAI-Organization]",
            "LIFTOFF_REDIS_URL": "rediss://cache.internal:6379/0",
            "LIFTOFF_UPSTREAM_URL": "https://api.openai.com/",
        }
    )
    assert config.upstream.retry.max_attempts == 6
    assert config.server.log_prompts is True
    assert config.budgets.global_monthly_usd == 250.5
    assert config.limits.default_rpm is None
    assert config.upstream.forward_headers == ("openai-organization",)
    assert config.redis.url == "rediss://cache.internal:6379/0"
    assert config.upstream.url == "https://api.openai.com"
    assert not config.uses_simulator


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS": "0"},
            "upstream.retry.max_attempts = 0 (from env LIFTOFF__UPSTREAM__RETRY__MAX_ATTEMPTS)",
        ),
        ({"LIFTOFF__SERVER__PORT": "http"}, "server.port"),
        (
            {"LIFTOFF__SERVER__BOGUS": "1"},
            "server.bogus (from env LIFTOFF__SERVER__BOGUS): unknown setting",
        ),
        ({"LIFTOFF__LIMITS__ON_REDIS_FAILURE": "maybe"}, "'local', 'open' or 'closed'"),
        ({"LIFTOFF__MODELS__MAX_TOKENS_POLICY": "trim"}, "'clamp' or 'reject'"),
        (
            {"LIFTOFF__MODELS__ALIASES__FAST": "gpt-99"},
            "aliases.fast -> 'gpt-99' is not in catalog",
        ),
        ({"LIFTOFF__BATCHING__MAX_BATCH": "21"}, "batching.max_batch"),
        ({"LIFTOFF__BUDGETS__SOFT_FRACTION": "1.5"}, "budgets.soft_fraction"),
        ({"LIFTOFF__UPSTREAM__RETRY__CAP_S": "0.1"}, "cap_s (0.1) must be >= base_s (0.25)"),
        ({"LIFTOFF_UPSTREAM_URL": "ftp://x"}, "must be an http(s) URL"),
        (
            {"LIFTOFF__UPSTREAM__FORWARD_HEADERS": "[authorization]"},
            "may not forward authorization",
        ),
        ({"LIFTOFF__SERVER__PORT__X": "1"}, "server.port.x: port is not a section"),
    ],
)
def test_errors_name_the_setting_and_what_is_allowed(env, expected):
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    assert expected in str(err.value)


def test_all_errors_reported_at_once_and_secrets_in_urls_not_echoed():
    with pytest.raises(ConfigError) as err:
        load_config(
            env={
                "LIFTOFF__SERVER__PORT": "0",
                "LIFTOFF_REDIS_URL": "redis://:hunter2-password@cache:6379/0",
            }
        )
    text = str(err.value)
    assert "server.port" in text and "redis.url" in text
    assert "must not contain a password" in text
    assert "hunter2" not in text


def test_catalog_consistency_is_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  catalog:\n    tiny:\n      context_window: 100\n      max_output_tokens: 50\n"
        "      default_max_tokens: 60\n      input_usd_per_1m: 1\n      output_usd_per_1m: 1\n"
        "      fallbacks: [ghost]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    assert "default_max_tokens (60) must be <= max_output_tokens (50)" in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(str(tmp_path / "missing.yaml"), env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), env={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(scalar), env={})


# --- upstream.providers -------------------------------------------------------------------------

AZURE = {"name": "azure", "kind": "azure", "url": "https://liftoff.openai.azure.com"}


def _providers_file(tmp_path, providers, catalog=None):
    import yaml

    tree = {"upstream": {"providers": providers}, "models": {"catalog": catalog or {}}}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_providers_are_read_with_their_models(tmp_path):
    path = _providers_file(
        tmp_path,
        [
            {"name": "openai", "url": "https://api.openai.com"},
            {**AZURE, "api_version": "v1", "deployments": {"gpt-4o-2024-08-06": "gpt4o-eu"}},
        ],
        {"gpt-4o-2024-08-06": {"provider": "azure"}},
    )
    config = load_config(path, env={})
    assert config.upstream.provider_names == ("openai", "azure")
    assert config.upstream.providers[1].deployments == {"gpt-4o-2024-08-06": "gpt4o-eu"}
    assert not config.uses_simulator
    names = config.upstream.provider_names
    assert config.models.provider_of("gpt-4o-2024-08-06", names) == "azure"
    assert config.models.provider_of("gpt-4o-mini-2024-07-18", names) == "openai"  # the first
    assert config.models.provider_of("omni-moderation-latest", names) == "openai"


@pytest.mark.parametrize(
    ("providers", "catalog", "expected"),
    [
        (
            [{"name": "openai", "url": "https://api.openai.com"}],
            {"gpt-4o-2024-08-06": {"provider": "azure"}},
            "models.catalog.gpt-4o-2024-08-06.provider = 'azure': not a provider in "
            "upstream.providers (known: ['openai'])",
        ),
        (
            [{"name": "a", "url": "https://a.example"}, {"name": "a", "url": "https://b.example"}],
            None,
            "upstream.providers: provider names must be unique: ['a'] appear more than once",
        ),
        ([AZURE], None, "upstream.providers.0: api_version: required for kind azure"),
        (
            [{**AZURE, "api_version": "latest"}],
            None,
            "upstream.providers.0: api_version: 'latest' is not 'v1' or a dated version",
        ),
        (
            [{**AZURE, "api_version": "2024-10-21", "deployments": {"gpt-9": "x"}}],
            None,
            "upstream.providers.0.deployments.gpt-9: 'gpt-9' is not a catalog model",
        ),
        (
            [
                {"name": "openai", "url": "https://api.openai.com"},
                {**AZURE, "api_version": "2024-10-21", "deployments": {"gpt-4o-2024-08-06": "x"}},
            ],
            None,
            "upstream.providers.1.deployments.gpt-4o-2024-08-06: 'gpt-4o-2024-08-06' is served "
            "by provider 'openai', not 'azure'",
        ),
        (
            [{"name": "openai", "url": "https://api.openai.com", "auth": "entra"}],
            None,
            "upstream.providers.0: auth: entra: only for kind azure (this provider is openai)",
        ),
        (
            [{"name": "openai", "url": "https://api.openai.com", "api_version": "2024-10-21"}],
            None,
            "upstream.providers.0: api_version: only for kind azure",
        ),
        (
            [{"name": "openai", "url": "api.openai.com"}],
            None,
            "upstream.providers.0.url: must be an http(s) URL",
        ),
        (
            [{"name": "Azure_East", "url": "https://x.example"}],
            None,
            "upstream.providers.0.name = 'Azure_East': String should match pattern",
        ),
        ([{"name": "openai"}], None, "upstream.providers.0.url: required setting is missing"),
        (
            [{"name": "claude", "kind": "anthropic", "url": "https://x.example"}],
            None,
            "upstream.providers.0.kind = 'anthropic': Input should be 'openai', 'azure' or "
            "'bedrock'",
        ),
    ],
)
def test_provider_errors_name_the_setting(tmp_path, providers, catalog, expected):
    with pytest.raises(ConfigError) as err:
        load_config(_providers_file(tmp_path, providers, catalog), env={})
    assert expected in str(err.value)


def test_provider_urls_are_never_echoed_and_url_with_providers_is_refused(tmp_path):
    secret_url = "https://user:hunter2@x.openai.azure.com"
    with pytest.raises(ConfigError) as err:
        load_config(_providers_file(tmp_path, [{**AZURE, "url": secret_url}]), env={})
    assert "must not contain credentials" in str(err.value)
    assert "hunter2" not in str(err.value)
    path = _providers_file(tmp_path, [{"name": "openai", "url": "https://api.openai.com"}])
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"LIFTOFF_UPSTREAM_URL": "https://api.openai.com"})
    assert "set upstream.url (one provider) or upstream.providers" in str(err.value)
