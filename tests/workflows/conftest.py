"""A rollback "world" on the time-skipping server: the real workflows and the real activities class, over
scripted signals, an in-memory flag system that records every write, the log notifier and a SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.world import World, running_world


@pytest.fixture
async def world(time_skipping_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[World]:
    async with running_world(time_skipping_env, tmp_path) as world:
        yield world


