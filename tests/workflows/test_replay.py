"""Saved histories must replay on today's workflow code: in-flight incidents survive a deploy.

A failure here means a change altered the commands an old history recorded. Guard the change with
``workflow.patched(...)`` instead of re-recording (see record_histories.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from tests.support.world import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    saved = json.loads(path.read_text())
    return WorkflowHistory.from_json(saved["workflow_id"], saved["history"])


def test_histories_are_saved() -> None:
    assert len(HISTORIES) >= 6  # before and after the "read-split-before-revert" patch


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_saved_history_replays(path: Path) -> None:
    history = load(path)
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


async def test_a_changed_workflow_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay test can fail: a workflow that skips confirmation no longer matches the history."""
    from workflows.rollback import RollbackWorkflow

    async def skip_confirmation(self) -> bool:
        return False

    monkeypatch.setattr(RollbackWorkflow, "_confirm", skip_confirmation)
    path = next(p for p in HISTORIES if p.stem == "rollback_approved_staged_revert")
    # Unsandboxed so the patched class is the one replayed (the sandbox re-imports workflow modules).
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter,
                        workflow_runner=UnsandboxedWorkflowRunner())
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
