"""The threshold advisor of the review's learning loop: the backtest sweep over the incident's own history.

``advise(request)`` rebuilds the signal history the incident recorded (every confirmation poll), splits off
its healthy stretch, and asks the threshold advisor (``tabletop.backtest.advise``, the sweep behind
``unship backtest --sweep``, on the workflow's own trigger logic) what other thresholds, and a looser K-of-M
test, would have done: how much earlier they would have confirmed, and how
many polls of the healthy stretch they would have called a breach (false alarms) or confirmed on.

The healthy stretch is the leading run of polls whose value stays on the healthy side of the midpoint between
the first poll's value and the threshold (before the signal started to move); an incident whose first poll
already breached has none, and the advisor then says it cannot judge false alarms instead of guessing.
A change is proposed only when it confirms earlier with no false alarm on the healthy stretch; among those,
the one closest to the current rule (the least aggressive) wins.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from activities.contracts import Lesson, LessonRequest
from playbooks.models import Direction, Playbook, format_duration
from tabletop.backtest import Sweep, apply_setting, backtest
from tabletop.backtest import advise as sweep_advice
from tabletop.history import History, Point

CANDIDATES = 6  # thresholds tried between the healthy stretch's worst value and the current threshold


def incident_history(request: LessonRequest) -> History:
    """The polls the incident recorded, as a History in seconds from the incident's start.

    Poll ``i`` is placed at ``first + i * interval``: the workflow's polls drift by the milliseconds each
    activity takes, and the backtest, polling on the exact interval, would otherwise read each poll's
    predecessor.
    """
    history = History()
    step = request.playbook.confirmation.interval.total_seconds() or 60.0
    first: float | None = None
    for index, poll in enumerate(request.polls):
        at = datetime.fromisoformat(str(poll.get("at")))
        if first is None:
            first = (at - request.started_at).total_seconds()
        t = first + index * step
        for obs in poll.get("observations") or []:
            if isinstance(obs, dict) and obs.get("signal"):
                value = obs.get("value")
                history.add(str(obs["signal"]), Point(t, float(value) if isinstance(value, (int, float)) else None,
                                                      obs.get("samples")))
    return history


def _healthy_until(playbook: Playbook, history: History, name: str) -> float | None:
    """End (seconds) of the signal's healthy stretch, or None when it has none."""
    signal = playbook.signal(name)
    points = [p for p in history.series.get(name, []) if p.value is not None]
    if not points or signal.threshold.breached_by(points[0].value or 0.0):
        return None
    first = points[0].value or 0.0
    mid = (first + signal.threshold.value) / 2
    end = None
    for p in points:
        value = p.value or 0.0
        if (value > mid) if signal.threshold.direction is Direction.ABOVE else (value < mid):
            break
        end = p.at_s
    return end


def _cut(history: History, until_s: float) -> History:
    cut = History()
    for name, points in history.series.items():
        for p in points:
            if p.at_s <= until_s:
                cut.add(name, p)
    return cut


def _false_alarms(playbook: Playbook, healthy: History, name: str) -> int:
    signal = playbook.signal(name)
    return sum(1 for p in healthy.series.get(name, []) if p.value is not None and signal.threshold.breached_by(p.value))


def advise(request: LessonRequest) -> Lesson:
    """First crossings, confirmation, and the proposed change (see the module docstring)."""
    pb = request.playbook
    history = incident_history(request)
    confirmed = ((request.detected_at - request.started_at).total_seconds()
                 if request.detected_at is not None else None)
    actual = backtest(pb, history).fired_at_s if history.series else None
    rows: list[dict[str, Any]] = []
    options: list[tuple[float, int, float, str, list[tuple[list[str | int], float]]]] = []
    start = min((p.at_s for points in history.series.values() for p in points), default=0.0)
    for signal in pb.signals:
        points = [p for p in history.series.get(signal.name, []) if p.value is not None]
        crossed = next((p.at_s for p in points if signal.threshold.breached_by(p.value or 0.0)), None)
        row: dict[str, Any] = {"signal": signal.name, "threshold": str(signal.threshold),
                               "first_crossed_after_s": crossed, "polls": len(points)}
        rows.append(row)
        if crossed is None or actual is None:
            continue
        healthy_end = _healthy_until(pb, history, signal.name)
        if healthy_end is None:
            row["advice"] = "no healthy polls were recorded before it crossed: false alarms cannot be judged here"
            continue
        healthy = _cut(history, healthy_end)
        values = [p.value for p in healthy.series.get(signal.name, []) if p.value is not None]
        worst = max(values) if signal.threshold.direction is Direction.ABOVE else min(values)
        row["healthy_polls"], row["healthy_worst"] = len(values), worst
        sweep = Sweep(f"{signal.name}.threshold", sorted({
            float(f"{worst + (signal.threshold.value - worst) * k / (CANDIDATES + 1):.3g}")
            for k in range(1, CANDIDATES + 1)}))
        advice = sweep_advice(pb, history, sweep, [(start, healthy_end)], [])
        row["sweep"] = [asdict(c) for c in advice.candidates]
        for c in advice.candidates:
            if c.value is None or c.error or c.fired_at_s is None or c.fired_at_s >= actual:
                continue
            candidate = apply_setting(pb, sweep.key, c.value)
            if c.false_confirmations or _false_alarms(candidate, healthy, signal.name):
                continue
            gain = actual - c.fired_at_s
            aggressive = -c.value if signal.threshold.direction is Direction.ABOVE else c.value
            options.append((gain, 1, aggressive,
                            f"set {signal.name} threshold from {signal.threshold.value:g} to {c.value:g}: would have "
                            f"confirmed {format_duration_s(gain)} earlier, with no false alarm on the {len(values)} "
                            f"healthy poll(s) (worst {worst:g})",
                            [(["signals", signal.name, "threshold", "value"], c.value)]))
    conf = pb.confirmation
    crossings = [r["first_crossed_after_s"] for r in rows if r["first_crossed_after_s"] is not None]
    quiet_end = min(crossings) - 1e-6 if crossings else None
    if actual is not None and conf.breaches > 1 and quiet_end is not None and quiet_end >= start:
        # a looser test, judged on the polls before any signal crossed (none: it cannot be judged here)
        advice = sweep_advice(pb, history, Sweep("breaches", [float(conf.breaches - 1)]), [(start, quiet_end)], [])
        c = advice.candidates[0]
        if c.error is None and c.fired_at_s is not None and c.fired_at_s < actual and not c.false_confirmations:
            gain = actual - c.fired_at_s
            options.append((gain, 0, 0.0, f"confirm on {conf.breaches - 1} of {conf.out_of} breaching polls "
                            f"(was {conf.breaches}): would have confirmed {format_duration_s(gain)} earlier; check "
                            "it against a longer healthy history with `unship backtest --sweep`",
                            [(["confirmation", "breaches"], conf.breaches - 1)]))
    lesson = Lesson(signals=rows, confirmed_after_s=confirmed)
    if options:
        # the largest gain; among equal gains a threshold change, then the least aggressive one
        best = max(options, key=lambda o: (o[0], o[1], -o[2]))
        lesson.proposal, lesson.changes = best[3], best[4]
    else:
        lesson.proposal = "no change: no other threshold or test would have confirmed earlier without false alarms"
    return lesson


def format_duration_s(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))
