"""Shared fixtures: a real redis-server and the provider simulator, each started on a free loopback port."""

pytest_plugins = ["tests.fixtures.redis", "tests.fixtures.simulator"]
