"""Backtest and threshold advisor: replay recorded metric history through a playbook's trigger rules.

Pure, like the rest of the decision logic: the same ``assess_poll`` and trackers (K-of-M, or the sequential
tests of ``workflows.sequential``) the RollbackWorkflow confirms with, and the same ``classify`` every signal
source uses (thresholds, ``min_samples``, ``no_data``). The playbook is polled every ``confirmation.interval``
across the whole history, as if it watched the release continuously; it "fires" at the first poll where the
breach is sustained, or at the first breaching poll when the confirmation window is zero.

K-of-M watches continuously (``breaches`` of the last ``out_of`` measured polls). A sequential test's bound
holds per confirmation window, so with ``method: sequential`` the tests start afresh every ``window`` (as
back-to-back incidents would). Every poll reads the point in force, as the tabletop world does; a sequential
test then weighs that row's counts as one interval's, so history rows should be one interval apart
(``row_spacing_warning`` says when they are not).

``scan`` keeps going after a confirmation (fresh trackers from the next poll) and lists every confirmation:
the advisor (``advise``) counts those on stretches marked healthy as false, and with an injected rise
(``Injection``) measures the detection delay on the user's own traffic.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from activities.contracts import Measurement, SignalObservation
from activities.routing import classify
from playbooks.models import Playbook
from tabletop.history import History
from workflows.confirmation import PollVerdict, Tracker, assess_poll, fairness_rule, quality_rule, trackers


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
    # per signal: measured polls and breaching polls (the "never sustained" message names them)
    measured: dict[str, int] = field(default_factory=dict)
    breaching_by_signal: dict[str, int] = field(default_factory=dict)

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



# --- settings a backtest can vary ------------------------------------------------------------------------------

_CONFIRMATION_KEYS = {"breaches", "out_of"}
_SEQUENTIAL_KEYS = {"false_alarm", "detect", "min_polls"}
SWEEPABLE = ("SIGNAL.threshold", "SIGNAL.min_samples", "false_alarm", "detect", "min_polls", "breaches", "out_of")


def apply_setting(playbook: Playbook, key: str, value: float) -> Playbook:
    """``playbook`` with one setting changed: ``SIGNAL.threshold``, ``SIGNAL.min_samples``, ``breaches``,
    ``out_of``, or a sequential test's ``false_alarm`` / ``detect`` / ``min_polls``."""
    key = key.strip()
    if "." in key:
        return apply_overrides(playbook, [f"{key}={value!r}"])
    data = playbook.model_dump(mode="json")
    conf = data["confirmation"]
    whole = {"breaches", "out_of", "min_polls"}
    if key in whole and (value != int(value) or value < 1):
        raise OverrideError(f"{key}={value:g}: must be a whole number >= 1")
    if key in _CONFIRMATION_KEYS:
        conf[key] = int(value)
    elif key in _SEQUENTIAL_KEYS:
        if conf.get("method") != "sequential":
            raise OverrideError(f"{key}: the playbook does not use 'method: sequential' (it counts breaches; "
                                "sweep 'breaches' or a threshold instead)")
        conf["sequential"] = {**(conf.get("sequential") or {}), key: int(value) if key == "min_polls" else value}
    else:
        raise OverrideError(f"{key!r} cannot be varied; use one of {', '.join(SWEEPABLE)}")
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise OverrideError(f"{key}={value:g}: {message}") from None


@dataclass(frozen=True)
class Sweep:
    key: str
    values: list[float]


def parse_sweep(text: str) -> Sweep:
    """``SIGNAL.threshold=20:60:5`` (start:stop:step, stop included) or ``false_alarm=0.001,0.01,0.05``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise OverrideError(f"--sweep {text!r}: write it as SIGNAL.threshold=20:60:5 or false_alarm=0.001,0.01")
    try:
        if ":" in raw:
            parts = [float(p) for p in raw.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            count = min(math.floor((stop - start) / step + 1e-9) + 1, 1001)
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        raise OverrideError(f"--sweep {text!r}: {raw!r} is neither START:STOP:STEP (STEP > 0) nor a list "
                            "of numbers") from None
    if not values:
        raise OverrideError(f"--sweep {text!r}: no values")
    if len(values) > 1000:
        raise OverrideError(f"--sweep {text!r}: more than 1000 candidates")
    return Sweep(key.strip(), values)


@dataclass(frozen=True)
class Injection:
    """From ``at_s`` on, the signal's events (or value) are multiplied by ``factor``."""

    signal: str
    factor: float
    at_s: float


