"""The HTTP API: a thin FastAPI adapter over ``IncidentService``.

Routes (JSON; every ``/v1`` route needs ``Authorization: Bearer <UNSHIP_API_TOKEN>`` when a token is set):

- ``POST /v1/incidents`` ``{playbook, release, severity?, reason?, started_by?}`` -> 202 ``{incident_id}``
- ``GET  /v1/incidents`` -> ``{incidents: [...]}``; ``GET /v1/incidents/{id}`` -> the incident's status
- ``POST /v1/incidents/{id}/decision`` ``{user, verdict, reason, gate_id?}`` -> 200 result, 403 refused
  (an ``Idempotency-Key`` header makes a retried click count once)
- ``POST /v1/incidents/{id}/abort|pause|resume|revert-now`` ``{by?, reason?}`` -> 202
- ``POST /v1/releases`` ``{playbook, release, stages?}`` -> 202; ``GET /v1/playbooks``
- ``GET /healthz`` (process alive), ``GET /readyz`` (Temporal reachable): no token needed

Without ``UNSHIP_API_TOKEN`` the API has no authentication, so it may only listen on a loopback address
(``check_bind_allowed``). Bodies over 1 MiB get 413; invalid input gets 422 naming the field, never a 500.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from playbooks.models import Severity
from workers.runtime.service import (
    IncidentClosed,
    IncidentNotFound,
    IncidentSummary,
    InvalidInput,
    Refused,
    ServiceError,
    TemporalUnavailable,
    UnknownPlaybook,
)
from workers.runtime.settings import Settings
from workers.web.guards import ServiceGetter
from workflows.messages import (
    Command,
    DecisionRequest,
    DecisionResult,
    IncidentStatus,
    Verdict,
)

log = logging.getLogger(__name__)



# --- request bodies ------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerBody(_Body):
    playbook: str = Field(min_length=1, max_length=63)
    release: str = Field(min_length=1, max_length=200)
    severity: Severity | None = None
    reason: str = Field(default="", max_length=2000)
    started_by: str = Field(default="api", min_length=1, max_length=200)


class DecisionBody(_Body):
    user: str = Field(min_length=1, max_length=200)
    verdict: Verdict
    reason: str = Field(default="", max_length=2000)
    gate_id: str | None = Field(default=None, max_length=200)


class CommandBody(_Body):
    by: str = Field(default="api", min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)


class ReleaseBody(_Body):
    playbook: str = Field(min_length=1, max_length=63)
    release: str = Field(min_length=1, max_length=200)
    stages: list[Annotated[float, Field(gt=0, le=100)]] | None = Field(default=None, min_length=1, max_length=20)
    started_by: str = Field(default="api", min_length=1, max_length=200)


class Accepted(BaseModel):
    incident_id: str


class CommandAccepted(BaseModel):
    incident_id: str
    command: str


class IncidentList(BaseModel):
    incidents: list[IncidentSummary]


# --- errors --------------------------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header") and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def _service_error_response(exc: ServiceError) -> JSONResponse:
    if isinstance(exc, UnknownPlaybook):
        return JSONResponse({"detail": str(exc), "field": "playbook", "known": exc.known}, status_code=422)
    if isinstance(exc, InvalidInput):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=422)
    if isinstance(exc, IncidentNotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)
    if isinstance(exc, IncidentClosed):
        return JSONResponse({"detail": str(exc)}, status_code=409)
    if isinstance(exc, Refused):
        return JSONResponse({"detail": exc.reason}, status_code=403)
    if isinstance(exc, TemporalUnavailable):
        return JSONResponse({"detail": str(exc)}, status_code=503)
    return JSONResponse({"detail": str(exc)}, status_code=502)


# --- the app -------------------------------------------------------------------------------------------------


def mount_api(app: FastAPI, get_service: ServiceGetter, settings: Settings) -> None:
    """Add the ``/v1`` operator routes (incidents, decisions, commands, releases, playbooks) to ``app``."""
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    async def require_token(authorization: str | None = Header(default=None)) -> None:
        if token is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token):
            raise _ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(_ApiError)
    async def _api_error(_: Request, exc: _ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _service_error_response(exc)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @v1.get("/playbooks", tags=["playbooks"])
    async def playbooks() -> dict[str, list[dict[str, str]]]:
        """The playbooks this server can run, with the version (content hash) a new incident would use."""
        svc = await get_service()
        return {"playbooks": [
            {"name": name, "version": snap.version, "scenario": snap.playbook.scenario.value}
            for name, snap in sorted(svc.playbooks.items())
        ]}

    @v1.post("/incidents", status_code=202, response_model=Accepted, tags=["incidents"])
    async def trigger(body: TriggerBody) -> Accepted:
        """Open an incident for a release (or join the running one: one incident per playbook and release)."""
        svc = await get_service()
        incident = await svc.trigger(body.playbook, body.release, started_by=body.started_by,
                                     severity=body.severity, reason=body.reason)
        return Accepted(incident_id=incident)

    @v1.get("/incidents", response_model=IncidentList, tags=["incidents"])
    async def incidents(limit: int = Query(default=50, ge=1, le=1000)) -> IncidentList:
        """The newest incidents and re-releases."""
        return IncidentList(incidents=await (await get_service()).list(limit))

    @v1.post("/incidents/{incident_id:path}/decision", response_model=DecisionResult, tags=["incidents"])
    async def decide(
        incident_id: str,
        body: DecisionBody,
        idempotency_key: str | None = Header(default=None, max_length=200),
    ) -> DecisionResult:
        """Approve or reject at the open gate; 403 with the reason when the workflow refuses."""
        request = DecisionRequest(user=body.user, verdict=body.verdict, reason=body.reason, via="api",
                                  gate_id=body.gate_id)
        return await (await get_service()).decide(incident_id, request, update_id=idempotency_key)

    for path, signal_name in (("abort", "abort"), ("pause", "pause"), ("resume", "resume"),
                              ("revert-now", "revert_all_now")):
        v1.add_api_route(
            f"/incidents/{{incident_id:path}}/{path}",
            _command_route(get_service, signal_name),
            methods=["POST"], status_code=202, response_model=CommandAccepted, tags=["incidents"],
            summary=f"Send {signal_name} to a running incident",
        )

    @v1.get("/incidents/{incident_id:path}", response_model=IncidentStatus, tags=["incidents"])
    async def incident(incident_id: str) -> IncidentStatus:
        """The live status: phase, stages, gate, decisions, evidence and the audit trail."""
        return await (await get_service()).get(incident_id)

    @v1.post("/releases", status_code=202, response_model=Accepted, tags=["releases"])
    async def release(body: ReleaseBody) -> Accepted:
        """Start the guarded re-release of a fixed release."""
        svc = await get_service()
        workflow_id = await svc.release(body.playbook, body.release, stages=body.stages,
                                        started_by=body.started_by)
        return Accepted(incident_id=workflow_id)

    app.include_router(v1)


def _command_route(
    get_service: ServiceGetter, signal_name: str
) -> Callable[..., Awaitable[CommandAccepted]]:
    async def command(incident_id: str, body: CommandBody | None = None) -> CommandAccepted:
        cmd = Command(by=body.by, reason=body.reason) if body else Command(by="api")
        await (await get_service()).signal(incident_id, signal_name, cmd)
        return CommandAccepted(incident_id=incident_id, command=signal_name)

    command.__name__ = f"command_{signal_name}"
    return command
