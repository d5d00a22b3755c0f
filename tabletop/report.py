"""``unship tabletop --report DIR``: a Markdown report per run, with one SVG timeline chart per scenario.

The chart is plain SVG written here (no plotting dependency): one panel per signal with its observed values
(dots; red when breaching, grey when not measured) and its threshold (dashed), and a bottom panel with the
share of users on the previous model over time; vertical markers show detection, the decision and the close.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tabletop.results import clock, format_result

WIDTH, LEFT, RIGHT = 900, 150, 20
PANEL, GAP, TOP = 70, 18, 30


def _x(t: float, end: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (t / end if end > 0 else 0)


def chart_svg(result: Any) -> str:
    """The SVG timeline chart of one ``TabletopResult``."""
    playbook = result.loaded.snapshot.playbook
    signals = [s for s in playbook.signals if any(o[1] == s.name for o in result.observations)]
    end = max([result.simulated_s, *(o[0] for o in result.observations), *(t for t, _ in result.splits), 1.0])
    panels = len(signals) + 1
    height = TOP + panels * (PANEL + GAP) + 30
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'font-family="sans-serif" font-size="11">'),
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           (f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{html.escape(result.scenario)}: '
            f'{html.escape(result.outcome or "still running")}</text>')]
    for i, signal in enumerate(signals):
        y0 = TOP + i * (PANEL + GAP)
        points = [o for o in result.observations if o[1] == signal.name]
        values = [o[2] for o in points if o[2] is not None] + [signal.threshold.value]
        lo, hi = min(0.0, *values), max(values) * 1.15 or 1.0

        def y(v: float, y0: float = y0, lo: float = lo, hi: float = hi) -> float:
            return y0 + PANEL - (v - lo) / (hi - lo) * PANEL if hi > lo else y0 + PANEL / 2

        out.append(f'<rect x="{LEFT}" y="{y0}" width="{WIDTH - LEFT - RIGHT}" height="{PANEL}" fill="#f7f7f7" '
                   f'stroke="#ccc"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y0 + 14}" text-anchor="end">{html.escape(signal.name)}</text>')
        out.append(f'<text x="{LEFT - 6}" y="{y0 + 28}" text-anchor="end" fill="#c00">'
                   f'{html.escape(str(signal.threshold))}</text>')
        ty = y(signal.threshold.value)
        out.append(f'<line x1="{LEFT}" y1="{ty:.1f}" x2="{WIDTH - RIGHT}" y2="{ty:.1f}" stroke="#c00" '
                   f'stroke-dasharray="5,3"/>')
        for t, _, value, measurement in points:
            if value is None:
                out.append(f'<circle cx="{_x(t, end):.1f}" cy="{y0 + PANEL - 4}" r="2.5" fill="#999"/>')
            else:
                color = "#c00" if measurement == "breach" else "#2a6"
                out.append(f'<circle cx="{_x(t, end):.1f}" cy="{y(value):.1f}" r="3" fill="{color}"/>')
    y0 = TOP + len(signals) * (PANEL + GAP)
    out.append(f'<rect x="{LEFT}" y="{y0}" width="{WIDTH - LEFT - RIGHT}" height="{PANEL}" fill="#f3f6fb" '
               f'stroke="#ccc"/>')
    out.append(f'<text x="{LEFT - 6}" y="{y0 + 14}" text-anchor="end">users on previous</text>')
    for fault in result.loaded.scenario.faults:  # fault windows, shaded across the split panel
        start = fault.start.total_seconds()
        stop = min(fault.end.total_seconds() if fault.end is not None else end, end)
        if start < end:
            out.append(f'<rect x="{_x(start, end):.1f}" y="{y0}" width="{max(_x(stop, end) - _x(start, end), 1):.1f}" '
                       f'height="{PANEL}" fill="#fbb" opacity="0.5"/>')
            out.append(f'<text x="{_x(start, end) + 2:.1f}" y="{y0 + 12}" fill="#a00">{fault.system} '
                       f'{fault.kind.value}</text>')
    previous = result.loaded.scenario.initial_previous_percent
    path, t_prev = [f"M{_x(0, end):.1f},{y0 + PANEL - previous / 100 * PANEL:.1f}"], 0.0
    for t, percent in sorted(result.splits):
        path.append(f"L{_x(t, end):.1f},{y0 + PANEL - previous / 100 * PANEL:.1f}")
        path.append(f"L{_x(t, end):.1f},{y0 + PANEL - percent / 100 * PANEL:.1f}")
        previous, t_prev = percent, t
        out.append(f'<text x="{_x(t, end) + 3:.1f}" y="{y0 + PANEL - percent / 100 * PANEL + 12:.1f}" '
                   f'fill="#246">{percent:g}%</text>')
    path.append(f"L{_x(end, end):.1f},{y0 + PANEL - previous / 100 * PANEL:.1f}")
    out.append(f'<path d="{" ".join(path)}" fill="none" stroke="#246" stroke-width="2"/>')
    bottom = y0 + PANEL
    for label, at, color in (("detected", result.detected_at_s, "#d80"), ("decided", result.decided_at_s, "#80d"),
                             ("closed", result.closed_at_s, "#333")):
        if at is not None:
            x = _x(at, end)
            out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" stroke="{color}" '
                       f'stroke-width="1"/>')
            anchor = "end" if x > WIDTH - 80 else "start"
            out.append(f'<text x="{x + (-2 if anchor == "end" else 2):.1f}" y="{TOP - 2}" fill="{color}" '
                       f'text-anchor="{anchor}">{label}</text>')
    for frac in (0, 0.25, 0.5, 0.75, 1):
        t = end * frac
        out.append(f'<text x="{_x(t, end):.1f}" y="{bottom + 16}" text-anchor="middle">{clock(t)}</text>')
    out.append("</svg>")
    _ = t_prev
    return "\n".join(out)


def write_report(results: list[Any], folder: Path) -> Path:
    """Write ``folder/tabletop-report.md`` and one ``<scenario>.svg`` per scenario; returns the report path."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "| Scenario | Outcome | Detect | Decide | First revert | Full revert | Exposure (user-min) | Result |"
    lines = ["# Tabletop report", "", header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.scenario} | {r.outcome or '-'} | {_clock_or(r.detected_at_s)} | {_clock_or(r.decided_at_s)}"
                     f" | {_clock_or(r.first_revert_at_s)} | {_clock_or(r.full_revert_at_s)} | "
                     f"{r.exposure_user_minutes:,.0f} | {'PASS' if r.passed else 'FAIL'} |")
    for r in results:
        svg = folder / f"{r.scenario}.svg"
        svg.write_text(chart_svg(r), encoding="utf-8")
        lines += ["", f"## {r.scenario}", "", r.loaded.scenario.description or "", "",
                  f"![timeline of {r.scenario}]({svg.name})", "", "```text", format_result(r), "```"]
    report = folder / "tabletop-report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _clock_or(value: float | None) -> str:
    return "-" if value is None else clock(value)
