"""The pure trigger logic: composite rules, K-of-M, and "could not measure" never counting as bad."""

from __future__ import annotations

import pytest

from activities.contracts import Measurement, SignalObservation
from playbooks.models import CompositeRule, Confirmation
from tests.support.playbooks import playbook
from workflows.confirmation import BreachTracker, PollVerdict, assess_poll, fairness_rule, quality_rule


def obs(**measurements: str) -> list[SignalObservation]:
    return [SignalObservation(signal=name, category="model_quality", value=None if m == "no_data" else 1.0,
                              threshold="> 0", measurement=Measurement(m)) for name, m in measurements.items()]


@pytest.mark.parametrize(
    ("rule", "poll", "verdict"),
    [
        (CompositeRule(any_of=["a", "b"]), obs(a="breach", b="healthy"), PollVerdict.BREACH),
        (CompositeRule(any_of=["a", "b"]), obs(a="healthy", b="healthy"), PollVerdict.HEALTHY),
        (CompositeRule(any_of=["a", "b"]), obs(a="healthy", b="no_data"), PollVerdict.UNKNOWN),
        (CompositeRule(all_of=["a", "b"]), obs(a="breach", b="healthy"), PollVerdict.HEALTHY),
        (CompositeRule(all_of=["a", "b"]), obs(a="breach", b="breach"), PollVerdict.BREACH),
        (CompositeRule(all_of=["a", "b"]), obs(a="breach", b="no_data"), PollVerdict.UNKNOWN),
        (CompositeRule(at_least=2, of=["a", "b", "c"]), obs(a="breach", b="healthy", c="breach"), PollVerdict.BREACH),
        (CompositeRule(at_least=2, of=["a", "b", "c"]), obs(a="breach", b="healthy", c="healthy"),
         PollVerdict.HEALTHY),
        (CompositeRule(at_least=2, of=["a", "b", "c"]), obs(a="breach", b="no_data", c="healthy"),
         PollVerdict.UNKNOWN),
        # a signal the source did not report at all is "not measured", never a breach
        (CompositeRule(any_of=["a", "b"]), obs(a="healthy"), PollVerdict.UNKNOWN),
        (CompositeRule(all_of=["a"]), obs(a="no_data"), PollVerdict.UNKNOWN),
    ],
)
def test_composite_rules(rule: CompositeRule, poll: list[SignalObservation], verdict: PollVerdict) -> None:
    assert assess_poll(rule, poll).verdict is verdict


def test_k_of_m_needs_k_breaches_within_the_last_m_measured_polls() -> None:
    tracker = BreachTracker(breaches=3, out_of=5)
    for v in [PollVerdict.BREACH, PollVerdict.HEALTHY, PollVerdict.BREACH, PollVerdict.HEALTHY]:
        tracker.record(v)
    assert not tracker.sustained
    tracker.record(PollVerdict.BREACH)
    assert tracker.sustained
    assert tracker.count == 3


def test_old_breaches_slide_out_of_the_window() -> None:
    tracker = BreachTracker(breaches=2, out_of=3)
    for v in [PollVerdict.BREACH, PollVerdict.HEALTHY, PollVerdict.HEALTHY, PollVerdict.BREACH]:
        tracker.record(v)
    assert not tracker.sustained  # the first breach is no longer among the last 3
    assert "1 of the last 3" in tracker.describe()


def test_unknown_polls_count_neither_way() -> None:
    tracker = BreachTracker(breaches=2, out_of=2)
    tracker.record(PollVerdict.BREACH)
    for _ in range(10):
        tracker.record(PollVerdict.UNKNOWN)
    assert not tracker.sustained
    tracker.record(PollVerdict.BREACH)
    assert tracker.sustained


def test_min_samples_no_data_never_confirms_a_breach() -> None:
    """A source below min_samples reports NO_DATA; a run of those can neither trigger nor clear."""
    rule = CompositeRule(any_of=["hallucinations"])
    tracker = BreachTracker.for_confirmation(Confirmation(window="5m", interval="1m", breaches=2, out_of=3))
    for _ in range(5):
        tracker.record(assess_poll(rule, obs(hallucinations="no_data")).verdict)
    assert tracker.count == 0 and not tracker.sustained


def test_fairness_signals_take_their_own_path() -> None:
    pb = playbook(confirmation={"rule": None})
    assert quality_rule(pb).names == ["hallucinations", "latency_p95"]
    fair = fairness_rule(pb)
    assert fair is not None and fair.names == ["fairness_gap"]
    no_fairness = playbook(signals=[s.model_dump() for s in pb.signals[:2]], confirmation={"rule": None})
    assert fairness_rule(no_fairness) is None
