"""Shared fixtures: a real redis-server and the provider simulator on free loopback ports."""

pytest_plugins = ["tests.fixtures.redis", "tests.fixtures.simulator"]
