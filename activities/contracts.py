"""Data that crosses the workflow/activity boundary, and the Protocols every adapter implements.

Pure pydantic and typing only: the workflow sandbox imports this module, so it must not import httpx,
sqlite3, slack_sdk or anything that does I/O.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity

from playbooks.models import IntegrityCheck, OutputLocation, Playbook, Regime, Signal, Target, Tracker


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- signals -------------------------------------------------------------------------------------------


class Measurement(StrEnum):
    BREACH = "breach"
    HEALTHY = "healthy"
    NO_DATA = "no_data"


class SignalObservation(_Model):
    """One poll of one signal. ``value`` is None when it could not be measured (see ``detail``)."""

    signal: str
    category: str
    value: float | None
    threshold: str
    measurement: Measurement
    samples: float | None = None
    detail: str = ""
    observed_at: datetime | None = None
    # The counts behind a ratio (``samples`` is the outputs): what a sequential test weighs. ``control_*`` are
    # the baseline cohort's counts for ``compare_to: control``. None when the source gives only a value.
    events: float | None = None
    control_events: float | None = None
    control_outputs: float | None = None


class PollRequest(_Model):
    incident_id: str
    release: str
    signals: list[Signal]
    poll: int = Field(description="poll number within the phase, for scripted sources and logs")
    phase: str = "confirm"


class PollResult(_Model):
    observations: list[SignalObservation]


# --- cohorts (flags / serving) ---------------------------------------------------------------------------


class ServedState(_Model):
    target: str
    release: str | None = Field(description="the candidate release the target serves (None: cannot tell)")
    evidence: str = ""


class CohortChange(_Model):
    """Absolute desired state: ``previous_percent`` of users on the previous model, the rest on the candidate.

    Compare-and-set: a target named in ``expected`` is written only if it still shows the share the incident
    last wrote or read there (or already shows the desired one); otherwise nothing more is written and the
    result reports the conflict (expected vs found) for a person to decide.
    """

    incident_id: str
    idempotency_key: str = Field(description="{workflow_id}:{step}:{stage}")
    targets: list[Target]
    previous_percent: float = Field(ge=0, le=100)
    expected: dict[str, float] = Field(default_factory=dict,
                                       description="target ref -> share the incident last wrote or read there")
    forward_only: bool = Field(default=False, description=(
        "read every target first and expect what was read (compare-and-set in the same activity); write nothing "
        "if all already have more than previous_percent on the previous model (a revert never moves users back "
        "toward the release under suspicion)"))
    check_release: str | None = Field(default=None, description=(
        "before anything else, check that every target serves this release as the candidate (as served_release "
        "does); a target serving another writes nothing (release_mismatch)"))


class TargetState(_Model):
    target: str
    previous_percent: float | None
    detail: str = ""
    expected: float | None = Field(default=None, description="compare-and-set: the share the incident expected")
    found: float | None = Field(default=None, description="compare-and-set: the share found before writing")
    conflict: bool = Field(default=False, description="found differs from expected: nothing was written here")
    written_at: datetime | None = Field(default=None, description="when the split was written (activity clock)")
    written_by_attempt: int | None = Field(default=None, description="which attempt of the activity wrote it")


class CohortResult(_Model):
    states: list[TargetState]
    applied: bool = Field(description="False when the store already had this idempotency key applied")
    attempt: int = Field(default=1, description="the activity attempt that returned this result")
    skipped: bool = Field(default=False, description=(
        "forward_only: nothing written, every target already had more than previous_percent (states[].found)"))
    served: list[ServedState] = Field(default_factory=list, description="check_release: what each target serves")
    release_mismatch: bool = Field(default=False, description=(
        "check_release: a target serves another release as the candidate: nothing was read or written"))

    @property
    def matches(self) -> bool:
        return all(s.previous_percent is not None for s in self.states)

    @property
    def conflicts(self) -> list[TargetState]:
        return [s for s in self.states if s.conflict]

    @property
    def written_at(self) -> datetime | None:
        """When the first target was written (by this or an earlier attempt), if known."""
        return min((s.written_at for s in self.states if s.written_at is not None), default=None)


class ReadbackRequest(_Model):
    targets: list[Target]


class TargetHold(_Model):
    """Hold (or let go of) the incident's flag and serving targets: one active incident per target."""

    incident_id: str
    targets: list[Target] = Field(default_factory=list)


