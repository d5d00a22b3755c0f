"""What the console's templates show, computed from an incident's status: the signal charts (server-side SVG,
so they read without JavaScript and in dark mode), the stage bar, the decision panel, the review and its
deadlines, and the times people read ("4 min ago", "in 12 min").

Pure functions over ``IncidentStatus`` and the playbook snapshot; the routes gather the data, the templates lay
it out.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

from activities.contracts import AuditEvent, ReviewDocument, SignalObservation
from playbooks.models import Direction, PlaybookSnapshot, Signal, format_duration
from workflows.messages import IncidentStatus, Phase

# --- times -----------------------------------------------------------------------------------------------------


def utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """"3 min ago", "2 h ago" (what the list's age column and the timeline say)."""
    if value is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - utc(value)).total_seconds()
    return f"{_span(abs(seconds))} {'ago' if seconds >= 0 else 'from now'}"


def until(value: datetime | None, now: datetime | None = None) -> str:
    """"in 12 min" or "4 min overdue"."""
    if value is None:
        return "-"
    seconds = (utc(value) - (now or datetime.now(UTC))).total_seconds()
    return f"in {_span(seconds)}" if seconds >= 0 else f"{_span(-seconds)} overdue"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{int(seconds // 86400)} d"


def iso(value: datetime | None) -> str:
    return utc(value).isoformat(timespec="seconds") if value else ""


def clock(value: datetime | str | None) -> str:
    """``2026-11-29 10:15:00 UTC`` (ISO strings too, as review tasks carry them)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    return utc(value).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


# --- the signal charts -----------------------------------------------------------------------------------------

W, H = 900, 200
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 22, 30


@dataclass
class Point:
    x: float
    y: float
    value: float | None
    measurement: str
    at: datetime | None
    label: str


@dataclass
class Marker:
    x: float
    label: str
    kind: str  # confirmed | decided | stage | closed


@dataclass
class Chart:
    """One signal's polls against its threshold, in SVG coordinates (the template draws it)."""

    signal: str
    category: str
    threshold: str
    threshold_y: float
    direction: str
    points: list[Point]
    markers: list[Marker]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    breaches: int
    width: int = W
    height: int = H
    plot: tuple[float, float, float, float] = (LEFT, TOP, W - RIGHT, H - BOTTOM)
    rows: list[SignalObservation] = field(default_factory=list)


def charts(status: IncidentStatus, snapshot: PlaybookSnapshot | None, now: datetime | None = None) -> list[Chart]:
    """One chart per signal that was polled (in the playbook's order), with the incident's milestones marked."""
    now = now or datetime.now(UTC)
    start = utc(status.started_at)
    end = utc(status.closed_at) if status.closed_at else now
    observed_at = [utc(o.observed_at) for o in status.evidence if o.observed_at]
    end = max([end, start + timedelta(seconds=1), *observed_at])
    span = (end - start).total_seconds()
    signals = {s.name: s for s in snapshot.playbook.signals} if snapshot else {}
    names = list(dict.fromkeys([*(n for n in signals if any(o.signal == n for o in status.evidence)),
                                *(o.signal for o in status.evidence)]))
    x0, y0, x1, y1 = LEFT, TOP, W - RIGHT, H - BOTTOM

    def x(at: datetime | None) -> float:
        if at is None:
            return x0
        return x0 + (x1 - x0) * min(1.0, max(0.0, (utc(at) - start).total_seconds() / span))

    markers = _markers(status, x)
    out = []
    for name in names:
        rows = [o for o in status.evidence if o.signal == name]
        signal: Signal | None = signals.get(name)
        threshold_value = signal.threshold.value if signal else _threshold_number(rows[0].threshold)
        values = [o.value for o in rows if o.value is not None]
        lo = min([0.0, *values, threshold_value or 0.0])
        hi = max([*values, threshold_value or 0.0, 1e-9]) * 1.15
        if hi <= lo:
            hi = lo + 1

        def y(v: float, lo: float = lo, hi: float = hi) -> float:
            return y1 - (v - lo) / (hi - lo) * (y1 - y0)

        points = [Point(x=round(x(o.observed_at), 1), y=round(y(o.value), 1) if o.value is not None else y1 - 3,
                        value=o.value, measurement=o.measurement.value, at=o.observed_at,
                        label=f"{_num(o.value)} at {clock(o.observed_at)}: {o.measurement.value}"
                              + (f" ({o.detail})" if o.detail else ""))
                  for o in rows]
        ticks = [(round(y(v), 1), _num(v)) for v in _nice_ticks(lo, hi)]
        out.append(Chart(
            signal=name, category=rows[0].category, threshold=rows[0].threshold,
            threshold_y=round(y(threshold_value), 1) if threshold_value is not None else -1,
            direction=signal.threshold.direction.value if signal else Direction.ABOVE.value,
            points=points, markers=markers, y_ticks=ticks,
            x_ticks=[(round(x0 + (x1 - x0) * f, 1), _offset(span * f)) for f in (0, 0.25, 0.5, 0.75, 1)],
            breaches=sum(p.measurement == "breach" for p in points), rows=rows,
        ))
    return out


def _markers(status: IncidentStatus, x: Any) -> list[Marker]:
    marks = []
    if status.detected_at:
        marks.append(Marker(x=round(x(status.detected_at), 1), label="confirmed", kind="confirmed"))
    if status.decided_at:
        marks.append(Marker(x=round(x(status.decided_at), 1), label="decided", kind="decided"))
    for stage in status.stages:
        if stage.applied_at:
            marks.append(Marker(x=round(x(stage.applied_at), 1), label=f"{stage.percent:g}%", kind="stage"))
    if status.closed_at:
        marks.append(Marker(x=round(x(status.closed_at), 1), label="closed", kind="closed"))
    return marks


def _threshold_number(text: str) -> float | None:
    for part in text.replace(">", " ").replace("<", " ").split():
        try:
            return float(part)
        except ValueError:
            continue
    return None


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """About four round values between ``lo`` and ``hi`` (1, 2, 2.5 or 5 times a power of ten apart)."""
    raw = (hi - lo) / 4
    if raw <= 0:
        return [lo]
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks: list[float] = []
    v = math.ceil(lo / step) * step
    while v <= hi + 1e-9 and len(ticks) < 8:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _num(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"


def _offset(seconds: float) -> str:
    whole = round(seconds)
    if whole < 3600:
        return f"+{whole // 60}:{whole % 60:02d}"
    return f"+{whole // 3600}h{(whole % 3600) // 60:02d}"


# --- stages, gate, review --------------------------------------------------------------------------------------


@dataclass
class StageView:
    index: int
    percent: float
    status: str
    applied_at: datetime | None
    bake_ends: datetime | None
    bake: str


def stages(status: IncidentStatus, snapshot: PlaybookSnapshot | None) -> list[StageView]:
    """The stage bar: each stage's percent and state, with when its bake ends while it bakes."""
    planned = snapshot.playbook.rollback.stages if snapshot and status.stages == [] else []
    if planned and status.phase in (Phase.CLOSED,) and not status.stages:
        planned = []
    bakes = {i: s.bake for i, s in enumerate(snapshot.playbook.rollback.stages)} if snapshot else {}
    views = [StageView(index=s.index, percent=s.percent, status=s.status, applied_at=s.applied_at,
                       bake_ends=(utc(s.applied_at) + bakes[s.index]) if s.applied_at and s.index in bakes
                       and s.status in ("applying", "baking") else None,
                       bake=format_duration(bakes[s.index]) if s.index in bakes else "")
             for s in status.stages]
    if not views:
        views = [StageView(index=i, percent=s.percent, status="planned", applied_at=None, bake_ends=None,
                           bake=format_duration(s.bake)) for i, s in enumerate(planned)]
    return views


@dataclass
class Deadline:
    what: str
    at: datetime


def deadlines(status: IncidentStatus, snapshot: PlaybookSnapshot | None) -> list[Deadline]:
    """The regulatory report and purge deadlines of the review (from the incident's start)."""
    if snapshot is None or status.review_workflow_id is None:
        return []
    review = snapshot.playbook.review
    start = utc(status.started_at)
    out = []
    if review.regulatory_report_due is not None:
        out.append(Deadline("regulatory report due", start + review.regulatory_report_due))
    if review.purge_outputs_after is not None:
        out.append(Deadline("purge the release's stored outputs", start + review.purge_outputs_after))
    return out


@cache
def _markdown() -> MarkdownIt:
    # CommonMark with raw HTML off: a reason typed into Slack or the API is shown as text, never as markup.
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> str:
    return str(_markdown().render(text))


def review_html(review: ReviewDocument | None) -> str | None:
    return render_markdown(review.markdown) if review and review.markdown else None


# --- the timeline ----------------------------------------------------------------------------------------------

_TONES = {
    "alert": "warn", "poll": "info", "confirmed": "warn", "gate_opened": "ask", "escalated": "warn",
    "decision": "ok", "decision_refused": "bad", "stage_applied": "ok", "stage_verified": "ok",
    "stage_failed": "bad", "apply_failed": "bad", "integrity_check": "ok", "integrity_failed": "bad",
    "closed": "done", "abort_requested": "bad", "revert_all_requested": "warn", "paused": "warn",
    "resumed": "info", "notification_failed": "bad", "audit_store_failed": "bad", "review_written": "done",
    "readback_failed": "bad",
}


def tone(event: AuditEvent) -> str:
    """The colour family of a timeline entry (refusals and failures stand out)."""
    if event.kind == "integrity_check" and event.data.get("passed") is False:
        return "bad"
    if event.kind == "poll" and event.data.get("verdict") == "breach":
        return "warn"
    return _TONES.get(event.kind, "info")


def timeline_html(events: list[AuditEvent]) -> Markup:
    """The timeline entries as HTML (written here rather than in a template: a page may hold thousands)."""
    esc = html.escape
    parts = []
    for e in events:
        at = utc(e.at)
        parts.append(
            f'<li class="event tone-{tone(e)}" id="event-{e.seq}" data-kind="{esc(e.kind)}">'
            f'<time datetime="{at.isoformat(timespec="seconds")}" title="{at:%Y-%m-%d %H:%M:%S} UTC">'
            f'{at:%H:%M:%S}</time><span class="kind">{esc(e.kind.replace("_", " "))}</span>'
            f'<span class="actor">{esc(e.actor)}</span><span class="message">{esc(e.message)}</span></li>\n')
    return Markup("".join(parts))


def merge_timeline(status_audit: list[AuditEvent], stored: list[AuditEvent]) -> list[AuditEvent]:
    """The workflow's audit trail plus what only the store has (the review's events), once each, in order."""
    seen = {e.seq for e in status_audit}
    return sorted([*status_audit, *(e for e in stored if e.seq not in seen)], key=lambda e: e.seq)
