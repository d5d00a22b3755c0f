"""The incident service: what the HTTP API and the CLI can do to incidents, with no web or CLI framework.

Every operation is one Temporal call (signal-with-start, query, update, signal, visibility list). Failures
are typed exceptions (``ServiceError`` subclasses) that the adapters map to HTTP status codes and exit codes.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.contracts import (
    AuditBatch,
    AuditEvent,
    IncidentRecord,
    IncidentStore,
    ReportDraft,
    ReviewDocument,
    SearchHit,
)
from activities.rollback import workflow_status
from playbooks.loader import PlaybookError
from playbooks.models import PlaybookSnapshot, Severity
from workers.runtime.settings import Settings
from workflows.base import IncidentWorkflowBase
from workflows.messages import (
    Action,
    ActionRefusal,
    Alert,
    AlertBatch,
    AlertStatus,
    CommandResult,
    DecisionRefusal,
    DecisionRequest,
    DecisionResult,
    GovernanceRefusal,
    GovernanceRequest,
    GovernanceResult,
    IncidentStatus,
    OperatorCommand,
    ReleaseInput,
    ReviewStatus,
    RollbackInput,
    incident_id,
    refire_id,
)
from workflows.release import ReleaseWorkflow, release_id
from workflows.review import GOVERNANCE_UPDATES, ReviewWorkflow
from workflows.rollback import ALERTS_SIGNAL, NO_OPEN_GATE, RollbackWorkflow

T = TypeVar("T")
AuditEvents = list[AuditEvent]

log = logging.getLogger(__name__)

COMMANDS = {
    "abort": Action.ABORT,
    "pause": Action.PAUSE,
    "resume": Action.RESUME,
    "revert-now": Action.REVERT_NOW,
}
"""The operator actions by the name the API and CLI use; abort/pause/resume reach re-releases too."""

LIBRARY_AUDIT_ID = "unship:library"
"""The incident-store id under which playbook library reloads are audited (old and new versions, who)."""
TARGET_HOLDS_AUDIT_ID = "unship:target-holds"
"""The incident-store id under which an administrator's release of a target hold is audited."""
ADMIN_TRAIL_PLAYBOOK = "*"
"""The playbook an administrator's audit trail is stored under: not an incident (lists leave it out; the hash
chain checks in ``unship audit verify`` keep it)."""

# A release names a model/prompt version; it becomes part of the workflow id, so keep it printable.
_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,199}$")
_RPC_TIMEOUT = timedelta(seconds=10)
MAX_GENERATIONS = 1000
"""Incidents one (playbook, release) may open one after another (each a re-fire after the previous closed)."""
REMEMBERED = 10_000
"""How many of the most recently alerted incidents a service remembers the run and generation of."""


class ServiceError(Exception):
    """Base of every error the service reports; ``str()`` is one line a person can act on."""


class InvalidInput(ServiceError):
    """A request the service cannot accept as given (bad release name, unknown signal ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownPlaybook(ServiceError):
    def __init__(self, name: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none are loaded"
        super().__init__(f"unknown playbook {name!r}; known playbooks: {listing}")
        self.name = name
        self.known = known


class IncidentNotFound(ServiceError):
    def __init__(self, incident: str) -> None:
        super().__init__(f"no incident {incident!r}")
        self.incident_id = incident


class Refused(ServiceError):
    """The workflow refused the request (decision validator, closed incident)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecisionRefused(Refused):
    """The ``decide`` update's validator rejected the decision (unauthorized, stale gate, repeated)."""


class NoOpenGate(DecisionRefused):
    """A decision arrived while no approval gate is open (before confirmation, after the decision, closed)."""


class NotRecorded(ServiceError):
    """The incident exists but the store has nothing of the asked kind for it yet (e.g. no review written)."""


class IncidentClosed(Refused):
    def __init__(self, incident: str) -> None:
        super().__init__(f"incident {incident!r} is closed; it takes no more decisions or commands")
        self.incident_id = incident


class HolderRunning(Refused):
    """A target hold an administrator asked to release belongs to an incident that is still running."""


class TemporalUnavailable(ServiceError):
    """Temporal (or a worker answering for the workflow) did not respond."""


