"""Live updates as server-sent events: the incident store is watched and each change is pushed to the open
pages as ready-to-swap HTML (htmx's SSE extension swaps it in; no page reload).

An incident page asks for the audit events numbered after the last one it shows, so a reconnect (the browser
resends ``Last-Event-ID``) never repeats or skips one. The list page is told when any listed incident changed.
A stream ends when the client goes away or the server stops (``stopping``), so Ctrl-C never waits on a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request

POLL_SECONDS = 0.15
"""How often an open page's stream looks at the store: well inside the 500 ms a change may take to show."""
HEARTBEAT_SECONDS = 15.0
"""A comment line this often keeps proxies from closing an idle stream."""


def sse(event: str, data: str, event_id: str | None = None) -> str:
    """One server-sent event; every line of ``data`` gets its own ``data:`` field (the spec joins them)."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"


async def watch(request: Request, stopping: asyncio.Event,
                step: Callable[[], Awaitable[list[str]]]) -> AsyncIterator[str]:
    """Run ``step`` every ``POLL_SECONDS`` and yield the events it returns, until the client or server leaves."""
    yield "retry: 2000\n\n"
    idle = 0.0
    while not stopping.is_set():
        if await request.is_disconnected():
            return
        events = await step()
        for event in events:
            yield event
        idle = 0.0 if events else idle + POLL_SECONDS
        if idle >= HEARTBEAT_SECONDS:
            idle = 0.0
            yield ": keep-alive\n\n"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), POLL_SECONDS)
