"""Administration on the server's machine: personal API tokens (``unship users``), the tamper-evident audit
trail (``unship audit verify|export``), reloading the playbook library (``unship playbooks reload``) and the
holds of flag/serving targets (``unship target-holds list|release``; not the legal hold of ``unship hold``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from activities.store import open_store, verify_chain
from workers.cli.api import Api, ApiError
from workers.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_USAGE,
    JsonFlag,
    app,
    exit_code_for,
    fail,
    load_settings,
    out,
    print_json,
    run,
)
from workers.web.auth import Scope, UsersFileError, add_user, load_users, remove_user

users_app = typer.Typer(help="Personal API tokens: who may use the API, with which scopes (the users file).",
                        no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit trail in the incident store.", no_args_is_help=True)
playbooks_app = typer.Typer(help="The server's playbook library.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
target_holds_app = typer.Typer(
    help="Which incident holds each flag or serving target (one active incident per target), and letting go of "
         "a hold whose incident ended without closing (admin scope). Not the legal hold (`unship hold`).",
    no_args_is_help=True)
app.add_typer(playbooks_app, name="playbooks")
app.add_typer(target_holds_app, name="target-holds")

SCOPE_HELP = f"Scopes to grant (repeat): {', '.join(s.value for s in Scope)}. Default: read, trigger, decide, operate."


@users_app.command("add")
def users_add(
    user: Annotated[str, typer.Argument(help="The person's id: the Slack member id playbook roles name (U...).")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help=SCOPE_HELP)] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Groups the person belongs to (repeat).")] = None,
    name: Annotated[str, typer.Option(help="A display name.")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="Issue a new token (the old one stops working).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a person's API token: printed once, only its hash is stored (UNSHIP_USERS_FILE, 0600)."""
    settings = load_settings()
    path = settings.resolved_users_file
    try:
        token = add_user(path, user, scope or ["read", "trigger", "decide", "operate"], group or [], name, replace)
    except UsersFileError as exc:
        fail(EXIT_USAGE, str(exc))
    if as_json:
        entry = load_users(path)[user]
        print_json({"user": user, "token": token, "scopes": entry.scopes, "groups": entry.groups, "name": entry.name,
                    "users_file": str(path)})
        return
    out.print(f"token for [bold]{user}[/] (shown once; store it with `unship login`):")
    out.print(token, markup=False, highlight=False)
    out.print(f"stored its SHA-256 in {path}")


@users_app.command("list")
def users_list(as_json: JsonFlag = False) -> None:
    """The people with a token, their scopes and groups (never the tokens)."""
    settings = load_settings()
    try:
        users = load_users(settings.resolved_users_file)
    except UsersFileError as exc:
        fail(EXIT_USAGE, str(exc))
    if as_json:
        print_json({"users": [{"user": user, "scopes": entry.scopes, "groups": entry.groups, "name": entry.name}
                              for user, entry in sorted(users.items())]})
        return
    if not users:
        out.print(f"no users in {settings.resolved_users_file}")
    for user, entry in sorted(users.items()):
        out.print(f"{user}\t{','.join(entry.scopes)}\t{','.join(entry.groups) or '-'}\t{entry.name}")


@users_app.command("remove")
def users_remove(user: Annotated[str, typer.Argument(help="The person's id.")], as_json: JsonFlag = False) -> None:
    """Revoke a person's token."""
    settings = load_settings()
    try:
        removed = remove_user(settings.resolved_users_file, user)
    except UsersFileError as exc:
        fail(EXIT_USAGE, str(exc))
    if not removed:
        fail(EXIT_NOT_FOUND, f"no user {user!r} in {settings.resolved_users_file}")
    if as_json:
        print_json({"removed": user})
        return
    out.print(f"removed {user}")


@audit_app.command("verify")
def audit_verify(
    incident: Annotated[str | None, typer.Argument(help="Incident id; without it, every incident.")] = None,
    as_json: JsonFlag = False,
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
    if as_json:
        print_json({"ok": not bad, "chains": [r.model_dump(mode="json") for r in reports]})
        raise typer.Exit(EXIT_REFUSED if bad else 0)
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


def _through_api(call: Callable[[Api], Any]) -> Any:
    """``call`` with the API client of your token; a refusal or an unreachable server exits with its code."""
    try:
        return call(Api(load_settings()))
    except ApiError as exc:
        code, message = exit_code_for(exc) or (EXIT_REFUSED, str(exc))
        fail(code, message)


@playbooks_app.command("reload")
def playbooks_reload(as_json: JsonFlag = False) -> None:
    """Ask the server to load its playbook library again (admin scope); prints the versions that changed."""
    result = _through_api(lambda api: api.post("/v1/playbooks/reload"))
    if as_json:
        print_json(result)
        return
    for name, change in sorted(result["changes"].items()):
        out.print(f"{name}: {change['old'] or '-'} -> {change['new'] or '-'}")
    if not result["changes"]:
        out.print("no playbook changed")


@playbooks_app.command("list")
def playbooks_list(as_json: JsonFlag = False) -> None:
    """The playbooks the server runs, with the version a new incident would use."""
    result = _through_api(lambda api: api.get("/v1/playbooks"))
    if as_json:
        print_json(result)
        return
    for item in result["playbooks"]:
        out.print(f"{item['name']}\t{item['version']}\t{item['scenario']}")



@target_holds_app.command("list")
def target_holds_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every target hold: the target, the incident holding it, since when, and whether its workflow still runs
    (a hold of a terminated, timed-out, cancelled or failed incident is stale: the next incident takes it over,
    or release it here)."""
    holds = _through_api(lambda api: api.get("/v1/target-holds"))["holds"]
    if as_json:
        out.print_json(data=holds)
        return
    if not holds:
        out.print("no target is held")
    for hold in holds:
        status = hold["holder_status"] or "unknown"
        stale = "" if status == "running" else "  (stale: its workflow is not running)" if hold["holder_status"] \
            else "  (Temporal cannot say whether it runs)"
        out.print(f"{hold['target']}\t{hold['incident_id']}\t{hold['held_at']}\t{status}{stale}", markup=False,
                  highlight=False)


@target_holds_app.command("release")
def target_holds_release(
    target: Annotated[str, typer.Argument(help="The held target, as `unship target-holds list` shows it.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required; goes on the audit trail).")],
    force: Annotated[bool, typer.Option("--force", help="Release even though the holding incident still runs "
                                                        "(prefer aborting it).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Let go of a target hold (admin scope; audited with your identity and the reason). Refused (exit 1) while
    the holding incident still runs, unless --force; exit 4 when nothing holds the target."""
    released = _through_api(lambda api: api.post("/v1/target-holds/release",
                                                 {"target": target, "reason": reason, "force": force}))
    if as_json:
        out.print_json(data=released)
        return
    out.print(f"released {released['target']} (held by {released['incident_id']}, "
              f"{released['holder_status'] or 'status unknown'})", markup=False, highlight=False)