class TargetHoldInfo(BaseModel):
    """Which incident holds a flag or serving target (``unship target-holds list``)."""

    target: str
    incident_id: str
    held_at: datetime
    holder_status: str | None = Field(description="the holder's workflow: running, terminated, timed_out, "
                                      "canceled, failed, completed, not_found; null: Temporal cannot say now")


class IncidentSummary(BaseModel):
    """One line of the incident list, from Temporal visibility (and the incident store when available)."""

    incident_id: str
    kind: Literal["rollback", "release"]
    playbook: str
    release: str
    status: str  # Temporal execution status: running, completed, failed, terminated, ...
    started_at: datetime | None = None
    closed_at: datetime | None = None
    phase: str | None = None
    outcome: str | None = None


class IncidentPage(BaseModel):
    """One page of the incident list and the token of the next one (None: this was the last)."""

    incidents: list[IncidentSummary]
    next_page_token: bytes | None = None


def _not_taken_in_time(incident: str, what: str) -> TemporalUnavailable:
    """An update Temporal stopped waiting for: the worker is overloaded or down. It may still be taken later."""
    retry = ("retry with the same Idempotency-Key so it counts once" if what == "decision"
             else "check `unship status` before sending it again")
    return TemporalUnavailable(
        f"incident {incident!r} did not take the {what} in time (its worker is busy or not running); it may "
        f"still be taken: {retry}")


def _split_id(workflow_id: str) -> tuple[str, str]:
    _, _, rest = workflow_id.partition(":")
    rest = rest.partition("~")[0]  # a re-fire's generation is not part of the release
    playbook, _, release = rest.partition(":")
    return playbook, release


def _status_name(status: WorkflowExecutionStatus | None) -> str:
    return status.name.lower() if status is not None else "unknown"


