"""Program runs under Pulumi mocks, shared by the infra tests (each run takes about a second)."""

from __future__ import annotations

import pytest

from infra.mocking import ProgramRun, run_program


@pytest.fixture(scope="session")
def dev_run() -> ProgramRun:
    return run_program("dev")


@pytest.fixture(scope="session")
def staging_run() -> ProgramRun:
    return run_program("staging")


@pytest.fixture(scope="session")
def prod_run() -> ProgramRun:
    return run_program("prod")


@pytest.fixture(scope="session")
def stack_runs(dev_run: ProgramRun, staging_run: ProgramRun, prod_run: ProgramRun) -> dict:
    return {"dev": dev_run, "staging": staging_run, "prod": prod_run}
