"""The sequential tests (workflows/sequential.py): bounds against scipy, the false-alarm bound and detection
over many seeded runs, the burst cap, polls without counts, control comparison and the composite rule."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pytest
from scipy import stats

from activities.contracts import Measurement, SignalObservation
from playbooks.models import Sequential, Signal
from tests.support.playbooks import playbook
from workflows.confirmation import (
    KOfMTracker,
    SequentialTracker,
    assess_poll,
    quality_rule,
    sequential_family,
    trackers,
)
from workflows.sequential import (
    Counts,
    CusumTest,
    WindowBoundTest,
    counts_of,
    cusum_threshold,
    llr_control,
    llr_poisson,
    normal_quantile,
    poisson_critical,
    poisson_lower_bound,
    poisson_sf,
    signal_test,
    wilson_lower_bound,
)

PER_MINUTE = 20_000
R0 = 30.0  # per 10k


def ratio_signal(name: str = "hallucinations", threshold: float = R0, **extra: Any) -> Signal:
    data: dict[str, Any] = {"name": name, "category": "model_quality",
                            "source": {"events": "e", "outputs": "o"}, "threshold": {"value": threshold}}
    data.update(extra)
    return Signal.model_validate(data)


SIGNAL = ratio_signal()
CONTROL = ratio_signal(compare_to="control",
                       source={"events": "e", "outputs": "o", "control": {"events": "ce", "outputs": "co"}})


def make(test: str, polls: int = 30, signals: int = 1, out_of: int = 10, signal: Signal = SIGNAL,
         **settings: Any) -> CusumTest | WindowBoundTest:
    return signal_test(signal, Sequential(test=test, **settings), polls, signals, out_of)


def simulate(test: str, multiple: float, outputs: int = PER_MINUTE, runs: int = 2000, polls: int = 30,
             seed: int = 7, **settings: Any) -> tuple[int, list[int]]:
    """Seeded Poisson traffic at ``multiple`` x the threshold: (false or true confirmations, delays in polls)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(outputs * R0 / 10_000 * multiple, size=(runs, polls))
    fired, delays = 0, []
    for row in counts:
        t = make(test, polls=polls, **settings)
        for i, x in enumerate(row):
            t.update(Counts(float(x), float(outputs)))
            if t.confirmed:
                fired += 1
                delays.append(i + 1)
                break
    return fired, delays


def upper_99(successes: int, trials: int) -> float:
    """One-sided 99% Clopper-Pearson upper bound of a rate (scipy)."""
    return float(stats.beta.ppf(0.99, successes + 1, trials - successes)) if successes < trials else 1.0


# --- the numerical building blocks agree with scipy -------------------------------------------------------------


@pytest.mark.parametrize("k,mean", [(1, 0.5), (5, 2.0), (60, 60.0), (80, 60.0), (200, 150.0), (1500, 1200.0),
                                    (3, 10.0), (700, 600.0)])
def test_poisson_tail_matches_scipy(k: int, mean: float) -> None:
    assert poisson_sf(k, mean) == pytest.approx(stats.poisson.sf(k - 1, mean), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k,alpha", [(1, 0.01), (10, 0.001), (300, 1e-4), (1500, 3e-5), (2, 0.2)])
def test_exact_poisson_lower_bound_matches_scipy(k: int, alpha: float) -> None:
    assert poisson_lower_bound(k, alpha) == pytest.approx(stats.chi2.ppf(alpha, 2 * k) / 2, rel=1e-8)
    assert poisson_lower_bound(0, alpha) == 0.0


@pytest.mark.parametrize("mean,alpha", [(0.3, 0.01), (1.5, 3.3e-4), (60.0, 3.3e-4), (600.0, 1e-5),
                                        (2500.0, 0.01)])
def test_poisson_critical_count_matches_scipy(mean: float, alpha: float) -> None:
    # the smallest k with P(X >= k) <= alpha
    assert poisson_critical(mean, alpha) == stats.poisson.isf(alpha, mean) + 1


def test_normal_quantile_and_wilson_bound() -> None:
    for p in (0.9, 0.99, 0.9997, 1 - 1e-7):
        assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), abs=1e-9)
    z = stats.norm.ppf(0.99)
    x, n = 42, 10_000
    p = x / n
    expected = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert wilson_lower_bound(x, n, z) == pytest.approx(expected)
    assert wilson_lower_bound(x, n, z) < p


