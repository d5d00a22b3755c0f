"""Rehearsals against real systems: staging mode and scheduled rehearsals on the local Temporal dev server."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from tabletop.rehearsal import RehearsalWorkflow
from tabletop.rehearsal_run import run_rehearsal
from tabletop.runner import run_staging
from tabletop.scenarios import load_scenario, scenario_folder
from tabletop.schedule import create_schedule, list_schedules, schedule_id
from tests.support.stack import make_settings
from workers.cli.rehearse import staging_systems
from workers.runtime.worker import ensure_flagd_flags


async def test_staging_run_moves_the_real_flagd_flag(local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, local_env)
    loaded = load_scenario(scenario_folder() / "emergency-revert-all.scenario.yaml")
    await ensure_flagd_flags(settings, {loaded.snapshot.playbook.name: loaded.snapshot})
    [result] = await run_staging([loaded], local_env.client, staging_systems(settings), speedup=120)
    assert result.outcome == "reverted"
    # at 120x, each real round trip costs scenario seconds: the exact stage timing is the tabletop's job
    assert result.flag_writes[-1] == 100
    flags = json.loads(settings.resolved_flagd_path.read_text())["flags"]
    split = {v[0]: v[1] for v in flags["chat-model"]["targeting"]["fractional"][1:]}
    assert split == {"previous": 100, "candidate": 0}
    # figures come back in scenario time: the revert-all click was scripted at 6 minutes
    assert result.full_revert_at_s is not None and 300 <= result.full_revert_at_s <= 480


async def test_scheduled_rehearsal_posts_its_result(local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, local_env)
    chat = LogNotifier()
    activities = RollbackActivities(ScriptedFlagProvider(), ScriptedSignalSource({}), chat,
                                    SqliteIncidentStore(tmp_path / "x.db"))
    scenario = scenario_folder() / "transient-spike.scenario.yaml"
    async with Worker(local_env.client, task_queue=settings.task_queue, workflows=[RehearsalWorkflow],
                      activities=[activities.notify, run_rehearsal]):
        sid = await create_schedule(local_env.client, settings.task_queue, str(scenario), timedelta(days=1))
        try:
            listed: list = []
            for _ in range(100):  # schedules reach the list through visibility, a moment after creation
                listed = await list_schedules(local_env.client)
                if any(row["id"] == sid for row in listed):
                    break
                await asyncio.sleep(0.1)
            assert any(row["id"] == sid and row["scenario"] == str(scenario.resolve()) for row in listed), listed
            await local_env.client.get_schedule_handle(sid).trigger()
            for _ in range(300):  # the rehearsal runs a whole scenario; wait for its message, not a fixed time
                if any(n.kind.value == "rehearsal" for n, _ in chat.sent):
                    break
                await asyncio.sleep(0.1)
        finally:
            await local_env.client.get_schedule_handle(sid).delete()
    [(note, text)] = [(n, t) for n, t in chat.sent if n.kind.value == "rehearsal"]
    assert note.channel == "#ml-incidents"
    assert "Rehearsal" in text and "transient-spike" in text and "dismissed" in text
    assert sid == schedule_id("transient-spike")
    with pytest.raises(RPCError):  # deleted for good
        await local_env.client.get_schedule_handle(sid).describe()
