"""The gateway over real HTTP (uvicorn) and the real Temporal dev server, for every alert source:
valid, unauthenticated, forged, stale, malformed and oversized requests, and what a valid one does to the
incident (one workflow per playbook + release, fingerprints and group keys kept as evidence)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import open_store
from tests.support import alert_payloads as p
from tests.support.playbooks import snapshot
from tests.support.stack import make_settings, serve
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.worker import run_worker
from workers.web.app import create_app

BEARER = "alert-token-0123456789"
BASIC = ("alertmanager", "basic-password-xyz")
GRAFANA_SECRET = "grafana-hmac-secret"
PD_SECRET = "pagerduty-signing-secret"


def labels(release: str, **extra: str) -> dict[str, str]:
    return {"alertname": "GenAIQualityDegraded", "service": "chat", "release": release, "severity": "warning"} | extra


@dataclass
class Gateway:
    http: httpx.AsyncClient
    service: IncidentService
    settings: Settings

    async def post(self, source: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"/v1/alerts/{source}", content=body, headers=headers)

    async def status(self, incident: str) -> dict[str, Any]:
        return (await self.service.get(incident)).model_dump(mode="json")

    async def until(self, incident: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            status = await self.status(incident)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached {what}: {status['phase']}, alerts {len(status['alerts'])}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def gateway(local_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(
        tmp_path, local_env, alert_bearer_token=BEARER, alert_basic_user=BASIC[0], alert_basic_password=BASIC[1],
        grafana_hmac_secret=GRAFANA_SECRET, pagerduty_signing_secret=PD_SECRET, api_token="api-token-xyz",
    )
    settings.state_dir.mkdir(parents=True)
    snap = snapshot()  # 5-minute confirmation: incidents stay open while the test looks at them
    service = IncidentService(local_env.client, settings, {snap.playbook.name: snap})
    activities = RollbackActivities(FlagRouter({"flagd": ScriptedFlagProvider()}),
                                    SignalRouter({"scripted": ScriptedSignalSource({})}), LogNotifier(),
                                    open_store(settings.resolved_database_url))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(local_env.client, settings, activities, stop))
    try:
        async with serve(create_app(service, settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield Gateway(http, service, settings)
    finally:
        stop.set()
        await worker
        async for execution in local_env.client.list_workflows(f'TaskQueue="{settings.task_queue}"'):
            if execution.close_time is None:
                await local_env.client.get_workflow_handle(execution.id).terminate("test cleanup")


def valid_request(source: str, release: str, fingerprint: str) -> tuple[bytes, dict[str, str]]:
    """A correctly authenticated request of ``source`` for one firing alert."""
    if source == "alertmanager":
        return p.raw(p.alertmanager([p.am_alert(labels(release), fingerprint)])), p.basic(*BASIC)
    if source == "grafana":
        body = p.raw(p.grafana([p.am_alert(labels(release), fingerprint)]))
        return body, p.grafana_headers(GRAFANA_SECRET, body)
    if source == "datadog":
        return p.raw(p.datadog(alert_id=fingerprint, tags=f"service:chat,release:{release},"
                                                       "alertname:GenAIQualityDegraded")), p.bearer(BEARER)
    if source == "pagerduty":
        body = p.raw(p.pagerduty(incident=fingerprint, title=f"GenAIQualityDegraded service=chat release={release}"))
        return body, p.pagerduty_headers(PD_SECRET, body)
    return p.raw(p.generic(labels(release), fingerprint=fingerprint)), p.bearer(BEARER)


SOURCES = ["alertmanager", "grafana", "datadog", "pagerduty", "generic"]
FINGERPRINT = {"alertmanager": "{fp}", "grafana": "{fp}", "datadog": "datadog:{fp}:", "pagerduty": "pagerduty:{fp}",
               "generic": "{fp}"}


@pytest.mark.parametrize("source", SOURCES)
async def test_a_valid_alert_opens_the_incident_with_its_fingerprint(gateway: Gateway, source: str) -> None:
    release = f"{source}-v2"
    body, headers = valid_request(source, release, f"fp{source}")
    response = await gateway.post(source, body, headers)
    assert response.status_code == 202, response.text
    incident = f"unship:chat-test:{release}"
    assert response.json() == {"accepted": 1, "incidents": [incident], "unmatched": 0}
    status = await gateway.until(incident, lambda s: bool(s["alerts"]), "the alert as evidence")
    (alert,) = status["alerts"]
    assert alert["source"] == source and alert["fingerprint"].startswith(FINGERPRINT[source].format(fp=f"fp{source}"))
    assert alert["group_key"], "the group key travels with the evidence"
    assert any(e["kind"] == "alert" for e in status["audit"])


@pytest.mark.parametrize("source", SOURCES)
async def test_requests_without_credentials_are_401(gateway: Gateway, source: str) -> None:
    body, _ = valid_request(source, "anon-v1", "fp-anon")
    response = await gateway.post(source, body, {"Content-Type": "application/json"})
    assert response.status_code == 401, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("source", SOURCES)
async def test_forged_credentials_are_401(gateway: Gateway, source: str) -> None:
    body, headers = valid_request(source, "forged-v1", "fp-forged")
    if source == "grafana":
        headers = p.grafana_headers("not-the-secret", body)
    elif source == "pagerduty":
        headers = p.pagerduty_headers("not-the-secret", body)
    elif source == "alertmanager":
        headers = p.basic(BASIC[0], "guessed")
    else:
        headers = p.bearer("guessed-token")
    response = await gateway.post(source, body, headers)
    assert response.status_code == 401, response.text
    tampered = body.replace(b"forged-v1", b"forged-v9")  # a valid signature over another body
    _, signed = valid_request(source, "forged-v1", "fp-forged")
    if source in ("grafana", "pagerduty"):
        assert (await gateway.post(source, tampered, signed)).status_code == 401


async def test_a_stale_grafana_timestamp_is_401(gateway: Gateway) -> None:
    body = p.raw(p.grafana([p.am_alert(labels("stale-v1"), "fp-stale")]))
    response = await gateway.post("grafana", body, p.grafana_headers(GRAFANA_SECRET, body, time.time() - 600))
    assert response.status_code == 401 and "replay" in response.json()["detail"]


@pytest.mark.parametrize("source", SOURCES)
async def test_malformed_bodies_are_400_or_422_naming_the_field(gateway: Gateway, source: str) -> None:
    def signed(body: bytes) -> dict[str, str]:
        if source == "grafana":
            return p.grafana_headers(GRAFANA_SECRET, body)
        if source == "pagerduty":
            return p.pagerduty_headers(PD_SECRET, body)
        return p.bearer(BEARER) if source != "alertmanager" else p.basic(*BASIC)

    not_json = b'{"alerts": [ nope'
    response = await gateway.post(source, not_json, signed(not_json))
    assert response.status_code == 400 and response.json()["field"] == "body", response.text

    wrong = {"alertmanager": {"version": "4", "alerts": [{"status": "firing", "labels": "x"}]},
             "grafana": {"version": "1", "alerts": "none"},
             "datadog": {"alert_id": "1"},
             "pagerduty": {"event": {"id": "e", "event_type": "incident.triggered", "data": {"id": "P1",
                                                                                              "created_at": "noon"}}},
             "generic": {"alerts": [{"labels": {"release": "v"}, "status": "exploding"}]}}[source]
    field = {"alertmanager": "alerts.0.labels", "grafana": "alerts", "datadog": "transition",
             "pagerduty": "event.data.created_at", "generic": "alerts.0.status"}[source]
    body = json.dumps(wrong).encode()
    response = await gateway.post(source, body, signed(body))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and field in response.json()["detail"]


@pytest.mark.parametrize("source", SOURCES)
async def test_oversized_bodies_are_413(gateway: Gateway, source: str) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    response = await gateway.post(source, body, p.bearer(BEARER))
    assert response.status_code == 413


async def test_an_alert_storm_for_one_release_is_one_incident_with_every_fingerprint(gateway: Gateway) -> None:
    release = "storm-v1"
    requests = [p.raw(p.alertmanager([p.am_alert(labels(release, pod=f"pod-{i}"), f"storm{i:04d}")]))
                for i in range(40)]
    responses = await asyncio.gather(*(gateway.post("alertmanager", b, p.basic(*BASIC)) for b in requests))
    assert [r.status_code for r in responses] == [202] * 40
    incident = f"unship:chat-test:{release}"
    status = await gateway.until(incident, lambda s: len(s["alerts"]) == 40, "all 40 alerts")
    assert {a["fingerprint"] for a in status["alerts"]} == {f"storm{i:04d}" for i in range(40)}
    runs = [e async for e in gateway.service.client.list_workflows(f'WorkflowId="{incident}"')]
    assert len(runs) == 1, "a second incident was opened for the same playbook and release"
    batches = [e for e in status["audit"] if e["kind"] == "alert"]
    carried = sorted(a["fingerprint"] for e in batches for a in e["data"]["alerts"])
    assert carried == [f"storm{i:04d}" for i in range(40)], "each alert is delivered exactly once"
    # 40 requests while a send is in flight: the ones that wait are sent together, not one signal each
    assert max(len(e["data"]["alerts"]) for e in batches) > 1 and len(batches) < 40, \
        f"alerts that arrived together were not sent together: {len(batches)} batches"


async def test_resolved_alerts_are_evidence_of_recovery(gateway: Gateway) -> None:
    release = "blip-v1"
    firing = p.raw(p.alertmanager([p.am_alert(labels(release), "blip1")]))
    assert (await gateway.post("alertmanager", firing, p.basic(*BASIC))).status_code == 202
    resolved = p.raw(p.alertmanager([p.am_alert(labels(release), "blip1", status="resolved",
                                                ends_at="2026-08-01T10:03:00Z")]))
    assert (await gateway.post("alertmanager", resolved, p.basic(*BASIC))).status_code == 202
    incident = f"unship:chat-test:{release}"
    status = await gateway.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert status["outcome"] == "dismissed"
    assert [a["status"] for a in status["alerts"]] == ["firing", "resolved"]


async def test_unmatched_alerts_are_answered_and_recorded(gateway: Gateway) -> None:
    body = p.raw(p.generic({"alertname": "DiskFull", "instance": "db-1"}, fingerprint="disk-1"))
    response = await gateway.post("generic", body, p.bearer(BEARER))
    assert response.status_code == 202 and response.json()["unmatched"] == 1
    assert (await gateway.http.get("/v1/alerts/unmatched")).status_code == 401, "the listing needs the API token"
    listing = (await gateway.http.get("/v1/alerts/unmatched",
                                      headers={"Authorization": "Bearer api-token-xyz"})).json()
    assert listing["total"] >= 1 and listing["recent"][0]["fingerprint"] == "disk-1"
    assert listing["recent"][0]["reason"] == "no playbook matches the labels"


async def test_pagerduty_ping_is_acknowledged_without_an_incident(gateway: Gateway) -> None:
    body = p.raw({"event": {"id": "ping-1", "event_type": "pagey.ping", "resource_type": "pagey",
                            "occurred_at": "2026-08-01T10:00:00Z", "data": {"type": "ping", "message": "Hi"}}})
    response = await gateway.post("pagerduty", body, p.pagerduty_headers(PD_SECRET, body))
    assert response.status_code == 202 and response.json()["accepted"] == 0


async def test_openapi_documents_the_gateway(gateway: Gateway) -> None:
    spec = (await gateway.http.get("/openapi.json")).json()
    for source in SOURCES:
        assert f"/v1/alerts/{source}" in spec["paths"]
    assert "/v1/slack/interactivity" in spec["paths"]
