"""Scheduled rehearsals: the ``run_rehearsal`` activity and the ``unship rehearse`` commands.

``unship rehearse schedule SCENARIO --every 1d`` creates a Temporal Schedule ``unship-rehearsal:<scenario>``
that starts ``RehearsalWorkflow`` on the worker's task queue; the worker reads the scenario file when the
rehearsal runs (so an edited playbook is what gets rehearsed) and posts the result to the playbook's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from temporalio import activity

from workers.settings import Settings
from workflows.rehearsal import RehearsalInput, RehearsalSummary

SCHEDULE_PREFIX = "unship-rehearsal:"


@activity.defn(name="run_rehearsal")
async def run_rehearsal(input: RehearsalInput) -> RehearsalSummary:
    """Run the scenario in-process on its own time-skipping server and summarize it (never raises for a
    failing or invalid scenario: that is the rehearsal's finding)."""
    from playbooks.loader import PlaybookError
    from playbooks.scenarios import load_scenario
    from workers.tabletop import run_time_skipping

    try:
        loaded = load_scenario(input.scenario_path)
    except PlaybookError as exc:
        return RehearsalSummary(scenario=Path(input.scenario_path).name, error=f"invalid scenario: {exc}")
    comms = loaded.snapshot.playbook.communications

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(5)

    beater = asyncio.create_task(beat())
    try:
        result = (await run_time_skipping([loaded]))[0]
    except Exception as exc:  # noqa: BLE001 - reported to the channel as the rehearsal's finding
        return RehearsalSummary(scenario=loaded.name, playbook=loaded.snapshot.playbook.name, channel=comms.channel,
                                release=loaded.scenario.release, error=f"{type(exc).__name__}: {exc}",
                                templates=comms.templates)
    finally:
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater
    data = result.to_json()
    figures = {k: data[k] for k in ("detected_at_s", "decided_at_s", "first_revert_at_s", "full_revert_at_s",
                                    "exposure_user_minutes") if data[k] is not None}
    return RehearsalSummary(scenario=result.scenario, playbook=result.playbook, channel=comms.channel,
                            release=loaded.scenario.release, outcome=result.outcome, passed=result.passed,
                            figures=figures, expectations=data["expectations"], templates=comms.templates)


def schedule_id(scenario: str) -> str:
    return SCHEDULE_PREFIX + scenario


async def create_schedule(client: Any, settings: Settings, scenario_path: str, every: Any) -> str:
    """Create (or replace) the schedule for ``scenario_path``; returns its id."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleSpec,
    )

    from playbooks.scenarios import load_scenario
    from workflows.rehearsal import RehearsalWorkflow

    loaded = load_scenario(scenario_path)  # refuse to schedule an invalid scenario
    sid = schedule_id(loaded.name)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            RehearsalWorkflow.run,
            RehearsalInput(scenario_path=str(Path(scenario_path).resolve()), schedule_id=sid),
            id=f"{sid}:run", task_queue=settings.task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
    )
    try:
        await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(sid).delete()
        await client.create_schedule(sid, schedule)
    return sid


async def list_schedules(client: Any) -> list[dict[str, Any]]:
    """The rehearsal schedules: id, scenario path, cadence, next run."""
    out = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(SCHEDULE_PREFIX):
            continue
        desc = await client.get_schedule_handle(entry.id).describe()
        args = list(getattr(desc.schedule.action, "args", []))  # described schedules carry raw payloads
        path = "?"
        if args:
            with contextlib.suppress(Exception):
                [decoded] = await client.data_converter.decode(args[:1], [RehearsalInput])
                path = decoded.scenario_path
        every = [str(i.every) for i in desc.schedule.spec.intervals]
        next_runs = desc.info.next_action_times[:1]
        out.append({"id": entry.id, "scenario": path, "every": ", ".join(every),
                    "next": next_runs[0].isoformat() if next_runs else None})
    return out


async def schedule_command(settings: Settings, scenario_path: str, every_text: str) -> int:
    from playbooks.models import parse_duration
    from workers.client import connect

    try:
        every = parse_duration(every_text)
    except ValueError as exc:
        print(f"--every: {exc}")
        return 2
    if not every or every.total_seconds() < 60:  # type: ignore[union-attr]
        print("--every: rehearse at most once a minute")
        return 2
    client = await connect(settings)
    sid = await create_schedule(client, settings, scenario_path, every)
    print(f"scheduled {sid}: every {every_text}, results go to the playbook's channel")
    return 0


async def list_command(settings: Settings) -> int:
    from workers.client import connect

    rows = await list_schedules(await connect(settings))
    if not rows:
        print("no scheduled rehearsals")
    for row in rows:
        print(f"{row['id']}  every {row['every']}  next {row['next'] or '-'}  {row['scenario']}")
    return 0


async def delete_command(settings: Settings, name: str) -> int:
    from temporalio.service import RPCError

    from workers.client import connect

    client = await connect(settings)
    sid = name if name.startswith(SCHEDULE_PREFIX) else schedule_id(name)
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as exc:
        print(f"no schedule {sid}: {exc.message}")
        return 4
    print(f"deleted {sid}")
    return 0
