"""Alert to first cohort reverted: how long from an accepted trigger until the first flag change lands.

Automatic playbook, no confirmation window, on the embedded Temporal dev server (SQLite) with the real
activities and the flagd file provider. In the same run, the floor: a workflow of the same server that runs
as many no-op activities as the rollback needed before its first flag write. Prints p50/p95 of both and the
ratio; append the output to BENCHMARKS.md with the machine and date.

    ./dev bench alert_to_revert [--incidents 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.floor import FINISHED, FloorWorkflow, noop
from bench.machine import header, percentile
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import Playbook, PlaybookSnapshot
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workflows.messages import Command, incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.rollback import RollbackWorkflow


class TimedFlags(FlagdFileProvider):
    """The flagd file provider, noting when each incident's first cohort write reached the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.first_write: dict[str, float] = {}

    async def set_previous_percent(self, target, percent, idempotency_key):
        applied = await super().set_previous_percent(target, percent, idempotency_key)
        incident, _, step = idempotency_key.rpartition(":revert:")
        if step == "0":
            self.first_write.setdefault(incident, time.perf_counter())
        return applied


def automatic_playbook() -> PlaybookSnapshot:
    base = load_playbook(library_folder() / "conversational-agent.yaml").playbook.model_dump()
    base["confirmation"]["window"] = 0
    base["decision"]["mode"] = "automatic"
    for stage in base["rollback"]["stages"]:
        stage["bake"] = 0.05
        stage["verify"] = []
    base["integrity"] = [{"kind": "readback", "name": "readback"}]
    playbook = Playbook.model_validate(base)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


async def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit(f"benchmark stuck: {what} within {timeout:g} s")
        await asyncio.sleep(0.001)


BACKGROUND = {"record_audit", "notify"}  # delivered by background coroutines, off the critical path


async def activities_before_first_write(client: Client, workflow_id: str) -> tuple[int, int]:
    """Activities the rollback scheduled up to its first apply_cohort: all of them, and those on the path."""
    total = on_path = 0
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            total += 1
            on_path += name not in BACKGROUND
            if name == "apply_cohort":
                break
    return total, on_path


async def measure_floor(client: Client, queue: str, activities: int, incidents: int) -> list[float]:
    floor: list[float] = []
    for n in range(incidents + 5):  # the first 5 warm up and are not counted
        wf_id = f"floor-{activities}-{n}-{uuid.uuid4().hex[:4]}"
        await client.start_workflow(FloorWorkflow.run, activities, id=wf_id, task_queue=queue, start_signal="go")
        accepted = time.perf_counter()
        await wait_for(lambda wf_id=wf_id: wf_id in FINISHED, f"{wf_id} never ran its last activity")
        if n >= 5:
            floor.append(FINISHED[wf_id] - accepted)
    return floor


async def main(incidents: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            flags = TimedFlags(state / "flags.json")
            snapshot = automatic_playbook()
            target = snapshot.playbook.rollback.targets[0]
            await flags.ensure_flag(target)
            acts = RollbackActivities(flags, ScriptedSignalSource({}), LogNotifier(),
                                      SqliteIncidentStore(state / "unship.db"))
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            settings = Settings(state_dir=state, task_queue=queue)
            service = IncidentService(client, settings, {snapshot.playbook.name: snapshot})
            latencies: list[float] = []
            async with Worker(client, task_queue=queue, workflows=[*INCIDENT_WORKFLOWS,
                                                                   FloorWorkflow],
                              activities=[*acts.all(), noop]):
                for n in range(incidents + 5):  # the first 5 warm up and are not counted
                    release = f"bench-{n}"
                    wf_id = incident_id(snapshot.playbook.name, release)
                    # Each incident is a fresh rollout: everyone on the new release (a revert never moves users
                    # toward the suspect release, so a flag left at 100% would make it skip every stage).
                    await flags.set_previous_percent(target, 0, f"bench-rollout-{n}")
                    await service.trigger(snapshot.playbook.name, release, started_by="bench")
                    accepted = time.perf_counter()
                    await wait_for(lambda wf_id=wf_id: wf_id in flags.first_write, f"{wf_id} never wrote its first cohort")
                    if n >= 5:
                        latencies.append(flags.first_write[wf_id] - accepted)
                    # Only the first cohort is measured: abort the rest (bake timers have ~1 s resolution on the
                    # dev server) so the next incident starts on an idle server.
                    handle = client.get_workflow_handle(wf_id)
                    await handle.signal(RollbackWorkflow.abort, Command(by="bench", reason="measured"))
                    await handle.result()
                k, path = await activities_before_first_write(
                    client, incident_id(snapshot.playbook.name, "bench-5"))
                floors = {k: await measure_floor(client, queue, k, incidents)}
                floors.setdefault(path, await measure_floor(client, queue, path, incidents))
    ms = 1000
    print(header("alert_to_revert"))
    print(f"incidents: {incidents} (sequential, automatic, no confirmation window, embedded dev server)")
    print(f"activities scheduled up to and including the first flag write: {k} "
          f"({path} on the critical path; audit and chat run in the background)")
    print(f"unship            trigger accepted -> first cohort in flag file: p50 "
          f"{percentile(latencies, .5) * ms:7.1f} ms   p95 {percentile(latencies, .95) * ms:7.1f} ms   "
          f"mean {statistics.fmean(latencies) * ms:7.1f} ms")
    for n, floor in sorted(floors.items(), reverse=True):
        print(f"floor, {n} no-op activities in sequence, started the same way: p50 {percentile(floor, .5) * ms:7.1f} ms"
              f"   p95 {percentile(floor, .95) * ms:7.1f} ms   mean {statistics.fmean(floor) * ms:7.1f} ms   "
              f"ratio unship/floor p50 {percentile(latencies, .5) / percentile(floor, .5):.2f}x "
              f"p95 {percentile(latencies, .95) / percentile(floor, .95):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=100, help="measured incidents (>= 100 for the record)")
    args = parser.parse_args()
    asyncio.run(main(args.incidents))
