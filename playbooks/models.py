"""The playbook language: pydantic models for one rollback playbook.

A playbook says, for one release family and risk scenario, which signals matter and how to read them, who
may decide, how to move users back to the previous model, what to verify and what to tell whom. These
models are also the snapshot a running workflow carries, so they must stay importable inside the Temporal
workflow sandbox: no I/O here, only data and pure validation.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

_RANGE_RE = re.compile(r"\[\s*([0-9][0-9a-z.]*)\s*(?::[^\]]*)?\]")
_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_MAX_SECONDS = 100 * 365 * 86400
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> object:
    """Accept ``90s``, ``10m``, ``1h30m``, ``2d``, plain seconds, or an ISO 8601 / timedelta value."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration such as '90s', '10m' or '1h30m' is required, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _seconds(value)
    if isinstance(value, str):
        text = value.strip()
        if _DURATION_RE.match(text):
            return _seconds(sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))
        if text.startswith(("P", "-P")):
            return text  # ISO 8601, let pydantic parse it (how the workflow snapshot round-trips)
        raise ValueError(f"{value!r} is not a duration; write it like '90s', '10m', '1h30m' or '2d'")
    return value


def _range_seconds(text: str) -> float | None:
    """Seconds of a PromQL range such as ``5m`` or ``1h30m`` (None when it is not one)."""
    if not _DURATION_RE.match(text):
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _seconds(value: float) -> timedelta:
    # timedelta raises OverflowError (not a ValueError pydantic would report) past ~2.7 million years.
    if not math.isfinite(value) or value > _MAX_SECONDS:
        raise ValueError(f"{value:g} seconds is not a usable duration")
    return timedelta(seconds=value)


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way playbooks write it (``1h30m``, ``45s``)."""
    total = value.total_seconds()
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{int(count)}{unit}")
    if total:
        parts.append(f"{total:g}s")
    return "".join(parts)


def human_duration(value: timedelta | float) -> str:
    """A measured duration for people: whole seconds, two units at most, zero-padded (``2m03s``, ``1h05m``,
    ``3d04h``); under ten seconds one decimal (``4.2s``)."""
    total = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign, total = ("-" if total < 0 else ""), abs(total)
    if total < 10:
        return f"{sign}{total:.1f}s".replace(".0s", "s")
    seconds = round(total)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda v: v.total_seconds(), return_type=float, when_used="json"),
]
"""A non-negative duration; YAML takes ``10m``-style strings, JSON carries seconds."""

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RiskScenario(StrEnum):
    """The kind of generative system a playbook protects."""

    CONVERSATIONAL_AGENT = "conversational-agent"
    IMAGE_GENERATOR = "image-generator"
    DATA_AUGMENTATION = "data-augmentation"
    RETRIEVAL = "retrieval"
    CLASSIFIER = "classifier"
    OTHER = "other"


class SignalCategory(StrEnum):
    USER_EXPERIENCE = "user_experience"
    MODEL_QUALITY = "model_quality"
    OPERATIONAL_HEALTH = "operational_health"
    FAIRNESS = "fairness"


class Severity(StrEnum):
    """Alert severity, ordered from least to most urgent."""

    INFO = "info"
    WARNING = "warning"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)

    @classmethod
    def parse(cls, value: str | None) -> Severity:
        """Map the many spellings monitoring tools use onto the four levels (unknown -> warning)."""
        text = (value or "").strip().lower()
        aliases = {
            "page": cls.CRITICAL, "p1": cls.CRITICAL, "sev1": cls.CRITICAL, "error": cls.HIGH,
            "p2": cls.HIGH, "sev2": cls.HIGH, "major": cls.HIGH, "p3": cls.WARNING, "minor": cls.WARNING,
            "warn": cls.WARNING, "p4": cls.INFO, "p5": cls.INFO, "low": cls.INFO, "none": cls.INFO,
        }
        if text in cls._value2member_map_:
            return cls(text)
        return aliases.get(text, cls.WARNING)


class Role(_Model):
    """A decision right: the Slack users and user groups that hold it."""

    users: list[str] = Field(default_factory=list, description="Slack user ids (U...) or CLI user names")
    groups: list[str] = Field(default_factory=list, description="Slack user-group handles or ids (S...)")
    description: str = ""

    @model_validator(mode="after")
    def _not_empty(self) -> Role:
        if not self.users and not self.groups:
            raise ValueError("a role needs at least one user or group")
        return self


_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class LabelMatcher(_Model):
    """One Alertmanager-style label matcher: ``name op value``."""

    name: str
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str):
            match = _MATCHER_RE.match(data)
            if not match:
                raise ValueError(f"{data!r} is not a matcher; write it like 'alertname=HighHallucinationRate'")
            name, op, value = match.groups()
            return {"name": name, "op": op, "value": value.strip("\"'")}
        return data

    @model_validator(mode="after")
    def _regex_compiles(self) -> LabelMatcher:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {self.value!r}: {exc}") from exc
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


class Trigger(_Model):
    """Which incoming alerts belong to this playbook, and which label names the suspect release."""

    matchers: list[LabelMatcher] = Field(min_length=1)
    release_label: str = "release"
    severity_label: str = "severity"

    def matches(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


class Direction(StrEnum):
    ABOVE = "above"
    BELOW = "below"


class Threshold(_Model):
    value: float
    direction: Direction = Direction.ABOVE
    unit: str = ""

    def breached_by(self, observed: float) -> bool:
        return observed > self.value if self.direction is Direction.ABOVE else observed < self.value

    def __str__(self) -> str:
        symbol = ">" if self.direction is Direction.ABOVE else "<"
        return f"{symbol} {self.value:g}{' ' + self.unit if self.unit else ''}"


class NoDataPolicy(StrEnum):
    """What a poll that could not measure a signal (no data, NaN, query error) counts as."""

    SKIP = "skip"  # neither breach nor healthy: the tick does not count for this signal
    HEALTHY = "healthy"
    BREACH = "breach"


class ControlSource(_Model):
    """The baseline cohort's counters (users still on the previous model), for ``compare_to: control``."""

    events: str = Field(min_length=1)
    outputs: str = Field(min_length=1)


