"""`unship demo`: a degrading chat-assistant release, handled end to end on the embedded defaults.

It starts the real embedded Temporal dev server, a worker with the real activities (flagd flag file, SQLite
incident store, SQL integrity check on a SQLite conversation store) and a scripted signal source in place of
Prometheus, then plays two incidents of the shipped ``chat-assistant`` playbook, run 60x faster (a minute of
the playbook is a second here):

1. a transient hallucination blip: polled, not sustained, dismissed with the reason;
2. a sustained breach: confirmed, an unauthorized approval refused, two authorized approvals (quorum 2),
   users moved back 10% -> 50% -> 100% with bake and verification, integrity verified, review written.

It prints the timeline as it goes and the audit trail at the end, and exits 0 only if the outcome is right.
State lives in ``<state_dir>/demo`` and every run starts from a clean slate, so it can be run again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities import metrics
from activities.chat import LogNotifier
from activities.flagd import FlagdFileProvider
from activities.integrity import IntegrityChecker
from activities.outputs import HttpOutputStore, OutputRouter, SqlOutputStore
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import PlaybookSnapshot, Severity, format_duration
from tabletop.learning import advise
from workers.runtime.client import temporal_runtime
from workers.runtime.service import DecisionRefused, IncidentService
from workers.runtime.settings import Settings
from workers.runtime.telemetry import serve_metrics, stop_metrics
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workers.web.alert_sources import SOURCES
from workers.web.app import create_app, serve
from workers.web.guards import check_bind_allowed
from workflows.messages import (
    Alert,
    DecisionRequest,
    IncidentStatus,
    Outcome,
    Phase,
    Verdict,
)
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.rollback import RollbackWorkflow
from workflows.sandbox import workflow_runner

PLAYBOOK = "conversational-agent.yaml"
CONSOLE_HEAD_START = 5.0  # seconds to open the console before the first alert fires
CONSOLE_SPEEDUP = 20.0  # with the console, slow enough to watch each step
RELEASE = "chat-v2.4.0"
SPEEDUP = 60.0  # a playbook minute is a second
TASK_QUEUE = "unship-demo"
CHAT_DB_ENV = "UNSHIP_CHAT_DB_URL"

# What monitoring would have measured, poll by poll (one poll per playbook minute, a second here).
Timeline = dict[str, list[float | None]]
HEALTHY: Timeline = {"moderation-failures": [0.1], "latency-p95": [1.8], "thumbs-down-rate": [4.0], "fairness-gap": [1.0]}
BLIP: Timeline = {**HEALTHY, "hallucination-rate": [52.0, 18.0, 14.0, 12.0, 11.0]}
SUSTAINED: Timeline = {**HEALTHY, "hallucination-rate": [41.0, 57.0, 66.0, 71.0, 74.0]}
SAMPLES: Timeline = {"hallucination-rate": [4200.0], "moderation-failures": [4200.0], "thumbs-down-rate": [900.0]}

ON_CALL = DecisionRequest(user="U05ONCALL7", verdict=Verdict.APPROVE, via="cli", groups=["S05MLONCALL"],
                          reason="hallucination rate doubled after the rollout; confirmed in samples")
SAFETY = DecisionRequest(user="U04SAFETY01", verdict=Verdict.APPROVE, via="cli",
                         reason="grounding failures are user-visible; revert")
INTRUDER = DecisionRequest(user="U09INTERN1", verdict=Verdict.APPROVE, via="cli", reason="looks bad to me")


class DemoFailed(Exception):
    """The demo did not end the way it should; the message says where."""


def run_demo(settings: Settings, speedup: float = SPEEDUP, console: Console | None = None,
             serve_console: bool = False) -> int:
    """Run the demo; 0 when both incidents ended as expected.

    ``serve_console``: serve the incident console on ``UNSHIP_HTTP_ADDR`` while it runs, print its URL, and keep
    it (and the worker answering its queries) up after the demo until Ctrl-C.
    """
    console = console or Console(highlight=False, soft_wrap=True)
    metrics.initialise(tuple(SOURCES))  # the demo's alerts skip the gateway: its counters show zero
    metrics_server = serve_metrics(settings)
    try:
        asyncio.run(_demo(settings, console, speedup, serve_console))
    except DemoFailed as failure:
        console.print(f"[bold red]demo failed:[/] {failure}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        stop_metrics(metrics_server)
    return 0


@contextlib.asynccontextmanager
async def _console_server(service: IncidentService, settings: Settings) -> AsyncIterator[str]:
    """The console (and API) over the demo's service on ``UNSHIP_HTTP_ADDR``; yields its URL."""
    try:
        check_bind_allowed(settings)
    except ValueError as exc:
        raise DemoFailed(str(exc)) from None
    host, port = settings.http_host_port
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise DemoFailed(f"cannot listen on {host}:{port} for the console: {exc.strerror} (set UNSHIP_HTTP_ADDR "
                         "to another host:port)") from None
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(create_app(service, settings), settings, sock, stop, on_started=started.set))
    await asyncio.wait({task, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    try:
        if task.done():
            task.result()
            raise DemoFailed("the console stopped before it started")
        yield f"{settings.console_url}/"
    finally:
        stop.set()
        await task
        sock.close()


async def _until_interrupted() -> None:
    """Wait for Ctrl-C (or SIGTERM), then return normally."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _demo(settings: Settings, console: Console, speedup: float, serve_console: bool = False) -> None:
    state = settings.state_dir / "demo"
    if state.exists():
        shutil.rmtree(state)  # a clean slate each run: the demo's own server, flags and store
    state.mkdir(parents=True)
    source = library_folder() / PLAYBOOK
    loaded = load_playbook(source)
    playbook = loaded.playbook.time_scaled(1 / speedup)
    snapshot = PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source=str(source))
    console.rule(f"[bold]unship demo[/]: playbook {playbook.name} (version {loaded.version})")
    console.print(f"The demo runs a time-scaled copy of it (version {snapshot.version}), as a rehearsal would.")
    console.print(f"Every duration of the playbook runs {speedup:g}x faster here: its "
                  f"{format_duration(loaded.playbook.confirmation.window)} confirmation window takes "
                  f"{format_duration(playbook.confirmation.window)}. Times below are real seconds since the alert.")

    console.print("starting the embedded Temporal dev server ...")
    async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
        client = await Client.connect(server.target, data_converter=pydantic_data_converter,
                                      runtime=temporal_runtime(settings))
        flags_file = state / "flags.json"
        flagd = FlagdFileProvider(flags_file)
        for target in playbook.rollback.targets:
            await flagd.ensure_flag(target)
        chat_db = _seed_conversations(state / "conversations.db")
        signals = ScriptedSignalSource(BLIP, samples=SAMPLES)
        router = FlagRouter({"flagd": flagd})
        signal_router = SignalRouter({"prometheus": signals})
        store = SqliteIncidentStore(state / "unship.db")
        activities = RollbackActivities(
            router, signal_router, LogNotifier(), store,
            integrity=IntegrityChecker(router, signal_router, environ={CHAT_DB_ENV: f"sqlite:///{chat_db}"}),
            review_dir=state / "reviews",
            outputs=OutputRouter({"sql": SqlOutputStore(environ={CHAT_DB_ENV: f"sqlite:///{chat_db}"}),
                                  "http": HttpOutputStore()}),
            advisor=advise,
        )
        demo_settings = settings.model_copy(update={"task_queue": TASK_QUEUE, "temporal_ui_port": 0,
                                                    "temporal_address": None})
        service = IncidentService(client, demo_settings, {playbook.name: snapshot}, store=store)
        console.print(f"Temporal at {server.target}; flag file {flags_file}; incident store {store.path}")
        async with contextlib.AsyncExitStack() as running:
            await running.enter_async_context(Worker(
                client, task_queue=TASK_QUEUE, workflows=INCIDENT_WORKFLOWS, workflow_runner=workflow_runner(),
                activities=activities.all()))
            url = await running.enter_async_context(_console_server(service, demo_settings)) if serve_console \
                else None
            if url:
                console.print(f"\n[bold]Watch it in the console:[/] [link={url}]{url}[/link]  (starting in "
                              f"{CONSOLE_HEAD_START:g} s)\n")
                await asyncio.sleep(CONSOLE_HEAD_START)
            target = playbook.rollback.targets[0]
            console.print(f"flag [bold]{target.key}[/]: {await flagd.get_previous_percent(target):g}% of users on "
                          f"the previous model, the rest on release {RELEASE}\n")

            console.rule("incident 1: a transient hallucination blip")
            blip = await _play(service, console, alert_id="am-blip")
            _expect(blip, Outcome.DISMISSED)

            console.rule("incident 2: a sustained breach")
            signals.timeline = SUSTAINED
            sustained = await _play(service, console, alert_id="am-sustained", decide=True)
            _expect(sustained, Outcome.REVERTED)
            share = await flagd.get_previous_percent(target)
            if share != 100:
                raise DemoFailed(f"the flag file shows {share}% on the previous model, expected 100%")
            console.print(f"flag [bold]{target.key}[/] now sends {share:g}% of users to the previous model")

            review = await store.review(sustained.incident_id)
            for _ in range(300):  # the review writes its document after its governance set-up (a few activities)
                if review is not None:
                    break
                await asyncio.sleep(0.1)
                review = await store.review(sustained.incident_id)
            if review is None:
                raise DemoFailed("no post-incident review was written")
            _print_timeline(console, sustained)
            review_path = state / "reviews" / (sustained.incident_id.replace(":", "_") + ".md")
            console.print(f"\npost-incident review: [bold]{review_path}[/] ({len(review.markdown.splitlines())} lines)")
            if url:
                console.rule("[bold green]demo finished[/]: blip dismissed, breach reverted and verified")
                console.print(f"The console stays up at [bold]{url}[/]: Ctrl-C to stop.")
                await _until_interrupted()
        if sustained.review_workflow_id:
            # Its regulatory and purge reminders would wait hours; the demo's server goes away with it. Ended
            # after the worker stopped, so no workflow task of it is in flight.
            await client.get_workflow_handle(sustained.review_workflow_id).terminate("demo finished")
    console.rule("[bold green]demo finished[/]: blip dismissed, breach reverted and verified")


async def _play(service: IncidentService, console: Console, alert_id: str, decide: bool = False) -> IncidentStatus:
    """Trigger an incident with an alert and follow it to the end, narrating; approve when ``decide``."""
    alert = Alert(source="alertmanager", name="GenAIQualityDegraded", fingerprint=f"{alert_id}-{uuid.uuid4().hex[:6]}",
                  labels={"alertname": "GenAIQualityDegraded", "service": "chat-assistant", "release": RELEASE,
                          "severity": "warning"},
                  severity=Severity.WARNING, group_key='{}:{alertname="GenAIQualityDegraded"}')
    incident = await service.trigger("chat-assistant", RELEASE, alert=alert, started_by="alertmanager")
    handle: WorkflowHandle[RollbackWorkflow, IncidentStatus] = service.client.get_workflow_handle_for(RollbackWorkflow.run, incident)
    console.print(f"alert GenAIQualityDegraded fired for release {RELEASE}: incident [bold]{incident}[/]")
    shown = 0
    decided = False
    while True:
        status: IncidentStatus = await handle.query(RollbackWorkflow.status)
        for event in status.audit[shown:]:
            console.print(_line(status.started_at, event.at, event.kind, event.actor, event.message))
        shown = len(status.audit)
        if decide and not decided and status.phase is Phase.AWAITING_DECISION and status.gate:
            decided = True
            await _approve(service, console, incident)
            continue
        if status.phase is Phase.CLOSED and status.outcome and (
                status.review_workflow_id or status.outcome is not Outcome.REVERTED):
            break
        await asyncio.sleep(0.25)
    result: IncidentStatus = await handle.result()
    for event in result.audit[shown:]:
        console.print(_line(result.started_at, event.at, event.kind, event.actor, event.message))
    console.print(f"[bold]outcome: {result.outcome.value if result.outcome else '?'}[/]\n")
    return result


async def _approve(service: IncidentService, console: Console, incident: str) -> None:
    try:
        await service.decide(incident, INTRUDER, update_id=f"{incident}:intruder")
        raise DemoFailed(f"{INTRUDER.user} holds no role, yet the approval was accepted")
    except DecisionRefused as refused:
        console.print(f"  [yellow]refused[/] {INTRUDER.user}: {refused}")
    for request in (ON_CALL, SAFETY):
        result = await service.decide(incident, request, update_id=f"{incident}:{request.user}")
        console.print(f"  [green]accepted[/] {request.user}: {result.message}")


def _expect(status: IncidentStatus, outcome: Outcome) -> None:
    if status.outcome is not outcome:
        last = status.audit[-1].message if status.audit else "no audit"
        raise DemoFailed(f"incident {status.incident_id} ended {status.outcome}, expected {outcome.value}: {last}")


def _line(start: datetime, at: datetime, kind: str, actor: str, message: str) -> str:
    return f"  [dim]+{_clock(start, at)}[/] [cyan]{kind:<16}[/] [magenta]{actor:<13}[/] {message}"


def _clock(start: datetime, at: datetime) -> str:
    return f"{max(0.0, (at - start).total_seconds()):5.1f}s"


def _print_timeline(console: Console, status: IncidentStatus) -> None:
    """Key figures (in playbook time) and the audit trail of the incident."""
    figures: list[tuple[str, Callable[[IncidentStatus], datetime | None]]] = [
        ("detected", lambda s: s.detected_at), ("decided", lambda s: s.decided_at),
        ("first cohort reverted", lambda s: s.first_revert_at), ("everyone reverted", lambda s: s.full_revert_at),
        ("closed", lambda s: s.closed_at),
    ]
    table = Table(title=f"incident {status.incident_id}: key figures")
    table.add_column("milestone")
    table.add_column("after", justify="right")
    for name, pick in figures:
        at = pick(status)
        table.add_row(name, _clock(status.started_at, at) if at else "-")
    console.print(table)
    checks = Table(title="verification")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("evidence")
    for check in status.integrity:
        checks.add_row(check.name, "[green]passed[/]" if check.passed else "[red]FAILED[/]", check.evidence)
    console.print(checks)


def _seed_conversations(path: Path) -> Path:
    """A small conversation store like the one the playbook's SQL integrity check reads."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE conversation_turns (id INTEGER PRIMARY KEY, created_at TEXT, answered_at TEXT, "
                   "model_version TEXT)")
        db.executemany(
            "INSERT INTO conversation_turns (created_at, answered_at, model_version) VALUES (?, ?, ?)",
            [(f"2026-11-28T10:{i:02d}:00Z", f"2026-11-28T10:{i:02d}:02Z",
              RELEASE if i % 3 else "chat-v2.3.1") for i in range(60)],
        )
    return path
