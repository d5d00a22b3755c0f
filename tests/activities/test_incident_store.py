"""The SQLite incident store: idempotent writes, ordering, reviews, and data that survives a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities.contracts import (
    AuditBatch,
    AuditEvent,
    IncidentRecord,
    IncidentStore,
    ReviewDocument,
)
from activities.errors import AuditConflict
from activities.store import SqliteIncidentStore, StoreConfigurationError, open_store, verify_chain

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(incident_id: str = "unship:chat:r42", phase: str = "confirming", minutes: int = 0,
           outcome: str | None = None) -> IncidentRecord:
    return IncidentRecord(incident_id=incident_id, playbook="chat", playbook_hash="abc123", release="r42",
                          phase=phase, outcome=outcome, started_at=T0, updated_at=T0 + timedelta(minutes=minutes))


def event(seq: int, message: str = "", kind: str = "note") -> AuditEvent:
    return AuditEvent(seq=seq, at=T0 + timedelta(seconds=seq), kind=kind, actor="unship",
                      message=message or f"event {seq}", data={"seq": seq, "nested": {"ok": True}})


async def test_replayed_batches_do_not_duplicate_events(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    assert isinstance(store, IncidentStore)
    await store.write(AuditBatch(incident=record(), events=[event(1), event(2)]))
    # A retried activity sends the same batch again; the next batch overlaps the previous one.
    await store.write(AuditBatch(incident=record(), events=[event(1), event(2)]))
    await store.write(AuditBatch(incident=record(phase="deciding", minutes=1), events=[event(2), event(3)]))

    events = await store.events("unship:chat:r42")
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0] == event(1)
    [incident] = await store.incidents()
    assert incident.phase == "deciding"


async def test_a_late_older_batch_never_moves_the_incident_back(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    await store.write(AuditBatch(incident=record(phase="closed", minutes=9, outcome="reverted"), events=[]))
    await store.write(AuditBatch(incident=record(phase="reverting", minutes=5), events=[event(7)]))
    [incident] = await store.incidents()
    assert (incident.phase, incident.outcome) == ("closed", "reverted")
    assert [e.seq for e in await store.events(incident.incident_id)] == [7]


async def test_concurrent_writers_keep_every_event_once(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    batches = [AuditBatch(incident=record(minutes=i), events=[event(i), event(i + 1)]) for i in range(30)]
    await asyncio.gather(*(store.write(b) for b in batches + batches))
    assert [e.seq for e in await store.events("unship:chat:r42")] == list(range(31))


async def test_incidents_newest_first_with_limit(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    for i in range(5):
        await store.write(AuditBatch(incident=record(f"unship:chat:r{i}", minutes=i), events=[]))
    assert [r.incident_id for r in await store.incidents(limit=3)] == ["unship:chat:r4", "unship:chat:r3",
                                                                        "unship:chat:r2"]
    assert await store.events("unknown") == []


async def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "unship.db"
    store = open_store(f"sqlite:///{path}")
    await store.write(AuditBatch(incident=record(), events=[event(1, "alert received")]))
    await store.save_review(ReviewDocument(incident_id="unship:chat:r42", markdown="# Review\n",
                                           tasks=[{"title": "root cause", "owner": "ml-lead"}]))
    await store.save_review(ReviewDocument(incident_id="unship:chat:r42", markdown="# Review v2\n"))

    reopened = SqliteIncidentStore(path)
    assert (await reopened.incidents())[0] == record()
    assert (await reopened.events("unship:chat:r42"))[0].message == "alert received"
    review = await reopened.review("unship:chat:r42")
    assert review == ReviewDocument(incident_id="unship:chat:r42", markdown="# Review v2\n")
    assert await reopened.review("unknown") is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SqliteIncidentStore)
    assert open_store(f"sqlite:///{tmp_path}/a.db").path == tmp_path / "a.db"  # type: ignore[attr-defined]
    assert open_store("sqlite:///rel/a.db").path == Path("rel/a.db")  # type: ignore[attr-defined]
    assert type(open_store("postgresql://u@localhost/unship")).__name__ == "PostgresIncidentStore"
    with pytest.raises(StoreConfigurationError, match="unsupported"):
        open_store("mysql://localhost/unship")
    with pytest.raises(StoreConfigurationError, match="names no file"):
        open_store("sqlite:///")


async def test_the_console_list_filters_puts_open_incidents_first_and_reads_events_after_a_seq(
        tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    gate_deadline = T0 + timedelta(minutes=15)
    await store.write(AuditBatch(incident=record("unship:chat:old-open", phase="awaiting_decision", minutes=1)
                                 .model_copy(update={"awaiting": ["on_call", "safety_lead"],
                                                     "decide_by": gate_deadline}), events=[]))
    await store.write(AuditBatch(incident=record("unship:chat:new-closed", phase="closed", minutes=9,
                                                 outcome="reverted").model_copy(update={"previous_percent": 100}),
                                 events=[event(1), event(2), event(3)]))
    await store.write(AuditBatch(incident=record("unship:image:mid", phase="reverting", minutes=5)
                                 .model_copy(update={"playbook": "image", "previous_percent": 50}), events=[]))

    assert [r.incident_id for r in await store.incidents()] == [
        "unship:chat:new-closed", "unship:image:mid", "unship:chat:old-open"]
    listed = await store.incidents(open_first=True)
    assert [r.incident_id for r in listed] == ["unship:image:mid", "unship:chat:old-open", "unship:chat:new-closed"]
    assert listed[1].awaiting == ["on_call", "safety_lead"] and listed[1].decide_by == gate_deadline
    assert listed[0].previous_percent == 50 and listed[2].previous_percent == 100
    assert [r.incident_id for r in await store.incidents(phase="open")] == ["unship:image:mid",
                                                                            "unship:chat:old-open"]
    assert [r.incident_id for r in await store.incidents(phase="closed")] == ["unship:chat:new-closed"]
    assert [r.incident_id for r in await store.incidents(playbook="image")] == ["unship:image:mid"]
    assert await store.incidents(phase="closed", playbook="image") == []
    assert [e.seq for e in await store.events("unship:chat:new-closed", after=1)] == [2, 3]
    assert await store.events("unship:chat:new-closed", after=3) == []


async def test_a_database_from_before_the_console_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "unship.db"
    with sqlite3.connect(path) as conn:  # the schema as the first release wrote it
        conn.executescript("""
            CREATE TABLE incidents (incident_id TEXT PRIMARY KEY, playbook TEXT NOT NULL,
                playbook_hash TEXT NOT NULL, release TEXT NOT NULL, phase TEXT NOT NULL, outcome TEXT,
                started_at TEXT NOT NULL, updated_at TEXT NOT NULL);
            INSERT INTO incidents VALUES ('unship:chat:r1', 'chat', 'h', 'r1', 'closed', 'reverted',
                '2026-03-01T12:00:00.000000+00:00', '2026-03-01T12:05:00.000000+00:00');
        """)
    store = SqliteIncidentStore(path)
    [old] = await store.incidents()
    assert (old.incident_id, old.outcome, old.previous_percent, old.awaiting) == ("unship:chat:r1", "reverted", 0, [])
    await store.write(AuditBatch(incident=record(minutes=1).model_copy(update={"previous_percent": 10}),
                                 events=[event(1)]))
    assert (await store.incident("unship:chat:r42")).previous_percent == 10  # type: ignore[union-attr]


async def test_the_audit_chain_detects_an_edited_deleted_or_reordered_row(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    await store.write(AuditBatch(incident=record(), events=[event(1, "opened"), event(2, "decision by U1")]))
    await store.write(AuditBatch(incident=record(minutes=1), events=[event(2, "decision by U1"), event(3, "closed")]))
    rows = await store.chained_events("unship:chat:r42")
    assert [r.chain for r in rows] == [1, 2, 3]
    assert verify_chain("unship:chat:r42", "abc123", rows).ok
    assert not verify_chain("unship:chat:r42", "another-playbook-version", rows).ok  # rooted in the version

    def tamper(sql: str) -> None:
        with sqlite3.connect(tmp_path / "unship.db") as db:
            db.execute(sql)

    tamper("UPDATE audit_events SET actor = 'U_SOMEONE_ELSE' WHERE seq = 2")
    report = verify_chain("unship:chat:r42", "abc123", await store.chained_events("unship:chat:r42"))
    assert not report.ok and report.first_bad_seq == 2 and "the row was edited" in report.problem
    tamper("UPDATE audit_events SET actor = 'unship' WHERE seq = 2")  # put back: the chain holds again
    assert verify_chain("unship:chat:r42", "abc123", await store.chained_events("unship:chat:r42")).ok
    tamper("DELETE FROM audit_events WHERE seq = 2")
    report = verify_chain("unship:chat:r42", "abc123", await store.chained_events("unship:chat:r42"))
    assert not report.ok and report.first_bad_seq == 3 and "deleted or inserted" in report.problem


async def test_a_target_is_held_by_one_active_incident_at_a_time(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    await store.write(AuditBatch(incident=record("unship:a:1"), events=[event(1)]))
    assert await store.hold_targets("unship:a:1", ["flag:flagd:chat-model", "serving:kserve:ns/chat"]) is None
    assert await store.hold_targets("unship:a:1", ["flag:flagd:chat-model"]) is None  # holding again is fine
    assert await store.hold_targets("unship:b:2", ["flag:flagd:other", "flag:flagd:chat-model"]) == (
        "unship:a:1", "flag:flagd:chat-model")
    assert await store.hold_targets("unship:c:3", ["flag:flagd:other"]) is None  # all or none: b holds nothing
    await store.write(AuditBatch(incident=record("unship:a:1", phase="closed", minutes=5), events=[event(2)]))
    assert await store.hold_targets("unship:b:2", ["flag:flagd:chat-model"]) is None  # a closed holder lets go
    await store.release_targets("unship:b:2")
    assert await store.hold_targets("unship:d:4", ["flag:flagd:chat-model"]) is None


async def test_a_conflicting_event_is_an_error_never_silently_dropped(tmp_path: Path) -> None:
    """Issue 13, defect 3: a second run reusing (incident, seq) with other content used to vanish."""
    store = SqliteIncidentStore(tmp_path / "unship.db")
    await store.write(AuditBatch(incident=record(), events=[event(1), event(2)]))
    await store.write(AuditBatch(incident=record(), events=[event(2), event(3, "stage 1 skipped")]))
    with pytest.raises(AuditConflict) as raised:
        await store.write(AuditBatch(incident=record(), events=[event(3, "a different event 3")]))
    assert "seq 3" in str(raised.value) and "a different event 3" in str(raised.value)
    # nothing of the conflicting batch was written; what was stored stays as it was
    assert [e.message for e in await store.events("unship:chat:r42")] == ["event 1", "event 2", "stage 1 skipped"]


async def test_the_store_recreates_its_tables_after_its_file_vanished(tmp_path: Path) -> None:
    """Issue 13, defect 5: the schema used to be remembered per process, so every write failed afterwards."""
    path = tmp_path / "unship.db"
    store = SqliteIncidentStore(path)
    await store.write(AuditBatch(incident=record(), events=[event(1)]))
    for suffix in ("", "-wal", "-shm"):
        tmp_path.joinpath("unship.db" + suffix).unlink(missing_ok=True)
    await store.write(AuditBatch(incident=record(minutes=1), events=[event(2)]))
    assert [e.seq for e in await store.events("unship:chat:r42")] == [2]
    path.unlink()
    assert await store.events("unship:chat:r42") == []
    assert await store.incidents() == []


async def test_a_failed_call_never_leaves_the_store_reading_an_old_snapshot(tmp_path: Path) -> None:
    """Each executor thread keeps its connection open. A cursor kept alive by a failure's traceback keeps its
    read snapshot, and later reads on that thread's connection would miss every newer write."""
    path = tmp_path / "unship.db"

    def reads_one_row_then_fails(conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT incident_id FROM incidents")
        rows.fetchone()  # one of two rows: the statement, and its snapshot, stay open
        raise RuntimeError("the call failed")

    async def on_one_thread() -> set[str]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))  # every call on the same thread
        store = SqliteIncidentStore(path)
        for incident in ("unship:chat:a", "unship:chat:b"):
            await store.write(AuditBatch(incident=record(incident), events=[event(1)]))
        with pytest.raises(RuntimeError) as failed:
            await store._run(reads_one_row_then_fails)
        assert failed.traceback  # the traceback (and the cursor in its frame) is still alive here
        await SqliteIncidentStore(path).write(AuditBatch(incident=record("unship:chat:c"), events=[event(1)]))
        return {i.incident_id for i in await store.incidents()}

    # its own event loop in its own thread: the tests share one loop, whose executor must stay as it is
    assert await asyncio.to_thread(asyncio.run, on_one_thread()) == {"unship:chat:a", "unship:chat:b",
                                                                     "unship:chat:c"}


