"""Sequential tests on counts: confirm a sustained deterioration with a bound on false confirmations.

Pure and deterministic (no I/O, no clock, no randomness, standard library only), so the RollbackWorkflow,
``unship backtest`` and the tabletop runner all decide with this same code, and it imports inside Temporal's
workflow sandbox. docs/thresholds.md explains the tests for people; the short version:

* r0 is the signal's threshold (the acceptable rate), r1 = ``detect`` x r0 the rate to catch fast. Every poll
  gives the counts of its interval (events, outputs); its evidence is the log-likelihood ratio of r1 against
  r0, Poisson ``x ln(r1/r0) - n (r1 - r0)`` or binomial. With ``compare_to: control`` the evidence is that of
  the candidate's share of the events given the total: under H0 (same rate as the control cohort) the share
  is ``n1 / (n1 + n0)``, under H1 (``detect`` x the control's rate) ``d n1 / (d n1 + n0)``.
* ``cusum``: ``S = max(0, S + min(l, h / min_polls))``, confirmed once ``S >= h`` with
  ``h = ln(polls x signals / false_alarm)``. For each start poll k, ``exp(sum of l from k)`` is a
  non-negative martingale with mean 1 when the true rate is r0 (a supermartingale below r0, or with the cap),
  so by Ville's inequality it reaches ``e^h`` with probability at most ``e^-h``; a CUSUM alarm within
  ``polls`` polls needs one of ``polls`` such starts to get there: at most ``polls x e^-h`` = ``false_alarm /
  signals`` per signal, ``false_alarm`` for the family (Bonferroni).
* ``window_bound``: the counts of the last ``out_of`` measured polls are pooled, leaving out the
  ``min_polls - 1`` polls with the highest rate, and the exact Poisson (or, for shares, Wilson) lower
  confidence bound of the pooled rate must be above r0 at level ``false_alarm / (polls x signals)`` per
  look (a union bound over the looks of the window).

A poll with no counts (no data, fewer outputs than ``min_samples``, a counter reset giving negative counts,
more events than outputs under the binomial model) adds no evidence either way.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from activities.contracts import Measurement, SignalObservation
from playbooks.models import CompareTo, CountModel, Sequential, SequentialTest, Signal

_EPS = 1e-9  # S reaching h by min_polls equal steps of h / min_polls must count as reaching it


# --- counts of one poll ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """One poll's counts over its interval; ``control_*`` for the baseline cohort (``compare_to: control``)."""

    events: float
    outputs: float
    control_events: float | None = None
    control_outputs: float | None = None

    @property
    def rate(self) -> float:
        """Events per output."""
        return self.events / self.outputs


def counts_of(signal: Signal, observation: SignalObservation | None, model: CountModel = CountModel.POISSON
              ) -> Counts | None:
    """The poll's counts for ``signal``, or None when the poll carries no usable evidence.

    ``observation.events`` is used when the source gave it, otherwise ``value x samples / per`` (a source that
    reports the ratio and its outputs). None for: no observation, no value or outputs, fewer outputs than
    ``min_samples``, a negative or non-finite count (a counter reset), zero outputs, more events than outputs
    under the binomial model, and, for ``compare_to: control``, missing or unusable control counts.
    """
    if observation is None or observation.samples is None:
        return None
    if observation.measurement is Measurement.NO_DATA and observation.value is None:
        return None
    outputs = observation.samples
    events = observation.events
    if events is None:
        if observation.value is None:
            return None
        events = observation.value * outputs / signal.source.per
    if not _usable(events, outputs) or outputs < signal.min_samples:
        return None
    if model is CountModel.BINOMIAL and events > outputs:
        return None
    if signal.compare_to is CompareTo.CONTROL:
        c_events, c_outputs = observation.control_events, observation.control_outputs
        if c_events is None or c_outputs is None or not _usable(c_events, c_outputs):
            return None
        return Counts(events, outputs, c_events, c_outputs)
    return Counts(events, outputs)


def _usable(events: float, outputs: float) -> bool:
    return math.isfinite(events) and math.isfinite(outputs) and events >= 0 and outputs > 0


