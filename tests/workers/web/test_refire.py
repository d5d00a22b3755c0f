"""An alert that fires again after its incident closed (issue 13, defect 3): over real HTTP to the gateway and
the real Temporal dev server, with the real SQLite incident store and review files.

It used to start a second run under the same incident id: its audit sequence restarted at 1, the store dropped
every one of its events, and its review ("stage 1/2/3 skipped") replaced the real incident's review. Now a
re-fire after close opens a new incident, ``<id>~2``, that names the closed one it follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from tests.support import alert_payloads as p
from tests.support.playbooks import snapshot
from tests.support.stack import make_settings, serve
from workers.runtime.service import IncidentService
from workers.runtime.worker import run_worker
from workers.web.app import create_app
from workflows.messages import IncidentStatus
from workflows.review import REVIEW_SEQ_BASE
from workflows.rollback import RollbackWorkflow

BEARER = "alert-token-0123456789"
AUTOMATIC = {"confirmation": {"window": "0s"}, "decision": {"mode": "automatic"},
             "rollback": {"stages": [{"percent": 10, "bake": "1s"}, {"percent": 50, "bake": "1s"},
                                     {"percent": 100, "bake": "1s"}]},
             "review": {"regulatory_report_due": None, "purge_outputs_after": None}}


async def closed(service: IncidentService, incident: str) -> IncidentStatus:
    """The incident's final status once its run completed (the review child started, the audit drained)."""
    handle = service.client.get_workflow_handle_for(RollbackWorkflow.run, incident)
    status = await asyncio.wait_for(handle.result(), 60)
    assert status.review_workflow_id is not None and service.store is not None
    # the review child outlives the run: wait (no deadline but the test's) until its first event is stored
    while not any(e.kind == "review_written" for e in await service.store.events(incident)):
        await asyncio.sleep(0.05)
    return status


@pytest.fixture
async def stack(local_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                                                       IncidentService, Path]]:
    settings = make_settings(tmp_path, local_env, alert_bearer_token=BEARER)
    settings.state_dir.mkdir(parents=True)
    snap = snapshot(**AUTOMATIC)
    store = SqliteIncidentStore(settings.state_dir / "unship.db")
    service = IncidentService(local_env.client, settings, {snap.playbook.name: snap}, store=store)
    activities = RollbackActivities(FlagRouter({"flagd": ScriptedFlagProvider()}),
                                    SignalRouter({"scripted": ScriptedSignalSource({})}), LogNotifier(), store,
                                    review_dir=settings.state_dir / "reviews")
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(local_env.client, settings, activities, stop))
    try:
        async with serve(create_app(service, settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http, service, settings.state_dir
    finally:
        stop.set()
        await worker
        async for execution in local_env.client.list_workflows(f'TaskQueue="{settings.task_queue}"'):
            if execution.close_time is None:
                await local_env.client.get_workflow_handle(execution.id).terminate("test cleanup")


async def test_an_alert_refired_after_close_opens_a_new_incident_and_keeps_the_record(
        stack: tuple[httpx.AsyncClient, IncidentService, Path]) -> None:
    http, service, state = stack
    store = service.store
    assert isinstance(store, SqliteIncidentStore)
    alert = p.raw(p.generic({"alertname": "GenAIQualityDegraded", "service": "chat", "release": "refire-v1"},
                            fingerprint="refire-1"))
    first = await http.post("/v1/alerts/generic", content=alert, headers=p.bearer(BEARER))
    assert first.status_code == 202, first.text
    incident = "unship:chat-test:refire-v1"
    assert first.json()["incidents"] == [incident]
    one = await closed(service, incident)
    assert one.outcome is not None and one.outcome.value == "reverted"
    review_one = (await store.review(incident))
    assert review_one is not None and "skipped" not in review_one.markdown

    again = await http.post("/v1/alerts/generic", content=alert, headers=p.bearer(BEARER))
    assert again.status_code == 202, again.text
    follow_up = incident + "~2"
    assert again.json()["incidents"] == [follow_up]
    two = await closed(service, follow_up)
    [opened] = [e for e in two.audit if e.kind == "opened"]
    assert incident in opened.message and opened.data["follows"] == incident

    # Both records are whole and apart: every event of each run is in the store, under its own incident.
    for status in (one, two):
        stored = await store.events(status.incident_id)
        run = [(e.seq, e.kind, e.message) for e in stored if e.seq < REVIEW_SEQ_BASE]
        assert run == [(e.seq, e.kind, e.message) for e in status.audit]
        review_events = [e.kind for e in stored if e.seq >= REVIEW_SEQ_BASE]
        assert review_events.count("review_written") == 1, review_events  # its own review, once
    # The first incident's review is still its own, in the store and on disk.
    assert await store.review(incident) == review_one
    assert (state / "reviews" / "unship_chat-test_refire-v1.md").read_text() == review_one.markdown
    review_two = await store.review(follow_up)
    assert review_two is not None and review_two.markdown != review_one.markdown


async def test_the_service_remembers_a_bounded_number_of_incidents_and_a_forgotten_one_still_refires(
        stack: tuple[httpx.AsyncClient, IncidentService, Path]) -> None:
    """A long-running service sees an unbounded number of releases: what it remembers per incident (the run its
    alerts reached, the re-fire generation) used to grow for the life of the process. Now it keeps the most
    recently alerted ones; a forgotten incident costs one more Temporal call, never a wrong incident."""
    http, service, _ = stack
    service.remembered = 2

    async def fire(release: str) -> list[str]:
        alert = p.raw(p.generic({"alertname": "GenAIQualityDegraded", "service": "chat", "release": release},
                                fingerprint=f"bounded-{release}"))
        response = await http.post("/v1/alerts/generic", content=alert, headers=p.bearer(BEARER))
        assert response.status_code == 202, response.text
        return list(response.json()["incidents"])

    first = "unship:chat-test:bounded-v1"
    assert await fire("bounded-v1") == [first]
    await closed(service, first)
    assert await fire("bounded-v1") == [first + "~2"]  # re-fired after close: the next generation
    await closed(service, first + "~2")
    for n in range(2, 6):
        assert await fire(f"bounded-v{n}") == [f"unship:chat-test:bounded-v{n}"]
    assert len(service._running) <= 2 and len(service._generations) <= 2  # the bound itself
    # bounded-v1 was forgotten; its next alert still finds the closed generations and opens the third
    assert await fire("bounded-v1") == [first + "~3"]
