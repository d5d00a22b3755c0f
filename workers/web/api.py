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
- ``GET /v1/incidents/{id}/governance`` (read) -> the review's governance status; ``POST .../legal-hold``,
  ``.../legal-hold/release`` (operate), ``.../purge/approve``, ``.../reports/{regime}/submit`` (decide)
  ``{reason?, reference?}`` -> 200, 403 refused (audited on the review); the actor is the verified caller
- ``GET /v1/incidents/{id}/reports`` and ``.../reports/{regime}?format=markdown|html``;
  ``GET /v1/reviews/search?q=...`` (read) -> past reviews matching the words
- ``GET /v1/target-holds``; ``POST /v1/target-holds/release`` ``{target, reason, force?}`` (admin): the holds of
  flag/serving targets, and letting go of one whose incident ended without closing (audited)
- ``GET /healthz`` (process alive), ``GET /readyz`` (Temporal reachable): no token needed

Without ``UNSHIP_API_TOKEN`` the API has no authentication, so it may only listen on a loopback address
(``check_bind_allowed``). Bodies over 1 MiB get 413; invalid input gets 422 naming the field, never a 500. Every
error is ``application/problem+json`` (RFC 9457, ``workers.web.problems``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from activities import metrics
from activities.contracts import AuditEvent, ReportDraft, SearchHit
from playbooks.models import Severity
from workers.runtime.service import COMMANDS, IncidentService, IncidentSummary, InvalidInput, TargetHoldInfo
from workers.runtime.settings import Settings
from workers.web.auth import (
    Authenticator,
    AuthError,
    Identity,
    RefusalThrottle,
    Scope,
    authenticator,
    require,
    scrub,
)
from workers.web.guards import ServiceGetter
from workers.web.problems import (
    API_PROBLEMS,
    ProblemError,
    decode_cursor,
    encode_cursor,
    problem,
    problem_responses,
)
from workflows.messages import (
    CommandResult,
    DecisionRequest,
    DecisionResult,
    GovernanceRequest,
    GovernanceResult,
    IncidentStatus,
    OperatorCommand,
    ReviewStatus,
    Verdict,
)

log = logging.getLogger(__name__)



# --- request bodies ------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerBody(_Body):
    """Only a playbook *name*: the server runs the version it loaded, never one the client sends."""

    playbook: str = Field(min_length=1, max_length=63)
    release: str = Field(min_length=1, max_length=200)
    severity: Severity | None = None
    reason: str = Field(default="", max_length=2000)


class DecisionBody(_Body):
    verdict: Verdict
    reason: str = Field(default="", max_length=2000)
    gate_id: str | None = Field(default=None, max_length=200)
    user: str | None = Field(default=None, max_length=200, description="ignored when it is you; refused (403, "
                             "audited) when it names someone else: identity comes from your credentials")


class CommandBody(_Body):
    reason: str = Field(default="", max_length=2000)
    by: str | None = Field(default=None, max_length=200, description="refused (403, audited) unless it is you")


class ReleaseBody(_Body):
    playbook: str = Field(min_length=1, max_length=63)
    release: str = Field(min_length=1, max_length=200)
    stages: list[Annotated[float, Field(gt=0, le=100)]] | None = Field(default=None, min_length=1, max_length=20)


class ReleaseHoldBody(_Body):
    target: str = Field(min_length=1, max_length=500, description="the held target, as `target-holds` lists it")
    reason: str = Field(min_length=1, max_length=2000, description="why (on the audit trail)")
    force: bool = Field(default=False, description="release even though the holding incident still runs")


class TargetHolds(BaseModel):
    holds: list[TargetHoldInfo]


class Reloaded(BaseModel):
    changes: dict[str, dict[str, str | None]]
    playbooks: dict[str, str]


class GovernanceBody(_Body):
    """What a governance action says; who acts is the verified caller, never a name in the body."""

    reason: str = Field(default="", max_length=2000)


class ReportSubmitBody(GovernanceBody):
    reference: str = Field(default="", max_length=200, description="the authority's case or receipt number")


class Accepted(BaseModel):
    incident_id: str


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


GOVERNANCE_ROUTES = (
    ("legal-hold", "legal_hold", Scope.OPERATE),
    ("legal-hold/release", "release_legal_hold", Scope.OPERATE),
    ("purge/approve", "approve_purge", Scope.DECIDE),
)
"""The review's governance actions by path: (path under the incident, review update, scope). Report
submission (``reports/{regime}/submit``, decide) has its own route for the regime and reference."""

Recorder = Callable[[str, str, str, str, str], Awaitable[None]]
"""Puts a refused attempt on an audit trail: (incident, who, action, why, via)."""


# --- the app -------------------------------------------------------------------------------------------------


def mount_api(app: FastAPI, get_service: ServiceGetter, settings: Settings) -> None:
    """Add the ``/v1`` operator routes (incidents, decisions, commands, releases, playbooks) to ``app``."""

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        # Never the credential itself: the method, the path, the client and why.
        client = request.client.host if request.client else "?"
        log.warning("refused %s %s from %s (%s): %s", request.method, request.url.path, client, exc.status,
                    exc.detail)
        metrics.AUTH_FAILURES.labels(endpoint="api").inc()
        return problem(exc.status, exc.detail, instance=request.url.path, headers=exc.headers)

    app.state.refusal_throttle = RefusalThrottle()
    v1 = APIRouter(prefix="/v1", responses=problem_responses(*API_PROBLEMS))

    @v1.get("/me", tags=["identity"])
    async def me(request: Request) -> dict[str, Any]:
        """Who the server thinks you are: user id (None for shared credentials), credential kind, scopes, groups."""
        return (await authenticator(request).identify(request.headers.get("authorization"))).public()

    @v1.post("/playbooks/reload", response_model=Reloaded, tags=["playbooks"])
    async def reload(identity: Identity = Depends(require(Scope.ADMIN))) -> Reloaded:
        """Load the server's playbook library again (new incidents use it; running ones keep their snapshot).
        Audited with the old and new versions."""
        svc = await get_service()
        changes = await svc.reload_playbooks(by=identity.label)
        return Reloaded(changes={n: {"old": o, "new": v} for n, (o, v) in changes.items()},
                        playbooks={n: s.version for n, s in sorted(svc.playbooks.items())})

    @v1.get("/target-holds", response_model=TargetHolds, tags=["target holds"],
            dependencies=[Depends(require(Scope.ADMIN))])
    async def target_holds() -> TargetHolds:
        """Which incident holds each flag or serving target, and whether its workflow still runs (admin)."""
        return TargetHolds(holds=await (await get_service()).target_holds())

    @v1.post("/target-holds/release", response_model=TargetHoldInfo, tags=["target holds"])
    async def release_target_hold(body: ReleaseHoldBody,
                                  identity: Identity = Depends(require(Scope.ADMIN))) -> TargetHoldInfo:
        """Let go of a target hold whose incident ended without closing (admin, with a reason; audited). 409
        when the holding incident still runs, unless `force`."""
        return await (await get_service()).release_target_hold(body.target, by=identity.label, reason=body.reason,
                                                               force=body.force)

    @v1.get("/playbooks", tags=["playbooks"], dependencies=[Depends(require(Scope.READ))])
    async def playbooks() -> dict[str, list[dict[str, str]]]:
        """The playbooks this server can run, with the version (content hash) a new incident would use."""
        svc = await get_service()
        return {"playbooks": [
            {"name": name, "version": snap.version, "scenario": snap.playbook.scenario.value}
            for name, snap in sorted(svc.playbooks.items())
        ]}

    @v1.post("/incidents", status_code=202, response_model=Accepted, tags=["incidents"])
    async def trigger(body: TriggerBody, identity: Identity = Depends(require(Scope.TRIGGER))) -> Accepted:
        """Open an incident for a release (or join the running one: one incident per playbook and release)."""
        svc = await get_service()
        incident = await svc.trigger(body.playbook, body.release, started_by=identity.label,
                                     severity=body.severity, reason=body.reason)
        return Accepted(incident_id=incident)

    @v1.get("/incidents", response_model=IncidentList, tags=["incidents"], dependencies=[Depends(require(Scope.READ))])
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
        request: Request,
        idempotency_key: str | None = Header(default=None, max_length=200),
    ) -> DecisionResult:
        """Approve or reject at the open gate as yourself; 403 with the reason when refused (and audited)."""
        svc = await get_service()
        identity = await _person(request, svc, incident_id, Scope.DECIDE, body.verdict.value, body.user)
        decision = DecisionRequest(user=identity.user or "", verdict=body.verdict, reason=body.reason, via="api",
                                   gate_id=body.gate_id, groups=list(identity.groups))
        return await svc.decide(incident_id, decision, update_id=idempotency_key)

    for path in COMMANDS:
        v1.add_api_route(
            f"/incidents/{{incident_id:path}}/{path}",
            _command_route(get_service, path),
            methods=["POST"], status_code=200, response_model=CommandResult, tags=["incidents"],
            summary=f"{path} a running incident (operate scope; the playbook must give you the right)",
        )

    @v1.get("/incidents/{incident_id:path}/review", tags=["incidents"], response_model=Review,
            dependencies=[Depends(require(Scope.READ))], responses={
        200: {"content": {"text/markdown": {"schema": {"type": "string"}}},
              "description": "the review as JSON, or as Markdown with `Accept: text/markdown`"}})
    async def review(incident_id: str, accept: str | None = Header(default=None, max_length=1000)) -> Response:
        """The post-incident review (written when the incident closes): JSON, or Markdown when asked for."""
        document = await (await get_service()).review(incident_id)
        if _prefers_markdown(accept):
            return Response(document.markdown, media_type="text/markdown; charset=utf-8")
        return JSONResponse(Review(incident_id=document.incident_id, markdown=document.markdown,
                                   tasks=document.tasks).model_dump(mode="json"))

    @v1.get("/incidents/{incident_id:path}/audit", response_model=AuditPage, tags=["incidents"],
            dependencies=[Depends(require(Scope.READ))])
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

    @v1.get("/incidents/{incident_id:path}/governance", response_model=ReviewStatus, tags=["governance"],
            dependencies=[Depends(require(Scope.READ))])
    async def governance(incident_id: str) -> ReviewStatus:
        """The review's governance: provenance, retention and purge, legal hold, reports, tasks, lesson."""
        return await (await get_service()).governance(incident_id)

    for path, action, scope in GOVERNANCE_ROUTES:
        v1.add_api_route(f"/incidents/{{incident_id:path}}/{path}", _governance_route(get_service, action, scope),
                         methods=["POST"], response_model=GovernanceResult, tags=["governance"],
                         summary=f"{action.replace('_', ' ')} as yourself ({scope.value} scope and a role the "
                                 "playbook names; 403 with the reason when refused, audited)")

    @v1.post("/incidents/{incident_id:path}/reports/{regime}/submit", response_model=GovernanceResult,
             tags=["governance"])
    async def submit_report(incident_id: str, regime: str, body: ReportSubmitBody, request: Request,
                            idempotency_key: str | None = Header(default=None, max_length=200)) -> GovernanceResult:
        """Record that you (a person of the report's approver roles) approved and submitted it."""
        svc = await get_service()
        identity = await _person(request, svc, incident_id, Scope.DECIDE, "submit_report", None,
                                 record=svc.record_governance_refusal)
        return await svc.govern(incident_id, "submit_report", GovernanceRequest(
            user=identity.user or "", groups=list(identity.groups), reason=body.reason, via="api", regime=regime,
            reference=body.reference), update_id=idempotency_key)

    @v1.get("/incidents/{incident_id:path}/reports/{regime}", tags=["governance"], response_model=None,
            dependencies=[Depends(require(Scope.READ))], responses={
        200: {"content": {"text/markdown": {"schema": {"type": "string"}},
                          "text/html": {"schema": {"type": "string"}}},
              "description": "the draft as Markdown, or print-ready HTML with `format=html`"}})
    async def report(incident_id: str, regime: str,
                     format: str = Query(default="markdown", pattern="^(markdown|html)$")) -> Response:
        """One regulatory report draft as Markdown or print-ready HTML."""
        drafts = {d.regime.value: d for d in await (await get_service()).reports(incident_id)}
        draft = drafts.get(regime)
        if draft is None:
            raise ProblemError(404, f"no {regime!r} report for {incident_id}; drafted: {', '.join(drafts) or 'none'}")
        if format == "html":
            return Response(draft.html, media_type="text/html; charset=utf-8")
        return PlainTextResponse(draft.markdown, media_type="text/markdown; charset=utf-8")

    @v1.get("/incidents/{incident_id:path}/reports", response_model=list[ReportDraft], tags=["governance"],
            dependencies=[Depends(require(Scope.READ))])
    async def reports(incident_id: str) -> list[ReportDraft]:
        """The incident's regulatory report drafts."""
        return await (await get_service()).reports(incident_id)

    @v1.get("/reviews/search", response_model=list[SearchHit], tags=["governance"],
            dependencies=[Depends(require(Scope.READ))])
    async def search(q: str = Query(min_length=1, max_length=500),
                     limit: int = Query(default=20, ge=1, le=200)) -> list[SearchHit]:
        """Past reviews (and their tags) holding every word of ``q``, across playbooks and teams."""
        return await (await get_service()).search(q, limit)

    @v1.get("/incidents/{incident_id:path}", response_model=IncidentStatus, tags=["incidents"],
            dependencies=[Depends(require(Scope.READ))])
    async def incident(incident_id: str) -> IncidentStatus:
        """The live status: phase, stages, gate, decisions, evidence and the audit trail."""
        return await (await get_service()).get(incident_id)

    @v1.post("/releases", status_code=202, response_model=Accepted, tags=["releases"])
    async def release(body: ReleaseBody, identity: Identity = Depends(require(Scope.OPERATE))) -> Accepted:
        """Start the guarded re-release of a fixed release."""
        svc = await get_service()
        workflow_id = await svc.release(body.playbook, body.release, stages=body.stages,
                                        started_by=identity.label)
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


