"""Many open incidents on one worker: N incidents waiting at the approval gate, then all approved.

On the embedded Temporal dev server (SQLite) with the real activities (flagd file, SQLite store), one worker with
a bounded workflow cache. Reports: how fast the incidents were opened through the service, the RSS of the unship
process and of the Temporal server with N incidents at the gate, ``GET /v1/incidents`` (page of 100, first page
and a page followed by cursor) p50/p95 through the real app, and decision -> first cohort written (p50/p95) when
all N are approved at once vs with one incident alone. Append the output to BENCHMARKS.md.

    ./dev bench scale [--incidents 10000] [--cache 1000]
"""

from __future__ import annotations

import argparse
import asyncio
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
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.machine import header, percentile
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import Playbook, PlaybookSnapshot
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workers.web.app import create_app
from workflows.messages import DecisionRequest, Verdict, incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.sandbox import workflow_runner

APPROVER = "U05ONCALL7"


def gate_playbook() -> PlaybookSnapshot:
    """The chat playbook, straight to an approval gate that waits for hours; stages bake for an hour, so after
    the first cohort an incident sits still (only the first write is measured)."""
    base = load_playbook(library_folder() / "conversational-agent.yaml").playbook.model_dump()
    base["confirmation"]["window"] = 0
    base["decision"].update({"mode": "approval", "quorum": 1, "timeout": timedelta(hours=10), "escalation": None})
    for stage in base["rollback"]["stages"]:
        stage["bake"] = timedelta(hours=1)
        stage["verify"] = []
    base["integrity"] = [{"kind": "readback", "name": "readback"}]
    playbook = Playbook.model_validate(base)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def gather_limited(limit: int, jobs: list) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(job):
        async with gate:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


async def at_gate(store: SqliteIncidentStore, ids: set[str], timeout: float) -> float:
    started = time.perf_counter()
    while True:
        records = await store.incidents(limit=len(ids) + 100)
        waiting = sum(1 for r in records if r.incident_id in ids and r.phase == "awaiting_decision")
        if waiting == len(ids):
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"only {waiting} of {len(ids)} incidents reached the gate in {timeout:g} s")
        await asyncio.sleep(1)


async def approve_all(service: IncidentService, store: SqliteIncidentStore, ids: list[str],
                      timeout: float) -> list[float]:
    """Approve every incident (32 decisions in flight) and return, per incident, the seconds from sending its
    decision to its first revert step: a cohort written, or skipped because the shared flag already had it."""
    sent: dict[str, datetime] = {}

    def job(wf_id: str):
        async def run() -> None:
            sent[wf_id] = datetime.now(UTC)
            await service.decide(wf_id, DecisionRequest(user=APPROVER, verdict=Verdict.APPROVE, via="api",
                                                        groups=["S05MLONCALL"], reason="bench"))
        return run

    await gather_limited(32, [job(i) for i in ids])
    deadline = time.perf_counter() + timeout
    first: dict[str, float] = {}
    while len(first) < len(ids):
        for wf_id in ids:
            if wf_id in first:
                continue
            step = next((e for e in await store.events(wf_id) if e.kind in ("stage_applied", "stage_skipped")),
                        None)
            if step is not None:
                first[wf_id] = (step.at - sent[wf_id]).total_seconds()
        if time.perf_counter() > deadline:
            raise SystemExit(f"{len(ids) - len(first)} approved incidents never took their first revert step")
        await asyncio.sleep(0.5)
    return [first[i] for i in ids]


async def main(incidents: int, cache: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            flags = FlagdFileProvider(state / "flags.json")
            snapshot = gate_playbook()
            await flags.ensure_flag(snapshot.playbook.rollback.targets[0])
            store = SqliteIncidentStore(state / "unship.db")
            acts = RollbackActivities(flags, ScriptedSignalSource({}), LogNotifier(), store)
            settings = Settings(state_dir=state, task_queue="bench-scale")
            service = IncidentService(client, settings, {snapshot.playbook.name: snapshot}, store=store)
            name = snapshot.playbook.name
            async with Worker(client, task_queue=settings.task_queue, workflows=list(INCIDENT_WORKFLOWS),
                              activities=acts.all(), workflow_runner=workflow_runner(),
                              max_cached_workflows=cache):
                # one incident alone: the reference for decision -> first cohort
                await service.trigger(name, "alone", started_by="bench")
                await at_gate(store, {incident_id(name, "alone")}, 60)
                alone = await approve_all(service, store, [incident_id(name, "alone")], 60)

                releases = [f"r{n:05d}" for n in range(incidents)]
                started = time.perf_counter()
                await gather_limited(64, [lambda r=r: service.trigger(name, r, started_by="bench")
                                          for r in releases])
                trigger_s = time.perf_counter() - started
                ids = [incident_id(name, r) for r in releases]
                settle_s = await at_gate(store, set(ids), 60 + incidents)
                unship_rss, server_rss = rss_mib(), rss_mib(server.pid or "self")

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

                approve_started = time.perf_counter()
                loaded = await approve_all(service, store, ids, 600 + incidents)
                approve_s = time.perf_counter() - approve_started
                peak_rss = rss_mib()
    ms = 1000
    print(header("scale"))
    print(f"incidents: {incidents} at the approval gate, one worker, max_cached_workflows={cache}, embedded dev "
          "server (SQLite), flagd file + SQLite store")
    print(f"opened through IncidentService (64 concurrent): {incidents / trigger_s:.0f}/s; all at the gate "
          f"{settle_s:.0f} s after the last was opened")
    print(f"RSS with {incidents} at the gate: unship process {unship_rss:.0f} MiB, Temporal dev server "
          f"{server_rss:.0f} MiB; unship after approving all: {peak_rss:.0f} MiB")
    print(f"GET /v1/incidents?limit=100 (first page): p50 {percentile(first, .5) * ms:.1f} ms  p95 "
          f"{percentile(first, .95) * ms:.1f} ms;  by cursor: p50 {percentile(followed, .5) * ms:.1f} ms  p95 "
          f"{percentile(followed, .95) * ms:.1f} ms")
    print(f"decision -> first revert step (cohort written, or skipped as the shared flag already had it), one "
          f"incident alone: {alone[0] * ms:.0f} ms")
    print(f"decision -> first revert step, all {incidents} approved at once (32 concurrent decisions, "
          f"{approve_s:.0f} s in all): p50 {percentile(loaded, .5) * ms:.0f} ms  p95 "
          f"{percentile(loaded, .95) * ms:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--cache", type=int, default=1000, help="the worker's max_cached_workflows")
    args = parser.parse_args()
    asyncio.run(main(args.incidents, args.cache))
