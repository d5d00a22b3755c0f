"""The test helpers that keep a failing or hanging workflow test from blocking the shared time-skipping server."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.support.temporal import SIMULATED_LIMIT, workflow_result


@workflow.defn(sandboxed=False)
class Forever:
    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.sleep(timedelta(days=1))


@workflow.defn(sandboxed=False)
class FiveDays:
    @workflow.run
    async def run(self) -> str:
        await workflow.sleep(timedelta(days=5))
        return "done"


async def test_a_workflow_that_never_ends_fails_at_its_bound_and_time_still_skips_for_the_next(
        time_skipping_env: WorkflowEnvironment) -> None:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(time_skipping_env.client, task_queue=queue, workflows=[Forever, FiveDays]):
        forever = await time_skipping_env.client.start_workflow(Forever.run, id=f"forever-{queue}", task_queue=queue,
                                                                execution_timeout=SIMULATED_LIMIT)
        with pytest.raises(AssertionError, match="simulated-time bound"):
            await workflow_result(forever)
        assert (await forever.describe()).status is WorkflowExecutionStatus.TIMED_OUT
        # a wait cut short by the real-time bound terminates the workflow...
        stuck = await time_skipping_env.client.start_workflow(Forever.run, id=f"stuck-{queue}", task_queue=queue)
        with time_skipping_env.auto_time_skipping_disabled(), pytest.raises(AssertionError, match="real time"):
            await workflow_result(stuck, real=0.5)
        assert (await stuck.describe()).status is WorkflowExecutionStatus.TERMINATED
        # ...and the next workflow on the same server still gets its five days skipped
        week = await time_skipping_env.client.start_workflow(FiveDays.run, id=f"week-{queue}", task_queue=queue,
                                                             execution_timeout=SIMULATED_LIMIT)
        assert await workflow_result(week) == "done"


pytest_plugins = ["pytester"]


def test_a_hanging_test_fails_at_its_timeout_and_the_next_test_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_hang="""
        import threading

        def test_hangs():
            threading.Event().wait()  # never set: a hang, ended by pytest-timeout

        def test_next():
            assert True
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "timeout=2")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])
