"""Shared fixtures: a real Redis or Valkey server (tests/fixtures/redis.py), the provider
simulator, on free loopback ports, and the committed stacks' program runs
(tests/fixtures/stacks.py)."""

pytest_plugins = ["tests.fixtures.redis", "tests.fixtures.simulator", "tests.fixtures.stacks"]
