"""Incident commands: trigger, status, approve / reject, revert-now, abort, pause, resume, release, whoami, login.

Every one goes through the HTTP API with your own token (``workers.cli.api``): the server knows who you are,
checks your scopes and the playbook's roles, and runs its own playbook library. There is no ``--as``.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from playbooks.models import Severity
from playbooks.rendering import incident_link
from workers.cli.api import Api, ApiError, save_token
from workers.cli.common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    JsonFlag,
    app,
    exit_code_for,
    fail,
    load_settings,
    out,
    print_json,
)
from workers.runtime.service import IncidentSummary
from workflows.messages import IncidentStatus

T = TypeVar("T")

Reason = Annotated[str, typer.Option("--reason", help="Why (goes on the audit trail).")]
IncidentArg = Annotated[str, typer.Argument(help="Incident id, e.g. unship:chat-assistant:v2.3.")]


def api_call(fn: Callable[[Api], T]) -> T:
    """Run ``fn`` against the API and turn a refusal or failure into one line and an exit code."""
    api = Api(load_settings())
    try:
        return fn(api)
    except ApiError as exc:
        code, message = exit_code_for(exc) or (EXIT_REFUSED, str(exc))
        fail(code, message)


@app.command()
def trigger(
    playbook: Annotated[str, typer.Argument(help="Name of a playbook the server loaded (see `unship playbooks`).")],
    release: Annotated[str, typer.Option("--release", "-r", help="The suspect release.")],
    severity: Annotated[Severity | None, typer.Option(help="Severity (critical may break glass).")] = None,
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Open an incident for a release (joins the running one if there is one). The server runs its own
    version of the playbook: only the name is sent."""
    body: dict[str, Any] = {"playbook": playbook, "release": release, "reason": reason}
    if severity is not None:
        body["severity"] = severity.value
    accepted = api_call(lambda api: api.post("/v1/incidents", body))
    if as_json:
        print_json(accepted)
        return
    incident = accepted["incident_id"]
    out.print(f"incident [bold]{incident}[/]  (follow it with: unship status {incident})")


