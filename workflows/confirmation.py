"""Pure trigger logic: is this poll a breach, and is the breach sustained or a transient blip?

No Temporal, no I/O: the workflows call these functions with the observations an activity returned, and
the tests and ``unship backtest`` call them directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from activities.contracts import Measurement, SignalObservation
from playbooks.models import CompositeRule, Confirmation, FamilyBound, Playbook, SignalCategory
from workflows.sequential import SignalEvidence, SignalTest, signal_test


class PollVerdict(StrEnum):
    BREACH = "breach"
    HEALTHY = "healthy"
    UNKNOWN = "unknown"  # too many signals could not be measured to tell either way


@dataclass(frozen=True)
class PollAssessment:
    verdict: PollVerdict
    breached: list[str]
    unmeasured: list[str]
    required: int

    def describe(self) -> str:
        parts = [f"{len(self.breached)} of {self.required} required breaching"]
        if self.breached:
            parts.append("breached: " + ", ".join(self.breached))
        if self.unmeasured:
            parts.append("not measured: " + ", ".join(self.unmeasured))
        return "; ".join(parts)


def assess_poll(rule: CompositeRule, observations: list[SignalObservation]) -> PollAssessment:
    """Combine one poll's per-signal measurements with the composite rule.

    A poll is a breach when at least ``rule.required`` of the rule's signals breached. When it is not, but
    the unmeasured signals could have made it one, the poll is UNKNOWN: "could not measure" never counts as
    bad, and never as good either.
    """
    by_name = {o.signal: o for o in observations}
    breached = [n for n in rule.names if n in by_name and by_name[n].measurement is Measurement.BREACH]
    unmeasured = [n for n in rule.names if n not in by_name or by_name[n].measurement is Measurement.NO_DATA]
    if len(breached) >= rule.required:
        verdict = PollVerdict.BREACH
    elif len(breached) + len(unmeasured) >= rule.required and unmeasured:
        verdict = PollVerdict.UNKNOWN
    else:
        verdict = PollVerdict.HEALTHY
    return PollAssessment(verdict, breached, unmeasured, rule.required)


@dataclass
class BreachTracker:
    """K-of-M over the last M measured polls (UNKNOWN polls do not count either way)."""

    breaches: int
    out_of: int
    recent: deque[bool] = field(default_factory=deque)

    @classmethod
    def for_confirmation(cls, confirmation: Confirmation) -> BreachTracker:
        return cls(confirmation.breaches, confirmation.out_of)

    def record(self, verdict: PollVerdict) -> None:
        if verdict is PollVerdict.UNKNOWN:
            return
        self.recent.append(verdict is PollVerdict.BREACH)
        while len(self.recent) > self.out_of:
            self.recent.popleft()

    @property
    def count(self) -> int:
        return sum(self.recent)

    @property
    def sustained(self) -> bool:
        return self.count >= self.breaches

    def describe(self) -> str:
        return f"{self.count} of the last {len(self.recent)} measured polls breached (sustained at {self.breaches} of {self.out_of})"


class SignalBreaches:
    """K-of-M for one signal inside a sequential playbook (a signal without counts, e.g. latency)."""

    method = "k_of_m"

    def __init__(self, name: str, confirmation: Confirmation) -> None:
        self.name = name
        self.tracker = BreachTracker.for_confirmation(confirmation)

    def record(self, observation: SignalObservation | None) -> None:
        if observation is None or observation.measurement is Measurement.NO_DATA:
            return
        self.tracker.record(PollVerdict.BREACH if observation.measurement is Measurement.BREACH
                            else PollVerdict.HEALTHY)

    @property
    def confirmed(self) -> bool:
        return self.tracker.sustained

    def evidence(self) -> SignalEvidence:
        return SignalEvidence(signal=self.name, method=self.method, confirmed=self.confirmed,
                              polls=len(self.tracker.recent), text=f"{self.name}: {self.tracker.describe()}")


class SequentialTracker:
    """``method: sequential``: one test per signal of ``rule``, combined by the rule.

    Counter signals get the playbook's sequential test (their share of the family's false-alarm bound), the
    others K-of-M; the breach is sustained once ``rule.required`` of the rule's signals are confirmed. A
    sequential signal stays confirmed once its evidence crossed the threshold within the window.
    """

    def __init__(self, playbook: Playbook, rule: CompositeRule, family: int) -> None:
        conf = playbook.confirmation
        self.rule = rule
        self.tests: dict[str, SignalTest | SignalBreaches] = {}
        for name in rule.names:
            signal = playbook.signal(name)
            if signal.counted:
                self.tests[name] = signal_test(signal, conf.sequential_settings, conf.polls, family, conf.out_of)
            else:
                self.tests[name] = SignalBreaches(name, conf)

    def record_poll(self, assessment: PollAssessment, observations: list[SignalObservation]) -> None:
        by_name = {o.signal: o for o in observations}
        for name, test in self.tests.items():
            test.record(by_name.get(name))

    @property
    def confirmed(self) -> list[str]:
        return [name for name, test in self.tests.items() if test.confirmed]

    @property
    def sustained(self) -> bool:
        return len(self.confirmed) >= self.rule.required

    def evidence(self) -> list[SignalEvidence]:
        return [test.evidence() for test in self.tests.values()]

    def describe(self) -> str:
        head = f"{len(self.confirmed)} of {self.rule.required} required signal(s) confirmed"
        return "; ".join([head, *(e.text for e in self.evidence())])


class KOfMTracker:
    """The default rule (``method: k_of_m``) behind the same interface as ``SequentialTracker``."""

    def __init__(self, confirmation: Confirmation) -> None:
        self.tracker = BreachTracker.for_confirmation(confirmation)

    def record_poll(self, assessment: PollAssessment, observations: list[SignalObservation]) -> None:
        self.tracker.record(assessment.verdict)

    @property
    def sustained(self) -> bool:
        return self.tracker.sustained

    def evidence(self) -> list[SignalEvidence]:
        return []

    def describe(self) -> str:
        return self.tracker.describe()


Tracker = SequentialTracker | KOfMTracker


def sequential_family(playbook: Playbook) -> int:
    """How many signals share the false-alarm bound: the counter signals the rules test (Bonferroni)."""
    if playbook.confirmation.sequential_settings.family is FamilyBound.PER_SIGNAL:
        return 1
    fairness = fairness_rule(playbook)
    names = set(quality_rule(playbook).names) | set(fairness.names if fairness else [])
    return max(1, sum(1 for s in playbook.signals if s.name in names and s.counted))


def trackers(playbook: Playbook) -> tuple[Tracker, Tracker | None]:
    """The quality tracker and the fairness tracker (None without fairness signals) for one confirmation."""
    quality, fairness = quality_rule(playbook), fairness_rule(playbook)
    conf = playbook.confirmation
    if not conf.is_sequential:
        return KOfMTracker(conf), (KOfMTracker(conf) if fairness else None)
    family = sequential_family(playbook)
    return (SequentialTracker(playbook, quality, family),
            SequentialTracker(playbook, fairness, family) if fairness else None)


def quality_rule(playbook: Playbook) -> CompositeRule:
    """The rule that leads to a revert: the playbook's rule, or any non-fairness signal."""
    if playbook.confirmation.rule:
        return playbook.confirmation.rule
    names = [s.name for s in playbook.signals if s.category is not SignalCategory.FAIRNESS]
    return CompositeRule(any_of=names or [s.name for s in playbook.signals])


def fairness_rule(playbook: Playbook) -> CompositeRule | None:
    """Any fairness signal breaching freezes the rollout for an investigation instead of reverting."""
    names = [s.name for s in playbook.signals if s.category is SignalCategory.FAIRNESS]
    return CompositeRule(any_of=names) if names else None
