"""The console under load: server-side render time of the list with 1,000 incidents in the store and of an
incident page with 2,000 audit events, and how soon a live update reaches an open page after its audit event is
written to the store.

Real pieces: the embedded Temporal dev server (SQLite), a worker with the real activities (scripted signals),
the SQLite incident store, the HTTP app served by uvicorn, and an HTTP client reading pages and the SSE stream.
The store holds 999 seeded incidents plus one real incident whose workflow records 2,000 audit events (refused
decisions, sent as signals); the incident page is rendered from that workflow's live status.

    ./dev bench console [--requests 200] [--updates 50] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier
from activities.contracts import AuditBatch, AuditEvent, IncidentRecord
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.machine import command_line, header, percentile
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import Playbook, PlaybookSnapshot
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workers.web.app import create_app, serve
from workflows.messages import DecisionRefusal, Verdict
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.rollback import RollbackWorkflow
from workflows.sandbox import workflow_runner

RELEASE = "chat-v9.9.9"
PHASES = ["closed"] * 8 + ["reverting", "awaiting_decision"]


def waiting_playbook() -> PlaybookSnapshot:
    """The shipped chat playbook, confirming for an hour: the incident stays open while the bench runs."""
    base = load_playbook(library_folder() / "conversational-agent.yaml").playbook.model_dump()
    base["confirmation"].update(window=36000, interval=3600)
    playbook = Playbook.model_validate(base)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


async def seed(store: SqliteIncidentStore, count: int) -> None:
    now = datetime.now(UTC)
    for i in range(count):
        phase = PHASES[i % len(PHASES)]
        record = IncidentRecord(
            incident_id=f"unship:chat-assistant:seed-{i:04d}", playbook="chat-assistant", playbook_hash="seed",
            release=f"seed-{i:04d}", phase=phase, outcome="reverted" if phase == "closed" else None,
            started_at=now - timedelta(minutes=count - i), updated_at=now - timedelta(minutes=count - i - 1),
            previous_percent=100 if phase == "closed" else 50,
            awaiting=["on_call", "safety_lead"] if phase == "awaiting_decision" else [],
            decide_by=now + timedelta(minutes=15) if phase == "awaiting_decision" else None)
        events = [AuditEvent(seq=j + 1, at=record.started_at + timedelta(seconds=j), kind="poll", actor="unship",
                             message=f"poll {j + 1}") for j in range(5)]
        await store.write(AuditBatch(incident=record, events=events))


def report(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (f"| {name} | {len(ms)} | {percentile(ms, 0.5):.1f} ms | {percentile(ms, 0.95):.1f} ms | "
            f"{max(ms):.1f} ms |")


async def timed_get(http: httpx.AsyncClient, path: str, n: int, expect: str) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        answer = await http.get(path)
        samples.append(time.perf_counter() - start)
        if answer.status_code != 200 or expect not in answer.text:
            raise SystemExit(f"GET {path}: {answer.status_code} {answer.text[:300]}")
    return samples


async def main(requests: int, updates: int, events: int, incidents: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port(), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            store = SqliteIncidentStore(state / "unship.db")
            await seed(store, incidents - 1)
            snapshot = waiting_playbook()
            flags = FlagdFileProvider(state / "flags.json")
            healthy = {s.name: [1.0] for s in snapshot.playbook.signals}
            activities = RollbackActivities(FlagRouter({"flagd": flags}),
                                            SignalRouter({"prometheus": ScriptedSignalSource(healthy)}),
                                            LogNotifier(), store, review_dir=state / "reviews")
            settings = Settings(state_dir=state, task_queue="bench-console", temporal_address=server.target,
                                http_addr=f"127.0.0.1:{free_port()}")
            service = IncidentService(client, settings, {snapshot.playbook.name: snapshot}, store=store)
            async with Worker(client, task_queue=settings.task_queue, workflows=INCIDENT_WORKFLOWS,
                              activities=activities.all(), workflow_runner=workflow_runner()):
                incident = await service.trigger(snapshot.playbook.name, RELEASE, started_by="bench")
                handle = client.get_workflow_handle(incident)

                async def refuse(i: int) -> None:
                    await handle.signal(RollbackWorkflow.decision_refused, DecisionRefusal(
                        user=f"U{i:05d}", verdict=Verdict.APPROVE, refusal="holds none of the roles (bench)"))

                sent = 0
                while sent < events:
                    batch = range(sent, min(events, sent + 50))
                    await asyncio.gather(*(refuse(i) for i in batch))
                    sent += len(batch)
                while len(await store.events(incident)) < events:
                    await asyncio.sleep(0.2)
                stored = await store.events(incident)

                sock = socket.create_server(settings.http_host_port)
                stop = asyncio.Event()
                app = create_app(service, settings)
                server_task = asyncio.create_task(serve(app, settings, sock, stop))
                base = f"http://127.0.0.1:{settings.http_host_port[1]}"
                async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            if (await http.get("/healthz")).status_code == 200:
                                break
                        await asyncio.sleep(0.05)
                    await timed_get(http, "/", 5, "seed-")  # warm-up
                    list_ms = await timed_get(http, "/", requests, "seed-")
                    page = f"/incidents/{incident}"
                    await timed_get(http, page, 3, "decision_refused")
                    app.state.console.status_ttl = 0  # every load queries the workflow: the first viewer
                    page_ms = await timed_get(http, page, max(20, requests // 4), f'id="event-{len(stored)}"')
                    app.state.console.status_ttl = 1.0  # the default: viewers within a second share a query
                    shared_ms = await timed_get(http, page, max(20, requests // 4), f'id="event-{len(stored)}"')
                    live_store, live_signal = await live_updates(http, store, incident, refuse, updates,
                                                                 after=stored[-1].seq, offset=events)
                stop.set()
                await server_task
                sock.close()
                await handle.terminate("bench finished")
    return "\n".join([
        header("console"), "",
        f"`./dev bench console --requests {requests} --updates {updates} --events {events} --incidents {incidents}`"
        f" (store: {incidents} incidents; incident page: {len(stored)} audit events)", "",
        "| measured | n | p50 | p95 | max |",
        "|---|---:|---:|---:|---:|",
        report("GET / (incident list, 200 rows shown of 1,000)", list_ms),
        report(f"GET /incidents/ID ({len(stored)} audit events), status queried each time", page_ms),
        report(f"GET /incidents/ID ({len(stored)} audit events), status shared within 1 s", shared_ms),
        report("live update: event written to the store -> its SSE message read by the page", live_store),
        report("live update: signal sent -> SSE message read (incl. workflow + store write)", live_signal),
    ])


async def live_updates(http: httpx.AsyncClient, store: SqliteIncidentStore, incident: str, refuse, n: int,
                       after: int, offset: int) -> tuple[list[float], list[float]]:
    """Send ``n`` refused decisions one by one; for each, when the store had it and when the open page got it."""
    written: dict[int, float] = {}
    arrived: dict[int, float] = {}
    sent: dict[int, float] = {}
    done = asyncio.Event()

    async def watch_store() -> None:
        last = after
        while not done.is_set():
            for event in await store.events(incident, after=last):
                written.setdefault(event.seq, time.perf_counter())
                last = event.seq
            await asyncio.sleep(0.002)

    async def read_stream() -> None:
        async with http.stream("GET", f"/incidents/{incident}/stream?after={after}") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("id: "):
                    arrived.setdefault(int(line[4:]), time.perf_counter())
                if len(arrived) >= n:
                    return

    watcher = asyncio.create_task(watch_store())
    reader = asyncio.create_task(read_stream())
    await asyncio.sleep(0.5)
    for i in range(n):
        seq = after + i + 1
        sent[seq] = time.perf_counter()
        await refuse(offset + i)
        while seq not in arrived and not reader.done():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
    done.set()
    await asyncio.wait_for(reader, 30)
    await watcher
    # The stream sends events in batches: an event's SSE id is the batch's last seq; count each by its batch.
    store_lat, signal_lat = [], []
    for seq, t_sent in sent.items():
        t_page = min((t for s, t in arrived.items() if s >= seq), default=None)
        if t_page is None or seq not in written:
            raise SystemExit(f"event {seq} never reached the page")
        store_lat.append(t_page - written[seq])
        signal_lat.append(t_page - t_sent)
    return store_lat, signal_lat


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400, help="list page requests (incident page: a quarter)")
    p.add_argument("--updates", type=int, default=50, help="live updates measured")
    p.add_argument("--events", type=int, default=2000, help="audit events on the measured incident")
    p.add_argument("--incidents", type=int, default=1000, help="incidents in the store")
    p.add_argument("--write", action="store_true", help="replace this benchmark's table in BENCHMARKS.md")
    return p


RECORD: list[str] = []
"""The arguments ``./dev bench all`` records with (the defaults)."""


async def measure(args: argparse.Namespace) -> str:
    return await main(args.requests, args.updates, args.events, args.incidents)


if __name__ == "__main__":
    command_line("console", parser(), measure)
