"""What the console's rehearsal pages read: tabletop reports on disk (``unship tabletop --report
$UNSHIP_STATE_DIR/reports/NAME``) and the scheduled rehearsals' runs in Temporal."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from tabletop.rehearsal import RehearsalWorkflow
from tabletop.rehearsal_run import RehearsalSummary

REPORT_FILE = "tabletop-report.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
_RUNS_SHOWN = 20


@dataclass
class Report:
    name: str
    modified: datetime
    markdown: str = ""
    charts: dict[str, str] = field(default_factory=dict)
    passed: int = 0
    failed: int = 0


def _report_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    folders = [p.parent for p in root.glob(f"*/{REPORT_FILE}") if _NAME.match(p.parent.name)]
    if (root / REPORT_FILE).is_file():
        folders.append(root)
    return folders


def find_reports(root: Path) -> list[Report]:
    """The tabletop reports under ``root`` (one folder each), newest first, with their pass/fail counts."""
    reports = []
    for folder in _report_folders(root):
        text = (folder / REPORT_FILE).read_text(encoding="utf-8", errors="replace")
        name = folder.name if folder != root else "latest"
        reports.append(Report(name=name, modified=datetime.fromtimestamp(folder.stat().st_mtime, UTC),
                              passed=text.count("| PASS |"), failed=text.count("| FAIL |")))
    return sorted(reports, key=lambda r: r.modified, reverse=True)


def read_report(root: Path, name: str) -> Report | None:
    """One report with its SVG charts; None for an unknown (or unsafe) name."""
    if not _NAME.match(name):
        return None
    folder = root if name == "latest" and (root / REPORT_FILE).is_file() else root / name
    path = folder / REPORT_FILE
    if not path.is_file() or folder.resolve().parent not in (root.resolve(), root.resolve().parent):
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    charts = {svg.stem: svg.read_text(encoding="utf-8", errors="replace") for svg in folder.glob("*.svg")
              if _NAME.match(svg.stem)}
    # The report links its charts relative to its folder; the console serves them under the report's URL.
    for stem in charts:
        text = text.replace(f"]({stem}.svg)", f"](/rehearsals/reports/{name}/{stem}.svg)")
    return Report(name=name, modified=datetime.fromtimestamp(path.stat().st_mtime, UTC), markdown=text,
                  charts=charts, passed=text.count("| PASS |"), failed=text.count("| FAIL |"))


@dataclass
class RehearsalRun:
    workflow_id: str
    status: str
    started_at: datetime | None
    closed_at: datetime | None
    summary: RehearsalSummary | None


async def rehearsal_runs(client: Client, workflow_id: str | None = None) -> list[RehearsalRun]:
    """The newest scheduled-rehearsal runs (or the one with ``workflow_id``) with what each found."""
    query = f'WorkflowType = "{RehearsalWorkflow.__name__}"'
    if workflow_id is not None:
        query += ' AND WorkflowId = "' + workflow_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
    executions = [e async for e in client.list_workflows(query, limit=_RUNS_SHOWN)]

    async def one(execution: WorkflowExecution) -> RehearsalRun:
        status = execution.status
        summary = None
        if status is WorkflowExecutionStatus.COMPLETED:
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id, result_type=RehearsalSummary)
            try:
                summary = await handle.result()
            except (RPCError, ValueError, TypeError):
                summary = None
        return RehearsalRun(workflow_id=execution.id, status=status.name.lower() if status else "unknown",
                            started_at=execution.start_time, closed_at=execution.close_time, summary=summary)

    return list(await asyncio.gather(*(one(e) for e in executions)))