class TakenOver(_Model):
    """A hold this incident took over from an incident whose workflow is no longer running."""

    incident: str = Field(description="the incident that held the target")
    target: str
    status: str = Field(description="what Temporal says of its workflow: terminated, timed_out, canceled, "
                        "failed, completed, not_found")


class HoldResult(_Model):
    held: bool = Field(description="True when this incident now holds every target")
    holder: str | None = Field(default=None, description="the active incident holding a target, when not held")
    target: str | None = Field(default=None, description="the target it holds")
    taken_over: list[TakenOver] = Field(default_factory=list,
                                        description="holds of incidents that ended without letting go")


class StoredHold(_Model):
    """One row of the target holds: which incident holds a flag or serving target, since when."""

    target: str
    incident_id: str
    held_at: datetime


class ServedResult(_Model):
    states: list[ServedState]


# --- integrity -------------------------------------------------------------------------------------------


class IntegrityRequest(_Model):
    incident_id: str
    release: str
    checks: list[IntegrityCheck]
    targets: list[Target]
    expected_previous_percent: float


class CheckResult(_Model):
    name: str
    kind: str
    passed: bool
    evidence: str


class IntegrityResult(_Model):
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


# --- chat --------------------------------------------------------------------------------------------------


class MessageKind(StrEnum):
    OPENED = "opened"
    DISMISSED = "dismissed"
    DECISION_REQUEST = "decision_request"
    DECIDED = "decided"
    ESCALATED = "escalated"
    STAGE = "stage"
    HALTED = "halted"
    COMPLETED = "completed"
    PAUSED = "paused"
    INVESTIGATION = "investigation"
    REMINDER = "reminder"
    REHEARSAL = "rehearsal"


class Notification(_Model):
    """A message about one incident. The chat activity renders ``kind`` with the playbook's template."""

    incident_id: str
    kind: MessageKind
    channel: str
    context: dict[str, Any] = Field(default_factory=dict)
    template_overrides: dict[str, str] = Field(default_factory=dict)
    thread_ref: str | None = Field(default=None, description="message to update in place (e.g. Slack ts)")


class MessageRef(_Model):
    channel: str
    ref: str | None = None
    text: str = ""


class NotificationBatch(_Model):
    """Messages released together (e.g. everything held on the way to the first write), sent in order by one
    activity: the one message per incident that later news edits (``thread_ref``) is carried from one to the
    next, as the workflow carries it from one ``notify`` to the next."""

    incident_id: str
    notes: list[Notification]
    thread_channel: str = Field(description="the channel whose messages edit the incident's message in place")
    thread_ref: str | None = Field(default=None, description="the incident's message in that channel, if any yet")


class UndeliveredMessage(_Model):
    index: int = Field(description="position in the batch")
    kind: MessageKind
    channel: str
    error: str


class BatchDelivery(_Model):
    """How far a batch got: its result, its heartbeat (a retry resumes after the last message sent) and the
    details of its final failure (so the workflow records exactly which messages did not go out)."""

    sent: int = Field(default=0, description="messages of the batch tried so far, in order (sent or undelivered)")
    thread_ref: str | None = None
    undelivered: list[UndeliveredMessage] = Field(
        default_factory=list, description="messages a chat system refused for good (the rest still went out)")


# --- incident store ----------------------------------------------------------------------------------------


