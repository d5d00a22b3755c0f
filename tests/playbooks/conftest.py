"""Realistic incident data for the rendering tests, built from the real workflow/activity models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from activities.contracts import AuditEvent, CheckResult, Measurement, SignalObservation
from playbooks.loader import library_folder, load_playbook
from playbooks.models import PlaybookSnapshot
from workflows.messages import (
    Alert,
    DecisionRecord,
    Gate,
    IncidentStatus,
    Outcome,
    Phase,
    StageProgress,
    Verdict,
)

T0 = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def chat_snapshot() -> PlaybookSnapshot:
    return load_playbook(library_folder() / "conversational-agent.yaml")


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture()
def incident_status(chat_snapshot: PlaybookSnapshot) -> IncidentStatus:
    """A chat-assistant incident that was confirmed, approved by two people and reverted in three stages."""
    events = [
        (0, "opened", "alertmanager", "alert GenAIQualityDegraded for release chat-2025-03-04 (severity high)"),
        (6, "breach_confirmed", "unship", "3 of the last 5 polls breached: hallucination-rate"),
        (6, "gate_opened", "unship", "approval requested from on_call, safety_lead (quorum 2)"),
        (9, "decision", "U04SAFETY01", "approve: grounding failures visible in transcripts"),
        (11, "decision", "U07ONCALL22", "approve | confirmed on dashboards"),
        (11.5, "stage_applied", "unship", "stage 1 (10%): 10% of users on the previous model"),
        (16.5, "stage_verified", "unship", "stage 1 (10%) verified"),
        (17, "stage_applied", "unship", "stage 2 (50%): 50% of users on the previous model"),
        (27, "stage_applied", "unship", "stage 3 (100%): 100% of users on the previous model"),
        (38, "integrity_passed", "unship", "2 integrity checks passed"),
    ]
    return IncidentStatus(
        incident_id="unship:chat-assistant:chat-2025-03-04",
        playbook="chat-assistant",
        playbook_version=chat_snapshot.version,
        scenario="conversational-agent",
        release="chat-2025-03-04",
        phase=Phase.CLOSED,
        outcome=Outcome.REVERTED,
        started_at=T0,
        detected_at=_at(6),
        decided_at=_at(11),
        first_revert_at=_at(11.5),
        full_revert_at=_at(27),
        closed_at=_at(38),
        previous_percent=100,
        stages=[
            StageProgress(index=0, percent=10, status="verified", applied_at=_at(11.5)),
            StageProgress(index=1, percent=50, status="verified", applied_at=_at(17)),
            StageProgress(index=2, percent=100, status="verified", applied_at=_at(27)),
        ],
        evidence=[
            SignalObservation(signal="hallucination-rate", category="model_quality", value=61.2,
                              threshold="> 35 per 10k answers", measurement=Measurement.BREACH, samples=18450,
                              observed_at=_at(5)),
            SignalObservation(signal="latency-p95", category="operational_health", value=2.31,
                              threshold="> 4 s", measurement=Measurement.HEALTHY, observed_at=_at(5)),
            SignalObservation(signal="thumbs-down-rate", category="user_experience", value=None,
                              threshold="> 12 %", measurement=Measurement.NO_DATA,
                              detail="142 rated answers, fewer than min_samples 200", observed_at=_at(5)),
            SignalObservation(signal="hallucination-rate", category="model_quality", value=74.9,
                              threshold="> 35 per 10k answers", measurement=Measurement.BREACH, samples=19011,
                              observed_at=_at(6)),
        ],
        alerts=[Alert(source="alertmanager", name="GenAIQualityDegraded",
                      labels={"alertname": "GenAIQualityDegraded", "service": "chat-assistant",
                              "release": "chat-2025-03-04", "severity": "high"})],
        decisions=[
            DecisionRecord(gate_id="g1", user="U04SAFETY01", verdict=Verdict.APPROVE,
                           reason="grounding failures visible in transcripts", via="slack", at=_at(9)),
            DecisionRecord(gate_id="g1", user="U07ONCALL22", verdict=Verdict.APPROVE,
                           reason="approve | confirmed on dashboards", via="cli", at=_at(11)),
        ],
        integrity=[
            CheckResult(name="flag-readback", kind="readback", passed=True, evidence="chat-model: 100% previous"),
            CheckResult(name="conversations-not-lost", kind="sql", passed=True, evidence="count = 0 (expected 0)"),
        ],
        audit=[AuditEvent(seq=i + 1, at=_at(m), kind=k, actor=a, message=msg)
               for i, (m, k, a, msg) in enumerate(events)],
    )


@pytest.fixture()
def message_context(incident_status: IncidentStatus) -> dict[str, Any]:
    """The context the rollback workflow sends with a notification (see workflows/base.py ``_notify``)."""
    s = incident_status
    return {
        "incident_id": s.incident_id, "playbook": s.playbook, "playbook_version": s.playbook_version,
        "scenario": s.scenario, "release": s.release, "phase": "awaiting_decision", "outcome": None,
        "previous_percent": 10,
        "stages": [
            {"index": 0, "percent": 10, "status": "verified", "applied_at": "2025-03-04T10:11:30Z"},
            {"index": 1, "percent": 50, "status": "baking", "applied_at": "2025-03-04T10:17:00Z"},
            {"index": 2, "percent": 100, "status": "pending", "applied_at": None},
        ],
        "evidence": [o.model_dump(mode="json") for o in s.evidence[1:]],
        "decisions": [d.model_dump(mode="json") for d in s.decisions],
        "gate": Gate(gate_id="g1", purpose="revert", roles=["on_call", "safety_lead"], users=["U04SAFETY01"],
                     groups=["S05MLONCALL"], quorum=2, approvals=["U04SAFETY01"], opened_at=_at(6),
                     deadline=_at(21)).model_dump(mode="json"),
        "mentions": ["U04SAFETY01", "S05MLONCALL"],
        "reason": "3 of the last 5 polls breached: hallucination-rate",
    }
