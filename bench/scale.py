"""Many open incidents on one worker: N incidents waiting at the approval gate, then approved.

On the embedded Temporal dev server (SQLite) with the real activities (flags in an in-process service behind the
real HttpProvider, the SQLite store), one worker with a bounded workflow cache. Each incident has a playbook and flag of its own (one incident per target: incidents
sharing a flag would wait for its holder instead of writing). Reports: how fast the incidents were opened
through the service, the RSS of the unship process and of the Temporal server with N incidents at the gate,
``GET /v1/incidents`` (page of 100: the first page and the second, by cursor) p50/p95 through the real app with
the split between Temporal visibility and the store, and decision -> first cohort written (p50/p95) when the N
are approved in waves vs one incident alone. Append the output to BENCHMARKS.md.

    ./dev bench scale [--incidents 10000] [--cache 1000] [--wave 500] [--approve N]
                      [--open-concurrency 64] [--decide-concurrency 32]

Progress goes to stderr every few seconds (opened, at the gate, approved, first steps taken), so a 10,000 run
shows where it is; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier
from activities.http_providers import HttpProvider
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.machine import byte_compile, header, percentile
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import Playbook, PlaybookSnapshot
from workers.runtime.service import IncidentService, TemporalUnavailable
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workers.web.app import create_app
from workflows.messages import DecisionRequest, Verdict, incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.release import ReleaseWorkflow
from workflows.rollback import RollbackWorkflow
from workflows.sandbox import workflow_runner

APPROVER = "U05ONCALL7"


def gate_playbook() -> PlaybookSnapshot:
    """The chat playbook, straight to an approval gate (one approval) that waits for hours, then one stage (all
    users back, no bake): an approved incident writes its first cohort (what is measured), reads it back and
    closes. A baking incident reads its flag back every minute (``DRIFT_CHECK_EVERY``), so thousands of approved
    incidents left baking would be a steady load of their own, and with more of them than the worker caches
    every read-back would first replay a history: that measures bakes, not approvals."""
    base = load_playbook(library_folder() / "conversational-agent.yaml").playbook.model_dump()
    base["confirmation"]["window"] = 0
    base["decision"].update({"mode": "approval", "quorum": 1, "require": {}, "timeout": timedelta(hours=10),
                             "escalation": None})
    base["rollback"]["stages"] = [{"percent": 100, "bake": timedelta(0), "verify": []}]
    base.pop("data", None)  # the review counts the release's outputs in a database the bench does not have
    base["rollback"]["targets"] = base["rollback"]["targets"][:1]
    base["integrity"] = [{"kind": "readback", "name": "readback"}]
    playbook = Playbook.model_validate(base)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


def own_flag(template: PlaybookSnapshot, n: int) -> PlaybookSnapshot:
    """``template`` as playbook ``scale-<n>`` on its own flag ``scale-<n>``: one incident per target (#9) means
    incidents sharing a flag wait for its holder, so each of the N incidents gets a flag of its own, as N
    releases of N models would. The flag lives in the flag service of ``flag_service`` (provider ``http``)."""
    name = f"scale-{n:05d}"
    rollback = template.playbook.rollback
    target = rollback.targets[0].model_copy(update={"key": name, "provider": "http"})
    playbook = template.playbook.model_copy(
        update={"name": name, "rollback": rollback.model_copy(update={"targets": [target]})})
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


def flag_service(keys: list[str]) -> HttpProvider:
    """An in-memory flag service speaking unship's generic HTTP flag contract (``activities/http_providers.py``:
    ``GET``/``PUT /targets/{key}``), served in-process over ASGI, with the real ``HttpProvider`` in front.

    Not the flagd file: one flagd file holding N flags is parsed whole on every read (measured at 1,000 flags:
    645 KB, a quarter of the unship process's CPU went to ``json.loads`` of it while approving), which would
    measure the file, not the engine."""
    shares: dict[str, float] = dict.fromkeys(keys, 0.0)

    async def target(request: Request) -> Response:
        key = request.path_params["key"]
        if key not in shares:
            return JSONResponse({"detail": f"no target {key!r}"}, status_code=404)
        if request.method == "PUT":
            shares[key] = float((await request.json())["previous_percent"])
        return JSONResponse({"previous_percent": shares[key]})

    app = Starlette(routes=[Route("/targets/{key}", target, methods=["GET", "PUT"])])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://flags")
    return HttpProvider("http://flags", client=client)


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


async def gather_limited(limit: int, jobs: list, what: str = "") -> list:
    """Run ``jobs`` with at most ``limit`` in flight; with ``what``, a progress line every 5 s."""
    gate = asyncio.Semaphore(limit)
    done = [0]
    started = time.perf_counter()

    async def one(job):
        async with gate:
            result = await job()
            done[0] += 1
            return result

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            elapsed = time.perf_counter() - started
            progress(f"{what}: {done[0]}/{len(jobs)} ({done[0] / elapsed:.0f}/s)")

    reporter = asyncio.create_task(report()) if what else None
    try:
        return await asyncio.gather(*(one(j) for j in jobs))
    finally:
        if reporter is not None:
            reporter.cancel()


def first_steps(db: Path) -> dict[str, datetime]:
    """Per incident, when its first revert step was recorded: one query over the store, whatever N is."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT incident_id, MIN(at) FROM audit_events "
                            "WHERE kind IN ('stage_applied', 'stage_skipped') GROUP BY incident_id").fetchall()
    return {incident: datetime.fromisoformat(at) for incident, at in rows}


