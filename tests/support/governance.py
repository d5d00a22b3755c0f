"""A running review with governance due in seconds, on the session's dev server: the fixture of the governance
API and attack tests (a closed incident's review whose purge of 250 outputs is due 2 s after it starts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from tabletop.learning import advise
from tests.support.playbooks import snapshot
from tests.workflows.test_governance import GOVERNED, incident, outputs_db
from workers.runtime.settings import Settings
from workflows.messages import ReviewInput
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.review import ReviewWorkflow
from workflows.sandbox import workflow_runner

FAST = {**GOVERNED,
        "data": {**GOVERNED["data"], "retain": "1s", "purge": {"after": "2s", "approvers": ["legal", "privacy"]}},
        "regulatory": {"active_users": 500, "reports": [{"regime": "gdpr_breach"}]},
        "review": {"tracker": {"kind": "store"}, "regulatory_report_due": None, "purge_outputs_after": None}}


@contextlib.asynccontextmanager
async def governed_review(env: WorkflowEnvironment, settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """Start the review (a worker on ``settings``' task queue, outputs in ``tmp_path/answers.db``, the incident
    store in the state dir); yields the review's workflow id, unique to ``tmp_path``."""
    os.environ["GOV_OUTPUTS_DSN"] = outputs_db(tmp_path / "answers.db")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteIncidentStore(settings.state_dir / "unship.db")
    activities = RollbackActivities(ScriptedFlagProvider(), ScriptedSignalSource({}), LogNotifier(), store,
                                    advisor=advise)
    status = incident(await env.get_current_time())
    workflow_id = f"{status.incident_id}:review:{tmp_path.name[-8:]}"
    async with Worker(env.client, task_queue=settings.task_queue, workflows=INCIDENT_WORKFLOWS,
                      activities=activities.all(), workflow_runner=workflow_runner()):
        await env.client.start_workflow(
            ReviewWorkflow.run, ReviewInput(incident_id=status.incident_id, snapshot=snapshot(**FAST), status=status),
            id=workflow_id, task_queue=settings.task_queue)
        yield workflow_id
        with contextlib.suppress(Exception):  # it may have completed
            await env.client.get_workflow_handle(workflow_id).terminate("test over")


async def until(client: httpx.AsyncClient, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET ``path`` until its JSON answer satisfies ``done`` (a bounded wait: 30 s)."""
    body: dict[str, Any] = {}
    for _ in range(300):
        body = (await client.get(path)).json()
        if done(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never reached the expected state: {body}")
