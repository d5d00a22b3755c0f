"""The scripted world of a tabletop exercise, answering by SIMULATED time.

Inside an activity, ``activity.info().current_attempt_scheduled_time`` is the server's time, which Temporal's
time-skipping server moves forward; minus the scenario's start it gives "seconds into the scenario" (times a
speed-up on a real server). Every adapter here asks a ``ScenarioClock`` for that:

- ``TimelineSignalSource``: the scenario's signal values (or recorded history) at that time;
- ``TabletopFlags``: wraps any ``FlagProvider`` (the in-memory one, or the real configured one in staging),
  injects the scenario's flag faults in their time windows and records every split change with its time;
- ``TabletopChat``: wraps any ``ChatNotifier``, injects chat outages, records what went out, and tells the
  scenario's script (``TabletopScriptWorkflow``) when a decision gate opened so people can react to it;
- ``TabletopOutputs`` / ``TabletopTracker``: where the bad release's outputs live and where review tasks go,
  in memory, with the scenario's faults and ticket closings;
- ``TabletopActivities.tabletop_act``: what a scripted person does (decide, abort, pause, revert all, alert,
  and on the review: hold, release the hold, approve the purge, submit a report), through the Temporal client
  exactly like the CLI and the gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.contracts import (
    ChatNotifier,
    CheckResult,
    FlagProvider,
    IntegrityRequest,
    IntegrityResult,
    MessageKind,
    MessageRef,
    Notification,
    PollRequest,
    SignalObservation,
    TrackedTask,
    TrackerTask,
)
from activities.integrity import IntegrityChecker
from activities.routing import classify
from playbooks.models import OutputLocation, Playbook, Signal, Target, Tracker
from tabletop.history import History
from tabletop.scenarios import Fault, FaultKind, OutputRows
from workflows.base import IncidentWorkflowBase
from workflows.messages import (
    Action,
    ActionRefusal,
    Alert,
    AlertBatch,
    DecisionRefusal,
    DecisionRequest,
    GovernanceRefusal,
    GovernanceRequest,
    OperatorCommand,
    Verdict,
)
from workflows.review import GOVERNANCE_UPDATES, ReviewWorkflow
from workflows.rollback import RollbackWorkflow

log = logging.getLogger(__name__)


@dataclass
class ScenarioClock:
    """Seconds since the scenario's start, in scenario time (server time since ``start`` times ``speedup``)."""

    start: datetime
    speedup: float = 1.0

    def now_s(self) -> float:
        now = activity.info().current_attempt_scheduled_time if activity.in_activity() else datetime.now(UTC)
        return (now - self.start).total_seconds() * self.speedup

    def to_s(self, at: datetime) -> float:
        return (at - self.start).total_seconds() * self.speedup


def _fault_error(fault: Fault, system: str, what: str) -> ApplicationError:
    if fault.kind is FaultKind.REFUSED:
        return ApplicationError(f"tabletop: {system}: {what} refused: HTTP 403 (scripted fault); grant access",
                                type="tabletop.http_403", non_retryable=True)
    if fault.kind is FaultKind.TIMEOUT:
        return ApplicationError(f"tabletop: {system}: {what} timed out (scripted fault); will retry",
                                type="tabletop.timeout", non_retryable=False)
    return ApplicationError(f"tabletop: {system}: {what} failed: HTTP 500 (scripted fault); will retry",
                            type="tabletop.http_500", non_retryable=False)


class TimelineSignalSource:
    """A ``SignalSource`` that reads each signal's value at the current scenario time from a ``History``."""

    def __init__(self, history: History, clock: ScenarioClock, faults: list[Fault] | None = None) -> None:
        self.history = history
        self.clock = clock
        self.faults = [f for f in faults or [] if f.system == "signals"]
        self.observed: list[tuple[float, str, float | None, str]] = []  # (t, signal, value, measurement)

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        """The scripted value of ``signal`` now (no data before its first point or during a fault)."""
        at_s = self.clock.now_s()
        for fault in self.faults:
            if fault.active(at_s) and (not fault.signals or signal.name in fault.signals):
                self.observed.append((at_s, signal.name, None, "source_down"))
                raise _fault_error(fault, "signal source", f"query for {signal.name}")
        point = self.history.at(signal.name, at_s)
        detail = f"scenario t={at_s:.0f}s ({request.phase} poll {request.poll})"
        if point is None:
            observation = classify(signal, None, None, f"no scripted value yet; {detail}")
        else:
            observation = classify(signal, point.value, point.samples, detail, events=point.events,
                                   control_events=point.control_events, control_outputs=point.control_outputs)
        self.observed.append((at_s, signal.name, observation.value, observation.measurement.value))
        return observation


