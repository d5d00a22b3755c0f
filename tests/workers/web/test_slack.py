"""Slack approvals with the real slack_sdk against a local server speaking Slack's Web API shapes.

The notifier's Block Kit messages and in-place updates, its error classification, and the interactivity
endpoint over real HTTP with the real workflow behind it: signed, forged, stale and replayed requests,
double clicks, refused clicks (ephemeral reply + audit), user-group members, and Socket Mode routing.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.request import SocketModeRequest
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.contracts import MessageKind, Notification
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.slack import APPROVE_ACTION, REJECT_ACTION, SlackNotifier
from activities.store import open_store
from playbooks.models import Stage
from tests.support.fake_slack import FakeSlack
from tests.support.playbooks import snapshot
from tests.support.stack import make_settings, serve
from workers.runtime.service import IncidentService
from workers.runtime.worker import run_worker
from workers.web.app import create_app
from workers.web.slack_actions import SlackActions, socket_mode_listener

SIGNING_SECRET = "slack-signing-secret-123"
ROLES = {"on_call": {"users": ["U0ONCALL1"], "groups": ["ml-oncall"]},
         "safety_lead": {"users": ["U0SAFETY1"], "groups": ["S0SAFETY"]},
         "eng_manager": {"users": ["U0MANAGER"]}}


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(groups={"S0SAFETY": ["U0GROUPIE"], "S0ONCALL": ["U0PAGER"]}, handles={"ml-oncall": "S0ONCALL"})
    yield fake
    fake.stop()


def _texts(blocks: list[dict[str, Any]]) -> str:
    """Every piece of text in a message's blocks, for asserting what a person sees."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks)
    return "\n".join(found)


def _buttons(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}


# --- the notifier ---------------------------------------------------------------------------------------------


def _gate_context() -> dict[str, Any]:
    return {
        "incident_id": "unship:chat-test:v2", "playbook": "chat-test", "playbook_version": "abc123def456",
        "release": "v2", "phase": "awaiting_decision", "outcome": None, "stages": [], "decisions": [],
        "evidence": [{"signal": "hallucinations", "category": "model_quality", "value": 80.0,
                      "threshold": "> 30 per 10k outputs", "measurement": "breach"},
                     {"signal": "latency_p95", "category": "operational_health", "value": 1.1,
                      "threshold": "> 2.5 s", "measurement": "healthy"}],
        "gate": {"gate_id": "gate-1", "purpose": "revert", "roles": ["on_call", "safety_lead"],
                 "users": ["U0ONCALL1", "U0SAFETY1"], "groups": ["S0SAFETY"], "quorum": 2, "approvals": [],
                 "opened_at": "2026-08-01T10:00:00Z", "deadline": "2026-08-01T10:15:00Z"},
        "mentions": [],
    }


async def test_decision_request_blocks_show_signals_stages_deciders_and_buttons(fake_slack: FakeSlack) -> None:
    plans = {"chat-test": [Stage(percent=10, bake="5m"), Stage(percent=50), Stage(percent=100)]}
    notifier = SlackNotifier.from_token(fake_slack.token, fake_slack.url, plans)
    note = Notification(incident_id="unship:chat-test:v2", kind=MessageKind.DECISION_REQUEST,
                        channel="#ml-incidents", context=_gate_context())
    ref = await notifier.send(note, ":raising_hand: *Decision needed*")
    (call,) = fake_slack.of("chat.postMessage")
    assert call.args["channel"] == "#ml-incidents" and "Decision needed" in call.args["text"]
    seen = _texts(call.args["blocks"])
    assert "`v2`" in seen and "chat-test" in seen and "abc123def456" in seen
    assert "*hallucinations*\n80 (threshold > 30 per 10k outputs)" in seen and ":red_circle:" in seen
    assert "latency_p95" in seen and ":large_green_circle:" in seen
    assert "Planned stages" in seen and "10% (bake 300s)" in seen and "100%" in seen
    assert "<@U0ONCALL1>" in seen and "<!subteam^S0SAFETY>" in seen and "0/2 approvals" in seen
    buttons = _buttons(call.args["blocks"])
    approve, reject = buttons[APPROVE_ACTION], buttons[REJECT_ACTION]
    assert approve["confirm"]["confirm"]["text"] == "Approve" and "v2" in approve["confirm"]["text"]["text"]
    assert "confirm" not in reject
    assert json.loads(approve["value"]) == {"i": "unship:chat-test:v2", "g": "gate-1", "v": "approve"}
    channel_id = fake_slack.channel_id("#ml-incidents")
    assert ref.ref == f"{channel_id}/{fake_slack.of('chat.postMessage')[0].args and '1700000000.000001'}"

    decided = _gate_context() | {"phase": "reverting", "gate": None, "decisions": [
        {"gate_id": "gate-1", "user": "U0ONCALL1", "verdict": "approve", "reason": "bad", "via": "slack",
         "at": "2026-08-01T10:01:00Z"}],
        "stages": [{"index": 0, "percent": 10, "status": "baking"}, {"index": 1, "percent": 50, "status": "pending"}]}
    await notifier.send(note.model_copy(update={"kind": MessageKind.DECIDED, "context": decided,
                                                "thread_ref": ref.ref}), "approved")
    (update,) = fake_slack.of("chat.update")
    assert (update.args["channel"], update.args["ts"]) == (channel_id, "1700000000.000001")
    shown = _texts(update.args["blocks"])
    assert "<@U0ONCALL1> approved via slack" in shown and ":hourglass_flowing_sand: 10%" in shown
    assert not _buttons(update.args["blocks"]), "buttons stay after the decision"


