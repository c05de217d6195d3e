"""The ConfigMap's config.yaml plus the pod's env, as rendered, load with the gateway's own config
loader (app.config.load_config) and mean what the values say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.config import ConfigError, GatewayConfig, load_config
from infra.settings import load_stack_file
from infra.workload import WorkloadRefs, gateway_values
from tests.charts import sample_values
from tests.charts.chart import Manifests, render


def load_rendered(manifests: Manifests, tmp_path: Path) -> GatewayConfig:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(manifests.one("ConfigMap")["data"]["config.yaml"])
    env = {**manifests.env, "LIFTOFF_CONFIG": str(config_file)}
    return load_config(env=env)


def test_default_render_loads(tmp_path: Path) -> None:
    config = load_rendered(render(), tmp_path)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
    assert config.server.keepalive_timeout_s == 130
    assert config.server.graceful_shutdown_s == 120
    assert config.redis.url is None


def test_everything_on_render_loads_with_its_settings(tmp_path: Path) -> None:
    config = load_rendered(render(sample_values.everything_on()), tmp_path)
    assert config.redis.url == sample_values.REDIS_URL
    assert config.limits.default_rpm == 1200, "extraEnv overrides the ConfigMap"
    assert config.limits.default_tpm == 100000
    assert config.budgets.global_monthly_usd == 500.0
    assert config.cache.ttl_s == 600
    assert config.models.max_tokens_policy == "reject"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_each_stack_render_loads(stack: str, tmp_path: Path) -> None:
    settings = load_stack_file(stack)
    values = gateway_values(settings, WorkloadRefs.placeholder(settings))
    config = load_rendered(render(values), tmp_path)
    assert config.server.port == values["server"]["port"]
    assert config.server.keepalive_timeout_s == values["server"]["keepAliveTimeoutSeconds"]
    assert config.server.graceful_shutdown_s == values["server"]["gracefulShutdownSeconds"]
    assert config.redis.url == values["redis"]["url"]
    assert config.limits.default_rpm == settings.default_rpm


def test_a_config_the_gateway_does_not_know_is_caught_by_its_loader(tmp_path: Path) -> None:
    manifests = render({"config": {"limits": {"default_rpmm": 5}}})
    assert yaml.safe_load(manifests.one("ConfigMap")["data"]["config.yaml"]) == {
        "limits": {"default_rpmm": 5}
    }
    with pytest.raises(ConfigError, match=r"limits\.default_rpmm"):
        load_rendered(manifests, tmp_path)
