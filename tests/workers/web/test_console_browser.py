"""The console in a real headless Chromium against `unship up` on the embedded stack (real Temporal dev server,
worker, flagd file, SQLite store). The playbook's signal is read over HTTP from a local JSON endpoint the test
controls (the real ``http`` signal source), so the incident polls, confirms and reverts for real.

What a person sees: the list shows a triggered incident and grows live; the incident page's timeline, chart and
stage bar update while the workflow polls and reverts, without a reload; someone without the role is refused
with the workflow's reason; an on-call engineer approves from the keyboard and the stage bar moves; the page
reads without JavaScript. Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import chromium, screenshot_path
from tests.support.processes import ctrl_c
from tests.workers.cli.test_up import wait_ready
from workers.runtime.temporal_server import free_port
from workers.web.auth import add_user

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "console-browser-test-token"
PEOPLE: dict[str, str] = {}
WAIT_MS = 60_000  # guards against a hang only; the incident takes ~15 s end to end


@dataclass
class Metrics:
    """A JSON endpoint standing in for a metrics API: ``GET /value?release=R`` -> ``{"value": N}``."""

    url: str
    values: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def metrics() -> Iterator[Metrics]:
    state = Metrics(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release = parse_qs(urlparse(self.path).query).get("release", [""])[0]
            body = json.dumps({"value": state.values.get(release, 5.0)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def playbook(metrics_url: str) -> dict[str, object]:
    return {
        "api_version": "unship/v1", "name": "chat-console", "scenario": "conversational-agent",
        "roles": {"on_call": {"users": ["U0ONCALL1"]}, "safety_lead": {"users": ["U0SAFETY1"]}},
        "trigger": {"matchers": ["alertname=GenAIQualityDegraded"]},
        "signals": [{"name": "hallucinations", "category": "model_quality",
                     "source": {"type": "http", "url": f"{metrics_url}/value?release=$release",
                                "json_path": "value"},
                     "threshold": {"value": 30, "unit": "per 10k outputs"}}],
        "confirmation": {"window": "8s", "interval": "1s", "breaches": 3, "out_of": 4,
                         "rule": {"any_of": ["hallucinations"]}},
        "decision": {"mode": "approval", "roles": ["on_call"], "quorum": 1, "timeout": "30m",
                     "actions": {"pause": ["on_call", "safety_lead"], "abort": ["on_call", "safety_lead"]}},
        "rollback": {"targets": [{"kind": "flag", "provider": "flagd", "key": "chat-model"}],
                     "stages": [{"percent": 10, "bake": "2s"}, {"percent": 50, "bake": "2s"},
                                {"percent": 100, "bake": "1s"}]},
        "communications": {"channel": "#ml-incidents"},
        "review": {"tasks": [{"title": "Write the incident summary", "owner": "on_call", "due": "3d"}],
                   "regulatory_report_due": "72h", "purge_outputs_after": "30d"},
    }


@dataclass
class Up:
    url: str
    api: httpx.Client

    def trigger(self, release: str) -> str:
        answer = self.api.post("/v1/incidents", json={"playbook": "chat-console", "release": release,
                                                      "reason": "hallucinations above threshold"})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["incident_id"])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, metrics: Metrics) -> Iterator[Up]:
    """`unship up` as a person runs it, with a token (so reading needs sign-in) and the test playbook."""
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "playbooks").mkdir()
    (tmp / "playbooks" / "chat-console.yaml").write_text(json.dumps(playbook(metrics.url), indent=2))
    http_port = free_port()
    for user in ("U0ONCALL1", "U0SAFETY1", "U9INTERN1"):  # personal tokens: the console signs in who they name
        PEOPLE[user] = add_user(tmp / "state" / "users.yaml", user, ["read", "trigger", "decide", "operate"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSHIP_") and k != "TEMPORAL_ADDRESS"}
    env.update({"UNSHIP_STATE_DIR": str(tmp / "state"), "UNSHIP_HTTP_ADDR": f"127.0.0.1:{http_port}",
                "UNSHIP_TEMPORAL_PORT": str(free_port()), "UNSHIP_TEMPORAL_UI_PORT": str(free_port()),
                "UNSHIP_API_TOKEN": TOKEN, "UNSHIP_PLAYBOOKS_DIR": str(tmp / "playbooks"), "COLUMNS": "200"})
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "up"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, process)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:
            yield Up(url=url, api=api)
    finally:
        output = ctrl_c(process, "unship up (with console streams open)")
    assert process.returncode == 0, output
    assert TOKEN not in output and not any(token in output for token in PEOPLE.values())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def signed_in(browser: Browser, up: Up, user: str, **context: object) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}, **context).new_page()  # type: ignore[arg-type]
    page.goto(f"{up.url}/")
    expect(page).to_have_url(f"{up.url}/signin?next=%2F")  # reading needs sign-in when the API has a token
    page.fill("#token", PEOPLE[user])
    page.click("button[type=submit]")
    expect(page.locator(".person")).to_have_text(user)
    return page


def test_sign_in_refuses_a_wrong_token_and_names_the_field(browser: Browser, up: Up) -> None:
    page = browser.new_page()
    page.goto(f"{up.url}/incidents/unship:chat-console:whatever")
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("token: unknown or revoked bearer token")
    assert "not-the-token" not in page.content()
    page.context.close()


def test_the_list_shows_a_triggered_incident_and_grows_live(browser: Browser, up: Up, metrics: Metrics) -> None:
    metrics.values["list-v1"] = 3.0  # healthy: this incident will be dismissed as transient
    first = up.trigger("list-v1")
    page = signed_in(browser, up, "U0ONCALL1")
    row = page.locator(f'tr[data-incident="{first}"]')
    expect(row).to_contain_text("list-v1")
    expect(row).to_contain_text("chat-console")
    page.evaluate("window.__loadedOnce = true")

    second = up.trigger("list-v2")  # appears without a reload, open incidents first
    expect(page.locator(f'tr[data-incident="{second}"]')).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("window.__loadedOnce") is True, "the page reloaded"
    expect(page.locator("body")).to_have_class("live")

    page.select_option("#f-phase", "closed")
    page.click(".filters button")
    expect(page.locator(f'tr[data-incident="{second}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-incident="{first}"]')).to_contain_text("dismissed", timeout=WAIT_MS)
    page.context.close()


def test_an_incident_unfolds_live_a_refusal_shows_its_reason_and_an_approval_moves_the_stage_bar(
        browser: Browser, up: Up, metrics: Metrics) -> None:
    metrics.values["chat-v2.4.0"] = 80.0  # breaching: confirmed after three polls
    incident = up.trigger("chat-v2.4.0")
    page_url = f"{up.url}/incidents/{incident}"

    oncall = signed_in(browser, up, "U0ONCALL1")
    oncall.goto(page_url)
    oncall.evaluate("window.__loadedOnce = true")
    timeline = oncall.locator("#timeline li.event")

    # While the workflow polls: polls arrive in the timeline and on the chart, with the threshold line drawn.
    expect(oncall.locator('#timeline li[data-kind="poll"]')).to_have_count(3, timeout=WAIT_MS)
    chart = oncall.locator('figure.chart[data-signal="hallucinations"] svg')
    expect(chart.locator("line.threshold")).to_have_count(1)
    expect(chart.locator("circle.poll-breach")).to_have_count(3, timeout=WAIT_MS)
    expect(chart.locator(".threshold-label")).to_contain_text("threshold > 30 per 10k outputs")
    expect(oncall.locator("#decision .awaiting")).to_have_text("on_call", timeout=WAIT_MS)
    expect(oncall.locator("#decision .countdown")).to_contain_text("in ")

    # Someone without the role clicks Approve: refused, with the workflow's reason, and nothing moves.
    intruder = signed_in(browser, up, "U9INTERN1")
    intruder.goto(page_url)
    intruder.fill("#reason", "looks bad to me")
    intruder.click("button[value=approve]")
    expect(intruder.locator("#flash")).to_contain_text(
        "refused: U9INTERN1 holds none of the roles that may decide here (on_call)")
    expect(oncall.locator('#timeline li[data-kind="decision_refused"]')).to_have_count(1, timeout=WAIT_MS)
    expect(oncall.locator("#previous-percent")).to_have_text("0%")
    screenshot = screenshot_path("incident-awaiting-decision")
    oncall.screenshot(path=str(screenshot), full_page=True)

    # The on-call engineer approves from the keyboard: reason, Tab to Approve, Enter.
    oncall.focus("#reason")
    oncall.keyboard.type("hallucination rate doubled after the rollout")
    oncall.keyboard.press("Tab")
    assert oncall.evaluate("document.activeElement.value") == "approve"
    oncall.keyboard.press("Enter")
    expect(oncall.locator("#flash")).to_contain_text("approved")
    expect(oncall.locator("#stagebar li").first).not_to_have_attribute("data-status", "pending", timeout=WAIT_MS)
    expect(oncall.locator("#previous-percent")).to_have_text("10%", timeout=WAIT_MS)
    expect(oncall.locator("#previous-percent")).to_have_text("100%", timeout=WAIT_MS)
    expect(oncall.locator("#outcome")).to_have_text("reverted", timeout=WAIT_MS)
    expect(oncall.locator('#timeline li[data-kind="stage_applied"]')).to_have_count(3)
    expect(chart.locator("line.marker-stage")).to_have_count(3)
    expect(oncall.locator("#review-h")).to_be_visible(timeout=WAIT_MS)
    expect(oncall.locator("table.tasks")).to_contain_text("Write the incident summary")
    expect(oncall.locator("#actions")).to_contain_text("closed")
    oncall.screenshot(path=str(screenshot_path("incident")), full_page=True)
    oncall.click("details.review > summary")
    expect(oncall.locator("article.markdown h1")).to_contain_text("chat-v2.4.0", timeout=WAIT_MS)
    expect(oncall.locator(".deadlines")).to_contain_text("regulatory report due")
    assert oncall.evaluate("window.__loadedOnce") is True, "the incident page reloaded"
    assert timeline.count() >= 10

    # The list shows the outcome; the same pages on a phone and in dark mode.
    oncall.goto(f"{up.url}/")
    expect(oncall.locator(f'tr[data-incident="{incident}"]')).to_contain_text("100%")
    oncall.screenshot(path=str(screenshot_path("incidents")), full_page=True)
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                color_scheme="dark")
    phone.add_cookies(oncall.context.cookies())
    small = phone.new_page()
    small.goto(page_url)
    expect(small.locator("#outcome")).to_have_text("reverted")
    assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), "wider than the phone"
    small.screenshot(path=str(screenshot_path("incident-phone-dark")))
    small.goto(f"{up.url}/")
    small.screenshot(path=str(screenshot_path("incidents-phone-dark")))
    for context in (phone, intruder.context, oncall.context):
        context.close()


def test_the_incident_page_reads_without_javascript(browser: Browser, up: Up, metrics: Metrics) -> None:
    metrics.values["nojs-v1"] = 90.0
    incident = up.trigger("nojs-v1")
    page = signed_in(browser, up, "U0SAFETY1", java_script_enabled=False)
    page.goto(f"{up.url}/incidents/{incident}")
    expect(page.locator("#incident-h")).to_contain_text("nojs-v1")
    expect(page.locator('#timeline li[data-kind="opened"]')).to_have_count(1)
    expect(page.locator("#stagebar li")).to_have_count(3)
    # A form post without JavaScript still works: the answer comes back on the page after a redirect.
    page.click("button[value=pause]")
    expect(page.locator("#flash")).to_contain_text("pause accepted")
    page.goto(f"{up.url}/incidents/{incident}")
    expect(page.locator('#timeline li[data-kind="paused"]')).to_have_count(1)
    page.click("button[value=abort]")
    expect(page.locator("#flash")).to_contain_text("abort accepted")
    page.context.close()
