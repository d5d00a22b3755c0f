"""What one tabletop exercise measured, checked against its expectations, and how it reads.

Pure: the runner fills a ``TabletopResult`` from the incident's final status; the report, the CLI and the
scheduled rehearsal read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from activities.contracts import AuditEvent
from playbooks.models import human_duration
from tabletop.scenarios import LoadedScenario, ReviewExpectations
from tabletop.world import SentMessage
from workflows.messages import IncidentStatus, PurgeState, ReviewStatus


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
    review: ReviewStatus | None = None
    review_events: list[AuditEvent] = field(default_factory=list)
    other_rows: tuple[int, int] | None = None  # rows of other releases (left, scripted)

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
            "review": self.review.model_dump(mode="json") if self.review else None,
        }



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
        got = "never" if value is None else human(value)
        out.append(ExpectationResult(f"{name} within {human(seconds)}", ok, f"at {got}"))

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
    if x.review is not None:
        out += _review_expectations(x.review, result)
    return out


def _review_expectations(x: ReviewExpectations, result: TabletopResult) -> list[ExpectationResult]:
    """The governance the review must have done: purge, reports, tasks, the lesson, its audit events."""
    review = result.review
    if review is None:
        return [ExpectationResult("the review ran", False, "no review was started (did the incident revert?)")]
    out: list[ExpectationResult] = []
    purge = review.purge
    kinds = [e.kind for e in result.review_events]
    if x.closed is not None:
        out.append(ExpectationResult(f"review {'closed' if x.closed else 'still open'}", review.closed == x.closed,
                                     f"closed: {review.closed}"))
    if x.purged is not None:
        done = purge is not None and purge.state is PurgeState.PURGED
        out.append(ExpectationResult(f"outputs {'purged' if x.purged else 'not purged'}", done == x.purged,
                                     f"purge state: {purge.state.value if purge else 'no data section'}"))
    if x.purge_counts is not None:
        got = (sum(purge.counts_before.values()), sum(purge.counts_after.values())) if purge else None
        out.append(ExpectationResult(f"purge counts before/after {x.purge_counts}", got == tuple(x.purge_counts),
                                     f"counts: {got}"))
    if x.other_rows_kept and result.other_rows is not None:
        left, scripted = result.other_rows
        out.append(ExpectationResult("rows of other releases untouched", left == scripted,
                                     f"{left} of {scripted} left"))
    submitted = {r.regime: r for r in review.reports if r.submitted_by}
    for regime in x.reports_submitted:
        r = submitted.get(regime)
        out.append(ExpectationResult(f"{regime} report submitted", r is not None,
                                     f"by {r.submitted_by}" if r else "not submitted"))
    for regime in x.reports_late:
        r = submitted.get(regime)
        late = r is not None and r.submitted_at is not None and r.submitted_at > r.due
        out.append(ExpectationResult(f"{regime} report submitted after its deadline", late,
                                     f"due {r.due:%Y-%m-%d %H:%M}, submitted {r.submitted_at:%Y-%m-%d %H:%M}"
                                     if r and r.submitted_at else "not submitted"))
    refs = [t for t in review.tasks if t.get("ref")]
    if x.tasks_created is not None:
        out.append(ExpectationResult(f"{x.tasks_created} task(s) created in the tracker",
                                     len(refs) == x.tasks_created, f"created: {len(refs)}"))
    if x.tasks_done is not None:
        done = bool(review.tasks) and all(t.get("state") == "done" for t in review.tasks)
        out.append(ExpectationResult(f"tasks {'done' if x.tasks_done else 'open'}", done == x.tasks_done,
                                     f"states: {[t.get('state') for t in review.tasks]}"))
    if x.proposal is not None:
        changes = bool(review.lesson and review.lesson.get("changes"))
        out.append(ExpectationResult("a playbook change is proposed" if x.proposal else "no change proposed",
                                     changes == x.proposal, str((review.lesson or {}).get("proposal", "no lesson"))))
    for kind in x.events:
        out.append(ExpectationResult(f"review event {kind}", kind in kinds, f"{kinds.count(kind)} recorded"))
    for kind in x.no_events:
        out.append(ExpectationResult(f"no review event {kind}", kind not in kinds, f"{kinds.count(kind)} recorded"))
    return out


def human(seconds: float | None) -> str:
    """A duration for people (``2m03s``); None as '-'."""
    return "-" if seconds is None else human_duration(seconds)


def clock(seconds: float | None) -> str:
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
            lines.append(f"  {clock(e.at_s):>8}  {e.actor:<14.14} {e.text}")
    lines.append("key figures:")
    lines.append(f"  outcome                 {result.outcome or 'none (still running at the end)'}")
    lines.append(f"  time to detect          {human(result.detected_at_s)}")
    lines.append(f"  time to decide          {human(result.decided_at_s)}")
    lines.append(f"  first cohort reverted   {human(result.first_revert_at_s)}")
    lines.append(f"  full revert             {human(result.full_revert_at_s)}")
    lines.append(f"  closed                  {human(result.closed_at_s)}")
    lines.append(f"  exposure                {result.exposure_user_minutes:,.0f} user-minutes on the bad release "
                 f"({result.users:g} users)")
    lines.append(f"  simulated / wall time   {human(result.simulated_s)} in {result.wall_s:.2f}s")
    lines.append("expectations:")
    if not result.expectations:
        lines.append("  (none)")
    for x in result.expectations:
        lines.append(f"  {'PASS' if x.passed else 'FAIL'}  {x.name}: {x.detail}")
    lines.append(f"result: {'PASSED' if result.passed else 'FAILED'}")
    return "\n".join(lines)


