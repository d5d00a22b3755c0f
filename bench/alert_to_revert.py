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
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier  # noqa: E402
from activities.flagd import FlagdFileProvider  # noqa: E402
from activities.rollback import RollbackActivities  # noqa: E402
from activities.scripted import ScriptedSignalSource  # noqa: E402
from activities.store import SqliteIncidentStore  # noqa: E402
from bench.floor import FINISHED, FloorWorkflow, noop  # noqa: E402
from playbooks.loader import content_hash, library_folder, load_playbook  # noqa: E402
from playbooks.models import Playbook, PlaybookSnapshot  # noqa: E402
from workers.service import IncidentService  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.temporal_server import EmbeddedTemporal, free_port  # noqa: E402
from workflows.messages import incident_id  # noqa: E402
from workflows.release import ReleaseWorkflow  # noqa: E402
from workflows.review import ReviewWorkflow  # noqa: E402
from workflows.rollback import RollbackWorkflow  # noqa: E402


class TimedFlags(FlagdFileProvider):
    """The flagd file provider, noting when each incident's first cohort write reached the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.first_write: dict[str, float] = {}

    async def set_previous_percent(self, target, percent, idempotency_key):  # noqa: ANN001
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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def activities_before_first_write(client: Client, workflow_id: str) -> int:
    """Activities the rollback scheduled before (and including) its first apply_cohort."""
    count = 0
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            count += 1
            if event.activity_task_scheduled_event_attributes.activity_type.name == "apply_cohort":
                return count
    return count


async def main(incidents: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            flags = TimedFlags(state / "flags.json")
            snapshot = automatic_playbook()
            await flags.ensure_flag(snapshot.playbook.rollback.targets[0])
            acts = RollbackActivities(flags, ScriptedSignalSource({}), LogNotifier(),
                                      SqliteIncidentStore(state / "unship.db"))
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            settings = Settings(state_dir=state, task_queue=queue)
            service = IncidentService(client, settings, {snapshot.playbook.name: snapshot})
            latencies: list[float] = []
            async with Worker(client, task_queue=queue, workflows=[RollbackWorkflow, ReviewWorkflow, ReleaseWorkflow,
                                                                   FloorWorkflow],
                              activities=[*acts.all(), noop]):
                for n in range(incidents + 5):  # the first 5 warm up and are not counted
                    release = f"bench-{n}"
                    wf_id = incident_id(snapshot.playbook.name, release)
                    await service.trigger(snapshot.playbook.name, release, started_by="bench")
                    accepted = time.perf_counter()
                    while wf_id not in flags.first_write:
                        await asyncio.sleep(0.001)
                    if n >= 5:
                        latencies.append(flags.first_write[wf_id] - accepted)
                    await client.get_workflow_handle(wf_id).result()
                k = await activities_before_first_write(client, incident_id(snapshot.playbook.name, "bench-5"))
                floor: list[float] = []
                for n in range(incidents + 5):
                    wf_id = f"floor-{n}-{uuid.uuid4().hex[:4]}"
                    await client.start_workflow(FloorWorkflow.run, k, id=wf_id, task_queue=queue, start_signal="go")
                    accepted = time.perf_counter()
                    while wf_id not in FINISHED:
                        await asyncio.sleep(0.001)
                    if n >= 5:
                        floor.append(FINISHED[wf_id] - accepted)
    ms = 1000
    print(f"# alert_to_revert  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {platform.machine()}  "
          f"{os.cpu_count()} cores  {_cpu()}  python {platform.python_version()}")
    print(f"incidents: {incidents} (sequential, automatic, no confirmation window, embedded dev server)")
    print(f"activities scheduled up to and including the first flag write: {k}")
    print(f"unship  trigger accepted -> first cohort in flag file: p50 {pct(latencies, .5) * ms:7.1f} ms   "
          f"p95 {pct(latencies, .95) * ms:7.1f} ms   mean {statistics.fmean(latencies) * ms:7.1f} ms")
    print(f"floor   start accepted -> {k}th no-op activity ran:       p50 {pct(floor, .5) * ms:7.1f} ms   "
          f"p95 {pct(floor, .95) * ms:7.1f} ms   mean {statistics.fmean(floor) * ms:7.1f} ms")
    print(f"ratio unship/floor: p50 {pct(latencies, .5) / pct(floor, .5):.2f}x   "
          f"p95 {pct(latencies, .95) / pct(floor, .95):.2f}x")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=100, help="measured incidents (>= 100 for the record)")
    args = parser.parse_args()
    asyncio.run(main(args.incidents))
