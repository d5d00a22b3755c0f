"""The HTTP API: a thin FastAPI adapter over ``IncidentService``.

Routes (JSON; every ``/v1`` route needs ``Authorization: Bearer <UNSHIP_API_TOKEN>`` when a token is set):

- ``POST /v1/incidents`` ``{playbook, release, severity?, reason?, started_by?}`` -> 202 ``{incident_id}``
- ``GET  /v1/incidents?limit=&cursor=`` -> ``{incidents: [...], next_cursor}``; ``GET /v1/incidents/{id}`` -> the
  incident's status; ``GET /v1/incidents/{id}/review`` (JSON, or Markdown with ``Accept: text/markdown``);
  ``GET /v1/incidents/{id}/audit?limit=&cursor=``
- ``POST /v1/incidents/{id}/decision`` ``{user, verdict, reason, gate_id?}`` -> 200 result, 403 refused, 409 when
  no decision is open (an ``Idempotency-Key`` header makes a retried click count once)
- ``POST /v1/incidents/{id}/abort|pause|resume|revert-now`` ``{by?, reason?}`` -> 202
- ``POST /v1/releases`` ``{playbook, release, stages?}`` -> 202; ``GET /v1/playbooks``
- ``GET /healthz`` (process alive), ``GET /readyz`` (Temporal reachable): no token needed

Without ``UNSHIP_API_TOKEN`` the API has no authentication, so it may only listen on a loopback address
(``check_bind_allowed``). Bodies over 1 MiB get 413; invalid input gets 422 naming the field, never a 500. Every
error is ``application/problem+json`` (RFC 9457, ``workers.web.problems``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from activities import metrics
from activities.contracts import AuditEvent
from playbooks.models import Severity
from workers.runtime.service import IncidentSummary, InvalidInput
from workers.runtime.settings import Settings
from workers.web.guards import ServiceGetter
from workers.web.problems import (
    API_PROBLEMS,
    ProblemError,
    decode_cursor,
    encode_cursor,
    problem_responses,
)
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
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page; null: last page")


class AuditPage(BaseModel):
    incident_id: str
    events: list[AuditEvent]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page; null: last page")


class Review(BaseModel):
    incident_id: str
    markdown: str
    tasks: list[dict[str, Any]]


# --- the app -------------------------------------------------------------------------------------------------


def mount_api(app: FastAPI, get_service: ServiceGetter, settings: Settings) -> None:
    """Add the ``/v1`` operator routes (incidents, decisions, commands, releases, playbooks) to ``app``."""
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    async def require_token(authorization: str | None = Header(default=None)) -> None:
        if token is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token):
            metrics.AUTH_FAILURES.labels(endpoint="api").inc()
            raise ProblemError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=problem_responses(*API_PROBLEMS))

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
    async def incidents(
        limit: int = Query(default=50, ge=1, le=1000, description="page size"),
        cursor: str | None = Query(default=None, max_length=4096,
                                   description="`next_cursor` of the previous page; omit for the newest"),
    ) -> IncidentList:
        """The newest incidents and re-releases, a page at a time (follow `next_cursor`)."""
        page = await (await get_service()).page(limit, decode_cursor(cursor))
        return IncidentList(incidents=page.incidents, next_cursor=encode_cursor(page.next_page_token))

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

    @v1.get("/incidents/{incident_id:path}/review", tags=["incidents"], response_model=Review, responses={
        200: {"content": {"text/markdown": {"schema": {"type": "string"}}},
              "description": "the review as JSON, or as Markdown with `Accept: text/markdown`"}})
    async def review(incident_id: str, accept: str | None = Header(default=None, max_length=1000)) -> Response:
        """The post-incident review (written when the incident closes): JSON, or Markdown when asked for."""
        document = await (await get_service()).review(incident_id)
        if _prefers_markdown(accept):
            return Response(document.markdown, media_type="text/markdown; charset=utf-8")
        return JSONResponse(Review(incident_id=document.incident_id, markdown=document.markdown,
                                   tasks=document.tasks).model_dump(mode="json"))

    @v1.get("/incidents/{incident_id:path}/audit", response_model=AuditPage, tags=["incidents"])
    async def audit(
        incident_id: str,
        limit: int = Query(default=100, ge=1, le=1000, description="page size"),
        cursor: str | None = Query(default=None, max_length=100, description="`next_cursor` of the previous page"),
    ) -> AuditPage:
        """The incident's audit trail as recorded in the incident store, oldest first, a page at a time."""
        after = _seq_cursor(cursor)
        events = await (await get_service()).audit(incident_id, after=after, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return AuditPage(incident_id=incident_id, events=events,
                         next_cursor=encode_cursor(str(events[-1].seq).encode()) if more and events else None)

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


def _prefers_markdown(accept: str | None) -> bool:
    """True when the client asks for Markdown (or plain text) before JSON."""
    for item in (accept or "").split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in ("text/markdown", "text/plain", "text/*"):
            return True
        if media in ("application/json", "application/*", "*/*"):
            return False
    return False


def _seq_cursor(cursor: str | None) -> int:
    token = decode_cursor(cursor)
    if token is None:
        return 0
    try:
        return max(0, int(token.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("cursor", "not a cursor this API handed out; pass `next_cursor` of the previous page "
                                     "unchanged") from None


def _command_route(
    get_service: ServiceGetter, signal_name: str
) -> Callable[..., Awaitable[CommandAccepted]]:
    async def command(incident_id: str, body: CommandBody | None = None) -> CommandAccepted:
        cmd = Command(by=body.by, reason=body.reason) if body else Command(by="api")
        await (await get_service()).signal(incident_id, signal_name, cmd)
        return CommandAccepted(incident_id=incident_id, command=signal_name)

    command.__name__ = f"command_{signal_name}"
    return command
