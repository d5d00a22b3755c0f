"""End to end with real monitoring: a metric rises in a real Prometheus, its alert rule fires, a real
Alertmanager posts the webhook to the gateway, the incident confirms the breach by querying that Prometheus,
the decision request reaches Slack (a local Web API fake), an Approve click comes back through the signed
interactivity endpoint, and users are moved back in stages in a real flagd flag file. When the metric drops
during confirmation instead, the incident is dismissed and nobody is moved.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier
from temporalio.testing import WorkflowEnvironment

from activities.flagd import FlagdFileProvider
from activities.prometheus import PrometheusSignalSource
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.slack import APPROVE_ACTION, SlackNotifier
from activities.store import open_store
from playbooks.loader import load_library
from tests.support.alertmanager import (
    alerting_config,
    start_alertmanager,
    stop_alertmanager,
)
from tests.support.fake_slack import FakeSlack
from tests.support.playbooks import snapshot
from tests.support.prometheus import (
    MetricsExporter,
    start_prometheus,
    stop_prometheus,
    wait_for,
)
from tests.support.stack import make_settings, serve
from workers.runtime.service import IncidentService
from workers.runtime.worker import ensure_flagd_flags, run_worker
from workers.web.app import create_app

pytestmark = pytest.mark.e2e

ALERT_TOKEN = "alertmanager-to-unship-token"
SIGNING_SECRET = "e2e-slack-signing-secret"
METRIC = "genai_hallucination_rate"
PLAYBOOK = {
    "roles": {"on_call": {"users": ["U0ONCALL1"]}, "safety_lead": {"users": ["U0SAFETY1"]},
              "eng_manager": {"users": ["U0MANAGER"]}},
    "signals": [{"name": "hallucinations", "category": "model_quality",
                 "source": {"type": "prometheus", "query": f'max({METRIC}{{service="chat",release="$release"}})'},
                 "threshold": {"value": 30, "unit": "per 10k outputs"}}],
    # five breaching polls of six: a metric that drops within the first seconds never confirms
    "confirmation": {"window": "8s", "interval": "1s", "breaches": 5, "out_of": 6,
                     "rule": {"any_of": ["hallucinations"]}},
    "decision": {"quorum": 1, "timeout": "10m"},
    "rollback": {"targets": [{"kind": "flag", "provider": "flagd", "key": "chat-model"}],
                 "stages": [{"percent": 10, "bake": "1s"},
                            {"percent": 50, "bake": "1s"}, {"percent": 100, "bake": "1s"}]},
}
RULES = f"""groups:
  - name: unship-e2e
    interval: 1s
    rules:
      - alert: GenAIQualityDegraded
        expr: {METRIC}{{service="chat"}} > 30
        labels: {{severity: warning}}
        annotations: {{summary: "hallucinations above 30 per 10k on {{{{ $labels.release }}}}"}}
