"""Governance after the revert, on the time-skipping server: provenance, outputs retained then purged after an
approval (a legal hold blocks it until released), regulatory drafts with their clocks and a late submission,
tracker tasks created in GitHub and closed, and the learning loop's proposed threshold change."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.contracts import AuditEvent, SignalObservation
from activities.trackers import GitHubTracker, TrackerRouter
from playbooks.models import TrackerKind
from tabletop.learning import advise
from tests.support.fake_trackers import FakeGitHub
from tests.support.playbooks import snapshot
from tests.support.processes import binary
from tests.support.world import WORKFLOWS, make_world
from workflows.messages import (
    Alert,
    GovernanceRequest,
    IncidentStatus,
    Outcome,
    Phase,
    PurgeState,
    ReviewInput,
    ReviewStatus,
    StageProgress,
)
from workflows.review import ReviewWorkflow
from workflows.sandbox import workflow_runner

BAD, GOOD = "chat-v2", "chat-v1"

GOVERNED: dict[str, Any] = {
    "roles": {"legal": {"users": ["U_LEGAL"]}, "privacy": {"users": ["U_PRIVACY"]},
              "compliance": {"users": ["U_COMPLIANCE"]}},
    "provenance": {"fields": {"model": "label:model_version", "prompt": "label:prompt_version",
                              "dataset": "annotation:eval_set", "adapter": "value:none"}},
    "data": {"outputs": [{"kind": "sql", "name": "answers", "dsn_env": "GOV_OUTPUTS_DSN", "table": "answers",
                          "version_column": "model_version", "batch_size": 100}],
             "retain": "7d", "purge": {"after": "30d", "approvers": ["legal", "privacy"]}},
    "regulatory": {"active_users": 2000, "reports": [{"regime": "gdpr_breach"},
                                                     {"regime": "eu_ai_act_serious_incident"},
                                                     {"regime": "internal_risk_committee"}]},
    "review": {"tracker": {"kind": "github", "repository": "acme/ml-incidents", "sync_every": "6h",
                           "assignees": {"on_call": "ana"}},
               "regulatory_report_due": None, "purge_outputs_after": None},
}


def _poll(started: Any, minute: int, value: float) -> AuditEvent:
    obs = SignalObservation(signal="hallucinations", category="model_quality", value=value, threshold="> 30",
                            measurement="breach" if value > 30 else "healthy")
    return AuditEvent(seq=10 + minute, at=started + timedelta(minutes=minute), kind="poll", actor="unship",
                      message=f"poll {minute}", data={"observations": [obs.model_dump(mode="json")]})


def incident(started: Any) -> IncidentStatus:
    """A reverted incident whose hallucinations crept up (12 -> 22, 25) before crossing 30 at minute 5."""
    values = [12, 12, 12, 22, 25, 41, 48, 55]
    snap = snapshot(**GOVERNED)
    return IncidentStatus(
        incident_id=f"unship:chat-test:{BAD}", playbook="chat-test", playbook_version=snap.version,
        scenario="conversational-agent", release=BAD, phase=Phase.CLOSED, outcome=Outcome.REVERTED,
        started_at=started, detected_at=started + timedelta(minutes=7), previous_percent=100,
        closed_at=started + timedelta(minutes=40), full_revert_at=started + timedelta(minutes=30),
        stages=[StageProgress(index=0, percent=10, status="verified", applied_at=started + timedelta(minutes=10)),
                StageProgress(index=1, percent=100, status="verified", applied_at=started + timedelta(minutes=30))],
        alerts=[Alert(source="alertmanager", name="GenAIQualityDegraded",
                      labels={"release": BAD, "model_version": "llm-2025-11-20", "prompt_version": "sys-v14"},
                      annotations={"eval_set": "evalset-2025-11-18"})],
        audit=[AuditEvent(seq=1, at=started, kind="opened", actor="alertmanager", message="incident opened"),
               *[_poll(started, i, v) for i, v in enumerate(values)],
               AuditEvent(seq=40, at=started + timedelta(minutes=40), kind="closed", actor="unship",
                          message="reverted: 100% of users on the previous model")],
    )


def outputs_db(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE answers (id INTEGER PRIMARY KEY, model_version TEXT, text TEXT)")
    conn.executemany("INSERT INTO answers (model_version, text) VALUES (?, ?)",
                     [(BAD, "bad")] * 250 + [(GOOD, "good")] * 40)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def rows(path: Path, release: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM answers WHERE model_version = ?", (release,)).fetchone()[0])
    finally:
        conn.close()


async def refused(handle: WorkflowHandle[Any, Any], update: Any, request: GovernanceRequest) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await handle.execute_update(update, request)
    return str(getattr(failed.value.cause, "message", failed.value.cause))


async def test_governance_after_the_revert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "answers.db"
    monkeypatch.setenv("GOV_OUTPUTS_DSN", outputs_db(db))
    env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                       test_server_existing_path=binary("temporal-test-server"))
    with FakeGitHub() as github:
        async with env:
            made = await make_world(env, tmp_path)
            world = made.world
            made.activities.trackers = TrackerRouter({TrackerKind.GITHUB: GitHubTracker("ghp_test", github.url)})
            made.activities.advisor = advise
            status = incident(await env.get_current_time())
            started = status.started_at
            async with Worker(env.client, task_queue=world.task_queue, workflows=WORKFLOWS,
                              activities=made.activities.all(), workflow_runner=workflow_runner()):
                review = await env.client.start_workflow(
                    ReviewWorkflow.run, ReviewInput(incident_id=status.incident_id, snapshot=snapshot(**GOVERNED),
                                                    status=status),
                    id=f"{status.incident_id}:review", task_queue=world.task_queue)
                await env.sleep(timedelta(hours=1))
                early: ReviewStatus = await review.query(ReviewWorkflow.status)
                assert early.provenance == {"release": BAD, "model": "llm-2025-11-20", "prompt": "sys-v14",
                                            "dataset": "evalset-2025-11-18", "adapter": "none"}
                assert early.purge is not None and early.purge.counted == {"answers": 250}
                assert early.purge.state is PurgeState.RETAINED
                assert [t["ref"] for t in early.tasks] == ["1"] and github.issues[1]["assignees"] == [{"login": "ana"}]
                assert [r.drafted for r in early.reports] == [True, True, True]
                assert early.lesson is not None and "threshold from 30 to" in early.lesson["proposal"]

                # the GDPR clock runs from detection: 72 h; compliance approves late, after the reminders
                why = await refused(review, ReviewWorkflow.submit_report,
                                    GovernanceRequest(user="U_ONCALL", regime="gdpr_breach"))
                assert "holds none of the roles" in why
                await env.sleep(timedelta(hours=80))
                result = await review.execute_update(ReviewWorkflow.submit_report, GovernanceRequest(
                    user="U_COMPLIANCE", regime="gdpr_breach", reference="DPA-2026-118"))
                assert "late" in result.message
                for regime in ("eu_ai_act_serious_incident", "internal_risk_committee"):
                    await review.execute_update(ReviewWorkflow.submit_report,
                                                GovernanceRequest(user="U_COMPLIANCE", regime=regime))
                github.close(1)

                # legal hold, then the purge deadline: dry run, approval, still held until released
                assert "needs a reason" in await refused(review, ReviewWorkflow.legal_hold, GovernanceRequest(user="U_LEGAL"))
                await review.execute_update(ReviewWorkflow.legal_hold, GovernanceRequest(
                    user="U_LEGAL", reason="litigation hold LH-42"))
                await env.sleep(timedelta(days=30))
                due: ReviewStatus = await review.query(ReviewWorkflow.status)
                assert due.purge is not None and due.purge.state is PurgeState.LEGAL_HOLD
                assert "holds none of the roles" in await refused(
                    review, ReviewWorkflow.approve_purge, GovernanceRequest(user="U_ONCALL"))
                await review.execute_update(ReviewWorkflow.approve_purge, GovernanceRequest(
                    user="U_PRIVACY", reason="retention limit reached"))
                await env.sleep(timedelta(days=1))
                assert rows(db, BAD) == 250  # approved, but the hold blocks the deletion
                await review.execute_update(ReviewWorkflow.release_legal_hold, GovernanceRequest(
                    user="U_LEGAL", reason="LH-42 closed"))
                final: ReviewStatus = await review.result()

    assert final.closed and final.purge is not None and final.purge.state is PurgeState.PURGED
    assert final.purge.counts_before == {"answers": 250} and final.purge.counts_after == {"answers": 0}
    assert rows(db, BAD) == 0 and rows(db, GOOD) == 40
    assert final.reports[0].submitted_by == "U_COMPLIANCE" and final.reports[0].reminders == ["report_reminder",
                                                                                             "report_due"]
    events = [e for e in await world.store.events(status.incident_id) if e.actor != "alertmanager"]
    kinds = [e.kind for e in events]
    for kind in ("provenance", "lesson", "outputs_retained", "tasks_created", "report_drafted", "review_written",
                 "report_reminder", "report_due", "report_submitted", "legal_hold", "retention_ended",
                 "purge_dry_run", "purge_approval", "purge_approved", "legal_hold_released", "purge_started",
                 "purged", "task_done", "tasks_done", "review_closed"):
        assert kind in kinds, f"{kind} missing from {kinds}"
    assert kinds.index("legal_hold_released") < kinds.index("purge_started")
    purged = next(e for e in events if e.kind == "purged")
    assert purged.data["counts_before"] == {"answers": 250} and purged.data["approved_by"] == ["U_PRIVACY"]
    assert purged.at - started >= timedelta(days=31)
    gdpr = next(e for e in events if e.kind == "report_submitted" and e.data["regime"] == "gdpr_breach")
    assert gdpr.data["late"] is True and gdpr.actor == "U_COMPLIANCE"
    reports = {r.regime.value: r for r in await world.store.reports(status.incident_id)}
    assert set(reports) == {"gdpr_breach", "eu_ai_act_serious_incident", "internal_risk_committee"}
    assert "llm-2025-11-20" in reports["eu_ai_act_serious_incident"].markdown
    assert "<table>" in reports["gdpr_breach"].html and "@page" in reports["gdpr_breach"].html
    assert "submitted" in reports["gdpr_breach"].markdown and "U_COMPLIANCE" in reports["gdpr_breach"].markdown
    doc = await world.store.review(status.incident_id)
    assert doc is not None
    for text in ("## Provenance", "llm-2025-11-20", "## Learning loop", "```diff", "## Data: retention and purge",
                 "**purged**", "## Regulatory reports", "[1](https://github.com/acme/ml-incidents/issues/1)"):
        assert text in doc.markdown, text
    assert [h.incident_id for h in await world.store.search("hallucinations purged")] == [status.incident_id]
    assert "users exposed to the release after detection: 2000 active users, 42000 user-minutes" in reports["gdpr_breach"].markdown
