"""The ``unship`` command line: run the service (``up``, ``worker``) and drive incidents from a terminal.

Incident commands talk to Temporal directly through ``IncidentService``; the address comes from the
settings (``TEMPORAL_ADDRESS``, else the embedded server of ``unship up`` on 127.0.0.1:UNSHIP_TEMPORAL_PORT).

Exit codes: 0 ok, 1 refused or failed check, 2 usage or input error, 3 cannot reach Temporal, 4 not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from playbooks.models import PlaybookSnapshot, Severity
from workers.settings import Settings

T = TypeVar("T")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

app = typer.Typer(
    name="unship",
    help="Revert problematic generative-model releases swiftly, safely and on the record.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_options = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """unship: durable, audited rollbacks of model releases, driven by YAML playbooks."""
    _options["debug"] = debug


# --- plumbing ------------------------------------------------------------------------------------------------


def _fail(code: int, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"UNSHIP_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        _fail(EXIT_USAGE, f"invalid settings: {problems}")


def _exit_code(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an expected failure (None: unexpected)."""
    from playbooks.loader import PlaybookError
    from workers.client import TemporalUnreachable
    from workers.service import (
        IncidentNotFound,
        InvalidInput,
        Refused,
        ServiceError,
        TemporalUnavailable,
        UnknownPlaybook,
    )
    from workers.temporal_server import EmbeddedTemporalError

    if isinstance(exc, (TemporalUnreachable, TemporalUnavailable, EmbeddedTemporalError)):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, IncidentNotFound):
        return EXIT_NOT_FOUND, str(exc)
    if isinstance(exc, (UnknownPlaybook, InvalidInput, PlaybookError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, Refused):
        return EXIT_REFUSED, f"refused: {exc.reason}"
    if isinstance(exc, ServiceError):
        return EXIT_REFUSED, str(exc)
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, str(exc)
    return None


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``coro_fn`` in a fresh event loop and turn expected failures into one line and an exit code."""
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's single error boundary
        if _options["debug"]:
            err.print_exception()
        mapped = _exit_code(exc)
        if mapped is None:
            _fail(EXIT_REFUSED, f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)")
        _fail(*mapped)


def _playbooks(settings: Settings) -> dict[str, PlaybookSnapshot]:
    """The playbook library: ``UNSHIP_PLAYBOOKS_DIR`` if it exists, else (default setting) the shipped one."""
    from playbooks.loader import load_library

    folder = settings.playbooks_dir
    if folder.is_dir():
        return load_library(folder)
    if folder == Settings.model_fields["playbooks_dir"].default:
        return load_library(None)
    _fail(EXIT_USAGE, f"UNSHIP_PLAYBOOKS_DIR={folder} is not a folder")


async def _service(settings: Settings, playbooks: dict[str, PlaybookSnapshot] | None = None) -> Any:
    from workers.client import connect
    from workers.service import IncidentService

    client = await connect(settings)
    return IncidentService(client, settings, playbooks or {}, store=_existing_store(settings))


def _existing_store(settings: Settings) -> Any:
    """The incident store, when it already exists (the CLI never creates one as a side effect)."""
    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None
    try:
        from activities.store import open_store

        return open_store(url)
    except Exception:  # noqa: BLE001 - the store only enriches the list; Temporal is the source of truth
        return None


def _user(value: str | None) -> str:
    if value:
        return value
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): fall back to a neutral actor
        return "operator"


class _ShortActivityFailures(logging.Filter):
    """Activity failures that are already classified (``ApplicationError``) log as one line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from temporalio.exceptions import ApplicationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ApplicationError):
            record.msg = f"{record.getMessage()}: {exc}"
            record.args = None
            record.exc_info = None
        return True