class SignalSource(_Model):
    """Where a signal's value comes from.

    Either ``query`` gives the value directly, or ``events`` and ``outputs`` give two counters over the
    window and the value is ``events / outputs * per`` (e.g. hallucinations per 10k outputs), with the
    signal's ``min_samples`` applied to ``outputs``.
    """

    type: Literal["prometheus", "http", "scripted"] = "prometheus"
    query: str | None = None
    events: str | None = None
    outputs: str | None = None
    per: float = Field(default=10_000, gt=0)
    url: str | None = None
    json_path: str | None = Field(default=None, description="dotted path into the JSON answer (http)")
    control: ControlSource | None = Field(
        default=None, description="the same two counters for the baseline cohort (with compare_to: control)"
    )

    @model_validator(mode="after")
    def _one_shape(self) -> SignalSource:
        has_ratio = self.events is not None or self.outputs is not None
        if self.type == "http":
            if not self.url:
                raise ValueError("an http source needs 'url'")
            return self
        if self.type == "scripted":
            return self
        if has_ratio and (self.events is None or self.outputs is None):
            raise ValueError("a ratio source needs both 'events' and 'outputs'")
        if self.control is not None and not has_ratio:
            raise ValueError("'control' counters go with a ratio source ('events' and 'outputs')")
        if has_ratio == (self.query is not None):
            raise ValueError("give either 'query' or both 'events' and 'outputs'")
        return self

    @property
    def is_ratio(self) -> bool:
        return self.events is not None


class CompareTo(StrEnum):
    THRESHOLD = "threshold"
    CONTROL = "control"


class Signal(_Model):
    """A health signal of the release, with the threshold that counts as a breach."""

    name: Slug
    category: SignalCategory
    description: str = ""
    source: SignalSource
    threshold: Threshold
    min_samples: int = Field(default=0, ge=0, description="fewer outputs than this in a poll: no data")
    no_data: NoDataPolicy = NoDataPolicy.SKIP
    compare_to: CompareTo = Field(
        default=CompareTo.THRESHOLD,
        description="threshold (the rate must stay under it) or control (no worse than the baseline cohort)",
    )

    @model_validator(mode="after")
    def _control_needs_counters(self) -> Signal:
        if self.compare_to is CompareTo.CONTROL:
            if not self.source.is_ratio:
                raise ValueError("'compare_to: control' needs a ratio source ('events' and 'outputs')")
            if self.source.control is None:
                raise ValueError("'compare_to: control' needs the baseline cohort's counters in "
                                 "source.control (events and outputs)")
        elif self.source.control is not None:
            raise ValueError("'compare_to' must be 'control' when the source has 'control' counters")
        return self

    @property
    def counted(self) -> bool:
        """Counts per poll (events over outputs) that a sequential test can weigh: a ratio that breaches above."""
        return self.source.is_ratio and self.threshold.direction is Direction.ABOVE


