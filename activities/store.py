"""The incident store: incidents, their audit trail and review documents, kept outside Temporal's history.

Writes are idempotent so an activity retried or replayed never duplicates anything: the incident row is an
upsert that never moves back in time, audit events are unique by ``(incident_id, seq)``, reviews are keyed by
incident. ``open_store(url)`` picks the implementation from the URL scheme; SQLite is the embedded default.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from activities.contracts import (
    AuditBatch,
    AuditEvent,
    IncidentRecord,
    IncidentStore,
    ReviewDocument,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id   TEXT PRIMARY KEY,
    playbook      TEXT NOT NULL,
    playbook_hash TEXT NOT NULL,
    release       TEXT NOT NULL,
    phase         TEXT NOT NULL,
    outcome       TEXT,
    started_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    incident_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        TEXT NOT NULL,
    UNIQUE (incident_id, seq)
);
CREATE TABLE IF NOT EXISTS reviews (
    incident_id TEXT PRIMARY KEY,
    markdown    TEXT NOT NULL,
    tasks       TEXT NOT NULL,
    saved_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_update ON incidents (updated_at DESC);
"""
T = TypeVar("T")

# A replayed or late batch must not move an incident back to an older phase.
_UPSERT_INCIDENT = """
INSERT INTO incidents (incident_id, playbook, playbook_hash, release, phase, outcome, started_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (incident_id) DO UPDATE SET
    playbook = excluded.playbook, playbook_hash = excluded.playbook_hash, release = excluded.release,
    phase = excluded.phase, outcome = excluded.outcome, updated_at = excluded.updated_at
WHERE excluded.updated_at >= incidents.updated_at
"""
_INSERT_EVENT = """
INSERT INTO audit_events (incident_id, seq, at, kind, actor, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (incident_id, seq) DO NOTHING
"""
_UPSERT_REVIEW = """
INSERT INTO reviews (incident_id, markdown, tasks, saved_at) VALUES (?, ?, ?, ?)
ON CONFLICT (incident_id) DO UPDATE SET
    markdown = excluded.markdown, tasks = excluded.tasks, saved_at = excluded.saved_at
"""


def _ts(value: datetime) -> str:
    """UTC, fixed width, so text order is time order."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class SqliteIncidentStore:
    """An ``IncidentStore`` in one SQLite file (WAL mode; one short connection per call, in a thread)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._init_lock = threading.Lock()
        self._initialised = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self._initialised:
            with self._init_lock:
                if not self._initialised:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                    self._initialised = True
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(call)

    async def write(self, batch: AuditBatch) -> None:
        """Upsert the incident and add the events not stored yet, in one transaction."""
        inc = batch.incident
        incident_row = (inc.incident_id, inc.playbook, inc.playbook_hash, inc.release, inc.phase, inc.outcome,
                        _ts(inc.started_at), _ts(inc.updated_at))
        event_rows = [(inc.incident_id, e.seq, _ts(e.at), e.kind, e.actor, e.message,
                       json.dumps(e.data, default=str, sort_keys=True)) for e in batch.events]

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_UPSERT_INCIDENT, incident_row)
                conn.executemany(_INSERT_EVENT, event_rows)

        await self._run(write)

    async def incidents(self, limit: int = 100) -> list[IncidentRecord]:
        """The most recently updated incidents first."""
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM incidents ORDER BY updated_at DESC, incident_id LIMIT ?", (max(0, limit),)
        ).fetchall())
        return [IncidentRecord(**dict(r)) for r in rows]

    async def incident(self, incident_id: str) -> IncidentRecord | None:
        """One incident, or None."""
        row = await self._run(lambda c: c.execute(
            "SELECT * FROM incidents WHERE incident_id = ?", (incident_id,)
        ).fetchone())
        return IncidentRecord(**dict(row)) if row else None

    async def events(self, incident_id: str) -> list[AuditEvent]:
        """The incident's audit trail in sequence order."""
        rows = await self._run(lambda c: c.execute(
            "SELECT seq, at, kind, actor, message, data FROM audit_events WHERE incident_id = ? ORDER BY seq",
            (incident_id,),
        ).fetchall())
        return [AuditEvent(seq=r["seq"], at=r["at"], kind=r["kind"], actor=r["actor"], message=r["message"],
                           data=json.loads(r["data"])) for r in rows]

    async def save_review(self, review: ReviewDocument) -> None:
        """Store (or replace) the incident's review document."""
        row = (review.incident_id, review.markdown, json.dumps(review.tasks, default=str), _ts(datetime.now(UTC)))

        def save(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(_UPSERT_REVIEW, row)

        await self._run(save)

    async def review(self, incident_id: str) -> ReviewDocument | None:
        """The incident's review document, or None if none was written yet."""
        row = await self._run(lambda c: c.execute(
            "SELECT incident_id, markdown, tasks FROM reviews WHERE incident_id = ?", (incident_id,)
        ).fetchone())
        if row is None:
            return None
        return ReviewDocument(incident_id=row["incident_id"], markdown=row["markdown"], tasks=json.loads(row["tasks"]))


class StoreConfigurationError(ValueError):
    """The incident store URL cannot be used."""


def _sqlite(url: str) -> IncidentStore:
    path = url[len("sqlite:///"):]
    if not path:
        raise StoreConfigurationError(f"{url!r} names no file; write it like sqlite:///.unship/unship.db")
    return SqliteIncidentStore(Path(path))


# Scheme prefix -> factory. A PostgresIncidentStore registers "postgresql://" here.
_STORES: dict[str, Callable[[str], IncidentStore]] = {"sqlite:///": _sqlite}


def open_store(url: str) -> IncidentStore:
    """The incident store for ``url``: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
    for prefix, factory in _STORES.items():
        if url.startswith(prefix):
            return factory(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    if scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+"):
        raise StoreConfigurationError(
            "a PostgreSQL incident store is not available yet (it arrives with the real-systems work); "
            "use sqlite:///path/to/unship.db for now"
        )
    raise StoreConfigurationError(
        f"unsupported incident store URL scheme {scheme!r}; use sqlite:///path/to/unship.db"
    )