async def _person(request: Request, svc: IncidentService, incident_id: str, scope: Scope, action: str,
                  claimed: str | None, record: Recorder | None = None) -> Identity:
    """The verified person acting on ``incident_id`` with ``scope``; a refusal of a known caller (shared or
    alert credential, missing scope, a body naming someone else) is audited on the incident (through ``record``,
    by default the incident's own workflow), then raised. An unidentified caller (unknown, expired or forged
    credentials) is audited the same way, throttled per source (``RefusalThrottle``), with why but never what it
    presented."""
    auth: Authenticator = authenticator(request)
    authorization = request.headers.get("authorization")
    try:
        identity = await auth.identify(authorization)
    except AuthError as refused:
        source = request.client.host if request.client else "unknown address"
        throttle: RefusalThrottle = request.app.state.refusal_throttle
        count = throttle.admit(incident_id, source)
        if count is not None:
            note = f" (and {count - 1} more refused from {source} since the last one recorded)" if count > 1 else ""
            await (record or svc.record_refusal)(incident_id, f"unidentified caller from {source}", action,
                                                 scrub(refused.detail, authorization) + note, "api")
        raise
    try:
        auth.check(identity, scope)
        if claimed is not None and claimed != identity.user:
            raise AuthError(403, f"you are authenticated as {identity.user}; you cannot {action} as {claimed} "
                                 "(identity comes from your credentials, not the request body)")
    except AuthError as refused:
        await (record or svc.record_refusal)(incident_id, identity.label, action, refused.detail, "api")
        raise
    return identity