class CompositeRule(_Model):
    """How per-signal breaches combine into one breach at a poll: any_of, all_of or at_least N of."""

    any_of: list[str] | None = None
    all_of: list[str] | None = None
    at_least: int | None = Field(default=None, ge=1)
    of: list[str] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> CompositeRule:
        forms = [self.any_of is not None, self.all_of is not None, self.at_least is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of 'any_of', 'all_of' or 'at_least' (with 'of')")
        if self.at_least is not None and not self.of:
            raise ValueError("'at_least' needs the list of signals in 'of'")
        if self.of is not None and self.at_least is None:
            raise ValueError("'of' goes with 'at_least'")
        if self.at_least is not None and self.of and self.at_least > len(self.of):
            raise ValueError(f"'at_least: {self.at_least}' is more than the {len(self.of)} signals in 'of'")
        return self

    @property
    def names(self) -> list[str]:
        return list(self.any_of or self.all_of or self.of or [])

    @property
    def required(self) -> int:
        """How many of ``names`` must breach together."""
        if self.any_of is not None:
            return 1
        if self.all_of is not None:
            return len(self.all_of)
        return self.at_least or 1


class ConfirmationMethod(StrEnum):
    K_OF_M = "k_of_m"  # ``breaches`` of the last ``out_of`` polls crossed the threshold
    SEQUENTIAL = "sequential"  # a sequential test on the counts, with a bound on false confirmations


class SequentialTest(StrEnum):
    CUSUM = "cusum"  # log-likelihood-ratio CUSUM, threshold from the false-alarm bound
    WINDOW_BOUND = "window_bound"  # pooled counts of the last ``out_of`` polls, exact lower confidence bound


class CountModel(StrEnum):
    POISSON = "poisson"
    BINOMIAL = "binomial"


class FamilyBound(StrEnum):
    BONFERRONI = "bonferroni"  # the false-alarm bound is shared by the signals tested (alpha / s each)
    PER_SIGNAL = "per_signal"  # each signal gets the whole bound (the family's rate can be s times higher)


class Sequential(_Model):
    """Settings of the sequential test (``confirmation.method: sequential``); see docs/thresholds.md."""

    test: SequentialTest = SequentialTest.CUSUM
    false_alarm: float = Field(default=0.01, gt=0, le=0.5,
                               description="bound on P(false confirmation) per window, shared by the signals")
    detect: float = Field(default=1.2, gt=1, le=100,
                          description="the rate to catch fast, as a multiple of the threshold (r1 = detect x r0)")
    model: CountModel = CountModel.POISSON
    min_polls: int = Field(default=3, ge=1, le=1000,
                           description="each poll adds at most 1/min_polls of the evidence needed")
    family: FamilyBound = FamilyBound.BONFERRONI


class Confirmation(_Model):
    """How to tell a sustained breach from a transient blip.

    Every ``interval`` the signals are polled; the composite ``rule`` decides whether that poll breached.
    The breach is sustained once ``breaches`` of the last ``out_of`` polls breached. If that has not happened
    by the end of ``window`` (or the source alert resolves), the incident is dismissed as transient.
    A zero ``window`` confirms at once (for automatic playbooks that trust their alert).

    With ``method: sequential`` counter signals (``events`` / ``outputs``) are confirmed by a sequential test
    instead (``sequential``), whose false confirmations are bounded; other signals keep ``breaches`` of
    ``out_of``, and the composite ``rule`` combines the signals the same way.
    """

    window: Duration = timedelta(minutes=10)
    interval: Duration = timedelta(minutes=1)
    breaches: int = Field(default=3, ge=1)
    out_of: int = Field(default=5, ge=1)
    rule: CompositeRule | None = None
    dismiss_on_resolved: bool = True
    method: ConfirmationMethod = ConfirmationMethod.K_OF_M
    sequential: Sequential | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Confirmation:
        if self.breaches > self.out_of:
            raise ValueError(f"'breaches: {self.breaches}' cannot exceed 'out_of: {self.out_of}'")
        if self.window > timedelta(0):
            if self.interval <= timedelta(0):
                raise ValueError("'interval' must be positive when 'window' is")
            polls = int(self.window / self.interval)
            if polls < self.breaches:
                raise ValueError(
                    f"a {format_duration(self.window)} window polled every {format_duration(self.interval)} "
                    f"gives {polls} polls, fewer than the {self.breaches} breaches required"
                )
        if self.method is ConfirmationMethod.K_OF_M:
            if self.sequential is not None:
                raise ValueError("'sequential' settings apply only with 'method: sequential'")
            return self
        if self.window <= timedelta(0):
            raise ValueError("'method: sequential' needs a confirmation window to watch (window is zero)")
        seq = self.sequential_settings
        polls = int(self.window / self.interval)
        if seq.min_polls > polls:
            raise ValueError(f"'sequential: min_polls {seq.min_polls}' is more than the {polls} polls of a "
                             f"{format_duration(self.window)} window polled every {format_duration(self.interval)}")
        if seq.test is SequentialTest.WINDOW_BOUND and seq.min_polls > self.out_of:
            raise ValueError(f"'out_of: {self.out_of}' polls are pooled by the window_bound test, fewer than "
                             f"its min_polls {seq.min_polls}")
        return self

    @property
    def immediate(self) -> bool:
        return self.window <= timedelta(0)

    @property
    def is_sequential(self) -> bool:
        return self.method is ConfirmationMethod.SEQUENTIAL and not self.immediate

    @property
    def sequential_settings(self) -> Sequential:
        """The sequential test's settings (the defaults when ``sequential`` is not given)."""
        return self.sequential or Sequential()

    @property
    def polls(self) -> int:
        """Polls in the confirmation window (0 when the window is zero)."""
        return int(self.window / self.interval) if not self.immediate else 0


class DecisionMode(StrEnum):
    APPROVAL = "approval"
    AUTOMATIC = "automatic"
    DRY_RUN = "dry_run"


class DefaultAction(StrEnum):
    REVERT = "revert"
    DISMISS = "dismiss"
    HOLD = "hold"  # keep the gate open for the escalation roles, with no further deadline


class Escalation(_Model):
    """Who is told when the approval gate times out, and how long they get before the default applies."""

    roles: list[str] = Field(default_factory=list)
    channel: str | None = None
    timeout: Duration = timedelta(minutes=15)


class BreakGlass(_Model):
    """Approve automatically when the triggering alert is at least this severe."""

    min_severity: Severity = Severity.CRITICAL


class ActionRights(_Model):
    """Who may act outside the approval gate. Unset lists default to the deciding roles (``decision.roles``, or
    every role of an automatic playbook); ``break_glass`` roles may take any action, but must give a reason and
    are flagged in the review."""

    revert_now: list[str] | None = Field(default=None, description="roles that may move everyone back at once")
    abort: list[str] | None = Field(default=None, description="roles that may stop the incident where it is")
    pause: list[str] | None = Field(default=None, description="roles that may pause and resume")
    break_glass: list[str] = Field(default_factory=list, description="roles that may do any of it with a reason")


class Decision(_Model):
    """Who may decide, how many must agree, and what happens when nobody answers."""

    mode: DecisionMode = DecisionMode.APPROVAL
    roles: list[str] = Field(default_factory=list, description="roles whose holders may decide")
    quorum: int = Field(default=1, ge=1, description="distinct approvals needed")
    require: dict[str, Annotated[int, Field(ge=1, le=20)]] = Field(
        default_factory=dict,
        description="distinct approvers needed per role, e.g. {on_call: 1, safety_lead: 1}; one person counts "
                    "once even when holding two roles",
    )
    actions: ActionRights = ActionRights()
    timeout: Duration = timedelta(minutes=15)
    escalation: Escalation | None = None
    default_action: DefaultAction = DefaultAction.HOLD
    break_glass: BreakGlass | None = None
    investigation_roles: list[str] = Field(
        default_factory=list, description="roles that decide after a fairness freeze (default: roles)"
    )


class TargetKind(StrEnum):
    FLAG = "flag"
    SERVING = "serving"


class KServeComponent(StrEnum):
    """The components of a KServe InferenceService; each has its own revisions and canary split."""

    PREDICTOR = "predictor"
    TRANSFORMER = "transformer"
    EXPLAINER = "explainer"


class Target(_Model):
    """A flag or serving object whose traffic split moves users between the previous and the new model."""

    kind: TargetKind = TargetKind.FLAG
    provider: str = Field(default="flagd", description="flagd | unleash | launchdarkly | http | kserve | ...")
    key: str = Field(min_length=1, description="flag key, or serving object name")
    previous_variant: str = "previous"
    candidate_variant: str = "candidate"
    project: str | None = None
    environment: str | None = None
    namespace: str | None = None
    component: KServeComponent | None = Field(
        default=None,
        description="kserve: the InferenceService component whose canary carries the release "
                    "(predictor | transformer | explainer); default predictor",
    )
    release_key: str | None = Field(
        default=None, max_length=253,
        description="where the target names the release its candidate serves (checked against the alerted release "
                    "before the first write). flagd/launchdarkly: the key of the candidate variant's object value "
                    "(default: release, version or model; without release_key a string value is the release "
                    "itself), else flagd "
                    "metadata.candidate_release / LaunchDarkly customProperties.candidate_release; unleash: the "
                    "key of the candidate strategy variant's JSON payload (without release_key, a string payload is the "
                    "release); "
                    "kserve: the InferenceService label or annotation (default app.kubernetes.io/version), or "
                    "`storageUri` for the last path segment of the component's model storageUri",
    )
    override_pending_changes: bool = Field(
        default=False,
        description="launchdarkly: write even when the flag has pending scheduled changes or approval requests "
                    "in the environment (they may then fail); by default the revert stops and says what is pending",
    )

    @model_validator(mode="after")
    def _provider_options(self) -> Target:
        if self.component is not None and self.provider != "kserve":
            raise ValueError(f"component applies to provider kserve only, not {self.provider!r}")
        if self.override_pending_changes and self.provider != "launchdarkly":
            raise ValueError(f"override_pending_changes applies to provider launchdarkly only, not {self.provider!r}")
        return self

    @property
    def ref(self) -> str:
        return f"{self.kind.value}:{self.provider}:{self.key}"


class Stage(_Model):
    """Move ``percent`` of users (cumulative) back to the previous model, bake, then verify."""

    percent: float = Field(gt=0, le=100)
    bake: Duration = timedelta(minutes=5)
    verify: list[str] = Field(default_factory=list, description="signals that must not breach after the bake")


class StageFailure(StrEnum):
    HALT = "halt"
    REVERT_ALL = "revert_all"


class TargetHeld(StrEnum):
    WAIT = "wait"  # wait at a gate naming the incident that holds the target; never write it meanwhile
    JOIN = "join"  # end this incident as part of the one that holds the target


class DriftAction(StrEnum):
    GATE = "gate"
    REAPPLY = "reapply"


class Rollback(_Model):
    targets: list[Target] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    on_stage_failure: StageFailure = StageFailure.HALT
    on_target_held: TargetHeld = Field(default=TargetHeld.WAIT, description="when another active incident holds "
                                       "a target: wait for it, or join it")
    check_served_release: bool = Field(default=True, description="before the first write, check that the "
                                       "alerted release is the candidate each target serves")
    on_drift: DriftAction = Field(
        default=DriftAction.GATE,
        description="a target found changed behind unship's back (during a bake, or before a write): `gate` asks a "
                    "person with the evidence (expected vs found), `reapply` writes the stage again and bakes anew")

    @model_validator(mode="after")
    def _stages_increase(self) -> Rollback:
        percents = [s.percent for s in self.stages]
        if any(b <= a for a, b in itertools.pairwise(percents)):
            raise ValueError(f"stage percentages must increase, got {percents}")
        if percents[-1] != 100:
            raise ValueError(f"the last stage must move 100% of users back, got {percents[-1]:g}%")
        return self


class ReadbackCheck(_Model):
    """The flag/serving state read back equals what the last stage intended."""

    kind: Literal["readback"] = "readback"
    name: Slug


class HttpCheck(_Model):
    kind: Literal["http"] = "http"
    name: Slug
    url: str
    expect_status: int = 200
    expect_json: dict[str, object] | None = None


class PromqlCheck(_Model):
    kind: Literal["promql"] = "promql"
    name: Slug
    query: str
    threshold: Threshold


class SqlCheck(_Model):
    """A read-only query whose first column of the first row must equal ``expect``."""

    kind: Literal["sql"] = "sql"
    name: Slug
    dsn_env: str = Field(description="environment variable holding the database URL (never the URL itself)")
    query: str
    expect: float | int | str | bool | None

    @field_validator("query")
    @classmethod
    def _read_only(cls, query: str) -> str:
        head = query.lstrip().split(None, 1)[0].lower() if query.strip() else ""
        if head not in ("select", "with", "values"):
            raise ValueError("an integrity query must be read-only (SELECT, WITH or VALUES)")
        return query


IntegrityCheck = Annotated[ReadbackCheck | HttpCheck | PromqlCheck | SqlCheck, Field(discriminator="kind")]


class Communications(_Model):
    channel: str = Field(description="chat channel for the incident thread, e.g. #ml-incidents")
    escalation_channel: str | None = None
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="overrides of message templates (Jinja2) by message kind: opened, decision_request, ...",
    )