@dataclass(frozen=True)
class SplitChange:
    """A split that reached the flag system: ``previous_percent`` of users on the previous model from ``at_s``."""

    at_s: float
    target: str
    previous_percent: float
    idempotency_key: str


class TabletopFlags:
    """A ``FlagProvider`` wrapper: scenario faults in their windows, and a log of every split that changed."""

    def __init__(self, inner: FlagProvider, clock: ScenarioClock, faults: list[Fault] | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.faults = [f for f in faults or [] if f.system == "flags"]
        self.changes: list[SplitChange] = []
        self.failures: list[tuple[float, str]] = []

    def _fault(self, operation: str) -> Fault | None:
        at_s = self.clock.now_s()
        for fault in self.faults:
            if fault.active(at_s) and fault.operations in (operation, "both"):
                return fault
        return None

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        """Write through the wrapped provider unless a fault is active (``after_write``: write, then fail)."""
        fault = self._fault("write")
        if fault is not None and not fault.after_write:
            self.failures.append((self.clock.now_s(), f"write {percent:g}% to {target.ref}: {fault.kind.value}"))
            raise _fault_error(fault, target.ref, f"write of {percent:g}%")
        wrote = await self.inner.set_previous_percent(target, percent, idempotency_key)
        if wrote:
            self.changes.append(SplitChange(self.clock.now_s(), target.ref, percent, idempotency_key))
        if fault is not None:
            self.failures.append((self.clock.now_s(), f"write {percent:g}% to {target.ref} landed, answer lost"))
            raise _fault_error(fault, target.ref, f"answer to the write of {percent:g}%")
        return wrote

    async def get_previous_percent(self, target: Target) -> float | None:
        """Read through the wrapped provider unless a read fault is active."""
        fault = self._fault("read")
        if fault is not None:
            self.failures.append((self.clock.now_s(), f"read of {target.ref}: {fault.kind.value}"))
            raise _fault_error(fault, target.ref, "read-back")
        return await self.inner.get_previous_percent(target)


class TabletopIntegrity:
    """Integrity checks in an exercise: read-backs run for real against the (scripted) flags; checks that need
    production systems (SQL, HTTP, PromQL) give the result the scenario scripts (default: passed)."""

    def __init__(self, real: IntegrityChecker, scripted: dict[str, bool] | None = None) -> None:
        self.real = real
        self.scripted = scripted or {}

    async def run(self, request: IntegrityRequest) -> IntegrityResult:
        """Run the read-backs, then add the scripted results of the other checks."""
        readbacks = [c for c in request.checks if c.kind == "readback"]
        results = list((await self.real.run(request.model_copy(update={"checks": readbacks}))).results
                       if readbacks else [])
        for check in request.checks:
            if check.kind != "readback":
                passed = self.scripted.get(check.name, True)
                results.append(CheckResult(name=check.name, kind=check.kind, passed=passed,
                                           evidence=f"scripted by the scenario: {'passes' if passed else 'fails'}"))
        return IntegrityResult(results=results)


def _faulted(faults: list[Fault], clock: ScenarioClock, system: str, what: str) -> None:
    at_s = clock.now_s()
    for fault in faults:
        if fault.active(at_s):
            raise _fault_error(fault, system, what)


class TabletopOutputs:
    """An ``OutputStore`` in memory: each location's rows of the bad release and of other releases."""

    def __init__(self, rows: dict[str, OutputRows], release: str, clock: ScenarioClock,
                 faults: list[Fault] | None = None) -> None:
        self.release = release
        self.rows = {name: {release: r.release, "other releases": r.other} for name, r in rows.items()}
        self.clock = clock
        self.faults = [f for f in faults or [] if f.system == "outputs"]
        self.deleted: list[tuple[float, str, int]] = []

    async def count(self, location: OutputLocation, release: str) -> int:
        _faulted(self.faults, self.clock, "outputs", f"count of {location.name}")
        return self.rows.get(location.name, {}).get(release, 0)

    async def delete_batch(self, location: OutputLocation, release: str, limit: int) -> int:
        _faulted(self.faults, self.clock, "outputs", f"deletion in {location.name}")
        table = self.rows.setdefault(location.name, {})
        n = min(limit, table.get(release, 0))
        table[release] = table.get(release, 0) - n
        if n:
            self.deleted.append((self.clock.now_s(), location.name, n))
        return n

    def others(self) -> int:
        return sum(t.get("other releases", 0) for t in self.rows.values())


class TabletopTracker:
    """A ``TaskTracker`` in memory: tickets numbered in order, closed at the scenario's ``done_after``, and the
    tracker's outages."""

    def __init__(self, clock: ScenarioClock, done_after_s: float | None, faults: list[Fault] | None = None) -> None:
        self.clock = clock
        self.done_after_s = done_after_s
        self.faults = [f for f in faults or [] if f.system == "tracker"]
        self.tickets: dict[str, TrackedTask] = {}
        self.failures: list[tuple[float, str]] = []

    def _check(self, what: str) -> None:
        try:
            _faulted(self.faults, self.clock, "tracker", what)
        except ApplicationError:
            self.failures.append((self.clock.now_s(), what))
            raise

    async def create(self, tracker: Tracker, incident_id: str, task: TrackerTask) -> TrackedTask:
        self._check(f"create {task.title!r}")
        if task.key not in self.tickets:
            self.tickets[task.key] = TrackedTask(key=task.key, ref=f"T-{len(self.tickets) + 1}")
        return self.tickets[task.key]

    async def state(self, tracker: Tracker, task: TrackedTask) -> TrackedTask:
        self._check(f"state of {task.ref}")
        done = self.done_after_s is not None and self.clock.now_s() >= self.done_after_s
        return task.model_copy(update={"state": "done" if done else "open"})


class GateSeen(BaseModel):
    """A decision gate became visible to people: the script's ``gate_seen`` signal."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # decision | escalation | investigation
    gate_id: str
    at: datetime


_GATE_KINDS = {MessageKind.DECISION_REQUEST: "decision", MessageKind.ESCALATED: "escalation",
               MessageKind.INVESTIGATION: "investigation"}


@dataclass(frozen=True)
class SentMessage:
    at_s: float
    kind: str
    channel: str
    text: str


class TabletopChat:
    """A ``ChatNotifier`` wrapper: chat outages in their windows, a log of what went out, and gate news.

    People notice an open gate whatever the chat does (the status page, the CLI): the script hears of it on
    the first attempt, before an injected outage fails the message itself.
    """

    def __init__(self, inner: ChatNotifier, clock: ScenarioClock, playbook: Playbook,
                 faults: list[Fault] | None = None, script_id: str | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.playbook = playbook
        self.faults = [f for f in faults or [] if f.system == "chat"]
        self.script_id = script_id
        self.sent: list[SentMessage] = []
        self.failed: list[tuple[float, str]] = []
        self._told: set[tuple[str, str]] = set()

    async def send(self, notification: Notification, text: str) -> MessageRef:
        """Tell the script about gates, then fail (outage) or send through the wrapped notifier."""
        await self._tell_script(notification)
        at_s = self.clock.now_s()
        for fault in self.faults:
            if fault.active(at_s):
                self.failed.append((at_s, notification.kind.value))
                raise _fault_error(fault, "chat", f"message to {notification.channel}")
        ref = await self.inner.send(notification, text)
        self.sent.append(SentMessage(at_s, notification.kind.value, notification.channel, text))
        return ref

    async def _tell_script(self, notification: Notification) -> None:
        kind = _GATE_KINDS.get(notification.kind)
        gate = notification.context.get("gate")
        if kind is None or not isinstance(gate, dict) or self.script_id is None:
            return
        key = (kind, str(gate.get("gate_id")))
        if key in self._told:
            return
        at = datetime.fromisoformat(str(gate["opened_at"]))
        escalation = self.playbook.decision.escalation
        if kind == "escalation" and escalation is not None and gate.get("deadline"):
            at = datetime.fromisoformat(str(gate["deadline"])) - escalation.timeout
        try:
            await activity.client().get_workflow_handle(self.script_id).signal(
                "gate_seen", GateSeen(kind=kind, gate_id=key[1], at=at))
            self._told.add(key)
        except Exception as exc:  # noqa: BLE001 - the script may have ended; the message still goes out
            log.info("tabletop script %s not told about %s: %s", self.script_id, key, exc)


class ActRequest(BaseModel):
    """One scripted person's action against the incident workflow."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: str
    action: str
    user: str = "operator"
    reason: str = ""
    groups: list[str] = []
    alert: dict[str, Any] | None = None
    regime: str | None = None
    reference: str = ""


class ActResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accepted: bool
    message: str


PERSON_ACTIONS = {
    "revert_all": Action.REVERT_NOW,
    "abort": Action.ABORT,
    "pause": Action.PAUSE,
    "resume": Action.RESUME,
}
"""What a scripted person can do outside the gate, by the scenario's action name (the ``operate`` update, whose
validator checks the person's roles as in production)."""


class TabletopActivities:
    """The activity the script runs to act like a person (``tabletop_act``)."""

    @activity.defn(name="tabletop_act")
    async def act(self, req: ActRequest) -> ActResult:
        """Decide (the ``decide`` update, refusals reported back as the CLI does) or send a signal."""

        handle = activity.client().get_workflow_handle(req.workflow_id)
        if req.action in ("approve", "reject"):
            request = DecisionRequest(user=req.user, verdict=Verdict(req.action), reason=req.reason, via="cli",
                                      groups=req.groups)
            try:
                result = await handle.execute_update(RollbackWorkflow.decide, request)
            except WorkflowUpdateFailedError as exc:
                refusal = str(exc.cause.message if hasattr(exc.cause, "message") else exc.cause)
                await handle.signal(RollbackWorkflow.decision_refused, DecisionRefusal(
                    user=req.user, verdict=Verdict(req.action), via="cli", refusal=refusal))
                return ActResult(accepted=False, message=f"refused: {refusal}")
            except Exception as exc:  # noqa: BLE001 - e.g. the incident already closed: the click is too late
                return ActResult(accepted=False, message=f"too late: {type(exc).__name__}: {exc}")
            return ActResult(accepted=True, message=result.message)
        if req.action in GOVERNANCE_UPDATES:
            return await self._govern(req)
        if req.action == "end":
            review = await _review_id(req.workflow_id)
            if review is not None:  # a review that outlives the scenario ends with it
                try:
                    await activity.client().get_workflow_handle(review).terminate(
                        reason="tabletop: the scenario's duration is over")
                except Exception:  # noqa: BLE001 - it completed
                    pass
            try:
                await handle.terminate(reason="tabletop: the scenario's duration is over")
            except Exception as exc:  # noqa: BLE001 - it closed meanwhile
                return ActResult(accepted=False, message=f"already closed: {exc}")
            return ActResult(accepted=True, message="scenario over: incident ended")
        if req.action == "alert":
            alert = Alert.model_validate(req.alert or {})
            try:
                await handle.signal(RollbackWorkflow.alerts, AlertBatch(alerts=[alert]))
            except Exception as exc:  # noqa: BLE001 - the incident closed: a late alert changes nothing
                return ActResult(accepted=False, message=f"incident already closed: {exc}")
            return ActResult(accepted=True, message=f"alert {alert.name} {alert.status.value}")
        action = PERSON_ACTIONS.get(req.action)
        if action is None:
            return ActResult(accepted=False, message=f"unknown action {req.action!r}")
        command = OperatorCommand(action=action, user=req.user, groups=req.groups, reason=req.reason, via="tabletop")
        try:
            done = await handle.execute_update(IncidentWorkflowBase.operate, command)
        except WorkflowUpdateFailedError as exc:
            refusal = str(exc.cause.message if hasattr(exc.cause, "message") else exc.cause)
            await handle.signal(IncidentWorkflowBase.refused, ActionRefusal(
                user=req.user, action=action.value, via="tabletop", refusal=refusal))
            return ActResult(accepted=False, message=f"refused: {refusal}")
        except Exception as exc:  # noqa: BLE001
            return ActResult(accepted=False, message=f"too late: {exc}")
        return ActResult(accepted=True, message=done.message)


    async def _govern(self, req: ActRequest) -> ActResult:
        """A governance action on the incident's review, refusals reported back as the CLI does."""
        review = await _review_id(req.workflow_id)
        if review is None:
            return ActResult(accepted=False, message="too early: the incident has no review yet")
        handle = activity.client().get_workflow_handle(review)
        request = GovernanceRequest(user=req.user, groups=req.groups, reason=req.reason, via="cli",
                                    regime=req.regime, reference=req.reference)
        try:
            result = await handle.execute_update(GOVERNANCE_UPDATES[req.action], request)
        except WorkflowUpdateFailedError as exc:
            refusal = str(exc.cause.message if hasattr(exc.cause, "message") else exc.cause)
            await handle.signal(ReviewWorkflow.governance_refused, GovernanceRefusal(
                action=req.action, user=req.user, via="cli", refusal=refusal))
            return ActResult(accepted=False, message=f"refused: {refusal}")
        except Exception as exc:  # noqa: BLE001 - the review already ended
            return ActResult(accepted=False, message=f"too late: {type(exc).__name__}: {exc}")
        return ActResult(accepted=True, message=result.message)


async def _review_id(incident: str) -> str | None:
    try:
        status = await activity.client().get_workflow_handle(incident).query(RollbackWorkflow.status)
    except Exception:  # noqa: BLE001 - no such incident (yet)
        return None
    return status.review_workflow_id


__all__ = [
    "ActRequest",
    "ActResult",
    "GateSeen",
    "ScenarioClock",
    "SentMessage",
    "SplitChange",
    "TabletopActivities",
    "TabletopChat",
    "TabletopFlags",
    "TabletopIntegrity",
    "TabletopOutputs",
    "TabletopTracker",
    "TimelineSignalSource",
]
