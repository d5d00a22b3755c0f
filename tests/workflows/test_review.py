"""The post-incident review outlives the rollback and keeps its deadlines (time-skipped)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.contracts import AuditEvent
from tests.support.playbooks import snapshot
from tests.support.processes import binary
from tests.support.temporal import workflow_result
from tests.support.world import WORKFLOWS, make_world
from workflows.messages import IncidentStatus, Outcome, Phase, ReviewInput, ReviewStatus
from workflows.review import ReviewWorkflow
from workflows.sandbox import workflow_runner


def reverted_incident(started: datetime) -> IncidentStatus:
    snap = snapshot()
    return IncidentStatus(
        incident_id="unship:chat-test:chat-v2", playbook="chat-test", playbook_version=snap.version,
        scenario="conversational-agent", release="chat-v2", phase=Phase.CLOSED, outcome=Outcome.REVERTED,
        started_at=started, detected_at=started + timedelta(minutes=2), previous_percent=100,
        closed_at=started + timedelta(minutes=30),
        audit=[AuditEvent(seq=1, at=started, kind="opened", actor="alertmanager", message="incident opened"),
               AuditEvent(seq=2, at=started + timedelta(minutes=30), kind="closed", actor="unship",
                          message="reverted: 100% of users on the previous model")],
    )


async def test_review_document_tasks_and_durable_reminders(tmp_path: Path) -> None:
    # A server of its own: this test skips a month of simulated time.
    env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                       test_server_existing_path=binary("temporal-test-server"))
    async with env:
        made = await make_world(env, tmp_path)
        world = made.world
        status = reverted_incident(await env.get_current_time())
        async with Worker(env.client, task_queue=world.task_queue, workflows=WORKFLOWS,
                          activities=made.activities.all()):
            review = await env.client.start_workflow(
                ReviewWorkflow.run, ReviewInput(incident_id=status.incident_id, snapshot=snapshot(), status=status),
                id=f"{status.incident_id}:review", task_queue=world.task_queue)
            result: ReviewStatus = await workflow_result(review)

    assert result.document_written
    assert [{k: t[k] for k in ("title", "owner", "owners", "due", "state")} for t in result.tasks] == [
        {"title": "Write the incident summary", "owner": "on_call", "owners": ["U_ONCALL", "U_ONCALL2"],
         "due": (status.started_at + timedelta(days=3)).isoformat(), "state": "open"}]
    assert result.reminders_sent == ["regulatory_report_reminder", "regulatory_report_due", "purge_due"]
    doc = await world.store.review(status.incident_id)
    assert doc is not None and "chat-v2" in doc.markdown and "Write the incident summary" in doc.markdown
    events = await world.store.events(status.incident_id)
    review_events = [e for e in events if e.actor == "unship-review"]
    assert [e.kind for e in review_events] == ["provenance", "lesson", "review_written", "regulatory_report_reminder",
                                               "regulatory_report_due", "purge_due", "review_closed"]
    # the reminders fire at the playbook's deadlines, counted from the incident's start
    at = {e.kind: e.at - status.started_at for e in review_events}
    assert timedelta(hours=48) <= at["regulatory_report_reminder"] < timedelta(hours=48, seconds=5)
    assert timedelta(hours=72) <= at["regulatory_report_due"] < timedelta(hours=72, seconds=5)
    assert timedelta(days=30) <= at["purge_due"] < timedelta(days=30, seconds=5)
    reminders = [n for n, _ in world.chat.sent if n.kind.value == "reminder"]
    assert [n.context["what"] for n in reminders] == result.reminders_sent
    assert datetime.now(UTC) - status.started_at < timedelta(days=1)  # a month passed only on the test server


class _StoreDownUntil:
    """The incident store, refusing every write until ``up`` is set (an outage longer than the retry deadline)."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.up = False
        self.refused = 0

    async def write(self, batch: object) -> None:
        if not self.up:
            self.refused += 1
            raise ConnectionError("incident store unavailable")
        await self.store.write(batch)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


async def test_reminders_survive_a_store_outage_and_the_events_land_once_it_is_back(tmp_path: Path) -> None:
    env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                       test_server_existing_path=binary("temporal-test-server"))
    async with env:
        made = await make_world(env, tmp_path)
        world = made.world
        down = _StoreDownUntil(world.store)
        made.activities.store = down  # type: ignore[assignment]
        status = reverted_incident(await env.get_current_time())
        async with Worker(env.client, task_queue=world.task_queue, workflows=WORKFLOWS,
                          activities=made.activities.all(), workflow_runner=workflow_runner()):
            review = await env.client.start_workflow(
                ReviewWorkflow.run, ReviewInput(incident_id=status.incident_id, snapshot=snapshot(), status=status),
                id=f"{status.incident_id}:review", task_queue=world.task_queue)
            # the review document write goes through the review store, which is up; its audit event is not
            await env.sleep(timedelta(hours=50))
            mid: ReviewStatus = await review.query(ReviewWorkflow.status)
            # the first reminder went out during the outage; its event waits with the document's
            assert mid.document_written and mid.reminders_sent == ["regulatory_report_reminder"]
            assert mid.audit_pending == 4  # provenance, lesson, review_written, the reminder
            down.up = True  # back before the last deadline: the next write carries what was pending
            result: ReviewStatus = await workflow_result(review)

    assert down.refused > 0
    # every reminder went out although the store was down for two days of it
    assert result.reminders_sent == ["regulatory_report_reminder", "regulatory_report_due", "purge_due"]
    assert result.audit_pending == 0
    kinds = [e.kind for e in await world.store.events(status.incident_id) if e.actor == "unship-review"]
    assert kinds == ["provenance", "lesson", "review_written", "regulatory_report_reminder", "regulatory_report_due",
                     "purge_due", "review_closed"]
