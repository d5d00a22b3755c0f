"""Scheduled rehearsals: the Temporal Schedules that start ``RehearsalWorkflow`` on a cadence.

``unship rehearse schedule SCENARIO --every 1d`` creates a Temporal Schedule ``unship-rehearsal:<scenario>``
that starts ``RehearsalWorkflow`` on the worker's task queue; the worker reads the scenario file when the
rehearsal runs (so an edited playbook is what gets rehearsed) and posts the result to the playbook's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
)

from tabletop.rehearsal import RehearsalWorkflow
from tabletop.rehearsal_run import RehearsalInput
from tabletop.scenarios import load_scenario

SCHEDULE_PREFIX = "unship-rehearsal:"


def schedule_id(scenario: str) -> str:
    return SCHEDULE_PREFIX + scenario


async def create_schedule(client: Client, task_queue: str, scenario_path: str, every: timedelta) -> str:
    """Create (or replace) the schedule for ``scenario_path``; returns its id."""
    loaded = load_scenario(scenario_path)  # refuse to schedule an invalid scenario
    sid = schedule_id(loaded.name)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            RehearsalWorkflow.run,
            RehearsalInput(scenario_path=await asyncio.to_thread(os.path.realpath, scenario_path), schedule_id=sid),
            id=f"{sid}:run", task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
    )
    try:
        await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(sid).delete()
        await client.create_schedule(sid, schedule)
    return sid


async def list_schedules(client: Client) -> list[dict[str, Any]]:
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