def test_likelihood_ratios_have_mean_one_under_the_null() -> None:
    """exp(evidence) is a mean-1 martingale step at r0: the fact the false-alarm bound rests on."""
    n, r0, r1 = 20_000, R0 / 10_000, 1.2 * R0 / 10_000
    ks = np.arange(0, 400)
    mean = float(np.sum(stats.poisson.pmf(ks, n * r0) * np.exp([llr_poisson(k, n, r0, r1) for k in ks])))
    assert mean == pytest.approx(1.0, rel=1e-9)
    # control: given t events in both cohorts, the candidate's are binomial with its share of the outputs
    n1, n0, t = 20_000, 60_000, 240
    ks = np.arange(0, t + 1)
    pmf = stats.binom.pmf(ks, t, n1 / (n1 + n0))
    lrs = np.exp([llr_control(Counts(float(k), n1, float(t - k), n0), 1.2) for k in ks])
    assert float(np.sum(pmf * lrs)) == pytest.approx(1.0, rel=1e-9)


def test_cusum_threshold_is_the_union_bound() -> None:
    assert cusum_threshold(0.01, 30) == pytest.approx(math.log(3000))
    assert cusum_threshold(0.01, 30, signals=2) == pytest.approx(math.log(6000))
    t = make("cusum")
    assert t.h == pytest.approx(math.log(3000)) and t.cap == pytest.approx(t.h / 3)


# --- the false-alarm bound holds, detection is fast -----------------------------------------------------------


@pytest.mark.parametrize("test", ["cusum", "window_bound"])
@pytest.mark.parametrize("outputs", [500, PER_MINUTE, 50_000])
def test_false_confirmations_at_the_threshold_stay_under_the_bound(test: str, outputs: int) -> None:
    runs = 3000
    fired, _ = simulate(test, 1.0, outputs=outputs, runs=runs, seed=outputs)
    # The observed rate's 99% upper bound is below false_alarm (0.01): the bound holds with margin.
    assert upper_99(fired, runs) < 0.01, f"{fired} false confirmations in {runs} runs"


@pytest.mark.parametrize("test", ["cusum", "window_bound"])
def test_below_the_threshold_false_confirmations_are_rarer_still(test: str) -> None:
    fired, _ = simulate(test, 0.9, runs=2000, seed=11)
    assert fired <= 2


@pytest.mark.parametrize("test", ["cusum", "window_bound"])
def test_twice_the_threshold_confirms_within_min_polls(test: str) -> None:
    runs = 1000
    fired, delays = simulate(test, 2.0, runs=runs, seed=3)
    assert fired == runs
    assert sum(d == 3 for d in delays) >= 0.99 * runs  # min_polls = 3: never sooner, almost always then
    assert min(delays) == 3


@pytest.mark.parametrize("test", ["cusum", "window_bound"])
def test_a_rise_of_a_fifth_is_caught_within_a_median_of_8_polls(test: str) -> None:
    fired, delays = simulate(test, 1.2, runs=1000, seed=5)
    assert fired >= 990
    assert statistics.median(delays) <= 8


def test_binomial_model_holds_the_bound_too() -> None:
    runs = 2000
    fired, _ = simulate("cusum", 1.0, runs=runs, seed=21, model="binomial")
    assert upper_99(fired, runs) < 0.01
    fired, delays = simulate("cusum", 2.0, runs=200, seed=22, model="binomial")
    assert fired == 200 and statistics.median(delays) == 3


# --- bursts, missing data, counter resets -------------------------------------------------------------------------


@pytest.mark.parametrize("test", ["cusum", "window_bound"])
def test_one_huge_poll_does_not_confirm_alone(test: str) -> None:
    t = make(test)
    expected = PER_MINUTE * R0 / 10_000
    t.update(Counts(10 * expected, PER_MINUTE))  # a 60-second spike to 10x the threshold
    assert not t.confirmed
    for _ in range(29):
        t.update(Counts(0.9 * expected, PER_MINUTE))
    assert not t.confirmed


def test_one_huge_poll_adds_at_most_a_min_polls_share_of_the_evidence() -> None:
    t = make("cusum")
    assert isinstance(t, CusumTest)
    t.update(Counts(600, PER_MINUTE))
    assert llr_poisson(600, PER_MINUTE, R0 / 1e4, 1.2 * R0 / 1e4) > t.h  # uncapped it would have confirmed
    assert t.statistic == pytest.approx(t.h / 3)
    t.update(Counts(600, PER_MINUTE))
    t.update(Counts(600, PER_MINUTE))
    assert t.confirmed and t.confirmed_at == 3  # three sustained polls do