def waiting_at_gate(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return {r[0] for r in conn.execute("SELECT incident_id FROM incidents WHERE phase = 'awaiting_decision'")}


async def at_gate(db: Path, ids: set[str], timeout: float) -> float:
    started = last = time.perf_counter()
    while True:
        waiting = len(ids & await asyncio.to_thread(waiting_at_gate, db))
        if waiting == len(ids):
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"only {waiting} of {len(ids)} incidents reached the gate in {timeout:g} s")
        if len(ids) > 1 and time.perf_counter() - last >= 5:
            progress(f"at the approval gate: {waiting}/{len(ids)}")
            last = time.perf_counter()
        await asyncio.sleep(1)


async def approve_in_waves(service: IncidentService, db: Path, ids: list[str], wave: int, timeout: float,
                           concurrency: int) -> list[float]:
    """Approve ``wave`` incidents at a time, the next wave once the previous one took its first revert steps.

    Everything an approved incident does next (hold its flag, read it, write the first cohort) is a workflow
    task for that incident; when more incidents move at once than the worker caches, each task first replays
    the incident's history in a fresh sandbox, and the worker spends its time replaying (measured: 30 at once
    with a cache of 20 took ~15 s each). A wave no larger than the cache keeps every step a cache hit.
    """
    latencies: list[float] = []
    for start in range(0, len(ids), wave):
        latencies += await approve_all(service, db, ids[start:start + wave], timeout, concurrency)
        progress(f"approved and first step taken: {start + len(ids[start:start + wave])}/{len(ids)}")
    return latencies


