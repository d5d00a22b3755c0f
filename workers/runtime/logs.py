"""How unship logs: one event per line, ISO 8601 UTC timestamps, the incident, workflow and trace ids on every
line that has them, and no configured secret ever written.

``UNSHIP_LOG_FORMAT=json`` writes one JSON object per line (for Loki, Elasticsearch, CloudWatch ...);
``text`` writes ``2026-11-29T21:11:57.123Z INFO logger: message key=value ...``. The default is text on a
terminal (rendered by rich there) and json otherwise, so files and pipes never get wrapped blocks.

Workflow log records reach these handlers inside Temporal's sandbox: everything a formatter needs is imported
at module top, and the libraries it calls are passed through the sandbox (``workflows.sandbox.LOGGING_MODULES``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, Literal

from opentelemetry import trace
from rich.console import Console
from rich.logging import RichHandler
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

LogFormat = Literal["json", "text"]
UNSHIP_LOGGERS = ("unship", "workers", "activities", "workflows", "tabletop", "temporalio.workflow",
                  "temporalio.activity")
_MASK = "***"


def default_format(stream: IO[str] | None = None) -> LogFormat:
    """text on a terminal, json otherwise."""
    stream = stream or sys.stderr
    return "text" if getattr(stream, "isatty", lambda: False)() else "json"


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The incident id, workflow id and trace id a record carries (Temporal's logger adapters put the workflow
    or activity info on the record; the trace id is the current OpenTelemetry span's)."""
    found: dict[str, str] = {}
    info = getattr(record, "temporal_workflow", None) or getattr(record, "temporal_activity", None)
    if isinstance(info, dict):
        workflow_id = info.get("workflow_id")
        if workflow_id:
            found["workflow_id"] = str(workflow_id)
            if str(workflow_id).startswith(("unship:", "release:")):
                found["incident_id"] = str(workflow_id)
        if info.get("activity_type"):
            found["activity"] = str(info["activity_type"])
    incident = getattr(record, "incident_id", None)
    if incident:
        found["incident_id"] = str(incident)
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        found["trace_id"] = format(span.trace_id, "032x")
        found["span_id"] = format(span.span_id, "016x")
    return found


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, ApplicationError):  # already classified: one line, not a traceback
        return f"{message}: {exc}"
    return message


class _Masking(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text

    def _exception(self, record: logging.LogRecord) -> str | None:
        exc = record.exc_info[1] if record.exc_info else None
        if record.exc_info and not isinstance(exc, ApplicationError):
            return self.formatException(record.exc_info)
        return None


class JsonFormatter(_Masking):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the ids, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                                 "message": _message(record)}
        event.update(context_of(record))
        exception = self._exception(record)
        if exception:
            event["exception"] = exception
        return self.mask(json.dumps(event, default=str, ensure_ascii=False))


class TextFormatter(_Masking):
    """``2026-11-29T21:11:57.123Z INFO logger: message incident_id=... trace_id=...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={v}" for k, v in context_of(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {_message(record)}"
        line = f"{line} {context}" if context else line
        exception = self._exception(record)
        if exception:  # a traceback stays one event: its lines are joined
            line += " | " + exception.replace("\n", " | ")
        return self.mask(line.replace("\n", " \\n "))


class _RichText(RichHandler):
    """rich on a terminal, with the ids appended and secrets masked."""

    def __init__(self, console: Console, masking: _Masking) -> None:
        super().__init__(console=console, show_path=False, omit_repeated_times=False,
                         log_time_format="%Y-%m-%dT%H:%M:%S%z")
        self.masking = masking

    def render_message(self, record: logging.LogRecord, message: str) -> Any:
        context = " ".join(f"{k}={v}" for k, v in context_of(record).items())
        text = self.masking.mask(_message(record) + (f"  {context}" if context else ""))
        return super().render_message(record, text)


def configure_logging(fmt: LogFormat | None = None, secrets: Iterable[str] = (), *,
                      stream: IO[str] | None = None, console: Console | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in ``fmt`` (default: text on a terminal, json otherwise),
    masking ``secrets``; unship's own loggers at INFO, everything else at WARNING. Returns the handler."""
    stream = stream or sys.stderr
    fmt = fmt or default_format(stream)
    handler: logging.Handler
    if fmt == "text" and getattr(stream, "isatty", lambda: False)():
        handler = _RichText(console or Console(file=stream, highlight=False), TextFormatter(secrets))
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    # the ids go on the record (and so into every format), not into the message text
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    for name in UNSHIP_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    return handler