class AuditEvent(_Model):
    """One line of the audit trail: who did what, when (workflow time), and the evidence."""

    seq: int
    at: datetime
    kind: str
    actor: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class ChainedEvent(_Model):
    """An audit event as the store keeps it: its place in the incident's hash chain and the two hashes."""

    chain: int | None = Field(description="insertion position in the incident's chain (None: written before "
                                          "the chain existed)")
    event: AuditEvent
    prev_hash: str | None = None
    hash: str | None = None


class IncidentRecord(_Model):
    """One incident as the list shows it, as of its latest audit event."""

    incident_id: str
    playbook: str
    playbook_hash: str
    release: str
    phase: str
    outcome: str | None = None
    started_at: datetime
    updated_at: datetime
    previous_percent: float = Field(default=0, description="share of users on the previous model")
    awaiting: list[str] = Field(default_factory=list, description="roles whose decision is awaited (open gate)")
    decide_by: datetime | None = Field(default=None, description="when the open decision escalates or defaults")


class AuditBatch(_Model):
    incident: IncidentRecord
    events: list[AuditEvent]


class ReviewDocument(_Model):
    incident_id: str
    markdown: str
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="playbook, team, scenario, outcome, signals ...")


class SearchHit(_Model):
    incident_id: str
    snippet: str
    tags: list[str] = Field(default_factory=list)


class ReviewRequest(_Model):
    """Everything the review template needs: the incident's final status (as JSON data) and the playbook."""

    incident_id: str
    status: dict[str, Any]
    template: str | None = None


# --- governance: outputs of the release, regulatory reports, tracker tasks, lessons ---------------------------


class OutputCount(_Model):
    location: str
    kind: str
    count: int = Field(ge=0)


class OutputsRequest(_Model):
    """Count (``dry_run``) or delete the outputs ``release`` produced, in every location."""

    incident_id: str
    release: str
    locations: list[OutputLocation]
    dry_run: bool = True
    idempotency_key: str = ""


class PurgeProgress(_Model):
    """Heartbeat details of a purge: what each location had before and how many batches ran (resume point)."""

    before: dict[str, int] = Field(default_factory=dict)
    batches: dict[str, int] = Field(default_factory=dict)
    done: list[str] = Field(default_factory=list)


class OutputsResult(_Model):
    counts_before: list[OutputCount]
    counts_after: list[OutputCount] = Field(default_factory=list)
    batches: int = 0

    @property
    def total_before(self) -> int:
        return sum(c.count for c in self.counts_before)

    @property
    def total_after(self) -> int:
        return sum(c.count for c in self.counts_after)


class ReportRequest(_Model):
    """Draft one regulatory report from the incident's data (rendered by the regime's template)."""

    incident_id: str
    regime: Regime
    context: dict[str, Any]


class ReportDraft(_Model):
    incident_id: str
    regime: Regime
    markdown: str
    html: str
    drafted_at: datetime | None = None


class TrackerTask(_Model):
    """A review task to create in a tracker (``key`` makes creation idempotent)."""

    key: str
    title: str
    owner: str
    assignee: str | None = None
    due: datetime
    labels: list[str] = Field(default_factory=list)
    body: str = ""


class TrackedTask(_Model):
    key: str
    ref: str = Field(description="the tracker's id: GitHub issue number, Jira issue key, store:...")
    url: str = ""
    state: Literal["open", "done"] = "open"


class TasksRequest(_Model):
    incident_id: str
    tracker: Tracker
    tasks: list[TrackerTask]


class TaskStatesRequest(_Model):
    incident_id: str
    tracker: Tracker
    tasks: list[TrackedTask]


class TasksResult(_Model):
    tasks: list[TrackedTask]


class LessonRequest(_Model):
    """What the incident recorded: every poll (at, observations), and when the playbook confirmed."""

    incident_id: str
    playbook: Playbook
    playbook_source: str = ""
    started_at: datetime
    detected_at: datetime | None = None
    polls: list[dict[str, Any]] = Field(default_factory=list, description="[{at, observations: [...]}]")