async def approve_all(service: IncidentService, db: Path, ids: list[str], timeout: float,
                      concurrency: int = 32) -> list[float]:
    """Approve every incident (``concurrency`` decisions in flight) and return, per incident, the seconds from
    sending its decision to its first revert step (the first cohort written on its own flag)."""
    sent: dict[str, datetime] = {}

    retried = [0]

    def job(wf_id: str):
        async def run() -> None:
            sent[wf_id] = datetime.now(UTC)
            request = DecisionRequest(user=APPROVER, verdict=Verdict.APPROVE, via="api", groups=["S05MLONCALL"],
                                      reason="bench")
            for attempt in range(10):
                try:  # the same update id: a retry of a decision that did land counts once
                    await service.decide(wf_id, request, update_id=f"bench-approve-{wf_id}")
                    return
                except TemporalUnavailable:  # the worker did not take it within the RPC timeout: overloaded
                    retried[0] += 1
                    if attempt == 9:
                        raise
        return run

    await gather_limited(concurrency, [job(i) for i in ids], "approved" if len(ids) > 1 else "")
    if retried[0]:
        progress(f"{retried[0]} decision(s) timed out waiting for the busy worker and were sent again")
    deadline = time.perf_counter() + timeout
    wanted = set(ids)
    last = time.perf_counter()
    while True:
        steps = await asyncio.to_thread(first_steps, db)
        taken = wanted & steps.keys()
        if len(taken) == len(wanted):
            return [(steps[i] - sent[i]).total_seconds() for i in ids]
        if time.perf_counter() > deadline:
            raise SystemExit(f"{len(wanted) - len(taken)} approved incidents never took their first revert step")
        if len(ids) > 1 and time.perf_counter() - last >= 5:
            progress(f"first revert step taken: {len(taken)}/{len(ids)}")
            last = time.perf_counter()
        await asyncio.sleep(0.5)