class ReviewTask(_Model):
    title: str
    owner: str = Field(description="role responsible")
    due: Duration = timedelta(days=5)


class TrackerKind(StrEnum):
    STORE = "store"  # tasks live in the review document and the incident store only (the default)
    GITHUB = "github"  # GitHub Issues (REST)
    JIRA = "jira"  # Jira Cloud (REST v3)


class Tracker(_Model):
    """Where review tasks become tickets, and how they are kept in sync."""

    kind: TrackerKind = TrackerKind.STORE
    repository: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
                                   description="GitHub owner/repo")
    project: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]{0,31}$", description="Jira project key")
    issue_type: str = Field(default="Task", description="Jira issue type name")
    labels: list[str] = Field(default_factory=lambda: ["post-incident"])
    assignees: dict[str, str] = Field(
        default_factory=dict, description="role -> GitHub login or Jira accountId the role's tasks go to")
    sync_every: Duration = Field(default=timedelta(hours=1), description="how often task states are polled")

    @model_validator(mode="after")
    def _where(self) -> Tracker:
        if self.kind is TrackerKind.GITHUB and not self.repository:
            raise ValueError("a github tracker needs 'repository' (owner/repo)")
        if self.kind is TrackerKind.JIRA and not self.project:
            raise ValueError("a jira tracker needs 'project' (the project key, e.g. MLOPS)")
        if self.sync_every < timedelta(seconds=1):
            raise ValueError("'sync_every' must be at least 1s")
        return self


