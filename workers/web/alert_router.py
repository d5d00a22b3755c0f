"""Alerts to incidents: match playbooks by label, then deliver to Temporal with group commit.

``AlertRouter.route(alerts)`` matches every alert against the loaded playbooks' trigger matchers. A matched
alert goes to the incident workflow of its (playbook, release) through signal-with-start, so however many
alerts arrive, there is one incident per playbook and release. Alerts that match nothing (or name no
usable release) are recorded in ``UnmatchedLog``: counted by reason and kept for inspection, never dropped
silently.

Group commit: alerts for the same workflow that arrive while a send for it is pending (a short window, or a
send already in flight) travel together as one ``AlertBatch`` signal. ``route`` returns only once the batch
holding its alerts has been accepted by Temporal, so the sender's 2xx means "durable", and a crash before
that leaves the sender to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from playbooks.models import PlaybookSnapshot, Severity
from workers.runtime.service import (
    IncidentService,
    InvalidInput,
)
from workflows.messages import Alert, RollbackInput, incident_id

log = logging.getLogger(__name__)

MAX_BATCH = 200  # alerts per signal: keeps one signal far below Temporal's payload limits
MAX_SENDS = 4
"""Signals (group commits) in flight to Temporal at once, across incidents. More would not be accepted sooner:
the server commits them one by one; fewer slots make every lane wait longer and send fuller batches."""

Sender = Callable[[str, PlaybookSnapshot, str, list[Alert]], Awaitable[str]]
"""Delivers alerts for (workflow id, playbook, release); returns the incident they reached (a re-fire after the
incident closed reaches a new one, ``<id>~2``)."""


class UnmatchedAlert(BaseModel):
    """An alert no playbook took, and why."""

    reason: str
    source: str
    name: str
    fingerprint: str
    group_key: str
    labels: dict[str, str]
    received_at: datetime | None


class RouteResult(BaseModel):
    """What became of one request's alerts."""

    accepted: int = 0
    incidents: list[str] = []
    unmatched: int = 0


class UnmatchedLog:
    """Unmatched alerts: a total and per-reason count, and the most recent ones (bounded)."""

    def __init__(self, keep: int = 500) -> None:
        self.total = 0
        self.by_reason: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()
        self.recent: deque[UnmatchedAlert] = deque(maxlen=keep)

    def record(self, alert: Alert, reason: str) -> None:
        self.total += 1
        self.by_reason[reason] += 1
        self.by_source[alert.source] += 1
        self.recent.append(UnmatchedAlert(reason=reason, source=alert.source, name=alert.name,
                                          fingerprint=alert.fingerprint, group_key=alert.group_key,
                                          labels=alert.labels, received_at=alert.received_at))
        log.warning("unmatched %s alert %r (%s): %s", alert.source, alert.name, alert.fingerprint, reason)

    def summary(self, limit: int = 100) -> dict[str, Any]:
        recent = list(self.recent)[-limit:] if limit > 0 else []
        return {"total": self.total, "by_reason": dict(self.by_reason), "by_source": dict(self.by_source),
                "recent": [u.model_dump(mode="json") for u in reversed(recent)]}


