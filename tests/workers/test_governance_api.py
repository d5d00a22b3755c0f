"""Governance through the HTTP API and the CLI, on the real dev server: a review whose purge is due in seconds;
each person acts with their own token (no name in the body); refusals (a missing scope, none of the playbook's
roles) are 403 / exit 1 and land on the audit trail; legal hold, approval, release, report submission, report
drafts as Markdown and HTML, and search over past reviews."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from activities.store import SqliteIncidentStore
from tests.support.governance import governed_review, until
from tests.support.stack import api_client, cli_env, person, serve
from tests.workers.web.test_console_http import csrf_of
from tests.workflows.test_governance import rows
from workers.cli import app
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.web.app import create_app

pytestmark = pytest.mark.e2e  # real dev server, worker, HTTP API and CLI: the end-to-end time limit


@pytest.fixture
async def review_id(local_env: WorkflowEnvironment, settings: Settings, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("GOV_OUTPUTS_DSN", "")  # the review sets it; monkeypatch removes it after the test
    async with governed_review(local_env, settings, tmp_path) as workflow_id:
        yield workflow_id


async def test_governance_over_the_api_and_the_cli(review_id: str, local_env: WorkflowEnvironment,
                                                   settings: Settings, playbooks: dict, tmp_path: Path) -> None:
    store = SqliteIncidentStore(settings.state_dir / "unship.db")
    service = IncidentService(local_env.client, settings, playbooks, store=store)
    legal, privacy = person(settings, "U_LEGAL"), person(settings, "U_PRIVACY")
    oncall, compliance = person(settings, "U_ONCALL"), person(settings, "U_COMPLIANCE")
    reader = person(settings, "U_READER", "read")
    base = f"/v1/incidents/{review_id}"
    async with serve(create_app(service, settings)) as url:
        async with api_client(url, legal) as as_legal, api_client(url, privacy) as as_privacy, \
                api_client(url, oncall) as as_oncall, api_client(url, reader) as as_reader:
            no_reason = await as_legal.post(f"{base}/legal-hold", json={})
            assert no_reason.status_code == 403 and "needs a reason" in no_reason.json()["detail"]
            named = await as_legal.post(f"{base}/legal-hold", json={"user": "U_PRIVACY", "reason": "x"})
            assert named.status_code == 422 and "user" in named.json()["detail"]  # the body never names the actor
            unknown = await as_legal.post(f"{base}/legal-hold", json={"reason": "x", "surprise": 1})
            assert unknown.status_code == 422 and "surprise" in unknown.json()["detail"]
            read_only = await as_reader.post(f"{base}/legal-hold", json={"reason": "regulator inquiry"})
            assert read_only.status_code == 403 and "lacks the 'operate' scope" in read_only.json()["detail"]
            held = await as_legal.post(f"{base}/legal-hold", json={"reason": "regulator inquiry"})
            assert held.status_code == 200 and "blocked" in held.json()["message"]
            due = await until(as_reader, f"{base}/governance",
                               lambda b: (b.get("purge") or {}).get("state") == "legal_hold")
            assert due["purge"]["counted"] == {"answers": 250} and due["legal_hold"]["by"] == "U_LEGAL"
            wrong = await as_oncall.post(f"{base}/purge/approve", json={})
            assert wrong.status_code == 403 and "U_ONCALL holds none of the roles" in wrong.json()["detail"]
            ok = await as_privacy.post(f"{base}/purge/approve", json={"reason": "retention over"})
            assert ok.status_code == 200 and "legal hold still blocks" in ok.json()["message"]
            md = await as_reader.get(f"{base}/reports/gdpr_breach")
            html = await as_reader.get(f"{base}/reports/gdpr_breach", params={"format": "html"})
            missing = await as_reader.get(f"{base}/reports/eu_ai_act_serious_incident")
            assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
            assert "Article 33" in md.text and html.headers["content-type"].startswith("text/html")
            assert missing.status_code == 404 and "gdpr_breach" in missing.json()["detail"]
            async with api_client(url) as anonymous:
                assert (await anonymous.get(f"{base}/governance")).status_code == 401
                page = await anonymous.get("/incidents/unship:chat-test:chat-v2/reports/gdpr_breach")
                assert "Article 33" not in page.text  # the console's report page signs in first

        runner = CliRunner()

        def cli(token: str, *args: str) -> Any:
            return runner.invoke(app, list(args), env=cli_env(settings, token, UNSHIP_API_URL=url))

        refused = await asyncio.to_thread(cli, oncall, "hold", "release", review_id, "--reason", "done")
        assert refused.exit_code == 1 and "U_ONCALL holds none of the roles" in refused.stderr
        released = await asyncio.to_thread(cli, legal, "hold", "release", review_id, "--reason", "inquiry closed")
        assert released.exit_code == 0, released.output
        submitted = await asyncio.to_thread(cli, compliance, "report", "submit", review_id, "--regime", "gdpr_breach",
                                            "--reference", "DPA-7", "--json")
        assert submitted.exit_code == 0, submitted.output
        assert json.loads(submitted.stdout)["accepted"] is True  # for scripts: the API's GovernanceResult
        async with api_client(url, reader) as as_reader:
            final = await until(as_reader, f"{base}/governance", lambda b: b.get("closed"))
            assert final["purge"]["state"] == "purged" and final["purge"]["counts_after"] == {"answers": 0}
            assert final["purge"]["approvals"] == ["U_PRIVACY"]
            assert final["reports"][0]["submitted_by"] == "U_COMPLIANCE"
            for _ in range(300):  # the final document is written just after the review closes
                hits = (await as_reader.get("/v1/reviews/search", params={"q": "chat-v2 purged"})).json()
                if hits:
                    break
                await asyncio.sleep(0.1)
            assert [h["incident_id"] for h in hits] == ["unship:chat-test:chat-v2"]
            empty = await as_reader.get("/v1/reviews/search", params={"q": ""})
            assert empty.status_code == 422
        assert rows(tmp_path / "answers.db", "chat-v2") == 0 and rows(tmp_path / "answers.db", "chat-v1") == 40

        shown = await asyncio.to_thread(cli, reader, "review", review_id)
        assert shown.exit_code == 0 and "purged" in shown.stdout and "llm-2025-11-20" in shown.stdout
        html_out = tmp_path / "gdpr.html"
        written = await asyncio.to_thread(cli, reader, "report", "show", "unship:chat-test:chat-v2", "--regime",
                                          "gdpr_breach", "--html", "-o", str(html_out))
        assert written.exit_code == 0 and "DPA-7" in html_out.read_text()
        found = await asyncio.to_thread(cli, reader, "incidents", "search", "hallucinations")
        assert found.exit_code == 0 and "unship:chat-test:chat-v2" in found.stdout
        nothing = await asyncio.to_thread(cli, reader, "incidents", "search", "zebra")
        assert nothing.exit_code == 4
    refusals = [e for e in await store.events("unship:chat-test:chat-v2") if e.kind == "governance_refused"]
    # every refusal above (403 / exit 1) is on the audit trail, under the verified caller's name
    assert [e.actor for e in refusals] == ["U_LEGAL", "U_READER", "U_ONCALL", "U_ONCALL"]
    assert sqlite3.connect(settings.state_dir / "unship.db").execute("SELECT count(*) FROM reports").fetchone()[0] == 1


async def test_the_console_acts_on_the_review_as_the_signed_in_person(
        review_id: str, local_env: WorkflowEnvironment, settings: Settings, playbooks: dict) -> None:
    store = SqliteIncidentStore(settings.state_dir / "unship.db")
    service = IncidentService(local_env.client, settings, playbooks, store=store)
    tokens = {"U_LEGAL": person(settings, "U_LEGAL"), "U_ONCALL": person(settings, "U_ONCALL")}
    act = f"/incidents/{review_id}/act"
    htmx = {"HX-Request": "true"}

    async def signed_in(http: httpx.AsyncClient, user: str) -> str:
        form = await http.get("/signin")
        signed = await http.post("/signin", data={"csrf": csrf_of(form.text), "token": tokens[user], "next": "/"})
        assert signed.status_code == 303
        return csrf_of((await http.get("/")).text)

    async with serve(create_app(service, settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as legal, \
            httpx.AsyncClient(base_url=url, timeout=30) as oncall, api_client(url, tokens["U_LEGAL"]) as api:
        as_legal, as_oncall = await signed_in(legal, "U_LEGAL"), await signed_in(oncall, "U_ONCALL")
        held = await legal.post(act, data={"action": "legal-hold", "csrf": as_legal, "reason": "LH-7"}, headers=htmx)
        assert held.headers["x-unship-status"] == "200" and "legal hold placed" in held.text
        release = {"action": "release-legal-hold", "csrf": as_oncall, "reason": "done"}
        refused = await oncall.post(act, data=release, headers=htmx)
        assert refused.headers["x-unship-status"] == "403" and "U_ONCALL holds none of the roles" in refused.text
        status = (await api.get(f"/v1/incidents/{review_id}/governance")).json()
        assert status["legal_hold"] == {"by": "U_LEGAL", "reason": "LH-7", "at": status["legal_hold"]["at"]}
    for _ in range(100):
        events = {e.kind: e for e in await store.events("unship:chat-test:chat-v2")}
        if "governance_refused" in events:
            break
        await asyncio.sleep(0.1)
    assert events["legal_hold"].actor == "U_LEGAL" and "via console" in events["legal_hold"].message
    assert events["governance_refused"].actor == "U_ONCALL" and events["governance_refused"].data["via"] == "console"