_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"


class SqlOutputs(_Model):
    """Outputs of the release in a SQL table (PostgreSQL or SQLite), tagged by a model-version column."""

    kind: Literal["sql"] = "sql"
    name: Slug
    dsn_env: str = Field(description="environment variable holding the database URL (never the URL itself)")
    table: str = Field(pattern=_IDENTIFIER, description="table (or schema.table) holding the outputs")
    version_column: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
                                description="column naming the release that produced each row")
    key_column: str = Field(default="id", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
                            description="a unique column, to delete in bounded batches")
    batch_size: int = Field(default=1000, ge=1, le=100_000)


class HttpOutputs(_Model):
    """Outputs behind an HTTP deletion endpoint (see activities/outputs.py for the contract)."""

    kind: Literal["http"] = "http"
    name: Slug
    url: str = Field(description="base URL of the endpoint; unship calls GET {url}/count and POST {url}/purge")
    token_env: str | None = Field(default=None, description="environment variable holding a bearer token")
    batch_size: int = Field(default=1000, ge=1, le=100_000)


OutputLocation = Annotated[SqlOutputs | HttpOutputs, Field(discriminator="kind")]


class Purge(_Model):
    """Delete the release's outputs at ``after`` (from the incident's start), once ``approvers`` agree."""

    after: Duration
    approvers: list[str] = Field(min_length=1, description="roles whose holders may approve the deletion")
    quorum: int = Field(default=1, ge=1)