class Lesson(_Model):
    """The learning loop's findings: per signal, when it first crossed, and what another threshold would do."""

    signals: list[dict[str, Any]] = Field(default_factory=list)
    confirmed_after_s: float | None = None
    proposal: str = Field(default="", description="the advisor's proposed change, in words")
    changes: list[tuple[list[str | int], float]] = Field(
        default_factory=list, description="the proposed change as (path in the playbook, new value) pairs")
    diff: str = Field(default="", description="unified diff of the playbook file the owner can apply")


# --- the activities the incident workflows call ------------------------------------------------------------


class IncidentActivities:
    """The activity interface of the incident workflows: what they may ask the outside world to do.

    Workflows call these by typed reference (``workflow.execute_activity_method(IncidentActivities.notify,
    ...)``), so they import no implementation; ``activities.rollback.RollbackActivities`` implements every
    method under the same activity name, and a test holds the two together.
    """

    @activity.defn(name="poll_signals")
    async def poll_signals(self, req: PollRequest) -> PollResult:
        """Measure the requested signals once."""
        raise NotImplementedError

    @activity.defn(name="apply_cohort")
    async def apply_cohort(self, req: CohortChange) -> CohortResult:
        """Move a share of users back to the previous model on every target (absolute, idempotent)."""
        raise NotImplementedError

    @activity.defn(name="read_cohort")
    async def read_cohort(self, req: ReadbackRequest) -> CohortResult:
        """Read what the targets serve now."""
        raise NotImplementedError

    @activity.defn(name="check_integrity")
    async def check_integrity(self, req: IntegrityRequest) -> IntegrityResult:
        """Run the playbook's integrity checks."""
        raise NotImplementedError

    @activity.defn(name="hold_targets")
    async def hold_targets(self, req: TargetHold) -> HoldResult:
        """Hold every target for the incident unless another active incident holds one."""
        raise NotImplementedError

    @activity.defn(name="release_targets")
    async def release_targets(self, req: TargetHold) -> None:
        """Let go of the incident's targets."""
        raise NotImplementedError

    @activity.defn(name="served_release")
    async def served_release(self, req: ReadbackRequest) -> ServedResult:
        """Which candidate release each target serves now (as far as the target says)."""
        raise NotImplementedError

    @activity.defn(name="notify")
    async def notify(self, req: Notification) -> MessageRef:
        """Render and send a chat message (or update the incident's message in place)."""
        raise NotImplementedError

    @activity.defn(name="notify_batch")
    async def notify_batch(self, req: NotificationBatch) -> BatchDelivery:
        """Render and send messages in order (one activity for messages released together)."""
        raise NotImplementedError

    @activity.defn(name="record_audit")
    async def record_audit(self, req: AuditBatch) -> None:
        """Project the incident and its new audit events into the incident store."""
        raise NotImplementedError

    @activity.defn(name="write_review")
    async def write_review(self, req: ReviewRequest) -> ReviewDocument:
        """Render and store the post-incident review."""
        raise NotImplementedError

    @activity.defn(name="count_outputs")
    async def count_outputs(self, req: OutputsRequest) -> OutputsResult:
        """Count the release's outputs in every location (the purge's dry run)."""
        raise NotImplementedError

    @activity.defn(name="purge_outputs")
    async def purge_outputs(self, req: OutputsRequest) -> OutputsResult:
        """Delete the release's outputs in bounded batches (idempotent, resumable), with counts before/after."""
        raise NotImplementedError

    @activity.defn(name="draft_report")
    async def draft_report(self, req: ReportRequest) -> ReportDraft:
        """Render a regulatory report (Markdown and print-ready HTML) and store it."""
        raise NotImplementedError

    @activity.defn(name="create_tasks")
    async def create_tasks(self, req: TasksRequest) -> TasksResult:
        """Create the review tasks in the tracker (idempotent by task key)."""
        raise NotImplementedError

    @activity.defn(name="sync_tasks")
    async def sync_tasks(self, req: TaskStatesRequest) -> TasksResult:
        """Read the tasks' states back from the tracker."""
        raise NotImplementedError

    @activity.defn(name="learn")
    async def learn(self, req: LessonRequest) -> Lesson:
        """First crossings, confirmation time, the threshold advisor's proposal and its playbook diff."""
        raise NotImplementedError


