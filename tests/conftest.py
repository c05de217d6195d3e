"""Shared fixtures: a real Redis or Valkey server (tests/fixtures/redis.py) and the provider
simulator, on free loopback ports."""

pytest_plugins = ["tests.fixtures.redis", "tests.fixtures.simulator"]
