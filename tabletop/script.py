"""TabletopScriptWorkflow: the people of a tabletop exercise, acting on workflow time.

The script runs next to the incident workflow on the same (time-skipping) server. Each step waits until its
moment (an absolute time from the scenario's start, or a delay after a gate opened, which the tabletop chat
reports through ``gate_seen``), then acts through the ``tabletop_act`` activity exactly as a person would.
Timers on the server make the timing exact however fast simulated time runs. The script ends when the
scenario's duration is over (or the runner ends it when the incident closed first).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from tabletop.world import ActRequest, GateSeen, TabletopActivities


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScriptStep(_Model):
    index: int
    action: str
    user: str = "operator"
    reason: str = ""
    groups: list[str] = Field(default_factory=list)
    at_s: float | None = Field(default=None, description="seconds from the scenario start (server time)")
    after_s: float | None = Field(default=None, description="seconds after the gate of kind ``on`` opened")
    on: str = "decision"
    alert: dict[str, Any] | None = None
    regime: str | None = None
    reference: str = ""


class ScriptInput(_Model):
    workflow_id: str
    start: datetime
    duration_s: float
    steps: list[ScriptStep]


class StepLog(_Model):
    index: int
    action: str
    user: str
    at: datetime
    accepted: bool
    message: str


@workflow.defn
class TabletopScriptWorkflow:
    @workflow.init
    def __init__(self, input: ScriptInput) -> None:
        self._gates: dict[str, GateSeen] = {}
        self._log: list[StepLog] = []

    @workflow.signal
    def gate_seen(self, gate: GateSeen) -> None:
        """The first gate of each kind starts the clocks of the steps waiting on it."""
        self._gates.setdefault(gate.kind, gate)

    @workflow.query
    def log(self) -> list[StepLog]:
        return self._log

    @workflow.run
    async def run(self, input: ScriptInput) -> list[StepLog]:
        tasks = [asyncio.create_task(self._step(input, step)) for step in input.steps]
        end = input.start + timedelta(seconds=input.duration_s)
        remaining = end - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining)
        for task in tasks:
            task.cancel()
        # Only the runner's wait on the incident lets time skip, so the script ends an incident that
        # outlives the scenario (the runner reads its status and reports "still running").
        await workflow.execute_activity_method(
            TabletopActivities.act, ActRequest(workflow_id=input.workflow_id, action="end", user="tabletop"),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3))
        return self._log

    async def _step(self, input: ScriptInput, step: ScriptStep) -> None:
        if step.at_s is not None:
            when = input.start + timedelta(seconds=step.at_s)
        else:
            await workflow.wait_condition(lambda: step.on in self._gates)
            when = self._gates[step.on].at + timedelta(seconds=step.after_s or 0)
        delay = when - workflow.now()
        if delay > timedelta(0):
            await workflow.sleep(delay)
        result = await workflow.execute_activity_method(
            TabletopActivities.act,
            ActRequest(workflow_id=input.workflow_id, action=step.action, user=step.user, reason=step.reason,
                       groups=step.groups, alert=step.alert, regime=step.regime, reference=step.reference),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3),
        )
        self._log.append(StepLog(index=step.index, action=step.action, user=step.user, at=workflow.now(),
                                 accepted=result.accepted, message=result.message))