@dataclass
class _Lane:
    """Alerts waiting for one workflow, and the callers waiting for them to be durable."""

    snapshot: PlaybookSnapshot
    release: str
    alerts: list[Alert] = field(default_factory=list)
    waiters: list[asyncio.Future[str]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def match(playbooks: dict[str, PlaybookSnapshot], alert: Alert) -> PlaybookSnapshot | None:
    """The one playbook an alert belongs to: the most specific trigger (most matchers), then the name."""
    found = [snap for snap in playbooks.values() if snap.playbook.trigger.matches(alert.labels)]
    if not found:
        return None
    return min(found, key=lambda s: (-len(s.playbook.trigger.matchers), s.playbook.name))


def service_sender(service: IncidentService) -> Sender:
    """Deliver a batch through ``IncidentService.open_incident`` (one signal-with-start; joins a running
    incident), so Temporal errors are mapped to ``ServiceError`` in one place."""

    async def send(workflow_id: str, snapshot: PlaybookSnapshot, release: str, alerts: list[Alert]) -> str:
        arg = RollbackInput(snapshot=snapshot, release=release, started_by=f"alert:{alerts[0].source}")
        return await service.open_incident(arg, alerts)

    return send


class AlertRouter:
    """Match alerts to playbooks and deliver them, coalescing concurrent alerts per incident.

    ``window`` is how long the first alert for an idle incident waits for company (seconds; 0 still
    coalesces everything that arrives while a send for that incident is in flight). At most ``max_sends``
    batches are in flight at once; a lane waiting for a slot keeps collecting its incident's alerts.
    ``batching=False`` sends one signal-with-start per alert (the benchmark's baseline).
    """

    def __init__(
        self,
        playbooks: dict[str, PlaybookSnapshot],
        send: Sender,
        *,
        window: float = 0.005,
        batching: bool = True,
        unmatched: UnmatchedLog | None = None,
        max_sends: int = MAX_SENDS,
    ) -> None:
        self.playbooks = playbooks
        self.send = send
        self.window = window
        self.batching = batching
        self._slots = asyncio.Semaphore(max_sends)
        self.unmatched = unmatched or UnmatchedLog()
        self.signals_sent = 0
        self._lanes: dict[str, _Lane] = {}

    @classmethod
    def for_service(cls, service: IncidentService, **options: Any) -> AlertRouter:
        return cls(service.playbooks, service_sender(service), **options)

    async def route(self, alerts: list[Alert]) -> RouteResult:
        """Deliver ``alerts``; returns once Temporal holds every matched one (raises ``ServiceError`` if not)."""
        result = RouteResult()
        groups: dict[str, tuple[PlaybookSnapshot, str, list[Alert]]] = {}
        for alert in alerts:
            snapshot = match(self.playbooks, alert)
            if snapshot is None:
                self.unmatched.record(alert, "no playbook matches the labels")
                result.unmatched += 1
                continue
            trigger = snapshot.playbook.trigger
            release = alert.labels.get(trigger.release_label, "")
            try:
                IncidentService.check_release(release)
            except InvalidInput:
                why = "missing" if not release else "not a usable release name"
                self.unmatched.record(alert, f"playbook {snapshot.playbook.name}: the "
                                             f"{trigger.release_label!r} label is {why}")
                result.unmatched += 1
                continue
            if trigger.severity_label in alert.labels:
                alert = alert.model_copy(update={"severity": Severity.parse(alert.labels[trigger.severity_label])})
            if alert.received_at is None:
                alert = alert.model_copy(update={"received_at": datetime.now(UTC)})
            workflow_id = incident_id(snapshot.playbook.name, release)
            groups.setdefault(workflow_id, (snapshot, release, []))[2].append(alert)
        reached: list[str] = []
        if groups:
            reached = await asyncio.gather(*(self._submit(wid, *group) for wid, group in groups.items()))
        result.accepted = sum(len(g[2]) for g in groups.values())
        result.incidents = sorted(set(reached))
        return result

    async def _submit(self, workflow_id: str, snapshot: PlaybookSnapshot, release: str,
                      alerts: list[Alert]) -> str:
        if not self.batching:
            reached = workflow_id
            for alert in alerts:
                reached = await self._send(workflow_id, snapshot, release, [alert])
            return reached
        lane = self._lanes.get(workflow_id)
        if lane is None:
            lane = self._lanes[workflow_id] = _Lane(snapshot, release)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        lane.alerts.extend(alerts)
        lane.waiters.append(waiter)
        if lane.task is None:
            lane.task = asyncio.create_task(self._drain(workflow_id, lane))
        # shield: a caller that disconnects must not cancel the batch other callers wait for
        return await asyncio.shield(waiter)

    async def _drain(self, workflow_id: str, lane: _Lane) -> None:
        try:
            if self.window > 0:
                await asyncio.sleep(self.window)
            while lane.alerts:
                # Take the batch only once a send slot is free: under load, lanes wait for a slot and their
                # batches grow (fewer, fuller signals); when idle, nothing waits.
                async with self._slots:
                    alerts, waiters = lane.alerts, lane.waiters
                    lane.alerts, lane.waiters = [], []
                    reached = workflow_id
                    try:
                        for start in range(0, len(alerts), MAX_BATCH):
                            reached = await self._send(workflow_id, lane.snapshot, lane.release,
                                                       alerts[start:start + MAX_BATCH])
                    except Exception as exc:  # noqa: BLE001 - handed to every caller waiting on this batch
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_exception(exc)
                    else:
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_result(reached)
        finally:
            lane.task = None
            if self._lanes.get(workflow_id) is lane and not lane.alerts:
                del self._lanes[workflow_id]

    async def _send(self, workflow_id: str, snapshot: PlaybookSnapshot, release: str, alerts: list[Alert]) -> str:
        reached = await self.send(workflow_id, snapshot, release, alerts)
        self.signals_sent += 1
        return reached
