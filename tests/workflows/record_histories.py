"""Record the workflow histories that the replay test keeps replayable.

Run it only when a deliberate, versioned change (``workflow.patched``) needs a new saved history, never to
"fix" a failing replay test: a failing replay means in-flight incidents would break on deploy.

    .venv/bin/python -m tests.workflows.record_histories
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.support.playbooks import snapshot
from tests.workflows.conftest import WORKFLOWS, make_world
from workflows.messages import DecisionRequest, Phase, Verdict
from workflows.rollback import RollbackWorkflow

HISTORIES = Path(__file__).parent / "histories"
SUSTAINED = {"hallucinations": [55, 61, 70, 72, 75], "latency_p95": [1.2], "fairness_gap": [0.02]}


async def record() -> None:
    binary = shutil.which("temporal-test-server") or str(Path(sys.executable).parent / "temporal-test-server")
    env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                       test_server_existing_path=binary)
    async with env:
        with tempfile.TemporaryDirectory() as tmp:
            made = await make_world(env, Path(tmp))
            world = made.world
            async with Worker(env.client, task_queue=world.task_queue, workflows=WORKFLOWS,
                              activities=made.activities.all()):
                world.signals.timeline = SUSTAINED
                approved = await world.start(snapshot(), release="approved-v1")
                await world.at_phase(approved, Phase.AWAITING_DECISION)
                await approved.execute_update(RollbackWorkflow.decide, DecisionRequest(
                    user="U_SAFETY", verdict=Verdict.APPROVE, reason="recorded history"))
                await approved.result()

                world.signals.timeline = {"hallucinations": [80, 12, 11, 10, 9], "latency_p95": [1.0]}
                dismissed = await world.start(snapshot(), release="dismissed-v1")
                await dismissed.result()

                world.signals.timeline = SUSTAINED
                escalated = await world.start(snapshot(), release="escalated-v1")
                await escalated.result()
                for name, handle in (("approved_staged_revert", approved), ("transient_dismissed", dismissed),
                                     ("timeout_escalation_default", escalated)):
                    history = await handle.fetch_history()
                    saved = {"workflow_id": handle.id, "history": json.loads(history.to_json())}
                    (HISTORIES / f"rollback_{name}.json").write_text(json.dumps(saved, indent=1))
                    print(f"saved {name}: {len(history.events)} events")
                await world.terminate_leftovers()


if __name__ == "__main__":
    asyncio.run(record())
