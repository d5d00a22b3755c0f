"""The HTTP conventions a client relies on: every error is RFC 9457 problem+json, the OpenAPI document declares
what is sent (checked by schemathesis against the real app over the real dev server), bearer auth is declared,
and lists page with cursors."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance
from temporalio.testing import WorkflowEnvironment

from tests.support.playbooks import snapshot
from tests.support.stack import TOKEN, api_client, make_settings, person, serve
from tests.workflows.test_governance import GOVERNED, incident
from workers.runtime.client import connect
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import free_port
from workers.web.app import create_app
from workers.web.guards import MAX_BODY_BYTES
from workflows.messages import ReviewInput
from workflows.review import ReviewWorkflow

PROBLEM = "application/problem+json"


def _is_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"] and body["detail"]
    return body


async def test_every_kind_of_error_is_a_problem_document(service: IncidentService, settings: Settings) -> None:
    # the shared token may send alerts too here (UNSHIP_API_TOKEN_SCOPES): it is what this test authenticates with
    secured = settings.model_copy(update={"api_token": SecretStr(TOKEN), "api_token_scopes": "read,trigger,alerts"})
    async with serve(create_app(service, secured)) as url:
        async with api_client(url) as anonymous:
            unauthorized = await anonymous.get("/v1/incidents")
        async with api_client(url, TOKEN) as client:
            invalid = await client.post("/v1/incidents", json={"playbook": "chat-test", "severity": "apocalyptic"})
            unknown_playbook = await client.post("/v1/incidents", json={"playbook": "nope", "release": "v2"})
            missing = await client.get("/v1/incidents/unship:chat-test:never")
            no_review = await client.get("/v1/incidents/unship:chat-test:never/review")
            no_route = await client.get("/v2/nothing")
            wrong_method = await client.delete("/v1/incidents")
            too_big = await client.post("/v1/incidents", content=b"x" * (MAX_BODY_BYTES + 1),
                                        headers={"content-type": "application/json"})
            bad_cursor = await client.get("/v1/incidents", params={"cursor": "%%%not-a-cursor"})
            alert = await client.post("/v1/alerts/generic", content=b"{not json",
                                      headers={"content-type": "application/json"})
    assert _is_problem(unauthorized, 401)["instance"] == "/v1/incidents"
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    body = _is_problem(invalid, 422)
    assert {e["field"] for e in body["errors"]} == {"release", "severity"}
    assert _is_problem(unknown_playbook, 422)["known"] == ["chat-test"]
    assert "unship:chat-test:never" in _is_problem(missing, 404)["detail"]
    _is_problem(no_review, 404)  # no incident store in this process: nothing recorded to show
    assert "/openapi.json" in _is_problem(no_route, 404)["detail"]
    _is_problem(wrong_method, 405)
    assert "larger than" in _is_problem(too_big, 413)["detail"]
    assert _is_problem(bad_cursor, 422)["field"] == "cursor"
    _is_problem(alert, 400)


async def test_unreachable_temporal_is_503_problem(settings: Settings) -> None:
    async def down() -> IncidentService:
        raise ConnectionError("cannot reach Temporal at 127.0.0.1:1")

    async with serve(create_app(down, settings)) as url, api_client(url) as client:
        listing = await client.get("/v1/incidents")
        ready = await client.get("/readyz")
    assert "cannot reach Temporal" in _is_problem(listing, 503)["detail"]
    assert listing.headers["retry-after"] == "5"
    _is_problem(ready, 503)


def test_openapi_declares_problems_bearer_auth_and_what_each_route_answers(service: IncidentService,
                                                                           settings: Settings) -> None:
    document = create_app(service, settings).openapi()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    decision = document["paths"]["/v1/incidents/{incident_id}/decision"]["post"]
    assert decision["security"] == [{"bearerAuth": []}]
    for code in ("401", "403", "404", "409", "422", "503"):
        assert decision["responses"][code]["content"] == {
            PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}, code
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == [PROBLEM], (method, path, code)
    assert {"/v1/incidents/{incident_id}/review", "/v1/incidents/{incident_id}/audit"} <= set(document["paths"])


async def test_incident_list_pages_with_a_cursor(service: IncidentService, settings: Settings) -> None:
    releases = [f"page-v{i}" for i in range(5)]
    for release in releases:
        await service.trigger("chat-test", release, started_by="test")  # no worker: they stay open
    async with serve(create_app(service, settings)) as url, api_client(url) as client:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not set(f"unship:chat-test:{r}" for r in releases) <= set(seen):  # visibility catches up
            assert time.monotonic() < deadline, seen
            seen, cursor, pages = [], None, 0
            while True:
                page = (await client.get("/v1/incidents", params={"limit": 2, **({"cursor": cursor} if cursor
                                                                                  else {})})).json()
                assert len(page["incidents"]) <= 2
                seen += [i["incident_id"] for i in page["incidents"]]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            await asyncio.sleep(0.1)
    mine = [i for i in seen if i.startswith("unship:chat-test:page-v")]
    # every one of ours exactly once, over several pages (others' workflows on this shared server may close
    # between two pages and move in Temporal's order; ours stay open and do not)
    assert sorted(mine) == sorted(f"unship:chat-test:{r}" for r in releases) and pages >= 3


# --- the OpenAPI document against what is sent ----------------------------------------------------------------


@contextlib.contextmanager
def _served_in_a_thread(app_settings: Settings) -> Iterator[str]:
    """The app served by uvicorn in its own thread and event loop (schemathesis calls it synchronously); the
    incident service connects to Temporal lazily, inside that loop."""
    port = free_port()
    playbooks = {"chat-test": snapshot()}

    async def factory() -> IncidentService:
        return IncidentService(await connect(app_settings), app_settings, playbooks)

    server = uvicorn.Server(uvicorn.Config(create_app(factory, app_settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_every_response_matches_the_openapi_document(local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """schemathesis generates requests for every operation of the app's own OpenAPI document; no response may
    break it (undeclared status, wrong content type, body or headers) and none may be a 5xx other than a
    declared 503."""
    app_settings = make_settings(tmp_path, local_env, api_token=TOKEN, api_token_scopes="read,trigger,alerts",
                                 slack_signing_secret="slack-signing-secret",
                                 alert_bearer_token="alert-token")
    failures: list[str] = []
    with _served_in_a_thread(app_settings) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15

        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                # every check but "valid data is accepted": a made-up playbook or incident is valid JSON that
                # the server rightly answers 422/404 (as declared)
                case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                       excluded_checks=[positive_data_acceptance])

            try:
                check()
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
                failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


async def test_a_decision_nobody_processes_in_time_is_503_not_500(service: IncidentService,
                                                                   settings: Settings) -> None:
    """Under load (or with no worker) Temporal gives up waiting for the workflow to take a decision: the caller
    gets 503 with what to do, never a 500, and the same Idempotency-Key on the retry counts once."""
    incident = await service.trigger("chat-test", "no-worker-decides", started_by="test")  # no worker polls
    token = person(settings, "U_ONCALL")
    async with serve(create_app(service, settings)) as url, api_client(url, token) as client:
        answer = await client.post(f"/v1/incidents/{incident}/decision", json={"verdict": "approve", "reason": "r"},
                                   headers={"Idempotency-Key": "k1"})
    body = _is_problem(answer, 503)
    assert "did not take the decision in time" in body["detail"] and "Idempotency-Key" in body["detail"]


async def test_a_governance_action_nobody_processes_in_time_is_503_not_500(service: IncidentService,
                                                                            settings: Settings) -> None:
    """The same for the review's governance updates: a legal hold Temporal stopped waiting for is 503."""
    status = incident(datetime.now(UTC))
    review = f"{status.incident_id}:review:noworker"
    await service.client.start_workflow(  # on a task queue no worker polls
        ReviewWorkflow.run, ReviewInput(incident_id=status.incident_id, snapshot=snapshot(**GOVERNED),
                                        status=status), id=review, task_queue=settings.task_queue)
    token = person(settings, "U_LEGAL", "operate")
    async with serve(create_app(service, settings)) as url, api_client(url, token) as client:
        answer = await client.post(f"/v1/incidents/{review}/legal-hold", json={"reason": "litigation"})
    body = _is_problem(answer, 503)
    assert "did not take the legal_hold in time" in body["detail"]
    await service.client.get_workflow_handle(review).terminate("test over")
