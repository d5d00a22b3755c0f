"""Incident commands: trigger, status, approve / reject, revert-now, abort, pause, resume, release."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from playbooks.models import Severity
from playbooks.rendering import incident_link
from workers.cli.common import (
    EXIT_USAGE,
    app,
    fail,
    incident_service,
    load_settings,
    out,
    playbooks_or_fail,
    run,
    user_or_login,
)
from workflows.messages import Command, DecisionRequest, Verdict

AsUser = Annotated[str | None, typer.Option("--as", help="Who you are (default: your login name).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (goes on the audit trail).")]
IncidentArg = Annotated[str, typer.Argument(help="Incident id, e.g. unship:chat-assistant:v2.3.")]


@app.command()
def trigger(
    playbook: Annotated[str, typer.Argument(help="Name of the playbook to run.")],
    release: Annotated[str, typer.Option("--release", "-r", help="The suspect release.")],
    severity: Annotated[Severity | None, typer.Option(help="Severity (critical may break glass).")] = None,
    reason: Reason = "",
    as_user: AsUser = None,
) -> None:
    """Open an incident for a release (joins the running one if there is one)."""
    settings = load_settings()
    playbooks = playbooks_or_fail(settings)

    async def main() -> str:
        service = await incident_service(settings, playbooks)
        return await service.trigger(playbook, release, started_by=user_or_login(as_user), severity=severity,
                                     reason=reason)

    incident = run(main)
    out.print(f"incident [bold]{incident}[/]  (follow it with: unship status {incident})")


@app.command()
def release(
    playbook: Annotated[str, typer.Argument(help="Name of the playbook whose signals guard the release.")],
    release_name: Annotated[str, typer.Option("--release", "-r", help="The fixed release to roll forward.")],
    stages: Annotated[str | None, typer.Option(help="Cumulative percents, e.g. 10,50,100.")] = None,
    as_user: AsUser = None,
) -> None:
    """Re-release a fixed candidate stage by stage, guarded by the playbook's signals."""
    settings = load_settings()
    percents = None
    if stages:
        try:
            percents = [float(p) for p in stages.split(",") if p.strip()]
        except ValueError:
            fail(EXIT_USAGE, f"--stages: {stages!r} is not a list of percents like 10,50,100")
        if not percents or any(not 0 < p <= 100 for p in percents):
            fail(EXIT_USAGE, "--stages: every percent must be above 0 and at most 100")

    playbooks = playbooks_or_fail(settings)

    async def main() -> str:
        service = await incident_service(settings, playbooks)
        return await service.release(playbook, release_name, stages=percents, started_by=user_or_login(as_user))

    workflow_id = run(main)
    out.print(f"re-release [bold]{workflow_id}[/] started  (follow it with: unship status {workflow_id})")


@app.command()
def status(
    incident: Annotated[str | None, typer.Argument(help="Incident id; without it, list incidents.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many incidents to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List incidents, or show one incident's phase, stages, decisions and audit timeline."""
    settings = load_settings()

    async def main() -> Any:
        service = await incident_service(settings)
        return await (service.get(incident) if incident else service.list(limit))

    result = run(main)
    if as_json:
        if isinstance(result, list):
            out.print_json(data=[r.model_dump(mode="json") for r in result])
        else:
            out.print_json(result.model_dump_json())
        return
    if isinstance(result, list):
        _print_list(result)
        if result:
            out.print(f"console: {settings.console_url}/")
    else:
        _print_incident(result, incident_link(settings.console_url, result.incident_id))


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
    phase = s.phase.value + (" (paused)" if s.paused else "")
    head.add_row("Phase", phase + (f" -> {s.outcome.value}" if s.outcome else ""))
    head.add_row("Users on previous", _users_on_previous(s))
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


def _decide(incident: str, verdict: str, user: str, reason: str, gate: str | None, key: str | None) -> None:
    settings = load_settings()
    request = DecisionRequest(user=user, verdict=Verdict(verdict), reason=reason, via="cli", gate_id=gate)

    async def main() -> Any:
        return await (await incident_service(settings)).decide(incident, request, update_id=key)

    result = run(main)
    out.print(f"{result.message} ({result.gate_id}: {result.approvals}/{result.quorum} approvals)")


Gate = Annotated[str | None, typer.Option("--gate", help="The gate you are deciding on (refused if stale).")]
Key = Annotated[str | None, typer.Option("--idempotency-key", help="Retries with the same key count once.")]
Who = Annotated[str, typer.Option("--as", help="Who decides (must hold a deciding role).")]
WhyRequired = Annotated[str, typer.Option("--reason", help="Why (goes on the audit trail).")]


@app.command()
def approve(incident: IncidentArg, as_user: Who, reason: WhyRequired, gate: Gate = None, key: Key = None) -> None:
    """Approve the revert (or investigation outcome) at the incident's open decision."""
    _decide(incident, "approve", as_user, reason, gate, key)


@app.command()
def reject(incident: IncidentArg, as_user: Who, reason: WhyRequired, gate: Gate = None, key: Key = None) -> None:
    """Reject: no revert happens, and the decision is on the record."""
    _decide(incident, "reject", as_user, reason, gate, key)


def _command(incident: str, name: str, user: str | None, reason: str) -> None:
    settings = load_settings()
    command = Command(by=user_or_login(user), reason=reason)

    async def main() -> None:
        await (await incident_service(settings)).signal(incident, name, command)

    run(main)
    out.print(f"{name.replace('_', ' ')} sent to {incident}")


@app.command("revert-now")
def revert_now(incident: IncidentArg, as_user: AsUser = None, reason: Reason = "") -> None:
    """Emergency: move every user back to the previous model at once."""
    _command(incident, "revert_all_now", as_user, reason)


@app.command()
def abort(incident: IncidentArg, as_user: AsUser = None, reason: Reason = "") -> None:
    """Stop the incident where it is; stages already applied stay applied."""
    _command(incident, "abort", as_user, reason)


@app.command()
def pause(incident: IncidentArg, as_user: AsUser = None, reason: Reason = "") -> None:
    """Hold before the next stage until resumed."""
    _command(incident, "pause", as_user, reason)


@app.command()
def resume(incident: IncidentArg, as_user: AsUser = None, reason: Reason = "") -> None:
    """Continue a paused incident."""
    _command(incident, "resume", as_user, reason)