"""


@dataclass
class Monitoring:
    http: httpx.AsyncClient
    service: IncidentService
    exporter: MetricsExporter
    prometheus: str
    slack: FakeSlack
    flags: FlagdFileProvider
    verifier: SignatureVerifier

    async def status(self, incident: str) -> dict[str, Any] | None:
        try:
            return (await self.service.get(incident)).model_dump(mode="json")
        except Exception:  # noqa: BLE001 - not started yet
            return None

    async def until(self, incident: str, done: Callable[[dict[str, Any]], bool], what: str,
                    limit: float = 40) -> dict[str, Any]:
        deadline = time.monotonic() + limit  # guards against a hang only
        status = None
        while True:
            status = await self.status(incident)
            if status is not None and done(status):
                return status
            if time.monotonic() > deadline:
                last = "; ".join(e["message"] for e in (status or {}).get("audit", [])[-5:])
                raise AssertionError(f"never reached {what}: {last or 'no incident'}")
            await asyncio.sleep(0.1)

    async def share_on_previous(self) -> float | None:
        return await self.flags.get_previous_percent(snapshot(**PLAYBOOK).playbook.rollback.targets[0])

    def decision_button(self) -> tuple[str, str, dict[str, Any]]:
        for (channel, ts), message in self.slack.messages.items():
            for block in message["blocks"]:
                for element in block.get("elements", []) if block["type"] == "actions" else []:
                    if element["action_id"] == APPROVE_ACTION:
                        return channel, ts, element
        raise LookupError("no Approve button in Slack yet")

    async def click(self, user: str, channel: str, ts: str, button: dict[str, Any]) -> httpx.Response:
        payload = {"type": "block_actions", "user": {"id": user, "username": "oncall", "team_id": "T0"},
                   "team": {"id": "T0", "domain": "acme"}, "api_app_id": "A0", "trigger_id": "1.2.3",
                   "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
                   "channel": {"id": channel, "name": "ml-incidents"}, "message": {"ts": ts, "blocks": []},
                   "response_url": "https://hooks.slack.com/actions/T0/1/x",
                   "actions": [{"type": "button", "action_id": button["action_id"], "block_id": "b",
                                "value": button["value"], "action_ts": f"{time.time():.6f}"}]}
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        stamp = str(int(time.time()))
        return await self.http.post("/v1/slack/interactivity", content=body, headers={
            "X-Slack-Request-Timestamp": stamp, "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Signature": self.verifier.generate_signature(timestamp=stamp, body=body) or ""})


@pytest.fixture
async def monitoring(local_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Monitoring]:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "chat-test.yaml").write_text(json.dumps(snapshot(**PLAYBOOK).playbook.model_dump(mode="json")))
    playbooks = load_library(folder)
    slack = FakeSlack()
    settings = make_settings(tmp_path, local_env, playbooks_dir=folder, alert_bearer_token=ALERT_TOKEN,
                             slack_bot_token=slack.token, slack_signing_secret=SIGNING_SECRET,
                             slack_api_url=slack.url)
    settings.state_dir.mkdir(parents=True)
    flags = FlagdFileProvider(settings.resolved_flagd_path)
    await ensure_flagd_flags(settings, playbooks)
    service = IncidentService(local_env.client, settings, playbooks)
    app = create_app(service, settings)
    exporter = MetricsExporter()
    processes = []
    stop = asyncio.Event()
    worker = None
    try:
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            am_url, am = start_alertmanager(tmp_path / "am", f"{url}/v1/alerts/alertmanager", ALERT_TOKEN)
            processes.append((stop_alertmanager, am))
            rules = tmp_path / "rules.yml"
            rules.write_text(RULES)
            prom_url, prom = start_prometheus(tmp_path / "prom", [exporter.target],
                                              extra_config=alerting_config(am_url, rules))
            processes.append((stop_prometheus, prom))
            activities = RollbackActivities(FlagRouter({"flagd": flags}),
                                            SignalRouter({"prometheus": PrometheusSignalSource(prom_url)}),
                                            SlackNotifier.from_token(slack.token, slack.url),
                                            open_store(settings.resolved_database_url),
                                            review_dir=settings.state_dir / "reviews")
            worker = asyncio.create_task(run_worker(local_env.client, settings, activities, stop))
            yield Monitoring(http, service, exporter, prom_url, slack, flags, SignatureVerifier(SIGNING_SECRET))
            await app.state.gateway.slack.drain()
    finally:
        stop.set()
        if worker is not None:
            await worker
        async for execution in local_env.client.list_workflows(f'TaskQueue="{settings.task_queue}"'):
            if execution.close_time is None:
                await local_env.client.get_workflow_handle(execution.id).terminate("test cleanup")
        for stopper, process in reversed(processes):
            stopper(process)
        exporter.stop()
        slack.stop()


async def test_alertmanager_alert_approved_in_slack_reverts_in_stages(monitoring: Monitoring) -> None:
    m = monitoring
    release = "chat-v2"
    incident = f"unship:chat-test:{release}"
    m.exporter.set(METRIC, 12.0, {"service": "chat", "release": release})
    await asyncio.to_thread(wait_for, m.prometheus, METRIC)
    assert await m.status(incident) is None, "a healthy release opened an incident"

    m.exporter.set(METRIC, 85.0, {"service": "chat", "release": release})  # the release starts hallucinating
    opened = await m.until(incident, lambda s: bool(s["alerts"]), "the Alertmanager alert")
    alert = opened["alerts"][0]
    assert alert["source"] == "alertmanager" and alert["labels"]["release"] == release
    assert len(alert["fingerprint"]) == 16 and 'release="chat-v2"' in alert["group_key"]

    gate = await m.until(incident, lambda s: s["phase"] == "awaiting_decision", "the approval gate")
    assert any(e["signal"] == "hallucinations" and e["value"] == 85.0 for e in gate["evidence"]), gate["evidence"]
    assert await m.share_on_previous() == 0, "users moved before anyone approved"

    deadline = time.monotonic() + 15
    while True:
        try:
            channel, ts, button = m.decision_button()
            break
        except LookupError:
            assert time.monotonic() < deadline, "the decision request never reached Slack"
            await asyncio.sleep(0.1)
    clicked = await m.click("U0ONCALL1", channel, ts, button)
    assert clicked.status_code == 200, clicked.text

    done = await m.until(incident, lambda s: s["outcome"] is not None, "an outcome", limit=60)
    assert done["outcome"] == "reverted", [e["message"] for e in done["audit"][-6:]]
    assert [(d["user"], d["via"]) for d in done["decisions"]] == [("U0ONCALL1", "slack")]
    assert [e["data"]["percent"] for e in done["audit"] if e["kind"] == "stage_applied"] == [10, 50, 100]
    assert await m.share_on_previous() == 100
    shown = json.dumps(m.slack.messages[(channel, ts)]["blocks"])
    assert "approved via slack" in shown and APPROVE_ACTION not in shown


async def test_a_metric_that_drops_during_confirmation_is_dismissed(monitoring: Monitoring) -> None:
    m = monitoring
    release = "chat-v3"
    incident = f"unship:chat-test:{release}"
    m.exporter.set(METRIC, 85.0, {"service": "chat", "release": release})
    await m.until(incident, lambda s: s["phase"] == "confirming" and bool(s["alerts"]), "the incident")
    m.exporter.set(METRIC, 3.0, {"service": "chat", "release": release})  # a blip: it recovers at once

    done = await m.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "dismissed", [e["message"] for e in done["audit"][-5:]]
    assert done["decisions"] == [] and done["gate"] is None
    assert await m.share_on_previous() == 0, "a transient blip moved users"
    assert not any(b for msg in m.slack.messages.values() for b in msg["blocks"] if b["type"] == "actions"), \
        "nobody should have been asked to decide"
