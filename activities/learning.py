"""The learning activity's I/O half: first crossings from the incident's polls, and the proposed playbook change
as a unified diff of the playbook file the owner can apply (comments and layout kept, via ruamel round-trip).

The advice itself (the backtest sweep) lives in ``tabletop/learning.py`` and is handed in by the process that
runs the worker (``ThresholdAdvisor``); without one, the lesson still says when each signal crossed.
"""

from __future__ import annotations

import difflib
import io
from datetime import datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from activities.contracts import Lesson, LessonRequest, ThresholdAdvisor


def crossings(request: LessonRequest) -> Lesson:
    """When each signal first measured a breach, and when the playbook confirmed (no advice)."""
    first: dict[str, float] = {}
    for poll in request.polls:
        at = datetime.fromisoformat(str(poll.get("at")))
        for obs in poll.get("observations") or []:
            if isinstance(obs, dict) and obs.get("measurement") == "breach":
                first.setdefault(str(obs.get("signal")), (at - request.started_at).total_seconds())
    confirmed = (request.detected_at - request.started_at).total_seconds() if request.detected_at else None
    return Lesson(signals=[{"signal": s.name, "threshold": str(s.threshold),
                            "first_crossed_after_s": first.get(s.name)} for s in request.playbook.signals],
                  confirmed_after_s=confirmed)


def learn(request: LessonRequest, advisor: ThresholdAdvisor | None) -> Lesson:
    """The lesson, with the advisor's proposal as a diff of the playbook's own file when it can be read."""
    if advisor is None:
        lesson = crossings(request)
        lesson.proposal = "no threshold advisor is wired into this worker"
        return lesson
    lesson = advisor(request)
    if lesson.changes:
        lesson.diff = playbook_diff(request.playbook_source, request.playbook.model_dump(mode="json"),
                                    lesson.changes)
    return lesson


def playbook_diff(source: str, dumped: dict[str, Any], changes: list[tuple[list[str | int], float]]) -> str:
    """A unified diff applying ``changes`` to the playbook file at ``source`` (or to its YAML dump)."""
    path = Path(source.split(" (", 1)[0]) if source else None
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    if path is not None and path.is_file():
        before = path.read_text(encoding="utf-8")
        name = str(path)
    else:
        buffer = io.StringIO()
        yaml.dump(dumped, buffer)
        before, name = buffer.getvalue(), "playbook.yaml"
    tree = yaml.load(before)
    for where, value in changes:
        node: Any = tree
        for key in where[:-1]:
            node = next(s for s in node if s.get("name") == key) if isinstance(node, list) else node.setdefault(key, {})
        node[where[-1]] = int(value) if float(value).is_integer() and where[-1] == "breaches" else value
    buffer = io.StringIO()
    yaml.dump(tree, buffer)
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), buffer.getvalue().splitlines(keepends=True),
                                        fromfile=f"a/{name}", tofile=f"b/{name}"))