class DataGovernance(_Model):
    """Where the bad release's outputs live, how long they are kept as evidence and when they are purged."""

    outputs: list[OutputLocation] = Field(min_length=1)
    retain: Duration | None = Field(default=None, description="keep the outputs this long (evidence, legal hold)")
    purge: Purge | None = None
    legal_hold_releasers: list[str] = Field(default_factory=list,
                                      description="roles that may release a legal hold (default: purge.approvers)")

    @model_validator(mode="after")
    def _consistent(self) -> DataGovernance:
        names = [o.name for o in self.outputs]
        if len(names) != len(set(names)):
            raise ValueError("outputs: names must be unique")
        if self.purge and self.retain and self.purge.after < self.retain:
            raise ValueError(f"purge.after ({format_duration(self.purge.after)}) comes before the end of the "
                             f"retention period ({format_duration(self.retain)}); purge no earlier than retain")
        if self.retain is None and self.purge is None:
            raise ValueError("say what happens to the outputs: 'retain', 'purge' or both")
        return self


class Regime(StrEnum):
    """The reporting regimes unship drafts a report for (a template each in templates/)."""

    EU_AI_ACT = "eu_ai_act_serious_incident"
    GDPR = "gdpr_breach"
    INTERNAL = "internal_risk_committee"


REGIME_DEADLINES = {
    # EU AI Act Art. 73(2): no later than 15 days after the provider becomes aware of the serious incident.
    Regime.EU_AI_ACT: timedelta(days=15),
    # GDPR Art. 33(1): without undue delay and, where feasible, not later than 72 hours after becoming aware.
    Regime.GDPR: timedelta(hours=72),
    Regime.INTERNAL: timedelta(days=5),
}


class RegulatoryReport(_Model):
    regime: Regime
    due: Duration | None = Field(default=None, description="deadline from detection (default: the regime's)")
    approvers: list[str] = Field(default_factory=lambda: ["compliance"],
                                 description="roles that approve and submit the report")

    @property
    def deadline(self) -> timedelta:
        return self.due if self.due is not None else REGIME_DEADLINES[self.regime]


