"""The Temporal activities of unship: every side effect a rollback workflow asks for.

``RollbackActivities`` binds the adapters (flags, signals, chat, incident store, integrity checks) to the
activity names the workflows call. Errors keep their classification: a configuration error reaches a person
at once (non-retryable), anything that may heal is retried by the workflow's retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import metrics
from activities.contracts import (
    AuditBatch,
    ChatNotifier,
    CohortChange,
    CohortResult,
    FlagProvider,
    HoldResult,
    IncidentActivities,
    IncidentStore,
    IntegrityRequest,
    IntegrityResult,
    Measurement,
    MessageRef,
    Notification,
    PollRequest,
    PollResult,
    ReadbackRequest,
    ReviewDocument,
    ReviewRequest,
    ServedReleaseReader,
    ServedResult,
    ServedState,
    SignalObservation,
    SignalSource,
    TargetHold,
    TargetState,
)
from activities.integrity import READBACK_TOLERANCE, IntegrityChecker
from activities.routing import FlagRouter, hold_key
from playbooks.models import Signal
from playbooks.rendering import render_message, render_review

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0


class RollbackActivities(IncidentActivities):
    """The activities, as bound methods over one set of adapters (``all()`` gives them to the Worker)."""

    def __init__(
        self,
        flags: FlagProvider,
        signals: SignalSource,
        chat: ChatNotifier,
        store: IncidentStore,
        integrity: IntegrityChecker | None = None,
        review_dir: Path | None = None,
    ) -> None:
        self.flags = flags
        self.signals = signals
        self.chat = chat
        self.store = store
        self.audit_metrics = metrics.AuditMetrics()
        self.integrity = integrity or IntegrityChecker(flags, signals)
        self.review_dir = review_dir

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """The bound activity methods, for ``Worker(activities=...)``."""
        return [self.poll_signals, self.apply_cohort, self.read_cohort, self.check_integrity, self.notify,
                self.record_audit, self.write_review, self.hold_targets, self.release_targets, self.served_release]

    @activity.defn(name="poll_signals")
    async def poll_signals(self, req: PollRequest) -> PollResult:
        """Observe every signal concurrently.

        A source that fails is "not measured" (NO_DATA with the error as detail), never "measured bad"; only
        a non-retryable (configuration) error propagates, because only a person can fix it.
        """
        _count_retry("signals")
        observations = await asyncio.gather(*(self._observe(signal, req) for signal in req.signals))
        return PollResult(observations=list(observations))

    async def _observe(self, signal: Signal, req: PollRequest) -> SignalObservation:
        try:
            return await self.signals.observe(signal, req)
        except ApplicationError as exc:
            if exc.non_retryable:
                raise
            detail = f"signal source failed: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - an unmeasured signal must never stop the other signals
            detail = f"signal source failed: {type(exc).__name__}: {exc}"
        log.warning("poll %s/%s: %s", req.incident_id, signal.name, detail)
        return SignalObservation(signal=signal.name, category=signal.category.value, value=None,
                                 threshold=str(signal.threshold), measurement=Measurement.NO_DATA, detail=detail,
                                 observed_at=datetime.now(UTC))

    @activity.defn(name="apply_cohort")
    async def apply_cohort(self, req: CohortChange) -> CohortResult:
        """Write the absolute split to each target in order, reading each back before the next."""
        _count_retry("flags")
        states: list[TargetState] = []
        applied = False
        for index, target in enumerate(req.targets):
            activity.heartbeat(index)
            wrote = await self.flags.set_previous_percent(target, req.previous_percent, req.idempotency_key)
            applied = applied or wrote
            actual = await self.flags.get_previous_percent(target)
            if actual is None or abs(actual - req.previous_percent) > READBACK_TOLERANCE:
                shown = "an unreadable split" if actual is None else f"{actual:g}%"
                raise ApplicationError(
                    f"read-back mismatch: {target.ref} shows {shown} on the previous model after writing "
                    f"{req.previous_percent:g}% (key {req.idempotency_key}); will retry",
                    type="unship.readback_mismatch",
                    non_retryable=False,
                )
            states.append(TargetState(target=target.ref, previous_percent=actual,
                                      detail="written" if wrote else "already applied"))
        activity.heartbeat(len(req.targets))
        return CohortResult(states=states, applied=applied)

    @activity.defn(name="read_cohort")
    async def read_cohort(self, req: ReadbackRequest) -> CohortResult:
        """Read every target's current split; an unreadable split is None with the reason."""
        states = []
        for target in req.targets:
            value = await self.flags.get_previous_percent(target)
            states.append(TargetState(target=target.ref, previous_percent=value,
                                      detail="" if value is not None else "the split cannot be read as one share"))
        return CohortResult(states=states, applied=False)

    @activity.defn(name="hold_targets")
    async def hold_targets(self, req: TargetHold) -> HoldResult:
        """Hold every target for the incident unless another active incident holds one (then: who)."""
        found = await self.store.hold_targets(req.incident_id, [hold_key(t) for t in req.targets])
        if found is None:
            return HoldResult(held=True)
        return HoldResult(held=False, holder=found[0], target=found[1])

    @activity.defn(name="release_targets")
    async def release_targets(self, req: TargetHold) -> None:
        """Let go of the incident's targets (idempotent)."""
        await self.store.release_targets(req.incident_id)

    @activity.defn(name="served_release")
    async def served_release(self, req: ReadbackRequest) -> ServedResult:
        """Which candidate release each target serves, from the provider when it can tell."""
        states = []
        for target in req.targets:
            provider = self.flags.provider_for(target) if isinstance(self.flags, FlagRouter) else self.flags
            if isinstance(provider, ServedReleaseReader):
                release, evidence = await provider.served_release(target)
            else:
                release, evidence = None, f"the {target.provider} provider cannot say which release it serves"
            states.append(ServedState(target=target.ref, release=release, evidence=evidence))
        return ServedResult(states=states)

    @activity.defn(name="check_integrity")
    async def check_integrity(self, req: IntegrityRequest) -> IntegrityResult:
        """Run the integrity checks; failures are results with evidence, not errors."""
        _count_retry("integrity")
        async with _heartbeating():
            return await self.integrity.run(req)

    @activity.defn(name="notify")
    async def notify(self, req: Notification) -> MessageRef:
        """Render the message for ``req.kind`` with the playbook's templates and send it."""
        _count_retry("chat")
        return await self.chat.send(req, _render_message(req))

    @activity.defn(name="record_audit")
    async def record_audit(self, req: AuditBatch) -> None:
        """Project the incident and its new audit events into the incident store (idempotent); the incident
        metrics are derived from the same events."""
        _count_retry("store")
        try:
            await self.store.write(req)
        except Exception:
            metrics.STORE_WRITE_ERRORS.inc()
            raise
        self.audit_metrics.observe(req)

    @activity.defn(name="write_review")
    async def write_review(self, req: ReviewRequest) -> ReviewDocument:
        """Render the review document, store it, and write it to ``review_dir`` as Markdown when configured."""
        try:
            markdown = render_review(req.status, req.template)
        except ValueError as exc:  # a broken review template: only a person can fix it
            raise ApplicationError(f"review of {req.incident_id}: {exc}", type="unship.review_template",
                                   non_retryable=True) from exc
        tasks = req.status.get("review_tasks")
        doc = ReviewDocument(incident_id=req.incident_id, markdown=markdown,
                             tasks=list(tasks) if isinstance(tasks, list) else [])
        await self.store.save_review(doc)
        if self.review_dir is not None:
            path = self.review_dir / f"{req.incident_id.replace(':', '_')}.md"
            await asyncio.to_thread(_write_atomically, path, markdown)
        return doc


def _count_retry(system: str) -> None:
    if activity.in_activity() and activity.info().attempt > 1:
        metrics.ACTIVITY_RETRIES.labels(system=system).inc()


def _render_message(req: Notification) -> str:
    """The rendered message; a plain line (saying why) if the template cannot render, so the news still goes out."""
    try:
        return render_message(req.kind.value, req.context, req.template_overrides)
    except Exception as exc:  # noqa: BLE001 - a broken template override must not silence an incident
        log.warning("template for %s message of %s failed: %s", req.kind.value, req.incident_id, exc)
        return _plain_message(req, f"template error: {type(exc).__name__}: {exc}")


def _plain_message(req: Notification, why: str) -> str:
    context = req.context
    return (f"[{req.kind.value}] {req.incident_id}: release {context.get('release', '?')}, "
            f"phase {context.get('phase', '?')} ({why})")


@contextlib.asynccontextmanager
async def _heartbeating(every: float = HEARTBEAT_EVERY) -> AsyncIterator[None]:
    """Heartbeat in the background while a long activity body runs."""
    async def beat() -> None:
        while activity.in_activity():
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

