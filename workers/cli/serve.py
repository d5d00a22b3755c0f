"""``unship up``, ``unship gateway``, ``unship worker`` and ``unship demo``: the processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer
import uvloop
from rich.table import Table

from playbooks.models import PlaybookSnapshot
from tabletop.learning import advise
from tabletop.rehearsal import RehearsalWorkflow
from tabletop.rehearsal_run import run_rehearsal
from workers.cli.common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    HTTP_SETTINGS,
    SERVER_SETTINGS,
    WORKER_SETTINGS,
    app,
    configure_logging,
    err,
    fail,
    listen,
    load_playbooks,
    load_settings,
    out,
    playbooks_or_fail,
    reload_on_sighup,
    run,
    settings_help,
    stop_on_signals,
)
from workers.demo import CONSOLE_SPEEDUP, SPEEDUP, run_demo
from workers.runtime.client import connect
from workers.runtime.doctor import has_errors, preflight
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.telemetry import configure_tracing, serve_metrics
from workers.runtime.temporal_server import EmbeddedTemporal
from workers.runtime.worker import build_activities, ensure_flagd_flags, run_worker
from workers.web.app import create_app, serve
from workers.web.guards import check_bind_allowed

REHEARSALS: dict[str, Any] = {"extra_workflows": [RehearsalWorkflow], "extra_activities": [run_rehearsal]}
"""Scheduled rehearsals run in every worker the CLI starts (the runtime does not import tabletop)."""


def _serving_setup() -> tuple[Settings, dict[str, PlaybookSnapshot]]:
    """Settings and playbooks for a process that serves HTTP, refusing unsafe or incomplete configurations."""
    settings = load_settings()
    try:
        check_bind_allowed(settings)
    except ValueError as exc:
        fail(EXIT_USAGE, str(exc))
    if settings.slack_socket_mode and not (settings.slack_app_token and settings.slack_bot_token):
        fail(EXIT_USAGE, "UNSHIP_SLACK_SOCKET_MODE needs UNSHIP_SLACK_APP_TOKEN and UNSHIP_SLACK_BOT_TOKEN")
    playbooks = playbooks_or_fail(settings)
    configure_logging(settings)
    configure_tracing()
    return settings, playbooks


NoPreflight = Annotated[bool, typer.Option("--no-preflight", help="Start even when `unship doctor` finds errors.")]


def _preflight(settings: Settings, playbooks: dict[str, PlaybookSnapshot], skip: bool, *, temporal: bool) -> None:
    """The doctor's checks before serving: errors refuse the start (exit 1) unless ``--no-preflight``."""
    findings = asyncio.run(preflight(settings, playbooks, temporal=temporal))
    problems = [f for f in findings if f.severity != "ok"]
    for finding in problems:
        err.print(finding.line(), markup=False, highlight=False, soft_wrap=True)
    if has_errors(findings):
        if skip:
            err.print("starting anyway (--no-preflight)", soft_wrap=True)
            return
        fail(EXIT_REFUSED, "preflight found errors (above); fix them, check with `unship doctor`, or start with "
                           "--no-preflight")


@app.command(epilog=settings_help(SERVER_SETTINGS, HTTP_SETTINGS, WORKER_SETTINGS))
def up(no_preflight: NoPreflight = False) -> None:
    """Run everything here: embedded Temporal (unless TEMPORAL_ADDRESS), the worker and the HTTP API."""
    settings, playbooks = _serving_setup()
    _preflight(settings, playbooks, no_preflight, temporal=not settings.embedded_temporal)
    run(lambda: _up(settings, playbooks))


async def _up(settings: Settings, playbooks: dict[str, PlaybookSnapshot]) -> None:
    host, port = settings.http_host_port
    sock = listen(host, port)
    stop, force = asyncio.Event(), asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        ui_url = None
        if settings.embedded_temporal:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
            server = await stack.enter_async_context(
                EmbeddedTemporal(settings.state_dir, settings.temporal_port, settings.temporal_ui_port,
                                 settings.temporal_namespace)
            )
            ui_url = server.ui_url
        client = await connect(settings)
        activities = build_activities(settings, advisor=advise)
        created = await ensure_flagd_flags(settings, playbooks)
        if created:
            err.print(f"created flagd flags {', '.join(created)} in {settings.resolved_flagd_path}")
        service = IncidentService(client, settings, playbooks, store=activities.store,
                                  library=lambda: load_playbooks(settings))
        with stop_on_signals(stop, on_second=force.set), reload_on_sighup(service):
            worker_task = asyncio.create_task(run_worker(client, settings, activities, stop, **REHEARSALS))
            try:
                await serve(create_app(service, settings), settings, sock, stop, alongside=[worker_task],
                            on_started=lambda: _print_up(settings, ui_url, playbooks), force=force, freeze=True)
            finally:
                sock.close()
    err.print("unship stopped")


