"""Signal values over time: recorded metric history (CSV) or a scenario's scripted timeline.

A ``History`` holds, per signal, points ``(seconds from the start, value, samples)``; the value at time t is
the last point at or before t (a step function), and before the first point there is no data. Backtests and
tabletop exercises read both sources through this one class, so they agree on what "the value at t" is.

CSV layout: a ``timestamp`` column (ISO 8601, or seconds from the start) and one column per signal name. A
counter-based signal may instead give ``<signal>.events`` and ``<signal>.outputs``: the counts in that row's
measurement window (what the playbook's ``increase(...[window])`` queries return); the value is then
``events / outputs * per`` and ``outputs`` is the sample count that ``min_samples`` applies to. A signal with
``compare_to: control`` adds ``<signal>.control_events`` and ``<signal>.control_outputs`` (the baseline
cohort). An empty cell, ``NaN`` or ``null`` is "no data". Columns that are not signals of the playbook are
kept as text (``History.labels``, e.g. a label column marking healthy rows) and named in ``History.ignored``.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from playbooks.models import Signal

NO_DATA = ("", "nan", "null", "none", "na", "n/a", "-")


class HistoryError(ValueError):
    """A history file is invalid; the message says where (``file:line: column: problem``)."""


@dataclass(frozen=True)
class Point:
    at_s: float
    value: float | None
    samples: float | None = None
    events: float | None = None
    control_events: float | None = None
    control_outputs: float | None = None


@dataclass
class History:
    """Per-signal step functions over seconds from the start."""

    series: dict[str, list[Point]] = field(default_factory=dict)
    labels: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # non-signal columns, as text
    ignored: list[str] = field(default_factory=list)  # columns that are not signals of the playbook

    def add(self, signal: str, point: Point) -> None:
        points = self.series.setdefault(signal, [])
        bisect.insort(points, point, key=lambda p: p.at_s)

    def at(self, signal: str, at_s: float) -> Point | None:
        """The point in force at ``at_s`` (None before the first point or for an unknown signal)."""
        points = self.series.get(signal)
        if not points:
            return None
        index = bisect.bisect_right([p.at_s for p in points], at_s + 1e-9) - 1
        return points[index] if index >= 0 else None

    @property
    def end_s(self) -> float:
        return max((p.at_s for points in self.series.values() for p in points), default=0.0)

    @property
    def start_s(self) -> float:
        return min((p.at_s for points in self.series.values() for p in points), default=0.0)


def load_history(path: str | Path, signals: list[Signal] | None = None) -> History:
    """Read a history CSV; ``signals`` (the playbook's) turn counter columns into values with their ``per``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{path}:0: file: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}:0: file: cannot read: {exc}") from None
    return parse_history(text, str(path), signals)


def parse_history(text: str, source: str = "<history>", signals: list[Signal] | None = None) -> History:
    """Parse history CSV text (see the module docstring for the layout)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise HistoryError(f"{source}:1: file: empty; expected a header with a 'timestamp' column") from None
    if "timestamp" not in header:
        raise HistoryError(f"{source}:1: timestamp: the header has no 'timestamp' column (got {header})")
    per = {s.name: s.source.per for s in signals or []}
    known = {s.name for s in signals or []}
    columns = [h for h in header if h != "timestamp"]
    parts = (".events", ".outputs", ".control_events", ".control_outputs")
    counter_of = {c: c.rsplit(".", 1)[0] for c in columns if c.endswith(parts)}
    plain = [c for c in columns if c not in counter_of]
    counters = sorted(set(counter_of.values()))
    for name in counters:
        for part in ("events", "outputs"):
            if f"{name}.{part}" not in header:
                raise HistoryError(f"{source}:1: {name}.{part}: counter signal {name!r} needs both "
                                   f"'{name}.events' and '{name}.outputs' columns")
        if (f"{name}.control_events" in header) != (f"{name}.control_outputs" in header):
            raise HistoryError(f"{source}:1: {name}.control_events: the control cohort needs both "
                               f"'{name}.control_events' and '{name}.control_outputs' columns")
    history = History()
    if signals is not None:
        unknown = [c for c in plain if c not in known] + [c for c, n in counter_of.items() if n not in known]
        history.ignored = [c for c in columns if c in unknown]
        plain = [c for c in plain if c in known]
        counters = [n for n in counters if n in known]
    label_columns = [c for c in history.ignored if c not in counter_of]
    origin: datetime | None = None
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise HistoryError(f"{source}:{line}: row: {len(row)} cells, the header has {len(header)}")
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        at_s, origin = _timestamp(cells["timestamp"], origin, source, line)
        for name in plain:
            history.add(name, Point(at_s, _number(cells[name], source, line, name)))
        for name in label_columns:
            history.labels.setdefault(name, []).append((at_s, cells[name]))
        for name in counters:
            events = _number(cells[f"{name}.events"], source, line, f"{name}.events")
            outputs = _number(cells[f"{name}.outputs"], source, line, f"{name}.outputs")
            value = None
            if events is not None and outputs:
                value = events / outputs * per.get(name, 10_000)
            control_events = control_outputs = None
            if f"{name}.control_events" in cells:
                control_events = _number(cells[f"{name}.control_events"], source, line, f"{name}.control_events")
                control_outputs = _number(cells[f"{name}.control_outputs"], source, line,
                                          f"{name}.control_outputs")
            history.add(name, Point(at_s, value, outputs, events, control_events, control_outputs))
    if not history.series:
        raise HistoryError(f"{source}:1: file: no signal columns and rows")
    return history


def _timestamp(cell: str, origin: datetime | None, source: str, line: int) -> tuple[float, datetime | None]:
    try:
        return float(cell), origin
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(cell)
    except ValueError:
        raise HistoryError(f"{source}:{line}: timestamp: {cell!r} is neither ISO 8601 nor seconds") from None
    if origin is None:
        origin = stamp
    try:
        return (stamp - origin).total_seconds(), origin
    except TypeError:
        raise HistoryError(f"{source}:{line}: timestamp: mixes timestamps with and without a time zone") from None


def _number(cell: str, source: str, line: int, column: str) -> float | None:
    if cell.lower() in NO_DATA:
        return None
    try:
        value = float(cell)
    except ValueError:
        raise HistoryError(f"{source}:{line}: {column}: {cell!r} is not a number") from None
    return value if math.isfinite(value) else None
