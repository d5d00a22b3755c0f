"""RehearsalWorkflow: one scheduled rehearsal of a tabletop scenario, and its result in the playbook's channel.

A Temporal Schedule (``unship rehearse schedule``) starts it on a cadence. The ``run_rehearsal`` activity runs
the scenario in-process on a time-skipping server of its own (so a day-long incident replays in seconds and
touches no real system); the result goes to the playbook's channel as a ``rehearsal`` message.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import MessageKind, MessageRef, Notification
    from workflows.base import EVIDENCE_RETRY


class RehearsalInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario_path: str = Field(description="scenario file, read by the worker at run time")
    schedule_id: str | None = None


class RehearsalSummary(BaseModel):
    """What a rehearsal found (also the workflow's result)."""

    model_config = ConfigDict(extra="forbid")

    scenario: str
    playbook: str = ""
    channel: str = "#unship-rehearsals"
    release: str = ""
    outcome: str | None = None
    passed: bool = False
    figures: dict[str, Any] = Field(default_factory=dict)
    expectations: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None
    templates: dict[str, str] = Field(default_factory=dict)


@workflow.defn
class RehearsalWorkflow:
    @workflow.run
    async def run(self, input: RehearsalInput) -> RehearsalSummary:
        try:
            summary: RehearsalSummary = await workflow.execute_activity(
                "run_rehearsal", input, result_type=RehearsalSummary,
                start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as err:
            summary = RehearsalSummary(scenario=input.scenario_path, error=str(err.cause or err))
        context = {
            "incident_id": f"rehearsal:{summary.scenario}:{workflow.info().workflow_id}",
            "playbook": summary.playbook or "?", "scenario_name": summary.scenario, "release": summary.release,
            "outcome": summary.outcome, "reason": summary.error or ("all expectations passed" if summary.passed
                                                                    else "some expectations FAILED"),
            "metrics": [{"name": k, "value": v} for k, v in summary.figures.items()],
            "expectations": summary.expectations, "stages": [],
        }
        try:
            await workflow.execute_activity(
                "notify", Notification(incident_id=context["incident_id"], kind=MessageKind.REHEARSAL,
                                       channel=summary.channel, context=context,
                                       template_overrides=summary.templates),
                result_type=MessageRef, start_to_close_timeout=timedelta(seconds=30), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning("rehearsal result of %s not posted: %s", summary.scenario, err)
        return summary