# --- evidence of one poll ----------------------------------------------------------------------------------------


def llr_poisson(events: float, outputs: float, r0: float, r1: float) -> float:
    """log P(events | rate r1) / P(events | rate r0) for Poisson counts; rates are per output."""
    return events * math.log(r1 / r0) - outputs * (r1 - r0)


def llr_binomial(events: float, outputs: float, p0: float, p1: float) -> float:
    """log-likelihood ratio of ``events`` successes in ``outputs`` trials, p1 against p0."""
    return events * math.log(p1 / p0) + (outputs - events) * math.log((1 - p1) / (1 - p0))


def llr_control(counts: Counts, ratio: float) -> float:
    """Candidate vs control: evidence that the candidate's rate is ``ratio`` x the control's rather than equal.

    Given the total events of both cohorts, the candidate's events are binomial with share
    ``n1 / (n1 + n0)`` under H0 and ``ratio n1 / (ratio n1 + n0)`` under H1 (the rate cancels out).
    """
    assert counts.control_events is not None and counts.control_outputs is not None
    n1, n0 = counts.outputs, counts.control_outputs
    p0 = n1 / (n1 + n0)
    p1 = ratio * n1 / (ratio * n1 + n0)
    return counts.events * math.log(p1 / p0) + counts.control_events * math.log((1 - p1) / (1 - p0))


def cusum_threshold(false_alarm: float, polls: int, signals: int = 1) -> float:
    """h = ln(polls x signals / false_alarm): the CUSUM confirms falsely with probability <= false_alarm."""
    return math.log(max(polls, 1) * max(signals, 1) / false_alarm)


# --- exact and approximate bounds --------------------------------------------------------------------------------


def gamma_p(a: float, x: float) -> float:
    """The regularized lower incomplete gamma function P(a, x) (series / continued fraction)."""
    if a <= 0:
        raise ValueError("gamma_p needs a > 0")
    if x <= 0:
        return 0.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return min(1.0, total * math.exp(log_front))
    # Lentz's continued fraction for Q(a, x).
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return max(0.0, 1.0 - math.exp(log_front) * h)


def poisson_sf(events: float, mean: float) -> float:
    """P(X >= events) for X ~ Poisson(mean), events rounded to a whole count."""
    k = round(events)
    if k <= 0:
        return 1.0
    return gamma_p(k, mean)


def poisson_lower_bound(events: float, alpha: float) -> float:
    """Exact (Garwood) one-sided lower confidence bound of a Poisson mean at level 1 - alpha."""
    k = round(events)
    if k <= 0:
        return 0.0
    lo, hi = 0.0, float(k)
    for _ in range(200):  # P(X >= k; mu) grows with mu; find where it equals alpha
        mid = (lo + hi) / 2
        if gamma_p(k, mid) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def normal_quantile(p: float) -> float:
    """z with Phi(z) = p (bisection on erfc; exact to ~1e-12)."""
    if not 0 < p < 1:
        raise ValueError("normal_quantile needs 0 < p < 1")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson_lower_bound(successes: float, trials: float, z: float) -> float:
    """Wilson score lower bound of a proportion (one-sided, z from the level)."""
    if trials <= 0:
        return 0.0
    p = min(1.0, max(0.0, successes / trials))
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - spread) / (1 + z2 / trials))


# --- what a person reads -----------------------------------------------------------------------------------------


