"""Issue #14's "done when", end to end on the embedded stack, time-skipped: a demo-length incident of the shipped
chat-assistant playbook (real flagd flag file, SQLite incident store, SQLite conversation store, the real
activities, GitHub Issues as a local server speaking its REST API) ends with the provenance in the review, the
bad release's outputs retained and then purged at the 30-day deadline after an approval (counts in the
audit), the regulatory drafts with their clocks, the tasks created in GitHub and closed, and a proposed
threshold change in the review."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.flagd import FlagdFileProvider
from activities.integrity import IntegrityChecker
from activities.outputs import HttpOutputStore, OutputRouter, SqlOutputStore
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from activities.trackers import GitHubTracker, TrackerRouter
from playbooks.loader import content_hash, load_library
from playbooks.models import Playbook, PlaybookSnapshot, TrackerKind
from tabletop.learning import advise
from tabletop.scenarios import deep_merge
from tests.support.fake_trackers import FakeGitHub
from tests.support.processes import binary
from workflows.messages import (
    Alert,
    AlertBatch,
    DecisionRequest,
    GovernanceRequest,
    Outcome,
    Phase,
    PurgeState,
    ReviewStatus,
    RollbackInput,
    Verdict,
)
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.review import ReviewWorkflow
from workflows.rollback import ALERTS_SIGNAL, RollbackWorkflow
from workflows.sandbox import workflow_runner

pytestmark = pytest.mark.e2e  # a month of governance, time-skipped: the end-to-end time limit

BAD, GOOD = "chat-v2.4.0", "chat-v2.3.1"
TIMELINE = {"hallucination-rate": [18, 18, 18, 27, 31, 52, 71], "moderation-failures": [0.2], "latency-p95": [2.1],
            "thumbs-down-rate": [9], "fairness-gap": [1.0]}
SAMPLES = {"hallucination-rate": [4000], "moderation-failures": [4000], "thumbs-down-rate": [800]}


def chat_assistant() -> PlaybookSnapshot:
    """The shipped playbook, filing its review tasks in GitHub and polling them hourly."""
    shipped = load_library(None)["chat-assistant"]
    data = deep_merge(shipped.playbook.model_dump(mode="json"), {"review": {"tracker": {
        "kind": "github", "repository": "acme/ml-incidents", "sync_every": 3600,
        "assignees": {"on_call": "ana-oncall"}}}})
    playbook = Playbook.model_validate(data)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source=shipped.source)


def conversations(path: Path) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE conversation_turns (id INTEGER PRIMARY KEY, created_at TEXT, answered_at TEXT, "
                   "model_version TEXT)")
        db.executemany("INSERT INTO conversation_turns (created_at, answered_at, model_version) VALUES (?, ?, ?)",
                       [("t", "t", BAD)] * 2500 + [("t", "t", GOOD)] * 700)
    return f"sqlite:///{path}"


def turns(path: Path, release: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM conversation_turns WHERE model_version = ?",
                              (release,)).fetchone()[0])


async def test_a_demo_incident_ends_with_its_governance_done(tmp_path: Path) -> None:
    snap = chat_assistant()
    db = tmp_path / "conversations.db"
    environ = {"UNSHIP_CHAT_DB_URL": conversations(db)}
    flags = FlagdFileProvider(tmp_path / "flags.json")
    for target in snap.playbook.rollback.targets:
        await flags.ensure_flag(target)
    store = SqliteIncidentStore(tmp_path / "unship.db")
    env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                       test_server_existing_path=binary("temporal-test-server"))
    with FakeGitHub() as github:
        async with env:
            router = FlagRouter({"flagd": flags})
            signals = SignalRouter({"prometheus": ScriptedSignalSource(TIMELINE, samples=SAMPLES)})
            activities = RollbackActivities(
                router, signals, LogNotifier(), store, review_dir=tmp_path / "reviews", advisor=advise,
                integrity=IntegrityChecker(router, signals, environ=environ),
                outputs=OutputRouter({"sql": SqlOutputStore(environ=environ), "http": HttpOutputStore()}),
                trackers=TrackerRouter({TrackerKind.GITHUB: GitHubTracker("ghp_test", github.url,
                                                                          incident_url="https://unship.acme.test")}))
            queue = f"gov-{uuid.uuid4().hex[:6]}"
            async with Worker(env.client, task_queue=queue, workflows=INCIDENT_WORKFLOWS,
                              activities=activities.all(), workflow_runner=workflow_runner()):
                alert = Alert(source="alertmanager", name="GenAIQualityDegraded", fingerprint="fp",
                              labels={"alertname": "GenAIQualityDegraded", "service": "chat-assistant",
                                      "release": BAD, "model_version": "llm-2025-11-20",
                                      "prompt_version": "sys-v14", "adapter": "none"},
                              annotations={"eval_run": "eval-7731"})
                incident = await env.client.start_workflow(
                    RollbackWorkflow.run, RollbackInput(snapshot=snap, release=BAD, previous_release=GOOD),
                    id=f"unship:chat-assistant:{BAD}", task_queue=queue, start_signal=ALERTS_SIGNAL,
                    start_signal_args=[AlertBatch(alerts=[alert])])
                while (await incident.query(RollbackWorkflow.status)).phase is not Phase.AWAITING_DECISION:
                    await env.sleep(timedelta(seconds=30))
                for user, groups in (("U04SAFETY01", []), ("U_ONCALL_ANA", ["ml-oncall"])):
                    await incident.execute_update(RollbackWorkflow.decide, DecisionRequest(
                        user=user, groups=groups, verdict=Verdict.APPROVE, reason="hallucinations doubled"))
                status = await incident.result()
                assert status.outcome is Outcome.REVERTED and status.review_workflow_id
                live = await incident.query(RollbackWorkflow.status)  # what `unship status ID` shows
                assert live.provenance["model"] == "llm-2025-11-20" and live.provenance["evaluation"] == "eval-7731"
                review = env.client.get_workflow_handle(status.review_workflow_id)

                await env.sleep(timedelta(days=2))
                for regime in ("gdpr_breach", "internal_risk_committee", "eu_ai_act_serious_incident"):
                    await review.execute_update(ReviewWorkflow.submit_report, GovernanceRequest(
                        user="U07COMPLY01", regime=regime, reference=f"{regime}-1"))
                for number in list(github.issues):
                    github.close(number)
                await env.sleep(timedelta(days=28, hours=1))
                due: ReviewStatus = await review.query(ReviewWorkflow.status)
                assert due.purge is not None and due.purge.state is PurgeState.AWAITING_APPROVAL
                assert turns(db, BAD) == 2500  # retained until someone approves
                await review.execute_update(ReviewWorkflow.approve_purge, GovernanceRequest(
                    user="U07PRIVACY1", reason="retention limit reached"))
                # the purge needs no more simulated time; ask for the end instead of waiting on the clock
                for _ in range(200):
                    if (await review.describe()).status != WorkflowExecutionStatus.RUNNING:
                        break
                    await asyncio.sleep(0.05)
                final: ReviewStatus = await review.query(ReviewWorkflow.status)

    assert final.closed
    assert final.provenance == {"release": BAD, "model": "llm-2025-11-20", "prompt": "sys-v14", "adapter": "none",
                                "evaluation": "eval-7731"}
    assert final.purge is not None and final.purge.counts_before == {"conversation-turns": 2500}
    assert final.purge.counts_after == {"conversation-turns": 0}
    assert turns(db, BAD) == 0 and turns(db, GOOD) == 700
    assert len(github.issues) == 3 and all(t["state"] == "done" for t in final.tasks)
    events = {e.kind: e for e in await store.events(status.incident_id) if e.actor != "alertmanager"}
    retained = events["outputs_retained"]
    assert retained.data["counts"] == {"conversation-turns": 2500} and retained.at - status.started_at < timedelta(hours=1)
    purged = events["purged"]
    assert purged.data["counts_before"] == {"conversation-turns": 2500}
    assert purged.data["counts_after"] == {"conversation-turns": 0} and purged.data["approved_by"] == ["U07PRIVACY1"]
    assert timedelta(days=30) <= purged.at - status.started_at < timedelta(days=31)
    assert "tasks_done" in events and "review_closed" in events
    drafts = {d.regime.value: d for d in await store.reports(status.incident_id)}
    assert set(drafts) == {"gdpr_breach", "internal_risk_committee", "eu_ai_act_serious_incident"}
    gdpr_due = (status.detected_at or status.started_at) + timedelta(hours=72)
    assert gdpr_due.strftime("%Y-%m-%d %H:%M:%S UTC") in drafts["gdpr_breach"].markdown  # the 72-hour clock
    assert "llm-2025-11-20" in drafts["eu_ai_act_serious_incident"].markdown
    assert "U07COMPLY01" in drafts["gdpr_breach"].markdown  # who submitted, once submitted
    doc = await store.review(status.incident_id)
    assert doc is not None
    for text in ("## Provenance", "llm-2025-11-20", "set hallucination-rate threshold from 35 to", "```diff",
                 "-    threshold: {value: 35, direction: above, unit: per 10k answers}", "**purged**",
                 "gdpr_breach report due"):
        assert text in doc.markdown, text