def _configure_logging() -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_path=False)
    handler.addFilter(_ShortActivityFailures())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(name)s: %(message)s", force=True)
    for name in ("unship", "workers", "activities", "workflows"):
        logging.getLogger(name).setLevel(logging.INFO)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event, on_second: Callable[[], None] | None = None) -> Iterator[None]:
    """Ctrl-C / SIGTERM set ``stop``; a second one calls ``on_second`` (force)."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        if stop.is_set():
            if on_second:
                on_second()
            return
        err.print("stopping (Ctrl-C again to force)...")
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handle)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# --- running the service ---------------------------------------------------------------------------------------


def _serving_setup() -> tuple[Settings, dict[str, PlaybookSnapshot]]:
    """Settings and playbooks for a process that serves HTTP, refusing unsafe or incomplete configurations."""
    settings = _settings()
    from workers.api import check_bind_allowed

    try:
        check_bind_allowed(settings)
    except ValueError as exc:
        _fail(EXIT_USAGE, str(exc))
    if settings.slack_socket_mode and not (settings.slack_app_token and settings.slack_bot_token):
        _fail(EXIT_USAGE, "UNSHIP_SLACK_SOCKET_MODE needs UNSHIP_SLACK_APP_TOKEN and UNSHIP_SLACK_BOT_TOKEN")
    playbooks = _playbooks_or_fail(settings)
    _configure_logging()
    return settings, playbooks


@app.command()
def up() -> None:
    """Run everything here: embedded Temporal (unless TEMPORAL_ADDRESS), the worker and the HTTP API."""
    settings, playbooks = _serving_setup()
    _run(lambda: _up(settings, playbooks))


def _playbooks_or_fail(settings: Settings) -> dict[str, PlaybookSnapshot]:
    from playbooks.loader import PlaybookError

    try:
        return _playbooks(settings)
    except PlaybookError as exc:
        _fail(EXIT_USAGE, f"the playbook library has problems:\n{exc}")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _fail(EXIT_USAGE, f"cannot listen on {host}:{port} for the HTTP API: {exc.strerror} "
                          "(set UNSHIP_HTTP_ADDR to another host:port)")
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def _up(settings: Settings, playbooks: dict[str, PlaybookSnapshot]) -> None:
    import uvicorn

    from workers.api import create_app
    from workers.client import connect
    from workers.gateway import socket_mode_task
    from workers.service import IncidentService
    from workers.temporal_server import EmbeddedTemporal
    from workers.worker import build_activities, ensure_flagd_flags, run_worker

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # unship handles signals itself
            yield

    host, port = settings.http_host_port
    sock = _listen(host, port)
    stop = asyncio.Event()
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
        activities = build_activities(settings)
        created = await ensure_flagd_flags(settings, playbooks)
        if created:
            err.print(f"created flagd flags {', '.join(created)} in {settings.resolved_flagd_path}")
        service = IncidentService(client, settings, playbooks, store=activities.store)
        api = create_app(service, settings)
        http = _Server(uvicorn.Config(api, log_level="warning", lifespan="on", access_log=False))
        with _stop_on_signals(stop, on_second=lambda: setattr(http, "force_exit", True)):
            worker_task = asyncio.create_task(run_worker(client, settings, activities, stop))
            http_task = asyncio.create_task(http.serve(sockets=[sock]))
            socket_task = socket_mode_task(api, settings, stop)  # Slack clicks over Socket Mode, when enabled
            while not http.started and not http_task.done() and not worker_task.done():
                await asyncio.sleep(0.05)
            if http.started:
                _print_up(settings, ui_url, playbooks)
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({worker_task, http_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            http.should_exit = True
            results = await asyncio.gather(worker_task, http_task, *([socket_task] if socket_task else []),
                                           return_exceptions=True)
            stopper.cancel()
        sock.close()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
    err.print("unship stopped")


def _print_up(settings: Settings, ui_url: str | None, playbooks: dict[str, PlaybookSnapshot]) -> None:
    host, port = settings.http_host_port
    api = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    table = Table.grid(padding=(0, 2))
    table.add_row("Temporal", settings.temporal_target + ("  (embedded)" if settings.embedded_temporal else ""))
    if ui_url:
        table.add_row("Web UI", ui_url)
    table.add_row("API", f"{api}/v1/incidents" + ("" if settings.api_token else "  (no token: loopback only)"))
    table.add_row("Task queue", settings.task_queue)
    table.add_row("State", str(settings.state_dir.resolve()))
    table.add_row("Playbooks", ", ".join(sorted(playbooks)) or "none")
    out.print("[bold green]unship is up[/]  (Ctrl-C to stop)")
    out.print(table)


@app.command()
def gateway() -> None:
    """Serve only the gateway (alert webhooks, Slack clicks) against TEMPORAL_ADDRESS or `unship up`'s Temporal."""
    settings, playbooks = _serving_setup()

    async def main() -> None:
        from workers.gateway import run_gateway

        host, port = settings.http_host_port
        sock = _listen(host, port)
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            out.print(f"gateway listening on http://{host}:{port} (alerts: /v1/alerts/<source>, Slack: "
                      f"/v1/slack/interactivity); Temporal {settings.temporal_target}")
            try:
                await run_gateway(settings, playbooks, sock, stop)
            finally:
                sock.close()

    _run(main)


