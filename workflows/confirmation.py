"""Pure trigger logic: is this poll a breach, and is the breach sustained or a transient blip?

No Temporal, no I/O: the workflows call these functions with the observations an activity returned, and
the tests and ``unship backtest`` call them directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from activities.contracts import Measurement, SignalObservation
from playbooks.models import CompositeRule, Confirmation, Playbook, SignalCategory


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
