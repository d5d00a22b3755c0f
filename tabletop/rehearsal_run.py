"""The activity behind a scheduled rehearsal: run one scenario in-process on a time-skipping server of its own
and summarize what it found (``RehearsalWorkflow`` posts the summary to the playbook's channel)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity

from playbooks.loader import PlaybookError
from tabletop.runner import run_time_skipping
from tabletop.scenarios import load_scenario


class RehearsalInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario_path: str = Field(description="scenario file, read by the worker at run time")
    schedule_id: str | None = None


class RehearsalSummary(BaseModel):
    """What a rehearsal found (also the workflow's result)."""

    model_config = ConfigDict(extra="forbid")

    scenario: str
    playbook: str = ""
    channel: str = "#unship-rehearsals"
    release: str = ""
    outcome: str | None = None
    passed: bool = False
    figures: dict[str, Any] = Field(default_factory=dict)
    expectations: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None
    templates: dict[str, str] = Field(default_factory=dict)


@activity.defn(name="run_rehearsal")
async def run_rehearsal(input: RehearsalInput) -> RehearsalSummary:
    """Run the scenario in-process on its own time-skipping server and summarize it (never raises for a
    failing or invalid scenario: that is the rehearsal's finding)."""

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