class Regulatory(_Model):
    reports: list[RegulatoryReport] = Field(default_factory=list)
    active_users: float | None = Field(default=None, ge=0,
                                       description="users active at any moment, for exposure in user-minutes")
    remind_ahead: Duration = Field(default=timedelta(days=1), description="remind the approvers this long ahead")

    @model_validator(mode="after")
    def _unique(self) -> Regulatory:
        regimes = [r.regime for r in self.reports]
        if len(regimes) != len(set(regimes)):
            raise ValueError("reports: each regime at most once")
        return self


_PROVENANCE_SOURCE = re.compile(r"^(label|annotation):[A-Za-z_][A-Za-z0-9_.-]*$|^release$|^value:.+$")


class Provenance(_Model):
    """What the release served, field by field: ``label:NAME`` / ``annotation:NAME`` of the triggering
    alerts, ``release``, or a fixed ``value:TEXT`` (e.g. the evaluation set that gated the release)."""

    fields: dict[str, str] = Field(default_factory=dict)

    @field_validator("fields")
    @classmethod
    def _sources(cls, fields: dict[str, str]) -> dict[str, str]:
        for name, source in fields.items():
            if not _PROVENANCE_SOURCE.match(source):
                raise ValueError(f"{name}: {source!r} is not a source; write label:NAME, annotation:NAME, "
                                 "release or value:TEXT")
        return fields


class Review(_Model):
    tasks: list[ReviewTask] = Field(default_factory=list)
    tracker: Tracker = Tracker()
    regulatory_report_due: Duration | None = Field(
        default=None, description="deadline for a regulator notification, from the incident's start"
    )
    purge_outputs_after: Duration | None = Field(
        default=None, description="retention deadline for outputs of the bad release"
    )
    template: str | None = Field(default=None, description="review template name (default: review.md.j2)")


