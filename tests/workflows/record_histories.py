"""Record the workflow histories that the replay test keeps replayable.

Run it only when a deliberate, versioned change (``workflow.patched``) needs a new saved history, never to
"fix" a failing replay test: a failing replay means in-flight incidents would break on deploy.

    .venv/bin/python -m tests.workflows.record_histories PREFIX

PREFIX names the code generation (``v3`` for the typed-reference layout); earlier files are never overwritten.
With ``--sequential`` only the ``method: sequential`` incidents are recorded (a confirmed one and a dismissed
one), under ``PREFIX_rollback_sequential_*``. With ``--governance`` only a governed review is recorded
(``PREFIX_review_governed``): reports submitted, a legal hold, the purge approved during it, the hold released,
the outputs purged in batches, the review closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.routing import hold_key
from tests.support.playbooks import sequential_snapshot, snapshot
from tests.support.world import World, running_world
from tests.workflows.test_governance import GOVERNED, incident, outputs_db
from workflows.messages import (
    Action,
    ActionRefusal,
    Command,
    DecisionRequest,
    GovernanceRefusal,
    GovernanceRequest,
    OperatorCommand,
    Phase,
    ReleaseInput,
    ReviewInput,
    Verdict,
)
from workflows.release import ReleaseWorkflow, release_id
from workflows.review import ReviewWorkflow
from workflows.rollback import RollbackWorkflow

HISTORIES = Path(__file__).parent / "histories"
SUSTAINED = {"hallucinations": [55, 61, 70, 72, 75], "latency_p95": [1.2], "fairness_gap": [0.02]}


@asynccontextmanager
async def recording_world() -> AsyncIterator[World]:
    """A world with its worker on a time-skipping server of its own (histories start from an empty server)."""
    binary = shutil.which("temporal-test-server") or str(Path(sys.executable).parent / "temporal-test-server")
    env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                       test_server_existing_path=binary)
    async with env:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_world(env, Path(tmp)) as world:
                yield world


async def record(prefix: str) -> None:
    async with recording_world() as world:
        world.signals.timeline = SUSTAINED
        # a hold left by an incident whose workflow is gone: the approved incident takes it over
        await world.store.hold_targets("unship:chat-test:gone-v0",
                                       [hold_key(t) for t in snapshot().playbook.rollback.targets])
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

        # decision rights: a per-role gate, a refused raw signal, a refusal reported back, pause/resume
        # and revert-now through the operate update
        rights = await world.start(snapshot(decision={"quorum": 2, "require": {"on_call": 1,
                                                                               "safety_lead": 1}}),
                                   release="rights-v1")
        await world.at_phase(rights, Phase.AWAITING_DECISION)
        await rights.signal(RollbackWorkflow.revert_all_now, Command(by="intern", reason="skip the gate"))
        await rights.signal(RollbackWorkflow.refused, ActionRefusal(user="intern", action="abort",
                                                                    refusal="holds no role"))
        await rights.execute_update(RollbackWorkflow.decide, DecisionRequest(
            user="U_SAFETY", verdict=Verdict.APPROVE, reason="recorded history"))
        await rights.execute_update(RollbackWorkflow.operate, OperatorCommand(
            action=Action.PAUSE, user="U_ONCALL", reason="recorded history"))
        await rights.execute_update(RollbackWorkflow.operate, OperatorCommand(
            action=Action.RESUME, user="U_ONCALL"))
        await rights.execute_update(RollbackWorkflow.operate, OperatorCommand(
            action=Action.REVERT_NOW, user="U_SAFETY", reason="recorded history"))
        await rights.result()

        # alert to first cohort: the target hold, then one write that checks the served release, reads the split
        # and compares-and-sets (check_release + forward_only); from 0%, over an earlier incident's 60% (skips),
        # and on a flag serving another release (nothing written until a person approves)
        world.signals.timeline = SUSTAINED
        world.flags.served = {"flag:flagd:chat-model": "automatic-v1"}
        world.flags.state["flag:flagd:chat-model"] = 0  # the incidents above left it at 100%
        automatic = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}),
                                      release="automatic-v1")
        await automatic.result()
        world.flags.served = {}
        world.flags.state["flag:flagd:chat-model"] = 60
        skipped = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}),
                                    release="skipped-v1")
        await skipped.result()
        world.flags.served = {"flag:flagd:chat-model": "someone-else-v9"}
        world.flags.state["flag:flagd:chat-model"] = 0
        mismatch = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}),
                                     release="mismatch-v1")
        await world.at_phase(mismatch, Phase.AWAITING_DECISION)
        await mismatch.execute_update(RollbackWorkflow.decide, DecisionRequest(
            user="U_SAFETY", verdict=Verdict.APPROVE, reason="recorded history"))
        await mismatch.result()
        world.flags.served = {}

        world.signals.timeline = {"hallucinations": [10], "latency_p95": [1.0]}
        released = await world.env.client.start_workflow(
            ReleaseWorkflow.run, ReleaseInput(snapshot=snapshot(), release="fixed-v2", bake_seconds=60),
            id=release_id("chat-test", "fixed-v2"), task_queue=world.task_queue)
        await released.result()
        status = await approved.query(RollbackWorkflow.status)
        assert status.review_workflow_id is not None
        review = world.env.client.get_workflow_handle(status.review_workflow_id)
        await review.terminate(reason="recorded after the review document was written")

        saved_handles = (("rollback_approved_staged_revert", approved),
                         ("rollback_rights_operate", rights),
                         ("rollback_transient_dismissed", dismissed),
                         ("rollback_timeout_escalation_default", escalated),
                         ("rollback_automatic_first_write", automatic),
                         ("rollback_first_write_skips", skipped),
                         ("rollback_first_write_release_mismatch", mismatch),
                         ("release_staged", released), ("review_written", review))
        for name, handle in saved_handles:
            history = await handle.fetch_history()
            saved = {"workflow_id": handle.id, "history": json.loads(history.to_json())}
            target = HISTORIES / f"{prefix}_{name}.json"
            if target.exists():
                raise SystemExit(f"{target} exists: saved histories are never overwritten")
            target.write_text(json.dumps(saved, indent=1))
            print(f"saved {target.name}: {len(history.events)} events")
        await world.terminate_leftovers()


async def record_sequential(prefix: str) -> None:
    """A sequential confirmation that confirms (then is approved) and one that is dismissed."""

    async with recording_world() as world:
        world.signals.samples = {"hallucinations": [20_000]}
        world.signals.timeline = {"hallucinations": [60.0], "latency_p95": [1.0], "fairness_gap": [0.01]}
        confirmed = await world.start(sequential_snapshot(), release="sequential-v1")
        await world.at_phase(confirmed, Phase.AWAITING_DECISION)
        await confirmed.execute_update(RollbackWorkflow.decide, DecisionRequest(
            user="U_SAFETY", verdict=Verdict.APPROVE, reason="recorded history"))
        await confirmed.result()
        world.signals.timeline = {"hallucinations": [300.0, 29.0], "latency_p95": [1.0],
                                  "fairness_gap": [0.01]}
        dismissed = await world.start(sequential_snapshot(), release="sequential-spike-v1")
        await dismissed.result()
        for name, handle in (("rollback_sequential_confirmed", confirmed),
                             ("rollback_sequential_dismissed", dismissed)):
            history = await handle.fetch_history()
            target = HISTORIES / f"{prefix}_{name}.json"
            if target.exists():
                raise SystemExit(f"{target} exists: saved histories are never overwritten")
            saved = {"workflow_id": handle.id, "history": json.loads(history.to_json())}
            target.write_text(json.dumps(saved, indent=1))
            print(f"saved {target.name}: {len(history.events)} events")
        await world.terminate_leftovers()


async def record_governance(prefix: str) -> None:
    """A governed review from its start to its close (issue #14), on the store tracker."""
    target = HISTORIES / f"{prefix}_review_governed.json"
    if target.exists():
        raise SystemExit(f"{target} exists: saved histories are never overwritten")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GOV_OUTPUTS_DSN"] = outputs_db(Path(tmp) / "answers.db")
        async with recording_world() as world:
            env = world.env
            governed = {**GOVERNED, "review": {**GOVERNED["review"], "tracker": {"kind": "store"}}}
            status = incident(await env.get_current_time())
            review = await env.client.start_workflow(
                ReviewWorkflow.run, ReviewInput(incident_id=status.incident_id, snapshot=snapshot(**governed),
                                                status=status),
                id=f"{status.incident_id}:review", task_queue=world.task_queue)
            await env.sleep(timedelta(hours=1))
            for regime in ("gdpr_breach", "eu_ai_act_serious_incident", "internal_risk_committee"):
                await review.execute_update(ReviewWorkflow.submit_report, GovernanceRequest(
                    user="U_COMPLIANCE", regime=regime, reference="recorded history"))
            await review.execute_update(ReviewWorkflow.legal_hold, GovernanceRequest(
                user="U_LEGAL", reason="recorded history"))
            await review.signal(ReviewWorkflow.governance_refused, GovernanceRefusal(
                action="approve_purge", user="U_ONCALL", via="api", refusal="holds none of the roles"))
            await env.sleep(timedelta(days=30))
            await review.execute_update(ReviewWorkflow.approve_purge, GovernanceRequest(
                user="U_PRIVACY", reason="recorded history"))
            await review.execute_update(ReviewWorkflow.release_legal_hold, GovernanceRequest(
                user="U_LEGAL", reason="recorded history"))
            await review.result()
            history = await review.fetch_history()
            target.write_text(json.dumps({"workflow_id": review.id, "history": json.loads(history.to_json())},
                                         indent=1))
            print(f"saved {target.name}: {len(history.events)} events")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("--sequential", "--governance")]
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.workflows.record_histories PREFIX [--sequential | --governance]"
                         "   (e.g. v3)")
    if "--governance" in sys.argv:
        asyncio.run(record_governance(args[0]))
    else:
        asyncio.run(record_sequential(args[0]) if "--sequential" in sys.argv else record(args[0]))
