"""Chart tests use the real helm binary; a missing helm is a failure, never a skip."""

from __future__ import annotations

import pytest

from tests.charts.chart import helm_binary, run_helm


@pytest.fixture(scope="session", autouse=True)
def helm() -> str:
    binary = helm_binary()
    version = run_helm("version", "--short")
    assert version.returncode == 0, f"{binary} does not run: {version.stderr}"
    return binary
