"""ReviewWorkflow: the post-incident review, a child that outlives the rollback.

It renders the review document from the full timeline, records the review tasks with owners and due dates,
and keeps durable reminders for the regulatory report deadline and the purge of the bad release's outputs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        AuditBatch,
        AuditEvent,
        IncidentActivities,
        MessageKind,
        Notification,
        ReviewDocument,
        ReviewRequest,
    )
    from playbooks.models import format_duration
    from workflows.base import ACTION_DEADLINE, ACTION_RETRY, EVIDENCE_RETRY
    from workflows.messages import ReviewInput, ReviewStatus, incident_record


# The review numbers its audit events in a range of their own, so they never collide with events the parent
# rollback records after starting it (the store keys events by incident and sequence number).
REVIEW_SEQ_BASE = 1_000_000


@workflow.defn
class ReviewWorkflow:
    @workflow.init
    def __init__(self, input: ReviewInput) -> None:
        self._status = ReviewStatus(incident_id=input.incident_id)
        self._seq = 0
        self._pending: list[AuditEvent] = []

    @workflow.query
    def status(self) -> ReviewStatus:
        return self._status

    @workflow.run
    async def run(self, input: ReviewInput) -> ReviewStatus:
        playbook = input.snapshot.playbook
        started = input.status.started_at
        self._status.tasks = [
            {"title": t.title, "owner": t.owner, "owners": sorted(playbook.members([t.owner])[0]),
             "due": (started + t.due).isoformat()}
            for t in playbook.review.tasks
        ]
        status = input.status.model_dump(mode="json")
        status["playbook"] = playbook.model_dump(mode="json")
        status["review_tasks"] = self._status.tasks
        deadlines = self._deadlines(input, started)
        status["deadlines"] = [{"what": what, "at": at.isoformat()} for at, what, _ in deadlines]
        doc: ReviewDocument = await workflow.execute_activity_method(
            IncidentActivities.write_review, ReviewRequest(incident_id=input.incident_id, status=status,
                                          template=playbook.review.template),
            start_to_close_timeout=timedelta(minutes=1), retry_policy=ACTION_RETRY,
            schedule_to_close_timeout=ACTION_DEADLINE,
        )
        self._status.document_written = bool(doc.markdown)
        await self._record(input, "review_written",
                           f"review document written with {len(self._status.tasks)} task(s)")
        for at, what, message in deadlines:
            delay = at - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
            await self._remind(input, what, message)
        return self._status

    def _deadlines(self, input: ReviewInput, started: datetime) -> list[tuple[datetime, str, str]]:
        review = input.snapshot.playbook.review
        release = input.status.release
        out: list[tuple[datetime, str, str]] = []
        if review.regulatory_report_due is not None:
            due = started + review.regulatory_report_due
            # Remind ahead of the deadline (a day, or half the time for short deadlines), then at it.
            ahead = min(timedelta(days=1), review.regulatory_report_due / 2)
            out.append((due - ahead, "regulatory_report_reminder",
                        f"regulatory report for release {release} is due in {format_duration(ahead)}"))
            out.append((due, "regulatory_report_due", f"regulatory report for release {release} is due now"))
        if review.purge_outputs_after is not None:
            out.append((started + review.purge_outputs_after, "purge_due",
                        f"retention deadline: purge the stored outputs of release {release}"))
        return sorted(out, key=lambda d: d[0])

    async def _remind(self, input: ReviewInput, what: str, message: str) -> None:
        comms = input.snapshot.playbook.communications
        try:
            await workflow.execute_activity_method(
                IncidentActivities.notify,
                Notification(incident_id=input.incident_id, kind=MessageKind.REMINDER, channel=comms.channel,
                             context={"incident_id": input.incident_id, "release": input.status.release,
                                      "playbook": input.status.playbook, "reason": message, "what": what},
                             template_overrides=comms.templates),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("reminder %s for %s could not be sent", what, input.incident_id)
        self._status.reminders_sent.append(what)
        await self._record(input, what, message)

    async def _record(self, input: ReviewInput, kind: str, message: str) -> None:
        self._seq += 1
        record = incident_record(input.status, input.snapshot.content_hash, workflow.now())
        event = AuditEvent(seq=REVIEW_SEQ_BASE + self._seq, at=workflow.now(), kind=kind, actor="unship-review",
                           message=message)
        self._pending.append(event)
        try:
            await workflow.execute_activity_method(
                IncidentActivities.record_audit, AuditBatch(incident=record, events=list(self._pending)),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=ACTION_RETRY,
                schedule_to_close_timeout=ACTION_DEADLINE,
            )
        except ActivityError as err:
            # The store is down past the deadline: keep the reminders going (they are the point of the
            # review) and carry the unrecorded events into the next write. The history keeps them meanwhile.
            workflow.logger.error("review of %s: incident store write failed, %d event(s) pending: %s",
                                  input.incident_id, len(self._pending), err.cause or err)
        else:
            self._pending.clear()
        self._status.audit_pending = len(self._pending)
