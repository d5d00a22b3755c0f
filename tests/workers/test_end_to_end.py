"""One incident end to end on the real dev server, the way an operator drives it: trigger over HTTP, watch it
confirm, approve from the CLI, and see users moved back stage by stage in a real flagd flag file.

The real worker code (``run_worker``) runs the real workflows and ``RollbackActivities``; only the metric
values are scripted (``ScriptedSignalSource``) and the timings are short so it runs in real time.
"""

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
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from activities.chat import LogNotifier
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedSignalSource
from activities.store import open_store
from playbooks.loader import load_library
from tests.support.playbooks import snapshot
from tests.support.stack import TOKEN, api_client, cli_env, make_settings, person, serve
from workers.cli import app as cli
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.worker import ensure_flagd_flags, run_worker
from workers.web.app import create_app

pytestmark = pytest.mark.e2e  # real dev server, worker and HTTP API: the end-to-end time limit

FAST = {
    "confirmation": {"window": "6s", "interval": "1s", "breaches": 2, "out_of": 3,
                     "rule": {"any_of": ["hallucinations"]}},
    "rollback": {
        "targets": [{"kind": "flag", "provider": "flagd", "key": "chat-model"}],
        "stages": [{"percent": 10, "bake": "1s", "verify": ["latency_p95"]},
                   {"percent": 50, "bake": "1s", "verify": ["latency_p95"]},
                   {"percent": 100, "bake": "1s"}],
    },
}
BAD_RELEASE = {"hallucinations": [80.0], "latency_p95": [1.1], "fairness_gap": [0.01]}


