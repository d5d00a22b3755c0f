"""RehearsalWorkflow: one scheduled rehearsal of a tabletop scenario, and its result in the playbook's channel.

A Temporal Schedule (``unship rehearse schedule``) starts it on a cadence. The ``run_rehearsal`` activity runs
the scenario in-process on a time-skipping server of its own (so a day-long incident replays in seconds and
touches no real system); the result goes to the playbook's channel as a ``rehearsal`` message.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import IncidentActivities, MessageKind, Notification
    from tabletop.rehearsal_run import RehearsalInput, RehearsalSummary, run_rehearsal
    from workflows.base import EVIDENCE_RETRY


@workflow.defn
class RehearsalWorkflow:
    @workflow.run
    async def run(self, input: RehearsalInput) -> RehearsalSummary:
        try:
            summary = await workflow.execute_activity(
                run_rehearsal, input,
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
            await workflow.execute_activity_method(
                IncidentActivities.notify, Notification(incident_id=context["incident_id"], kind=MessageKind.REHEARSAL,
                                       channel=summary.channel, context=context,
                                       template_overrides=summary.templates),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning("rehearsal result of %s not posted: %s", summary.scenario, err)
        return summary
