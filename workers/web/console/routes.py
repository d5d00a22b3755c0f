"""The console's pages, live streams and actions (mounted by ``create_app`` for ``unship up``, never for
``unship gateway``).

| route | what |
|---|---|
| ``GET /`` | incidents, open first, then recent; filters ``phase`` (``open`` or a phase) and ``playbook``; live |
| ``GET /incidents/{id}`` | one incident: stage bar, decision, charts, integrity, review, timeline; live |
| ``POST /incidents/{id}/act`` | approve, reject, revert-now, pause, resume, abort as the signed-in person; on a closed |
| | incident's review: legal-hold, release-legal-hold, approve-purge |
| ``GET /incidents/{id}/reports/{regime}`` | a regulatory report draft, print-ready HTML |
| ``GET /playbooks/{name}`` | a playbook's text (``?version=`` the exact version an incident ran) |
| ``GET /rehearsals``, ``/rehearsals/...`` | tabletop reports, scheduled rehearsals and their runs |
| ``GET|POST /signin``, ``POST /signout`` | sign-in with the API's identities |
| ``GET /stream``, ``GET /incidents/{id}/stream`` | server-sent events for the live pages |

Every page renders on the server and reads without JavaScript; htmx (vendored) adds the live updates and
in-place actions. Forms carry a CSRF token; unsafe requests from another origin are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from temporalio.service import RPCError

from activities.contracts import IncidentRecord
from playbooks.loader import PlaybookError, load_playbook_text
from playbooks.models import PlaybookSnapshot
from playbooks.rendering import incident_link
from tabletop.schedule import list_schedules
from workers.runtime.service import (
    ADMIN_TRAIL_PLAYBOOK,
    COMMANDS,
    IncidentClosed,
    IncidentNotFound,
    IncidentService,
    Refused,
    ServiceError,
)
from workers.runtime.settings import Settings
from workers.web.auth import Authenticator
from workers.web.console import views
from workers.web.console.identity import (
    ACTION_SCOPES,
    Person,
    Session,
    Sessions,
    SignInRefused,
    reading_needs_sign_in,
    same_origin,
    sign_in,
)
from workers.web.console.live import sse, watch
from workers.web.console.rehearsals import RehearsalRun, Report, find_reports, read_report, rehearsal_runs
from workers.web.guards import ServiceGetter
from workflows.messages import DecisionRequest, GovernanceRequest, IncidentStatus, OperatorCommand, Phase, Verdict
from workflows.review import REVIEW_SEQ_BASE

HERE = Path(__file__).resolve().parent
LIST_LIMIT = 200
STATUS_TTL = 1.0
"""Seconds a fetched status may serve other viewers (when the store has nothing newer): stage states change
without an audit event at most this late on screen."""
PHASE_FILTERS = ["open", *(p.value for p in Phase)]
ACTIONS = list(ACTION_SCOPES)
GOVERNANCE_ACTIONS = {"legal-hold": "legal_hold", "release-legal-hold": "release_legal_hold",
                      "approve-purge": "approve_purge"}
"""Console actions on the review, by the review update they are (the review checks the playbook's roles)."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class _Problem(Exception):
    """Answer with an error page (or, for htmx and streams, a short text) saying what is wrong."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class _SignInNeeded(Exception):
    pass


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(timeline=views.timeline_html, ago=views.ago, until=views.until, iso=views.iso, clock=views.clock, tone=views.tone,
                       num=views._num, pct=lambda v: f"{v:g}%", quote=lambda v: quote(str(v), safe=":@+="))
    return env


@dataclass
class _Incident:
    """Everything the incident page shows."""

    status: IncidentStatus
    snapshot: PlaybookSnapshot | None
    timeline: list[Any]
    review_html: str | None
    review_tasks: list[dict[str, Any]]
    temporal_url: str | None
    reports: list[str] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.timeline[-1].seq if self.timeline else 0


class Console:
    def __init__(self, get_service: ServiceGetter, settings: Settings, stopping: asyncio.Event,
                 auth: Authenticator | None = None) -> None:
        self.get_service = get_service
        self.settings = settings
        self.auth = auth or Authenticator(settings)
        self.stopping = stopping
        self.sessions = Sessions(settings)
        self.templates = _environment()
        self.status_ttl = STATUS_TTL
        self._statuses: dict[str, tuple[float, IncidentStatus]] = {}

    # --- rendering -------------------------------------------------------------------------------------------

    def render(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(**context)

    def page(self, request: Request, session: Session, name: str, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        response = HTMLResponse(status_code=status_code, headers=_SECURITY_HEADERS)
        flash = self.sessions.pop_flash(request, response)
        values: dict[str, Any] = {"request_path": request.url.path, "person": session.person, "csrf": session.csrf,
                                  "needs_sign_in": reading_needs_sign_in(self.auth),
                                  "console_url": self.settings.console_url}
        body = self.render(name, **(values | context), flash=flash)
        response.body = response.render(body)
        response.headers["content-length"] = str(len(response.body))
        session.keep(response)
        return response

    def reader(self, request: Request) -> Session:
        """The session of a request that reads; sign-in first when the API wants a token to read."""
        session = self.sessions.read(request)
        if session.person is None and reading_needs_sign_in(self.auth):
            raise _SignInNeeded()
        return session

    async def service(self) -> IncidentService:
        try:
            return await self.get_service()
        except ServiceError as exc:
            raise _Problem(503, "Temporal is not answering", str(exc)) from exc

    # --- data ------------------------------------------------------------------------------------------------

    async def status(self, svc: IncidentService, incident_id: str) -> IncidentStatus:
        """The incident's live status, shared by every page and stream that asks within ``status_ttl`` seconds
        as long as the store has no newer event: many people watching one incident cost one query per change."""
        cached = self._statuses.get(incident_id)
        if cached is not None and time.monotonic() - cached[0] < self.status_ttl:
            newest = cached[1].audit[-1].seq if cached[1].audit else 0
            if svc.store is None or not [e for e in await svc.store.events(incident_id, after=newest)
                                         if e.seq < REVIEW_SEQ_BASE]:
                return cached[1]
        status = await svc.get(incident_id)
        if len(self._statuses) >= 256:
            self._statuses.clear()
        self._statuses[incident_id] = (time.monotonic(), status)
        return status

    async def rows(self, phase: str | None, playbook: str | None) -> list[IncidentRecord]:
        svc = await self.service()
        if svc.store is not None:
            stored = await svc.store.incidents(LIST_LIMIT, phase=phase, playbook=playbook, open_first=True)
            return [r for r in stored if r.playbook != ADMIN_TRAIL_PLAYBOOK]  # reload/hold trails: not incidents
        rows = []
        for summary in await svc.list(LIST_LIMIT):  # no store: what Temporal's visibility knows
            record_phase = summary.phase or ("closed" if summary.status != "running" else "confirming")
            if (phase == "open" and record_phase == "closed") or (phase not in (None, "open")
                                                                  and record_phase != phase):
                continue
            if playbook and summary.playbook != playbook:
                continue
            rows.append(IncidentRecord(incident_id=summary.incident_id, playbook=summary.playbook, playbook_hash="",
                                       release=summary.release, phase=record_phase, outcome=summary.outcome,
                                       started_at=summary.started_at or datetime.now(UTC),
                                       updated_at=summary.closed_at or summary.started_at or datetime.now(UTC)))
        return sorted(rows, key=lambda r: (r.phase == "closed", -r.updated_at.timestamp()))

    async def incident(self, incident_id: str, *, with_run: bool = True) -> _Incident:
        svc = await self.service()
        ui = self.settings.resolved_temporal_ui_url if with_run else None
        store = svc.store
        # The status, the review's events (only the store has them) and the run id, at once.
        answers = await asyncio.gather(
            self.status(svc, incident_id), svc.run_id(incident_id) if ui else _none(),
            store.events(incident_id, after=REVIEW_SEQ_BASE - 1) if store else _none(), return_exceptions=True)
        status, run, stored = answers
        if isinstance(status, IncidentNotFound):
            raise _Problem(404, "No such incident", str(status))
        if isinstance(status, ServiceError):
            raise _Problem(503, "The incident is not answering", str(status))
        if isinstance(status, BaseException):
            raise status
        if isinstance(stored, BaseException):
            raise stored
        snapshot = await svc.snapshot_of(incident_id, status.playbook, status.playbook_version)
        review = await store.review(incident_id) if store and status.review_workflow_id else None
        drafts = await store.reports(incident_id) if store and status.review_workflow_id else []
        temporal_url = None
        if ui:
            run = run if isinstance(run, str) else None
            namespace = quote(self.settings.temporal_namespace, safe="")
            temporal_url = (f"{ui}/namespaces/{namespace}/workflows/{quote(incident_id, safe='')}"
                            + (f"/{run}/history" if run else ""))
        return _Incident(status=status, snapshot=snapshot, timeline=views.merge_timeline(status.audit, stored or []),
                         review_html=views.review_html(review), review_tasks=review.tasks if review else [],
                         temporal_url=temporal_url, reports=[d.regime.value for d in drafts])

    def status_context(self, data: _Incident, person: Person | None, csrf: str) -> dict[str, Any]:
        s = data.status
        return {
            "s": s, "snapshot": data.snapshot, "stages": views.stages(s, data.snapshot),
            "charts": views.charts(s, data.snapshot), "deadlines": views.deadlines(s, data.snapshot),
            "review_html": data.review_html, "review_tasks": data.review_tasks, "reports": data.reports,
            "person": person, "csrf": csrf,
            "nonce": uuid.uuid4().hex, "open": s.phase is not Phase.CLOSED, "now": datetime.now(UTC),
            "link": incident_link(self.settings.console_url, s.incident_id), "temporal_url": data.temporal_url,
            "last_seq": data.last_seq, "actions_key": _actions_key(s),
        }

    # --- actions ---------------------------------------------------------------------------------------------

    async def act(self, incident_id: str, person: Person, action: str, reason: str, gate_id: str | None,
                  nonce: str) -> str:
        """Do ``action`` as ``person`` through the incident service (the API's path); the result as a sentence.

        Raises ``Refused`` with the workflow's reason when it says no.
        """
        svc = await self.service()
        if action in GOVERNANCE_ACTIONS:
            governed = await svc.govern(incident_id, GOVERNANCE_ACTIONS[action], GovernanceRequest(
                user=person.user, groups=list(person.groups), reason=reason, via="console"))
            return governed.message
        if action in ("approve", "reject"):
            request = DecisionRequest(user=person.user, verdict=Verdict(action), reason=reason, via="console",
                                      gate_id=gate_id or None, groups=list(person.groups))
            key = f"console:{nonce}:{person.user}:{action}:{gate_id}" if nonce else None
            result = await svc.decide(incident_id, request, update_id=key)
            return f"{result.message} ({result.approvals}/{result.quorum} approvals on {result.gate_id})"
        done = await svc.operate(incident_id, OperatorCommand(action=COMMANDS[action], user=person.user,
                                                              groups=list(person.groups), reason=reason,
                                                              via="console"))
        return done.message

    # --- the routes ------------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)

        @r.get("/", response_class=HTMLResponse)
        async def incidents(request: Request, phase: str = "", playbook: str = "") -> Response:
            session = self.reader(request)
            phase_filter, playbook_filter = _filters(phase, playbook)
            svc = await self.service()
            rows = await self.rows(phase_filter, playbook_filter)
            query = urlencode({k: v for k, v in (("phase", phase), ("playbook", playbook)) if v})
            return self.page(request, session, "incidents.html", rows=rows, phase=phase, playbook=playbook,
                             phases=PHASE_FILTERS, playbooks=sorted(svc.playbooks), now=datetime.now(UTC),
                             query=query)

        @r.get("/stream")
        async def incidents_stream(request: Request, phase: str = "", playbook: str = "") -> Response:
            self.reader(request)
            phase_filter, playbook_filter = _filters(phase, playbook)
            seen: list[object] = []

            async def step() -> list[str]:
                rows = await self.rows(phase_filter, playbook_filter)
                key = [(r.incident_id, r.updated_at, r.phase) for r in rows]
                if seen and seen[0] == key:
                    return []
                first = not seen
                seen[:] = [key]
                if first:
                    return []
                return [sse("incidents", self.render("_rows.html", rows=rows, now=datetime.now(UTC)))]

            return _stream(watch(request, self.stopping, step))

        @r.get("/incidents/{incident_id:path}/stream")
        async def incident_stream(request: Request, incident_id: str, after: int = 0, k: str = "") -> Response:
            session = self.reader(request)
            with contextlib.suppress(ValueError):
                after = max(after, int(request.headers.get("last-event-id", "0")))
            last = [after]
            shown_actions = [k[:300]]
            svc = await self.service()

            async def step() -> list[str]:
                if svc.store is not None:
                    new = await svc.store.events(incident_id, after=last[0])
                else:
                    with contextlib.suppress(ServiceError):
                        new = [e for e in (await svc.get(incident_id)).audit if e.seq > last[0]]
                if not new:
                    return []
                last[0] = new[-1].seq
                events = [sse("timeline", self.render("_events.html", events=new), event_id=str(last[0]))]
                try:
                    data = await self.incident(incident_id, with_run=False)
                except _Problem:
                    return events
                context = self.status_context(data, session.person, session.csrf)
                events.append(sse("status", self.render("_status.html", **context)))
                events.append(sse("details", self.render("_details.html", **context)))
                if context["actions_key"] != shown_actions[0]:  # what one can do changed: new buttons
                    shown_actions[0] = context["actions_key"]
                    events.append(sse("actions", self.render("_actions.html", **context)))
                return events

            return _stream(watch(request, self.stopping, step))

        @r.post("/incidents/{incident_id:path}/act")
        async def act(request: Request, incident_id: str) -> Response:
            session = self.sessions.read(request)
            form = await _form(request)
            htmx = request.headers.get("hx-request") == "true"
            back = "/incidents/" + quote(incident_id, safe=":@+=")
            if not same_origin(request) or not session.csrf_ok(form.get("csrf")):
                return self._answer(htmx, back, 403, "bad", "refused: the form is stale or came from another site; "
                                    "reload the page and try again")
            person = session.person
            if person is None:
                return self._answer(htmx, back, 401, "bad", "sign in to act on incidents")
            action = form.get("action", "")
            if action not in ACTION_SCOPES:
                return self._answer(htmx, back, 422, "bad", f"action: {action[:40]!r} is not one of "
                                    f"{', '.join(ACTIONS)}")
            if not person.may(ACTION_SCOPES[action]):
                return self._answer(htmx, back, 403, "bad", f"refused: {person.user} may not "
                                    f"{ACTION_SCOPES[action]} (needs the {ACTION_SCOPES[action]!r} scope)")
            reason = form.get("reason", "").strip()[:2000]
            try:
                message = await self.act(incident_id, person, action, reason, form.get("gate_id"),
                                         form.get("nonce", "")[:64])
            except IncidentNotFound as exc:
                return self._answer(htmx, back, 404, "bad", str(exc))
            except IncidentClosed as exc:
                return self._answer(htmx, back, 409, "bad", str(exc))
            except Refused as exc:
                return self._answer(htmx, back, 403, "bad", f"refused: {exc.reason}")
            except ServiceError as exc:
                return self._answer(htmx, back, 503, "bad", str(exc))
            return self._answer(htmx, back, 200, "ok", message)

        @r.get("/incidents/{incident_id:path}/reports/{regime}", response_class=HTMLResponse)
        async def regulatory_report(request: Request, incident_id: str, regime: str) -> Response:
            """A regulatory report draft, print-ready (the page's own A4 CSS; print it to PDF)."""
            self.reader(request)
            svc = await self.service()
            drafts = {d.regime.value: d for d in await svc.reports(incident_id)} if svc.store else {}
            draft = drafts.get(regime)
            if draft is None:
                raise _Problem(404, "No such report", f"no {regime!r} report for {incident_id}; drafted: "
                               f"{', '.join(drafts) or 'none'}")
            return HTMLResponse(draft.html)

        @r.get("/incidents/{incident_id:path}", response_class=HTMLResponse)
        async def incident(request: Request, incident_id: str) -> Response:
            session = self.reader(request)
            data = await self.incident(incident_id)
            context = self.status_context(data, session.person, session.csrf)
            return self.page(request, session, "incident.html", timeline=data.timeline, **context)

        @r.get("/playbooks/{name}", response_class=HTMLResponse)
        async def playbook(request: Request, name: str, version: str = "", incident: str = "") -> Response:
            session = self.reader(request)
            svc = await self.service()
            loaded = svc.playbooks.get(name)
            snapshot = loaded
            if version and (loaded is None or loaded.version != version):
                snapshot = await svc.snapshot_of(incident, name, version) if incident else None
            if snapshot is None:
                raise _Problem(404, "No such playbook version",
                               f"playbook {name!r}" + (f" version {version!r}" if version else "")
                               + " is not loaded here" + (" and no incident names it" if version else ""))
            text, kind = _playbook_text(snapshot)
            return self.page(request, session, "playbook.html", snap=snapshot, text=text, text_kind=kind,
                             current=loaded is not None and loaded.version == snapshot.version)

        @r.get("/rehearsals", response_class=HTMLResponse)
        async def rehearsals(request: Request) -> Response:
            session = self.reader(request)
            svc = await self.service()
            reports = await asyncio.to_thread(find_reports, self.settings.resolved_reports_dir)
            try:
                schedules = await list_schedules(svc.client)
                runs = await rehearsal_runs(svc.client)
                problem = None
            except RPCError as exc:
                schedules, runs, problem = [], [], f"Temporal did not list the rehearsals: {exc.message}"
            return self.page(request, session, "rehearsals.html", reports=reports, schedules=schedules, runs=runs,
                             problem=problem, reports_dir=str(self.settings.resolved_reports_dir))

        @r.get("/rehearsals/reports/{name}", response_class=HTMLResponse)
        async def report(request: Request, name: str) -> Response:
            session = self.reader(request)
            found: Report | None = await asyncio.to_thread(read_report, self.settings.resolved_reports_dir, name)
            if found is None:
                raise _Problem(404, "No such report", f"no tabletop report {name!r} in "
                               f"{self.settings.resolved_reports_dir}")
            return self.page(request, session, "report.html", report=found,
                             html=views.render_markdown(found.markdown))

        @r.get("/rehearsals/reports/{name}/{chart}.svg")
        async def report_chart(request: Request, name: str, chart: str) -> Response:
            self.reader(request)
            found = await asyncio.to_thread(read_report, self.settings.resolved_reports_dir, name)
            svg = found.charts.get(chart) if found else None
            if svg is None:
                raise _Problem(404, "No such chart", f"report {name!r} has no chart {chart!r}")
            return Response(svg, media_type="image/svg+xml",
                            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                     "X-Content-Type-Options": "nosniff"})

        @r.get("/rehearsals/runs/{workflow_id:path}", response_class=HTMLResponse)
        async def rehearsal_run(request: Request, workflow_id: str) -> Response:
            session = self.reader(request)
            svc = await self.service()
            runs: list[RehearsalRun] = await rehearsal_runs(svc.client, workflow_id=workflow_id)
            if not runs:
                raise _Problem(404, "No such rehearsal", f"no rehearsal run {workflow_id!r}")
            return self.page(request, session, "rehearsal_run.html", run=runs[0])

        @r.get("/signin", response_class=HTMLResponse)
        async def signin_form(request: Request, next: str = "/") -> Response:
            session = self.sessions.read(request)
            return self.page(request, session, "signin.html", next=_local(next), error=None, user="",
                             token_needed=True)

        @r.post("/signin", response_class=HTMLResponse)
        async def signin(request: Request) -> Response:
            session = self.sessions.read(request)
            form = await _form(request)
            target = _local(form.get("next", "/"))
            if not same_origin(request) or not session.csrf_ok(form.get("csrf")):
                return self.page(request, session, "signin.html", status_code=403, next=target, user="",
                                 error="the form is stale or came from another site; try again",
                                 token_needed=True)
            try:
                person = await sign_in(self.auth, form.get("token", ""))
            except SignInRefused as exc:
                return self.page(request, session, "signin.html", status_code=401, next=target,
                                 user=form.get("user", "")[:200], error=str(exc),
                                 token_needed=True)
            response = RedirectResponse(target, status_code=303)
            self.sessions.write(response, uuid.uuid4().hex, person)  # a new session id on every sign-in
            return response

        @r.post("/signout")
        async def signout(request: Request) -> Response:
            session = self.sessions.read(request)
            form = await _form(request)
            if not same_origin(request) or not session.csrf_ok(form.get("csrf")):
                raise _Problem(403, "Refused", "the form is stale or came from another site; reload and try again")
            response = RedirectResponse("/", status_code=303)
            self.sessions.write(response, uuid.uuid4().hex, None)
            return response

        return r

    def _answer(self, htmx: bool, back: str, status: int, kind: str, text: str) -> Response:
        """The result of an action: for htmx a fragment swapped in place (shown whatever the status), else a
        redirect back to the incident page carrying the message."""
        if htmx:
            return HTMLResponse(self.render("_flash.html", flash=(kind, text)), status_code=200,
                                headers={**_SECURITY_HEADERS, "X-Unship-Status": str(status)})
        response = RedirectResponse(back, status_code=303)
        self.sessions.set_flash(response, kind, text)
        return response

    def problem_response(self, request: Request, problem: _Problem) -> Response:
        wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.endswith("/stream")
        if not wants_html:
            return PlainTextResponse(f"{problem.title}: {problem.detail}", status_code=problem.status)
        session = self.sessions.read(request)
        return self.page(request, session, "error.html", status_code=problem.status, title=problem.title,
                         detail=problem.detail)


async def _none() -> None:
    return None


def _actions_key(status: IncidentStatus) -> str:
    """What the action form depends on: it is re-sent to open pages only when this changes."""
    return f"{status.gate.gate_id if status.gate else '-'}.{status.phase is Phase.CLOSED}.{status.paused}"


def _filters(phase: str, playbook: str) -> tuple[str | None, str | None]:
    if phase and phase not in PHASE_FILTERS:
        raise _Problem(422, "Unknown phase", f"phase: {phase[:40]!r} is not one of {', '.join(PHASE_FILTERS)}")
    if len(playbook) > 63:
        raise _Problem(422, "Playbook name too long", "playbook: at most 63 characters")
    return phase or None, playbook or None


def _local(target: str) -> str:
    """Only a path on this server may be a post-sign-in target (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2000:
        return "/"
    return target


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each field)."""
    body = await request.body()
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Problem(400, "Unreadable form", f"the form could not be read: {exc}") from exc
    return {key: values[0] for key, values in fields.items() if values}


def _stream(events: Any) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _playbook_text(snapshot: PlaybookSnapshot) -> tuple[str, str]:
    """The playbook's YAML as written when its file still holds exactly this version, else its canonical JSON."""
    source = Path(snapshot.source) if snapshot.source else None
    if source is not None and source.suffix in (".yaml", ".yml") and source.is_file():
        text = source.read_text(encoding="utf-8", errors="replace")
        with contextlib.suppress(PlaybookError):
            if load_playbook_text(text, str(source)).content_hash == snapshot.content_hash:
                return text, "yaml"
    return snapshot.playbook.model_dump_json(indent=2), "json"


def mount_console(app: FastAPI, get_service: ServiceGetter, settings: Settings) -> None:
    """Serve the console at ``/`` (and its assets at ``/static``) on ``app``."""
    stopping: asyncio.Event = app.state.stopping
    console = Console(get_service, settings, stopping, getattr(app.state, "authenticator", None))
    app.state.console = console
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(console.router())

    @app.exception_handler(_Problem)
    async def _problem(request: Request, exc: _Problem) -> Response:
        return console.problem_response(request, exc)

    @app.exception_handler(_SignInNeeded)
    async def _sign_in(request: Request, _: _SignInNeeded) -> Response:
        if request.url.path.endswith("/stream") or request.headers.get("hx-request") == "true":
            return PlainTextResponse("sign in first", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/signin?" + urlencode({"next": target}), status_code=303)