@app.command()
def worker() -> None:
    """Run only the Temporal worker against TEMPORAL_ADDRESS (or the embedded server of `unship up`)."""
    settings = _settings()
    _configure_logging()

    async def main() -> None:
        from workers.client import connect
        from workers.worker import run_worker

        client = await connect(settings)
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            out.print(f"worker polling task queue [bold]{settings.task_queue}[/] on {settings.temporal_target}")
            await run_worker(client, settings, stop=stop)

    _run(main)


@app.command()
def validate(
    paths: Annotated[list[str], typer.Argument(help="Playbook files or folders of *.yaml files.")],
) -> None:
    """Check playbooks and report every problem with its file and line."""
    from playbooks.loader import validate_command

    raise typer.Exit(validate_command(paths))


# --- incidents ---------------------------------------------------------------------------------------------------


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
    settings = _settings()
    playbooks = _playbooks_or_fail(settings)

    async def main() -> str:
        service = await _service(settings, playbooks)
        return await service.trigger(playbook, release, started_by=_user(as_user), severity=severity,
                                     reason=reason)

    incident = _run(main)
    out.print(f"incident [bold]{incident}[/]  (follow it with: unship status {incident})")


@app.command()
def release(
    playbook: Annotated[str, typer.Argument(help="Name of the playbook whose signals guard the release.")],
    release_name: Annotated[str, typer.Option("--release", "-r", help="The fixed release to roll forward.")],
    stages: Annotated[str | None, typer.Option(help="Cumulative percents, e.g. 10,50,100.")] = None,
    as_user: AsUser = None,
) -> None:
    """Re-release a fixed candidate stage by stage, guarded by the playbook's signals."""
    settings = _settings()
    percents = None
    if stages:
        try:
            percents = [float(p) for p in stages.split(",") if p.strip()]
        except ValueError:
            _fail(EXIT_USAGE, f"--stages: {stages!r} is not a list of percents like 10,50,100")
        if not percents or any(not 0 < p <= 100 for p in percents):
            _fail(EXIT_USAGE, "--stages: every percent must be above 0 and at most 100")

    playbooks = _playbooks_or_fail(settings)

    async def main() -> str:
        service = await _service(settings, playbooks)
        return await service.release(playbook, release_name, stages=percents, started_by=_user(as_user))

    workflow_id = _run(main)
    out.print(f"re-release [bold]{workflow_id}[/] started  (follow it with: unship status {workflow_id})")


