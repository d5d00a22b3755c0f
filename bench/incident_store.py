"""The incident store on every incident's way to its first write: the target hold, then the audit batch.

Each incident holds its target (``hold_targets``: one transaction) and then writes its first audit batch (the
incident row and 8 chained events, one transaction), as the worker calls them: the SQLite store in a fresh file
(in executor threads), and the PostgreSQL store against a private PostgreSQL 15 cluster on 127.0.0.1 (the one the
tests start: trust authentication, ``fsync=off``). Incidents one after another, then ``--concurrent`` at once.
Beside each, in the same run, the floor: the same two transactions as bare SQL (one insert each, no reads, no
hashes) on one connection kept open, so a change in the store's own overhead shows against the database's.
``--write`` replaces this benchmark's table in BENCHMARKS.md.

    ./dev bench incident_store [--incidents 300] [--concurrent 50] [--stores sqlite,postgres] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from activities.contracts import AuditBatch, AuditEvent, IncidentRecord
from activities.store import PostgresIncidentStore, SqliteIncidentStore
from bench.machine import command_line, header, percentile, table
from tests.support.postgres import start_postgres

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVENTS = 8
"""Events in the first audit batch (alert, opened, confirmed, decided, targets held, served release, stage
applied, stage message): what an automatic incident writes right after its first cohort."""
MS = 1000


def batch(incident: str) -> AuditBatch:
    record = IncidentRecord(incident_id=incident, playbook="bench", playbook_hash="abc123", release="r1",
                            phase="reverting", started_at=T0, updated_at=T0)
    events = [AuditEvent(seq=n, at=T0 + timedelta(seconds=n), kind="note", actor="unship", message=f"event {n}",
                         data={"seq": n, "nested": {"ok": True}}) for n in range(1, EVENTS + 1)]
    return AuditBatch(incident=record, events=events)


class BareSql:
    """The floor: one connection kept open (its transactions one at a time, as SQLite runs writers), WAL, one
    insert per transaction."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("CREATE TABLE holds (target TEXT PRIMARY KEY, incident TEXT)")
        self.conn.execute("CREATE TABLE events (incident TEXT, seq INTEGER, body TEXT, PRIMARY KEY (incident, seq))")

    def _tx(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(sql, rows)
            self.conn.execute("COMMIT")

    async def hold(self, incident: str, target: str) -> None:
        await asyncio.to_thread(self._tx, "INSERT INTO holds VALUES (?, ?)", [(target, incident)])

    async def write(self, incident: str) -> None:
        rows = [(incident, n, f"event {n}") for n in range(1, EVENTS + 1)]
        await asyncio.to_thread(self._tx, "INSERT INTO events VALUES (?, ?, ?)", rows)


class BarePostgres:
    """The PostgreSQL floor: one connection kept open (its transactions one at a time), one insert per
    transaction."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()

    @classmethod
    async def connect(cls, dsn: str) -> BarePostgres:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute("CREATE TABLE bare_holds (target TEXT PRIMARY KEY, incident TEXT)")
        await conn.execute("CREATE TABLE bare_events (incident TEXT, seq INTEGER, body TEXT, "
                           "PRIMARY KEY (incident, seq))")
        return cls(conn)

    async def hold(self, incident: str, target: str) -> None:
        async with self.lock, self.conn.transaction():
            await self.conn.execute("INSERT INTO bare_holds VALUES (%s, %s)", (target, incident))

    async def write(self, incident: str) -> None:
        async with self.lock, self.conn.transaction(), self.conn.cursor() as cursor:
            await cursor.executemany("INSERT INTO bare_events VALUES (%s, %s, %s)",
                                     [(incident, n, f"event {n}") for n in range(1, EVENTS + 1)])


async def run(label: str, incidents: int, width: int,
              one: Callable[[str], Awaitable[None]]) -> tuple[list[float], float]:
    """Per-incident latency (hold + write) and CPU per incident, ``width`` at a time."""
    latencies: list[float] = []

    async def timed(incident: str) -> None:
        started = time.perf_counter()
        await one(incident)
        latencies.append(time.perf_counter() - started)

    cpu = time.process_time()
    for start in range(0, incidents, width):
        await asyncio.gather(*(timed(f"unship:{label}:{n}") for n in range(start, min(incidents, start + width))))
    return latencies, (time.process_time() - cpu) / incidents


async def compare(label: str, store: SqliteIncidentStore | PostgresIncidentStore,
                  bare_hold: Callable[[str, str], Awaitable[None]], bare_write: Callable[[str], Awaitable[None]],
                  args: argparse.Namespace) -> list[tuple[str, ...]]:
    """The store against its floor, one after another and ``--concurrent`` at once: table rows."""
    rows: list[tuple[str, ...]] = []

    async def unship(incident: str) -> None:
        await store.hold_targets(incident, [f"flagd:{incident}"])
        await store.write(batch(incident))

    async def floor(incident: str) -> None:
        await bare_hold(incident, f"flagd:{incident}")
        await bare_write(incident)

    await unship(f"warm-up-{label}")
    await floor(f"warm-up-{label}")
    for mode, width in (("one after another", 1), (f"{args.concurrent} at once", args.concurrent)):
        for name, one in ((f"{label} store: hold_targets + audit batch", unship),
                          (f"floor: 2 bare SQL transactions on one {label} connection", floor)):
            latencies, cpu = await run(f"{label}-{mode}-{name[:5]}", args.incidents, width, one)
            rows.append((mode if "store" in name else "", name,
                         f"{percentile(latencies, .5) * MS:.2f} ms", f"{percentile(latencies, .95) * MS:.2f} ms",
                         f"{cpu * MS:.2f} ms"))
    return rows


async def measure(args: argparse.Namespace) -> str:
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = sorted(set(stores) - {"sqlite", "postgres"})
    if unknown:
        raise SystemExit(f"--stores: unknown {', '.join(unknown)} (choose from sqlite, postgres)")
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in stores:
            bare = BareSql(Path(tmp) / "bare.db")
            rows += await compare("SQLite", SqliteIncidentStore(Path(tmp) / "unship.db"), bare.hold, bare.write, args)
        if "postgres" in stores:
            cluster = start_postgres(Path(tmp), database="unship")
            try:
                floor = await BarePostgres.connect(cluster.dsn)
                rows += await compare("PostgreSQL", PostgresIncidentStore(cluster.dsn), floor.hold, floor.write,
                                      args)
                await floor.conn.close()
            finally:
                cluster.stop()
    return "\n".join([header("incident_store"), "",
                      f"`./dev bench incident_store --incidents {args.incidents} --concurrent {args.concurrent}` "
                      "(SQLite: fresh file, WAL; PostgreSQL 15: private cluster on 127.0.0.1, trust auth, fsync=off; "
                      "CPU is this process's)", "",
                      table(["load", "measured", "p50", "p95", "CPU per incident"], rows, "llrrr")])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--incidents", type=int, default=300)
    p.add_argument("--concurrent", type=int, default=50)
    p.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--write", action="store_true", help="replace this benchmark's table in BENCHMARKS.md")
    return p


RECORD = ["--incidents", "300", "--concurrent", "50"]
"""The arguments ``./dev bench all`` records with."""


if __name__ == "__main__":
    command_line("incident_store", parser(), measure)