def observation(value: float | None, samples: float | None, measurement: Measurement = Measurement.HEALTHY,
                **counts: float | None) -> SignalObservation:
    return SignalObservation(signal="hallucinations", category="model_quality", value=value, threshold="> 30",
                             measurement=measurement, samples=samples, **counts)


def test_counts_come_from_the_events_or_from_value_and_outputs() -> None:
    assert counts_of(SIGNAL, observation(35.0, 20_000, events=70.0)) == Counts(70.0, 20_000)
    assert counts_of(SIGNAL, observation(35.0, 20_000)) == Counts(pytest.approx(70.0), 20_000)


@pytest.mark.parametrize("obs", [
    None,
    observation(None, None, Measurement.NO_DATA),
    observation(None, None, Measurement.BREACH),  # no_data: breach never counts as evidence
    observation(35.0, None),  # a value without outputs (an HTTP source)
    observation(-5.0, 20_000, events=-10.0),  # a counter reset: negative delta
    observation(35.0, -20_000, events=70.0),
    observation(35.0, 0, events=0.0),
    observation(math.nan, 20_000, events=math.nan),
])
def test_polls_without_usable_counts_add_no_evidence(obs: SignalObservation | None) -> None:
    assert counts_of(SIGNAL, obs) is None
    t = make("cusum")
    t.record(observation(60.0, 20_000, Measurement.BREACH, events=120.0))
    before = t.statistic if isinstance(t, CusumTest) else 0.0
    t.record(obs)
    assert isinstance(t, CusumTest) and t.statistic == before and t.skipped == 1 and t.measured == 1


def test_min_samples_and_binomial_overflow_add_no_evidence() -> None:
    guarded = ratio_signal(min_samples=1000)
    assert counts_of(guarded, observation(50.0, 400, events=2.0)) is None
    assert counts_of(SIGNAL, observation(1.2e4, 10, events=12.0), model=Sequential(model="binomial").model) is None


# --- control comparison ---------------------------------------------------------------------------------------------


def simulate_control(test: str, ratio: float, runs: int, seed: int, outputs: int = PER_MINUTE,
                     control_outputs: int = 3 * PER_MINUTE, base: float = 25.0) -> tuple[int, list[int]]:
    rng = np.random.default_rng(seed)
    x1 = rng.poisson(outputs * base / 1e4 * ratio, size=(runs, 30))
    x0 = rng.poisson(control_outputs * base / 1e4, size=(runs, 30))
    fired, delays = 0, []
    for a, b in zip(x1, x0, strict=True):
        t = make(test, signal=CONTROL)
        for i, (e1, e0) in enumerate(zip(a, b, strict=True)):
            t.update(Counts(float(e1), outputs, float(e0), control_outputs))
            if t.confirmed:
                fired += 1
                delays.append(i + 1)
                break
    return fired, delays


@pytest.mark.parametrize("test", ["cusum", "window_bound"])
def test_control_comparison_holds_the_bound_and_detects(test: str) -> None:
    runs = 2000
    fired, _ = simulate_control(test, 1.0, runs, seed=31)
    assert upper_99(fired, runs) < 0.01
    fired, delays = simulate_control(test, 2.0, 300, seed=32)
    assert fired == 300 and statistics.median(delays) <= 4


def test_control_needs_both_cohorts_counts() -> None:
    assert counts_of(CONTROL, observation(35.0, 20_000, events=70.0)) is None
    assert counts_of(CONTROL, observation(35.0, 20_000, events=70.0, control_events=-3.0,
                                          control_outputs=60_000)) is None
    assert counts_of(CONTROL, observation(35.0, 20_000, events=70.0, control_events=150.0,
                                          control_outputs=60_000)) == Counts(70.0, 20_000, 150.0, 60_000)


# --- what people read ---------------------------------------------------------------------------------------------


def test_cusum_evidence_in_human_terms() -> None:
    t = make("cusum")
    for x in (70, 72, 69):
        t.update(Counts(x, PER_MINUTE))
    e = t.evidence()
    assert e.method == "cusum" and not e.confirmed and e.polls == 3
    assert e.text.startswith(f"hallucinations: evidence {e.statistic:.1f} of {math.log(3000):.1f} needed; "
                             "pooled rate 35.2/10k over 3 polls, 99% lower bound ")
    assert e.bound is not None and e.bound < 35.2


