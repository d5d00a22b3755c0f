"""A workflow that logs must never get stuck, whatever logging the CLI configured (issue: RichHandler imported
rich lazily inside Temporal's sandbox, the workflow task failed on every retry and the incident hung)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from temporalio import workflow

with workflow.unsafe.imports_passed_through():  # this test module is also the workflow's module
    import pytest
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from tests.support.playbooks import snapshot
    from tests.support.stack import make_settings
    from tests.support.world import make_world
    from workers.cli.common import configure_logging
    from workers.runtime.settings import Settings
    from workers.runtime.worker import run_worker
    from workflows.messages import IncidentStatus, Outcome
    from workflows.sandbox import workflow_runner


@workflow.defn(sandboxed=True)
class LoggingWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        workflow.logger.error("logged from a workflow: %s", text)
        workflow.logger.warning("and a warning")
        return text


@pytest.fixture(params=["text", "json"])
def cli_logging(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's logging in each format (``UNSHIP_LOG_FORMAT``); on a terminal text goes through rich."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.setenv("UNSHIP_LOG_FORMAT", request.param)
    configure_logging(Settings())
    try:
        yield
    finally:
        root.handlers[:], root.level = saved


@pytest.mark.usefixtures("cli_logging")
async def test_a_workflow_that_logs_completes_under_the_cli_logging(time_skipping_env: WorkflowEnvironment) -> None:
    queue = f"logging-{uuid.uuid4().hex[:6]}"
    async with Worker(time_skipping_env.client, task_queue=queue, workflows=[LoggingWorkflow],
                      workflow_runner=workflow_runner()):
        result = await time_skipping_env.client.execute_workflow(
            LoggingWorkflow.run, "hello", id=f"logging-{uuid.uuid4().hex[:6]}", task_queue=queue,
            execution_timeout=timedelta(seconds=30))
    assert result == "hello"


class _BrokenStore:
    """An incident store that refuses every write: the workflow logs that its audit projection is behind."""

    def __init__(self, store: object) -> None:
        self.store = store

    async def write(self, batch: object) -> None:
        raise ConnectionError("incident store unavailable")

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


@pytest.mark.usefixtures("cli_logging")
async def test_a_real_incident_whose_store_fails_still_closes_under_the_cli_logging(
        time_skipping_env: WorkflowEnvironment, tmp_path: Path) -> None:
    made = await make_world(time_skipping_env, tmp_path)
    made.activities.store = _BrokenStore(made.world.store)  # type: ignore[assignment]
    settings = make_settings(tmp_path, task_queue=made.world.task_queue)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(time_skipping_env.client, settings, made.activities, stop))
    try:
        made.world.signals.timeline = {"hallucinations": [80, 12, 11, 10, 9], "latency_p95": [1.0]}
        handle = await made.world.start(snapshot(), release="logs-v1")
        # bounded: a stuck workflow task would otherwise wait forever (that was the defect)
        status: IncidentStatus = await asyncio.wait_for(handle.result(), timeout=60)
    finally:
        stop.set()
        await worker
    assert status.outcome is Outcome.DISMISSED
    assert any(e.kind == "audit_store_failed" for e in status.audit)
