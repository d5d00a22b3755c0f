"""The scenario language of tabletop exercises: what the world does while a playbook runs.

A scenario file (``*.scenario.yaml``) names the playbook under test (a path relative to the scenario, with
optional ``overrides`` merged into it), scripts the signal values over time (or points at a recorded metric
history CSV), the alerts, what people click and when (or never), the faults of external systems, and what the
exercise expects to happen. All times are durations from the scenario's start (``t = 0``).

Errors come back as ``file:line: field: message``, like the playbook loader's (whose machinery this reuses).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml.comments import CommentedMap

from activities.contracts import MessageKind
from playbooks.loader import (
    Locator,
    PlaybookError,
    PlaybookIssue,
    TooLarge,
    content_hash,
    issues_at,
    library_folder,
    load_playbook,
    parse_yaml,
    plain_data,
    read_source,
    validation_problems,
)
from playbooks.models import Duration, Playbook, PlaybookSnapshot, Severity, Slug
from tabletop.history import History, HistoryError, Point, load_history
from workflows.messages import Outcome

SCENARIO_SUFFIX = ".scenario.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TimelinePoint(_Model):
    """From ``at`` on, the signal reads ``value`` (null = no data) with ``samples`` outputs behind it."""

    at: Duration
    value: float | None
    samples: float | None = Field(default=None, ge=0)


class AlertStep(_Model):
    """An alert webhook arriving at ``at``. The first firing alert opens the incident."""

    at: Duration = timedelta(0)
    name: str = "GenAIQualityDegraded"
    status: Literal["firing", "resolved"] = "firing"
    severity: Severity = Severity.WARNING
    fingerprint: str = "scenario-alert"
    labels: dict[str, str] = Field(default_factory=dict)


class Action(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    REVERT_ALL = "revert_all"
    NEVER = "never"  # this person never answers (documents who is silent)
    # governance, on the incident's review (after it closed); at an absolute time ('at')
    APPROVE_PURGE = "approve_purge"
    LEGAL_HOLD = "legal_hold"
    RELEASE_LEGAL_HOLD = "release_legal_hold"
    SUBMIT_REPORT = "submit_report"


GOVERNANCE_ACTIONS = frozenset({Action.APPROVE_PURGE, Action.LEGAL_HOLD, Action.RELEASE_LEGAL_HOLD, Action.SUBMIT_REPORT})


class GateKind(StrEnum):
    """Which moment an ``after`` delay counts from."""

    DECISION = "decision"  # the revert approval gate opened
    ESCALATION = "escalation"  # the gate was escalated
    INVESTIGATION = "investigation"  # a fairness investigation gate opened


class PersonAction(_Model):
    """One click of one person: at an absolute time, or ``after`` a delay once a gate opened."""

    user: str = Field(default="operator", min_length=1)
    action: Action
    at: Duration | None = None
    after: Duration | None = None
    on: GateKind = GateKind.DECISION
    reason: str = ""
    groups: list[str] = Field(default_factory=list, description="user groups the person belongs to")
    regime: str | None = Field(default=None, description="submit_report: which report")
    reference: str = Field(default="", description="submit_report: the authority's case number")

    @model_validator(mode="after")
    def _when(self) -> PersonAction:
        if self.action is Action.NEVER:
            return self
        if self.action in GOVERNANCE_ACTIONS and self.at is None:
            raise ValueError(f"'{self.action.value}' acts on the review: give 'at' (from the scenario start)")
        if self.action is Action.SUBMIT_REPORT and not self.regime:
            raise ValueError("'submit_report' needs 'regime' (e.g. gdpr_breach)")
        if (self.at is None) == (self.after is None):
            raise ValueError("give exactly one of 'at' (from the scenario start) or 'after' (once the gate opened)")
        if self.action in (Action.APPROVE, Action.REJECT) and self.after is None and self.at is None:
            raise ValueError("a decision needs 'after' or 'at'")
        return self


class FaultKind(StrEnum):
    HTTP_500 = "http_500"  # retryable outage
    TIMEOUT = "timeout"  # retryable: the request timed out
    REFUSED = "refused"  # non-retryable (HTTP 403): a person must fix access


class Fault(_Model):
    """An external system misbehaving from ``start`` until ``end`` (open-ended without ``end``)."""

    system: Literal["flags", "chat", "signals", "tracker", "outputs"]
    start: Duration = Field(alias="from")
    end: Duration | None = Field(default=None, alias="to")
    kind: FaultKind = FaultKind.HTTP_500
    operations: Literal["write", "read", "both"] = Field(default="write", description="flags only")
    after_write: bool = Field(default=False, description="flags: the write lands but the answer is lost")
    signals: list[str] = Field(default_factory=list, description="signals only: which (default all)")

    @model_validator(mode="after")
    def _ordered(self) -> Fault:
        if self.end is not None and self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        return self

    def active(self, at_s: float) -> bool:
        end = self.end.total_seconds() if self.end is not None else float("inf")
        return self.start.total_seconds() <= at_s < end


class ReviewExpectations(_Model):
    """What the review (governance after the revert) must have done by the end of the scenario."""

    closed: bool | None = Field(default=None, description="tasks done, reports submitted, data handled")
    purged: bool | None = None
    purge_counts: tuple[int, int] | None = Field(default=None, description="rows (before, after) the purge")
    other_rows_kept: bool = Field(default=True, description="rows of other releases are never touched")
    reports_submitted: list[str] = Field(default_factory=list)
    reports_late: list[str] = Field(default_factory=list, description="submitted after their deadline")
    tasks_created: int | None = None
    tasks_done: bool | None = None
    events: list[str] = Field(default_factory=list, description="review audit event kinds that must happen")
    no_events: list[str] = Field(default_factory=list, description="review audit event kinds that must not")
    proposal: bool | None = Field(default=None, description="the learning loop proposes a playbook change")


class OutputRows(_Model):
    """Rows of one output location in the scripted world: the bad release's and other releases'."""

    release: int = Field(ge=0)
    other: int = Field(default=0, ge=0)


class TrackerScript(_Model):
    done_after: Duration | None = Field(default=None, description="tickets are closed this long after t=0")


class Expectations(_Model):
    """What must have happened for the exercise to pass."""

    outcome: str | None = Field(default=None, description="dismissed | reverted | paused | halted | ...")
    within: Duration | None = Field(default=None, description="the incident closed within this time")
    detected_within: Duration | None = None
    full_revert_within: Duration | None = None
    max_exposure_user_minutes: float | None = Field(default=None, ge=0)
    messages: list[MessageKind] = Field(default_factory=list, description="message kinds that went out")
    no_messages: list[MessageKind] = Field(default_factory=list, description="message kinds that must not")
    flag_writes: list[float] | None = Field(default=None, description="every split written, in order")
    review: ReviewExpectations | None = Field(default=None, description="governance: the review runs on")

    @model_validator(mode="after")
    def _known_outcome(self) -> Expectations:

        if self.outcome is not None and self.outcome not in Outcome._value2member_map_:
            raise ValueError(f"'outcome: {self.outcome}' is not an outcome; "
                             f"expected one of {', '.join(o.value for o in Outcome)}")
        return self


class ReleasePlan(_Model):
    """Re-release: move users forward to the fixed candidate in these cumulative stages."""

    stages: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0], min_length=1)
    bake: Duration = timedelta(minutes=5)
    started_by: str = "operator"


class Scenario(_Model):
    """One tabletop exercise (``*.scenario.yaml``)."""

    scenario: Slug
    description: str = ""
    playbook: str = Field(description="path of the playbook under test, relative to this file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="merged into the playbook")
    release: str = "candidate"
    previous_release: str | None = None
    re_release: ReleasePlan | None = Field(default=None, description="run the re-release workflow instead")
    duration: Duration = Field(default=timedelta(hours=24), description="simulated time the exercise may take")
    users: float = Field(default=1000, ge=0, description="users active at any moment (exposure)")
    initial_previous_percent: float = Field(default=0, ge=0, le=100,
                                            description="share of users on the previous model at t=0")
    signals: dict[str, list[TimelinePoint]] = Field(default_factory=dict)
    history: str | None = Field(default=None, description="metric history CSV, relative to this file")
    alerts: list[AlertStep] = Field(default_factory=lambda: [AlertStep()])
    people: list[PersonAction] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)
    integrity: dict[str, bool] = Field(default_factory=dict,
                                       description="result of each non-readback integrity check (default pass)")
    outputs: dict[str, OutputRows] = Field(default_factory=dict, description="rows per data.outputs location")
    tracker: TrackerScript = TrackerScript()
    expect: Expectations = Expectations()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.re_release is None and not any(a.status == "firing" for a in self.alerts):
            raise ValueError("alerts: a rollback exercise needs a firing alert to open the incident")
        return self


@dataclass(frozen=True)
class LoadedScenario:
    """A validated scenario with its playbook (overrides applied) and its signal history."""

    scenario: Scenario
    snapshot: PlaybookSnapshot
    history: History
    source: str

    @property
    def name(self) -> str:
        return self.scenario.scenario

    @property
    def follows_review(self) -> bool:
        """The exercise runs on after the incident closes, through the review's governance."""
        s = self.scenario
        return s.expect.review is not None or any(p.action in GOVERNANCE_ACTIONS for p in s.people)