async def test_escalation_goes_to_its_channel_and_mentions_the_next_tier(fake_slack: FakeSlack) -> None:
    notifier = SlackNotifier.from_token(fake_slack.token, fake_slack.url)
    context = _gate_context() | {"phase": "escalated", "mentions": ["U0MANAGER", "S0SAFETY"]}
    await notifier.send(Notification(incident_id="unship:chat-test:v2", kind=MessageKind.ESCALATED,
                                     channel="#ml-escalations", context=context), "escalation")
    (call,) = fake_slack.of("chat.postMessage")
    assert call.args["channel"] == "#ml-escalations"
    assert "<@U0MANAGER> <!subteam^S0SAFETY> your decision is needed" in _texts(call.args["blocks"])
    assert _buttons(call.args["blocks"]), "the next tier can decide from the escalation message"


async def test_rate_limits_are_retryable_and_setup_errors_are_not(fake_slack: FakeSlack) -> None:
    notifier = SlackNotifier.from_token(fake_slack.token, fake_slack.url)
    note = Notification(incident_id="i", kind=MessageKind.OPENED, channel="#ml-incidents", context={})
    fake_slack.fail_next("chat.postMessage", 429, "ratelimited", retry_after=7)
    with pytest.raises(ApplicationError) as err:
        await notifier.send(note, "hello")
    assert not err.value.non_retryable and err.value.next_retry_delay.total_seconds() == 7
    fake_slack.fail_next("chat.postMessage", 503, "service_unavailable", retry_after=None)
    with pytest.raises(ApplicationError) as err:
        await notifier.send(note, "hello")
    assert not err.value.non_retryable
    fake_slack.fail_next("chat.postMessage", 200, "not_in_channel", retry_after=None)
    with pytest.raises(ApplicationError) as err:
        await notifier.send(note, "hello")
    assert err.value.non_retryable and "/invite" in err.value.message
    bad = SlackNotifier.from_token("xoxb-wrong", fake_slack.url)
    with pytest.raises(ApplicationError) as err:
        await bad.send(note, "hello")
    assert err.value.non_retryable and "UNSHIP_SLACK_BOT_TOKEN" in err.value.message
    assert "xoxb-wrong" not in err.value.message


async def test_a_message_that_cannot_be_edited_is_posted_again(fake_slack: FakeSlack) -> None:
    notifier = SlackNotifier.from_token(fake_slack.token, fake_slack.url)
    note = Notification(incident_id="i", kind=MessageKind.STAGE, channel="#ml-incidents", context={},
                        thread_ref="C0GONE/1690000000.000001")
    ref = await notifier.send(note, "stage 1")
    assert len(fake_slack.of("chat.update")) == 1 and len(fake_slack.of("chat.postMessage")) == 1
    assert ref.ref and ref.ref.startswith(fake_slack.channel_id("#ml-incidents"))


# --- clicks through the interactivity endpoint, with the real workflow ------------------------------------------