async def main(incidents: int, cache: int, open_concurrency: int, decide_concurrency: int, wave: int,
               approve: int) -> None:
    byte_compile()
    wall = time.perf_counter()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            template = gate_playbook()
            playbooks = [own_flag(template, n) for n in range(incidents + 1)]  # the last: the one alone
            flags = flag_service([p.playbook.rollback.targets[0].key for p in playbooks])
            db = state / "unship.db"
            store = SqliteIncidentStore(db)
            acts = RollbackActivities(flags, ScriptedSignalSource({}), LogNotifier(), store)
            settings = Settings(state_dir=state, task_queue="bench-scale")
            service = IncidentService(client, settings, {p.playbook.name: p for p in playbooks}, store=store)
            names = [p.playbook.name for p in playbooks]
            async with Worker(client, task_queue=settings.task_queue, workflows=list(INCIDENT_WORKFLOWS),
                              activities=acts.all(), workflow_runner=workflow_runner(),
                              max_cached_workflows=cache):
                # one incident alone: the reference for decision -> first cohort
                await service.trigger(names[-1], "alone", started_by="bench")
                await at_gate(db, {incident_id(names[-1], "alone")}, 60)
                alone = await approve_all(service, db, [incident_id(names[-1], "alone")], 60)

                base_rss = rss_mib()
                started = time.perf_counter()
                await gather_limited(open_concurrency, [lambda n=n: service.trigger(n, "r1", started_by="bench")
                                                        for n in names[:-1]], "opened")
                trigger_s = time.perf_counter() - started
                progress(f"opened {incidents} in {trigger_s:.0f} s")
                ids = [incident_id(n, "r1") for n in names[:-1]]
                settle_s = await at_gate(db, set(ids), 60 + incidents)
                unship_rss, server_rss = rss_mib(), rss_mib(server.pid or "self")
                progress(f"all {incidents} at the gate; RSS unship {unship_rss:.0f} MiB, server {server_rss:.0f} MiB")

                transport = httpx.ASGITransport(app=create_app(service, settings))
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                    first, followed = [], []
                    cursor = None
                    for _ in range(50):
                        t0 = time.perf_counter()
                        page = await http.get("/v1/incidents", params={"limit": 100})
                        first.append(time.perf_counter() - t0)
                        assert page.status_code == 200, page.text
                        assert len(page.json()["incidents"]) == min(100, incidents + 1), page.text
                        cursor = cursor or page.json()["next_cursor"]
                        t0 = time.perf_counter()
                        nxt = await http.get("/v1/incidents", params={"limit": 100, "cursor": cursor})
                        followed.append(time.perf_counter() - t0)
                        assert nxt.status_code == 200, nxt.text
                    # where a page's time goes: Temporal visibility (the list) and the store (phases by id)
                    visibility, enrich = [], []
                    query = f'WorkflowType IN ("{RollbackWorkflow.__name__}", "{ReleaseWorkflow.__name__}")'
                    for _ in range(50):
                        t0 = time.perf_counter()
                        listing = client.list_workflows(query, page_size=100)
                        await listing.fetch_next_page()
                        visibility.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        await store.incidents_by_id([e.id for e in listing.current_page or ()])
                        enrich.append(time.perf_counter() - t0)

                loads.append(os.getloadavg()[0])
                progress("listed; approving")
                approve_started = time.perf_counter()
                loaded = await approve_in_waves(service, db, ids[:approve], wave, 600 + wave, decide_concurrency)
                approve_s = time.perf_counter() - approve_started
                peak_rss = rss_mib()
                loads.append(os.getloadavg()[0])
    ms = 1000
    print(header("scale"))
    print("load average (1 min) at start / before approving / at the end: " + " / ".join(f"{v:.1f}" for v in loads)
          + f" on {os.cpu_count()} CPUs (the machine is shared: figures are provisional under load)")
    print(f"incidents: {incidents} at the approval gate, one worker, max_cached_workflows={cache}, embedded dev "
          "server (SQLite), one flag per incident in an in-process HTTP flag service (HttpProvider) + SQLite store")
    print(f"opened through IncidentService ({open_concurrency} concurrent): {incidents / trigger_s:.0f}/s; all at the gate "
          f"{settle_s:.0f} s after the last was opened")
    print(f"RSS before opening (worker up, one incident done, {incidents + 1} playbooks loaded): unship process "
          f"{base_rss:.0f} MiB")
    print(f"RSS with {incidents} at the gate: unship process {unship_rss:.0f} MiB, Temporal dev server "
          f"{server_rss:.0f} MiB; unship after approving all: {peak_rss:.0f} MiB")
    print(f"GET /v1/incidents?limit=100 (first page): p50 {percentile(first, .5) * ms:.1f} ms  p95 "
          f"{percentile(first, .95) * ms:.1f} ms;  by cursor: p50 {percentile(followed, .5) * ms:.1f} ms  p95 "
          f"{percentile(followed, .95) * ms:.1f} ms")
    print(f"  of which Temporal visibility (list_workflows, page of 100): p50 {percentile(visibility, .5) * ms:.1f} ms  "
          f"p95 {percentile(visibility, .95) * ms:.1f} ms;  store phases by id: p50 {percentile(enrich, .5) * ms:.1f} ms"
          f"  p95 {percentile(enrich, .95) * ms:.1f} ms")
    print(f"decision -> first cohort written (own flag), one incident alone: {alone[0] * ms:.0f} ms")
    which = f"all {incidents}" if approve >= incidents else f"{approve} of the {incidents}"
    print(f"decision -> first cohort, {which} approved in waves of {wave} ({decide_concurrency} concurrent "
          f"decisions, "
          f"{approve_s:.0f} s in all): p50 {percentile(loaded, .5) * ms:.0f} ms  p95 "
          f"{percentile(loaded, .95) * ms:.0f} ms")
    print(f"whole run: {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--cache", type=int, default=1000, help="the worker's max_cached_workflows")
    parser.add_argument("--open-concurrency", type=int, default=64, help="triggers in flight while opening")
    parser.add_argument("--decide-concurrency", type=int, default=32, help="decisions in flight while approving")
    parser.add_argument("--wave", type=int, default=None,
                        help="approve this many at a time, the next wave when they took their first step "
                             "(default: half the cache, at most 100; --wave N for all at once)")
    parser.add_argument("--approve", type=int, default=None,
                        help="approve only the first N of the open incidents (default: all)")
    args = parser.parse_args()
    asyncio.run(main(args.incidents, args.cache, args.open_concurrency, args.decide_concurrency,
                     args.wave or max(1, min(100, args.cache // 2)), args.approve or args.incidents))
