"""Awaiting a workflow's result in tests without ever leaving the shared Temporal test server stuck.

Two bounds, both enforced so that a failing test ends cleanly:

- simulated time: start test workflows with ``execution_timeout=SIMULATED_LIMIT`` (``bounded_start``): the
  server itself times the workflow out once that much workflow time has passed, so on the time-skipping server a
  workflow that would never end (a stage retried forever, a gate nobody answers) fails in a second instead of
  spinning through simulated months. (Reading the test server's clock in a loop is no alternative: the server
  holds time skipping while it answers a call, and polling it stopped time from skipping at all.)
- real time: ``workflow_result`` gives up after ``real`` seconds.

On any failure (either bound, an error, a cancelled test) the workflow is terminated before the error
propagates, after the SDK has re-locked time skipping for the cancelled wait: nothing is left running on the
session's time-skipping server, and the next test's clock still skips.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.service import RPCError

SIMULATED_LIMIT = timedelta(days=7)


async def terminate_quietly(handle: WorkflowHandle[Any, Any], reason: str) -> None:
    """Terminate ``handle``'s workflow if it still runs (a finished one is left alone)."""
    try:
        await asyncio.shield(handle.terminate(reason=reason))
    except RPCError:
        pass  # already completed, failed or terminated


async def workflow_result(handle: WorkflowHandle[Any, Any], *, real: float = 60.0) -> Any:
    """``handle.result()`` within ``real`` seconds; the workflow is terminated if the test gets no result."""
    finished = False
    try:
        async with asyncio.timeout(real):
            value = await handle.result()
        finished = True
        return value
    except WorkflowFailureError as err:
        finished = True
        if isinstance(err.cause, WorkflowTimeoutError):
            raise AssertionError(f"workflow {handle.id} was still running at its simulated-time bound "
                                 "(execution timeout)") from err
        raise
    except TimeoutError:
        raise AssertionError(f"workflow {handle.id} gave no result within {real:g}s of real time; "
                             "terminated") from None
    finally:
        if not finished:
            await terminate_quietly(handle, "test ended before the workflow did")