def _command_route(get_service: ServiceGetter, path: str) -> Callable[..., Awaitable[CommandResult]]:
    action = COMMANDS[path]

    async def command(incident_id: str, request: Request, body: CommandBody | None = None) -> CommandResult:
        svc = await get_service()
        identity = await _person(request, svc, incident_id, Scope.OPERATE, action.value, body.by if body else None)
        return await svc.operate(incident_id, OperatorCommand(
            action=action, user=identity.user or "", groups=list(identity.groups),
            reason=body.reason if body else "", via="api"))

    command.__name__ = f"command_{action.value}"
    return command


def _governance_route(
    get_service: ServiceGetter, action: str, scope: Scope
) -> Callable[..., Awaitable[GovernanceResult]]:
    async def govern(incident_id: str, request: Request, body: GovernanceBody | None = None,
                     idempotency_key: str | None = Header(default=None, max_length=200)) -> GovernanceResult:
        svc = await get_service()
        identity = await _person(request, svc, incident_id, scope, action, None,
                                 record=svc.record_governance_refusal)
        return await svc.govern(incident_id, action, GovernanceRequest(
            user=identity.user or "", groups=list(identity.groups), reason=body.reason if body else "", via="api"),
            update_id=idempotency_key)

    govern.__name__ = f"governance_{action}"
    return govern
