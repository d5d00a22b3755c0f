"""The floor: the cheapest workflow the same server can run with the same number of activities.

Kept in its own module so the workflow sandbox can import it (a script's ``__main__`` cannot be re-imported).
"""

from __future__ import annotations

import time
from datetime import timedelta

from temporalio import activity, workflow

# Wall-clock instants at which each floor workflow's last activity ran, by workflow id (same process).
FINISHED: dict[str, float] = {}


@activity.defn
async def noop(marker: str) -> None:
    """Does nothing but note when it ran (the last one of a workflow is the floor's "flag change")."""
    if marker:
        FINISHED[marker] = time.perf_counter()


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