def test_window_bound_evidence_in_human_terms() -> None:
    t = make("window_bound")
    for x in (70, 72, 69, 75, 71):
        t.update(Counts(x, PER_MINUTE))
    e = t.evidence()
    assert e.method == "window_bound" and e.polls == 5 and e.rate == pytest.approx(35.7)
    assert "pooled rate 35.7/10k over 5 polls, 99.9667% lower bound " in e.text
    assert e.text.endswith("(needs > 30)") and e.confirmed is (e.bound is not None and e.bound > 30)


# --- the composite rule over per-signal tests --------------------------------------------------------------------


SEQ_PLAYBOOK: dict[str, Any] = {
    "signals": [
        {"name": "hallucinations", "category": "model_quality",
         "source": {"type": "scripted", "events": "e", "outputs": "o"}, "threshold": {"value": 30}},
        {"name": "moderation", "category": "model_quality",
         "source": {"type": "scripted", "events": "e", "outputs": "o"}, "threshold": {"value": 10}},
        {"name": "latency_p95", "category": "operational_health", "source": {"type": "scripted"},
         "threshold": {"value": 2.5, "unit": "s"}},
    ],
    "confirmation": {"window": "30m", "interval": "1m", "breaches": 3, "out_of": 5, "method": "sequential",
                     "rule": {"any_of": ["hallucinations", "moderation", "latency_p95"]}},
    "rollback": {"targets": [{"key": "chat-model"}],
                 "stages": [{"percent": 10, "verify": ["latency_p95"]}, {"percent": 100}]},
}


def obs_for(name: str, value: float | None, samples: float | None = PER_MINUTE) -> SignalObservation:
    threshold = {"hallucinations": 30, "moderation": 10, "latency_p95": 2.5}[name]
    measurement = (Measurement.NO_DATA if value is None
                   else Measurement.BREACH if value > threshold else Measurement.HEALTHY)
    return SignalObservation(signal=name, category="model_quality", value=value, threshold=f"> {threshold}",
                             measurement=measurement, samples=samples if name != "latency_p95" else None)


def test_counter_signals_share_the_family_bound_and_others_keep_k_of_m() -> None:
    pb = playbook(signals=SEQ_PLAYBOOK["signals"], confirmation=SEQ_PLAYBOOK["confirmation"],
                  rollback=SEQ_PLAYBOOK["rollback"])
    assert sequential_family(pb) == 2
    quality, fairness = trackers(pb)
    assert fairness is None and isinstance(quality, SequentialTracker)
    tests = quality.tests
    assert isinstance(tests["hallucinations"], CusumTest) and isinstance(tests["moderation"], CusumTest)
    assert tests["hallucinations"].h == pytest.approx(math.log(30 * 2 / 0.01))
    assert tests["latency_p95"].method == "k_of_m"
    rule = quality_rule(pb)
    polls = [[obs_for("hallucinations", 29.0), obs_for("moderation", 9.0), obs_for("latency_p95", 3.0)]] * 3
    for observations in polls:
        quality.record_poll(assess_poll(rule, observations), observations)
    assert quality.confirmed == ["latency_p95"] and quality.sustained  # any_of: latency 3 of 5 confirms
    assert "latency_p95: 3 of the last 3 measured polls breached (sustained at 3 of 5)" in quality.describe()


def test_all_of_needs_every_signal_confirmed() -> None:
    conf = {**SEQ_PLAYBOOK["confirmation"], "rule": {"any_of": None, "all_of": ["hallucinations", "moderation"]}}
    pb = playbook(signals=SEQ_PLAYBOOK["signals"], confirmation=conf, rollback=SEQ_PLAYBOOK["rollback"])
    quality, _ = trackers(pb)
    rule = quality_rule(pb)
    for _ in range(5):
        observations = [obs_for("hallucinations", 60.0), obs_for("moderation", 9.0)]
        quality.record_poll(assess_poll(rule, observations), observations)
    assert quality.confirmed == ["hallucinations"] and not quality.sustained
    for _ in range(5):
        observations = [obs_for("hallucinations", 31.0), obs_for("moderation", 20.0)]
        quality.record_poll(assess_poll(rule, observations), observations)
    assert quality.sustained


def test_k_of_m_playbooks_keep_the_breach_tracker() -> None:
    quality, fairness = trackers(playbook())
    assert isinstance(quality, KOfMTracker) and isinstance(fairness, KOfMTracker)
    assert quality.evidence() == []
