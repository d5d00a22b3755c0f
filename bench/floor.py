"""The floor: the cheapest workflow the same server can run with the same number of activities.

Kept in its own module so the workflow sandbox can import it (a script's ``__main__`` cannot be re-imported).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import activity, workflow


class Instants:
    """Wall-clock instants by workflow id, noted once, that a coroutine of the same event loop can await
    (no polling: a benchmark's own waiting must not compete with the worker it measures)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}

    def note(self, key: str) -> None:
        if key in self.at:
            return
        self.at[key] = time.time()
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self.at[key])

    async def wait(self, key: str, what: str, timeout: float = 60.0) -> float:
        if key in self.at:
            return self.at[key]
        waiter = self._waiters.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise SystemExit(f"benchmark stuck: {what} within {timeout:g} s") from None


FINISHED = Instants()
"""When each floor workflow's last activity ran (same process)."""


@activity.defn
async def noop(marker: str) -> None:
    """Does nothing but note when it ran (the last one of a workflow is the floor's "flag change")."""
    if marker:
        FINISHED.note(marker)


@workflow.defn
class FloorWorkflow:
    @workflow.signal
    def go(self) -> None:
        """Started by signal-with-start, exactly as alerts start an incident."""

    @workflow.run
    async def run(self, activities: int) -> None:
        for n in range(activities):
            marker = workflow.info().workflow_id if n == activities - 1 else ""
            await workflow.execute_activity(noop, marker, start_to_close_timeout=timedelta(seconds=30))
