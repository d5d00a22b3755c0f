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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities import metrics
from activities.contracts import (
    AuditBatch,
    BatchDelivery,
    ChatNotifier,
    CohortChange,
    CohortResult,
    FlagProvider,
    HoldResult,
    IncidentActivities,
    IncidentStore,
    IntegrityRequest,
    IntegrityResult,
    Lesson,
    LessonRequest,
    Measurement,
    MessageRef,
    Notification,
    NotificationBatch,
    OutputsRequest,
    OutputsResult,
    PollRequest,
    PollResult,
    ReadbackRequest,
    ReportDraft,
    ReportRequest,
    ReviewDocument,
    ReviewRequest,
    ServedReleaseReader,
    ServedResult,
    ServedState,
    SignalObservation,
    SignalSource,
    TakenOver,
    TargetHold,
    TargetState,
    TasksRequest,
    TasksResult,
    TaskStatesRequest,
    ThresholdAdvisor,
    UndeliveredMessage,
    WriteLog,
)
from activities.integrity import READBACK_TOLERANCE, IntegrityChecker
from activities.learning import learn
from activities.outputs import OutputRouter, resumed_progress
from activities.routing import FlagRouter, hold_key
from activities.trackers import TrackerRouter
from playbooks.models import Signal, Target
from playbooks.rendering import render_message, render_report, render_review

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0
"""Seconds between heartbeats of a running activity; the workflows' heartbeat timeout (3 s) is a few of these,
so an activity whose worker died is retried within seconds. The first beat comes after one interval, so an
activity that finishes sooner costs no heartbeat at all."""


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
        *,
        outputs: OutputRouter | None = None,
        trackers: TrackerRouter | None = None,
        advisor: ThresholdAdvisor | None = None,
        holder_status: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.flags = flags
        self.holder_status = holder_status or workflow_status
        self.signals = signals
        self.chat = chat
        self.store = store
        self.audit_metrics = metrics.AuditMetrics()
        self.integrity = integrity or IntegrityChecker(flags, signals)
        self.review_dir = review_dir
        self.outputs = outputs or OutputRouter()
        self.trackers = trackers or TrackerRouter()
        self.advisor = advisor

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """The bound activity methods, for ``Worker(activities=...)``."""
        return [self.poll_signals, self.apply_cohort, self.read_cohort, self.check_integrity, self.notify,
                self.notify_batch, self.record_audit, self.write_review, self.hold_targets, self.release_targets,
                self.served_release, self.count_outputs, self.purge_outputs, self.draft_report, self.create_tasks,
                self.sync_tasks, self.learn]

    @activity.defn(name="poll_signals")
    async def poll_signals(self, req: PollRequest) -> PollResult:
        """Observe every signal concurrently.

        A source that fails is "not measured" (NO_DATA with the error as detail), never "measured bad"; only
        a non-retryable (configuration) error propagates, because only a person can fix it.
        """
        _count_retry("signals")
        async with _heartbeating():
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
        """Compare-and-set the absolute split on each target in order, reading each back before the next.

        A target named in ``req.expected`` that shows neither the expected nor the desired share was changed
        behind the incident's back: it is not written, nor is any later target, and the result says what was
        expected and what was found. Each write is reported with when it happened and which attempt made it
        (a heartbeat carries that to the next attempt if this worker dies before answering).

        ``check_release``: first, which release each target serves (as ``served_release``); one serving another
        release writes nothing (``release_mismatch``), for a person to decide.
        ``forward_only`` (an incident's first write): read every target first and expect what was read, so the
        served-release check, the read and the compare-and-set cost one activity, not three. If every target already sends more than
        ``previous_percent`` of users to the previous model, nothing is written (``skipped``). Exactly
        ``previous_percent`` is not a skip: it may be this very write, made by an attempt that died before
        answering; a target an earlier attempt wrote expects what that attempt wrote, as without the read.
        """
        _count_retry("flags")
        details = activity.info().heartbeat_details
        written = _earlier_writes(details)
        progress = {"written": written, "sending": {}, "read": _earlier_read(details)}
        async with _heartbeating(progress):
            return await self._apply_cohort(req, written, progress)

    async def _apply_cohort(self, req: CohortChange, written: dict[str, list[Any]],
                            progress: dict[str, Any]) -> CohortResult:
        info = activity.info()
        sending: dict[str, list[Any]] = progress["sending"]
        states: list[TargetState] = []
        applied = False
        read: dict[str, float | None] = progress["read"]
        fresh: dict[str, float | None] = {}  # read by this attempt just now: the compare needs no second read
        expectations = dict(req.expected)
        served: list[ServedState] = []
        if req.check_release is not None:
            served = await self._served(req.targets)
            if any(s.release is not None and s.release != req.check_release for s in served):
                return CohortResult(states=[], applied=False, attempt=info.attempt, served=served,
                                    release_mismatch=True)
        if req.forward_only:
            # What the first attempt read is what every attempt expects (a retry after a lost answer must not
            # take its own earlier write, or a hand edit after it, as the state it started from).
            if not read:
                fresh = {t.ref: await self.flags.get_previous_percent(t) for t in req.targets}
                read.update(fresh)
            expectations.update({ref: share for ref, share in read.items() if share is not None})
            if not written and all(share is not None and share > req.previous_percent + READBACK_TOLERANCE
                                   for share in read.values()):
                return CohortResult(
                    states=[TargetState(target=ref, previous_percent=share, found=share, expected=share,
                                        detail=f"already more than {req.previous_percent:g}% on the previous "
                                               "model: nothing written")
                            for ref, share in read.items()],
                    applied=False, attempt=info.attempt, skipped=True, served=served)
        for target in req.targets:
            expected = expectations.get(target.ref)
            found: float | None = None
            if expected is not None:
                found = fresh[target.ref] if target.ref in fresh else await self.flags.get_previous_percent(target)
                if not _same(found, req.previous_percent) and not _same(found, expected):
                    _, by = written.get(target.ref, [None, None])
                    if by is not None:
                        # an earlier attempt of this step wrote the desired share: the edit came after it
                        expected = req.previous_percent
                    states.append(TargetState(
                        target=target.ref, previous_percent=found, expected=expected, found=found, conflict=True,
                        detail=f"changed behind this incident's back: expected {expected:g}%, found "
                               + ("an unreadable split" if found is None else f"{found:g}%")
                               + " on the previous model"
                               + (f" (written by attempt {by} of this step)" if by is not None else "")
                               + f"; {req.previous_percent:g}% not written"
                               + (" again" if by is not None else "")))
                    return CohortResult(states=states, applied=applied, attempt=info.attempt)
            if target.ref not in written and not (found is not None and _same(found, req.previous_percent)):
                # Said before the write (the first beat of an attempt goes out at once): if this worker dies or
                # the answer is lost, the attempt that finds the split applied credits this one, at this time.
                sending[target.ref] = [datetime.now(UTC).isoformat(), info.attempt]
                activity.heartbeat(progress)
            wrote = await self.flags.set_previous_percent(target, req.previous_percent, req.idempotency_key)
            if wrote:
                written[target.ref] = [datetime.now(UTC).isoformat(), info.attempt]
                activity.heartbeat(progress)
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
            when, by = written.get(target.ref, [None, None])
            if when is None and not wrote and isinstance(self.flags, WriteLog):
                # an earlier attempt wrote it and died before reporting: the flag system remembers when
                stamped = await self.flags.written_at(target, req.idempotency_key)
                when = stamped.isoformat() if stamped else None
            detail = ("written" if wrote else
                      f"written by attempt {by}" if by is not None else
                      "found applied by an earlier attempt of this step" if info.attempt > 1 else "already applied")
            states.append(TargetState(target=target.ref, previous_percent=actual, detail=detail, expected=expected,
                                      found=found, written_at=datetime.fromisoformat(when) if when else None,
                                      written_by_attempt=by))
        return CohortResult(states=states, applied=applied, attempt=info.attempt, served=served)

    @activity.defn(name="read_cohort")
    async def read_cohort(self, req: ReadbackRequest) -> CohortResult:
        """Read every target's current split; an unreadable split is None with the reason."""
        states = []
        async with _heartbeating():
            for target in req.targets:
                value = await self.flags.get_previous_percent(target)
                states.append(TargetState(target=target.ref, previous_percent=value,
                                          detail="" if value is not None else
                                          "the split cannot be read as one share"))
        return CohortResult(states=states, applied=False)

    @activity.defn(name="hold_targets")
    async def hold_targets(self, req: TargetHold) -> HoldResult:
        """Hold every target for the incident unless another active incident holds one (then: who)."""
        refs = [hold_key(t) for t in req.targets]
        taken: list[TakenOver] = []
        while True:
            found = await self.store.hold_targets(req.incident_id, refs)
            if found is None:
                return HoldResult(held=True, taken_over=taken)
            holder, target = found
            status = await self.holder_status(holder)
            if status is None or status == "running" or any(t.incident == holder for t in taken):
                return HoldResult(held=False, holder=holder, target=target, taken_over=taken)
            # The holder's workflow ended without letting go (terminated, timed out, ...): it never will.
            log.warning("%s takes over %s from %s, whose workflow is %s", req.incident_id, target, holder, status)
            await self.store.release_targets(holder)
            taken.append(TakenOver(incident=holder, target=target, status=status))

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

    async def _served(self, targets: list[Target]) -> list[ServedState]:
        """``served_release`` inside another activity: a target that cannot be asked cannot tell (the reason is
        the evidence), as when the ``served_release`` activity fails; it never stops the write."""
        try:
            return (await self.served_release(ReadbackRequest(targets=targets))).states
        except Exception as err:  # noqa: BLE001 - reported as evidence, like the workflow does for the activity
            return [ServedState(target=t.ref, release=None, evidence=f"could not read which release {t.ref} "
                                f"serves: {err}") for t in targets]

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
        async with _heartbeating():
            return await self.chat.send(req, _render_message(req))

    @activity.defn(name="notify_batch")
    async def notify_batch(self, req: NotificationBatch) -> BatchDelivery:
        """Send the messages in order, as ``notify`` one after another would, carrying the incident's message
        ref from one to the next. A message the chat system refuses for good (non-retryable) is reported and
        the rest still go out; anything else fails the attempt, and the retry resumes after the last message
        sent (heartbeat). The final failure carries how far the batch got, so the workflow knows exactly which
        messages did not go out."""
        _count_retry("chat")
        progress = _resumed_delivery(req.thread_ref)
        beat = progress.model_dump(mode="json")  # what every heartbeat carries, kept current below
        async with _heartbeating(beat):
            for index in range(progress.sent, len(req.notes)):
                note = req.notes[index]
                if note.channel == req.thread_channel:
                    note = note.model_copy(update={"thread_ref": progress.thread_ref})
                try:
                    ref = await self.chat.send(note, _render_message(note))
                except ApplicationError as exc:
                    if not exc.non_retryable:
                        raise _delivery_failed(exc, progress, exc.type, exc.next_retry_delay) from exc
                    progress.undelivered.append(UndeliveredMessage(index=index, kind=note.kind, channel=note.channel,
                                                                   error=exc.message))
                except Exception as exc:
                    raise _delivery_failed(exc, progress, type(exc).__name__, None) from exc
                else:
                    if note.channel == req.thread_channel and ref.ref:
                        progress.thread_ref = ref.ref
                progress.sent = index + 1
                beat.update(progress.model_dump(mode="json"))
                if progress.sent < len(req.notes):  # where a retry resumes; after the last one the answer says it
                    activity.heartbeat(beat)
        return progress

    @activity.defn(name="record_audit")
    async def record_audit(self, req: AuditBatch) -> None:
        """Project the incident and its new audit events into the incident store (idempotent); the incident
        metrics are derived from the same events."""
        _count_retry("store")
        try:
            async with _heartbeating():
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
        tags = req.status.get("review_tags")
        doc = ReviewDocument(incident_id=req.incident_id, markdown=markdown,
                             tasks=list(tasks) if isinstance(tasks, list) else [],
                             tags=[str(t) for t in tags] if isinstance(tags, list) else [])
        async with _heartbeating():
            await self.store.save_review(doc)
            if self.review_dir is not None:
                path = self.review_dir / f"{req.incident_id.replace(':', '_')}.md"
                await asyncio.to_thread(_write_atomically, path, markdown)
        return doc

    @activity.defn(name="count_outputs")
    async def count_outputs(self, req: OutputsRequest) -> OutputsResult:
        """Count the release's outputs in every location (the purge's dry run; nothing is deleted)."""
        return OutputsResult(counts_before=await self.outputs.counts(req))

    @activity.defn(name="purge_outputs")
    async def purge_outputs(self, req: OutputsRequest) -> OutputsResult:
        """Delete the release's outputs in bounded batches; a retry resumes from the heartbeated progress."""
        return await self.outputs.purge(req, resumed_progress())

    @activity.defn(name="draft_report")
    async def draft_report(self, req: ReportRequest) -> ReportDraft:
        """Render the regime's report (Markdown and print-ready HTML) and store the draft."""
        try:
            markdown, html = render_report(req.regime, req.context)
        except ValueError as exc:
            raise ApplicationError(f"report of {req.incident_id}: {exc}", type="unship.report_template",
                                   non_retryable=True) from exc
        draft = ReportDraft(incident_id=req.incident_id, regime=req.regime, markdown=markdown, html=html,
                            drafted_at=datetime.now(UTC))
        await self.store.save_report(draft)
        if self.review_dir is not None:
            stem = self.review_dir / f"{req.incident_id.replace(':', '_')}.{req.regime.value}"
            await asyncio.to_thread(_write_atomically, stem.with_name(stem.name + ".md"), markdown)
            await asyncio.to_thread(_write_atomically, stem.with_name(stem.name + ".html"), html)
        return draft

    @activity.defn(name="create_tasks")
    async def create_tasks(self, req: TasksRequest) -> TasksResult:
        """Create each review task in the tracker (a ticket that already exists for a task key is reused)."""
        tracker = self.trackers.get(req.tracker)
        return TasksResult(tasks=[await tracker.create(req.tracker, req.incident_id, task) for task in req.tasks])

    @activity.defn(name="sync_tasks")
    async def sync_tasks(self, req: TaskStatesRequest) -> TasksResult:
        """Read each task's state back from the tracker."""
        tracker = self.trackers.get(req.tracker)
        return TasksResult(tasks=[await tracker.state(req.tracker, task) for task in req.tasks])

    @activity.defn(name="learn")
    async def learn(self, req: LessonRequest) -> Lesson:
        """First crossings, confirmation time and the advisor's proposal with its playbook diff."""
        return await asyncio.to_thread(learn, req, self.advisor)


