"""The incident store: incidents, their audit trail and review documents, kept outside Temporal's history.

Writes are idempotent so an activity retried or replayed never duplicates anything: the incident row is an
upsert that never moves back in time, audit events are unique by ``(incident_id, seq)``, reviews are keyed by
incident. An event whose ``(incident_id, seq)`` is already stored with different content is an
``AuditConflict`` (nothing of its batch is written): a conflict is never silently dropped. The SQLite store
recreates its tables when its file vanished. ``open_store(url)`` picks the implementation from the URL scheme: SQLite is the embedded default,
``postgresql://`` (psycopg 3) the production store.

The audit trail is tamper-evident: each event is stored with its place in the incident's chain (insertion
order), the hash of the event before it (the first one points at a root derived from the incident id and the
playbook version) and its own hash over its content. ``verify_chain`` recomputes the chain and names the first
event that does not match, so an edited, deleted or inserted row is found (``unship audit verify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from activities.contracts import (
    AuditBatch,
    AuditEvent,
    ChainedEvent,
    IncidentRecord,
    IncidentStore,
    ReportDraft,
    ReviewDocument,
    SearchHit,
    StoredHold,
)
from activities.errors import AuditConflict
from playbooks.models import Regime

__all__ = ["AuditConflict", "PostgresIncidentStore", "SqliteIncidentStore", "StoreConfigurationError", "open_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id   TEXT PRIMARY KEY,
    playbook      TEXT NOT NULL,
    playbook_hash TEXT NOT NULL,
    release       TEXT NOT NULL,
    phase         TEXT NOT NULL,
    outcome       TEXT,
    started_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    previous_percent REAL NOT NULL DEFAULT 0,
    awaiting      TEXT NOT NULL DEFAULT '[]',
    decide_by     TEXT
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
CREATE TABLE IF NOT EXISTS target_holds (
    target      TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    held_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    incident_id TEXT NOT NULL,
    regime      TEXT NOT NULL,
    markdown    TEXT NOT NULL,
    html        TEXT NOT NULL,
    drafted_at  TEXT NOT NULL,
    PRIMARY KEY (incident_id, regime)
);
CREATE VIRTUAL TABLE IF NOT EXISTS review_search USING fts5(incident_id UNINDEXED, tags, markdown);
"""
# Columns added after the first release, with their SQLite and PostgreSQL types: added to older databases on
# first use (ALTER TABLE ... ADD COLUMN keeps every row).
_ADDED_COLUMNS = (
    ("previous_percent", "REAL NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
    ("awaiting", "TEXT NOT NULL DEFAULT '[]'", "JSONB NOT NULL DEFAULT '[]'::jsonb"),
    ("decide_by", "TEXT", "TIMESTAMPTZ"),
)
# The list: open incidents first when asked, then the most recently updated.
_LIST_ORDER = "ORDER BY {open_first}updated_at DESC, incident_id LIMIT {limit}"
T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    """One step of the store's schema, in SQLite's and PostgreSQL's dialects (statements separated by ``;``)."""

    version: int
    description: str
    sqlite: str | Callable[[sqlite3.Connection], None]  # SQL, or a step that needs to look first
    postgres: str


@dataclass(frozen=True)
class SchemaStatus:
    current: int  # 0: an empty database
    expected: int


class StoreSchemaError(RuntimeError):
    """The store's schema is newer than this release knows (a rollback of unship itself): refuse, never guess."""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]

_SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS unship_schema (version INTEGER NOT NULL, applied_at TEXT NOT NULL)"

# A replayed or late batch must not move an incident back to an older phase.
_UPSERT_INCIDENT = """
INSERT INTO incidents (incident_id, playbook, playbook_hash, release, phase, outcome, started_at, updated_at,
                       previous_percent, awaiting, decide_by)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (incident_id) DO UPDATE SET
    playbook = excluded.playbook, playbook_hash = excluded.playbook_hash, release = excluded.release,
    phase = excluded.phase, outcome = excluded.outcome, updated_at = excluded.updated_at,
    previous_percent = excluded.previous_percent, awaiting = excluded.awaiting, decide_by = excluded.decide_by
WHERE excluded.updated_at >= incidents.updated_at
"""
_INSERT_EVENT = """
INSERT INTO audit_events (incident_id, seq, at, kind, actor, message, data, chain, prev_hash, hash)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (incident_id, seq) DO NOTHING
"""
_HOLDER = ("SELECT h.incident_id, i.phase FROM target_holds h LEFT JOIN incidents i ON i.incident_id = h.incident_id "
           "WHERE h.target = {p}")
_HOLD = ("INSERT INTO target_holds (target, incident_id, held_at) VALUES ({p}, {p}, {p}) "
         "ON CONFLICT (target) DO UPDATE SET incident_id = excluded.incident_id, held_at = excluded.held_at")
_LET_GO = "DELETE FROM target_holds WHERE incident_id = {p}"
_HOLDS = "SELECT target, incident_id, held_at FROM target_holds ORDER BY target"
_LET_GO_OF = "DELETE FROM target_holds WHERE target = {p} RETURNING incident_id"


def _active(holder: str | None, phase: str | None, me: str) -> bool:
    """Another incident holds the target and is not closed (one that never reached the store counts as active)."""
    return holder is not None and holder != me and phase != "closed"