@app.command()
def status(
    incident: Annotated[str | None, typer.Argument(help="Incident id; without it, list incidents.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many incidents to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List incidents, or show one incident's phase, stages, decisions and audit timeline."""
    settings = _settings()

    async def main() -> Any:
        service = await _service(settings)
        return await (service.get(incident) if incident else service.list(limit))

    result = _run(main)
    if as_json:
        if isinstance(result, list):
            out.print_json(data=[r.model_dump(mode="json") for r in result])
        else:
            out.print_json(result.model_dump_json())
        return
    if isinstance(result, list):
        _print_list(result)
    else:
        _print_incident(result)


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


def _print_incident(s: Any) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_row("Incident", f"[bold]{s.incident_id}[/]")
    head.add_row("Playbook", f"{s.playbook} (version {s.playbook_version}, {s.scenario})")
    head.add_row("Release", s.release)
    phase = s.phase.value + (" (paused)" if s.paused else "")
    head.add_row("Phase", phase + (f" -> {s.outcome.value}" if s.outcome else ""))
    head.add_row("Users on previous", f"{s.previous_percent:g}%")
    for label, value in (("Started", s.started_at), ("Detected", s.detected_at), ("Decided", s.decided_at),
                         ("First revert", s.first_revert_at), ("Full revert", s.full_revert_at),
                         ("Closed", s.closed_at)):
        if value:
            head.add_row(label, _when(value))
    if s.gate:
        g = s.gate
        head.add_row("Open decision", f"{g.gate_id} ({g.purpose}): {len(g.approvals)}/{g.quorum} approvals; "
                                      f"roles {', '.join(g.roles)}" + (" [escalated]" if g.escalated else ""))
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
    from workflows.messages import DecisionRequest, Verdict

    settings = _settings()
    request = DecisionRequest(user=user, verdict=Verdict(verdict), reason=reason, via="cli", gate_id=gate)

    async def main() -> Any:
        return await (await _service(settings)).decide(incident, request, update_id=key)

    result = _run(main)
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
    from workflows.messages import Command

    settings = _settings()
    command = Command(by=_user(user), reason=reason)

    async def main() -> None:
        await (await _service(settings)).signal(incident, name, command)

    _run(main)
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


@app.command()
def demo(
    speedup: Annotated[float, typer.Option(min=1, max=3600, help="How much faster than the playbook's own "
                                            "durations the demo runs (60: a playbook minute is a second).")] = 60,
) -> None:
    """Run a degrading release end to end on the embedded defaults (a blip dismissed, a breach reverted)."""
    settings = _settings()
    # The demo is imported lazily so every other command works without its dependencies.
    from workers.demo import run_demo

    raise typer.Exit(run_demo(settings, speedup=speedup))


# --- rehearsing: tabletop exercises, backtests, scheduled rehearsals -----------------------------------------


@app.command()
def tabletop(
    scenarios: Annotated[list[str], typer.Argument(help="Scenario files (*.scenario.yaml) or folders of them.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per scenario.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write a Markdown report with charts here.")] = None,
    staging: Annotated[bool, typer.Option("--staging", help="Run against the configured Temporal/flags/chat.")] = False,
    speedup: Annotated[float, typer.Option("--speedup", min=1.0, help="Staging: how much faster than written.")] = 60.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Figures and expectations only, no timeline.")] = False,
) -> None:
    """Rehearse playbooks: run scenarios through the real workflows on simulated time (exit 1 if one fails)."""
    from workers.tabletop import tabletop_command

    settings = _settings() if staging else None
    raise typer.Exit(tabletop_command(scenarios, as_json=as_json, report=report, staging=staging, speedup=speedup,
                                      settings=settings, quiet=quiet))


@app.command()
def backtest(
    playbook: Annotated[str, typer.Argument(help="Playbook file.")],
    history: Annotated[str, typer.Option("--history", help="Metric history CSV (timestamp + one column per signal).")],
    sets: Annotated[list[str] | None, typer.Option("--set", help="Try a candidate, e.g. latency-p95.threshold=5.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay recorded metric history through a playbook's trigger rules: when would it have fired?"""
    from workers.tabletop import backtest_command

    raise typer.Exit(backtest_command(playbook, history, sets or [], as_json=as_json))


rehearse_app = typer.Typer(help="Scheduled rehearsals: replay a scenario on a cadence (Temporal Schedules).",
                           no_args_is_help=True)
app.add_typer(rehearse_app, name="rehearse")


@rehearse_app.command("schedule")
def rehearse_schedule(
    scenario: Annotated[str, typer.Argument(help="Scenario file to replay.")],
    every: Annotated[str, typer.Option("--every", help="Cadence, e.g. 1d, 12h, 7d.")],
) -> None:
    """Create (or replace) a schedule that replays SCENARIO every DURATION and posts the result."""
    from workers.rehearse import schedule_command

    settings = _settings()
    raise typer.Exit(_run(lambda: schedule_command(settings, scenario, every)))


@rehearse_app.command("list")
def rehearse_list() -> None:
    """List the scheduled rehearsals."""
    from workers.rehearse import list_command

    settings = _settings()
    raise typer.Exit(_run(lambda: list_command(settings)))


@rehearse_app.command("delete")
def rehearse_delete(name: Annotated[str, typer.Argument(help="Schedule id or scenario name.")]) -> None:
    """Delete a scheduled rehearsal."""
    from workers.rehearse import delete_command

    settings = _settings()
    raise typer.Exit(_run(lambda: delete_command(settings, name)))


def main() -> None:
    """Console-script entry point (``unship``)."""
    app(prog_name="unship")


if __name__ == "__main__":
    sys.exit(main())