class SignalEvidence(BaseModel):
    """Where one signal's confirmation stands, with the figures a person needs to judge it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: str
    method: str  # cusum | window_bound | k_of_m
    confirmed: bool
    statistic: float | None = None  # CUSUM evidence so far
    needed: float | None = None  # CUSUM threshold h
    polls: int = 0  # measured polls the figures below pool
    rate: float | None = None  # pooled rate, per ``per`` outputs (candidate)
    control_rate: float | None = None
    bound: float | None = None  # lower confidence bound of the pooled rate (or of the ratio to control)
    level: float | None = None  # confidence of that bound, e.g. 0.99
    threshold: float | None = None
    text: str = ""


def _pct(level: float) -> str:
    text = f"{level * 100:.4f}".rstrip("0").rstrip(".")
    return f"{text}%"


# --- the tests, one signal each ----------------------------------------------------------------------------------


class _CountTest:
    """What both sequential tests share: the hypotheses, the per-poll counts and the family's share of alpha."""

    method = "sequential"

    def __init__(self, signal: Signal, settings: Sequential, polls: int, family: int) -> None:
        self.signal = signal
        self.settings = settings
        self.polls = max(polls, 1)
        self.family = max(family, 1)
        self.alpha = settings.false_alarm / self.family  # this signal's share of the bound
        self.per = signal.source.per
        self.control = signal.compare_to is CompareTo.CONTROL
        self.r0 = signal.threshold.value / self.per  # per output
        self.r1 = self.r0 * settings.detect
        self.model = settings.model
        self.measured = 0
        self.skipped = 0
        self.confirmed_at: int | None = None  # measured-poll count at which it confirmed
        self.looks = 0

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None

    def counts(self, observation: SignalObservation | None) -> Counts | None:
        return counts_of(self.signal, observation, self.model)

    def llr(self, c: Counts) -> float:
        if self.control:
            return llr_control(c, self.settings.detect)
        if self.model is CountModel.BINOMIAL:
            return llr_binomial(c.events, c.outputs, self.r0, self.r1)
        return llr_poisson(c.events, c.outputs, self.r0, self.r1)

    def record(self, observation: SignalObservation | None) -> None:
        self.looks += 1
        c = self.counts(observation)
        if c is None:
            self.skipped += 1
            return
        self.update(c)

    def update(self, c: Counts) -> None:
        """Weigh one poll's counts (``record`` without the observation)."""
        self.measured += 1
        self._step(c)

    def _step(self, c: Counts) -> None:
        raise NotImplementedError

    def _rates_text(self, events: float, outputs: float, c_events: float, c_outputs: float, polls: int) -> str:
        rate = events / outputs * self.per if outputs else 0.0
        unit = _unit(self.per)
        if self.control:
            c_rate = c_events / c_outputs * self.per if c_outputs else 0.0
            return (f"candidate {rate:.1f}{unit} vs control {c_rate:.1f}{unit} over {polls} "
                    f"poll{'s' if polls != 1 else ''}")
        return f"pooled rate {rate:.1f}{unit} over {polls} poll{'s' if polls != 1 else ''}"


def _unit(per: float) -> str:
    if per == 10_000:
        return "/10k"
    if per == 1_000:
        return "/1k"
    if per == 100:
        return "%"
    return f"/{per:g}"


class CusumTest(_CountTest):
    """Log-likelihood-ratio CUSUM with each poll's contribution capped at ``h / min_polls``."""

    method = "cusum"

    def __init__(self, signal: Signal, settings: Sequential, polls: int, family: int) -> None:
        super().__init__(signal, settings, polls, family)
        self.h = cusum_threshold(settings.false_alarm, self.polls, self.family)
        self.cap = self.h / settings.min_polls
        self.statistic = 0.0
        self.peak = 0.0
        self.last: Counts | None = None
        # The polls since the statistic last stood at zero: what the evidence is made of.
        self.run: list[Counts] = []

    def _step(self, c: Counts) -> None:
        step = min(self.llr(c), self.cap)
        self.statistic = max(0.0, self.statistic + step)
        self.last = c
        if self.statistic > 0:
            self.run.append(c)
        else:
            self.run.clear()
        self.peak = max(self.peak, self.statistic)
        if self.confirmed_at is None and self.statistic >= self.h - _EPS:
            self.confirmed_at = self.measured

    def evidence(self) -> SignalEvidence:
        run = self.run
        events = sum(c.events for c in run)
        outputs = sum(c.outputs for c in run)
        c_events = sum(c.control_events or 0.0 for c in run)
        c_outputs = sum(c.control_outputs or 0.0 for c in run)
        level = 1 - self.alpha
        parts = [f"evidence {self.statistic:.1f} of {self.h:.1f} needed"]
        rate = control_rate = bound = None
        if run:
            parts.append(self._rates_text(events, outputs, c_events, c_outputs, len(run)))
            rate = events / outputs * self.per
            if self.control:
                control_rate = c_events / c_outputs * self.per if c_outputs else None
            else:
                bound = poisson_lower_bound(events, self.alpha) / outputs * self.per
                parts[-1] += f", {_pct(level)} lower bound {bound:.1f}"
        else:
            last = self.last
            if last is None:
                parts.append("no measured poll yet")
            elif self.control and last.control_events is not None and last.control_outputs:
                parts.append(f"last poll: candidate {last.rate * self.per:.1f}{_unit(self.per)} vs control "
                             f"{last.control_events / last.control_outputs * self.per:.1f}{_unit(self.per)}, "
                             "within what equal rates explain")
            else:
                parts.append(f"last poll {last.rate * self.per:.1f}{_unit(self.per)}, within what "
                             f"{self.signal.threshold.value:g}{_unit(self.per)} explains")
        if self.confirmed:
            parts.insert(0, "confirmed")
        if self.skipped:
            parts.append(f"{self.skipped} poll{'s' if self.skipped != 1 else ''} without counts")
        return SignalEvidence(
            signal=self.signal.name, method=self.method, confirmed=self.confirmed, statistic=self.statistic,
            needed=self.h, polls=len(run), rate=rate, control_rate=control_rate, bound=bound,
            level=level if bound is not None else None, threshold=self.signal.threshold.value,
            text=f"{self.signal.name}: " + "; ".join(parts),
        )