_INJECT_RE = re.compile(r"^\s*([^=\s]+)\s*=\s*x?\s*([0-9.]+)\s*@\s*([0-9.]+)\s*$")


def parse_injection(text: str) -> Injection:
    """``SIGNAL=x1.3@2400``: multiply SIGNAL by 1.3 from 2400 s after the history's start."""
    match = _INJECT_RE.match(text)
    if not match:
        raise OverrideError(f"--inject {text!r}: write it as SIGNAL=x1.3@2400 (factor, seconds from the start)")
    try:
        factor, at_s = float(match.group(2)), float(match.group(3))
    except ValueError:
        raise OverrideError(f"--inject {text!r}: factor and time must be numbers") from None
    if factor <= 0:
        raise OverrideError(f"--inject {text!r}: the factor must be positive")
    return Injection(match.group(1), factor, at_s)


def parse_healthy(text: str) -> tuple[float, float] | str:
    """``0:3600`` (seconds from the start) or the name of a label column whose truthy rows are healthy."""
    start, sep, end = text.partition(":")
    if sep:
        try:
            a, b = float(start), float(end)
        except ValueError:
            raise OverrideError(f"--healthy {text!r}: write START:END in seconds, or a label column") from None
        if b < a:
            raise OverrideError(f"--healthy {text!r}: END is before START")
        return (a, b)
    return text.strip()


_TRUTHY = {"1", "true", "yes", "y", "healthy", "ok", "good"}


def healthy_stretches(history: History, marks: list[tuple[float, float] | str]) -> list[tuple[float, float]]:
    """Seconds ranges marked healthy: explicit ranges, and the runs of truthy rows of label columns."""
    stretches: list[tuple[float, float]] = []
    for mark in marks:
        if isinstance(mark, tuple):
            stretches.append(mark)
            continue
        rows = history.labels.get(mark)
        if rows is None:
            raise OverrideError(f"--healthy {mark!r}: no such column; label columns: {sorted(history.labels)}")
        rows = sorted(rows)
        for i, (at_s, cell) in enumerate(rows):
            if cell.strip().lower() in _TRUTHY:
                end = rows[i + 1][0] if i + 1 < len(rows) else history.end_s + 1e-6
                stretches.append((at_s, end))
    return stretches


def _in(at_s: float, stretches: list[tuple[float, float]]) -> bool:
    return any(a <= at_s < b or (a == b == at_s) for a, b in stretches)


def injected(history: History, injections: list[Injection]) -> History:
    """A copy of ``history`` with each injection applied (counts scaled, the value recomputed)."""
    if not injections:
        return history
    series = {name: list(points) for name, points in history.series.items()}
    for inj in injections:
        if inj.signal not in series:
            raise OverrideError(f"--inject {inj.signal}: no such signal in the history; it has {sorted(series)}")
        series[inj.signal] = [
            replace(p, value=None if p.value is None else p.value * inj.factor,
                    events=None if p.events is None else p.events * inj.factor) if p.at_s >= inj.at_s else p
            for p in series[inj.signal]
        ]
    return History(series=series, labels=history.labels, ignored=history.ignored)


