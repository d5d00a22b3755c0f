"""The HTTP API as a client sees it: auth, limits, validation and errors, against the real dev server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from tests.support.stack import TOKEN, api_client, make_settings, person, serve
from workers.runtime.client import connect
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.web.app import create_app
from workers.web.guards import MAX_BODY_BYTES, check_bind_allowed


def asgi_client(service: IncidentService, settings: Settings, token: str | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(service, settings))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=transport, base_url="http://unship.test", headers=headers)


# --- auth ------------------------------------------------------------------------------------------------------


async def test_token_is_required_when_configured(service: IncidentService, settings: Settings) -> None:
    secured = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    async with serve(create_app(service, secured)) as url:
        async with api_client(url) as anonymous:
            missing = await anonymous.get("/v1/incidents")
            wrong = await anonymous.get("/v1/incidents", headers={"Authorization": "Bearer nope"})
            basic = await anonymous.get("/v1/incidents", headers={"Authorization": f"Basic {TOKEN}"})
            health = await anonymous.get("/healthz")
        async with api_client(url, TOKEN) as authorized:
            ok = await authorized.get("/v1/incidents")
    assert missing.status_code == wrong.status_code == basic.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in missing.text
    assert health.status_code == 200  # probes need no token
    assert ok.status_code == 200 and isinstance(ok.json()["incidents"], list)


def test_unauthenticated_api_may_only_listen_on_loopback(tmp_path: Path) -> None:
    for addr in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080"):
        check_bind_allowed(make_settings(tmp_path, http_addr=addr))
    with pytest.raises(ValueError, match="UNSHIP_API_TOKEN"):
        check_bind_allowed(make_settings(tmp_path, http_addr="0.0.0.0:8080"))
    check_bind_allowed(make_settings(tmp_path, http_addr="0.0.0.0:8080", api_token=TOKEN))


# --- limits and validation ---------------------------------------------------------------------------------------


async def test_body_over_one_mib_is_413(service: IncidentService, settings: Settings) -> None:
    big = b'{"playbook": "chat-test", "release": "' + b"x" * MAX_BODY_BYTES + b'"}'

    async def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    async with serve(create_app(service, settings)) as url, api_client(url) as client:
        declared = await client.post("/v1/incidents", content=big, headers={"content-type": "application/json"})
        streamed = await client.post("/v1/incidents", content=chunks(), headers={"content-type": "application/json"})
        small = await client.post("/v1/incidents", json={"playbook": "chat-test"})
    assert declared.status_code == 413 and "larger than" in declared.json()["detail"]
    assert streamed.status_code == 413
    assert small.status_code == 422  # a small body still reaches the app


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"playbook": "chat-test"}, "release"),
        ({"release": "v2"}, "playbook"),
        ({"playbook": "chat-test", "release": "v2", "severity": "apocalyptic"}, "severity"),
        ({"playbook": "chat-test", "release": "v2", "surprise": 1}, "surprise"),
        ({"playbook": "chat-test", "release": ""}, "release"),
        ({"playbook": "chat-test", "release": "has space"}, "release"),
    ],
)
async def test_invalid_trigger_is_422_naming_the_field(
    service: IncidentService, settings: Settings, body: dict, field: str
) -> None:
    async with asgi_client(service, settings) as client:
        response = await client.post("/v1/incidents", json=body)
    assert response.status_code == 422
    assert field in response.json()["detail"]


async def test_broken_json_and_wrong_shapes_are_422_not_500(service: IncidentService, settings: Settings) -> None:
    async with asgi_client(service, settings) as client:
        broken = await client.post("/v1/incidents", content=b'{"playbook": ', headers={"content-type": "application/json"})
        listed = await client.post("/v1/incidents", json=["chat-test", "v2"])
        verdict = await client.post("/v1/incidents/unship:chat-test:v2/decision",
                                    json={"user": "U_ONCALL", "verdict": "maybe"})
        limit = await client.get("/v1/incidents", params={"limit": "-3"})
    assert broken.status_code == listed.status_code == verdict.status_code == limit.status_code == 422
    assert "verdict" in verdict.json()["detail"]
    assert "limit" in limit.json()["detail"]


async def test_unknown_playbook_lists_the_known_ones(service: IncidentService, settings: Settings) -> None:
    async with asgi_client(service, settings) as client:
        response = await client.post("/v1/incidents", json={"playbook": "nope", "release": "v2"})
    assert response.status_code == 422
    assert response.json()["known"] == ["chat-test"]
    assert "unknown playbook 'nope'" in response.json()["detail"] and "chat-test" in response.json()["detail"]


# --- incidents on the real server ---------------------------------------------------------------------------------


async def test_unknown_incident_is_404(service: IncidentService, settings: Settings) -> None:
    token = person(settings, "U_ONCALL")
    async with serve(create_app(service, settings)) as url, api_client(url, token) as client:
        status = await client.get("/v1/incidents/unship:chat-test:never")
        decision = await client.post("/v1/incidents/unship:chat-test:never/decision",
                                     json={"verdict": "approve", "reason": "r"})
        abort = await client.post("/v1/incidents/unship:chat-test:never/abort", json={"reason": "r"})
        unknown_action = await client.post("/v1/incidents/unship:chat-test:never/explode")
    assert status.status_code == decision.status_code == abort.status_code == 404
    assert "unship:chat-test:never" in status.json()["detail"]
    assert unknown_action.status_code in (404, 405)


async def test_trigger_twice_joins_one_incident(service: IncidentService, settings: Settings) -> None:
    # No worker polls this task queue: the incident exists in Temporal, it just has not run yet.
    async with serve(create_app(service, settings)) as url, api_client(url) as client:
        first = await client.post("/v1/incidents", json={"playbook": "chat-test", "release": "v2.1", "severity": "high"})
        second = await client.post("/v1/incidents", json={"playbook": "chat-test", "release": "v2.1"})
        listed = await client.get("/v1/incidents", params={"limit": 1000})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() == {"incident_id": "unship:chat-test:v2.1"}
    ids = [i["incident_id"] for i in listed.json()["incidents"]]
    assert ids.count("unship:chat-test:v2.1") == 1
    handle = service.client.get_workflow_handle("unship:chat-test:v2.1")
    history = [e async for e in handle.fetch_history_events()]
    assert sum(e.HasField("workflow_execution_signaled_event_attributes") for e in history) == 2
    await handle.terminate("test cleanup")


async def test_readiness_follows_temporal(local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, local_env)
    nowhere = make_settings(tmp_path, temporal_address="127.0.0.1:1")

    async def reachable() -> IncidentService:
        return IncidentService(await connect(settings), settings, {})

    async def unreachable() -> IncidentService:
        return IncidentService(await connect(nowhere), nowhere, {})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(reachable, settings)),
                                 base_url="http://t") as up:
        ready = await up.get("/readyz")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(unreachable, nowhere)),
                                 base_url="http://t") as down:
        not_ready = await down.get("/readyz")
        healthy = await down.get("/healthz")
        listing = await down.get("/v1/incidents")
    assert ready.status_code == 200
    assert not_ready.status_code == 503 and healthy.status_code == 200
    assert listing.status_code == 503 and "cannot reach Temporal at 127.0.0.1:1" in listing.json()["detail"]
