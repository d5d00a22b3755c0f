"""A test world for the incident workflows: scripted signals and flags, the real activities, a worker on the
time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.contracts import FlagProvider
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from playbooks.models import PlaybookSnapshot
from tests.support.temporal import SIMULATED_LIMIT, workflow_result
from workflows.messages import Alert, AlertBatch, IncidentStatus, Phase, RollbackInput, incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.review import ReviewWorkflow
from workflows.rollback import RollbackWorkflow
from workflows.sandbox import workflow_runner

WORKFLOWS = INCIDENT_WORKFLOWS


@dataclass
class World:
    env: WorkflowEnvironment
    task_queue: str
    flags: ScriptedFlagProvider
    signals: ScriptedSignalSource
    chat: LogNotifier
    store: SqliteIncidentStore
    handles: list[WorkflowHandle] = field(default_factory=list)

    async def start(self, snapshot: PlaybookSnapshot, release: str = "chat-v2", *,
                    alert: Alert | None = None, **input_fields: Any) -> WorkflowHandle:
        """Signal-with-start, exactly as the gateway does it."""
        alert = alert or Alert(source="test", name="GenAIQualityDegraded", fingerprint="fp-1",
                               labels={"alertname": "GenAIQualityDegraded", "release": release})
        handle = await self.env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(snapshot=snapshot, release=release, **input_fields),
            id=incident_id(snapshot.playbook.name, release) + f":{uuid.uuid4().hex[:6]}",
            task_queue=self.task_queue,
            start_signal="alerts",
            start_signal_args=[AlertBatch(alerts=[alert])],
            execution_timeout=SIMULATED_LIMIT,
        )
        self.handles.append(handle)
        return handle

    async def result(self, handle: WorkflowHandle) -> Any:
        """The workflow's result, bounded (see ``tests/support/temporal.py``): a workflow that never ends fails
        the test and is terminated, so the shared time-skipping server keeps skipping for the next test."""
        return await workflow_result(handle)

    async def status(self, handle: WorkflowHandle) -> IncidentStatus:
        return await handle.query(RollbackWorkflow.status)

    async def until(self, handle: WorkflowHandle, done: Callable[[IncidentStatus], bool],
                    step: timedelta = timedelta(seconds=30), limit: timedelta = timedelta(hours=2)) -> IncidentStatus:
        """Skip simulated time in steps until ``done(status)`` holds."""
        waited = timedelta(0)
        while True:
            status = await self.status(handle)
            if done(status):
                return status
            if waited >= limit:
                raise AssertionError(f"still {status.phase.value} after {limit} of simulated time: "
                                     + "; ".join(e.message for e in status.audit[-5:]))
            await self.env.sleep(step)
            waited += step

    async def at_phase(self, handle: WorkflowHandle, phase: Phase) -> IncidentStatus:
        return await self.until(handle, lambda s: s.phase is phase)

    def writes(self) -> list[float]:
        return [w.percent for w in self.flags.writes]

    async def terminate_leftovers(self) -> None:
        """End what a test left running (reviews wait weeks for their deadlines).

        On the shared time-skipping server a workflow whose worker is gone would hold its timers' tasks
        forever and stop time from skipping for every later test.
        """
        ids = {h.id for h in self.handles}
        for handle in self.handles:
            try:
                status = await handle.query(RollbackWorkflow.status)
                if status.review_workflow_id:
                    ids.add(status.review_workflow_id)
                    await self._until_idle(status.review_workflow_id)
            except Exception:  # noqa: BLE001 - a failed or never-started workflow has nothing to add
                pass
        for wf_id in ids:
            try:
                await self.env.client.get_workflow_handle(wf_id).terminate("test finished")
            except Exception:  # noqa: BLE001 - already completed
                pass


    async def _until_idle(self, review_id: str) -> None:
        """Wait (real time, briefly) until a review has written its document and waits on a timer: the
        time-skipping server stops skipping time for good when a run is terminated with an activity in
        flight (sdk-java#3088), which would stall every later test on the shared server."""
        handle = self.env.client.get_workflow_handle(review_id)
        for _ in range(100):
            described = await handle.describe()
            status = await handle.query(ReviewWorkflow.status)
            if status.document_written and not described.raw_description.pending_activities:
                return
            await asyncio.sleep(0.05)


@dataclass
class _Made:
    world: World
    activities: RollbackActivities


async def make_world(env: WorkflowEnvironment, tmp_path: Path, flags: FlagProvider | None = None) -> _Made:
    scripted_flags = ScriptedFlagProvider()
    signals = ScriptedSignalSource({})
    chat = LogNotifier()
    store = SqliteIncidentStore(tmp_path / "unship.db")
    world = World(env=env, task_queue=f"tq-{uuid.uuid4().hex[:8]}", flags=scripted_flags, signals=signals,
                  chat=chat, store=store)
    activities = RollbackActivities(flags=flags or scripted_flags, signals=signals, chat=chat, store=store,
                                    review_dir=tmp_path / "reviews")
    return _Made(world, activities)


@asynccontextmanager
async def running_world(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[World]:
    """A world with its worker running; leftover workflows are terminated on the way out."""
    made = await make_world(env, tmp_path)
    async with Worker(env.client, task_queue=made.world.task_queue, workflows=WORKFLOWS,
                      workflow_runner=workflow_runner(), activities=made.activities.all()):
        yield made.world
        await made.world.terminate_leftovers()
