"""Backtest: replay recorded metric history through a playbook's trigger rules.

Pure, like the rest of the decision logic: the same ``assess_poll`` / ``BreachTracker`` the RollbackWorkflow
confirms with, and the same ``classify`` every signal source uses (thresholds, ``min_samples``, ``no_data``).
The playbook is polled every ``confirmation.interval`` across the whole history, as if it watched the release
continuously; it "fires" at the first poll where the breach is sustained (``breaches`` of the last ``out_of``
measured polls), or at the first breaching poll when the confirmation window is zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from activities.routing import classify
from playbooks.models import Playbook
from tabletop.history import History
from workflows.confirmation import (
    BreachTracker,
    PollVerdict,
    assess_poll,
    fairness_rule,
    quality_rule,
)


class OverrideError(ValueError):
    """A ``--set`` that does not name a signal field with a usable value."""


@dataclass
class BacktestResult:
    """When (seconds from the history's start) the playbook would have fired, or that it would not have."""

    fired: bool
    fired_at_s: float | None
    kind: str | None  # "revert" (quality rule) or "investigation" (fairness rule)
    first_breach_at_s: float | None
    polls: int
    breaching_polls: int
    unmeasured_polls: int
    reason: str
    thresholds: dict[str, str] = field(default_factory=dict)
    breaches_at_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def apply_overrides(playbook: Playbook, sets: list[str]) -> Playbook:
    """A copy of ``playbook`` with ``signal.threshold=VALUE`` / ``signal.min_samples=N`` applied."""
    data = playbook.model_dump(mode="json")
    signals = {s["name"]: s for s in data["signals"]}
    for item in sets:
        key, sep, raw = item.partition("=")
        name, dot, attr = key.strip().rpartition(".")
        if not sep or not dot:
            raise OverrideError(f"--set {item!r}: write it as SIGNAL.threshold=VALUE or SIGNAL.min_samples=N")
        if name not in signals:
            raise OverrideError(f"--set {item!r}: no signal {name!r}; the playbook has {sorted(signals)}")
        try:
            value = float(raw)
        except ValueError:
            raise OverrideError(f"--set {item!r}: {raw!r} is not a number") from None
        if attr == "threshold":
            signals[name]["threshold"]["value"] = value
        elif attr == "min_samples":
            if value < 0 or value != int(value):
                raise OverrideError(f"--set {item!r}: min_samples must be a whole number >= 0")
            signals[name]["min_samples"] = int(value)
        else:
            raise OverrideError(f"--set {item!r}: only 'threshold' and 'min_samples' can be set")
    return Playbook.model_validate(data)


def backtest(playbook: Playbook, history: History) -> BacktestResult:
    """Poll ``history`` every confirmation interval with the playbook's rules; see the module docstring."""
    conf = playbook.confirmation
    quality, fairness = quality_rule(playbook), fairness_rule(playbook)
    tracker = BreachTracker.for_confirmation(conf)
    fair_tracker = BreachTracker.for_confirmation(conf)
    step = conf.interval.total_seconds() if conf.interval.total_seconds() > 0 else 60.0
    thresholds = {s.name: str(s.threshold) for s in playbook.signals}
    t, end = history.start_s, history.end_s
    polls = breaching = unmeasured = 0
    first_breach: float | None = None
    breaches_at: list[float] = []
    while t <= end + 1e-9:
        observations = []
        for signal in playbook.signals:
            point = history.at(signal.name, t)
            observations.append(classify(signal, point.value if point else None, point.samples if point else None))
        polls += 1
        verdict = assess_poll(quality, observations)
        fair = assess_poll(fairness, observations) if fairness else None
        tracker.record(verdict.verdict)
        if fair:
            fair_tracker.record(fair.verdict)
        is_breach = verdict.verdict is PollVerdict.BREACH or (fair is not None and fair.verdict is PollVerdict.BREACH)
        if is_breach:
            breaching += 1
            breaches_at.append(t)
            first_breach = first_breach if first_breach is not None else t
        elif verdict.verdict is PollVerdict.UNKNOWN:
            unmeasured += 1
        fired_fair = fair is not None and (fair_tracker.sustained or (conf.immediate and fair.verdict is PollVerdict.BREACH))
        fired_quality = tracker.sustained or (conf.immediate and verdict.verdict is PollVerdict.BREACH)
        if fired_fair or fired_quality:
            kind = "investigation" if fired_fair else "revert"
            why = (f"fairness breach sustained ({', '.join(fair.breached)})" if fired_fair and fair
                   else f"sustained breach ({verdict.describe()})")
            return BacktestResult(True, t, kind, first_breach, polls, breaching, unmeasured,
                                  f"{why}; {(fair_tracker if fired_fair else tracker).describe()}", thresholds,
                                  breaches_at)
        t += step
    reason = (f"never sustained: {breaching} breaching and {unmeasured} unmeasured of {polls} polls "
              f"(needs {conf.breaches} of {conf.out_of})")
    return BacktestResult(False, None, None, first_breach, polls, breaching, unmeasured, reason, thresholds,
                          breaches_at)