class WindowBoundTest(_CountTest):
    """Pooled counts of the last ``out_of`` measured polls against an exact lower confidence bound.

    Each look spends ``alpha / polls``. No burst confirms alone: a poll's events count only up to its
    expected events plus ``1 / min_polls`` of the excess the bound needs, so at least ``min_polls`` polls must
    carry the excess. Capping only lowers the pooled count, so the bound of each look still holds.
    """

    method = "window_bound"

    def __init__(self, signal: Signal, settings: Sequential, polls: int, family: int, out_of: int) -> None:
        super().__init__(signal, settings, polls, family)
        self.out_of = max(out_of, 1)
        self.per_look = self.alpha / self.polls
        self.z = normal_quantile(1 - self.per_look)
        self.recent: deque[Counts] = deque(maxlen=self.out_of)
        self.capped_polls = 0  # polls of the current pool whose events were capped

    def _step(self, c: Counts) -> None:
        self.recent.append(c)
        if self.confirmed_at is None and self._look().above:
            self.confirmed_at = self.measured

    def _look(self) -> _Look:
        """The pooled (capped) counts of the window and whether their bound is above the null."""
        polls = list(self.recent)
        outputs = sum(c.outputs for c in polls)
        if not polls or outputs <= 0:
            return _Look(0.0, 0.0, 0.0, 0.0, 0, False, 0)
        min_polls = self.settings.min_polls
        if self.control:
            c_events = sum(c.control_events or 0.0 for c in polls)
            c_outputs = sum(c.control_outputs or 0.0 for c in polls)
            total = sum(c.events + (c.control_events or 0.0) for c in polls)
            share0 = outputs / (outputs + c_outputs)
            need = self.z * math.sqrt(max(total * share0 * (1 - share0), 1e-12))
            caps = [(c.events + (c.control_events or 0.0)) * c.outputs / (c.outputs + (c.control_outputs or 0.0))
                    + need / min_polls for c in polls]
            events, capped = _capped(polls, caps)
            above = total > 0 and wilson_lower_bound(events, total - sum(c.events for c in polls) + events,
                                                     self.z) > share0
            return _Look(events, outputs, c_events, c_outputs, len(polls), above, capped)
        if self.model is CountModel.BINOMIAL:
            mean0 = outputs * self.r0
            need = self.z * math.sqrt(max(mean0 * (1 - self.r0), 1e-12))
            events, capped = _capped(polls, [c.outputs * self.r0 + need / min_polls for c in polls])
            above = wilson_lower_bound(events, outputs, self.z) > self.r0
            return _Look(events, outputs, 0.0, 0.0, len(polls), above, capped)
        mean0 = outputs * self.r0
        critical = poisson_critical(mean0, self.per_look, self.z)
        need = critical - mean0
        events, capped = _capped(polls, [c.outputs * self.r0 + need / min_polls for c in polls])
        return _Look(events, outputs, 0.0, 0.0, len(polls), events >= critical - _EPS, capped)

    def evidence(self) -> SignalEvidence:
        look = self._look()
        level = 1 - self.per_look
        rate = control_rate = bound = None
        parts: list[str] = []
        if look.polls and look.outputs > 0:
            rate = look.events / look.outputs * self.per
            text = self._rates_text(look.events, look.outputs, look.control_events, look.control_outputs,
                                    look.polls)
            if self.control and look.control_outputs > 0:
                control_rate = look.control_events / look.control_outputs * self.per
                share = wilson_lower_bound(look.events, look.events + look.control_events, self.z)
                bound = (share / (1 - share)) * (look.control_outputs / look.outputs) if share < 1 else math.inf
                text += f", {_pct(level)} lower bound of the ratio {bound:.2f} (needs > 1)"
            elif self.model is CountModel.BINOMIAL:
                bound = wilson_lower_bound(look.events, look.outputs, self.z) * self.per
                text += f", {_pct(level)} lower bound {bound:.1f} (needs > {self.signal.threshold.value:g})"
            else:
                bound = poisson_lower_bound(look.events, self.per_look) / look.outputs * self.per
                text += f", {_pct(level)} lower bound {bound:.1f} (needs > {self.signal.threshold.value:g})"
            parts.append(text)
            if look.capped:
                parts.append(f"{look.capped} poll{'s' if look.capped != 1 else ''} capped at "
                             f"1/{self.settings.min_polls} of the excess needed")
        else:
            parts.append("no measured poll yet")
        if self.confirmed:
            parts.insert(0, "confirmed")
        if self.skipped:
            parts.append(f"{self.skipped} poll{'s' if self.skipped != 1 else ''} without counts")
        return SignalEvidence(
            signal=self.signal.name, method=self.method, confirmed=self.confirmed, polls=look.polls, rate=rate,
            control_rate=control_rate, bound=bound, level=level if bound is not None else None,
            threshold=self.signal.threshold.value, text=f"{self.signal.name}: " + "; ".join(parts),
        )