async def test_writers_waiting_their_turn_leave_the_executor_to_everything_else(tmp_path: Path) -> None:
    """The writes of one process go one at a time; those waiting for their turn must not hold the executor's
    threads, which the flag providers' file I/O and every read share (in a burst of incidents the reads of the
    first write queued behind held threads). Two threads, a slow write running, four more queued: a read
    still finishes before the second write does."""
    path = tmp_path / "unship.db"
    finished: list[str] = []

    def slow_write(name: str) -> Callable[[sqlite3.Connection], None]:
        def write(conn: sqlite3.Connection) -> None:
            time.sleep(0.05)
            finished.append(name)
        return write

    def read(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT count(*) FROM incidents").fetchone()
        finished.append("read")

    async def on_two_threads() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        store = SqliteIncidentStore(path)
        await store.incidents()  # the tables exist
        writes = [asyncio.ensure_future(store._run(slow_write(f"write {n}"), writes=True)) for n in range(5)]
        await asyncio.sleep(0)  # every write asked for its turn before the read
        await asyncio.gather(*writes, store._run(read))

    await asyncio.to_thread(asyncio.run, on_two_threads())
    assert finished.index("read") < finished.index("write 1"), finished


async def test_target_holds_are_listed_and_one_can_be_let_go(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "unship.db")
    assert await store.target_holds() == []
    assert await store.hold_targets("unship:a:1", ["flag:flagd:chat-model", "serving:kserve:ns/chat"]) is None
    holds = await store.target_holds()
    assert [(h.target, h.incident_id) for h in holds] == [("flag:flagd:chat-model", "unship:a:1"),
                                                          ("serving:kserve:ns/chat", "unship:a:1")]
    assert abs((holds[0].held_at - datetime.now(UTC)).total_seconds()) < 3600
    assert await store.release_target("flag:flagd:chat-model") == "unship:a:1"
    assert await store.release_target("flag:flagd:chat-model") is None
    assert [h.target for h in await store.target_holds()] == ["serving:kserve:ns/chat"]
    assert await store.hold_targets("unship:b:2", ["flag:flagd:chat-model"]) is None  # free again