# --- adapter Protocols -------------------------------------------------------------------------------------


@runtime_checkable
class FlagProvider(Protocol):
    """Moves a share of users between a target's previous and candidate variants."""

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        """Write the absolute split; False when ``idempotency_key`` was already applied (nothing written)."""
        ...

    async def get_previous_percent(self, target: Target) -> float | None: ...


@runtime_checkable
class ServedReleaseReader(Protocol):
    """A flag/serving provider that can say which release its candidate variant serves."""

    async def served_release(self, target: Target) -> tuple[str | None, str]:
        """(the candidate release, or None when the target does not say; the evidence)."""
        ...


@runtime_checkable
class WriteLog(Protocol):
    """A FlagProvider that remembers when a write with a given idempotency key happened (flagd keeps it in the
    flag's metadata), so a retried write can be audited with the time it really happened."""

    async def written_at(self, target: Target, idempotency_key: str) -> datetime | None: ...


@runtime_checkable
class SignalSource(Protocol):
    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation: ...


@runtime_checkable
class ChatNotifier(Protocol):
    async def send(self, notification: Notification, text: str) -> MessageRef: ...


@runtime_checkable
class IncidentStore(Protocol):
    async def write(self, batch: AuditBatch) -> None: ...

    async def incidents(self, limit: int = 100, *, phase: str | None = None, playbook: str | None = None,
                        open_first: bool = False) -> list[IncidentRecord]: ...

    async def events(self, incident_id: str, after: int | None = None) -> list[AuditEvent]: ...

    async def save_review(self, review: ReviewDocument) -> None: ...

    async def incident(self, incident_id: str) -> IncidentRecord | None: ...

    async def incidents_by_id(self, incident_ids: list[str]) -> list[IncidentRecord]: ...

    async def review(self, incident_id: str) -> ReviewDocument | None: ...

    async def chained_events(self, incident_id: str) -> list[ChainedEvent]: ...

    async def hold_targets(self, incident_id: str, refs: list[str]) -> tuple[str, str] | None: ...

    async def release_targets(self, incident_id: str) -> None: ...

    async def target_holds(self) -> list[StoredHold]: ...

    async def release_target(self, target: str) -> str | None:
        """Delete the hold of one target; the incident that held it (None: nobody did)."""
        ...

    async def save_report(self, draft: ReportDraft) -> None: ...

    async def reports(self, incident_id: str) -> list[ReportDraft]: ...

    async def search(self, text: str, limit: int = 20) -> list[SearchHit]: ...


@runtime_checkable
class OutputStore(Protocol):
    """Where a release's outputs live: count them, delete one bounded batch (returns how many went)."""

    async def count(self, location: OutputLocation, release: str) -> int: ...

    async def delete_batch(self, location: OutputLocation, release: str, limit: int) -> int: ...


@runtime_checkable
class TaskTracker(Protocol):
    """A tracker the review tasks go to (GitHub Issues, Jira, the store)."""

    async def create(self, tracker: Tracker, incident_id: str, task: TrackerTask) -> TrackedTask: ...

    async def state(self, tracker: Tracker, task: TrackedTask) -> TrackedTask: ...


@runtime_checkable
class ThresholdAdvisor(Protocol):
    """The backtest sweep (tabletop) as the learning activity sees it; the CLI wires it into the worker."""

    def __call__(self, request: LessonRequest) -> Lesson: ...
