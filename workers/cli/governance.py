"""Governance after the revert: the review's status, legal holds, the purge approval, regulatory reports, and
search over past reviews (``docs/governance.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import typer
from rich.table import Table

from activities.contracts import SearchHit
from workers.cli.common import EXIT_NOT_FOUND, JsonFlag, app, out, print_json
from workers.cli.incidents import api_call
from workflows.messages import GovernanceResult, ReviewStatus

IncidentArg = Annotated[str, typer.Argument(help="Incident id, e.g. unship:chat-assistant:v2.3.")]
Reason = Annotated[str, typer.Option("--reason", help="Why (goes on the audit trail).")]
Key = Annotated[str | None, typer.Option("--idempotency-key", help="Retries with the same key count once.")]

purge_app = typer.Typer(help="The purge of a bad release's outputs.", no_args_is_help=True)
report_app = typer.Typer(help="Regulatory reports drafted from an incident.", no_args_is_help=True)
incidents_app = typer.Typer(help="Past incidents and their reviews.", no_args_is_help=True)
app.add_typer(purge_app, name="purge")
app.add_typer(report_app, name="report")
app.add_typer(incidents_app, name="incidents")


def _govern(incident: str, path: str, body: dict[str, str], key: str | None = None, as_json: bool = False) -> None:
    """POST a governance action as yourself (your token); the server checks the scope and the playbook's roles."""
    headers = {"Idempotency-Key": key} if key else None
    result = GovernanceResult.model_validate(
        api_call(lambda api: api.post(f"/v1/incidents/{incident}/{path}", body, headers)))
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    out.print(result.message)


@app.command()
def hold(
    incident_or_release: Annotated[str, typer.Argument(
        metavar="ID|release", help="The incident id to hold; or `release`, then the id whose hold to release.")],
    incident: Annotated[str | None, typer.Argument(metavar="ID", help="After `release`: the incident id.",
                                                   show_default=False)] = None,
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Place a legal hold on the incident's data (`unship hold ID --reason ...`): nothing is purged until it is
    released with `unship hold release ID --reason ...`. Both audited; the playbook names who may release it.

    A legal hold (operate scope) blocks the purge of the bad release's outputs. It is not a target hold (the
    one-incident-per-flag lock a revert takes)."""
    if incident is None:
        _govern(incident_or_release, "legal-hold", {"reason": reason}, as_json=as_json)
    elif incident_or_release == "release":
        _govern(incident, "legal-hold/release", {"reason": reason}, as_json=as_json)
    else:
        raise typer.BadParameter(f"expected `unship hold INCIDENT` or `unship hold release INCIDENT`, got "
                                 f"{incident_or_release!r} {incident!r}")


@purge_app.command("approve")
def purge_approve(incident: IncidentArg, reason: Reason = "", key: Key = None, as_json: JsonFlag = False) -> None:
    """Approve deleting the release's outputs once the purge is due (see the dry run in `unship review`), as
    yourself: you must hold a role the playbook names for the purge."""
    _govern(incident, "purge/approve", {"reason": reason}, key, as_json)


@report_app.command("submit")
def report_submit(
    incident: IncidentArg,
    regime: Annotated[str, typer.Option("--regime", help="gdpr_breach, eu_ai_act_serious_incident, ...")],
    reference: Annotated[str, typer.Option(help="The authority's case or receipt number.")] = "",
    reason: Reason = "",
    key: Key = None,
    as_json: JsonFlag = False,
) -> None:
    """Record that you approved and submitted a report (you must hold a role the playbook names for it)."""
    _govern(incident, f"reports/{quote(regime, safe='')}/submit", {"reference": reference, "reason": reason}, key,
            as_json)


@report_app.command("show")
def report_show(
    incident: IncidentArg,
    regime: Annotated[str, typer.Option("--regime", help="Which report.")],
    html: Annotated[bool, typer.Option("--html", help="Print the print-ready HTML instead of Markdown.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it to this file.")] = None,
) -> None:
    """Print (or write) the draft of a regulatory report (Markdown, or print-ready HTML to print to PDF)."""
    path = f"/v1/incidents/{incident}/reports/{quote(regime, safe='')}"
    text = api_call(lambda api: api.text(path, {"format": "html" if html else "markdown"}))
    if output is not None:
        output.write_text(text, encoding="utf-8")
        out.print(f"wrote {output}")
    else:
        out.print(text, markup=False, soft_wrap=True)


@app.command()
def review(incident: IncidentArg,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The review's governance: provenance, retention and purge, legal hold, reports, tasks, the lesson."""
    s = ReviewStatus.model_validate(api_call(lambda api: api.get(f"/v1/incidents/{incident}/governance")))
    if as_json:
        out.print_json(s.model_dump_json())
        return
    head = Table.grid(padding=(0, 2))
    head.add_row("Review of", f"[bold]{s.incident_id}[/]" + ("  (closed)" if s.closed else ""))
    head.add_row("Provenance", ", ".join(f"{k}={v}" for k, v in s.provenance.items()) or "-")
    if s.legal_hold:
        head.add_row("Legal hold", f"by {s.legal_hold.by} since {s.legal_hold.at:%Y-%m-%d %H:%M}: {s.legal_hold.reason}")
    if s.purge:
        p = s.purge
        head.add_row("Purge", f"{p.state.value}; due {p.due:%Y-%m-%d %H:%M} UTC" if p.due else p.state.value)
        head.add_row("Outputs", ", ".join(f"{k}: {v}" for k, v in p.counted.items()) or "-")
        if p.approvals:
            head.add_row("Approved by", ", ".join(p.approvals) + f" ({len(p.approvals)}/{p.quorum})")
        if p.purged_at:
            head.add_row("Purged", f"{p.purged_at:%Y-%m-%d %H:%M} UTC: {p.counts_before} -> {p.counts_after}")
    if s.lesson:
        head.add_row("Lesson", str(s.lesson.get("proposal", "")))
    out.print(head)
    if s.reports:
        table = Table("Regime", "Due (UTC)", "Submitted", title="Regulatory reports")
        for r in s.reports:
            table.add_row(r.regime, f"{r.due:%Y-%m-%d %H:%M}",
                          f"{r.submitted_at:%Y-%m-%d %H:%M} by {r.submitted_by}" if r.submitted_by else "not yet")
        out.print(table)
    if s.tasks:
        tasks = Table("Task", "Owner", "Due", "Ticket", "State", title="Review tasks")
        for t in s.tasks:
            tasks.add_row(t["title"], t["owner"], str(t["due"])[:16], t.get("url") or t.get("ref") or "-",
                          t.get("state", "open"))
        out.print(tasks)


@incidents_app.command("search")
def incidents_search(
    text: Annotated[str, typer.Argument(help="Words to find in past reviews and their tags.")],
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many results.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search past post-incident reviews and their tags (playbook, team, outcome, signals) across teams."""
    query = urlencode({"q": text, "limit": limit})
    hits = [SearchHit.model_validate(h) for h in api_call(lambda api: api.get(f"/v1/reviews/search?{query}"))]
    if as_json:
        out.print_json(data=[h.model_dump(mode="json") for h in hits])
        return
    if not hits:
        out.print("no review matches")
        raise typer.Exit(EXIT_NOT_FOUND)
    table = Table("Incident", "Tags", "Where", title=f"Reviews matching {text!r}")
    for h in hits:
        table.add_row(h.incident_id, " ".join(h.tags), h.snippet.replace("\n", " "))
    out.print(table)