@app.command()
def release(
    playbook: Annotated[str, typer.Argument(help="Name of the playbook whose signals guard the release.")],
    release_name: Annotated[str, typer.Option("--release", "-r", help="The fixed release to roll forward.")],
    stages: Annotated[str | None, typer.Option(help="Cumulative percents, e.g. 10,50,100.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-release a fixed candidate stage by stage, guarded by the playbook's signals."""
    percents = None
    if stages:
        try:
            percents = [float(p) for p in stages.split(",") if p.strip()]
        except ValueError:
            fail(EXIT_USAGE, f"--stages: {stages!r} is not a list of percents like 10,50,100")
        if not percents or any(not 0 < p <= 100 for p in percents):
            fail(EXIT_USAGE, "--stages: every percent must be above 0 and at most 100")
    body: dict[str, Any] = {"playbook": playbook, "release": release_name}
    if percents:
        body["stages"] = percents
    accepted = api_call(lambda api: api.post("/v1/releases", body))
    if as_json:
        print_json(accepted)
        return
    workflow_id = accepted["incident_id"]
    out.print(f"re-release [bold]{workflow_id}[/] started  (follow it with: unship status {workflow_id})")


@app.command()
def status(
    incident: Annotated[str | None, typer.Argument(help="Incident id; without it, list incidents.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many incidents to list.")] = 20,
    cursor: Annotated[str | None, typer.Option(
        "--cursor", help="List the page after this one: `next_cursor` of the previous `status --json`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of tables: one incident's "
                                                         "status, or {incidents, next_cursor}.")] = False,
) -> None:
    """List incidents, or show one incident's phase, stages, decisions and audit timeline."""
    if incident:
        one = IncidentStatus.model_validate(api_call(lambda api: api.get(f"/v1/incidents/{incident}")))
        if as_json:
            print_json(one.model_dump(mode="json"))
        else:
            _print_incident(one, incident_link(load_settings().console_url, one.incident_id))
        return
    query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
    data = api_call(lambda api: api.get("/v1/incidents", params=query))
    listing = [IncidentSummary.model_validate(i) for i in data["incidents"]]
    if as_json:
        print_json({"incidents": [r.model_dump(mode="json") for r in listing], "next_cursor": data.get("next_cursor")})
    else:
        _print_list(listing)
        if data.get("next_cursor"):
            out.print(f"more: unship status --cursor {data['next_cursor']}")
        if listing:
            out.print(f"console: {load_settings().console_url}/")


@app.command()
def whoami(as_json: JsonFlag = False) -> None:
    """Who the server thinks you are: your id, the credential, your scopes and groups."""
    me = api_call(lambda api: api.get("/v1/me"))
    if as_json:
        print_json(me)
        return
    who = me.get("user") or f"({me.get('credential')}: no person)"
    out.print(f"[bold]{who}[/]" + (f" ({me['name']})" if me.get("name") else ""))
    out.print(f"credential: {me.get('credential')}; scopes: {', '.join(me.get('scopes') or []) or 'none'}; "
              f"groups: {', '.join(me.get('groups') or []) or 'none'}")


@app.command()
def login(
    token: Annotated[str | None, typer.Option("--token", help="The token (default: asked for, not echoed).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store your personal (or OIDC) token for later commands (0600), after checking it with the server."""
    presented = token or getpass.getpass("unship token: ")
    if not presented.strip():
        fail(EXIT_USAGE, "no token given")
    settings = load_settings()
    try:
        me = Api(settings, token=presented.strip()).get("/v1/me")
    except ApiError as exc:
        code, message = exit_code_for(exc) or (EXIT_REFUSED, str(exc))
        fail(code, f"the server did not accept this token: {message}")
    if not me.get("user"):
        fail(EXIT_REFUSED, f"this is a {me.get('credential')} credential, not a person's token; "
                           "ask an admin for yours (`unship users add YOUR_ID`)")
    path = save_token(presented)
    if as_json:
        print_json({**me, "token_file": str(path)})
        return
    out.print(f"logged in as [bold]{me['user']}[/] (scopes: {', '.join(me.get('scopes') or [])}); token stored in "
              f"{path} (0600)")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_list(incidents: list[Any]) -> None:
    if not incidents:
        out.print("no incidents yet")
        return
    table = Table("Incident", "Kind", "Status", "Phase", "Outcome", "Started (UTC)", "Closed (UTC)")
    table.columns[0].no_wrap = True
    for i in incidents:
        table.add_row(i.incident_id, i.kind, i.status, i.phase or "-", i.outcome or "-", _when(i.started_at),
                      _when(i.closed_at))
    out.print(table)


def _users_on_previous(s: Any) -> str:
    """The share as last read from the targets (what users get), and what the incident intends when they differ."""
    if not s.flag_read:
        return f"{s.previous_percent:g}% intended (not read back yet)"
    read = [t.previous_percent for t in s.flag_read]
    shown = " / ".join("unreadable" if v is None else f"{v:g}%" for v in read)
    text = f"{shown} as read at {_when(s.flag_read_at)}"
    if any(v is None or abs(v - s.previous_percent) > 0.01 for v in read):
        text += f" [bold red](intended {s.previous_percent:g}%)[/]"
    return text


def _print_incident(s: Any, link: str) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_row("Incident", f"[bold]{s.incident_id}[/]")
    head.add_row("Console", link)
    head.add_row("Playbook", f"{s.playbook} (version {s.playbook_version}, {s.scenario})")
    head.add_row("Release", s.release)
    if len(s.provenance) > 1:
        head.add_row("Served", ", ".join(f"{k}={v}" for k, v in s.provenance.items() if k != "release"))
    phase = s.phase.value + (" (paused)" if s.paused else "")
    head.add_row("Phase", phase + (f" -> {s.outcome.value}" if s.outcome else ""))
    head.add_row("Users on previous", _users_on_previous(s))
    for served in s.served:
        what = f"serves {escape(served.release)}" if served.release else "[yellow]cannot tell which release it serves[/]"
        head.add_row("Served candidate", f"{escape(served.target)} {what}: {escape(served.evidence)}")
    for label, value in (("Started", s.started_at), ("Detected", s.detected_at), ("Decided", s.decided_at),
                         ("First revert", s.first_revert_at), ("Full revert", s.full_revert_at),
                         ("Closed", s.closed_at)):
        if value:
            head.add_row(label, _when(value))
    if s.gate:
        g = s.gate
        head.add_row("Open decision", f"{g.gate_id} ({g.purpose}): {len(g.approvals)}/{g.quorum} approvals; "
                                      f"roles {', '.join(g.roles)}" + (" [escalated]" if g.escalated else ""))
        if g.evidence:
            head.add_row("Evidence", escape(g.evidence))
    out.print(head)
    if s.stages:
        stages = Table("Stage", "Percent", "Status", "Applied (UTC)", title="Stages")
        for st in s.stages:
            stages.add_row(str(st.index + 1), f"{st.percent:g}%", st.status, _when(st.applied_at))
        out.print(stages)
    if s.decisions:
        decisions = Table("At (UTC)", "User", "Verdict", "Via", "Reason", title="Decisions")
        for d in s.decisions:
            decisions.add_row(_when(d.at), d.user, d.verdict.value, d.via, d.reason)
        out.print(decisions)
    if s.confirmation:
        confirmation = Table("Signal", "Method", "Confirmed", "Evidence", title="Confirmation (sequential)")
        for e in s.confirmation:
            confirmation.add_row(e.signal, e.method, "[red]yes[/]" if e.confirmed else "no",
                                 e.text.removeprefix(f"{e.signal}: "))
        out.print(confirmation)
    if s.integrity:
        checks = Table("Check", "Passed", "Evidence", title="Integrity")
        for c in s.integrity:
            checks.add_row(c.name, "yes" if c.passed else "[red]no[/]", c.evidence)
        out.print(checks)
    audit = Table("#", "At (UTC)", "Kind", "Actor", "What", title="Audit timeline")
    for e in s.audit:
        audit.add_row(str(e.seq), _when(e.at), e.kind, e.actor, e.message)
    out.print(audit)


def _decide(incident: str, verdict: str, reason: str, gate: str | None, key: str | None, as_json: bool) -> None:
    body: dict[str, Any] = {"verdict": verdict, "reason": reason}
    if gate:
        body["gate_id"] = gate
    headers = {"Idempotency-Key": key} if key else None
    result = api_call(lambda api: api.post(f"/v1/incidents/{incident}/decision", body, headers))
    if as_json:
        print_json(result)
        return
    out.print(f"{result['message']} ({result['gate_id']}: {result['approvals']}/{result['quorum']} approvals)")


Gate = Annotated[str | None, typer.Option("--gate", help="The gate you are deciding on (refused if stale).")]
Key = Annotated[str | None, typer.Option("--idempotency-key", help="Retries with the same key count once.")]
WhyRequired = Annotated[str, typer.Option("--reason", help="Why (goes on the audit trail).")]


@app.command()
def approve(incident: IncidentArg, reason: WhyRequired, gate: Gate = None, key: Key = None,
               as_json: JsonFlag = False) -> None:
    """Approve the revert (or investigation outcome) at the incident's open decision, as yourself."""
    _decide(incident, "approve", reason, gate, key, as_json)


@app.command()
def reject(incident: IncidentArg, reason: WhyRequired, gate: Gate = None, key: Key = None,
              as_json: JsonFlag = False) -> None:
    """Reject: no revert happens, and the decision is on the record."""
    _decide(incident, "reject", reason, gate, key, as_json)


def _command(incident: str, path: str, reason: str, as_json: bool) -> None:
    result = api_call(lambda api: api.post(f"/v1/incidents/{incident}/{path}", {"reason": reason}))
    if as_json:
        print_json(result)
        return
    out.print(f"{result['message']} ({incident})")


@app.command("revert-now")
def revert_now(incident: IncidentArg, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Emergency: move every user back to the previous model at once (the playbook must give you the right)."""
    _command(incident, "revert-now", reason, as_json)


@app.command()
def abort(incident: IncidentArg, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Stop the incident where it is; stages already applied stay applied."""
    _command(incident, "abort", reason, as_json)


@app.command()
def pause(incident: IncidentArg, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Hold before the next stage until resumed."""
    _command(incident, "pause", reason, as_json)


@app.command()
def resume(incident: IncidentArg, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Continue a paused incident."""
    _command(incident, "resume", reason, as_json)