class IncidentService:
    """Start, inspect and steer incidents; shared by ``workers.web.api`` and ``workers.cli``."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        playbooks: dict[str, PlaybookSnapshot],
        store: IncidentStore | None = None,
        library: Callable[[], dict[str, PlaybookSnapshot]] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.playbooks = playbooks
        self.store = store
        self._started_with: dict[str, PlaybookSnapshot] = {}
        self.library = library
        self._reload_lock = asyncio.Lock()
        # Shortcuts, not state: a forgotten incident costs one more Temporal call (its generation is found again
        # by signal-with-start), so both keep only the REMEMBERED most recently alerted incidents.
        self._generations: dict[str, int] = {}  # incident id -> newest known re-fire generation
        self._running: dict[str, str] = {}  # incident id -> the run this process last delivered alerts to
        self.remembered = REMEMBERED

    # --- the playbook library (the server's, never the client's) ------------------------------------------

    async def reload_playbooks(self, by: str) -> dict[str, tuple[str | None, str | None]]:
        """Load the library again and use it for new incidents (running ones keep their snapshot).

        Returns ``{name: (old version, new version)}`` for what changed, audited in the incident store under
        ``LIBRARY_AUDIT_ID``. A library with problems is refused (``InvalidInput``) and the old one stays.
        """
        if self.library is None:
            raise InvalidInput("playbooks", "this process has no playbook library to reload")
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(self.library)
            except (PlaybookError, ValueError) as exc:  # every problem as file:line: field: message
                raise InvalidInput("playbooks", f"the library has problems, the loaded one stays:\n{exc}") from exc
            changes = {name: (old.version if (old := self.playbooks.get(name)) else None,
                              new.version if (new := fresh.get(name)) else None)
                       for name in sorted(set(self.playbooks) | set(fresh))}
            changes = {n: c for n, c in changes.items() if c[0] != c[1]}
            self.playbooks = fresh
            listing = "; ".join(f"{n}: {o or '-'} -> {v or '-'}" for n, (o, v) in changes.items()) or "no change"
            log.info("playbook library reloaded by %s: %s", by, listing)
            if self.store is not None:
                await _admin_audit(self.store, LIBRARY_AUDIT_ID, "library", "playbooks_reloaded", by,
                                   f"playbook library reloaded: {listing}",
                                   changes={n: {"old": o, "new": v} for n, (o, v) in changes.items()},
                                   versions={n: s.version for n, s in sorted(fresh.items())})
            return changes

    # --- target holds (one active incident per flag or serving target) -----------------------------------

    async def target_holds(self) -> list[TargetHoldInfo]:
        """Every target hold, with what Temporal says of the holder's workflow."""
        store = self._store_for("the target holds")
        holds = await self._read(store.target_holds())
        statuses = await asyncio.gather(*(workflow_status(h.incident_id, self.client) for h in holds))
        return [TargetHoldInfo(target=h.target, incident_id=h.incident_id, held_at=h.held_at, holder_status=s)
                for h, s in zip(holds, statuses, strict=True)]

    async def release_target_hold(self, target: str, by: str, reason: str, force: bool = False) -> TargetHoldInfo:
        """Let go of ``target``'s hold for an administrator (audited under ``TARGET_HOLDS_AUDIT_ID``). A hold
        of a running incident is released only with ``force`` (abort the incident instead)."""
        if not reason.strip():
            raise InvalidInput("reason", "say why the hold is released (it goes on the audit trail)")
        store = self._store_for("the target holds")
        hold = next((h for h in await self._read(store.target_holds()) if h.target == target), None)
        if hold is None:
            raise NotRecorded(f"no incident holds {target!r} (`unship target-holds list` shows the holds)")
        status = await workflow_status(hold.incident_id, self.client)
        if status in (None, "running") and not force:
            state = "is still running" if status else "may still be running (Temporal cannot say now)"
            raise HolderRunning(f"incident {hold.incident_id} {state} and holds {target}: abort it instead, or "
                                "release with force if you know better")
        if await self._read(store.release_target(target)) is None:
            raise NotRecorded(f"no incident holds {target!r} any more")
        log.warning("target hold on %s (incident %s, %s) released by %s: %s", target, hold.incident_id,
                    status or "status unknown", by, reason)
        await _admin_audit(store, TARGET_HOLDS_AUDIT_ID, "target-holds", "target_hold_released", by,
                           f"released the hold of incident {hold.incident_id} ({status or 'status unknown'}) on "
                           f"{target}: {reason}", target=target, holder=hold.incident_id, holder_status=status,
                           forced=force)
        return TargetHoldInfo(target=target, incident_id=hold.incident_id, held_at=hold.held_at,
                              holder_status=status)

    # --- starting -----------------------------------------------------------------------------------------

    def snapshot(self, playbook: str) -> PlaybookSnapshot:
        """The loaded playbook called ``playbook``, or ``UnknownPlaybook`` listing the known ones."""
        found = self.playbooks.get(playbook)
        if found is None:
            raise UnknownPlaybook(playbook, sorted(self.playbooks))
        return found

    @staticmethod
    def check_release(release: str) -> str:
        if not _RELEASE_RE.match(release):
            raise InvalidInput(
                "release",
                f"{release[:80]!r} is not a release name; use 1-200 letters, digits and . _ : @ + = / - "
                "(starting with a letter or digit)",
            )
        return release

    async def trigger(
        self,
        playbook: str,
        release: str,
        *,
        alert: Alert | None = None,
        started_by: str = "operator",
        severity: Severity | None = None,
        reason: str = "",
    ) -> str:
        """Open (or join) the incident of ``release`` under ``playbook``; returns the incident id.

        Signal-with-start with ``USE_EXISTING``: a second trigger for a running incident becomes one more
        alert for it, never a second rollback.
        """
        snapshot = self.snapshot(playbook)
        self.check_release(release)
        if alert is None:
            alert = Alert(
                source="manual",
                status=AlertStatus.FIRING,
                name=f"manual trigger by {started_by}",
                labels={snapshot.playbook.trigger.release_label: release},
                annotations={"reason": reason} if reason else {},
                severity=severity or Severity.WARNING,
                received_at=datetime.now(UTC),
            )
        arg = RollbackInput(snapshot=snapshot, release=release, started_by=started_by, severity=severity)
        return await self.open_incident(arg, [alert])

    async def open_incident(self, arg: RollbackInput, alerts: list[Alert]) -> str:
        """Signal-with-start: deliver ``alerts`` to the incident of ``arg``'s playbook and release, starting it
        if it is not running. The one way incidents start (the CLI, the API and the alert gateway).

        Each incident id names one run. An alert for a release whose incident already closed opens a new
        incident ``<id>~2`` (then ``~3`` ...) that names the closed one it follows: Temporal refuses to reuse a
        closed id (``REJECT_DUPLICATE``), so the record, audit sequence and review of the closed incident are
        never shared with a second run. Returns the id of the incident the alerts reached.
        """
        base = incident_id(arg.snapshot.playbook.name, arg.release)
        generation = self._generations.get(base, 1)
        batch = AlertBatch(alerts=alerts)
        running = self._running.get(base)
        if running is not None:
            # The run this process last reached: a plain signal costs Temporal a third less than signal-with-start
            # (BENCHMARKS.md, alert storm). If that run has closed since, Temporal answers "not found" and the
            # signal-with-start below opens the next incident, exactly as without this shortcut.
            try:
                await self.client.get_workflow_handle_for(RollbackWorkflow.run, running).signal(
                    RollbackWorkflow.alerts, batch, rpc_timeout=_RPC_TIMEOUT)
                self._remember(base, running, generation)
                return running
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise await self._rpc_error(running, exc) from exc
                self._running.pop(base, None)
        for _ in range(MAX_GENERATIONS):
            workflow_id = refire_id(base, generation)
            follows = refire_id(base, generation - 1) if generation > 1 else None
            start = arg if arg.follows == follows else arg.model_copy(update={"follows": follows})
            try:
                await self._call(workflow_id, self.client.start_workflow(
                    RollbackWorkflow.run, start, id=workflow_id, task_queue=self.settings.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, rpc_timeout=_RPC_TIMEOUT,
                    start_signal=ALERTS_SIGNAL, start_signal_args=[batch]))
            except WorkflowAlreadyStartedError:  # this generation closed: the alert opens the next one
                generation += 1
                continue
            self._remember(base, workflow_id, generation)
            return workflow_id
        raise Refused(f"{base} was re-opened {MAX_GENERATIONS} times; investigate before opening more")

    def _remember(self, base: str, workflow_id: str, generation: int) -> None:
        """Note the run ``base``'s alerts reached, as the newest entry; forget the least recently alerted
        incidents beyond ``remembered`` (a long-running service sees an unbounded number of releases)."""
        self._running.pop(base, None)
        self._running[base] = workflow_id
        if generation > 1:
            self._generations.pop(base, None)
            self._generations[base] = generation
        for memo in (self._running, self._generations):
            while len(memo) > self.remembered:
                del memo[next(iter(memo))]

    async def release(
        self,
        playbook: str,
        release: str,
        *,
        stages: list[float] | None = None,
        started_by: str = "operator",
    ) -> str:
        """Start the guarded re-release of a fixed ``release`` (idempotent while it runs); returns its id."""
        snapshot = self.snapshot(playbook)
        self.check_release(release)
        # Each forward stage is watched as long as the playbook's longest revert bake.
        bake = max(stage.bake for stage in snapshot.playbook.rollback.stages).total_seconds() or 1.0
        arg = ReleaseInput(snapshot=snapshot, release=release, started_by=started_by, bake_seconds=bake,
                           **({"stages": stages} if stages is not None else {}))
        workflow_id = release_id(playbook, release)
        await self._call(workflow_id, self.client.start_workflow(
            ReleaseWorkflow.run, arg, id=workflow_id, task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, rpc_timeout=_RPC_TIMEOUT))
        return workflow_id

    # --- reading ------------------------------------------------------------------------------------------

    async def list(self, limit: int = 50) -> list[IncidentSummary]:
        """The newest incidents and re-releases, newest first."""
        return (await self.page(limit)).incidents

    async def page(self, limit: int = 50, page_token: bytes | None = None) -> IncidentPage:
        """One page of incidents and re-releases, newest first; pass ``next_page_token`` back for the next."""
        query = f'WorkflowType IN ("{RollbackWorkflow.__name__}", "{ReleaseWorkflow.__name__}")'
        summaries: list[IncidentSummary] = []
        try:
            listing = self.client.list_workflows(query, page_size=limit, next_page_token=page_token,
                                                 rpc_timeout=_RPC_TIMEOUT)
            await listing.fetch_next_page()
            for execution in listing.current_page or ():
                playbook, release = _split_id(execution.id)
                summaries.append(
                    IncidentSummary(
                        incident_id=execution.id,
                        kind="release" if execution.workflow_type == ReleaseWorkflow.__name__ else "rollback",
                        playbook=playbook,
                        release=release,
                        status=_status_name(execution.status),
                        started_at=execution.start_time,
                        closed_at=execution.close_time,
                    )
                )
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT and page_token:
                raise InvalidInput("cursor", "not a cursor this API handed out (or it expired); start again "
                                             "without one") from exc
            raise await self._rpc_error("", exc) from exc
        if self.store is not None and summaries:
            ids = [s.incident_id for s in summaries]
            try:
                records = {r.incident_id: r for r in await self.store.incidents_by_id(ids)}
            except Exception as exc:  # noqa: BLE001 - the store only enriches the list; Temporal is the source of truth
                log.warning("incident list without phases: the incident store did not answer: %s", exc)
                records = {}
            for summary in summaries:
                record = records.get(summary.incident_id)
                if record is not None:
                    summary.phase, summary.outcome = record.phase, record.outcome
        return IncidentPage(incidents=summaries, next_page_token=listing.next_page_token or None)

    async def get(self, incident: str) -> IncidentStatus:
        """The live status of one incident (phase, stages, gate, decisions, audit trail)."""
        handle = self.client.get_workflow_handle(incident)
        try:
            status = await handle.query(IncidentWorkflowBase.status, rpc_timeout=_RPC_TIMEOUT)
        except WorkflowQueryFailedError as exc:
            raise TemporalUnavailable(f"incident {incident!r} could not answer its status: {exc}") from exc
        except RPCError as exc:
            raise await self._rpc_error(incident, exc) from exc
        return status

    # --- steering -----------------------------------------------------------------------------------------

    async def decide(
        self, incident: str, request: DecisionRequest, update_id: str | None = None
    ) -> DecisionResult:
        """Approve or reject at the open gate. ``update_id`` makes retries of one click count once."""
        handle = self.client.get_workflow_handle(incident)
        try:
            return await handle.execute_update(RollbackWorkflow.decide, request, id=update_id,
                                               rpc_timeout=_RPC_TIMEOUT)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            reason = getattr(cause, "message", None) or str(cause or exc)
            await self._record_refusal(handle, request, reason)
            if getattr(cause, "type", None) == NO_OPEN_GATE:
                raise NoOpenGate(reason) from exc
            raise DecisionRefused(reason) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise _not_taken_in_time(incident, "decision") from exc
        except RPCError as exc:
            raise await self._rpc_error(incident, exc) from exc

    async def operate(self, incident: str, command: OperatorCommand) -> CommandResult:
        """Revert-now, abort, pause or resume; refused (and audited) unless the playbook gives the person the right."""
        handle = self.client.get_workflow_handle(incident)
        try:
            return await handle.execute_update(IncidentWorkflowBase.operate, command, rpc_timeout=_RPC_TIMEOUT)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            reason = getattr(cause, "message", None) or str(cause or exc)
            await self.record_refusal(incident, command.user, command.action.value, reason, via=command.via)
            raise Refused(reason) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise _not_taken_in_time(incident, command.action.value) from exc
        except RPCError as exc:
            raise await self._rpc_error(incident, exc) from exc

    async def record_refusal(self, incident: str, who: str, action: str, reason: str, via: str = "api") -> None:
        """Put a refused attempt on the incident's audit trail (a refused update leaves no trace in history)."""
        handle = self.client.get_workflow_handle(incident)
        try:
            await handle.signal(IncidentWorkflowBase.refused,
                                ActionRefusal(user=who, action=action, via=via, refusal=reason),
                                rpc_timeout=_RPC_TIMEOUT)
        except RPCError as exc:
            log.warning("could not record the refused %s on %s: %s", action, incident, exc.message)

    @staticmethod
    async def _record_refusal(handle: WorkflowHandle[Any, Any], request: DecisionRequest, reason: str) -> None:
        # A refused update leaves no trace in the history; this signal puts the attempt on the audit trail.
        refusal = DecisionRefusal(user=request.user, verdict=request.verdict, via=request.via,
                                  gate_id=request.gate_id, refusal=reason)
        try:
            await handle.signal(RollbackWorkflow.decision_refused, refusal, rpc_timeout=_RPC_TIMEOUT)
        except RPCError as exc:
            log.warning("could not record the refused decision on %s: %s", handle.id, exc.message)

    async def review(self, incident: str) -> ReviewDocument:
        """The incident's post-incident review, from the incident store."""
        store = self._store_for(incident)
        review = await self._read(store.review(incident))
        if review is None:
            if await self._read(store.incident(incident)) is None and not await self._exists(incident):
                raise IncidentNotFound(incident)
            raise NotRecorded(f"incident {incident!r} has no review yet; it is written when the incident closes")
        return review

    async def audit(self, incident: str, *, after: int = 0, limit: int = 100) -> AuditEvents:
        """The incident's audit trail (events with ``seq > after``, at most ``limit``), from the incident store."""
        store = self._store_for(incident)
        events = await self._read(store.events(incident))
        if not events and await self._read(store.incident(incident)) is None and not await self._exists(incident):
            raise IncidentNotFound(incident)
        return [e for e in events if e.seq > after][:limit]

    def _store_for(self, incident: str) -> IncidentStore:
        if self.store is None:
            raise NotRecorded(f"this process has no incident store, so it cannot read {incident!r}'s records; "
                              "ask the API of `unship up`")
        return self.store

    @staticmethod
    async def _read(call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as exc:  # any store failure means "not available now, retry"
            raise TemporalUnavailable(f"the incident store did not answer: {type(exc).__name__}: {exc}") from exc

    async def snapshot_of(self, incident: str, playbook: str, version: str) -> PlaybookSnapshot | None:
        """The playbook snapshot ``incident`` runs with: the loaded one when the version matches, else the one in
        the workflow's start input (read once from its history, then kept). None when it cannot be read."""
        loaded = self.playbooks.get(playbook)
        if loaded is not None and loaded.version == version:
            return loaded
        if incident in self._started_with:
            return self._started_with[incident]
        handle = self.client.get_workflow_handle(incident)
        try:
            async for event in handle.fetch_history_events(rpc_timeout=_RPC_TIMEOUT):
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                kind = ReleaseInput if event.workflow_execution_started_event_attributes.workflow_type.name \
                    == ReleaseWorkflow.__name__ else RollbackInput
                [arg] = await self.client.data_converter.decode(list(payloads)[:1], [kind])
                if len(self._started_with) >= 1000:  # a bounded memo: snapshots never change, so any can go
                    self._started_with.clear()
                self._started_with[incident] = arg.snapshot
                return arg.snapshot  # type: ignore[no-any-return]
        except (RPCError, ValueError, TypeError) as exc:
            log.warning("could not read the playbook snapshot of %s: %s", incident, exc)
        return None

    async def run_id(self, incident: str) -> str | None:
        """The id of the incident's latest run (for a deep link into the Temporal Web UI)."""
        try:
            return (await self.client.get_workflow_handle(incident).describe(rpc_timeout=_RPC_TIMEOUT)).run_id
        except RPCError:
            return None

    # --- governance (the review) ---------------------------------------------------------------------------

    async def review_id(self, incident: str) -> str:
        """The review workflow of ``incident`` (an incident id, or a review id as it is)."""
        if ":review:" in incident:
            return incident
        status = await self.get(incident)
        if not status.review_workflow_id:
            raise NotRecorded(f"incident {incident!r} has no review yet (phase {status.phase.value}); governance "
                              "starts when the incident closes")
        return status.review_workflow_id

    async def governance(self, incident: str) -> ReviewStatus:
        """The review's governance status: provenance, purge, legal hold, reports, tasks, lesson."""
        review = await self.review_id(incident)
        try:
            return await self.client.get_workflow_handle(review).query(ReviewWorkflow.status,
                                                                       rpc_timeout=_RPC_TIMEOUT)
        except WorkflowQueryFailedError as exc:
            raise TemporalUnavailable(f"review {review!r} could not answer its status: {exc}") from exc
        except RPCError as exc:
            raise await self._rpc_error(review, exc) from exc

    async def govern(self, incident: str, action: str, request: GovernanceRequest,
                     update_id: str | None = None) -> GovernanceResult:
        """Approve the purge, place or release a legal hold, or submit a report, as the verified person in
        ``request``; the review's validators check the playbook's roles, and a refusal is audited."""
        update = GOVERNANCE_UPDATES.get(action)
        if update is None:
            raise InvalidInput("action", f"{action!r} is not a governance action; use one of "
                               f"{', '.join(GOVERNANCE_UPDATES)}")
        review = await self.review_id(incident)
        handle = self.client.get_workflow_handle(review)
        try:
            return await handle.execute_update(update, request, id=update_id, rpc_timeout=_RPC_TIMEOUT)
        except WorkflowUpdateFailedError as exc:
            reason = getattr(exc.cause, "message", None) or str(exc.cause or exc)
            await self.record_governance_refusal(review, request.user, action, reason, via=request.via)
            raise Refused(reason) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise _not_taken_in_time(review, action) from exc
        except RPCError as exc:
            raise await self._rpc_error(handle.id, exc) from exc

    async def record_governance_refusal(self, incident: str, who: str, action: str, reason: str,
                                        via: str = "api") -> None:
        """Put a refused governance attempt on the review's audit trail (a refused update leaves no trace in
        history; the review outlives the incident's own workflow, so the refusal goes to the review)."""
        try:
            review = await self.review_id(incident)
        except ServiceError as exc:
            log.warning("could not record the refused %s on %s: %s", action, incident, exc)
            return
        try:
            await self.client.get_workflow_handle(review).signal(
                ReviewWorkflow.governance_refused,
                GovernanceRefusal(action=action, user=who, via=via, refusal=reason), rpc_timeout=_RPC_TIMEOUT)
        except RPCError as exc:
            log.warning("could not record the refused %s on %s: %s", action, review, exc.message)

    async def reports(self, incident: str) -> builtins.list[ReportDraft]:
        """The regulatory report drafts of ``incident`` (from the incident store)."""
        incident = incident.split(":review:", 1)[0]
        return await self._read(self._store_for(incident).reports(incident))

    async def search(self, text: str, limit: int = 20) -> builtins.list[SearchHit]:
        """Past reviews (and their tags) matching ``text``, across every playbook and team."""
        if not text.strip():
            raise InvalidInput("q", "give the words to search for")
        return await self._read(self._store_for("past reviews").search(text, limit))

    async def ready(self) -> bool:
        """True when the Temporal frontend answers."""
        try:
            return await self.client.service_client.check_health(timeout=timedelta(seconds=3))
        except Exception:  # noqa: BLE001 - readiness is a yes/no answer
            return False

    # --- errors -------------------------------------------------------------------------------------------

    async def _call(self, incident: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except RPCError as exc:
            raise await self._rpc_error(incident, exc) from exc

    async def _rpc_error(self, incident: str, exc: RPCError) -> ServiceError:
        text = exc.message or str(exc)
        if exc.status == RPCStatusCode.NOT_FOUND:
            # "not found" also covers closed workflows ("already completed", "aborted by closing workflow");
            # asking Temporal whether the id exists tells the two apart without parsing messages.
            return IncidentClosed(incident) if incident and await self._exists(incident) else IncidentNotFound(incident)
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED,
                          RPCStatusCode.RESOURCE_EXHAUSTED):
            hint = "is `unship up` (or `unship worker`) running?"
            return TemporalUnavailable(f"Temporal did not answer in time ({text}); {hint}")
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            return InvalidInput("request", text)
        return ServiceError(f"Temporal refused the request: {text}")

    async def _exists(self, incident: str) -> bool:
        try:
            await self.client.get_workflow_handle(incident).describe(rpc_timeout=_RPC_TIMEOUT)
        except RPCError:
            return False
        return True


async def _admin_audit(store: IncidentStore, audit_id: str, phase: str, kind: str, actor: str, message: str,
                       **data: Any) -> None:
    """Append an administrator's action to the store's audit trail ``audit_id`` (not an incident's)."""
    now = datetime.now(UTC)
    previous = await store.events(audit_id)
    event = AuditEvent(seq=len(previous) + 1, at=now, kind=kind, actor=actor, message=message, data=data)
    await store.write(AuditBatch(incident=IncidentRecord(
        incident_id=audit_id, playbook=ADMIN_TRAIL_PLAYBOOK, playbook_hash=phase, release="-", phase=phase, outcome=None,
        started_at=now, updated_at=now), events=[event]))
