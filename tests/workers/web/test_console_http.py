"""The console over HTTP, attack by attack: who may read, forged and cross-site forms, open redirects, tampered
cookies, bad input answered with what is wrong, no secret on any page; and only `unship up` serves it.
(What a person sees in a browser is in test_console_browser.py.)"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from tabletop.rehearsal import RehearsalWorkflow
from tabletop.rehearsal_run import RehearsalInput, run_rehearsal
from tabletop.scenarios import scenario_folder
from tests.support.stack import TOKEN, make_settings, person, serve
from workers.runtime.service import LIBRARY_AUDIT_ID, IncidentService
from workers.runtime.settings import Settings
from workers.web.app import create_app
from workers.web.console.identity import SESSION_COOKIE


@pytest.fixture
def guarded(tmp_path: Path, local_env: WorkflowEnvironment) -> Settings:
    settings = make_settings(tmp_path, local_env, api_token=TOKEN, console_secret="console-secret-for-tests")
    TOKENS["U0ONCALL1"] = person(settings, "U0ONCALL1")
    return settings


@pytest.fixture
async def console(guarded: Settings, service: IncidentService) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(service, guarded)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


TOKENS: dict[str, str] = {}


async def sign_in(http: httpx.AsyncClient, user: str = "U0ONCALL1") -> str:
    form = await http.get("/signin")
    answer = await http.post("/signin", data={"csrf": csrf_of(form.text), "token": TOKENS[user], "next": "/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    page = await http.get("/")
    assert page.status_code == 200 and user in page.text
    return csrf_of(page.text)


async def test_the_gateway_alone_serves_no_console(settings: Settings, service: IncidentService) -> None:
    async with serve(create_app(service, settings, api=False)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/static/console.css")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200


async def test_reading_needs_sign_in_when_the_api_has_a_token(console: httpx.AsyncClient) -> None:
    answer = await console.get("/incidents/unship:chat-test:v1?x=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/signin?next=%2Fincidents%2Funship%3Achat-test%3Av1%3Fx%3D1"
    assert (await console.get("/stream")).status_code == 401
    assert (await console.get("/incidents/unship:chat-test:v1/stream")).status_code == 401
    assert (await console.get("/rehearsals")).status_code == 303


async def test_sign_in_checks_the_token_and_the_cookie_never_carries_it(console: httpx.AsyncClient) -> None:
    form = await console.get("/signin")
    assert form.status_code == 200 and form.headers["content-security-policy"].startswith("default-src 'self'")
    assert form.headers["x-frame-options"] == "DENY"
    wrong = await console.post("/signin", data={"csrf": csrf_of(form.text), "token": "guess", "next": "/"})
    assert wrong.status_code == 401 and "token: unknown or revoked bearer token" in wrong.text
    # a name typed next to a token is not who you are: only the token says (the form has no user field)
    named = await console.post("/signin", data={"csrf": csrf_of(form.text), "user": "U04SAFETY01",
                                                "token": TOKENS["U0ONCALL1"], "next": "/"})
    assert named.status_code == 303
    assert "U0ONCALL1" in (await console.get("/")).text and "U04SAFETY01" not in (await console.get("/")).text
    # the shared token signs in nobody who may decide
    again = await console.get("/signin")
    as_shared = await console.post("/signin", data={"csrf": csrf_of(again.text), "token": TOKEN, "next": "/"})
    assert as_shared.status_code == 303
    shared = await console.post("/incidents/unship:chat-test:v1/act",
                                data={"action": "approve", "csrf": csrf_of((await console.get("/")).text)},
                                headers={"HX-Request": "true"})
    assert shared.headers["x-unship-status"] == "403" and "shared-token may not decide" in shared.text
    await sign_in(console)
    cookie = console.cookies[SESSION_COOKIE]
    assert TOKEN not in cookie and TOKENS["U0ONCALL1"] not in cookie and "console-secret" not in cookie
    everything = (await console.get("/")).text + (await console.get("/signin")).text
    assert TOKEN not in everything and TOKENS["U0ONCALL1"] not in everything


async def test_a_forged_or_cross_site_form_is_refused_before_anything_happens(console: httpx.AsyncClient) -> None:
    csrf = await sign_in(console)
    incident = "/incidents/unship:chat-test:v1/act"
    forged = await console.post(incident, data={"action": "abort", "csrf": "0" * 40})
    assert forged.status_code == 303
    shown = await console.get(forged.headers["location"], headers={"Accept": "text/html"})  # a one-shot cookie
    assert "the form is stale or came from another site" in shown.text
    cross = await console.post(incident, data={"action": "abort", "csrf": csrf},
                               headers={"Origin": "https://evil.example", "HX-Request": "true"})
    assert cross.status_code == 200 and cross.headers["x-unship-status"] == "403"
    assert "came from another site" in cross.text
    fetched = await console.post(incident, data={"action": "abort", "csrf": csrf},
                                 headers={"Sec-Fetch-Site": "cross-site", "HX-Request": "true"})
    assert fetched.headers["x-unship-status"] == "403"
    unknown = await console.post(incident, data={"action": "delete-everything", "csrf": csrf},
                                 headers={"HX-Request": "true"})
    assert unknown.headers["x-unship-status"] == "422" and "is not one of approve, reject" in unknown.text
    signout = await console.post("/signout", data={"csrf": "nope"})
    assert signout.status_code == 403


async def test_acting_needs_a_person_and_a_tampered_cookie_signs_nobody_in(console: httpx.AsyncClient) -> None:
    page = await console.get("/signin")
    anonymous = await console.post("/incidents/unship:chat-test:v1/act",
                                   data={"action": "approve", "csrf": csrf_of(page.text)},
                                   headers={"HX-Request": "true"})
    assert anonymous.headers["x-unship-status"] == "401" and "sign in to act" in anonymous.text
    await sign_in(console)
    body, mac = console.cookies[SESSION_COOKIE].split(".")
    console.cookies.set(SESSION_COOKIE, body + "." + ("0" if mac[0] != "0" else "1") + mac[1:])
    assert (await console.get("/")).status_code == 303  # back to sign-in


async def test_bad_input_gets_a_page_saying_what_is_wrong(console: httpx.AsyncClient) -> None:
    await sign_in(console)
    unknown_phase = await console.get("/?phase=sleeping", headers={"Accept": "text/html"})
    assert unknown_phase.status_code == 422 and "phase: &#39;sleeping&#39; is not one of open" in unknown_phase.text
    missing = await console.get("/incidents/unship:chat-test:never", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and "no incident &#39;unship:chat-test:never&#39;" in missing.text
    assert (await console.get("/playbooks/nope")).status_code == 404
    assert (await console.get("/rehearsals/reports/..%2F..%2Fetc")).status_code == 404
    redirect = await console.post("/signin", data={"csrf": csrf_of((await console.get("/signin")).text),
                                                   "token": TOKENS["U0ONCALL1"], "next": "//evil.example/x"})
    assert redirect.headers["location"] == "/"


async def test_the_list_filters_and_the_playbook_page(console: httpx.AsyncClient) -> None:
    await sign_in(console)
    listing = await console.get("/?phase=open&playbook=chat-test")
    assert listing.status_code == 200 and 'option value="open" selected' in listing.text
    assert 'sse-connect="/stream?phase=open&amp;playbook=chat-test"' in listing.text
    book = await console.get("/playbooks/chat-test")
    assert book.status_code == 200 and "chat-test" in book.text and "canonical JSON" in book.text


async def test_rehearsals_list_reports_and_serve_their_charts_inert(console: httpx.AsyncClient,
                                                                    guarded: Settings) -> None:
    folder = guarded.resolved_reports_dir / "nightly"
    folder.mkdir(parents=True)
    (folder / "tabletop-report.md").write_text(
        "# Tabletop report\n\n| Scenario | Result |\n|---|---|\n| blip | PASS |\n| breach | FAIL |\n\n"
        "## blip\n\n![timeline of blip](blip.svg)\n\n<script>alert(1)</script>\n")
    (folder / "blip.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><circle r="3"/></svg>')
    await sign_in(console)
    listing = await console.get("/rehearsals")
    assert listing.status_code == 200 and '/rehearsals/reports/nightly"' in listing.text
    assert "1 passed" in listing.text and "1 failed" in listing.text
    report = await console.get("/rehearsals/reports/nightly")
    assert report.status_code == 200 and 'src="/rehearsals/reports/nightly/blip.svg"' in report.text
    assert "<script>alert(1)</script>" not in report.text  # raw HTML in Markdown is shown as text
    chart = await console.get("/rehearsals/reports/nightly/blip.svg")
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/svg+xml"
    assert chart.headers["content-security-policy"].startswith("default-src 'none'")


async def test_a_scheduled_rehearsal_that_failed_shows_which_expectation_and_why(
        console: httpx.AsyncClient, guarded: Settings, local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """A rehearsal run (as a schedule starts it) whose scenario no longer holds: the rehearsals page lists it,
    its page says FAILED, names the expectation that failed and what was found instead."""
    folder = scenario_folder()
    scenario = tmp_path / "transient-spike-wrong.scenario.yaml"
    text = (folder / "transient-spike.scenario.yaml").read_text()
    scenario.write_text(text.replace("playbook: ../library/", f"playbook: {folder.parent}/library/")
                        .replace("outcome: dismissed", "outcome: reverted"))
    run_id = f"unship-rehearsal:console-{uuid.uuid4().hex[:8]}:run"
    activities = RollbackActivities(ScriptedFlagProvider(), ScriptedSignalSource({}), LogNotifier(),
                                    SqliteIncidentStore(tmp_path / "x.db"))
    async with Worker(local_env.client, task_queue=guarded.task_queue, workflows=[RehearsalWorkflow],
                      activities=[activities.notify, run_rehearsal]):
        summary = await local_env.client.execute_workflow(
            RehearsalWorkflow.run, RehearsalInput(scenario_path=str(scenario)), id=run_id,
            task_queue=guarded.task_queue)
    assert not summary.passed and summary.outcome == "dismissed"
    await sign_in(console)
    listing = await console.get("/rehearsals")
    assert listing.status_code == 200 and run_id in listing.text
    page = await console.get(f"/rehearsals/runs/{run_id}")
    assert page.status_code == 200
    assert "FAILED" in page.text and "transient-spike" in page.text
    failed = [e["name"] for e in summary.expectations if not e["passed"]]
    assert failed and all(f"<td>{name}</td>" in page.text for name in failed), failed
    assert "dismissed" in page.text  # what was found instead of the expected revert
    missing = await console.get("/rehearsals/runs/unship-rehearsal:nobody:run")
    assert missing.status_code == 404 and "no rehearsal run" in missing.text


async def test_the_incident_list_shows_incidents_not_the_administrators_trails(
        settings: Settings, local_env: WorkflowEnvironment, playbooks: dict, tmp_path: Path) -> None:
    """A playbook reload is audited under its own trail in the store; the console's list of incidents (open
    ones first) must not show that trail as an open incident."""
    store = SqliteIncidentStore(tmp_path / "list.db")
    service = IncidentService(local_env.client, settings, playbooks, store=store, library=lambda: playbooks)
    await service.reload_playbooks(by="U01ADMIN")
    assert await store.events(LIBRARY_AUDIT_ID)  # the reload is on the record
    async with serve(create_app(service, settings)) as url, httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/")
    assert page.status_code == 200
    assert LIBRARY_AUDIT_ID not in page.text
