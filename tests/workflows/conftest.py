"""A rollback "world" on the time-skipping server: the real workflows and the real activities class, over
scripted signals, an in-memory flag system that records every write, the log notifier and a SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.support.world import WORKFLOWS, World, make_world
from workflows.sandbox import workflow_runner


@pytest.fixture
async def world(time_skipping_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[World]:
    made = await make_world(time_skipping_env, tmp_path)
    async with Worker(time_skipping_env.client, task_queue=made.world.task_queue, workflows=WORKFLOWS,
                      workflow_runner=workflow_runner(),
                      activities=made.activities.all()):
        yield made.world
        await made.world.terminate_leftovers()