@dataclass
class Stack:
    """unship as `unship up` assembles it, over the test's Temporal server."""

    settings: Settings
    service: IncidentService
    flags: FlagdFileProvider
    http: httpx.AsyncClient
    runner: CliRunner
    env: dict[str, Any]
    signals: SignalRouter
    tokens: dict[str, str]
    url: str

    async def cli(self, *args: str, user: str) -> Result:
        """``unship ARGS`` as ``user`` (with that person's token)."""
        env = {**self.env, "UNSHIP_TOKEN": self.tokens[user]}
        # In a thread: the CLI runs its own event loop while this one keeps the worker and the API going.
        return await asyncio.to_thread(self.runner.invoke, cli, list(args), env=env)

    def person(self, user: str) -> httpx.AsyncClient:
        return api_client(self.url, self.tokens[user])

    async def status(self, incident: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/incidents/{incident}")
        assert response.status_code == 200, response.text
        return response.json()

    async def until(self, incident: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Poll the status until ``done``; the deadline only guards against a hang."""
        deadline = time.monotonic() + 90
        while True:
            status = await self.status(incident)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached {what}: phase {status['phase']}; last events: "
                                     + "; ".join(e["message"] for e in status["audit"][-5:]))
            await asyncio.sleep(0.2)

    async def share_on_previous(self) -> float | None:
        target = self.service.playbooks["chat-test"].playbook.rollback.targets[0]
        return await self.flags.get_previous_percent(target)


@pytest.fixture
async def stack(local_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    # JSON is YAML: the CLI and the API load the same playbook file, as in production.
    (folder / "chat-test.yaml").write_text(json.dumps(snapshot(**FAST).playbook.model_dump(mode="json")))
    playbooks = load_library(folder)
    settings = make_settings(tmp_path, local_env, playbooks_dir=folder)
    settings.state_dir.mkdir(parents=True)
    flags = FlagdFileProvider(settings.resolved_flagd_path)
    assert await ensure_flagd_flags(settings, playbooks) == ["chat-model"]
    store = open_store(settings.resolved_database_url)
    router = FlagRouter({"flagd": flags})
    signals = SignalRouter({"scripted": ScriptedSignalSource(BAD_RELEASE)})
    activities = RollbackActivities(router, signals, LogNotifier(), store, review_dir=settings.state_dir / "reviews")
    service = IncidentService(local_env.client, settings, playbooks, store=store)
    tokens = {user: person(settings, user) for user in ("U_ONCALL", "U_SAFETY", "U_RANDOM", "U_OPS")}
    settings = settings.model_copy(update={"api_token": SecretStr(TOKEN)})  # shared: read and trigger
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(local_env.client, settings, activities, stop))
    try:
        async with serve(create_app(service, settings)) as url, api_client(url, TOKEN) as http:
            env = cli_env(settings, UNSHIP_PLAYBOOKS_DIR=str(folder), UNSHIP_API_URL=url)
            yield Stack(settings, service, flags, http, CliRunner(), env, signals, tokens, url)
    finally:
        stop.set()
        await worker
        async for execution in local_env.client.list_workflows(f'TaskQueue="{settings.task_queue}"'):
            if execution.close_time is None:  # reviews wait days for their deadlines
                await local_env.client.get_workflow_handle(execution.id).terminate("test cleanup")


async def test_trigger_over_http_approve_from_cli_and_revert_in_stages(stack: Stack) -> None:
    opened = await stack.http.post("/v1/incidents", json={"playbook": "chat-test", "release": "e2e-approve-v2",
                                                          "reason": "hallucinations doubled"})
    assert opened.status_code == 202
    incident = opened.json()["incident_id"]
    assert incident == "unship:chat-test:e2e-approve-v2"  # a release no other test on this server uses
    assert await stack.share_on_previous() == 0

    async with stack.person("U_ONCALL") as oncall:
        early = await oncall.post(f"/v1/incidents/{incident}/decision",
                                  json={"verdict": "approve", "reason": "too soon"})
    assert early.status_code == 409, early.text  # confirming: no gate is open yet, a conflict, not a refusal
    assert early.headers["content-type"] == "application/problem+json"
    assert early.json()["title"] == "Conflict" and "no decision is open" in early.json()["detail"]

    waiting = await stack.until(incident, lambda s: s["phase"] == "awaiting_decision", "the approval gate")
    assert waiting["detected_at"] and waiting["gate"]["quorum"] == 1
    assert await stack.share_on_previous() == 0, "users moved before anyone approved"

    async with stack.person("U_RANDOM") as intruder_http:
        intruder = await intruder_http.post(f"/v1/incidents/{incident}/decision",
                                            json={"verdict": "approve", "reason": "why not"})
    assert intruder.status_code == 403 and "U_RANDOM holds none of the roles" in intruder.json()["detail"]

    click = ("approve", incident, "--reason", "hallucinations doubled", "--idempotency-key", "slack-action-1")
    approved = await stack.cli(*click, user="U_ONCALL")
    assert approved.exit_code == 0, approved.output
    assert "approved" in approved.stdout
    retried = await stack.cli(*click, user="U_ONCALL")  # a retried click with the same key counts once
    assert retried.exit_code == 0 and retried.stdout == approved.stdout

    done = await stack.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "reverted", done["audit"][-3:]
    assert [(s["percent"], s["status"]) for s in done["stages"]] == [(10, "verified"), (50, "verified"),
                                                                     (100, "verified")]
    assert await stack.share_on_previous() == 100
    assert [(d["user"], d["verdict"], d["via"]) for d in done["decisions"]] == [("U_ONCALL", "approve", "api")]
    kinds = [e["kind"] for e in done["audit"]]
    assert "decision_refused" in kinds  # the intruder's attempt is on the record
    applied = [e["data"]["percent"] for e in done["audit"] if e["kind"] == "stage_applied"]
    assert applied == [10, 50, 100]

    again = await stack.cli("approve", incident, "--reason", "late", user="U_SAFETY")
    assert again.exit_code == 1 and "refused" in again.stderr, again.stderr

    shown = await stack.cli("status", incident, user="U_SAFETY")
    assert shown.exit_code == 0, shown.output
    assert "reverted" in shown.stdout and "Audit timeline" in shown.stdout and "U_ONCALL" in shown.stdout
    assert f"{stack.settings.console_url}/incidents/{incident}" in shown.stdout  # the console page (default base URL)

    listed = (await stack.http.get("/v1/incidents")).json()["incidents"]
    mine = next(i for i in listed if i["incident_id"] == incident)
    assert mine["kind"] == "rollback" and mine["outcome"] == "reverted"

    # the review and the audit trail, over HTTP (the review is written by the child workflow: wait for it)
    deadline = time.monotonic() + 60
    while (review := await stack.http.get(f"/v1/incidents/{incident}/review")).status_code == 404:
        assert "no review yet" in review.json()["detail"] and time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert review.status_code == 200 and review.json()["incident_id"] == incident
    assert review.json()["markdown"].startswith("#") and isinstance(review.json()["tasks"], list)
    markdown = await stack.http.get(f"/v1/incidents/{incident}/review", headers={"Accept": "text/markdown"})
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == review.json()["markdown"]
    pages, cursor = [], None
    while True:
        page = (await stack.http.get(f"/v1/incidents/{incident}/audit",
                                     params={"limit": 5, **({"cursor": cursor} if cursor else {})})).json()
        pages.append(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    seqs = [e["seq"] for events in pages for e in events]
    assert len(pages) > 2 and all(len(events) <= 5 for events in pages)
    assert seqs == sorted(set(seqs)) and "stage_applied" in {e["kind"] for events in pages for e in events}


async def test_trigger_from_cli_then_emergency_revert_now(stack: Stack) -> None:
    opened = await stack.cli("trigger", "chat-test", "--release", "e2e-revert-now-v3", user="U_OPS")
    assert opened.exit_code == 0, opened.output
    incident = "unship:chat-test:e2e-revert-now-v3"
    assert incident in opened.stdout

    await stack.until(incident, lambda s: s["phase"] == "awaiting_decision", "the approval gate")
    refused = await stack.cli("revert-now", incident, "--reason", "I can", user="U_OPS")
    assert refused.exit_code == 1 and "U_OPS holds none of the roles that may revert_now" in refused.stderr
    sent = await stack.cli("revert-now", incident, "--reason", "users are complaining", user="U_SAFETY")
    assert sent.exit_code == 0, sent.output

    done = await stack.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "reverted"
    assert await stack.share_on_previous() == 100
    requested = next(e for e in done["audit"] if e["kind"] == "revert_all_requested")
    assert requested["actor"] == "U_SAFETY" and "complaining" in requested["message"]


async def test_abort_over_http_stops_before_any_user_moves(stack: Stack) -> None:
    incident = (await stack.http.post("/v1/incidents", json={"playbook": "chat-test", "release": "chat-v4"})
                ).json()["incident_id"]
    await stack.until(incident, lambda s: s["phase"] == "awaiting_decision", "the approval gate")
    async with stack.person("U_ONCALL") as oncall:
        aborted = await oncall.post(f"/v1/incidents/{incident}/abort", json={"reason": "false alarm"})
    assert aborted.status_code == 200 and aborted.json()["message"] == "abort accepted"
    done = await stack.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "aborted"
    assert await stack.share_on_previous() == 0
    await stack.service.client.get_workflow_handle(incident).result()
    async with stack.person("U_ONCALL") as oncall:
        closed = await oncall.post(f"/v1/incidents/{incident}/pause", json={"reason": "too late"})
    assert closed.status_code == 409 and "is closed" in closed.json()["detail"]


async def test_re_release_over_http_moves_users_forward_stage_by_stage(stack: Stack) -> None:
    target = stack.service.playbooks["chat-test"].playbook.rollback.targets[0]
    await stack.flags.set_previous_percent(target, 100, "an earlier revert")
    healthy = ScriptedSignalSource({"hallucinations": [5.0], "latency_p95": [1.0], "fairness_gap": [0.01]})
    stack.signals.sources["scripted"] = healthy
    async with stack.person("U_OPS") as ops:
        opened = await ops.post("/v1/releases", json={"playbook": "chat-test", "release": "chat-v5",
                                                      "stages": [25, 100]})
    assert opened.status_code == 202, opened.text
    release = opened.json()["incident_id"]
    done = await stack.until(release, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "released", done["audit"][-3:]
    assert [e["data"]["percent"] for e in done["audit"] if e["kind"] == "stage_applied"] == [25, 100]
    assert await stack.share_on_previous() == 0


async def test_cli_json_for_scripts_and_whole_rows_when_piped(stack: Stack) -> None:
    """What a script reads from `unship ... --json`: the API's JSON, parseable, with the fields it acts on;
    refusals keep their exit codes and print no JSON; tables piped to a file are never cut at 80 columns."""
    release = "e2e-json-v1-" + "x" * 60  # longer than an 80-column table cell
    opened = await stack.cli("trigger", "chat-test", "--release", release, "--reason", "script", "--json",
                             user="U_OPS")
    assert opened.exit_code == 0, opened.output
    incident = json.loads(opened.stdout)["incident_id"]
    assert incident == f"unship:chat-test:{release}"
    await stack.until(incident, lambda s: s["phase"] == "awaiting_decision", "the approval gate")

    status = await stack.cli("status", incident, "--json", user="U_OPS")
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert shown["incident_id"] == incident and shown["phase"] == "awaiting_decision"
    gate = shown["gate"]["gate_id"]

    refused = await stack.cli("approve", incident, "--reason", "me", "--gate", gate, "--json", user="U_RANDOM")
    assert refused.exit_code == 1 and refused.stdout == "" and "U_RANDOM holds none" in refused.stderr
    approved = await stack.cli("approve", incident, "--reason", "bad", "--gate", gate, "--json", user="U_ONCALL")
    assert approved.exit_code == 0, approved.output
    decision = json.loads(approved.stdout)
    assert decision["gate_id"] == gate and decision["approvals"] == 1 and decision["quorum"] == 1
    assert decision["message"]

    first = await stack.cli("status", "--json", "--limit", "1", user="U_OPS")
    assert first.exit_code == 0, first.output
    page = json.loads(first.stdout)
    assert [i["incident_id"] for i in page["incidents"]] == [incident]  # the newest first
    assert {"kind", "status", "phase", "started_at"} <= set(page["incidents"][0]) and page["next_cursor"]
    second = json.loads((await stack.cli("status", "--json", "--limit", "1", "--cursor", page["next_cursor"],
                                         user="U_OPS")).stdout)
    assert incident not in [i["incident_id"] for i in second["incidents"]]

    me = json.loads((await stack.cli("whoami", "--json", user="U_ONCALL")).stdout)
    assert me["user"] == "U_ONCALL" and "decide" in me["scopes"]
    playbooks = json.loads((await stack.cli("playbooks", "list", "--json", user="U_OPS")).stdout)
    assert [p["name"] for p in playbooks["playbooks"]] == ["chat-test"]

    other = json.loads((await stack.cli("trigger", "chat-test", "--release", "e2e-json-v2", "--json",
                                        user="U_OPS")).stdout)["incident_id"]
    await stack.until(other, lambda s: s["phase"] == "awaiting_decision", "the approval gate")
    aborted = await stack.cli("abort", other, "--reason", "false alarm", "--json", user="U_ONCALL")
    assert aborted.exit_code == 0, aborted.output
    assert json.loads(aborted.stdout)["message"] == "abort accepted"
    done = await stack.until(incident, lambda s: s["outcome"] is not None, "an outcome")
    assert done["outcome"] == "reverted"

    verified = await stack.cli("audit", "verify", incident, "--json", user="U_OPS")
    assert verified.exit_code == 0, verified.output
    chains = json.loads(verified.stdout)
    assert chains["ok"] and chains["chains"][0]["incident_id"] == incident and chains["chains"][0]["events"] > 3

    # piped (CliRunner's stdout is not a terminal) with the default 80 columns: every cell whole, one row a line
    piped = {**stack.env, "UNSHIP_TOKEN": stack.tokens["U_OPS"], "COLUMNS": None}
    for args in (["status"], ["status", incident]):
        table = await asyncio.to_thread(stack.runner.invoke, cli, args, env=piped)
        assert table.exit_code == 0, table.output
        assert "…" not in table.stdout
        assert any(incident in line for line in table.stdout.splitlines()), table.stdout
    timeline = (await asyncio.to_thread(stack.runner.invoke, cli, ["status", incident], env=piped)).stdout
    for event in done["audit"]:
        assert any(event["message"] in line for line in timeline.splitlines()), event["message"]