def row_spacing_warning(playbook: Playbook, history: History) -> str | None:
    """A sequential playbook weighs each row's counts once: say so when rows are further apart than polls."""
    conf = playbook.confirmation
    if not conf.is_sequential:
        return None
    step = conf.interval.total_seconds()
    for signal in playbook.signals:
        points = history.series.get(signal.name) or []
        if signal.counted and len(points) > 1:
            gaps = sorted(b.at_s - a.at_s for a, b in itertools.pairwise(points))
            median = gaps[len(gaps) // 2]
            if median > step * 1.5:
                return (f"warning: {signal.name} rows are {median:g}s apart but the playbook polls every {step:g}s; "
                        "a sequential test weighs a row's counts at every poll that reads it, as one interval's "
                        "(give one row per interval, with that interval's counts)")
    return None


# --- the scan ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirmation:
    at_s: float
    kind: str  # revert | investigation
    reason: str


def _observe(playbook: Playbook, history: History, t: float) -> list[SignalObservation]:
    """Each signal's observation at ``t``: the point in force, counts included (as the tabletop world reads it)."""
    observations = []
    for signal in playbook.signals:
        point = history.at(signal.name, t)
        observations.append(classify(
            signal, point.value if point else None, point.samples if point else None,
            events=point.events if point else None, control_events=point.control_events if point else None,
            control_outputs=point.control_outputs if point else None))
    return observations


@dataclass
class _Scan:
    """One pass over the history, firing as the workflow would; ``stop_at_first`` for ``backtest``."""

    playbook: Playbook
    history: History
    until_s: float | None = None  # poll until then (default: the history's last point)
    confirmations: list[Confirmation] = field(default_factory=list)
    polls: int = 0
    breaching: int = 0
    unmeasured: int = 0
    first_breach: float | None = None
    breaches_at: list[float] = field(default_factory=list)
    measured: dict[str, int] = field(default_factory=dict)
    breaching_by_signal: dict[str, int] = field(default_factory=dict)
    last_verdict: str = ""
    last_describe: str = ""

    def run(self, stop_at_first: bool) -> None:
        pb = self.playbook
        conf = pb.confirmation
        quality, fairness = quality_rule(pb), fairness_rule(pb)
        sequential = conf.is_sequential
        window = conf.polls if sequential else 0
        tracker, fair_tracker = trackers(pb)
        age = 0
        step = conf.interval.total_seconds() if conf.interval.total_seconds() > 0 else 60.0
        t = self.history.start_s
        end = self.history.end_s if self.until_s is None else self.until_s
        self.measured = {s.name: 0 for s in pb.signals}
        self.breaching_by_signal = {s.name: 0 for s in pb.signals}
        while t <= end + 1e-9:
            observations = _observe(pb, self.history, t)
            self.polls += 1
            for o in observations:
                if o.measurement is not Measurement.NO_DATA:
                    self.measured[o.signal] += 1
                if o.measurement is Measurement.BREACH:
                    self.breaching_by_signal[o.signal] += 1
            verdict = assess_poll(quality, observations)
            fair = assess_poll(fairness, observations) if fairness else None
            tracker.record_poll(verdict, observations)
            if fair and fair_tracker:
                fair_tracker.record_poll(fair, observations)
            age += 1
            is_breach = verdict.verdict is PollVerdict.BREACH or (fair is not None and fair.verdict is PollVerdict.BREACH)
            if is_breach:
                self.breaching += 1
                self.breaches_at.append(t)
                self.first_breach = self.first_breach if self.first_breach is not None else t
            elif verdict.verdict is PollVerdict.UNKNOWN:
                self.unmeasured += 1
            fired_fair = fair is not None and fair_tracker is not None and (
                fair_tracker.sustained or (conf.immediate and fair.verdict is PollVerdict.BREACH))
            fired_quality = tracker.sustained or (conf.immediate and verdict.verdict is PollVerdict.BREACH)
            self.last_verdict, self.last_describe = verdict.describe(), tracker.describe()
            if fired_fair or fired_quality:
                kind = "investigation" if fired_fair else "revert"
                why = (f"fairness breach sustained ({', '.join(fair.breached)})" if fired_fair and fair
                       else f"sustained breach ({verdict.describe()})")
                fired_by: Tracker | None = fair_tracker if fired_fair else tracker
                self.confirmations.append(Confirmation(t, kind, f"{why}; {fired_by.describe() if fired_by else ''}"))
                if stop_at_first:
                    return
                tracker, fair_tracker, age = *trackers(pb), 0
            elif sequential and age >= window:
                tracker, fair_tracker, age = *trackers(pb), 0  # window over: dismissed, a fresh confirmation
            t += step


def scan(playbook: Playbook, history: History) -> list[Confirmation]:
    """Every confirmation over the history, trackers starting afresh after each (see the module docstring)."""
    run = _Scan(playbook, history)
    run.run(stop_at_first=False)
    return run.confirmations


def backtest(playbook: Playbook, history: History, until_s: float | None = None) -> BacktestResult:
    """Poll ``history`` every confirmation interval with the playbook's rules; see the module docstring.

    ``until_s`` polls on past the last point (the last values hold), e.g. for a scenario's duration."""
    conf = playbook.confirmation
    run = _Scan(playbook, history, until_s)
    run.run(stop_at_first=True)
    thresholds = {s.name: str(s.threshold) for s in playbook.signals}

    def result(fired_at_s: float | None, kind: str | None, reason: str) -> BacktestResult:
        return BacktestResult(
            fired=fired_at_s is not None, fired_at_s=fired_at_s, kind=kind, first_breach_at_s=run.first_breach,
            polls=run.polls, breaching_polls=run.breaching, unmeasured_polls=run.unmeasured, reason=reason,
            thresholds=thresholds, breaches_at_s=run.breaches_at, measured=run.measured,
            breaching_by_signal=run.breaching_by_signal)

    if run.confirmations:
        first = run.confirmations[0]
        return result(first.at_s, first.kind, first.reason)
    per_signal = ", ".join(f"{name} {run.measured[name]} measured ({run.breaching_by_signal[name]} breaching)"
                           for name in run.measured)
    rule = (f"needs {conf.breaches} of {conf.out_of}" if not conf.is_sequential
            else f"sequential {conf.sequential_settings.test.value}, false_alarm {conf.sequential_settings.false_alarm:g}")
    reason = (f"never sustained: {run.breaching} breaching and {run.unmeasured} unmeasured of {run.polls} polls "
              f"({rule}); per signal: {per_signal}")
    if conf.is_sequential and run.last_describe:
        reason += f"; last: {run.last_describe}"
    return result(None, None, reason)


# --- the advisor -------------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One setting tried: would it have fired, when, false confirmations on healthy stretches, detection delay."""

    value: float | None
    fired: bool
    fired_at_s: float | None
    confirmations: int
    false_confirmations: int
    healthy_polls: int
    detected_at_s: float | None = None
    delay_s: float | None = None
    delay_polls: float | None = None
    error: str | None = None


@dataclass
class Advice:
    key: str | None
    candidates: list[Candidate]
    recommended: float | None
    why: str
    healthy_s: float
    injections: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Which way a setting makes the playbook more sensitive (fires sooner, more often).
_MORE_SENSITIVE_WHEN_SMALLER = {"threshold": True, "min_samples": True, "breaches": True, "min_polls": True,
                                "detect": True, "false_alarm": False, "out_of": False}


def evaluate(playbook: Playbook, history: History, healthy: list[tuple[float, float]],
             injections: list[Injection], value: float | None = None) -> Candidate:
    """One candidate: confirmations over the recorded history and the false ones on its healthy stretches;
    with injections, the first confirmation from the rise on in the injected copy (the detection delay)."""
    found = scan(playbook, history)
    false = [c for c in found if _in(c.at_s, healthy)]
    step = playbook.confirmation.interval.total_seconds() or 60.0
    healthy_polls = sum(int((b - a) // step) + 1 for a, b in healthy) if healthy else 0
    candidate = Candidate(value=value, fired=bool(found), fired_at_s=found[0].at_s if found else None,
                          confirmations=len(found), false_confirmations=len(false), healthy_polls=healthy_polls)
    if injections:
        onset = min(i.at_s for i in injections)
        after = [c for c in scan(playbook, injected(history, injections)) if c.at_s >= onset]
        if after:
            candidate.detected_at_s = after[0].at_s
            candidate.delay_s = after[0].at_s - onset
            candidate.delay_polls = math.floor(candidate.delay_s / step + 1e-9) + 1
    return candidate


def advise(playbook: Playbook, history: History, sweep: Sweep | None, healthy: list[tuple[float, float]],
           injections: list[Injection]) -> Advice:
    """Try every value of ``sweep`` (or just the playbook); recommend the most sensitive candidate that had no
    false confirmation on the healthy stretches (and, with an injection, detected it; fastest first)."""
    key = sweep.key if sweep else None
    candidates: list[Candidate] = []
    for value in (sweep.values if sweep else [None]):
        try:
            pb = apply_setting(playbook, key, value) if key is not None and value is not None else playbook
        except OverrideError as exc:
            candidates.append(Candidate(value, False, None, 0, 0, 0, error=str(exc)))
            continue
        candidates.append(evaluate(pb, history, healthy, injections, value))
    healthy_s = sum(b - a for a, b in healthy)
    usable = [c for c in candidates if c.error is None]
    clean = [c for c in usable if c.false_confirmations == 0]
    if injections:
        clean = [c for c in clean if c.detected_at_s is not None]
    recommended, why = None, ""
    if sweep is None:
        why = "no --sweep: the playbook as written"
    elif not healthy and not injections:
        why = "mark healthy stretches (--healthy) or inject a rise (--inject) to get a recommendation"
    elif not clean:
        why = ("no candidate stayed free of false confirmations on the healthy stretches"
               + (" while detecting the injected rise" if injections else ""))
    else:
        attr = key.rpartition(".")[2] if key else ""
        smaller = _MORE_SENSITIVE_WHEN_SMALLER.get(attr, True)
        if injections:
            best = min(clean, key=lambda c: (c.delay_s or 0.0, (c.value or 0) if smaller else -(c.value or 0)))
            why = (f"{key}={best.value:g}: no false confirmation on {healthy_s:g}s of healthy history and the "
                   f"shortest detection delay ({best.delay_s:g}s, poll {best.delay_polls:g} after the rise)")
        else:
            best = (min if smaller else max)(clean, key=lambda c: c.value or 0.0)
            why = (f"{key}={best.value:g}: the most sensitive setting with no false confirmation on {healthy_s:g}s "
                   "of healthy history (add --inject to weigh detection speed)")
        recommended = best.value
    return Advice(key, candidates, recommended, why, healthy_s,
                  [asdict(i) for i in injections])


def format_advice(advice: Advice) -> str:
    """The advisor's table for people."""
    head = f"{advice.key or 'playbook':>24} {'fired':>6} {'first (s)':>10} {'confirms':>9} {'false':>6}"
    if advice.injections:
        head += f" {'detected (s)':>13} {'delay (s)':>10} {'polls':>6}"
    lines = [head]
    for c in advice.candidates:
        label = "as written" if c.value is None else f"{c.value:g}"
        if c.error:
            lines.append(f"{label:>24} invalid: {c.error}")
            continue
        row = (f"{label:>24} {'yes' if c.fired else 'no':>6} "
               f"{'-' if c.fired_at_s is None else f'{c.fired_at_s:g}':>10} {c.confirmations:>9} "
               f"{c.false_confirmations:>6}")
        if advice.injections:
            row += (f" {'-' if c.detected_at_s is None else f'{c.detected_at_s:g}':>13}"
                    f" {'-' if c.delay_s is None else f'{c.delay_s:g}':>10}"
                    f" {'-' if c.delay_polls is None else f'{c.delay_polls:g}':>6}")
        lines.append(row)
    lines.append(f"healthy history: {advice.healthy_s:g}s; 'false' counts confirmations on it (recorded history)"
                 + ("; detection on a copy with the injected rise" if advice.injections else ""))
    if advice.recommended is not None:
        lines.append(f"recommended: {advice.why}")
    else:
        lines.append(advice.why)
    return "\n".join(lines)