class ScenarioError(PlaybookError):
    """A scenario file (or the playbook/history it names) is invalid; ``issues`` lists every problem."""


def load_scenario(path: str | Path) -> LoadedScenario:
    """Read and validate one scenario file; raise ScenarioError listing every problem at its line."""
    return load_scenario_text(read_source(path, ScenarioError), str(path), Path(path).parent)


def load_scenario_text(text: str, source: str = "<scenario>", base: Path | None = None) -> LoadedScenario:
    """Validate scenario YAML given as text; relative paths resolve against ``base``."""
    base = base or Path.cwd()
    try:
        tree = parse_yaml(text, source)
    except PlaybookError as exc:
        raise ScenarioError(exc.issues) from None
    if not isinstance(tree, CommentedMap):
        raise ScenarioError([PlaybookIssue(source, 1, "scenario", "expected a mapping of scenario fields")])
    locator = Locator(tree)
    try:
        scenario = Scenario.model_validate(plain_data(tree))
    except TooLarge:
        raise ScenarioError([PlaybookIssue(source, 1, "scenario", "too many values once aliases expand")]) from None
    except ValidationError as exc:
        raise ScenarioError(issues_at(source, locator, validation_problems(exc, tree, Scenario))) from None

    def issue(loc: tuple[str | int, ...], message: str) -> PlaybookIssue:
        return issues_at(source, locator, [(loc, message)])[0]

    snapshot = _playbook(scenario, base, source, issue)
    playbook = snapshot.playbook
    known = {s.name for s in playbook.signals}
    problems = [issue(("signals", name), f"unknown signal {name!r}; the playbook has {sorted(known)}")
                for name in scenario.signals if name not in known]
    for i, fault in enumerate(scenario.faults):
        problems += [issue(("faults", i, "signals"), f"unknown signal {n!r}; the playbook has {sorted(known)}")
                     for n in fault.signals if n not in known]
    checks = {c.name for c in playbook.integrity}
    problems += [issue(("integrity", name), f"unknown integrity check {name!r}; the playbook has {sorted(checks)}")
                 for name in scenario.integrity if name not in checks]
    locations = {o.name for o in playbook.data.outputs} if playbook.data else set()
    problems += [issue(("outputs", name), f"unknown output location {name!r}; the playbook's data.outputs has "
                       f"{sorted(locations)}") for name in scenario.outputs if name not in locations]
    regimes = {r.regime.value for r in playbook.regulatory.reports}
    problems += [issue(("people", i, "regime"), f"the playbook has no {p.regime!r} report; it has {sorted(regimes)}")
                 for i, p in enumerate(scenario.people) if p.regime is not None and p.regime not in regimes]
    if scenario.history and scenario.signals:
        problems.append(issue(("history",), "give either 'history' (a CSV) or 'signals' (a timeline), not both"))
    if problems:
        raise ScenarioError(problems)
    history = History()
    if scenario.history:
        try:
            history = load_history(base / scenario.history, playbook.signals)
        except HistoryError as exc:
            raise ScenarioError([issue(("history",), str(exc))]) from None
    for name, points in scenario.signals.items():
        for p in points:
            history.add(name, Point(p.at.total_seconds(), p.value, p.samples))
    return LoadedScenario(scenario=scenario, snapshot=snapshot, history=history, source=source)


def _playbook(scenario: Scenario, base: Path, source: str, issue: Any) -> PlaybookSnapshot:
    path = base / scenario.playbook
    if not path.is_file():
        raise ScenarioError([issue(("playbook",), f"no playbook file at {path}")])
    snapshot = load_playbook(path)  # the playbook's own problems, at the playbook's own lines
    if not scenario.overrides:
        return snapshot
    merged = deep_merge(snapshot.playbook.model_dump(mode="json"), scenario.overrides)
    try:
        playbook = Playbook.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(issue(("overrides", *loc), f"{'.'.join(map(str, loc)) or 'playbook'}: {message}"))
        raise ScenarioError(problems) from None
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook),
                            source=f"{snapshot.source} (with overrides from {source})")


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; lists and values in ``overrides`` replace the playbook's."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scenario_folder() -> Path:
    """The library of scenarios shipped with unship beside the playbook library (each is run in CI)."""
    return library_folder().parent / "scenarios"


def discover_scenarios(paths: Sequence[str | Path]) -> list[Path]:
    """Scenario files named by ``paths``: files as given, folders searched for ``*.scenario.yaml``."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(path.rglob(f"*{SCENARIO_SUFFIX}")))
        else:
            found.append(path)
    return found