def _print_up(settings: Settings, ui_url: str | None, playbooks: dict[str, PlaybookSnapshot]) -> None:
    host, port = settings.http_host_port
    api = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    table = Table.grid(padding=(0, 2))
    table.add_row("Temporal", settings.temporal_target + ("  (embedded)" if settings.embedded_temporal else ""))
    if ui_url:
        table.add_row("Web UI", ui_url)
    users = settings.resolved_users_file
    secured = settings.api_token or settings.oidc_issuer or users.is_file()
    table.add_row("API", f"{api}/v1/incidents" + ("" if secured else "  (no credentials: loopback only, read and "
                                                                      "trigger; `unship users add ID` for people)"))
    table.add_row("Console", f"{settings.console_url}/")
    table.add_row("Task queue", settings.task_queue)
    table.add_row("State", str(settings.state_dir.resolve()))
    table.add_row("Playbooks", ", ".join(sorted(playbooks)) or "none")
    out.print("[bold green]unship is up[/]  (Ctrl-C to stop)")
    out.print(table)


@app.command(epilog=settings_help(SERVER_SETTINGS, HTTP_SETTINGS))
def gateway() -> None:
    """Serve only the gateway (alert webhooks, Slack clicks) against TEMPORAL_ADDRESS or `unship up`'s Temporal."""
    settings, playbooks = _serving_setup()

    async def main() -> None:
        host, port = settings.http_host_port
        sock = listen(host, port)
        stop = asyncio.Event()

        async def service() -> IncidentService:
            return IncidentService(await connect(settings), settings, playbooks)

        with stop_on_signals(stop):
            out.print(f"gateway listening on http://{host}:{port} (alerts: /v1/alerts/<source>, Slack: "
                      f"/v1/slack/interactivity); Temporal {settings.temporal_target}")
            try:
                await serve(create_app(service, settings, api=False), settings, sock, stop, freeze=True)
            finally:
                sock.close()

    run(main, loop_factory=uvloop.new_event_loop)  # libuv's loop: the gateway only serves HTTP and calls Temporal


@app.command(epilog=settings_help(SERVER_SETTINGS, WORKER_SETTINGS))
def worker(no_preflight: NoPreflight = False) -> None:
    """Run only the Temporal worker against TEMPORAL_ADDRESS (or the embedded server of `unship up`).

    Several workers may run at once against one cluster and task queue: Temporal spreads the work."""
    settings = load_settings()
    configure_logging(settings)
    configure_tracing()
    _preflight(settings, playbooks_or_fail(settings), no_preflight, temporal=True)

    async def main() -> None:
        client = await connect(settings)
        stop = asyncio.Event()
        serve_metrics(settings)
        with stop_on_signals(stop):
            out.print(f"worker polling task queue [bold]{settings.task_queue}[/] on {settings.temporal_target}")
            await run_worker(client, settings, build_activities(settings, advisor=advise), stop=stop, **REHEARSALS)

    run(main)


@app.command(epilog=settings_help(SERVER_SETTINGS, HTTP_SETTINGS, WORKER_SETTINGS))
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as one JSON object.")] = False,
) -> None:
    """Check that this configuration runs the loaded playbooks: signal sources, flag/serving providers,
    integrity DSNs and Slack are configured and answer, the incident store's schema matches, Temporal answers
    with the namespace. Exit 1 when something must be fixed (each finding names the setting)."""
    settings = load_settings()
    playbooks = playbooks_or_fail(settings)
    findings = run(lambda: preflight(settings, playbooks, temporal=True))
    if settings.embedded_temporal:
        findings = [f.model_copy(update={"severity": "warning", "message": f.message + " (the embedded server "
                                         "runs while `unship up` does)"})
                    if f.check == "temporal" and f.severity == "error" else f for f in findings]
    if as_json:
        print(json.dumps({"ok": not has_errors(findings), "findings": [f.model_dump() for f in findings]}))
    else:
        for finding in findings:
            out.print(finding.line(), markup=False, highlight=False, soft_wrap=True)
        errors = sum(f.severity == "error" for f in findings)
        warnings = sum(f.severity == "warning" for f in findings)
        out.print(f"{errors} error(s), {warnings} warning(s)", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_REFUSED if has_errors(findings) else 0)


@app.command()
def demo(
    speedup: Annotated[float | None, typer.Option(
        min=1, max=3600, help="How much faster than the playbook's own durations the demo runs (60: a playbook "
                              "minute is a second; default 60, or 20 with --console).")] = None,
    console: Annotated[bool, typer.Option(
        "--console", help="Serve the incident console on UNSHIP_HTTP_ADDR (default 127.0.0.1:8080), print its URL, "
                          "and keep it up after the demo until Ctrl-C.")] = False,
) -> None:
    """Run a degrading release end to end on the embedded defaults (a blip dismissed, a breach reverted)."""
    settings = load_settings()
    if speedup is None:
        speedup = CONSOLE_SPEEDUP if console else SPEEDUP
    raise typer.Exit(run_demo(settings, speedup=speedup, serve_console=console))