@dataclass
class SlackWorld:
    http: httpx.AsyncClient
    service: IncidentService
    slack: FakeSlack
    actions: SlackActions
    verifier: SignatureVerifier

    def signed(self, payload: dict[str, Any], timestamp: float | None = None) -> tuple[bytes, dict[str, str]]:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        ts = str(int(timestamp if timestamp is not None else time.time()))
        signature = self.verifier.generate_signature(timestamp=ts, body=body)
        return body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature or "",
                      "Content-Type": "application/x-www-form-urlencoded"}

    async def click(self, payload: dict[str, Any], **sign: Any) -> httpx.Response:
        body, headers = self.signed(payload, **sign)
        return await self.http.post("/v1/slack/interactivity", content=body, headers=headers)

    async def status(self, incident: str) -> dict[str, Any]:
        return (await self.service.get(incident)).model_dump(mode="json")

    async def until(self, incident: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            status = await self.status(incident)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached {what}: {status['phase']}; "
                                     + "; ".join(e["message"] for e in status["audit"][-4:]))
            await asyncio.sleep(0.1)

    def message(self) -> tuple[str, str, list[dict[str, Any]]]:
        """The incident message as the channel shows it now (the first one posted to #ml-incidents)."""
        channel = self.slack.channel_id("#ml-incidents")
        found = [ts for (ch, ts) in self.slack.messages if ch == channel]
        if not found:
            return channel, "", []
        return channel, found[0], self.slack.messages[(channel, found[0])]["blocks"]