_CHAIN_COLUMNS = (("chain", "INTEGER"), ("prev_hash", "TEXT"), ("hash", "TEXT"))
"""Added to stores created before the hash chain (their older events stay unchained and are reported so)."""
_CHAIN_HEAD = "SELECT chain, hash FROM audit_events WHERE incident_id = {p} AND chain IS NOT NULL ORDER BY chain DESC LIMIT 1"
_SEQS = "SELECT seq FROM audit_events WHERE incident_id = {p}"
_CHAINED = ("SELECT seq, at, kind, actor, message, data, chain, prev_hash, hash FROM audit_events "
            "WHERE incident_id = {p} ORDER BY chain IS NULL DESC, chain, seq")


def chain_root(incident_id: str, playbook_hash: str) -> str:
    """Where an incident's audit chain starts: bound to the incident and the playbook version that acted."""
    return hashlib.sha256(f"unship-audit-chain:v1:{incident_id}:{playbook_hash}".encode()).hexdigest()


def event_hash(prev_hash: str, incident_id: str, event: AuditEvent) -> str:
    """The hash of one audit event, chained to the one before it."""
    canonical = json.dumps({
        "incident_id": incident_id, "seq": event.seq, "at": _ts(event.at), "kind": event.kind, "actor": event.actor,
        "message": event.message, "data": _normal(event.data),
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _normal(data: dict[str, Any]) -> Any:
    """The event data as the store keeps it (JSON round-trip), so hashing at write and at verify agree."""
    return json.loads(json.dumps(data, default=str, sort_keys=True))


def _chain(incident_id: str, playbook_hash: str, head: tuple[int, str] | None, stored: set[int],
           events: list[AuditEvent]) -> list[tuple[AuditEvent, int, str, str]]:
    """The new events (not stored yet) with their chain position, previous hash and hash."""
    position, prev = head if head is not None else (0, chain_root(incident_id, playbook_hash))
    rows = []
    for event in events:
        if event.seq in stored:
            continue
        stored.add(event.seq)
        position += 1
        digest = event_hash(prev, incident_id, event)
        rows.append((event, position, prev, digest))
        prev = digest
    return rows


class ChainReport(BaseModel):
    """The result of checking one incident's audit chain."""

    incident_id: str
    events: int
    ok: bool
    unchained: int = 0
    first_bad_seq: int | None = None
    first_bad_kind: str | None = None
    problem: str = ""


def verify_chain(incident_id: str, playbook_hash: str, rows: list[ChainedEvent]) -> ChainReport:
    """Recompute the chain of ``rows`` (as ``chained_events`` returns them) and name the first that does not match."""
    unchained = [r for r in rows if r.chain is None]
    prev = chain_root(incident_id, playbook_hash)
    expected_position = 1
    for row in rows:
        if row.chain is None:
            continue
        event = row.event
        problem = ""
        if row.chain != expected_position:
            problem = f"chain position {row.chain}, expected {expected_position} (an event was deleted or inserted)"
        elif row.prev_hash != prev:
            problem = "it does not follow the event before it (an event before it was removed, or rows reordered)"
        elif row.hash != event_hash(prev, incident_id, event):
            problem = "its content does not match its hash (the row was edited)"
        if problem:
            return ChainReport(incident_id=incident_id, events=len(rows), ok=False, unchained=len(unchained),
                               first_bad_seq=event.seq, first_bad_kind=event.kind,
                               problem=f"event #{event.seq} ({event.kind}): {problem}")
        prev = row.hash or ""
        expected_position += 1
    return ChainReport(incident_id=incident_id, events=len(rows), ok=True, unchained=len(unchained),
                       problem=f"{len(unchained)} event(s) written before the hash chain existed are not covered"
                       if unchained else "")
_UPSERT_REVIEW = """
INSERT INTO reviews (incident_id, markdown, tasks, saved_at) VALUES (?, ?, ?, ?)
ON CONFLICT (incident_id) DO UPDATE SET
    markdown = excluded.markdown, tasks = excluded.tasks, saved_at = excluded.saved_at
"""
_UPSERT_REPORT = """
INSERT INTO reports (incident_id, regime, markdown, html, drafted_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (incident_id, regime) DO UPDATE SET
    markdown = excluded.markdown, html = excluded.html, drafted_at = excluded.drafted_at
"""


def fts5_query(text: str) -> str:
    """Free text as an FTS5 query: every word must appear (each quoted, so no FTS5 syntax leaks in)."""
    words = [w for w in text.replace('"', " ").split() if w]
    return " ".join(f'"{w}"' for w in words)


def _filters(phase: str | None, playbook: str | None, mark: str) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause (and its parameters) of an incident list filtered by phase and playbook.

    ``phase="open"`` means every phase but closed."""
    clauses: list[str] = []
    params: list[str] = []
    if phase == "open":
        clauses.append(f"phase <> {mark}")
        params.append("closed")
    elif phase:
        clauses.append(f"phase = {mark}")
        params.append(phase)
    if playbook:
        clauses.append(f"playbook = {mark}")
        params.append(playbook)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _list_sql(phase: str | None, playbook: str | None, open_first: bool, mark: str) -> tuple[str, tuple[str, ...]]:
    where, params = _filters(phase, playbook, mark)
    order = _LIST_ORDER.format(open_first="(phase = 'closed'), " if open_first else "", limit=mark)
    return f"SELECT * FROM incidents{where} {order}", params


def _check_conflicts(incident_id: str, stored: dict[int, tuple[Any, ...]], new: list[tuple[Any, ...]]) -> None:
    """Raise ``AuditConflict`` when an event of the batch is stored under its seq with other content.

    ``stored`` maps seq to (at, kind, actor, message, data); ``new`` holds event rows as written.
    """
    for row in new:
        seq, content = row[1], tuple(row[2:])
        have = stored.get(seq)
        if have is not None and tuple(have) != content:
            raise AuditConflict(
                f"incident store: {incident_id}: audit event seq {seq} is already stored as "
                f"{have[1]!r} ({have[3]!r}) and now arrives as {content[1]!r} ({content[3]!r}); two writers "
                "disagree about what happened, so neither is dropped silently: nothing of this batch was written")


def _ts(value: datetime) -> str:
    """UTC, fixed width, so text order is time order."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _of_this_loop(table: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T], make: Callable[[], T]) -> T:
    """The running event loop's entry of ``table``, made on first use (asyncio locks and semaphores belong to
    one loop; the API and the worker may call one store from different loops)."""
    loop = asyncio.get_running_loop()
    entry = table.get(loop)
    if entry is None:
        entry = table[loop] = make()
    return entry


class _ThreadConnection(threading.local):
    """The connection one executor thread keeps to the store's file, and which file it opened (device, inode)."""

    conn: sqlite3.Connection | None = None
    file: tuple[int, int] | None = None


class SqliteIncidentStore:
    """An ``IncidentStore`` in one SQLite file (WAL mode), called in executor threads.

    Each thread keeps its connection open: closing the last connection to a WAL database checkpoints the WAL
    into the file and deletes it, so a connection per call paid a checkpoint (and its syncs) on nearly every
    call. A thread reconnects when the file it opened was deleted or replaced.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._init_lock = threading.Lock()
        self._initialised = False
        self._thread = _ThreadConnection()
        self._writer = threading.Lock()
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():  # first use, or the file vanished: its tables must be created (again)
            self._initialised = False
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self._initialised:
            with self._init_lock:
                if not self._initialised:
                    conn.execute("PRAGMA journal_mode = WAL")
                    self._migrate(conn)
                    self._initialised = True
        return conn

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        conn.execute(_SCHEMA_TABLE)
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM unship_schema").fetchone()[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the migrations this store lacks, each in its own transaction (other processes wait)."""
        for migration in MIGRATIONS:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._version(conn)
                if current > SCHEMA_VERSION:
                    raise StoreSchemaError(f"{self.path} has schema version {current}; this unship knows up to "
                                           f"{SCHEMA_VERSION}: run the newer release")
                if migration.version > current:
                    if callable(migration.sqlite):
                        migration.sqlite(conn)
                    else:
                        for statement in _statements(migration.sqlite):
                            conn.execute(statement)
                    conn.execute("INSERT INTO unship_schema (version, applied_at) VALUES (?, ?)",
                                 (migration.version, _ts(datetime.now(UTC))))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        """The schema version the file has (0: none yet), without migrating it."""
        def read() -> int:
            if not self.path.exists():
                return 0
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "unship_schema" not in tables:
                    return 1 if "incidents" in tables else 0  # the release before versioning had schema 1
                return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM unship_schema").fetchone()[0])
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    def _file(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _thread_connection(self) -> sqlite3.Connection:
        """This thread's connection, opened again if the file it opened is gone or was replaced."""
        local = self._thread
        file = self._file()
        if local.conn is not None and file != local.file:
            self._drop_thread_connection()
        if local.conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            local.conn = self._connect()
            local.file = self._file()
        return local.conn

    def _drop_thread_connection(self) -> None:
        local = self._thread
        if local.conn is not None:
            local.conn.close()
        local.conn, local.file = None, None

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool = False) -> T:
        """``fn`` on this thread's connection, in an executor thread. ``writes``: one such call at a time in this
        process; SQLite runs one writer at a time anyway, and a writer that finds the file locked sleeps in its
        busy handler (1, 2, 5, 10 ... 100 ms steps) where a queue on a lock wakes it as soon as the writer before
        it is done (``bench/incident_store.py``). A writer waits for its turn in its event loop, not in an executor
        thread: waiting writers would otherwise hold the threads that reads and the flag providers' file I/O share.
        Other processes on the same file still meet the busy handler."""
        def call() -> T:
            if not writes:
                return attempt()
            with self._writer:
                return attempt()

        def attempt() -> T:
            conn = self._thread_connection()
            try:
                try:
                    result = fn(conn)
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    # The file was replaced under us (e.g. deleted and recreated empty): create the tables, once.
                    self._initialised = False
                    self._drop_thread_connection()
                    conn = self._thread_connection()
                    result = fn(conn)
            except BaseException:
                # A cursor the traceback keeps alive keeps its read snapshot on a connection that outlives the
                # call, and later reads on it would not see newer writes: the next call gets a fresh connection.
                self._drop_thread_connection()
                raise
            if conn.in_transaction:  # never leave a transaction open on a connection that outlives the call
                conn.rollback()
            return result

        if not writes:
            return await asyncio.to_thread(call)
        async with _of_this_loop(self._turns, asyncio.Lock):  # the thread lock inside orders other loops' writers
            return await asyncio.to_thread(call)

    async def write(self, batch: AuditBatch) -> None:
        """Upsert the incident and add the events not stored yet, in one transaction."""
        inc = batch.incident
        incident_row = (inc.incident_id, inc.playbook, inc.playbook_hash, inc.release, inc.phase, inc.outcome,
                        _ts(inc.started_at), _ts(inc.updated_at), inc.previous_percent, json.dumps(inc.awaiting),
                        _ts(inc.decide_by) if inc.decide_by else None)

        event_rows = [(inc.incident_id, e.seq, _ts(e.at), e.kind, e.actor, e.message,
                       json.dumps(e.data, default=str, sort_keys=True)) for e in batch.events]
        seqs = [e.seq for e in batch.events]

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if seqs:
                    stored = {r[0]: tuple(r[1:]) for r in conn.execute(
                        "SELECT seq, at, kind, actor, message, data FROM audit_events "
                        "WHERE incident_id = ? AND seq BETWEEN ? AND ?", (inc.incident_id, min(seqs), max(seqs)))}
                    _check_conflicts(inc.incident_id, stored, event_rows)
                conn.execute(_UPSERT_INCIDENT, incident_row)
                head = conn.execute(_CHAIN_HEAD.format(p="?"), (inc.incident_id,)).fetchone()
                present = {r[0] for r in conn.execute(_SEQS.format(p="?"), (inc.incident_id,))}
                rows = _chain(inc.incident_id, inc.playbook_hash, (head[0], head[1]) if head else None, present,
                              batch.events)
                conn.executemany(_INSERT_EVENT, [
                    (inc.incident_id, e.seq, _ts(e.at), e.kind, e.actor, e.message,
                     json.dumps(e.data, default=str, sort_keys=True), position, prev, digest)
                    for e, position, prev, digest in rows])

        await self._run(write, writes=True)

    async def incidents(self, limit: int = 100, *, phase: str | None = None, playbook: str | None = None,
                        open_first: bool = False) -> list[IncidentRecord]:
        """The most recently updated incidents first (open ones before closed ones with ``open_first``),
        optionally only those in ``phase`` (``"open"``: any but closed) or of ``playbook``."""
        query, params = _list_sql(phase, playbook, open_first, "?")
        rows = await self._run(lambda c: c.execute(query, (*params, max(0, limit))).fetchall())
        return [_sqlite_record(r) for r in rows]

    async def incident(self, incident_id: str) -> IncidentRecord | None:
        """One incident, or None."""
        row = await self._run(lambda c: c.execute(
            "SELECT * FROM incidents WHERE incident_id = ?", (incident_id,)
        ).fetchone())
        return _sqlite_record(row) if row else None

    async def incidents_by_id(self, incident_ids: list[str]) -> list[IncidentRecord]:
        """The stored incidents among ``incident_ids`` (one query: a page of the incident list)."""
        if not incident_ids:
            return []
        marks = ",".join("?" * len(incident_ids))
        rows = await self._run(lambda c: c.execute(
            f"SELECT * FROM incidents WHERE incident_id IN ({marks})", tuple(incident_ids)).fetchall())
        return [_sqlite_record(r) for r in rows]

    async def events(self, incident_id: str, after: int | None = None) -> list[AuditEvent]:
        """The incident's audit trail in sequence order (only the events numbered above ``after``)."""
        rows = await self._run(lambda c: c.execute(
            "SELECT seq, at, kind, actor, message, data FROM audit_events WHERE incident_id = ? AND seq > ? "
            "ORDER BY seq", (incident_id, -(2**62) if after is None else after),
        ).fetchall())
        return [AuditEvent(seq=r["seq"], at=r["at"], kind=r["kind"], actor=r["actor"], message=r["message"],
                           data=json.loads(r["data"])) for r in rows]

    async def hold_targets(self, incident_id: str, refs: list[str]) -> tuple[str, str] | None:
        """Hold every target in ``refs`` for ``incident_id`` (all or none); ``(holder, target)`` when another
        active incident holds one of them."""

        def hold(conn: sqlite3.Connection) -> tuple[str, str] | None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for ref in refs:
                    row = conn.execute(_HOLDER.format(p="?"), (ref,)).fetchone()
                    if row is not None and _active(row[0], row[1], incident_id):
                        return str(row[0]), ref
                now = _ts(datetime.now(UTC))
                conn.executemany(_HOLD.format(p="?"), [(ref, incident_id, now) for ref in refs])
                return None

        return await self._run(hold, writes=True)

    async def release_targets(self, incident_id: str) -> None:
        def let_go(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(_LET_GO.format(p="?"), (incident_id,))

        await self._run(let_go, writes=True)

    async def target_holds(self) -> list[StoredHold]:
        """Every target hold, by target."""
        rows = await self._run(lambda c: c.execute(_HOLDS).fetchall())
        return [StoredHold(target=r["target"], incident_id=r["incident_id"], held_at=r["held_at"]) for r in rows]

    async def release_target(self, target: str) -> str | None:
        """Delete the hold of ``target``; the incident that held it (None: nobody did)."""

        def let_go(conn: sqlite3.Connection) -> str | None:
            with conn:
                row = conn.execute(_LET_GO_OF.format(p="?"), (target,)).fetchone()
            return str(row[0]) if row is not None else None

        return await self._run(let_go, writes=True)

    async def chained_events(self, incident_id: str) -> list[ChainedEvent]:
        """The incident's audit events in chain order, with their hashes (for ``verify_chain``)."""
        rows = await self._run(lambda c: c.execute(_CHAINED.format(p="?"), (incident_id,)).fetchall())
        return [ChainedEvent(chain=r["chain"], prev_hash=r["prev_hash"], hash=r["hash"], event=AuditEvent(
            seq=r["seq"], at=r["at"], kind=r["kind"], actor=r["actor"], message=r["message"],
            data=json.loads(r["data"]))) for r in rows]

    async def save_review(self, review: ReviewDocument) -> None:
        """Store (or replace) the incident's review document."""
        row = (review.incident_id, review.markdown, json.dumps(review.tasks, default=str), _ts(datetime.now(UTC)))

        def save(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_UPSERT_REVIEW, row)
                conn.execute("DELETE FROM review_search WHERE incident_id = ?", (review.incident_id,))
                conn.execute("INSERT INTO review_search (incident_id, tags, markdown) VALUES (?, ?, ?)",
                             (review.incident_id, " ".join(review.tags), review.markdown))

        await self._run(save, writes=True)

    async def review(self, incident_id: str) -> ReviewDocument | None:
        """The incident's review document, or None if none was written yet."""
        row = await self._run(lambda c: c.execute(
            "SELECT incident_id, markdown, tasks FROM reviews WHERE incident_id = ?", (incident_id,)
        ).fetchone())
        if row is None:
            return None
        return ReviewDocument(incident_id=row["incident_id"], markdown=row["markdown"], tasks=json.loads(row["tasks"]))

    async def save_report(self, draft: ReportDraft) -> None:
        """Store (or replace) the draft of one regulatory report."""
        row = (draft.incident_id, draft.regime.value, draft.markdown, draft.html,
               _ts(draft.drafted_at or datetime.now(UTC)))

        def save(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(_UPSERT_REPORT, row)

        await self._run(save, writes=True)

    async def reports(self, incident_id: str) -> list[ReportDraft]:
        """The incident's regulatory report drafts."""
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM reports WHERE incident_id = ? ORDER BY regime", (incident_id,)).fetchall())
        return [ReportDraft(incident_id=r["incident_id"], regime=Regime(r["regime"]), markdown=r["markdown"],
                            html=r["html"], drafted_at=r["drafted_at"]) for r in rows]

    async def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        """Past reviews whose text or tags hold every word of ``text`` (FTS5, best match first)."""
        query = fts5_query(text)
        if not query:
            return []
        rows = await self._run(lambda c: c.execute(
            "SELECT incident_id, tags, snippet(review_search, 2, '**', '**', ' ... ', 16) AS snippet "
            "FROM review_search WHERE review_search MATCH ? ORDER BY rank LIMIT ?", (query, max(1, limit))
        ).fetchall())
        return [SearchHit(incident_id=r["incident_id"], snippet=r["snippet"], tags=r["tags"].split())
                for r in rows]


def _sqlite_record(row: sqlite3.Row) -> IncidentRecord:
    fields = dict(row)
    fields["awaiting"] = json.loads(fields.get("awaiting") or "[]")
    return IncidentRecord(**fields)


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id   TEXT PRIMARY KEY,
    playbook      TEXT NOT NULL,
    playbook_hash TEXT NOT NULL,
    release       TEXT NOT NULL,
    phase         TEXT NOT NULL,
    outcome       TEXT,
    started_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    previous_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
    awaiting      JSONB NOT NULL DEFAULT '[]'::jsonb,
    decide_by     TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS audit_events (
    incident_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        JSONB NOT NULL,
    PRIMARY KEY (incident_id, seq)
);
CREATE TABLE IF NOT EXISTS reviews (
    incident_id TEXT PRIMARY KEY,
    markdown    TEXT NOT NULL,
    tasks       JSONB NOT NULL,
    saved_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_update ON incidents (updated_at DESC);
CREATE TABLE IF NOT EXISTS target_holds (
    target      TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    held_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    incident_id TEXT NOT NULL,
    regime      TEXT NOT NULL,
    markdown    TEXT NOT NULL,
    html        TEXT NOT NULL,
    drafted_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (incident_id, regime)
);
CREATE TABLE IF NOT EXISTS review_search (
    incident_id TEXT PRIMARY KEY,
    tags        TEXT NOT NULL,
    markdown    TEXT NOT NULL,
    document    tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', tags), 'A') || setweight(to_tsvector('english', markdown), 'B')) STORED
);
CREATE INDEX IF NOT EXISTS review_search_document ON review_search USING GIN (document);
"""
_PG_UPSERT_INCIDENT = _UPSERT_INCIDENT.replace("?", "%s").replace("%s, %s)\nON", "%s::jsonb, %s)\nON")
_PG_ADD_COLUMNS = "".join(f"ALTER TABLE incidents ADD COLUMN IF NOT EXISTS {name} {pg_type};\n"
                          for name, _, pg_type in _ADDED_COLUMNS)
_PG_SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS unship_schema (version INTEGER NOT NULL, "
                    "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
_PG_INSERT_EVENT = """
INSERT INTO audit_events (incident_id, seq, at, kind, actor, message, data, chain, prev_hash, hash)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)
ON CONFLICT (incident_id, seq) DO NOTHING
"""

_PG_UPSERT_REVIEW = """
INSERT INTO reviews (incident_id, markdown, tasks, saved_at) VALUES (%s, %s, %s::jsonb, %s)
ON CONFLICT (incident_id) DO UPDATE SET
    markdown = excluded.markdown, tasks = excluded.tasks, saved_at = excluded.saved_at
"""
# Serialises schema creation: concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL.
_PG_SCHEMA_LOCK = 7_362_617_001


PG_CONNECTIONS = 10
"""Connections a process keeps to PostgreSQL at most (per event loop): calls past it wait for one to be free."""


@dataclass
class _LoopConnections:
    """One event loop's connections: at most ``slots`` in use at once, the idle ones kept for the next call."""

    slots: asyncio.Semaphore
    idle: list[Any]


class PostgresIncidentStore:
    """An ``IncidentStore`` in a PostgreSQL database (psycopg 3).

    Same semantics as ``SqliteIncidentStore``. Each call takes a connection kept from an earlier call (at most
    ``max_connections`` per event loop, so a burst of incidents queues for them instead of opening a server
    process each, past PostgreSQL's ``max_connections``). A kept connection is checked before use (one round
    trip), so one the server dropped (a failover, an idle-session reaper) is replaced, not failed on; a call that
    fails closes its connection. Connection errors surface as psycopg raises them, at once: no pool thread
    retries behind the call. The tables are created on first use; give unship its own database, or its own
    schema with ``?options=-csearch_path%3Dunship``.
    """

    def __init__(self, dsn: str, connect_timeout: int = 10, max_connections: int = PG_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._schema_ready = False
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary())

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A connection for one call (autocommit: a call's writes go in ``conn.transaction()``)."""
        from psycopg.pq import TransactionStatus

        mine = _of_this_loop(self._loops, lambda: _LoopConnections(asyncio.Semaphore(self._max_connections), []))
        async with mine.slots:
            conn = await self._kept(mine) or await self._connect()
            try:
                yield conn
            except BaseException:
                await conn.close()  # its state is unknown: the next call starts on another
                raise
            if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                await conn.close()
            else:
                mine.idle.append(conn)

    async def _kept(self, mine: _LoopConnections) -> Any:
        """An idle connection that still answers, or None."""
        import psycopg

        while mine.idle:
            conn = mine.idle.pop()
            try:
                await conn.execute("")
                return conn
            except psycopg.Error:
                await conn.close()
        return None

    def __repr__(self) -> str:  # the DSN may carry a password
        return "PostgresIncidentStore(...)"

    async def _connect(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        conn = await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=self._connect_timeout,
                                                     row_factory=dict_row, autocommit=True)
        if not self._schema_ready:
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
                    await conn.execute(_PG_SCHEMA_TABLE)
                    cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM unship_schema")
                    row = await cursor.fetchone()
                    current = int(row["v"]) if row else 0
                    if current > SCHEMA_VERSION:
                        raise StoreSchemaError(f"the PostgreSQL store has schema version {current}; this unship "
                                               f"knows up to {SCHEMA_VERSION}: run the newer release")
                    for migration in MIGRATIONS:
                        if migration.version > current:
                            for statement in _statements(migration.postgres):
                                await conn.execute(statement)
                            await conn.execute("INSERT INTO unship_schema (version) VALUES (%s)",
                                               (migration.version,))
            except BaseException:
                await conn.close()
                raise
            self._schema_ready = True
        return conn

    async def schema_version(self) -> int:
        """The schema version the database has (0: none yet), without migrating it."""
        import psycopg
        from psycopg.rows import dict_row

        async with await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=self._connect_timeout,
                                                         row_factory=dict_row) as conn:
            cursor = await conn.execute("SELECT to_regclass('unship_schema') AS s, to_regclass('incidents') AS i")
            row = await cursor.fetchone()
            if row is None or row["s"] is None:
                return 1 if row is not None and row["i"] is not None else 0
            cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM unship_schema")
            found = await cursor.fetchone()
            return int(found["v"]) if found else 0

    async def _fetch(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return list(await cursor.fetchall())

    async def write(self, batch: AuditBatch) -> None:
        """Upsert the incident and add the events not stored yet, in one transaction."""
        inc = batch.incident
        rows = [(inc.incident_id, e.seq, _aware(e.at), e.kind, e.actor, e.message,
                 json.dumps(e.data, default=str, sort_keys=True)) for e in batch.events]
        async with self._connection() as conn, conn.transaction():
            if rows:
                # FOR UPDATE is not needed: a concurrent insert of the same seq is caught by ON CONFLICT and the
                # compare below runs on what this transaction sees; the writer of one incident is one workflow.
                cursor = await conn.execute(
                    "SELECT seq, at, kind, actor, message, data FROM audit_events "
                    "WHERE incident_id = %s AND seq = ANY(%s)", (inc.incident_id, [r[1] for r in rows]))
                stored = {r["seq"]: (r["at"], r["kind"], r["actor"], r["message"],
                                     json.dumps(r["data"], default=str, sort_keys=True))
                          for r in await cursor.fetchall()}
                _check_conflicts(inc.incident_id, stored, [(*r[:6], _pg_json(r[6])) for r in rows])
            await conn.execute(_PG_UPSERT_INCIDENT, (
                inc.incident_id, inc.playbook, inc.playbook_hash, inc.release, inc.phase, inc.outcome,
                _aware(inc.started_at), _aware(inc.updated_at), inc.previous_percent, json.dumps(inc.awaiting),
                _aware(inc.decide_by) if inc.decide_by else None))
            if batch.events:
                # The incident row just upserted is locked until commit: writers of one incident chain in turn.
                head = await (await conn.execute(_CHAIN_HEAD.format(p="%s"), (inc.incident_id,))).fetchone()
                present = {r["seq"] for r in await (await conn.execute(_SEQS.format(p="%s"),
                                                                        (inc.incident_id,))).fetchall()}
                chained = _chain(inc.incident_id, inc.playbook_hash,
                                 (head["chain"], head["hash"]) if head else None, present, batch.events)
                if chained:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(_PG_INSERT_EVENT, [
                            (inc.incident_id, e.seq, _aware(e.at), e.kind, e.actor, e.message,
                             json.dumps(e.data, default=str, sort_keys=True), position, prev, digest)
                            for e, position, prev, digest in chained])

    async def incidents(self, limit: int = 100, *, phase: str | None = None, playbook: str | None = None,
                        open_first: bool = False) -> list[IncidentRecord]:
        """The most recently updated incidents first (open ones before closed ones with ``open_first``),
        optionally only those in ``phase`` (``"open"``: any but closed) or of ``playbook``."""
        query, params = _list_sql(phase, playbook, open_first, "%s")
        rows = await self._fetch(query, (*params, max(0, limit)))
        return [IncidentRecord(**r) for r in rows]

    async def incident(self, incident_id: str) -> IncidentRecord | None:
        """One incident, or None."""
        rows = await self._fetch("SELECT * FROM incidents WHERE incident_id = %s", (incident_id,))
        return IncidentRecord(**rows[0]) if rows else None

    async def incidents_by_id(self, incident_ids: list[str]) -> list[IncidentRecord]:
        """The stored incidents among ``incident_ids`` (one query: a page of the incident list)."""
        if not incident_ids:
            return []
        rows = await self._fetch("SELECT * FROM incidents WHERE incident_id = ANY(%s)", (list(incident_ids),))
        return [IncidentRecord(**r) for r in rows]

    async def events(self, incident_id: str, after: int | None = None) -> list[AuditEvent]:
        """The incident's audit trail in sequence order (only the events numbered above ``after``)."""
        rows = await self._fetch(
            "SELECT seq, at, kind, actor, message, data FROM audit_events WHERE incident_id = %s AND seq > %s "
            "ORDER BY seq", (incident_id, -(2**62) if after is None else after))
        return [AuditEvent(**r) for r in rows]

    async def hold_targets(self, incident_id: str, refs: list[str]) -> tuple[str, str] | None:
        """Hold every target in ``refs`` for ``incident_id`` (all or none); ``(holder, target)`` when another
        active incident holds one of them."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK + 1,))
            for ref in refs:
                row = await (await conn.execute(_HOLDER.format(p="%s"), (ref,))).fetchone()
                if row is not None and _active(row["incident_id"], row["phase"], incident_id):
                    return str(row["incident_id"]), ref
            async with conn.cursor() as cursor:
                now = datetime.now(UTC)
                await cursor.executemany(_HOLD.format(p="%s"), [(ref, incident_id, now) for ref in refs])
        return None

    async def release_targets(self, incident_id: str) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_LET_GO.format(p="%s"), (incident_id,))

    async def target_holds(self) -> list[StoredHold]:
        """Every target hold, by target."""
        return [StoredHold(**r) for r in await self._fetch(_HOLDS, ())]

    async def release_target(self, target: str) -> str | None:
        """Delete the hold of ``target``; the incident that held it (None: nobody did)."""
        async with self._connection() as conn, conn.transaction():
            row = await (await conn.execute(_LET_GO_OF.format(p="%s"), (target,))).fetchone()
        return str(row["incident_id"]) if row is not None else None

    async def chained_events(self, incident_id: str) -> list[ChainedEvent]:
        """The incident's audit events in chain order, with their hashes (for ``verify_chain``)."""
        rows = await self._fetch(_CHAINED.format(p="%s"), (incident_id,))
        return [ChainedEvent(chain=r["chain"], prev_hash=r["prev_hash"], hash=r["hash"], event=AuditEvent(
            seq=r["seq"], at=r["at"], kind=r["kind"], actor=r["actor"], message=r["message"], data=r["data"]))
            for r in rows]

    async def save_review(self, review: ReviewDocument) -> None:
        """Store (or replace) the incident's review document."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_PG_UPSERT_REVIEW, (
                review.incident_id, review.markdown, json.dumps(review.tasks, default=str), datetime.now(UTC)))
            await conn.execute(
                "INSERT INTO review_search (incident_id, tags, markdown) VALUES (%s, %s, %s) ON CONFLICT "
                "(incident_id) DO UPDATE SET tags = excluded.tags, markdown = excluded.markdown",
                (review.incident_id, " ".join(review.tags), review.markdown))

    async def review(self, incident_id: str) -> ReviewDocument | None:
        """The incident's review document, or None if none was written yet."""
        rows = await self._fetch("SELECT incident_id, markdown, tasks FROM reviews WHERE incident_id = %s",
                                 (incident_id,))
        return ReviewDocument(**rows[0]) if rows else None

    async def save_report(self, draft: ReportDraft) -> None:
        """Store (or replace) the draft of one regulatory report."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_UPSERT_REPORT.replace("?", "%s"), (
                draft.incident_id, draft.regime.value, draft.markdown, draft.html,
                _aware(draft.drafted_at or datetime.now(UTC))))

    async def reports(self, incident_id: str) -> list[ReportDraft]:
        """The incident's regulatory report drafts."""
        rows = await self._fetch("SELECT * FROM reports WHERE incident_id = %s ORDER BY regime", (incident_id,))
        return [ReportDraft(**r) for r in rows]

    async def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        """Past reviews matching ``text`` (PostgreSQL full text, tags weigh more than the body)."""
        if not text.split():
            return []
        rows = await self._fetch(
            "SELECT incident_id, tags, ts_headline('english', markdown, q, "
            "'StartSel=**, StopSel=**, MaxWords=24, MinWords=8') AS snippet "
            "FROM review_search, plainto_tsquery('english', %s) AS q WHERE document @@ q "
            "ORDER BY ts_rank(document, q) DESC, incident_id LIMIT %s", (text, max(1, limit)))
        return [SearchHit(incident_id=r["incident_id"], snippet=r["snippet"], tags=r["tags"].split())
                for r in rows]


def _sqlite_add_columns(conn: sqlite3.Connection) -> None:
    # SQLite has no ADD COLUMN IF NOT EXISTS; a store of the release before versioning may have some already
    have = {row[1] for row in conn.execute("PRAGMA table_info(incidents)")}
    for name, sqlite_type, _ in _ADDED_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE incidents ADD COLUMN {name} {sqlite_type}")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "incidents, audit events and reviews (the schema before versioning)", _SCHEMA, _PG_SCHEMA),
    Migration(2, "the console's list columns: users on the previous model, roles awaited, decision deadline",
              _sqlite_add_columns, _PG_ADD_COLUMNS),
    Migration(3, "list incidents by playbook without a scan",
              "CREATE INDEX IF NOT EXISTS incidents_by_playbook ON incidents (playbook, updated_at DESC)",
              "CREATE INDEX IF NOT EXISTS incidents_by_playbook ON incidents (playbook, updated_at DESC)"),
    Migration(4, "tamper-evident audit: each event's chain position, previous hash and hash; one active incident "
              "per flag/serving target",
              "".join(f"ALTER TABLE audit_events ADD COLUMN {n} {k};\n" for n, k in _CHAIN_COLUMNS)
              + "CREATE TABLE IF NOT EXISTS target_holds (target TEXT PRIMARY KEY, incident_id TEXT NOT NULL, "
                "held_at TEXT NOT NULL);",
              "".join(f"ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS {n} {k};\n" for n, k in _CHAIN_COLUMNS)
              + "CREATE TABLE IF NOT EXISTS target_holds (target TEXT PRIMARY KEY, incident_id TEXT NOT NULL, "
                "held_at TIMESTAMPTZ NOT NULL);"),
)
"""The store's schema, step by step; append a step (never edit one) and every store moves to it at start."""
SCHEMA_VERSION = MIGRATIONS[-1].version


async def schema_status(store: IncidentStore) -> SchemaStatus:
    """The schema version ``store`` has and the one this release expects."""
    reader = getattr(store, "schema_version", None)
    current = await reader() if reader is not None else SCHEMA_VERSION
    return SchemaStatus(current=int(current), expected=SCHEMA_VERSION)


def _pg_json(text: str) -> str:
    """``text`` as it reads back from a JSONB column, re-serialised the way ``write`` compares it."""
    return json.dumps(json.loads(text), default=str, sort_keys=True)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class StoreConfigurationError(ValueError):
    """The incident store URL cannot be used."""


def _sqlite(url: str, max_connections: int) -> IncidentStore:
    path = url[len("sqlite:///"):]
    if not path:
        raise StoreConfigurationError(f"{url!r} names no file; write it like sqlite:///.unship/unship.db")
    return SqliteIncidentStore(Path(path))


def _postgres(url: str, max_connections: int) -> IncidentStore:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise StoreConfigurationError("a postgresql:// incident store needs psycopg: pip install "
                                      "'psycopg[binary]'") from exc
    rest = url.split("://", 1)[1]
    return PostgresIncidentStore(f"postgresql://{rest}", max_connections=max_connections)


# Scheme prefix -> factory.
_STORES: dict[str, Callable[[str, int], IncidentStore]] = {
    "sqlite:///": _sqlite,
    "postgresql://": _postgres,
    "postgres://": _postgres,
    "postgresql+psycopg://": _postgres,
}


def open_store(url: str, *, max_connections: int = PG_CONNECTIONS) -> IncidentStore:
    """The incident store for ``url``: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
    ``postgresql://user:password@host:port/database`` (nothing is connected until first use; a PostgreSQL store
    keeps at most ``max_connections`` open per event loop)."""
    for prefix, factory in _STORES.items():
        if url.startswith(prefix):
            return factory(url, max_connections)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreConfigurationError(
        f"unsupported incident store URL scheme {scheme!r}; use sqlite:///path/to/unship.db or "
        "postgresql://user@host:5432/database"
    )