@dataclass(frozen=True)
class _Look:
    events: float  # capped
    outputs: float
    control_events: float
    control_outputs: float
    polls: int
    above: bool
    capped: int


def _capped(polls: list[Counts], caps: list[float]) -> tuple[float, int]:
    """The polls' events, each at most its cap, and how many were capped."""
    total = 0.0
    capped = 0
    for c, cap in zip(polls, caps, strict=True):
        if c.events > cap:
            total += cap
            capped += 1
        else:
            total += c.events
    return total, capped


def poisson_critical(mean: float, alpha: float, z: float | None = None) -> float:
    """The smallest whole count k with P(X >= k) <= alpha for X ~ Poisson(mean)."""
    if mean <= 0:
        return 1.0
    z = normal_quantile(1 - alpha) if z is None else z
    k = max(1, math.ceil(mean + z * math.sqrt(mean) + (z * z + 2) / 6))  # a close start (Wilson-Hilferty-ish)
    while k > 1 and poisson_sf(k - 1, mean) <= alpha:
        k -= 1
    while poisson_sf(k, mean) > alpha:
        k += 1
    return float(k)


SignalTest = CusumTest | WindowBoundTest


def signal_test(signal: Signal, settings: Sequential, polls: int, family: int, out_of: int) -> SignalTest:
    """The sequential test ``settings`` choose for one counter signal."""
    if settings.test is SequentialTest.WINDOW_BOUND:
        return WindowBoundTest(signal, settings, polls, family, out_of)
    return CusumTest(signal, settings, polls, family)


__all__ = [
    "Counts",
    "CusumTest",
    "SignalEvidence",
    "SignalTest",
    "WindowBoundTest",
    "counts_of",
    "cusum_threshold",
    "gamma_p",
    "llr_binomial",
    "llr_control",
    "llr_poisson",
    "normal_quantile",
    "poisson_critical",
    "poisson_lower_bound",
    "poisson_sf",
    "signal_test",
    "wilson_lower_bound",
]
