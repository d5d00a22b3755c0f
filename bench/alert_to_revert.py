"""Alert to first cohort reverted: how long from an accepted trigger until the first flag change lands.

Automatic playbook, no confirmation window, on the embedded Temporal dev server (SQLite) with the real worker
(``workflow_runner()``), the real activities and the flagd file provider. In the same run, on the same server
and worker, the floor: a workflow started the same way (signal-with-start) that runs 2 no-op activities in
sequence, measured to the moment its last activity runs. unship and floor are measured interleaved (one
unship incident, one floor workflow, ...), so a shared machine's load changes hit both alike.

- sequential: ``--incidents`` incidents one after another;
- concurrent: ``--rounds`` bursts of ``--concurrent`` incidents opened at once (each incident has its own
  playbook and flag, as separate services would), against bursts of as many floor workflows; each incident's
  latency is from its own accepted trigger to its own first write, so a queue anywhere shows in p95.

Then, step by step from Temporal's event history, where the time goes in the median incident and the median
floor workflow. ``--write`` replaces this benchmark's tables in BENCHMARKS.md.

    ./dev bench alert_to_revert [--incidents 100] [--concurrent 50] [--rounds 6] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.floor import FINISHED, FloorWorkflow, Instants, noop
from bench.machine import byte_compile, command_line, header, percentile, process_cpu, table
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import Playbook, PlaybookSnapshot, Target
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workflows.messages import Action, OperatorCommand, incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.rollback import RollbackWorkflow
from workflows.sandbox import workflow_runner

FLOOR_ACTIVITIES = 2
ABORT_GROUPS = ("ml-oncall",)
"""The bench's stand-in person is in the on-call group, one of the roles the library playbook lets abort."""
WARM_UP = 5
MS = 1000