async def workflow_status(workflow_id: str, client: Client | None = None) -> str | None:
    """What Temporal says of the workflow ``workflow_id`` (its latest run): ``running``, ``terminated``,
    ``timed_out``, ``canceled``, ``failed``, ``completed``, ``continued_as_new`` or ``not_found``; None when it
    cannot say now (Temporal unreachable, or no ``client`` outside an activity), which counts as running."""
    try:
        handle = (client or activity.client()).get_workflow_handle(workflow_id)
        description = await handle.describe(rpc_timeout=timedelta(seconds=10))
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return "not_found"
        log.warning("cannot tell whether %s is running: %s", workflow_id, exc.message)
        return None
    except RuntimeError:  # not in an activity: no client to ask
        return None
    status = description.status
    if status is None or status is WorkflowExecutionStatus.RUNNING:
        return "running" if status is not None else None
    return status.name.lower()


def _resumed_delivery(thread_ref: str | None) -> BatchDelivery:
    """How far an earlier attempt of ``notify_batch`` got (its last heartbeat), or a fresh start."""
    details = activity.info().heartbeat_details if activity.in_activity() else []
    if details and isinstance(details[-1], dict):
        return BatchDelivery.model_validate(details[-1])
    return BatchDelivery(thread_ref=thread_ref)


