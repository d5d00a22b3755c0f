"""Administration on the server's machine: personal API tokens (``unship users``), the tamper-evident audit
trail (``unship audit verify|export``) and reloading the playbook library (``unship playbooks reload``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from activities.store import open_store, verify_chain
from workers.cli.api import Api, ApiError
from workers.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_USAGE,
    app,
    exit_code_for,
    fail,
    load_settings,
    out,
    run,
)
from workers.web.auth import Scope, UsersFileError, add_user, load_users, remove_user

users_app = typer.Typer(help="Personal API tokens: who may use the API, with which scopes (the users file).",
                        no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit trail in the incident store.", no_args_is_help=True)
playbooks_app = typer.Typer(help="The server's playbook library.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(playbooks_app, name="playbooks")

SCOPE_HELP = f"Scopes to grant (repeat): {', '.join(s.value for s in Scope)}. Default: read, trigger, decide, operate."


@users_app.command("add")
def users_add(
    user: Annotated[str, typer.Argument(help="The person's id: the Slack member id playbook roles name (U...).")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help=SCOPE_HELP)] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Groups the person belongs to (repeat).")] = None,
    name: Annotated[str, typer.Option(help="A display name.")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="Issue a new token (the old one stops working).")] = False,
) -> None:
    """Create a person's API token: printed once, only its hash is stored (UNSHIP_USERS_FILE, 0600)."""
    settings = load_settings()
    path = settings.resolved_users_file
    try:
        token = add_user(path, user, scope or ["read", "trigger", "decide", "operate"], group or [], name, replace)
    except UsersFileError as exc:
        fail(EXIT_USAGE, str(exc))
    out.print(f"token for [bold]{user}[/] (shown once; store it with `unship login`):")
    out.print(token, markup=False, highlight=False)
    out.print(f"stored its SHA-256 in {path}")


@users_app.command("list")
def users_list() -> None:
    """The people with a token, their scopes and groups (never the tokens)."""
    settings = load_settings()
    try:
        users = load_users(settings.resolved_users_file)
    except UsersFileError as exc:
        fail(EXIT_USAGE, str(exc))
    if not users:
        out.print(f"no users in {settings.resolved_users_file}")
    for user, entry in sorted(users.items()):
        out.print(f"{user}\t{','.join(entry.scopes)}\t{','.join(entry.groups) or '-'}\t{entry.name}")


@users_app.command("remove")
def users_remove(user: Annotated[str, typer.Argument(help="The person's id.")]) -> None:
    """Revoke a person's token."""
    settings = load_settings()
    try:
        removed = remove_user(settings.resolved_users_file, user)
    except UsersFileError as exc:
        fail(EXIT_USAGE, str(exc))
    if not removed:
        fail(EXIT_NOT_FOUND, f"no user {user!r} in {settings.resolved_users_file}")
    out.print(f"removed {user}")


@audit_app.command("verify")
def audit_verify(
    incident: Annotated[str | None, typer.Argument(help="Incident id; without it, every incident.")] = None,
) -> None:
    """Check the audit hash chains; names the first event that does not match (exit 1)."""
    settings = load_settings()
    store = open_store(settings.resolved_database_url)

    async def main() -> list[Any]:
        records = [await _incident(store, incident)] if incident else await store.incidents(limit=100_000)
        return [verify_chain(r.incident_id, r.playbook_hash, await store.chained_events(r.incident_id))
                for r in records]

    reports = run(main)
    bad = [r for r in reports if not r.ok]
    for report in reports:
        if report.ok:
            note = f" ({report.problem})" if report.problem else ""
            out.print(f"OK   {report.incident_id}: {report.events} event(s) chained{note}")
        else:
            out.print(f"[bold red]FAIL[/] {report.incident_id}: {report.problem}")
    if bad:
        raise typer.Exit(EXIT_REFUSED)


@audit_app.command("export")
def audit_export(
    incident: Annotated[str, typer.Argument(help="Incident id.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (one JSON object per line).")] = "jsonl",
) -> None:
    """Everything a reviewer or regulator needs, one JSON object per line: the incident (playbook version), then
    each audit event (signals, decisions with verified identities, actions) with its chain hashes, then the
    chain verdict."""
    if fmt != "jsonl":
        fail(EXIT_USAGE, f"--format: {fmt!r} is not supported; use jsonl")
    settings = load_settings()
    store = open_store(settings.resolved_database_url)

    async def main() -> tuple[Any, list[Any]]:
        record = await _incident(store, incident)
        return record, await store.chained_events(incident)

    record, rows = run(main)
    report = verify_chain(record.incident_id, record.playbook_hash, rows)
    print(json.dumps({"type": "incident", **record.model_dump(mode="json")}, sort_keys=True))
    for row in rows:
        print(json.dumps({"type": "event", **row.event.model_dump(mode="json"), "chain": row.chain,
                          "prev_hash": row.prev_hash, "hash": row.hash}, sort_keys=True))
    print(json.dumps({"type": "chain", **report.model_dump(mode="json")}, sort_keys=True))


async def _incident(store: Any, incident: str) -> Any:
    record = await store.incident(incident) if hasattr(store, "incident") else None
    if record is None:
        fail(EXIT_NOT_FOUND, f"no incident {incident!r} in the incident store")
    return record


@playbooks_app.command("reload")
def playbooks_reload() -> None:
    """Ask the server to load its playbook library again (admin scope); prints the versions that changed."""
    try:
        result = Api(load_settings()).post("/v1/playbooks/reload")
    except ApiError as exc:
        code, message = exit_code_for(exc) or (EXIT_REFUSED, str(exc))
        fail(code, message)
    for name, change in sorted(result["changes"].items()):
        out.print(f"{name}: {change['old'] or '-'} -> {change['new'] or '-'}")
    if not result["changes"]:
        out.print("no playbook changed")


@playbooks_app.command("list")
def playbooks_list() -> None:
    """The playbooks the server runs, with the version a new incident would use."""
    try:
        result = Api(load_settings()).get("/v1/playbooks")
    except ApiError as exc:
        code, message = exit_code_for(exc) or (EXIT_REFUSED, str(exc))
        fail(code, message)
    for item in result["playbooks"]:
        out.print(f"{item['name']}\t{item['version']}\t{item['scenario']}")