def block_actions(user: str, button: dict[str, Any], channel: str, ts: str, action_ts: str) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a button click on a message."""
    return {
        "type": "block_actions", "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0"},
        "api_app_id": "A0UNSHIP", "token": "legacy-verification-token", "team": {"id": "T0", "domain": "acme"},
        "enterprise": None, "is_enterprise_install": False,
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"1.2.{action_ts}", "channel": {"id": channel, "name": "ml-incidents"},
        "message": {"type": "message", "ts": ts, "text": "Decision needed", "blocks": []},
        "state": {"values": {}}, "response_url": "https://hooks.slack.com/actions/T0/1/abc",
        "actions": [{"type": "button", "action_id": button["action_id"], "block_id": "unship-actions-gate-1",
                     "value": button["value"], "style": button.get("style"),
                     "text": {"type": "plain_text", "text": button["text"]["text"], "emoji": True},
                     "action_ts": action_ts}],
    }


@pytest.fixture
async def world(local_env: WorkflowEnvironment, tmp_path: Path, fake_slack: FakeSlack) -> AsyncIterator[SlackWorld]:
    snap = snapshot(roles=ROLES, confirmation={"window": "0s"},
                    decision={"quorum": 1, "timeout": "1h"},
                    rollback={"stages": [{"percent": 50, "bake": "1s"}, {"percent": 100, "bake": "1s"}]})
    settings = make_settings(tmp_path, local_env, slack_bot_token=fake_slack.token,
                             slack_signing_secret=SIGNING_SECRET, slack_api_url=fake_slack.url)
    settings.state_dir.mkdir(parents=True)
    service = IncidentService(local_env.client, settings, {snap.playbook.name: snap})
    notifier = SlackNotifier.from_token(fake_slack.token, fake_slack.url,
                                        {snap.playbook.name: snap.playbook.rollback.stages})
    activities = RollbackActivities(FlagRouter({"flagd": ScriptedFlagProvider()}),
                                    SignalRouter({"scripted": ScriptedSignalSource({})}), notifier,
                                    open_store(settings.resolved_database_url))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(local_env.client, settings, activities, stop))
    app = create_app(service, settings)
    try:
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield SlackWorld(http, service, fake_slack, app.state.gateway.slack, SignatureVerifier(SIGNING_SECRET))
    finally:
        await app.state.gateway.slack.drain()
        stop.set()
        await worker
        async for execution in local_env.client.list_workflows(f'TaskQueue="{settings.task_queue}"'):
            if execution.close_time is None:
                await local_env.client.get_workflow_handle(execution.id).terminate("test cleanup")


async def _open_gate(world: SlackWorld, release: str) -> tuple[str, str, str, dict[str, dict[str, Any]]]:
    incident = await world.service.trigger("chat-test", release, started_by="test")
    await world.until(incident, lambda s: s["phase"] == "awaiting_decision", "the gate")
    deadline = time.monotonic() + 15
    while True:  # the decision request reaches Slack right after the gate opens
        channel, ts, blocks = world.message()
        if _buttons(blocks) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return incident, channel, ts, _buttons(blocks)


async def test_an_approve_click_decides_and_the_message_follows_the_incident(world: SlackWorld) -> None:
    incident, channel, ts, buttons = await _open_gate(world, "click-v1")
    shown = _texts(world.message()[2])
    assert "click-v1" in shown and "<@U0ONCALL1>" in shown and "Planned stages" in shown

    started = time.monotonic()
    response = await world.click(block_actions("U0ONCALL1", buttons[APPROVE_ACTION], channel, ts, "1700000100.1"))
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 3, "Slack needs the answer within 3 seconds"
    again = await world.click(block_actions("U0ONCALL1", buttons[APPROVE_ACTION], channel, ts, "1700000100.2"))
    assert again.status_code == 200  # a double click is acknowledged ...
    await world.actions.drain()

    done = await world.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "reverted"
    assert [(d["user"], d["verdict"], d["via"]) for d in done["decisions"]] == [("U0ONCALL1", "approve", "slack")]
    assert not any(e["kind"] == "decision_refused" for e in done["audit"]), "... and is one decision"
    ephemerals = world.slack.of("chat.postEphemeral")
    assert [e.args["user"] for e in ephemerals] == ["U0ONCALL1", "U0ONCALL1"]
    assert all("approve recorded" in e.args["text"] for e in ephemerals)

    deadline = time.monotonic() + 10
    while "all users are back" not in _texts(world.message()[2]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    final = _texts(world.message()[2])
    assert "all users are back on the previous model" in final, final
    assert "<@U0ONCALL1> approved via slack" in final and not _buttons(world.message()[2])
    assert len([c for c in world.slack.of("chat.postMessage") if c.args["channel"] == "#ml-incidents"]) == 1
    assert len(world.slack.of("chat.update")) >= 3, "decided, stages and completion edit the same message"


async def test_refused_clicks_get_an_ephemeral_reason_and_land_in_the_audit(world: SlackWorld) -> None:
    incident, channel, ts, buttons = await _open_gate(world, "refuse-v1")
    response = await world.click(block_actions("U0INTRUDER", buttons[APPROVE_ACTION], channel, ts, "1700000200.1"))
    assert response.status_code == 200
    await world.actions.drain()
    (ephemeral,) = world.slack.of("chat.postEphemeral")
    assert ephemeral.args["user"] == "U0INTRUDER" and ephemeral.args["channel"] == channel
    assert "refused" in ephemeral.args["text"] and "holds none of the roles" in ephemeral.args["text"]

    status = await world.status(incident)
    refused = [e for e in status["audit"] if e["kind"] == "decision_refused"]
    assert refused and refused[0]["actor"] == "U0INTRUDER" and refused[0]["data"]["via"] == "slack"
    assert status["phase"] == "awaiting_decision"

    # a member of the safety lead user group may decide: membership comes from usergroups.users.list
    await world.click(block_actions("U0GROUPIE", buttons[REJECT_ACTION], channel, ts, "1700000200.2"))
    await world.actions.drain()
    done = await world.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "rejected" and done["decisions"][0]["user"] == "U0GROUPIE"
    assert any(c.args.get("usergroup") == "S0SAFETY" for c in world.slack.of("usergroups.users.list"))

    # the gate is closed now: a late click is refused, said so, and recorded while the incident lives
    late = await world.click(block_actions("U0SAFETY1", buttons[APPROVE_ACTION], channel, ts, "1700000200.3"))
    assert late.status_code == 200
    await world.actions.drain()
    last = world.slack.of("chat.postEphemeral")[-1]
    assert last.args["user"] == "U0SAFETY1" and ("closed" in last.args["text"] or "no decision" in last.args["text"])


async def test_group_membership_is_cached(world: SlackWorld) -> None:
    incident, channel, ts, buttons = await _open_gate(world, "cache-v1")
    for n in range(3):
        await world.click(block_actions("U0INTRUDER", buttons[APPROVE_ACTION], channel, ts, f"1700000300.{n}"))
        await world.actions.drain()
    lookups = sorted(c.args["usergroup"] for c in world.slack.of("usergroups.users.list"))
    # three refused clicks; each group named by the decision rights is looked up exactly once
    assert lookups == ["S0ONCALL", "S0SAFETY"], "group members are looked up once per group, then cached"
    assert any(c.method == "usergroups.list" for c in world.slack.calls), "handles are resolved to ids"
    del incident


async def test_forged_stale_replayed_and_malformed_requests_are_refused(world: SlackWorld) -> None:
    incident, channel, ts, buttons = await _open_gate(world, "forged-v1")
    payload = block_actions("U0ONCALL1", buttons[APPROVE_ACTION], channel, ts, "1700000400.1")

    body, headers = world.signed(payload)
    forged = dict(headers, **{"X-Slack-Signature": "v0=" + "0" * 64})
    assert (await world.http.post("/v1/slack/interactivity", content=body, headers=forged)).status_code == 401
    tampered = body.replace(b"U0ONCALL1", b"U0SAFETY1")
    assert (await world.http.post("/v1/slack/interactivity", content=tampered, headers=headers)).status_code == 401
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await world.http.post("/v1/slack/interactivity", content=body, headers=unsigned)).status_code == 401
    stale = await world.click(payload, timestamp=time.time() - 301)
    assert stale.status_code == 401 and "stale" in stale.json()["detail"]

    first = await world.http.post("/v1/slack/interactivity", content=body, headers=headers)
    replay = await world.http.post("/v1/slack/interactivity", content=body, headers=headers)
    assert first.status_code == 200 and replay.status_code == 401 and "replay" in replay.json()["detail"]

    bad = b"payload=%7Bnot-json"
    ts_now = str(int(time.time()))
    signature = world.verifier.generate_signature(timestamp=ts_now, body=bad) or ""
    malformed = await world.http.post("/v1/slack/interactivity", content=bad, headers={
        "X-Slack-Request-Timestamp": ts_now, "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded"})
    assert malformed.status_code == 400 and "payload" in malformed.json()["detail"]

    await world.actions.drain()
    status = await world.status(incident)
    assert [d["user"] for d in status["decisions"]] == ["U0ONCALL1"], "only the genuine click decided"


async def test_socket_mode_envelopes_are_acknowledged_and_routed(world: SlackWorld) -> None:
    incident, channel, ts, buttons = await _open_gate(world, "socket-v1")

    class Client:
        def __init__(self) -> None:
            self.acks: list[str] = []

        async def send_socket_mode_response(self, response: Any) -> None:
            self.acks.append(response.envelope_id)

    client = Client()
    listener = socket_mode_listener(world.actions)
    await listener(client, SocketModeRequest(type="events_api", envelope_id="env-0", payload={"event": {}}))
    click = block_actions("U0SAFETY1", buttons[APPROVE_ACTION], channel, ts, "1700000500.1")
    await listener(client, SocketModeRequest(type="interactive", envelope_id="env-1", payload=click))
    assert client.acks == ["env-0", "env-1"]
    await world.actions.drain()
    status = await world.until(incident, lambda s: bool(s["decisions"]), "the decision")
    assert status["decisions"][0]["user"] == "U0SAFETY1" and status["decisions"][0]["via"] == "slack"


async def test_the_incident_card_links_to_the_incident_page_of_the_console(fake_slack: FakeSlack) -> None:
    notifier = SlackNotifier.from_token(fake_slack.token, base_url=fake_slack.url, console_url="https://unship.example.org/")
    await notifier.send(Notification(incident_id="unship:chat-test:v2", kind=MessageKind.DECISION_REQUEST,
                                     channel="#ml-incidents", context=_gate_context()), "decision needed")
    (call,) = fake_slack.of("chat.postMessage")
    assert "<https://unship.example.org/incidents/unship:chat-test:v2|Open in the console>" in _texts(
        call.args["blocks"])


async def test_the_approval_card_is_valid_block_kit_even_with_long_texts(fake_slack: FakeSlack) -> None:
    # Slack refuses the whole message (invalid_blocks, not retryable) when one field is too long: the approval
    # card would never appear. Thresholds, reasons and names come from playbooks and people: cut, never refused.
    notifier = SlackNotifier.from_token(fake_slack.token, base_url=fake_slack.url)
    context = {
        "release": "chat-v2", "playbook": "chat", "playbook_version": "abc", "phase": "awaiting_decision",
        "evidence": [{"signal": "hallucination-rate", "measurement": "breach", "value": 31.5,
                      "threshold": "> 30 per 10k answers " + "(see the runbook) " * 200}],
        "gate": {"gate_id": "g" * 300, "roles": ["safety-lead"], "users": ["U0SAFETY"], "quorum": 2,
                 "approvals": []},
        "decisions": [{"verdict": "reject", "user": "U0X", "via": "cli", "reason": "no " * 3000}] * 12,
    }
    note = Notification(incident_id="unship:chat:chat-v2", kind=MessageKind.DECISION_REQUEST,
                        channel="#ml-incidents", context=context)
    ref = await notifier.send(note, "Users may need to move back to the previous model. " * 200)
    channel, ts = ref.ref.split("/") if ref.ref else ("", "")
    shown = fake_slack.messages[(channel, ts)]["blocks"]
    actions = [b for b in shown if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == ["unship_approve", "unship_reject"]
