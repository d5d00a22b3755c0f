"""RollbackWorkflow: one durable rollback per (playbook, release) incident.

confirm -> decide -> revert (staged) -> verify -> review, as in design.md. Alerts, aborts, pauses and the
emergency full revert arrive as signals; people decide through the ``decide`` update, whose validator refuses
unauthorized, stale and repeated decisions before anything is written to history.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        CohortResult,
        HoldResult,
        IncidentActivities,
        IntegrityRequest,
        IntegrityResult,
        MessageKind,
        ReadbackRequest,
        ServedResult,
        TargetHold,
        TargetState,
    )
    from playbooks.models import (
        DecisionMode,
        DefaultAction,
        DriftAction,
        ReadbackCheck,
        Severity,
        StageFailure,
        TargetHeld,
        format_duration,
    )
    from workflows.base import (
        ACTION_DEADLINE,
        ACTION_RETRY,
        EVIDENCE_RETRY,
        HEARTBEAT_TIMEOUT,
        IncidentWorkflowBase,
        _cause,
    )
    from workflows.confirmation import assess_poll, fairness_rule, quality_rule, trackers
    from workflows.messages import (
        Action,
        AlertBatch,
        AlertStatus,
        Command,
        DecisionRecord,
        DecisionRefusal,
        DecisionRequest,
        DecisionResult,
        Gate,
        IncidentStatus,
        Outcome,
        Phase,
        ReviewInput,
        RollbackInput,
        StageProgress,
        Verdict,
    )
    from workflows.release import release_id
    from workflows.review import ReviewWorkflow
    from workflows.rights import approval_refusal, missing, quorum_met


class _Stop(Exception):
    """Ends the run early with an outcome (abort, rejection, halt); raised and caught inside run()."""

    def __init__(self, outcome: Outcome, reason: str, actor: str = "unship") -> None:
        super().__init__(reason)
        self.outcome, self.reason, self.actor = outcome, reason, actor


COMPARE_AND_SET = "compare-and-set-drift-checks"
"""Patch: writes compare-and-set against what the incident last wrote or read, bakes read the flag back."""
DRIFT_CHECK_EVERY = timedelta(seconds=60)
"""Longest time between two read-backs of the targets during a bake (there is always one mid-bake and one at
its end)."""
MAX_REAPPLY = 3
"""``on_drift: reapply`` re-writes a stage at most this often per incident; then a person decides."""

ALERTS_SIGNAL = "alerts"
"""The signal that carries alerts; named once because signal-with-start takes the name, not the method."""
NO_OPEN_GATE = "NoOpenGate"
"""The error type of a decision refused because no approval gate is open (HTTP 409, not 403)."""
FIRST_WRITE_FIRST = "first-write-first"
"""Patch: the way to the first flag write costs two activities, not four: ``hold_targets``, then one
``apply_cohort`` that checks the served release, reads the split and compares-and-sets against what it read
(``check_release`` + ``forward_only``, instead of ``served_release``, ``read_cohort`` and ``apply_cohort``); audit
writes and messages are held until that write is done or the workflow first waits, so the workflow tasks on the
way schedule nothing else."""
HOLD_AND_CHECK = "hold-targets-check-served-release"
"""Patch: the revert holds its targets in the store and checks they serve the release under suspicion."""
READ_BEFORE_REVERT = "read-split-before-revert"
"""Patch: the revert reads the split first and never moves users back toward the release under suspicion."""
ONE_MARKER = "first-write-one-marker"
"""Patch: an incident carries this one marker for what the four patches above introduced together
(``HOLD_AND_CHECK``, ``READ_BEFORE_REVERT``, ``COMPARE_AND_SET``, ``FIRST_WRITE_FIRST``). Every marker costs a
history event and, since the SDK upserts ``TemporalChangeVersion`` with it, a second event and a visibility
write; the four cost eight events and four visibility writes on the way to the first write. Histories that
carry the four markers (or some of them) replay on their own branches, which ask for each one. Under this
patch, messages released together also go out in one ``notify_batch`` activity instead of one ``notify`` (and
one workflow task) each."""

@workflow.defn
class RollbackWorkflow(IncidentWorkflowBase):
    ACTIONS = frozenset(Action)

    @workflow.init
    def __init__(self, input: RollbackInput) -> None:
        self._input = input
        self._init_incident(input.snapshot, input.release, Phase.CONFIRMING)
        self._seen_alerts: set[tuple[str, str, str]] = set()
        self._fingerprints: list[str] = []
        self._max_severity: Severity | None = input.severity
        self._resolved = False
        self._revert_all: Command | None = None
        self._gate_seq = 0
        self._rejected: DecisionRecord | None = None
        self._holding = False
        self._cas = False
        self._expected: dict[str, float] = {}
        self._reapplied = 0
        self._first_write_first = False
        self._one_marker = False

    # --- signals, update, query ---------------------------------------------------------------------------

    @workflow.signal(name=ALERTS_SIGNAL)
    def alerts(self, batch: AlertBatch) -> None:
        """Evidence from monitoring. Duplicates (same fingerprint, start and status) are ignored."""
        fresh = []
        for alert in batch.alerts:
            key = (alert.fingerprint or alert.name, alert.starts_at.isoformat() if alert.starts_at else "",
                   alert.status.value)
            if key in self._seen_alerts:
                continue
            self._seen_alerts.add(key)
            fresh.append(alert)
            if alert.fingerprint and alert.fingerprint not in self._fingerprints:
                self._fingerprints.append(alert.fingerprint)
            if alert.status is AlertStatus.RESOLVED:
                self._resolved = True
            else:
                self._resolved = False
                if self._max_severity is None or alert.severity.rank > self._max_severity.rank:
                    self._max_severity = alert.severity
        if not fresh:
            return
        self._status.alerts.extend(fresh)
        del self._status.alerts[:-200]
        firing = sum(a.status is AlertStatus.FIRING for a in fresh)
        self._audit("alert", f"{len(fresh)} alert(s) received ({firing} firing, {len(fresh) - firing} resolved)",
                    actor=fresh[0].source,
                    alerts=[{"name": a.name, "status": a.status.value, "fingerprint": a.fingerprint,
                             "group_key": a.group_key, "severity": a.severity.value, "source": a.source}
                            for a in fresh])

    @workflow.signal
    def revert_all_now(self, command: Command) -> None:
        """Emergency: move every user back at once, skipping the remaining stages and the gate (histories from
        before the ``operate`` update; new incidents take it through ``operate``)."""
        if self._signal_allowed(Action.REVERT_NOW, command) and self._revert_all is None:
            self._revert_all = command
            self._audit("revert_all_requested", command.reason or "emergency revert of all users",
                        actor=command.by)

    def _apply_action(self, action: Action, command: Command, via: str = "signal") -> None:
        if action is Action.REVERT_NOW:
            if self._revert_all is None:
                self._revert_all = command
                self._audit("revert_all_requested", command.reason or "emergency revert of all users",
                            actor=command.by, via=via)
            return
        super()._apply_action(action, command, via)

    @workflow.signal
    def decision_refused(self, refusal: DecisionRefusal) -> None:
        """A refused decision (validator said no) reported back by the client, so the audit has it."""
        self._audit("decision_refused", f"{refusal.user} tried to {refusal.verdict.value}: {refusal.refusal}",
                    actor=refusal.user, via=refusal.via, gate_id=refusal.gate_id, verdict=refusal.verdict.value)

    @workflow.update
    def decide(self, request: DecisionRequest) -> DecisionResult:
        gate = self._status.gate
        assert gate is not None  # the validator guarantees it
        record = DecisionRecord(gate_id=gate.gate_id, user=request.user, verdict=request.verdict,
                                reason=request.reason, via=request.via, at=workflow.now())
        self._status.decisions.append(record)
        self._audit("decision", f"{request.user} chose to {request.verdict.value} via {request.via}"
                    + (f": {request.reason}" if request.reason else ""), actor=request.user,
                    verdict=request.verdict.value, gate_id=gate.gate_id, via=request.via)
        if request.verdict is Verdict.REJECT:
            self._rejected = record
            message = "rejected: no revert will happen"
        else:
            gate.approvals.append(request.user)
            gate.approver_roles[request.user] = self._playbook.roles_of(request.user, request.groups)
            message = "approved" if quorum_met(gate) else f"approval recorded; still needed: {missing(gate)}"
        return DecisionResult(accepted=True, gate_id=gate.gate_id, approvals=len(gate.approvals),
                              quorum=gate.quorum, message=message)

    @decide.validator
    def _validate_decide(self, request: DecisionRequest) -> None:
        gate = self._status.gate
        if gate is None:
            raise ApplicationError(f"no decision is open for this incident (phase: {self._status.phase.value})",
                                   type=NO_OPEN_GATE, non_retryable=True)
        if request.gate_id and request.gate_id != gate.gate_id:
            raise ValueError(f"stale decision: it was for {request.gate_id}, the open decision is {gate.gate_id}")
        if any(d.user == request.user and d.gate_id == gate.gate_id for d in self._status.decisions):
            raise ValueError(f"{request.user} has already decided on {gate.gate_id}")
        if request.user not in gate.users and not set(request.groups) & set(gate.groups):
            raise ValueError(f"{request.user} holds none of the roles that may decide here "
                             f"({', '.join(gate.roles)})")
        if request.verdict is Verdict.APPROVE:
            refusal = approval_refusal(gate, request.user, self._playbook.roles_of(request.user, request.groups))
            if refusal:
                raise ValueError(refusal)

    # --- the run -----------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: RollbackInput) -> IncidentStatus:
        pb = self._playbook
        self._start_background()
        self._one_marker = workflow.patched(ONE_MARKER)
        self._batch_messages = self._one_marker
        if self._one_marker or workflow.patched(FIRST_WRITE_FIRST):
            self._first_write_first = True
            self._hold_background()
        follows: dict[str, Any] = {"follows": input.follows} if input.follows else {}
        self._audit("opened", f"incident opened for release {input.release} by playbook {pb.name} "
                    f"(version {self._snapshot.version})"
                    + (f"; the alert fired again after incident {input.follows} closed" if input.follows else ""),
                    actor=input.started_by, playbook_hash=self._snapshot.content_hash, source=self._snapshot.source,
                    **follows)
        self._notify(MessageKind.OPENED)
        try:
            fairness = await self._confirm()
            if fairness:
                await self._investigate()
            else:
                await self._decide()
            await self._revert()
            await self._verify()
        except _Stop as stop:
            self._close(stop.outcome, stop.reason, stop.actor)
            kind = {Outcome.DISMISSED: MessageKind.DISMISSED, Outcome.HALTED: MessageKind.HALTED,
                    Outcome.PAUSED: MessageKind.PAUSED}.get(stop.outcome, MessageKind.COMPLETED)
            self._notify(kind, reason=stop.reason)
        if self._holding:
            await self._let_go()
        if self._status.previous_percent > 0 or self._status.outcome in (Outcome.HALTED, Outcome.ABORTED):
            await self._start_review()
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._drain()
        return self._status

    def _check_abort(self) -> None:
        if self._aborted is not None:
            raise _Stop(Outcome.ABORTED, self._aborted.reason or "aborted by operator", self._aborted.by)

    # 1. confirm ------------------------------------------------------------------------------------------

    async def _confirm(self) -> bool:
        """Poll until the breach is sustained (True when it is a fairness breach) or dismiss it as transient."""
        conf = self._playbook.confirmation
        if conf.immediate:
            self._detected("confirmation window is zero: the alert is taken as confirmed")
            return False
        quality, fairness = quality_rule(self._playbook), fairness_rule(self._playbook)
        names = set(quality.names) | set(fairness.names if fairness else [])
        signals = [s for s in self._playbook.signals if s.name in names]
        # K-of-M (the default) or, with ``method: sequential``, a sequential test per counter signal.
        tracker, fair_tracker = trackers(self._playbook)
        polls = int(conf.window / conf.interval)
        for poll in range(polls):
            self._check_abort()
            if self._revert_all is not None:
                self._detected(f"confirmation cut short: {self._revert_all.by} requested an emergency revert")
                return False
            if self._resolved and conf.dismiss_on_resolved:
                raise _Stop(Outcome.DISMISSED, "transient: the source alert resolved during confirmation")
            observations = await self._poll(signals, poll, "confirm")
            assessment = assess_poll(quality, observations)
            tracker.record_poll(assessment, observations)
            fair = assess_poll(fairness, observations) if fairness else None
            if fair and fair_tracker:
                fair_tracker.record_poll(fair, observations)
            message = f"poll {poll + 1}/{polls}: {assessment.verdict.value} ({assessment.describe()}); " \
                      f"{tracker.describe()}"
            extra: dict[str, Any] = {}
            if conf.is_sequential:
                evidence = tracker.evidence() + (fair_tracker.evidence() if fair_tracker else [])
                self._status.confirmation = evidence
                extra["evidence"] = [e.model_dump(mode="json") for e in evidence]
                if fair_tracker:
                    message += f"; fairness: {fair_tracker.describe()}"
            self._audit("poll", message, poll=poll, verdict=assessment.verdict.value,
                        observations=[o.model_dump(mode="json") for o in observations], **extra)
            if fair and fair_tracker and fair_tracker.sustained:
                self._detected(f"fairness breach sustained: {', '.join(fair.breached)}; {fair_tracker.describe()}")
                return True
            if tracker.sustained:
                self._detected(f"sustained breach: {tracker.describe()}")
                return False
            if poll + 1 < polls:
                await self._wait(
                    lambda: self._aborted is not None or self._revert_all is not None
                    or (self._resolved and conf.dismiss_on_resolved),
                    conf.interval,
                )
        if self._resolved and conf.dismiss_on_resolved:
            raise _Stop(Outcome.DISMISSED, "transient: the source alert resolved during confirmation")
        raise _Stop(Outcome.DISMISSED, f"transient: {tracker.describe()} within the "
                    f"{format_duration(conf.window)} window")

    def _detected(self, reason: str) -> None:
        self._status.detected_at = workflow.now()
        self._audit("confirmed", reason)

    # 2. decide -------------------------------------------------------------------------------------------

    async def _decide(self) -> None:
        decision = self._playbook.decision
        self._status.phase = Phase.AWAITING_DECISION
        if self._revert_all is not None:
            self._decided(f"emergency revert requested by {self._revert_all.by}", self._revert_all.by)
            return
        if decision.mode is DecisionMode.DRY_RUN:
            stages = " -> ".join(f"{s.percent:g}%" for s in self._playbook.rollback.stages)
            targets = ", ".join(t.ref for t in self._playbook.rollback.targets)
            self._audit("would_revert", f"dry run: would revert {targets} in stages {stages}")
            raise _Stop(Outcome.WOULD_REVERT, f"dry run: would revert {targets} in stages {stages}")
        if decision.mode is DecisionMode.AUTOMATIC:
            self._decided("automatic playbook: no approval needed", "unship")
            return
        glass = decision.break_glass
        if glass and self._max_severity and self._max_severity.rank >= glass.min_severity.rank:
            self._decided(f"break-glass: alert severity {self._max_severity.value} is at least "
                          f"{glass.min_severity.value}", "unship")
            return
        await self._gate("revert", decision.roles, decision.quorum, allow_default=True, require=decision.require)

    async def _gate(self, purpose: str, roles: list[str], quorum: int, allow_default: bool,
                    require: dict[str, int] | None = None, evidence: str = "") -> None:
        """Open a decision gate and wait for quorum, a rejection, an abort, escalation and the default."""
        decision = self._playbook.decision
        self._gate_seq += 1
        require = dict(require or {})
        roles = sorted(set(roles) | set(require)) if require else roles
        quorum = max(quorum, sum(require.values()))
        users, groups = self._playbook.members(roles)
        now = workflow.now()
        gate = Gate(gate_id=f"gate-{self._gate_seq}", purpose=purpose, roles=list(roles), users=sorted(users),
                    groups=sorted(groups), quorum=quorum, require=require, opened_at=now,
                    deadline=now + decision.timeout, evidence=evidence)
        self._status.gate = gate
        self._rejected = None
        per_role = (" including " + ", ".join(f"{n} {r}" for r, n in sorted(require.items()))) if require else ""
        self._audit("gate_opened", f"decision needed ({purpose}): {quorum} approval(s) from "
                    f"{', '.join(roles)}{per_role} within {format_duration(decision.timeout)}"
                    + (f"; {evidence}" if evidence else ""), gate_id=gate.gate_id, roles=roles, quorum=quorum,
                    require=require)
        self._notify(MessageKind.DECISION_REQUEST if purpose in ("revert", "drift") else MessageKind.INVESTIGATION,
                     **({"reason": evidence} if evidence else {}))

        def settled() -> bool:
            return (quorum_met(gate) or self._rejected is not None
                    or self._aborted is not None or self._revert_all is not None)

        if not await self._wait(settled, decision.timeout):
            escalation = decision.escalation
            if escalation:
                gate.escalated = True
                gate.require = {}  # escalated: any listed role may decide, the overall quorum still holds
                esc_users, esc_groups = self._playbook.members(escalation.roles)
                gate.roles = sorted(set(gate.roles) | set(escalation.roles))
                gate.users = sorted(set(gate.users) | esc_users)
                gate.groups = sorted(set(gate.groups) | esc_groups)
                gate.deadline = workflow.now() + escalation.timeout
                self._status.phase = Phase.ESCALATED
                mentions = sorted(esc_users) + sorted(esc_groups)
                self._audit("escalated", f"no decision within {format_duration(decision.timeout)}: escalated to "
                            f"{', '.join(escalation.roles)}", gate_id=gate.gate_id, mentions=mentions)
                self._notify(MessageKind.ESCALATED,
                             channel=escalation.channel or self._playbook.communications.escalation_channel,
                             mentions=mentions, timeout=format_duration(escalation.timeout))
                settled_now = await self._wait(settled, escalation.timeout)
            else:
                settled_now = False
            if not settled_now:
                action = decision.default_action if allow_default else DefaultAction.HOLD
                self._audit("gate_timeout", f"no decision in time: default action {action.value}",
                            gate_id=gate.gate_id, default_action=action.value)
                if action is DefaultAction.REVERT:
                    self._decided("default action after timeout: revert", "unship")
                    return
                if action is DefaultAction.DISMISS:
                    raise _Stop(Outcome.DISMISSED, "no decision in time: the playbook's default is to dismiss")
                gate.deadline = None
                await self._wait(settled, None)
        self._check_abort()
        if self._rejected is not None:
            r = self._rejected
            if purpose == "drift":
                shares = ", ".join(f"{s.target} at {_share(s.previous_percent)}" for s in self._status.flag_read)
                raise _Stop(Outcome.HALTED, f"{r.user} chose not to continue after a target changed behind "
                            f"unship's back" + (f": {r.reason}" if r.reason else "") + f"; left as found ({shares})",
                            r.user)
            outcome = Outcome.PAUSED if purpose == "investigation" else Outcome.REJECTED
            raise _Stop(outcome, f"{r.user} rejected" + (f": {r.reason}" if r.reason else ""), r.user)
        if purpose == "drift":
            self._status.gate = None
            self._audit("drift_decided", "continue from what the targets show"
                        + (f": approved by {', '.join(gate.approvals)}" if gate.approvals else
                           f": emergency revert requested by {self._revert_all.by}" if self._revert_all else ""),
                        actor=gate.approvals[-1] if gate.approvals else "unship", gate_id=gate.gate_id)
            return
        if self._revert_all is not None and not quorum_met(gate):
            self._decided(f"emergency revert requested by {self._revert_all.by}", self._revert_all.by)
            return
        self._decided(f"approved by {', '.join(gate.approvals)}", gate.approvals[-1])

    async def _wait(self, condition: Callable[[], bool], timeout: timedelta | None) -> bool:
        self._release_background()
        try:
            await workflow.wait_condition(condition, timeout=timeout)
            return True
        except TimeoutError:
            return False

    def _decided(self, reason: str, actor: str) -> None:
        self._status.decided_at = workflow.now()
        self._status.gate = None
        self._audit("decided", f"revert decided: {reason}", actor=actor)
        self._notify(MessageKind.DECIDED, reason=reason)

    async def _investigate(self) -> None:
        """A fairness breach: freeze, open an investigation, and revert only on an explicit decision."""
        self._status.phase = Phase.INVESTIGATING
        self._audit("frozen", "fairness signal breached: further rollout frozen, investigation opened; "
                    "no revert without an explicit decision")
        await self._freeze_release()
        decision = self._playbook.decision
        roles = decision.investigation_roles or decision.roles or list(self._playbook.roles)
        await self._gate("investigation", roles, decision.quorum, allow_default=False)

    async def _freeze_release(self) -> None:
        target = release_id(self._playbook.name, self._status.release)
        try:
            await workflow.get_external_workflow_handle(target).signal(
                "pause", Command(by="unship", reason="fairness breach under investigation"))
            self._audit("release_frozen", f"paused the running re-release {target}")
        except Exception:  # noqa: BLE001 - no release in flight is the normal case
            pass

    # 3. revert -------------------------------------------------------------------------------------------

    async def _revert(self) -> None:
        rollback = self._playbook.rollback
        self._status.phase = Phase.REVERTING
        self._status.stages = [StageProgress(index=i, percent=s.percent, status="pending")
                               for i, s in enumerate(rollback.stages)]
        if self._one_marker or workflow.patched(HOLD_AND_CHECK):
            if self._first_write_first:
                await self._hold_targets()  # the served release is checked by the first write itself
            else:
                await self._hold_targets()
                await self._check_served_release()
            self._status.phase = Phase.REVERTING
        already = 0.0
        forward_only = False  # the next write reads the split itself and skips if users are already further back
        if self._one_marker or workflow.patched(READ_BEFORE_REVERT):
            if self._first_write_first:
                forward_only = True
            else:
                already = await self._current_previous_percent()
        self._cas = self._one_marker or workflow.patched(COMPARE_AND_SET)
        for i, stage in enumerate(rollback.stages):
            self._check_abort()
            if self._revert_all is not None:
                break
            if stage.percent <= already or (self._cas and stage.percent <= self._status.previous_percent):
                # A revert never moves users back toward the release under suspicion (e.g. a new incident for
                # a release an earlier incident already reverted).
                self._status.stages[i].status = "skipped"
                self._audit("stage_skipped", f"stage {i + 1} ({stage.percent:g}%) skipped: "
                            f"{max(already, self._status.previous_percent):g}% of users are already on the previous "
                            "model", stage=i)
                continue
            if self._paused:
                self._release_background()
                self._status.phase = Phase.PAUSED
                await workflow.wait_condition(
                    lambda: not self._paused or self._aborted is not None or self._revert_all is not None)
                self._status.phase = Phase.REVERTING
                self._check_abort()
                if self._revert_all is not None:
                    break
            applied = await self._apply_stage(i, stage.percent, f"revert:{i}", forward_only=forward_only)
            forward_only = False
            if not applied:
                continue
            progress = self._status.stages[i]
            progress.status = "baking"
            if self._cas:
                await self._bake(i, stage.percent, stage.bake)
            else:
                await self._wait(lambda: self._aborted is not None or self._revert_all is not None, stage.bake)
            if self._revert_all is not None:
                progress.status = "verified" if stage.percent >= 100 else "superseded"
                break
            self._check_abort()
            if stage.verify:
                signals = [self._playbook.signal(n) for n in stage.verify]
                observations = await self._poll(signals, i, "verify")
                breached = [o for o in observations if o.measurement.value == "breach"]
                unmeasured = [o.signal for o in observations if o.measurement.value == "no_data"]
                if breached:
                    progress.status = "failed"
                    detail = ", ".join(f"{o.signal}={o.value:g} ({o.threshold})" for o in breached
                                       if o.value is not None)
                    self._audit("stage_failed", f"stage {i + 1} ({stage.percent:g}%) verification failed: {detail}",
                                stage=i, observations=[o.model_dump(mode="json") for o in observations])
                    if rollback.on_stage_failure is StageFailure.REVERT_ALL:
                        self._revert_all = Command(by="unship", reason=f"stage {i + 1} failed verification")
                        break
                    raise _Stop(Outcome.HALTED, f"stage {i + 1} ({stage.percent:g}%) failed verification: {detail}; "
                                f"{stage.percent:g}% of users stay on the previous model")
                note = f"; not measured: {', '.join(unmeasured)}" if unmeasured else ""
                self._audit("stage_verified", f"stage {i + 1} ({stage.percent:g}%) verified{note}", stage=i)
            progress.status = "verified"
        if self._revert_all is not None and self._status.previous_percent < 100:
            await self._apply_stage(None, 100, "revert:all", forward_only=forward_only)
            for progress in self._status.stages:
                if progress.status == "pending":
                    progress.status = "skipped"
        self._status.full_revert_at = self._status.full_revert_at or workflow.now()

    async def _hold_targets(self) -> None:
        """Hold every target before the first write: one active incident per flag or serving object. When
        another incident holds one, wait at a gate naming it (nothing is written meanwhile), or join it."""
        request = TargetHold(incident_id=self._id, targets=self._playbook.rollback.targets)
        told: str | None = None
        while True:
            self._check_abort()
            try:
                result: HoldResult = await workflow.execute_activity_method(
                    IncidentActivities.hold_targets, request, start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=ACTION_RETRY, schedule_to_close_timeout=ACTION_DEADLINE)
            except ActivityError as err:
                self._audit("hold_failed", f"could not hold the targets: {_cause(err)}")
                raise _Stop(Outcome.HALTED, f"the targets could not be held ({_cause(err)}); nothing was written; "
                            "a person must act") from None
            if result.held:
                self._holding = True
                if told is not None:
                    self._status.gate = None
                for dead in result.taken_over:
                    self._audit("target_hold_taken_over", f"{dead.target} was held by incident {dead.incident}, "
                                f"whose workflow is {dead.status.replace('_', ' ')} and will never let go: this "
                                "incident takes the hold over", holder=dead.incident, target=dead.target,
                                holder_status=dead.status)
                self._audit("targets_held", "holding " + ", ".join(t.ref for t in request.targets)
                            + " for this incident", targets=[t.ref for t in request.targets])
                return
            holder = result.holder or "another incident"
            if self._playbook.rollback.on_target_held is TargetHeld.JOIN:
                self._audit("joined", f"{result.target} is held by incident {holder}: this incident joins it and "
                            "writes nothing", holder=holder, target=result.target)
                raise _Stop(Outcome.DISMISSED, f"joined incident {holder}, which holds {result.target}")
            if told != holder:
                told = holder
                now = workflow.now()
                self._status.phase = Phase.AWAITING_DECISION
                self._status.gate = Gate(gate_id=f"held-by:{holder}", purpose=f"target held by {holder}",
                                         roles=[], users=[], groups=[], quorum=1, opened_at=now)
                self._audit("target_held", f"{result.target} is held by incident {holder}: waiting until it lets "
                            "go; nothing is written meanwhile", holder=holder, target=result.target)
            await self._wait(lambda: self._aborted is not None, timedelta(seconds=30))

    async def _let_go(self) -> None:
        try:
            await workflow.execute_activity_method(
                IncidentActivities.release_targets, TargetHold(incident_id=self._id),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=ACTION_RETRY,
                schedule_to_close_timeout=ACTION_DEADLINE)
            self._holding = False
            self._audit("targets_released", "let go of " + ", ".join(t.ref for t in self._playbook.rollback.targets))
        except ActivityError as err:
            self._audit("release_failed", f"could not let go of the targets: {_cause(err)}")

    async def _check_served_release(self) -> None:
        """Before the first write: is the alerted release the candidate the targets serve? A mismatch stops at a
        gate with the evidence; a target that cannot tell is noted and does not stop the revert."""
        if self._playbook.rollback.check_served_release:
            await self._judge_served_release(await self._served_release())

    async def _served_release(self) -> ServedResult | str:
        """Which release each target serves, or why it could not be read."""
        try:
            result: ServedResult = await workflow.execute_activity_method(
                IncidentActivities.served_release, ReadbackRequest(targets=self._playbook.rollback.targets),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=EVIDENCE_RETRY)
        except ActivityError as err:
            return _cause(err)
        return result

    async def _judge_served_release(self, result: ServedResult | str) -> None:
        """A mismatch stops at a gate with the evidence; a target that cannot tell is noted."""
        if isinstance(result, str):
            self._audit("served_release_unknown", f"could not read which release the targets serve: {result}")
            return
        self._status.served = list(result.states)
        release = self._status.release
        wrong = [s for s in result.states if s.release is not None and s.release != release]
        unknown = [s for s in result.states if s.release is None]
        if unknown:
            self._audit("served_release_unknown", "; ".join(s.evidence for s in unknown),
                        targets=[s.target for s in unknown])
        if not wrong:
            if len(unknown) < len(result.states):
                self._audit("served_release_checked", f"the targets serve release {release} as the candidate")
            return
        evidence = "; ".join(s.evidence for s in wrong)
        self._audit("release_mismatch", f"the alert names release {release}, but {evidence}: users are not moved "
                    "until a person decides", evidence=[s.model_dump() for s in wrong])
        decision = self._playbook.decision
        self._status.phase = Phase.AWAITING_DECISION
        await self._gate("release_mismatch", decision.roles or sorted(self._playbook.roles), 1, allow_default=False)

    async def _current_previous_percent(self) -> float:
        """The smallest share already on the previous model across the targets (0 when it cannot be read)."""
        try:
            result = await self._read_targets()
        except ActivityError as err:
            self._audit("readback_failed", f"could not read the current split before reverting: {_cause(err)}")
            return 0.0
        self._expected = {s.target: s.previous_percent for s in result.states if s.previous_percent is not None}
        shares = [s.previous_percent for s in result.states]
        known = [s for s in shares if s is not None]
        if not known or len(known) != len(shares):
            return 0.0
        self._status.previous_percent = min(known)
        return min(known)

    async def _read_targets(self) -> CohortResult:
        result: CohortResult = await workflow.execute_activity_method(
            IncidentActivities.read_cohort, ReadbackRequest(targets=self._playbook.rollback.targets),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=EVIDENCE_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
        )
        self._read(result)
        return result

    async def _apply_stage(self, index: int | None, percent: float, step: str, forward_only: bool = False) -> bool:
        """Apply one stage (compare-and-set); False when it was skipped because the targets (found changed and
        kept by decision, or read by a ``forward_only`` first write) already have at least ``percent`` of users
        on the previous model."""
        label = f"stage {index + 1} ({percent:g}%)" if index is not None else f"all users ({percent:g}%)"
        if index is not None:
            self._status.stages[index].status = "applying"
        # the first write of a new incident checks the served release itself (FIRST_WRITE_FIRST)
        check = (self._status.release if forward_only and self._first_write_first
                 and self._playbook.rollback.check_served_release else None)
        while True:
            try:
                result = await self._apply(self._playbook.rollback.targets, percent, step,
                                           self._expected if self._cas else None, forward_only=forward_only,
                                           check_release=check)
            except ActivityError as err:
                self._audit("apply_failed", f"{label}: could not move users back: {_cause(err)}", step=step)
                raise _Stop(Outcome.HALTED, f"{label} could not be applied: {_cause(err)}; a person must act") from None
            if check is not None:
                check = None
                await self._judge_served_release(ServedResult(states=result.served))
                self._status.phase = Phase.REVERTING
                if result.release_mismatch:  # nothing was written; a person approved at the gate: write now
                    continue
            forward_only = False
            if result.skipped:  # never move users toward the release under suspicion
                self._remember(result.states)
                if index is not None:
                    self._status.stages[index].status = "skipped"
                self._audit("stage_skipped", f"{label} skipped: {self._status.previous_percent:g}% of users are "
                            "already on the previous model", stage=index, step=step)
                return False
            if not result.conflicts:
                break
            self._remember(result.states)
            await self._drifted(label, result.conflicts, "before writing")
            found = min((s.found or 0.0) for s in result.conflicts)
            if percent <= found:  # never move users toward the release under suspicion
                if index is not None:
                    self._status.stages[index].status = "skipped"
                self._status.previous_percent = found
                self._audit("stage_skipped", f"{label} skipped: the targets already have {found:g}% of users on "
                            "the previous model", stage=index, step=step)
                return False
        self._remember(result.states)
        now = workflow.now()
        if index is not None:
            self._status.stages[index].applied_at = now
        self._status.first_revert_at = self._status.first_revert_at or now
        if percent >= 100:
            self._status.full_revert_at = now
        states = {s.target: s.previous_percent for s in result.states}
        written = [s for s in result.states if s.written_by_attempt is not None]
        if not written:
            note = "" if result.applied else " (already applied: nothing written)"
        elif all(s.written_by_attempt == result.attempt for s in written) and result.attempt == 1:
            note = ""
        else:
            by = sorted({s.written_by_attempt for s in written if s.written_by_attempt is not None})
            note = (f" (written by attempt {', '.join(map(str, by))} of this step"
                    + (f"; attempt {result.attempt} found it applied)" if result.attempt not in by else ")"))
        if not written and result.attempt > 1 and not result.applied:
            note = f" (written by an earlier attempt of this step; attempt {result.attempt} found it applied)"
        self._audit("stage_applied", f"{label}: {percent:g}% of users on the previous model" + note,
                    at=result.written_at, step=step, percent=percent, read_back=states,
                    idempotency_key=f"{self._id}:{step}", attempt=result.attempt)
        self._notify(MessageKind.STAGE, stage=label)
        self._release_background()  # the write is done: the audit and the messages held for it go out now
        return True

    def _remember(self, states: list[TargetState]) -> None:
        """What the incident last wrote or read on each target: the next write's compare-and-set expectation."""
        for state in states:
            if state.previous_percent is not None:
                self._expected[state.target] = state.previous_percent
            else:
                self._expected.pop(state.target, None)

    async def _bake(self, index: int, percent: float, bake: timedelta) -> None:
        """Wait out the bake, reading the targets back at least once mid-bake and at its end (and every
        ``DRIFT_CHECK_EVERY``); a target found changed is handled by ``_drifted`` and the stage bakes anew."""
        label = f"stage {index + 1} ({percent:g}%)"
        reads = max(1, math.ceil(bake / min(bake / 2, DRIFT_CHECK_EVERY))) if bake > timedelta(0) else 1
        step = bake / reads
        done = 0
        while done < reads:
            if step > timedelta(0) and await self._wait(
                    lambda: self._aborted is not None or self._revert_all is not None, step):
                return
            done += 1
            try:
                result = await self._read_targets()
            except ActivityError as err:
                self._audit("readback_failed", f"{label}: could not read the targets back during the bake: "
                            f"{_cause(err)}", stage=index)
                continue
            drifted = [s.model_copy(update={"expected": self._expected.get(s.target), "found": s.previous_percent})
                       for s in result.states
                       if s.target in self._expected and (s.previous_percent is None
                                                          or abs(s.previous_percent - self._expected[s.target]) > 0.01)]
            if not drifted:
                continue
            await self._drifted(label, drifted, "during the bake")
            found = min((s.found or 0.0) for s in drifted)
            self._remember(result.states)
            if percent > found:
                await self._apply_stage(index, percent, f"revert:{index}:drift-{self._reapplied + self._gate_seq}")
                self._status.stages[index].status = "baking"
            else:
                self._status.previous_percent = found
            done = 0  # the stage bakes anew from here

    async def _drifted(self, label: str, states: list[TargetState], when: str) -> None:
        """Targets changed behind the incident's back: record the evidence, then re-apply (``on_drift: reapply``,
        at most ``MAX_REAPPLY`` times) or ask a person, who may stop here (the incident halts as found)."""
        evidence = "; ".join(f"{s.target}: expected {_share(s.expected)}, found {_share(s.found)} on the previous "
                             "model" for s in states)
        self._audit("drift_detected", f"{label}: changed behind unship's back ({when}): {evidence}",
                    targets=[s.model_dump(mode="json") for s in states])
        rollback = self._playbook.rollback
        if rollback.on_drift is DriftAction.REAPPLY and self._reapplied < MAX_REAPPLY:
            self._reapplied += 1
            self._audit("drift_reapply", f"{label}: on_drift is reapply: continuing from what was found "
                        f"({self._reapplied}/{MAX_REAPPLY}), never moving users toward the release")
            return
        decision = self._playbook.decision
        roles = decision.roles or list(self._playbook.roles)
        phase = self._status.phase
        self._status.phase = Phase.AWAITING_DECISION
        await self._gate("drift", roles, decision.quorum, allow_default=False,
                         evidence=f"{label}: {evidence}; approve to continue from what was found (users are never "
                                  "moved toward the release), reject to stop here")
        self._status.phase = phase

    # 4. verify -------------------------------------------------------------------------------------------

    async def _verify(self) -> None:
        self._release_background()
        self._status.phase = Phase.VERIFYING
        checks = list(self._playbook.integrity)
        if not any(c.kind == "readback" for c in checks):
            checks.insert(0, ReadbackCheck(name="readback"))
        try:
            result: IntegrityResult = await workflow.execute_activity_method(
                IncidentActivities.check_integrity,
                IntegrityRequest(incident_id=self._id, release=self._status.release, checks=checks,
                                 targets=self._playbook.rollback.targets,
                                 expected_previous_percent=self._status.previous_percent),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=60), retry_policy=ACTION_RETRY,
                schedule_to_close_timeout=timedelta(minutes=15),
            )
            self._status.integrity = result.results
        except ActivityError as err:
            self._audit("integrity_failed", f"integrity checks could not run: {_cause(err)}")
            raise _Stop(Outcome.REVERTED_UNVERIFIED, f"users reverted, but integrity checks could not run: "
                        f"{_cause(err)}") from None
        for check in result.results:
            self._audit("integrity_check", f"{check.name} ({check.kind}): {'passed' if check.passed else 'FAILED'}"
                        f" - {check.evidence}", check=check.name, passed=check.passed)
        if not result.passed:
            failed = ", ".join(c.name for c in result.results if not c.passed)
            if self._cas and any(c.kind == "readback" and not c.passed for c in result.results):
                try:  # the status then shows the flag as read, not as intended
                    await self._read_targets()
                except ActivityError as err:
                    self._audit("readback_failed", f"could not read the targets after verification: {_cause(err)}")
            raise _Stop(Outcome.REVERTED_UNVERIFIED, f"users reverted, but integrity checks failed: {failed}")
        raise _Stop(Outcome.REVERTED, f"{self._status.previous_percent:g}% of users on the previous model; "
                    f"{len(result.results)} integrity check(s) passed")

    # 5. review -------------------------------------------------------------------------------------------

    async def _start_review(self) -> None:
        self._status.phase = Phase.CLOSED
        # The run id keeps a later incident for the same release from colliding with a review still waiting
        # on its purge deadline.
        review_id = f"{self._id}:review:{workflow.info().run_id[:8]}"
        try:
            await workflow.start_child_workflow(
                ReviewWorkflow.run,
                ReviewInput(incident_id=self._id, snapshot=self._snapshot, status=self._status),
                id=review_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )
            self._status.review_workflow_id = review_id
            self._audit("review_started", f"post-incident review {review_id} started")
        except Exception as err:  # noqa: BLE001 - e.g. a review of a previous run with this id still running
            self._audit("review_failed", f"could not start the review workflow: {err}")


def _share(value: float | None) -> str:
    return "an unreadable split" if value is None else f"{value:g}%"


__all__ = ["RollbackWorkflow"]
