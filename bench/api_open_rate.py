"""Opening incidents through the HTTP API: ``POST /v1/incidents`` per second, distinct releases, N in flight.

The real app (uvicorn, FastAPI routes, bearer token, ``IncidentService``) in front of the embedded Temporal dev
server (SQLite), with a worker running the real ``RollbackWorkflow`` in the same process, as ``unship up`` runs
them (a one-hour confirmation window keeps every incident open). The 202 is sent once Temporal accepted the
signal-with-start. Each release is posted twice (the second request joins the first incident), then the bench
checks that exactly one workflow exists per (playbook, release) and that every request got a 202 naming it.
Then, in the same run, the bound: as many signal-with-starts straight from ``IncidentService`` (no HTTP) on a
task queue no worker polls, as many in flight: what the dev server accepts on this machine.

    ./dev bench api_open_rate [--incidents 1000] [--concurrency 32] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.alert_storm import open_playbook
from bench.machine import command_line, header, percentile, table
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workers.web.app import create_app
from workflows.messages import incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.sandbox import workflow_runner

TOKEN = "bench-api-token"


@contextlib.contextmanager
def _no_signal_capture(server: uvicorn.Server) -> Iterator[None]:
    yield


async def post_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[float, list[tuple[int, str]],
                                                                                          list[float]]:
    """Post every body with ``concurrency`` requests in flight; (seconds, (status, incident id) each, latencies)."""
    results: list[tuple[int, str]] = []
    latencies: list[float] = []
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def lane() -> None:
            while queue:
                body = queue.pop()
                sent = time.perf_counter()
                async with http.post(url, json=body) as response:
                    answer = await response.json()
                    latencies.append(time.perf_counter() - sent)
                    results.append((response.status, str(answer.get("incident_id", answer))))

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return time.perf_counter() - started, results, latencies


async def measure(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            snapshot = open_playbook()
            name = snapshot.playbook.name
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            settings = Settings(state_dir=state, task_queue=queue, api_token=TOKEN)
            service = IncidentService(client, settings, {name: snapshot})
            acts = RollbackActivities(FlagRouter({"flagd": ScriptedFlagProvider()}),
                                      SignalRouter({"scripted": ScriptedSignalSource({})}), LogNotifier(),
                                      SqliteIncidentStore(state / "unship.db"))
            app = create_app(service, settings)
            port = free_port("127.0.0.1")
            http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                 access_log=False, backlog=4096))
            http.capture_signals = lambda: _no_signal_capture(http)  # type: ignore[method-assign]
            serving = asyncio.create_task(http.serve())
            while not http.started:
                await asyncio.sleep(0.01)
            url = f"http://127.0.0.1:{port}/v1/incidents"
            tag = uuid.uuid4().hex[:6]
            worker = Worker(client, task_queue=queue, workflows=INCIDENT_WORKFLOWS, activities=acts.all(),
                            workflow_runner=workflow_runner())
            async with worker if args.worker else contextlib.nullcontext():
                await post_all(url, [{"playbook": name, "release": f"warm-{tag}-{n}"} for n in range(20)],
                               args.concurrency)
                releases = [f"api-{tag}-{n}" for n in range(args.incidents)]
                first = [{"playbook": name, "release": r, "reason": "bench"} for r in releases]
                seconds, results, latencies = await post_all(url, first, args.concurrency)
                again_seconds, again, _ = await post_all(url, first, args.concurrency)
                expected = {incident_id(name, r) for r in releases}
                found = [e.id async for e in client.list_workflows(f'WorkflowId STARTS_WITH "unship:{name}:api-{tag}-"')]
                deadline = time.monotonic() + 30  # visibility is eventually consistent
                while len(found) < len(expected) and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    found = [e.id async for e in
                             client.list_workflows(f'WorkflowId STARTS_WITH "unship:{name}:api-{tag}-"')]
                async for execution in client.list_workflows(f'TaskQueue="{queue}" AND ExecutionStatus="Running"'):
                    await client.get_workflow_handle(execution.id).terminate("bench done")
            http.should_exit = True
            await serving
            # The bound: the same signal-with-starts straight from IncidentService (no HTTP), on a task queue no
            # worker polls (nothing else competes for the server or this process), as many in flight.
            idle = IncidentService(client, Settings(state_dir=state, task_queue=f"{queue}-idle"), {name: snapshot})
            alone = [f"alone-{tag}-{n}" for n in range(args.incidents)]
            gate = asyncio.Semaphore(args.concurrency)

            async def start(release: str) -> None:
                async with gate:
                    await idle.trigger(name, release, started_by="bench")

            started = time.perf_counter()
            await asyncio.gather(*(start(r) for r in alone))
            alone_seconds = time.perf_counter() - started
    accepted = [r for r in results if r[0] == 202]
    rejoined = [r for r in again if r[0] == 202]
    ok = (len(accepted) == len(releases) and len(rejoined) == len(releases) and sorted(found) == sorted(expected)
          and {i for _, i in accepted} == expected and {i for _, i in rejoined} == expected)
    rows = [(f"{args.incidents} distinct releases, {args.concurrency} in flight", f"{len(accepted)}",
             f"{len(accepted) / seconds:.0f}", f"{percentile(latencies, 0.5) * 1000:.1f} ms",
             f"{percentile(latencies, 0.95) * 1000:.1f} ms"),
            ("the same releases again (each joins its incident)", f"{len(rejoined)}",
             f"{len(rejoined) / again_seconds:.0f}", "", ""),
            (f"the bound: {args.incidents} signal-with-starts from `IncidentService` alone (no HTTP, no worker), "
             f"{args.concurrency} in flight", "", f"{args.incidents / alone_seconds:.0f}", "", "")]
    out = [header("api_open_rate"), "",
           f"`./dev bench api_open_rate --incidents {args.incidents} --concurrency {args.concurrency}` "
           "(API, worker and load generator in one process, as `unship up`; embedded dev server)", "",
           table(["requests", "202", "incidents/s", "p50", "p95"], rows), "",
           f"Workflows afterwards: {len(set(found))} for {len(expected)} (playbook, release) pairs, "
           f"{len(found) - len(set(found))} duplicates: **{'one incident per release' if ok else 'FAILED'}**."]
    if not ok:
        statuses = sorted({s for s, _ in results + again})
        out.append(f"FAILED: statuses {statuses}, workflows {len(found)}/{len(expected)}")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--incidents", type=int, default=1000, help="distinct releases opened")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--no-worker", dest="worker", action="store_false",
                   help="no worker in the process: only the API and Temporal's start path")
    p.add_argument("--write", action="store_true", help="replace this benchmark's table in BENCHMARKS.md")
    return p


RECORD = ["--incidents", "1000", "--concurrency", "32"]
"""The arguments ``./dev bench all`` records with."""


if __name__ == "__main__":
    command_line("api_open_rate", parser(), measure)
