"""Pure helpers of the review's governance: provenance, exposure, task keys, report context.

Deterministic (the review workflow calls them): no I/O, no clock but the values passed in.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from playbooks.models import Playbook, RegulatoryReport
from workflows.messages import Alert, IncidentStatus


def provenance(playbook: Playbook, release: str, alerts: list[Alert]) -> dict[str, str]:
    """What the release served, by the playbook's ``provenance.fields`` (first alert that carries each)."""
    found: dict[str, str] = {"release": release}
    for name, source in playbook.provenance.fields.items():
        kind, _, key = source.partition(":")
        if kind == "release":
            found[name] = release
        elif kind == "value":
            found[name] = key
        else:
            for alert in alerts:
                values = alert.labels if kind == "label" else alert.annotations
                if values.get(key):
                    found[name] = values[key]
                    break
            else:
                found[name] = f"(not in the alerts' {kind}s: {key})"
    return found


def exposure_user_minutes(status: IncidentStatus, users: float | None, until: datetime) -> float | None:
    """User-minutes on the bad release from detection until every user was back (or ``until``)."""
    if users is None:
        return None
    start = status.detected_at or status.started_at
    moments = sorted((s.applied_at, s.percent) for s in status.stages if s.applied_at is not None)
    end = status.full_revert_at or status.closed_at or until
    total, at, on_bad = 0.0, start, 1.0
    for applied, percent in moments:
        if applied <= at:
            on_bad = 1 - percent / 100
            continue
        stop = min(applied, end)
        total += max(0.0, (stop - at).total_seconds()) / 60 * users * on_bad
        at, on_bad = stop, 1 - percent / 100
    if end > at:
        total += (end - at).total_seconds() / 60 * users * on_bad
    return round(total, 1)


def task_key(incident_id: str, index: int, title: str) -> str:
    """A stable key per review task (the tracker ticket's idempotency label)."""
    return hashlib.sha256(f"{incident_id}\n{index}\n{title}".encode()).hexdigest()[:12]


def first_crossing(status: IncidentStatus) -> datetime | None:
    """When any signal first measured a breach during the incident."""
    times = [o.observed_at for o in status.evidence if o.measurement.value == "breach" and o.observed_at]
    polls = [e.at for e in status.audit if e.kind == "poll" and any(
        isinstance(o, dict) and o.get("measurement") == "breach" for o in e.data.get("observations", []))]
    found = sorted([*times, *polls])
    return found[0] if found else None


def polls(status: IncidentStatus) -> list[dict[str, Any]]:
    """Every recorded poll of the incident: ``{at, observations}`` from the audit trail."""
    return [{"at": e.at.isoformat(), "observations": e.data.get("observations", [])}
            for e in status.audit if e.kind == "poll"]


def measures(status: IncidentStatus) -> list[dict[str, Any]]:
    """The corrective measures on the audit trail (decisions, cohorts moved, checks, closing)."""
    kinds = {"decision", "decided", "stage_applied", "revert_all", "integrity_check", "closed", "purged",
             "legal_hold", "legal_hold_released"}
    return [{"at": e.at.isoformat(), "what": e.message} for e in status.audit if e.kind in kinds]


def summary(status: IncidentStatus) -> str:
    outcome = status.outcome.value if status.outcome else "open"
    return (f"Release `{status.release}` of {status.playbook} (playbook version {status.playbook_version}) "
            f"breached its health signals; the incident ended **{outcome}** with "
            f"{status.previous_percent:g}% of users back on the previous model.")


def report_context(status: IncidentStatus, playbook: Playbook, report: RegulatoryReport, due: datetime,
                   prov: dict[str, str], now: datetime, outputs_note: str, submitted_by: str | None = None,
                   submitted_at: datetime | None = None, reference: str = "") -> dict[str, Any]:
    crossing = first_crossing(status)
    return {
        "incident_id": status.incident_id, "playbook": playbook.name, "scenario": playbook.scenario.value,
        "release": status.release, "regime": report.regime.value, "approvers": report.approvers,
        "outcome": status.outcome.value if status.outcome else None,
        "started_at": status.started_at.isoformat(),
        "detected_at": (status.detected_at or status.started_at).isoformat(),
        "first_crossing_at": crossing.isoformat() if crossing else None,
        "closed_at": status.closed_at.isoformat() if status.closed_at else None,
        "due_at": due.isoformat(), "provenance": prov, "summary": summary(status),
        "active_users": playbook.regulatory.active_users,
        "exposure_user_minutes": exposure_user_minutes(status, playbook.regulatory.active_users, now),
        "measures": measures(status), "outputs_note": outputs_note,
        "timeline": [e.model_dump(mode="json") for e in status.audit if e.kind != "poll"],
        "submitted_by": submitted_by, "submitted_at": submitted_at.isoformat() if submitted_at else None,
        "reference": reference,
    }


def tags(status: IncidentStatus, playbook: Playbook) -> list[str]:
    """Search tags of a review: playbook, owner team, scenario, outcome, release, breached signals."""
    breached = sorted({o.signal for o in status.evidence if o.measurement.value == "breach"})
    found = [playbook.name, playbook.scenario.value, status.release,
             status.outcome.value if status.outcome else "open", *(f"signal:{s}" for s in breached)]
    if playbook.owner:
        found.append(f"team:{playbook.owner}")
    return found
