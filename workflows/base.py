"""What every incident workflow shares: the status it answers queries with, the audit trail and its
durable projection into the incident store, chat notifications in order, and the activity calls.

Notifications and audit writes are delivered by background coroutines in workflow order, so a slow chat
or store never delays moving users back; the workflow waits for both to drain before it completes. While a
workflow is on its way to the first flag write with nothing to wait for (e.g. an automatic playbook), it holds
them (``_hold_background``): the workflow tasks that lead to the write schedule nothing else, and everything
recorded meanwhile goes out, in order and in one audit batch, as soon as the write is done or the workflow
first waits (a poll, a gate, a timer, the end).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        AuditBatch,
        AuditEvent,
        BatchDelivery,
        CohortChange,
        CohortResult,
        IncidentActivities,
        IncidentRecord,
        Measurement,
        MessageKind,
        MessageRef,
        Notification,
        NotificationBatch,
        PollRequest,
        PollResult,
        SignalObservation,
    )
    from playbooks.models import PlaybookSnapshot, Signal, Target
    from workflows.governance import provenance
    from workflows.messages import (
        Action,
        ActionRefusal,
        Command,
        CommandResult,
        IncidentStatus,
        OperatorCommand,
        Outcome,
        Phase,
        incident_record,
    )
    from workflows.rights import may_act

# Signals and chat are best-effort evidence paths: bounded retries, then the failure is recorded.
EVIDENCE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10),
                             maximum_attempts=5)
# Moving users is the point of the incident: keep retrying retryable faults for a long while.
ACTION_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=30))
ACTION_DEADLINE = timedelta(minutes=15)
# The flag actions (apply_cohort, read_cohort) heartbeat each second while they run (activities/rollback.py), so a
# worker that dies mid-action is noticed within this and the action retried at once (ACTION_RETRY's first
# interval is 1 s): ~4 s in all, instead of waiting out a 2-minute start-to-close timeout. Evidence, chat and
# store activities keep their start-to-close timeouts (a crash delays them, loses nothing).
HEARTBEAT_TIMEOUT = timedelta(seconds=3)
MAX_EVIDENCE = 500  # observations kept in the status (the store keeps everything through the audit)


class IncidentWorkflowBase:
    """State and helpers shared by the rollback and release workflows."""

    def _init_incident(self, snapshot: PlaybookSnapshot, release: str, phase: Phase) -> None:
        info = workflow.info()
        self._snapshot = snapshot
        self._playbook = snapshot.playbook
        self._id = info.workflow_id
        now = workflow.now()
        self._status = IncidentStatus(
            incident_id=self._id, playbook=self._playbook.name, playbook_version=snapshot.version,
            scenario=self._playbook.scenario.value, release=release, phase=phase, started_at=now,
        )
        self._unflushed: list[AuditEvent] = []
        self._outbox: list[Notification] = []
        self._thread_ref: str | None = None
        self._batch_messages = False  # set by a workflow whose histories may carry ``notify_batch``
        self._closing = False
        self._background: list[asyncio.Task[None]] = []
        self._held = False
        self._paused = False
        self._aborted: Command | None = None

    # --- what every incident answers -----------------------------------------------------------------------

    ACTIONS: frozenset[Action] = frozenset({Action.ABORT, Action.PAUSE, Action.RESUME})
    """The operator actions this kind of incident takes (a re-release has no revert-now)."""

    @workflow.update
    def operate(self, command: OperatorCommand) -> CommandResult:
        """A person's action outside the gate: revert everyone now, abort, pause or resume.

        The validator refuses anyone without a role the playbook allows for the action (``decision.actions``)
        before anything is written to history; break-glass roles may act with a reason and are flagged."""
        permission = may_act(self._playbook, command.action.value, command.user, command.groups, command.reason)
        order = Command(by=command.user, reason=command.reason)
        if permission.break_glass:
            self._audit("break_glass", f"{command.user} used break-glass to {command.action.value}: "
                        f"{command.reason}", actor=command.user, action=command.action.value, via=command.via)
        self._apply_action(command.action, order, via=command.via)
        return CommandResult(accepted=True, action=command.action, break_glass=permission.break_glass,
                             message=f"{command.action.value.replace('_', ' ')} accepted"
                             + (" (break-glass: flagged in the review)" if permission.break_glass else ""))

    @operate.validator
    def _validate_operate(self, command: OperatorCommand) -> None:
        if command.action not in self.ACTIONS:
            raise ValueError(f"this incident takes no {command.action.value} (it takes: "
                             f"{', '.join(sorted(a.value for a in self.ACTIONS))})")
        if self._status.phase is Phase.CLOSED:
            raise ValueError(f"the incident is closed ({self._status.outcome.value if self._status.outcome else ''})")
        permission = may_act(self._playbook, command.action.value, command.user, command.groups, command.reason)
        if not permission.allowed:
            raise ValueError(permission.refusal)

    @workflow.signal
    def refused(self, refusal: ActionRefusal) -> None:
        """An action refused by the ``operate`` validator or the API, reported back so the audit has it."""
        self._audit("action_refused", f"{refusal.user} tried to {refusal.action}: {refusal.refusal}",
                    actor=refusal.user, via=refusal.via, action=refusal.action)

    def _apply_action(self, action: Action, command: Command, via: str = "signal") -> None:
        if action is Action.ABORT and self._aborted is None:
            self._aborted = command
            self._audit("abort_requested", command.reason or "abort requested", actor=command.by, via=via)
        elif action is Action.PAUSE and not self._paused:
            self._paused = True
            self._audit("paused", command.reason or "paused by operator", actor=command.by, via=via)
        elif action is Action.RESUME and self._paused:
            self._paused = False
            self._audit("resumed", command.reason or "resumed by operator", actor=command.by, via=via)

    def _signal_allowed(self, action: Action, command: Command) -> bool:
        """The pre-``operate`` command signals: from new incidents, only unship's own (e.g. the fairness freeze)."""
        if command.by == "unship" or not workflow.patched("operator-actions-need-rights"):
            return True
        self._audit("action_refused", f"{command.by} tried to {action.value} through a raw signal: actions go "
                    "through the API (the operate update checks decision rights)", actor=command.by,
                    action=action.value, via="signal")
        return False

    @workflow.signal
    def abort(self, command: Command) -> None:
        """Stop where we are: no further stage is applied (what was applied stays)."""
        if self._signal_allowed(Action.ABORT, command) and self._aborted is None:
            self._aborted = command
            self._audit("abort_requested", command.reason or "abort requested", actor=command.by)

    @workflow.signal
    def pause(self, command: Command) -> None:
        """Hold before the next stage until resumed."""
        if self._signal_allowed(Action.PAUSE, command) and not self._paused:
            self._paused = True
            self._audit("paused", command.reason or "paused by operator", actor=command.by)

    @workflow.signal
    def resume(self, command: Command) -> None:
        """Continue a paused incident."""
        if self._signal_allowed(Action.RESUME, command) and self._paused:
            self._paused = False
            self._audit("resumed", command.reason or "resumed by operator", actor=command.by)

    @workflow.query
    def status(self) -> IncidentStatus:
        """The live status: phase, stages, gate, decisions, evidence, provenance and the audit trail."""
        self._status.paused = self._paused
        # computed for the answer only (a query never changes what the workflow carries on)
        return self._status.model_copy(
            update={"provenance": provenance(self._playbook, self._status.release, self._status.alerts)})

    # --- audit -------------------------------------------------------------------------------------------

    def _audit(self, kind: str, message: str, actor: str = "unship", at: datetime | None = None,
               **data: Any) -> AuditEvent:
        """Record an event; ``at`` is when it happened if an activity reported it (default: workflow time)."""
        event = AuditEvent(seq=len(self._status.audit) + 1, at=at or workflow.now(), kind=kind, actor=actor,
                           message=message, data=data)
        self._status.audit.append(event)
        self._unflushed.append(event)
        return event

    def _record(self) -> IncidentRecord:
        return incident_record(self._status, self._snapshot.content_hash, workflow.now())

    async def _flush_loop(self) -> None:
        while True:
            await workflow.wait_condition(lambda: (bool(self._unflushed) and not self._held) or self._closing)
            if not self._unflushed:
                return
            batch, self._unflushed = self._unflushed, []
            try:
                await workflow.execute_activity_method(
                    IncidentActivities.record_audit, AuditBatch(incident=self._record(), events=batch),
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=ACTION_RETRY,
                    schedule_to_close_timeout=ACTION_DEADLINE
                )
            except ActivityError as err:
                # The history still holds every event; the store projection is behind and a person should know.
                workflow.logger.error("audit store write failed for %s: %s", self._id, err)
                self._status.audit.append(AuditEvent(
                    seq=len(self._status.audit) + 1, at=workflow.now(), kind="audit_store_failed",
                    actor="unship", message=f"incident store write failed: {_cause(err)}"))

    # --- notifications -----------------------------------------------------------------------------------

    def _notify(self, kind: MessageKind, channel: str | None = None, **context: Any) -> None:
        comms = self._playbook.communications
        s = self._status
        base = {
            "incident_id": s.incident_id, "playbook": s.playbook, "playbook_version": s.playbook_version,
            "scenario": s.scenario, "release": s.release, "phase": s.phase.value,
            "outcome": s.outcome.value if s.outcome else None, "previous_percent": s.previous_percent,
            "stages": [st.model_dump(mode="json") for st in s.stages],
            "evidence": [o.model_dump(mode="json") for o in s.evidence[-len(self._playbook.signals):]],
            "decisions": [d.model_dump(mode="json") for d in s.decisions],
            "gate": s.gate.model_dump(mode="json") if s.gate else None,
            "mentions": [],
        }
        if s.confirmation:
            base["confirmation"] = [e.model_dump(mode="json") for e in s.confirmation]
        base.update(context)
        self._outbox.append(Notification(
            incident_id=self._id, kind=kind, channel=channel or comms.channel, context=base,
            template_overrides=comms.templates,
        ))

    async def _deliver_loop(self) -> None:
        while True:
            await workflow.wait_condition(lambda: (bool(self._outbox) and not self._held) or self._closing)
            if not self._outbox:
                return
            if self._batch_messages:
                notes, self._outbox = self._outbox, []
                await self._deliver_together(notes)
                continue
            note = self._outbox.pop(0)
            if note.channel == self._playbook.communications.channel:
                note = note.model_copy(update={"thread_ref": self._thread_ref})
            try:
                ref: MessageRef = await workflow.execute_activity_method(
                    IncidentActivities.notify, note, start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=EVIDENCE_RETRY
                )
                if note.channel == self._playbook.communications.channel and ref.ref:
                    # the message later news edits: the first one, or the one posted when it could not be
                    # edited any more (deleted, too old): otherwise every update would post a new message
                    self._thread_ref = ref.ref
            except ActivityError as err:
                self._audit("notification_failed", f"could not send the {note.kind.value} message to "
                            f"{note.channel}: {_cause(err)}", channel=note.channel)

    async def _deliver_together(self, notes: list[Notification]) -> None:
        """Send the messages released together in one ``notify_batch`` activity (one activity and one workflow
        task for what was one of each per message), in order; record each message that did not go out."""
        channel = self._playbook.communications.channel
        failure = ""
        try:
            done: BatchDelivery = await workflow.execute_activity_method(
                IncidentActivities.notify_batch,
                NotificationBatch(incident_id=self._id, notes=notes, thread_channel=channel,
                                  thread_ref=self._thread_ref),
                start_to_close_timeout=timedelta(seconds=30) * len(notes), retry_policy=EVIDENCE_RETRY,
            )
        except ActivityError as err:
            done, failure = _delivery_progress(err), _cause(err)
        if done.thread_ref:
            self._thread_ref = done.thread_ref
        for lost in done.undelivered:
            self._audit("notification_failed", f"could not send the {lost.kind.value} message to {lost.channel}: "
                        f"{lost.error}", channel=lost.channel)
        for note in notes[done.sent:]:
            self._audit("notification_failed", f"could not send the {note.kind.value} message to {note.channel}: "
                        f"{failure}", channel=note.channel)

    def _start_background(self) -> None:
        self._closing = False
        self._background = [asyncio.create_task(self._flush_loop()), asyncio.create_task(self._deliver_loop())]

    def _hold_background(self) -> None:
        """Keep audit writes and messages queued (not scheduled) until ``_release_background``: the workflow
        tasks up to the first write then carry only the actions on the critical path."""
        self._held = True

    def _release_background(self) -> None:
        """Deliver what was held, in order; called as soon as the critical action is done or the workflow waits."""
        self._held = False

    async def _drain(self) -> None:
        """Let every queued message and audit event reach the outside world before the run ends."""
        self._release_background()
        await workflow.wait_condition(lambda: not self._outbox)
        self._closing = True
        await asyncio.gather(*self._background)
        if self._unflushed:  # events recorded while the loops were finishing
            self._closing = False
            self._background = [asyncio.create_task(self._flush_loop())]
            self._closing = True
            await asyncio.gather(*self._background)

    # --- activities --------------------------------------------------------------------------------------

    async def _poll(self, signals: list[Signal], poll: int, phase: str) -> list[SignalObservation]:
        """Measure ``signals`` once; a source that keeps failing is "not measured", never "measured bad"."""
        self._release_background()
        try:
            result: PollResult = await workflow.execute_activity_method(
                IncidentActivities.poll_signals,
                PollRequest(incident_id=self._id, release=self._status.release, signals=signals, poll=poll,
                            phase=phase),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=EVIDENCE_RETRY,
            )
            observations = result.observations
        except ActivityError as err:
            observations = [
                SignalObservation(signal=s.name, category=s.category.value, value=None,
                                  threshold=str(s.threshold), measurement=Measurement.NO_DATA,
                                  detail=f"signal source failed: {_cause(err)}", observed_at=workflow.now())
                for s in signals
            ]
        self._status.evidence.extend(observations)
        del self._status.evidence[:-MAX_EVIDENCE]
        return observations

    async def _apply(self, targets: list[Target], previous_percent: float, step: str,
                     expected: dict[str, float] | None = None, forward_only: bool = False,
                     check_release: str | None = None) -> CohortResult:
        """Write the absolute split to every target in order, with a business idempotency key.

        With ``expected`` (target ref -> share last written or read), each write is a compare-and-set: a
        target changed behind the incident's back is not written and comes back in ``result.conflicts``.
        ``forward_only``: the activity reads the targets first and expects what it read (one activity for the
        read and the compare-and-set); when every target already has more users back, nothing is written
        (``result.skipped``, what was found in ``states[].found``). ``check_release``: the activity first checks
        that the targets serve that release (``result.served``) and writes nothing if one serves another
        (``result.release_mismatch``).
        """
        key = f"{self._id}:{step}"
        result: CohortResult = await workflow.execute_activity_method(
            IncidentActivities.apply_cohort,
            CohortChange(incident_id=self._id, idempotency_key=key, targets=targets,
                         previous_percent=previous_percent, expected=dict(expected or {}),
                         forward_only=forward_only, check_release=check_release),
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=ACTION_RETRY,
            schedule_to_close_timeout=ACTION_DEADLINE,
        )
        if result.release_mismatch:
            return result
        self._read(result)
        if result.skipped:
            self._status.previous_percent = min(s.found or 0.0 for s in result.states)
        elif not result.conflicts:
            self._status.previous_percent = previous_percent
        return result

    def _read(self, result: CohortResult) -> None:
        """Keep what the targets were last seen to serve: the status shows the flag as read, not as intended."""
        self._status.flag_read = list(result.states)
        self._status.flag_read_at = workflow.now()

    def _close(self, outcome: Outcome, reason: str, actor: str = "unship") -> None:
        self._release_background()
        self._status.outcome = outcome
        self._status.phase = Phase.CLOSED
        self._status.closed_at = workflow.now()
        self._status.gate = None
        self._audit("closed", f"{outcome.value}: {reason}", actor=actor, outcome=outcome.value, reason=reason)


def _delivery_progress(err: ActivityError) -> BatchDelivery:
    """How far a failed ``notify_batch`` got: the details of its last failure, or its last heartbeat when it
    timed out (nothing sent, as far as the workflow can tell, if neither says)."""
    cause = err.cause
    details: Sequence[Any] = ()
    if isinstance(cause, ApplicationError):
        details = cause.details
    elif isinstance(cause, ActivityTimeout):
        details = cause.last_heartbeat_details
    for detail in reversed(details):
        if isinstance(detail, dict):
            with contextlib.suppress(ValueError):
                return BatchDelivery.model_validate(detail)
    return BatchDelivery()


def _cause(err: BaseException) -> str:
    """The innermost message of an activity failure (what a person can act on)."""
    cause: BaseException | None = err
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)
