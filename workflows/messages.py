"""The public interface of the rollback workflows: inputs, signals, updates and the status query.

Clients (gateway, CLI, tabletop) and the workflows share these models. Every handler takes one model so
fields can be added without breaking running histories.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from activities.contracts import (
    AuditEvent,
    CheckResult,
    IncidentRecord,
    ServedState,
    SignalObservation,
    TargetState,
)
from playbooks.models import PlaybookSnapshot, Severity
from workflows.sequential import SignalEvidence

TASK_QUEUE = "unship"


def incident_id(playbook: str, release: str) -> str:
    """One workflow per (playbook, release) incident; further alerts become signals to it."""
    return f"unship:{playbook}:{release}"


def refire_id(incident: str, generation: int) -> str:
    """The id of the ``generation``-th incident of one (playbook, release): an alert that fires again after the
    previous one closed opens the next (``~`` never occurs in a release name and needs no escaping in a URL)."""
    return incident if generation <= 1 else f"{incident}~{generation}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Alert(_Model):
    """An alert from any source, normalized by the gateway."""

    source: str = Field(description="alertmanager | grafana | datadog | pagerduty | generic | manual | ...")
    status: AlertStatus = AlertStatus.FIRING
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    fingerprint: str = ""
    group_key: str = ""
    severity: Severity = Severity.WARNING
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    received_at: datetime | None = None


class AlertBatch(_Model):
    """Alerts for one incident that arrived together (the gateway's group commit)."""

    alerts: list[Alert]


class RollbackInput(_Model):
    snapshot: PlaybookSnapshot
    release: str
    previous_release: str | None = None
    started_by: str = Field(default="alert", description="who or what opened the incident")
    severity: Severity | None = Field(default=None, description="manual triggers: severity for break-glass")
    follows: str | None = Field(default=None, description="the closed incident of the same playbook and release "
                                                          "this one follows (an alert that fired again)")


class Phase(StrEnum):
    CONFIRMING = "confirming"
    AWAITING_DECISION = "awaiting_decision"
    ESCALATED = "escalated"
    INVESTIGATING = "investigating"
    REVERTING = "reverting"
    RELEASING = "releasing"
    PAUSED = "paused"
    VERIFYING = "verifying"
    REVIEW = "review"
    CLOSED = "closed"


class Outcome(StrEnum):
    DISMISSED = "dismissed"
    REJECTED = "rejected"
    WOULD_REVERT = "would_revert"  # dry_run
    REVERTED = "reverted"
    REVERTED_UNVERIFIED = "reverted_unverified"  # integrity checks failed
    HALTED = "halted"
    ABORTED = "aborted"
    PAUSED = "paused"  # fairness freeze that ended without a revert
    RELEASED = "released"  # re-release completed


class Verdict(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class DecisionRequest(_Model):
    """A person's decision at the open gate (the ``decide`` update)."""

    user: str = Field(min_length=1)
    verdict: Verdict
    reason: str = ""
    via: str = Field(default="cli", description="slack | cli | api")
    gate_id: str | None = Field(default=None, description="the gate clicked; stale gates are refused")
    groups: list[str] = Field(default_factory=list, description="user groups the user belongs to (resolved)")


class DecisionRefusal(_Model):
    """A decision the ``decide`` validator refused, sent back as a signal so the audit trail records it."""

    user: str
    verdict: Verdict
    via: str = "cli"
    gate_id: str | None = None
    refusal: str


class DecisionResult(_Model):
    accepted: bool
    gate_id: str
    approvals: int
    quorum: int
    message: str


class Command(_Model):
    """A signal from a person: abort, pause, resume or revert everyone now.

    Kept for histories recorded before the ``operate`` update; new incidents accept these signals only from
    unship itself (``by="unship"``, e.g. the fairness freeze pausing a re-release)."""

    by: str = "operator"
    reason: str = ""


class Action(StrEnum):
    """What a person may do outside the approval gate (the ``operate`` update)."""

    REVERT_NOW = "revert_now"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"


class OperatorCommand(_Model):
    """A person's action (the ``operate`` update); the validator refuses anyone the playbook does not allow."""

    action: Action
    user: str = Field(min_length=1, description="the verified identity (never a name the caller typed)")
    groups: list[str] = Field(default_factory=list, description="groups the user belongs to (resolved)")
    reason: str = ""
    via: str = Field(default="api", description="api | cli | slack | tabletop")


class CommandResult(_Model):
    accepted: bool
    action: Action
    message: str
    break_glass: bool = False


class ActionRefusal(_Model):
    """A refused action (a validator or the API said no), signalled back so the audit trail records it."""

    user: str
    action: str
    via: str = "api"
    refusal: str


class Gate(_Model):
    gate_id: str
    purpose: str = Field(description="revert | investigation")
    roles: list[str]
    users: list[str]
    groups: list[str]
    quorum: int
    require: dict[str, int] = Field(default_factory=dict, description="distinct approvers needed per role")
    approvals: list[str] = Field(default_factory=list)
    approver_roles: dict[str, list[str]] = Field(default_factory=dict, description="roles each approver holds")
    opened_at: datetime
    deadline: datetime | None = None
    escalated: bool = False
    evidence: str = Field(default="", description="what the decision is about, e.g. a flag found changed: "
                                                  "expected vs found")


class DecisionRecord(_Model):
    gate_id: str
    user: str
    verdict: Verdict
    reason: str
    via: str
    at: datetime


class StageProgress(_Model):
    index: int
    percent: float
    status: str = Field(description="pending | applying | baking | verified | failed")
    applied_at: datetime | None = None


class IncidentStatus(_Model):
    """What the ``status`` query returns: live phase, evidence, decisions and the whole audit trail."""

    incident_id: str
    playbook: str
    playbook_version: str
    scenario: str
    release: str
    phase: Phase
    outcome: Outcome | None = None
    paused: bool = False
    started_at: datetime
    detected_at: datetime | None = None
    decided_at: datetime | None = None
    first_revert_at: datetime | None = None
    full_revert_at: datetime | None = None
    closed_at: datetime | None = None
    previous_percent: float = Field(default=0, description="the share this incident intends on the previous model")
    flag_read: list[TargetState] = Field(default_factory=list,
                                         description="what the targets served when last read (or written)")
    flag_read_at: datetime | None = None
    served: list[ServedState] = Field(default_factory=list, description="which release each target's candidate "
                                      "serves, as read before the first write (release null: it cannot tell)")
    stages: list[StageProgress] = Field(default_factory=list)
    gate: Gate | None = None
    evidence: list[SignalObservation] = Field(default_factory=list)
    alerts: list[Alert] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    integrity: list[CheckResult] = Field(default_factory=list)
    audit: list[AuditEvent] = Field(default_factory=list)
    review_workflow_id: str | None = None
    provenance: dict[str, str] = Field(default_factory=dict, description="what the release served (model, "
                                       "prompt, adapter, dataset), by the playbook's provenance fields")
    # ``method: sequential``: where each signal's confirmation stands (evidence, pooled rate, bound)
    confirmation: list[SignalEvidence] = Field(default_factory=list)


def incident_record(status: IncidentStatus, playbook_hash: str, at: datetime) -> IncidentRecord:
    """The incident store's row for ``status`` as of ``at``: what the incident list shows."""
    gate = status.gate
    return IncidentRecord(
        incident_id=status.incident_id, playbook=status.playbook, playbook_hash=playbook_hash,
        release=status.release, phase=status.phase.value, outcome=status.outcome.value if status.outcome else None,
        started_at=status.started_at, updated_at=at, previous_percent=status.previous_percent,
        awaiting=list(gate.roles) if gate else [], decide_by=gate.deadline if gate else None,
    )


class ReviewInput(_Model):
    incident_id: str
    snapshot: PlaybookSnapshot
    status: IncidentStatus


class PurgeState(StrEnum):
    RETAINED = "retained"  # inside the retention period (or no purge is configured)
    AWAITING_APPROVAL = "awaiting_approval"  # the dry run counted; the approvers must agree
    LEGAL_HOLD = "legal_hold"  # approved or not, a legal hold blocks deletion until released
    PURGING = "purging"
    PURGED = "purged"
    FAILED = "failed"


class PurgeStatus(_Model):
    state: PurgeState = PurgeState.RETAINED
    retain_until: datetime | None = None
    due: datetime | None = None
    counted: dict[str, int] = Field(default_factory=dict, description="dry run: rows per location")
    roles: list[str] = Field(default_factory=list)
    quorum: int = 1
    approvals: list[str] = Field(default_factory=list)
    counts_before: dict[str, int] = Field(default_factory=dict)
    counts_after: dict[str, int] = Field(default_factory=dict)
    purged_at: datetime | None = None
    error: str = ""


class LegalHold(_Model):
    by: str
    reason: str
    at: datetime


class ReportStatus(_Model):
    regime: str
    due: datetime
    roles: list[str]
    drafted: bool = False
    submitted_by: str | None = None
    submitted_at: datetime | None = None
    reference: str = ""
    reminders: list[str] = Field(default_factory=list)


class ReviewStatus(_Model):
    incident_id: str
    document_written: bool = False
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    reminders_sent: list[str] = Field(default_factory=list)
    audit_pending: int = Field(default=0, description="review events not yet in the incident store (retried "
                                                      "with the next write)")
    provenance: dict[str, str] = Field(default_factory=dict)
    purge: PurgeStatus | None = None
    legal_hold: LegalHold | None = None
    reports: list[ReportStatus] = Field(default_factory=list)
    lesson: dict[str, Any] | None = None
    closed: bool = Field(default=False, description="every tracked task is done and every report submitted")


class GovernanceRequest(_Model):
    """A person's governance action on a review: approve the purge, place or release a legal hold, submit a
    report. The review's validators refuse the wrong person, a missing reason or the wrong moment."""

    user: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list)
    reason: str = ""
    via: str = "cli"
    regime: str | None = Field(default=None, description="submit_report: which report")
    reference: str = Field(default="", description="submit_report: the authority's case or receipt number")


class GovernanceResult(_Model):
    accepted: bool
    message: str


class GovernanceRefusal(_Model):
    action: str
    user: str
    via: str = "cli"
    refusal: str


class ReleaseInput(_Model):
    """Re-release: move cohorts forward to the (fixed) candidate, guarded by the same signals."""

    snapshot: PlaybookSnapshot
    release: str
    stages: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0],
                                description="cumulative percent of users on the candidate")
    bake_seconds: float = Field(default=300, gt=0, description="watch time after each stage")
    started_by: str = "operator"