class Playbook(_Model):
    """One rollback playbook (``api_version: unship/v1``)."""

    api_version: Literal["unship/v1"] = "unship/v1"
    name: Slug
    description: str = ""
    scenario: RiskScenario
    owner: str | None = None
    roles: dict[str, Role] = Field(min_length=1)
    trigger: Trigger
    signals: list[Signal] = Field(min_length=1)
    confirmation: Confirmation = Confirmation()
    decision: Decision = Decision()
    rollback: Rollback
    integrity: list[IntegrityCheck] = Field(default_factory=list)
    communications: Communications
    review: Review = Review()
    provenance: Provenance = Provenance()
    data: DataGovernance | None = None
    regulatory: Regulatory = Regulatory()

    @model_validator(mode="after")
    def _references_resolve(self) -> Playbook:
        # Errors name the field path so the loader can point at the YAML line.
        signal_names = [s.name for s in self.signals]
        dupes = sorted({n for n in signal_names if signal_names.count(n) > 1})
        if dupes:
            raise ValueError(f"signals: duplicate signal names {dupes}")
        known = set(signal_names)
        if self.confirmation.rule:
            missing = [n for n in self.confirmation.rule.names if n not in known]
            if missing:
                raise ValueError(f"confirmation.rule: unknown signals {missing}; known: {sorted(known)}")
        for i, stage in enumerate(self.rollback.stages):
            missing = [n for n in stage.verify if n not in known]
            if missing:
                raise ValueError(f"rollback.stages.{i}.verify: unknown signals {missing}; known: {sorted(known)}")
        roles = set(self.roles)
        rights = self.decision.actions
        role_refs = [("decision.roles", self.decision.roles),
                     ("decision.investigation_roles", self.decision.investigation_roles),
                     ("decision.require", list(self.decision.require)),
                     ("decision.actions.break_glass", rights.break_glass)]
        role_refs += [(f"decision.actions.{name}", names) for name, names in
                      (("revert_now", rights.revert_now), ("abort", rights.abort), ("pause", rights.pause))
                      if names is not None]
        if self.decision.escalation:
            role_refs.append(("decision.escalation.roles", self.decision.escalation.roles))
        role_refs += [(f"review.tasks.{i}.owner", [t.owner]) for i, t in enumerate(self.review.tasks)]
        role_refs += [("review.tracker.assignees", list(self.review.tracker.assignees))]
        if self.data and self.data.purge:
            role_refs.append(("data.purge.approvers", self.data.purge.approvers))
        if self.data:
            role_refs.append(("data.legal_hold_releasers", self.data.legal_hold_releasers))
        role_refs += [(f"regulatory.reports.{i}.approvers", r.approvers)
                      for i, r in enumerate(self.regulatory.reports)]
        for where, names in role_refs:
            missing = [n for n in names if n not in roles]
            if missing:
                raise ValueError(f"{where}: unknown roles {missing}; known: {sorted(roles)}")
        if self.decision.mode is DecisionMode.APPROVAL and not self.decision.roles:
            raise ValueError("decision.roles: an approval playbook must say which roles may decide")
        checks = [c.name for c in self.integrity]
        if len(checks) != len(set(checks)):
            raise ValueError("integrity: check names must be unique")
        self._sequential_fits()
        return self

    def _sequential_fits(self) -> None:
        """Checks of ``method: sequential`` (and ``compare_to: control``) that need signals and confirmation."""
        conf = self.confirmation
        for i, signal in enumerate(self.signals):
            if signal.compare_to is CompareTo.CONTROL and not conf.is_sequential:
                raise ValueError(f"signals.{i}.compare_to: 'compare_to: control' is decided by the sequential "
                                 "test; set confirmation.method: sequential")
        if not conf.is_sequential:
            return
        seq = conf.sequential_settings
        if not any(s.counted for s in self.signals):
            raise ValueError("confirmation.method: 'sequential' needs at least one counter signal (a source "
                             "with 'events' and 'outputs', threshold direction above); none of "
                             f"{[s.name for s in self.signals]} has counts")
        step = conf.interval.total_seconds()
        for i, signal in enumerate(self.signals):
            if not signal.counted:
                continue
            if signal.threshold.value <= 0 and signal.compare_to is CompareTo.THRESHOLD:
                raise ValueError(f"signals.{i}.threshold.value: a sequential test needs a positive rate to "
                                 f"test against, got {signal.threshold.value:g}")
            if (seq.model is CountModel.BINOMIAL and signal.compare_to is CompareTo.THRESHOLD
                    and signal.threshold.value * seq.detect >= signal.source.per):
                raise ValueError(f"signals.{i}.threshold.value: with model binomial, threshold x detect "
                                 f"({signal.threshold.value * seq.detect:g}) must stay below per "
                                 f"({signal.source.per:g})")
            queries = [("events", signal.source.events), ("outputs", signal.source.outputs)]
            if signal.source.control is not None:
                queries += [("control.events", signal.source.control.events),
                            ("control.outputs", signal.source.control.outputs)]
            for field, query in queries:
                for text in _RANGE_RE.findall(query or ""):
                    seconds = _range_seconds(text)
                    if seconds is not None and seconds > step + 1e-9:
                        raise ValueError(
                            f"signals.{i}.source.{field}: counts over [{text}] overlap from one poll to the "
                            f"next (interval {format_duration(conf.interval)}); a sequential test needs the "
                            f"counts of each interval alone, e.g. increase(...[{format_duration(conf.interval)}])")

    @property
    def rule(self) -> CompositeRule:
        """The composite rule; without one, any signal breaching is a breach."""
        if self.confirmation.rule:
            return self.confirmation.rule
        return CompositeRule(any_of=[s.name for s in self.signals])

    def signal(self, name: str) -> Signal:
        return next(s for s in self.signals if s.name == name)

    def time_scaled(self, factor: float) -> Playbook:
        """The same playbook with every duration multiplied by ``factor`` (rehearsals at a speed-up, the demo)."""

        def scale(value: object) -> object:
            if isinstance(value, timedelta):
                return value * factor
            if isinstance(value, dict):
                return {k: scale(v) for k, v in value.items()}
            if isinstance(value, list):
                return [scale(v) for v in value]
            return value

        return Playbook.model_validate(scale(self.model_dump()))

    def roles_of(self, user: str, groups: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The roles ``user`` holds, directly or through one of ``groups``."""
        return sorted(name for name, role in self.roles.items()
                      if user in role.users or set(groups) & set(role.groups))

    def action_roles(self, action: str) -> list[str]:
        """The roles that may ``action`` (``revert_now``, ``abort``, ``pause``/``resume``) outside the gate."""
        rights = self.decision.actions
        stated = {"revert_now": rights.revert_now, "abort": rights.abort, "pause": rights.pause,
                  "resume": rights.pause}.get(action)
        if stated is not None:
            return list(stated)
        return list(self.decision.roles) or sorted(self.roles)

    def members(self, role_names: list[str]) -> tuple[set[str], set[str]]:
        """Users and groups holding any of ``role_names``."""
        users: set[str] = set()
        groups: set[str] = set()
        for name in role_names:
            role = self.roles.get(name)
            if role:
                users.update(role.users)
                groups.update(role.groups)
        return users, groups


class PlaybookSnapshot(_Model):
    """The validated playbook a workflow runs with, and the hash that names that exact version."""

    playbook: Playbook
    content_hash: str = Field(description="sha256 of the canonical JSON of the playbook")
    source: str = ""

    @property
    def version(self) -> str:
        return self.content_hash[:12]