class TimedFlags(FlagdFileProvider):
    """The flagd file provider, noting (wall clock) when each incident's first cohort write reached the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.first_write = Instants()

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        applied = await super().set_previous_percent(target, percent, idempotency_key)
        incident, _, step = idempotency_key.rpartition(":revert:")
        if step == "0":
            self.first_write.note(incident)
        return applied


def automatic_playbook(slot: int = 0) -> PlaybookSnapshot:
    """The shipped chat playbook made automatic with no confirmation window; ``slot`` > 0 gives it its own name
    and flag (concurrent incidents of different services)."""
    base = load_playbook(library_folder() / "conversational-agent.yaml").playbook.model_dump()
    base["confirmation"]["window"] = 0
    base["decision"]["mode"] = "automatic"
    for stage in base["rollback"]["stages"]:  # the library's bakes (minutes): the bench aborts after the first write
        stage["verify"] = []
    base["integrity"] = [{"kind": "readback", "name": "readback"}]
    base.pop("data", None)  # the review counts the release's outputs in a database the bench does not have
    if slot:
        base["name"] = f"{base['name']}-{slot}"
        for target in base["rollback"]["targets"]:
            target["key"] = f"{target['key']}-{slot}"
    playbook = Playbook.model_validate(base)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout
    while not await condition():
        if time.perf_counter() > deadline:
            raise SystemExit(f"benchmark stuck: {what} within {timeout:g} s")
        await asyncio.sleep(0.005)


async def _review_idle(review: WorkflowHandle[Any, Any]) -> bool:
    """The review workflow wrote its document and waits on its reminders (nothing pending but timers)."""
    raw = (await review.describe()).raw_description
    return not raw.pending_activities and not raw.HasField("pending_workflow_task")


@dataclass
class Sample:
    workflow_id: str
    accepted: float  # wall clock when signal-with-start answered
    done: float = 0.0  # wall clock of the first flag write (unship) or the last no-op activity (floor)

    @property
    def latency(self) -> float:
        return self.done - self.accepted


@dataclass
class Bench:
    client: Client
    queue: str
    flags: TimedFlags
    service: IncidentService
    snapshots: list[PlaybookSnapshot]
    server_pid: int | None = None
    serial: int = 0
    unship: dict[str, list[Sample]] = field(default_factory=lambda: {"sequential": [], "concurrent": []})
    floor: dict[str, list[Sample]] = field(default_factory=lambda: {"sequential": [], "concurrent": []})
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"unship": [], "floor": []})
    """Per concurrent round: (this process's CPU s, the Temporal server's CPU s) from the first trigger to the
    last first write (unship) or last activity (floor), per incident."""

    def _cpu_now(self) -> tuple[float, float]:
        return time.process_time(), process_cpu(self.server_pid)

    async def rollout(self, slot: int) -> None:
        """A fresh rollout: everyone on the new release (a revert never moves users toward the suspect release,
        so a flag left at 100% would make it skip every stage)."""
        self.serial += 1
        for target in self.snapshots[slot].playbook.rollback.targets:
            await self.flags.set_previous_percent(target, 0, f"bench-rollout-{self.serial}")

    async def incident(self, slot: int) -> Sample:
        """Open one incident (after ``rollout``) and return when its trigger was accepted and its first write."""
        self.serial += 1
        snapshot = self.snapshots[slot]
        release = f"bench-{self.serial}"
        wf_id = incident_id(snapshot.playbook.name, release)
        await self.service.trigger(snapshot.playbook.name, release, started_by="bench")
        sample = Sample(wf_id, time.time())
        sample.done = await self.flags.first_write.wait(wf_id, f"{wf_id} never wrote its first cohort")
        return sample

    async def finish(self, samples: list[Sample]) -> None:
        """Only the first cohort is measured: abort the rest (bake timers have ~1 s resolution on the dev server)
        so the next measurement starts on an idle server."""
        async def stop(sample: Sample) -> None:
            handle = self.client.get_workflow_handle_for(RollbackWorkflow.run, sample.workflow_id)
            # as a person the playbook lets abort (a raw abort signal from anyone but unship is refused)
            await handle.execute_update(RollbackWorkflow.operate, OperatorCommand(
                action=Action.ABORT, user="bench", groups=list(ABORT_GROUPS), reason="measured", via="cli"))
            try:
                status = await asyncio.wait_for(handle.result(), 60)
            except TimeoutError:
                raise SystemExit(f"benchmark stuck: {sample.workflow_id} did not end within 60 s of its abort") from None
            if status.review_workflow_id:  # let the review write its document before the next measurement
                review = self.client.get_workflow_handle(status.review_workflow_id)
                await wait_until(lambda: _review_idle(review), f"{status.review_workflow_id} never settled")
        await asyncio.gather(*(stop(s) for s in samples))

    async def floor_run(self) -> Sample:
        """One floor workflow: 2 activities in sequence, the shape of unship's path to its first write (the target
        hold, then the write that checks the served release, reads the split and compares-and-sets)."""
        self.serial += 1
        wf_id = f"floor-{self.serial}-{uuid.uuid4().hex[:4]}"
        await self.client.start_workflow(FloorWorkflow.run, FLOOR_ACTIVITIES, id=wf_id,
                                         task_queue=self.queue, start_signal="go")
        sample = Sample(wf_id, time.time())
        sample.done = await FINISHED.wait(wf_id, f"{wf_id} never ran its last activity")
        await self.client.get_workflow_handle(wf_id).result()
        return sample

    def _note_cpu(self, what: str, before: tuple[float, float], width: int) -> None:
        after = self._cpu_now()
        self.cpu[what].append(((after[0] - before[0]) / width, (after[1] - before[1]) / width))

    async def sequential(self, incidents: int) -> None:
        for n in range(incidents + WARM_UP):
            await self.rollout(0)
            unship = await self.incident(0)
            await self.finish([unship])
            floor = await self.floor_run()
            if n >= WARM_UP:
                self.unship["sequential"].append(unship)
                self.floor["sequential"].append(floor)

    async def concurrent(self, width: int, rounds: int) -> None:
        for _ in range(rounds):
            for slot in range(1, width + 1):
                await self.rollout(slot)
            before = self._cpu_now()
            unship = await asyncio.gather(*(self.incident(slot) for slot in range(1, width + 1)))
            self._note_cpu("unship", before, width)
            await self.finish(list(unship))
            before = self._cpu_now()
            floor = await asyncio.gather(*(self.floor_run() for _ in range(width)))
            self._note_cpu("floor", before, width)
            self.unship["concurrent"] += unship
            self.floor["concurrent"] += floor


# --- where the time goes: one incident's history -------------------------------------------------------------

def _at(event: HistoryEvent) -> float:
    return event.event_time.ToDatetime().timestamp()


async def steps(client: Client, sample: Sample, what: str) -> list[tuple[str, float]]:
    """The steps from the accepted trigger to ``sample.done``, each with its duration, from the event history.

    Workflow tasks are split into waiting for dispatch (scheduled -> started: the server hands the task to the
    worker's poll) and the worker's turn (started -> completed: activation, commands, the completion RPC);
    activities into dispatch and run; local activities show as the marker the worker records for them.
    """
    events = [e async for e in client.get_workflow_handle(sample.workflow_id).fetch_history_events()]
    scheduled_names: dict[int, str] = {}
    out: list[tuple[str, float]] = []
    last = sample.accepted
    wft = act = 0
    for event in events:
        at = _at(event)
        if at > sample.done:
            break
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            wft += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            out.append((f"workflow task {wft}: waits for dispatch", at - last))
            last = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            out.append((f"workflow task {wft}: worker runs it", at - last))
            last = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled_names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name = scheduled_names.get(event.activity_task_completed_event_attributes.scheduled_event_id, "?")
            if name in ("record_audit", "notify"):
                continue  # background: not on the path
            act += 1
            out.append((f"activity {name}: dispatch + run + completion", at - last))
            last = at
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED and event.marker_recorded_event_attributes.marker_name \
                == "core_local_activity":
            out.append(("(a local activity ran inside the workflow task above)", 0.0))
    out.append((f"{what}: the write itself (dispatch + run)", sample.done - last))
    return out


def _median(samples: list[Sample]) -> Sample:
    ordered = sorted(samples, key=lambda s: s.latency)
    return ordered[len(ordered) // 2]


# --- report ------------------------------------------------------------------------------------------------------

def _stats(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 0.5), percentile(values, 0.95), statistics.fmean(values)


def report(bench: Bench, args: argparse.Namespace,
           breakdowns: dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]], profile: str) -> str:
    rows = []
    ok = True
    for mode in ("sequential", "concurrent"):
        u = [s.latency for s in bench.unship[mode]]
        f = [s.latency for s in bench.floor[mode]]
        if not u:
            continue
        (u50, u95, um), (f50, f95, fm) = _stats(u), _stats(f)
        r50, r95 = u50 / f50, u95 / f95
        ok = ok and r50 <= 1.1 and r95 <= 1.25
        rows.append((_label(mode, args, len(u)), "unship: trigger accepted -> first cohort in the flag file",
                     f"{u50 * MS:.1f} ms", f"{u95 * MS:.1f} ms", f"{um * MS:.1f} ms", f"**{r50:.2f}x**",
                     f"**{r95:.2f}x**"))
        rows.append(("", f"floor: {FLOOR_ACTIVITIES} no-op activities in sequence, started the same way",
                     f"{f50 * MS:.1f} ms", f"{f95 * MS:.1f} ms", f"{fm * MS:.1f} ms", "", ""))
    out = [header("alert_to_revert"), "",
           f"`./dev bench alert_to_revert --incidents {args.incidents} --concurrent {args.concurrent} "
           f"--rounds {args.rounds}` (unship and floor interleaved; {WARM_UP} warm-up incidents not counted)", "",
           table(["load", "measured", "p50", "p95", "mean", "unship/floor p50", "p95"], rows, "llrrrrr"), "",
           f"Target (issue 16): unship <= 1.10x the floor at p50 and <= 1.25x at p95, both loads: "
           f"**{'met' if ok else 'NOT met'}**."]
    if bench.cpu["unship"]:
        (uw, us), (fw, fs) = ((statistics.fmean(w for w, _ in bench.cpu[k]), statistics.fmean(v for _, v in bench.cpu[k]))
                              for k in ("unship", "floor"))
        out += ["", f"CPU per incident while {args.concurrent} were under way at once (from the first trigger to the "
                "last first write, mean of the rounds; the worker and the triggering IncidentService share one process): "
                f"unship process {uw * MS:.1f} ms against the floor's {fw * MS:.1f} ms ({uw / fw:.1f}x), Temporal "
                f"server {us * MS:.1f} ms against {fs * MS:.1f} ms ({us / fs:.1f}x)."]
    for mode, (unship_steps, floor_steps) in breakdowns.items():
        out += ["", f"Where the time goes, {_label(mode, args, len(bench.unship[mode]))}: the median incident and "
                "the median floor workflow, step by step from their event histories, from the accepted trigger:", ""]
        width = max(len(unship_steps), len(floor_steps))
        pad: list[tuple[str, float | None]] = [("", None)] * width
        step_rows = []
        for (un, ud), (fn, fd) in zip((unship_steps + pad)[:width], (floor_steps + pad)[:width], strict=True):
            step_rows.append((un, "" if ud is None else f"{ud * MS:.1f}", fn, "" if fd is None else f"{fd * MS:.1f}"))
        step_rows.append(("**total**", f"**{sum(d for _, d in unship_steps) * MS:.1f}**", "**total**",
                          f"**{sum(d for _, d in floor_steps) * MS:.1f}**"))
        out.append(table(["unship step", "ms", "floor step", "ms"], step_rows, "lrlr"))
    if profile:
        out += ["", "Worker profile of the sequential unship incidents (cProfile, own time, top functions):", "",
                "```", profile.rstrip(), "```"]
    return "\n".join(out)


def _label(mode: str, args: argparse.Namespace, n: int) -> str:
    return (f"sequential, {n} incidents" if mode == "sequential" else
            f"{args.concurrent} at once x {args.rounds} rounds ({n} incidents)")


@contextlib.contextmanager
def profiled(enabled: bool, sink: list[str]):
    if not enabled:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        sink.append("\n".join(line for line in text.getvalue().splitlines()
                               if line.strip() and not line.startswith("   Ordered by")))


async def measure(args: argparse.Namespace) -> str:
    byte_compile()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            flags = TimedFlags(state / "flags.json")
            snapshots = [automatic_playbook(slot) for slot in range(args.concurrent + 1)]
            for snapshot in snapshots:
                for target in snapshot.playbook.rollback.targets:
                    await flags.ensure_flag(target)
            acts = RollbackActivities(flags, ScriptedSignalSource({}), LogNotifier(),
                                      SqliteIncidentStore(state / "unship.db"))
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            settings = Settings(state_dir=state, task_queue=queue)
            service = IncidentService(client, settings, {s.playbook.name: s for s in snapshots})
            bench = Bench(client, queue, flags, service, snapshots, server_pid=server.pid)
            profile: list[str] = []
            async with Worker(client, task_queue=queue, workflows=[*INCIDENT_WORKFLOWS, FloorWorkflow],
                              activities=[*acts.all(), noop], workflow_runner=workflow_runner()):
                with profiled(args.profile, profile):
                    await bench.sequential(args.incidents)
                if args.concurrent:
                    await bench.concurrent(args.concurrent, args.rounds)
                breakdowns = {mode: (await steps(client, _median(bench.unship[mode]), "unship"),
                                     await steps(client, _median(bench.floor[mode]), "floor"))
                              for mode in ("sequential", "concurrent") if bench.unship[mode]}
    return report(bench, args, breakdowns, profile[0] if profile else "")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--incidents", type=int, default=100, help="sequential incidents measured (>= 100 for the record)")
    p.add_argument("--concurrent", type=int, default=50, help="incidents opened at once per round (0: skip)")
    p.add_argument("--rounds", type=int, default=6,
                   help="rounds of concurrent incidents (a burst moves from round to round: 6 for the record)")
    p.add_argument("--profile", action="store_true", help="profile the worker during the sequential incidents")
    p.add_argument("--write", action="store_true", help="replace this benchmark's tables in BENCHMARKS.md")
    return p


RECORD = ["--incidents", "100", "--concurrent", "50", "--rounds", "6"]
"""The arguments ``./dev bench all`` records with."""


if __name__ == "__main__":
    command_line("alert_to_revert", parser(), measure)