def _delivery_failed(exc: Exception, progress: BatchDelivery, kind: str | None,
                     delay: timedelta | None) -> ApplicationError:
    """A retryable failure of a batch, with how far it got (the retry resumes there; the workflow reads it if
    no retry is left)."""
    message = exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
    return ApplicationError(message, progress.model_dump(mode="json"), type=kind, next_retry_delay=delay)


def _count_retry(system: str) -> None:
    if activity.in_activity() and activity.info().attempt > 1:
        metrics.ACTIVITY_RETRIES.labels(system=system).inc()


def _same(share: float | None, percent: float) -> bool:
    return share is not None and abs(share - percent) <= READBACK_TOLERANCE


def _earlier_writes(details: Any) -> dict[str, list[Any]]:
    """What earlier attempts of this activity reported writing (or sending, answer unknown):
    target ref -> [ISO time, attempt]. A write reported done wins over one only sent."""
    for detail in reversed(list(details or [])):
        if isinstance(detail, dict) and isinstance(detail.get("written"), dict):
            found: dict[str, list[Any]] = {}
            for part in ("sending", "written"):
                entries = detail.get(part)
                if isinstance(entries, dict):
                    found.update({str(k): list(v) for k, v in entries.items() if isinstance(v, list) and len(v) == 2})
            return found
    return {}


def _earlier_read(details: Any) -> dict[str, float | None]:
    """What the first attempt of a ``forward_only`` write read before writing: target ref -> share."""
    for detail in reversed(list(details or [])):
        if isinstance(detail, dict) and isinstance(detail.get("read"), dict):
            return {str(k): float(v) if isinstance(v, int | float) else None for k, v in detail["read"].items()}
    return {}


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
async def _heartbeating(details: dict[str, Any] | None = None, every: float = HEARTBEAT_EVERY) -> AsyncIterator[None]:
    """Heartbeat in the background while an activity body runs (with ``details`` as they are at each beat,
    because a beat without details would erase what the next attempt should learn)."""
    async def beat() -> None:
        while activity.in_activity():
            await asyncio.sleep(every)
            if details is None:
                activity.heartbeat()
            else:
                activity.heartbeat(details)

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

