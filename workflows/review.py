"""ReviewWorkflow: the post-incident review, a child that outlives the rollback.

It renders the review document from the full timeline and keeps the incident's governance going for as long
as it takes (``docs/governance.md``):

- **provenance**: what the release served (model, prompt, adapter, dataset), from the alerts and the playbook;
- **retention and purge**: the release's outputs are counted and kept for the retention period; at the purge
  deadline a dry run counts what would go, the playbook's approver roles approve (``approve_purge``), a legal
  hold (``legal_hold`` / ``release_legal_hold``; not the incident's *target holds*) blocks deletion until released,
  and the deletion runs in bounded batches
  with the counts before and after on the audit trail;
- **regulatory reports**: one draft per regime the playbook names, a deadline counted from detection,
  reminders to the approver roles ahead of and at it, and who submitted it when (``submit_report``);
- **tasks**: created in the playbook's tracker (GitHub, Jira) and polled until done, overdue ones reminded;
- **learning loop**: when each signal first crossed, when the playbook confirmed, and the threshold advisor's
  proposal as a playbook diff.

Every governance update has a validator that refuses the wrong person or the wrong moment before anything is
written to history; the client reports the refusal back (``governance_refused``) so the audit has it.
Histories recorded before governance existed replay on the old path (``workflow.patched``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, RetryState

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        AuditBatch,
        AuditEvent,
        IncidentActivities,
        Lesson,
        LessonRequest,
        MessageKind,
        Notification,
        OutputsRequest,
        OutputsResult,
        ReportDraft,
        ReportRequest,
        ReviewDocument,
        ReviewRequest,
        TasksRequest,
        TasksResult,
        TaskStatesRequest,
        TrackedTask,
        TrackerTask,
    )
    from playbooks.models import Playbook, Regime, TrackerKind, format_duration
    from workflows.base import ACTION_DEADLINE, ACTION_RETRY, EVIDENCE_RETRY, _cause
    from workflows.governance import first_crossing, polls, provenance, report_context, tags, task_key
    from workflows.messages import (
        GovernanceRefusal,
        GovernanceRequest,
        GovernanceResult,
        LegalHold,
        PurgeState,
        PurgeStatus,
        ReportStatus,
        ReviewInput,
        ReviewStatus,
        incident_record,
    )

GOVERNANCE_PATCH = "review-governance-v1"
"""Reviews started before governance existed keep replaying the old command sequence."""

FLUSH_PATCH = "review-flush-new-events"
"""A write that succeeded while new events arrived (a refusal, an approval) writes them next, instead of
backing off as if the store were down (reviews recorded before this keep their timer)."""


# The review numbers its audit events in a range of their own, so they never collide with events the parent
# rollback records after starting it (the store keys events by incident and sequence number).
REVIEW_SEQ_BASE = 1_000_000


@workflow.defn
class ReviewWorkflow:
    @workflow.init
    def __init__(self, input: ReviewInput) -> None:
        self._input = input
        self._playbook: Playbook = input.snapshot.playbook
        self._status = ReviewStatus(incident_id=input.incident_id)
        self._seq = 0
        self._pending: list[AuditEvent] = []
        self._lock = asyncio.Lock()
        self._purge_gate_open = False
        self._tracked: list[TrackedTask] = []
        self._task_specs: list[TrackerTask] = []
        self._finishing = False

    @workflow.query
    def status(self) -> ReviewStatus:
        return self._status

    # --- governance updates (validated before history) ------------------------------------------------------

    def _has_role(self, request: GovernanceRequest, roles: list[str]) -> bool:
        """Does the verified person in ``request`` (user id and groups from the API's identity) hold one of ``roles``?"""
        return bool(set(self._playbook.roles_of(request.user, request.groups)) & set(roles))

    @workflow.update
    def approve_purge(self, request: GovernanceRequest) -> GovernanceResult:
        """Approve deleting the release's outputs (the dry run's counts are in the status)."""
        purge = self._status.purge
        assert purge is not None
        purge.approvals.append(request.user)
        self._event("purge_approved", f"{request.user} approved the purge via {request.via}"
                    + (f": {request.reason}" if request.reason else ""), actor=request.user,
                    approvals=len(purge.approvals), quorum=purge.quorum)
        remaining = purge.quorum - len(purge.approvals)
        if remaining > 0:
            return GovernanceResult(accepted=True, message=f"approval recorded; {remaining} more needed")
        held = self._status.legal_hold is not None
        return GovernanceResult(accepted=True, message="approved" + (" (a legal hold still blocks it)" if held else ""))

    @approve_purge.validator
    def _validate_approve_purge(self, request: GovernanceRequest) -> None:
        purge = self._status.purge
        if purge is None or purge.due is None:
            raise ValueError("this incident's playbook configures no purge")
        if not self._purge_gate_open:
            raise ValueError(f"no purge approval is open (purge state: {purge.state.value}, due {purge.due.isoformat()})")
        if request.user in purge.approvals:
            raise ValueError(f"{request.user} has already approved the purge")
        if not self._has_role(request, purge.roles):
            raise ValueError(f"{request.user} holds none of the roles that may approve the purge "
                             f"({', '.join(purge.roles)})")

    @workflow.update
    def legal_hold(self, request: GovernanceRequest) -> GovernanceResult:
        """Place a legal hold: nothing is purged until it is released."""
        self._status.legal_hold = LegalHold(by=request.user, reason=request.reason, at=workflow.now())
        if self._status.purge is not None and self._status.purge.state is PurgeState.AWAITING_APPROVAL:
            self._status.purge.state = PurgeState.LEGAL_HOLD
        self._event("legal_hold", f"legal hold placed by {request.user} via {request.via}: {request.reason}",
                    actor=request.user)
        return GovernanceResult(accepted=True, message="legal hold placed: the purge is blocked until released")

    @legal_hold.validator
    def _validate_legal_hold(self, request: GovernanceRequest) -> None:
        if not request.reason.strip():
            raise ValueError("a legal hold needs a reason (--reason)")
        if self._status.legal_hold is not None:
            raise ValueError(f"a legal hold is already in place (by {self._status.legal_hold.by}: {self._status.legal_hold.reason})")
        purge = self._status.purge
        if purge is not None and purge.state in (PurgeState.PURGING, PurgeState.PURGED):
            raise ValueError(f"the outputs are already {purge.state.value}; nothing is left to hold")

    @workflow.update
    def release_legal_hold(self, request: GovernanceRequest) -> GovernanceResult:
        """Release the legal hold; an approved purge then proceeds."""
        self._status.legal_hold = None
        if self._status.purge is not None and self._status.purge.state is PurgeState.LEGAL_HOLD:
            self._status.purge.state = PurgeState.AWAITING_APPROVAL
        self._event("legal_hold_released", f"legal hold released by {request.user} via {request.via}: "
                    f"{request.reason}", actor=request.user)
        return GovernanceResult(accepted=True, message="legal hold released")

    @release_legal_hold.validator
    def _validate_release_legal_hold(self, request: GovernanceRequest) -> None:
        if self._status.legal_hold is None:
            raise ValueError("there is no legal hold to release")
        if not request.reason.strip():
            raise ValueError("releasing a legal hold needs a reason (--reason)")
        roles = self._release_roles()
        if not self._has_role(request, roles):
            raise ValueError(f"{request.user} holds none of the roles that may release a legal hold "
                             f"({', '.join(roles)})")

    def _release_roles(self) -> list[str]:
        data = self._playbook.data
        if data and data.legal_hold_releasers:
            return list(data.legal_hold_releasers)
        return list(data.purge.approvers) if data and data.purge else sorted(self._playbook.roles)

    @workflow.update
    def submit_report(self, request: GovernanceRequest) -> GovernanceResult:
        """Record that a person of the report's approver roles approved and submitted it."""
        report = self._report(request.regime)
        assert report is not None
        report.submitted_by, report.submitted_at, report.reference = request.user, workflow.now(), request.reference
        late = workflow.now() > report.due
        self._event("report_submitted", f"{report.regime} report approved and submitted by {request.user} via "
                    f"{request.via}" + (f" (reference {request.reference})" if request.reference else "")
                    + (f", {format_duration(workflow.now() - report.due)} after its deadline" if late else
                       ", before its deadline"), actor=request.user, regime=report.regime, late=late)
        return GovernanceResult(accepted=True, message=f"{report.regime} report recorded as submitted"
                                + (" (late)" if late else ""))

    @submit_report.validator
    def _validate_submit_report(self, request: GovernanceRequest) -> None:
        report = self._report(request.regime)
        if report is None:
            known = ", ".join(r.regime for r in self._status.reports) or "none"
            raise ValueError(f"no {request.regime!r} report for this incident (its reports: {known})")
        if report.submitted_by is not None:
            raise ValueError(f"the {report.regime} report was already submitted by {report.submitted_by}")
        if not self._has_role(request, report.roles):
            raise ValueError(f"{request.user} holds none of the roles that may submit the {report.regime} report "
                             f"({', '.join(report.roles)})")

    def _report(self, regime: str | None) -> ReportStatus | None:
        return next((r for r in self._status.reports if r.regime == regime), None)

    @workflow.signal
    def governance_refused(self, refusal: GovernanceRefusal) -> None:
        """A refused governance action reported back by the client, so the audit has the attempt."""
        self._event("governance_refused", f"{refusal.user} tried to {refusal.action.replace('_', ' ')}: "
                    f"{refusal.refusal}", actor=refusal.user, via=refusal.via)

    def _event(self, kind: str, message: str, actor: str = "unship-review", **data: Any) -> None:
        """Record from a handler (no await there): the next write carries it."""
        self._seq += 1
        self._pending.append(AuditEvent(seq=REVIEW_SEQ_BASE + self._seq, at=workflow.now(), kind=kind,
                                        actor=actor, message=message, data=data))
        self._status.audit_pending = len(self._pending)

    # --- the run ------------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ReviewInput) -> ReviewStatus:
        if workflow.patched(GOVERNANCE_PATCH):
            return await self._govern(input)
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

    async def _record(self, input: ReviewInput, kind: str, message: str, **data: Any) -> None:
        self._event(kind, message, **data)
        async with self._lock:
            await self._write_pending(input)

    async def _write_pending(self, input: ReviewInput) -> bool:
        """Write the pending events; False when the store did not take them (they stay pending)."""
        if not self._pending:
            return True
        record = incident_record(input.status, input.snapshot.content_hash, workflow.now())
        sent = len(self._pending)
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
            self._status.audit_pending = len(self._pending)
            return False
        del self._pending[:sent]
        self._status.audit_pending = len(self._pending)
        return True

    # --- governance (new reviews) -------------------------------------------------------------------------

    async def _govern(self, input: ReviewInput) -> ReviewStatus:
        pb, s = self._playbook, input.status
        started, detected = s.started_at, s.detected_at or s.started_at
        self._status.provenance = provenance(pb, s.release, s.alerts)
        self._task_specs = [
            TrackerTask(key=task_key(input.incident_id, i, t.title), title=t.title, owner=t.owner,
                        assignee=pb.review.tracker.assignees.get(t.owner), due=started + t.due,
                        labels=list(pb.review.tracker.labels),
                        body=f"Release `{s.release}` of playbook {pb.name} (version {input.snapshot.version}).")
            for i, t in enumerate(pb.review.tasks)
        ]
        self._status.tasks = [
            {"title": t.title, "owner": t.owner, "owners": sorted(pb.members([t.owner])[0]),
             "due": t.due.isoformat(), "key": t.key, "state": "open", "ref": "", "url": ""}
            for t in self._task_specs
        ]
        self._status.reports = [ReportStatus(regime=r.regime.value, due=detected + r.deadline, roles=r.approvers)
                                for r in pb.regulatory.reports]
        if pb.data is not None:
            purge = pb.data.purge
            self._status.purge = PurgeStatus(
                retain_until=started + pb.data.retain if pb.data.retain is not None else None,
                due=started + purge.after if purge else None, roles=list(purge.approvers) if purge else [],
                quorum=purge.quorum if purge else 1)
        await self._record(input, "provenance", "served: " + ", ".join(
            f"{k}={v}" for k, v in self._status.provenance.items()), provenance=self._status.provenance)
        await self._learn(input)
        if pb.data is not None:
            await self._count_retained(input)
        await self._create_tasks(input)
        for report in self._status.reports:
            await self._draft(input, report)
        await self._write_document(input)
        await self._record(input, "review_written", f"review document written with {len(self._status.tasks)} "
                           f"task(s), {len(self._status.reports)} report draft(s)")
        flusher = asyncio.create_task(self._flush_track(input))
        await asyncio.gather(self._legacy_reminders(input), self._reports_track(input), self._data_track(input),
                             self._tasks_track(input))
        self._finishing = True
        await flusher
        self._status.closed = True
        await self._write_document(input)
        await self._record(input, "review_closed", "review closed: tasks done, reports submitted, data handled")
        return self._status

    async def _flush_track(self, input: ReviewInput) -> None:
        """Events recorded by update handlers (approvals, holds, refusals) reach the store without waiting."""
        backoff = timedelta(minutes=5)
        while True:
            await workflow.wait_condition(lambda: bool(self._pending) or self._finishing)
            if self._finishing:
                return
            written = await self._write_pending_locked(input)
            if not self._pending or (written and workflow.patched(FLUSH_PATCH)):
                backoff = timedelta(minutes=5)
                continue
            # the store is down past the activity's deadline: try again later, backing off to every 6 hours
            try:
                await workflow.wait_condition(lambda: self._finishing, timeout=backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, timedelta(hours=6))

    async def _legacy_reminders(self, input: ReviewInput) -> None:
        for at, what, message in self._deadlines(input, input.status.started_at):
            await self._sleep_until(at)
            await self._remind(input, what, message)

    async def _sleep_until(self, at: datetime) -> None:
        delay = at - workflow.now()
        if delay > timedelta(0):
            await workflow.sleep(delay)

    def _review_status(self, input: ReviewInput) -> dict[str, Any]:
        """What the review document shows: the incident, provenance, lesson, purge, reports, tasks."""
        status = input.status.model_dump(mode="json")
        status["playbook"] = self._playbook.model_dump(mode="json")
        status["review_tasks"] = self._status.tasks
        deadlines = [(at, what) for at, what, _ in self._deadlines(input, input.status.started_at)]
        deadlines += [(r.due, f"{r.regime} report due") for r in self._status.reports]
        purge = self._status.purge
        if purge is not None and purge.retain_until is not None:
            deadlines.append((purge.retain_until, "retention_ends"))
        if purge is not None and purge.due is not None:
            deadlines.append((purge.due, "purge_due"))
        status["deadlines"] = [{"what": what, "at": at.isoformat()} for at, what in sorted(deadlines)]
        status["governance"] = self._status.model_dump(mode="json")
        status["review_tags"] = tags(input.status, self._playbook)
        return status

    async def _write_document(self, input: ReviewInput) -> None:
        try:
            doc: ReviewDocument = await workflow.execute_activity_method(
                IncidentActivities.write_review,
                ReviewRequest(incident_id=input.incident_id, status=self._review_status(input),
                              template=self._playbook.review.template),
                start_to_close_timeout=timedelta(minutes=1), retry_policy=ACTION_RETRY,
                schedule_to_close_timeout=ACTION_DEADLINE,
            )
            self._status.document_written = bool(doc.markdown)
        except ActivityError as err:
            await self._record(input, "review_failed", f"review document could not be written: {_cause(err)}")

    # learning loop -------------------------------------------------------------------------------------------

    async def _learn(self, input: ReviewInput) -> None:
        s = input.status
        try:
            lesson: Lesson = await workflow.execute_activity_method(
                IncidentActivities.learn,
                LessonRequest(incident_id=input.incident_id, playbook=self._playbook,
                              playbook_source=input.snapshot.source, started_at=s.started_at,
                              detected_at=s.detected_at, polls=polls(s)),
                start_to_close_timeout=timedelta(minutes=2), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError as err:
            await self._record(input, "lesson_failed", f"the learning loop could not run: {_cause(err)}")
            return
        self._status.lesson = lesson.model_dump(mode="json")
        crossing = first_crossing(s)
        await self._record(input, "lesson", (lesson.proposal or "no threshold change proposed")
                           + (f"; first crossing {crossing.isoformat()}" if crossing else ""),
                           proposal=lesson.proposal, has_diff=bool(lesson.diff))

    # retention and purge -------------------------------------------------------------------------------------

    def _outputs(self, input: ReviewInput, dry_run: bool) -> OutputsRequest:
        data = self._playbook.data
        assert data is not None
        return OutputsRequest(incident_id=input.incident_id, release=input.status.release,
                              locations=list(data.outputs), dry_run=dry_run,
                              idempotency_key=f"{input.incident_id}:purge")

    async def _count(self, input: ReviewInput) -> OutputsResult | None:
        try:
            result: OutputsResult = await workflow.execute_activity_method(
                IncidentActivities.count_outputs, self._outputs(input, True),
                start_to_close_timeout=timedelta(minutes=5), retry_policy=ACTION_RETRY,
                schedule_to_close_timeout=ACTION_DEADLINE,
            )
        except ActivityError as err:
            if err.retry_state is RetryState.NON_RETRYABLE_FAILURE and self._status.purge is not None:
                # only a person can fix this (a missing URL, table or right): say so once, do not retry hourly
                self._status.purge.state, self._status.purge.error = PurgeState.FAILED, _cause(err)
            await self._record(input, "outputs_count_failed", f"could not count the release's outputs: "
                               f"{_cause(err)}")
            return None
        return result

    async def _count_retained(self, input: ReviewInput) -> None:
        purge = self._status.purge
        assert purge is not None
        result = await self._count(input)
        if result is None:
            return
        purge.counted = {c.location: c.count for c in result.counts_before}
        until = purge.retain_until.isoformat() if purge.retain_until else "the purge deadline"
        await self._record(input, "outputs_retained", f"{result.total_before} output(s) of release "
                           f"{input.status.release} retained as evidence until {until} ({_counts(purge.counted)})",
                           counts=purge.counted)

    async def _data_track(self, input: ReviewInput) -> None:
        purge = self._status.purge
        data = self._playbook.data
        if purge is None or data is None:
            return
        if purge.retain_until is not None:
            await self._sleep_until(purge.retain_until)
            await self._record(input, "retention_ended", "retention period over"
                               + ("" if purge.due else ": the outputs stay (no purge is configured)"))
        if purge.due is None:
            return
        await self._sleep_until(purge.due)
        purge.state, purge.error = PurgeState.RETAINED, ""
        dry = await self._count(input)
        while dry is None:  # the outputs' store is down past the deadline: count again later, never purge blind
            if purge.state is PurgeState.FAILED:
                await self._notify(input, "purge_failed", f"purge of release {input.status.release}'s outputs "
                                   f"cannot run: {purge.error}", purge.roles)
                return
            await workflow.sleep(timedelta(hours=1))
            dry = await self._count(input)
        purge.counted = {c.location: c.count for c in dry.counts_before}
        purge.state = PurgeState.LEGAL_HOLD if self._status.legal_hold else PurgeState.AWAITING_APPROVAL
        self._purge_gate_open = True
        await self._record(input, "purge_dry_run", f"purge due: dry run counts {dry.total_before} output(s) to "
                           f"delete ({_counts(purge.counted)}); approval needed from {', '.join(purge.roles)}",
                           counts=purge.counted)
        await self._notify(input, "purge_approval", f"purge of release {input.status.release}'s outputs is due: "
                           f"{dry.total_before} row(s) would be deleted ({_counts(purge.counted)}); "
                           f"approve with `unship purge approve {input.incident_id}`", purge.roles)
        await workflow.wait_condition(
            lambda: len(purge.approvals) >= purge.quorum and self._status.legal_hold is None)
        self._purge_gate_open = False
        purge.state = PurgeState.PURGING
        await self._record(input, "purge_started", f"purge approved by {', '.join(purge.approvals)}: deleting in "
                           "batches")
        try:
            result: OutputsResult = await workflow.execute_activity_method(
                IncidentActivities.purge_outputs, self._outputs(input, False),
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=timedelta(minutes=2),
                retry_policy=ACTION_RETRY,
            )
        except ActivityError as err:
            purge.state, purge.error = PurgeState.FAILED, _cause(err)
            await self._record(input, "purge_failed", f"purge failed: {purge.error}")
            await self._notify(input, "purge_failed", f"purge of release {input.status.release}'s outputs "
                               f"failed: {purge.error}", purge.roles)
            return
        purge.counts_before = {c.location: c.count for c in result.counts_before}
        purge.counts_after = {c.location: c.count for c in result.counts_after}
        purge.purged_at, purge.state = workflow.now(), PurgeState.PURGED
        deleted = result.total_before - result.total_after
        await self._record(input, "purged", f"purged {deleted} output(s) of release {input.status.release} in "
                           f"{result.batches} batch(es): before {_counts(purge.counts_before)}; after "
                           f"{_counts(purge.counts_after)}", counts_before=purge.counts_before,
                           counts_after=purge.counts_after, batches=result.batches,
                           approved_by=list(purge.approvals))

    # regulatory reports --------------------------------------------------------------------------------------

    async def _draft(self, input: ReviewInput, report: ReportStatus) -> None:
        spec = next(r for r in self._playbook.regulatory.reports if r.regime.value == report.regime)
        purge = self._status.purge
        note = ("no output locations are configured" if purge is None else
                f"outputs counted: {_counts(purge.counted) or 'not yet'}; purge "
                + (f"due {purge.due.isoformat()}" if purge.due else "not configured")
                + (f"; purged {purge.purged_at.isoformat()} ({_counts(purge.counts_before)} -> "
                   f"{_counts(purge.counts_after)})" if purge.purged_at else ""))
        context = report_context(input.status, self._playbook, spec, report.due, self._status.provenance,
                                 workflow.now(), note, report.submitted_by, report.submitted_at, report.reference)
        try:
            draft: ReportDraft = await workflow.execute_activity_method(
                IncidentActivities.draft_report,
                ReportRequest(incident_id=input.incident_id, regime=Regime(report.regime), context=context),
                start_to_close_timeout=timedelta(minutes=1), retry_policy=ACTION_RETRY,
                schedule_to_close_timeout=ACTION_DEADLINE,
            )
        except ActivityError as err:
            await self._record(input, "report_failed", f"{report.regime} report could not be drafted: {_cause(err)}")
            return
        report.drafted = bool(draft.markdown)
        await self._record(input, "report_drafted", f"{report.regime} report drafted; due {report.due.isoformat()} "
                           f"(clock started at detection)", regime=report.regime, due=report.due.isoformat())

    async def _reports_track(self, input: ReviewInput) -> None:
        await asyncio.gather(*(self._report_clock(input, r) for r in self._status.reports))

    async def _report_clock(self, input: ReviewInput, report: ReportStatus) -> None:
        ahead = report.due - self._playbook.regulatory.remind_ahead
        for at, what in ((ahead, "report_reminder"), (report.due, "report_due")):
            if report.submitted_by is not None:
                break
            if at > workflow.now():
                try:
                    await workflow.wait_condition(lambda: report.submitted_by is not None,
                                                  timeout=at - workflow.now())
                    break
                except TimeoutError:
                    pass
            when = "is due now" if what == "report_due" else f"is due in {format_duration(report.due - at)}"
            report.reminders.append(what)
            await self._notify(input, what, f"the {report.regime} report for release {input.status.release} {when} "
                               f"({report.due.isoformat()}); submit with `unship report submit {input.incident_id} "
                               f"--regime {report.regime}`", report.roles)
        await workflow.wait_condition(lambda: report.submitted_by is not None)
        await self._write_pending_locked(input)
        await self._draft(input, report)  # the stored draft now names who submitted it and when

    async def _write_pending_locked(self, input: ReviewInput) -> bool:
        async with self._lock:
            return await self._write_pending(input)

    # tracker tasks -------------------------------------------------------------------------------------------

    async def _create_tasks(self, input: ReviewInput) -> None:
        tracker = self._playbook.review.tracker
        if tracker.kind is TrackerKind.STORE or not self._task_specs:
            return
        created = {t.key for t in self._tracked}
        missing = [t for t in self._task_specs if t.key not in created]
        if not missing:
            return
        try:
            result: TasksResult = await workflow.execute_activity_method(
                IncidentActivities.create_tasks,
                TasksRequest(incident_id=input.incident_id, tracker=tracker, tasks=missing),
                start_to_close_timeout=timedelta(minutes=2), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError as err:
            await self._record(input, "tasks_failed", f"{tracker.kind.value}: could not create "
                               f"{len(missing)} task(s): {_cause(err)}; will try again in "
                               f"{format_duration(tracker.sync_every)}")
            return
        self._tracked += result.tasks
        self._apply_states(result.tasks)
        await self._record(input, "tasks_created", f"{len(result.tasks)} task(s) created in {tracker.kind.value}: "
                           + ", ".join(f"{t.ref}" for t in result.tasks), refs=[t.ref for t in result.tasks])

    def _apply_states(self, tracked: list[TrackedTask]) -> None:
        by_key = {t.key: t for t in tracked}
        for row in self._status.tasks:
            found = by_key.get(row["key"])
            if found is not None:
                row.update(state=found.state, ref=found.ref, url=found.url)

    async def _tasks_track(self, input: ReviewInput) -> None:
        tracker = self._playbook.review.tracker
        if tracker.kind is TrackerKind.STORE or not self._task_specs:
            return
        reminded: set[str] = set()
        while True:
            await workflow.sleep(tracker.sync_every)
            await self._create_tasks(input)
            if self._tracked:
                try:
                    result: TasksResult = await workflow.execute_activity_method(
                        IncidentActivities.sync_tasks,
                        TaskStatesRequest(incident_id=input.incident_id, tracker=tracker, tasks=self._tracked),
                        start_to_close_timeout=timedelta(minutes=2), retry_policy=EVIDENCE_RETRY,
                    )
                except ActivityError as err:
                    workflow.logger.warning("task sync of %s failed: %s", input.incident_id, _cause(err))
                else:
                    newly = [t for t in result.tasks if t.state == "done" and any(
                        o.key == t.key and o.state != "done" for o in self._tracked)]
                    self._tracked = result.tasks
                    self._apply_states(result.tasks)
                    for task in newly:
                        await self._record(input, "task_done", f"task {task.ref} is done in {tracker.kind.value}")
            if len(self._tracked) == len(self._task_specs) and all(t.state == "done" for t in self._tracked):
                await self._record(input, "tasks_done", f"all {len(self._tracked)} review task(s) are done")
                return
            states = {t.key: t.state for t in self._tracked}
            for spec in self._task_specs:
                if spec.key not in reminded and states.get(spec.key) != "done" and workflow.now() > spec.due:
                    reminded.add(spec.key)
                    await self._notify(input, "task_overdue", f"review task overdue: {spec.title} (due "
                                       f"{spec.due.isoformat()})", [spec.owner])

    # people --------------------------------------------------------------------------------------------------

    async def _notify(self, input: ReviewInput, what: str, message: str, roles: list[str]) -> None:
        """Remind the holders of ``roles`` (a best-effort message, always on the audit trail)."""
        users, groups = self._playbook.members(roles)
        comms = self._playbook.communications
        try:
            await workflow.execute_activity_method(
                IncidentActivities.notify,
                Notification(incident_id=input.incident_id, kind=MessageKind.REMINDER, channel=comms.channel,
                             context={"incident_id": input.incident_id, "release": input.status.release,
                                      "playbook": input.status.playbook, "reason": message, "what": what,
                                      "mentions": sorted(users) + sorted(groups)},
                             template_overrides=comms.templates),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("reminder %s for %s could not be sent", what, input.incident_id)
        self._status.reminders_sent.append(what)
        await self._record(input, what, message, roles=roles)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in counts.items())


GOVERNANCE_UPDATES = {
    "approve_purge": ReviewWorkflow.approve_purge,
    "legal_hold": ReviewWorkflow.legal_hold,
    "release_legal_hold": ReviewWorkflow.release_legal_hold,
    "submit_report": ReviewWorkflow.submit_report,
}
"""The governance actions on a review, by the name the API, the CLI and tabletop scenarios use."""
