"""The PostgreSQL incident store against a REAL PostgreSQL 15 (private cluster, tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from activities.contracts import (
    AuditBatch,
    AuditEvent,
    IncidentRecord,
    IncidentStore,
    ReviewDocument,
)
from activities.errors import AuditConflict
from activities.store import PostgresIncidentStore, StoreConfigurationError, open_store
from tests.support.postgres import PostgresCluster, free_port, start_postgres
from workers.runtime.settings import Settings
from workers.runtime.worker import build_activities

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    pg = start_postgres(tmp_path_factory.mktemp("pg-store"), database="unship")
    yield pg
    pg.stop()


@pytest.fixture
def dsn(cluster: PostgresCluster) -> str:
    """A fresh, empty database per test (the store creates its tables on first use)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.dsn.rsplit("/", 1)[0] + f"/{name}"


def record(incident_id: str = "unship:chat:r42", phase: str = "confirming", minutes: int = 0,
           outcome: str | None = None) -> IncidentRecord:
    return IncidentRecord(incident_id=incident_id, playbook="chat", playbook_hash="abc123", release="r42",
                          phase=phase, outcome=outcome, started_at=T0, updated_at=T0 + timedelta(minutes=minutes))


def event(seq: int, message: str = "") -> AuditEvent:
    return AuditEvent(seq=seq, at=T0 + timedelta(seconds=seq), kind="note", actor="unship",
                      message=message or f"event {seq}",
                      data={"seq": seq, "nested": {"ok": True}, "when": T0 + timedelta(seconds=seq)})


async def test_round_trip_and_replayed_batches(dsn: str) -> None:
    store = open_store(dsn)
    assert isinstance(store, PostgresIncidentStore) and isinstance(store, IncidentStore)
    await store.write(AuditBatch(incident=record(), events=[event(1, "alert received"), event(2)]))
    await store.write(AuditBatch(incident=record(), events=[event(1, "alert received"), event(2)]))  # a retry
    await store.write(AuditBatch(incident=record(phase="deciding", minutes=1), events=[event(2), event(3)]))

    events = await store.events("unship:chat:r42")
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].message == "alert received" and events[0].at == T0 + timedelta(seconds=1)
    assert events[0].data == {"seq": 1, "nested": {"ok": True}, "when": str(T0 + timedelta(seconds=1))}
    assert [(r.incident_id, r.phase) for r in await store.incidents()] == [("unship:chat:r42", "deciding")]
    assert await store.incident("unship:chat:r42") == record(phase="deciding", minutes=1)
    assert await store.incident("unknown") is None
    assert await store.events("unknown") == []


async def test_a_conflicting_event_is_an_error_never_silently_dropped(dsn: str) -> None:
    """Issue 13, defect 3: a second run reusing (incident, seq) with other content used to vanish."""
    store = PostgresIncidentStore(dsn)
    await store.write(AuditBatch(incident=record(), events=[event(1), event(2)]))
    await store.write(AuditBatch(incident=record(), events=[event(2), event(3)]))  # a retry overlapping: fine
    with pytest.raises(AuditConflict, match="seq 2"):
        await store.write(AuditBatch(incident=record(minutes=2), events=[event(2, "stage 1 skipped"), event(4)]))
    assert [e.seq for e in await store.events("unship:chat:r42")] == [1, 2, 3]
    assert (await store.incident("unship:chat:r42")) == record()


async def test_a_late_older_batch_never_moves_the_incident_back(dsn: str) -> None:
    store = PostgresIncidentStore(dsn)
    await store.write(AuditBatch(incident=record(phase="closed", minutes=9, outcome="reverted"), events=[]))
    await store.write(AuditBatch(incident=record(phase="reverting", minutes=5), events=[event(7)]))
    incident = await store.incident("unship:chat:r42")
    assert incident is not None and (incident.phase, incident.outcome) == ("closed", "reverted")
    assert [e.seq for e in await store.events("unship:chat:r42")] == [7]


async def test_concurrent_first_use_and_writers_keep_every_event_once(dsn: str) -> None:
    stores = [PostgresIncidentStore(dsn) for _ in range(4)]  # each creates the schema on its first write
    batches = [AuditBatch(incident=record(minutes=i), events=[event(i), event(i + 1)]) for i in range(12)]
    await asyncio.gather(*(stores[i % 4].write(b) for i, b in enumerate(batches + batches)))
    assert [e.seq for e in await stores[0].events("unship:chat:r42")] == list(range(13))
    assert (await stores[1].incident("unship:chat:r42")) == record(minutes=11)


async def test_newest_first_with_limit_and_reviews(dsn: str) -> None:
    store = PostgresIncidentStore(dsn)
    for i in range(5):
        await store.write(AuditBatch(incident=record(f"unship:chat:r{i}", minutes=i), events=[]))
    assert [r.incident_id for r in await store.incidents(limit=3)] == [
        "unship:chat:r4", "unship:chat:r3", "unship:chat:r2"]

    await store.save_review(ReviewDocument(incident_id="unship:chat:r4", markdown="# Review\n",
                                           tasks=[{"title": "root cause", "owner": "ml-lead"}]))
    assert (await store.review("unship:chat:r4")).tasks == [{"title": "root cause", "owner": "ml-lead"}]
    await store.save_review(ReviewDocument(incident_id="unship:chat:r4", markdown="# Review v2\n"))
    assert await store.review("unship:chat:r4") == ReviewDocument(incident_id="unship:chat:r4",
                                                                  markdown="# Review v2\n")
    assert await store.review("unknown") is None


async def test_survives_dropped_connections_and_a_new_process(dsn: str) -> None:
    store = PostgresIncidentStore(dsn)
    await store.write(AuditBatch(incident=record(), events=[event(1)]))
    # The server drops every other session (a failover, an idle-connection reaper): the store still works.
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
    await store.write(AuditBatch(incident=record(phase="reverting", minutes=2), events=[event(2)]))

    fresh = open_store(dsn)  # as a restarted worker would
    assert [e.seq for e in await fresh.events("unship:chat:r42")] == [1, 2]
    assert (await fresh.incidents())[0].phase == "reverting"


async def test_unreachable_database_fails_without_echoing_the_password(cluster: PostgresCluster) -> None:
    store = PostgresIncidentStore(f"postgresql://unship:s3cret-pw@127.0.0.1:{free_port()}/unship",
                                  connect_timeout=2)
    with pytest.raises(psycopg.OperationalError) as err:
        await store.incidents()
    assert "s3cret-pw" not in str(err.value) and "s3cret-pw" not in repr(store)


def test_store_urls(tmp_path: Path) -> None:
    for url in ("postgresql://u@localhost/unship", "postgres://u@localhost/unship",
                "postgresql+psycopg://u@localhost/unship"):
        assert isinstance(open_store(url), PostgresIncidentStore), url
    with pytest.raises(StoreConfigurationError, match="unsupported"):
        open_store("mysql://localhost/unship")


async def test_the_console_list_filters_and_orders_and_events_after_a_seq(dsn: str) -> None:
    store = PostgresIncidentStore(dsn)
    deadline = T0 + timedelta(minutes=15)
    await store.write(AuditBatch(incident=record("unship:chat:open", phase="awaiting_decision", minutes=1)
                                 .model_copy(update={"awaiting": ["on_call"], "decide_by": deadline}), events=[]))
    await store.write(AuditBatch(incident=record("unship:chat:closed", phase="closed", minutes=9, outcome="reverted")
                                 .model_copy(update={"previous_percent": 100}), events=[event(1), event(2)]))
    listed = await store.incidents(open_first=True)
    assert [r.incident_id for r in listed] == ["unship:chat:open", "unship:chat:closed"]
    assert listed[0].awaiting == ["on_call"] and listed[0].decide_by == deadline
    assert listed[1].previous_percent == 100
    assert [r.incident_id for r in await store.incidents(phase="open", playbook="chat")] == ["unship:chat:open"]
    assert await store.incidents(playbook="image") == []
    assert [e.seq for e in await store.events("unship:chat:closed", after=1)] == [2]


async def test_a_database_from_before_the_console_gains_the_new_columns(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE incidents (incident_id TEXT PRIMARY KEY, playbook TEXT NOT NULL, "
                     "playbook_hash TEXT NOT NULL, release TEXT NOT NULL, phase TEXT NOT NULL, outcome TEXT, "
                     "started_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)")
        conn.execute("INSERT INTO incidents VALUES ('unship:chat:r1', 'chat', 'h', 'r1', 'closed', 'reverted', "
                     "now(), now())")
    store = PostgresIncidentStore(dsn)
    [old] = await store.incidents()
    assert (old.incident_id, old.previous_percent, old.awaiting, old.decide_by) == ("unship:chat:r1", 0, [], None)


async def test_target_holds_are_listed_and_one_can_be_let_go(dsn: str) -> None:
    store = open_store(dsn)
    assert await store.target_holds() == []
    assert await store.hold_targets("unship:a:1", ["flag:flagd:chat-model", "serving:kserve:ns/chat"]) is None
    assert [(h.target, h.incident_id) for h in await store.target_holds()] == [
        ("flag:flagd:chat-model", "unship:a:1"), ("serving:kserve:ns/chat", "unship:a:1")]
    assert await store.release_target("flag:flagd:chat-model") == "unship:a:1"
    assert await store.release_target("flag:flagd:chat-model") is None
    assert await store.hold_targets("unship:b:2", ["flag:flagd:chat-model"]) is None


def _client_backends(dsn: str) -> list[int]:
    """The server processes serving client connections to ``dsn``'s database (this check's own excluded)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid").fetchall()
    return [int(row[0]) for row in rows]


async def test_calls_one_after_another_share_one_connection(dsn: str) -> None:
    """A connection per call costs a server process (fork, authentication) on every hold and audit write, on
    every incident's way to its first write: one after another, the store keeps using one."""
    store = PostgresIncidentStore(dsn)
    await store.hold_targets("unship:a:0", ["flag:flagd:m-0"])
    first = _client_backends(dsn)
    for n in range(1, 20):
        await store.hold_targets(f"unship:a:{n}", [f"flag:flagd:m-{n}"])
        await store.write(AuditBatch(incident=record(f"unship:a:{n}"), events=[event(1)]))
    assert len(first) == 1 and _client_backends(dsn) == first


async def _peak_connections(dsn: str, work: Awaitable[object]) -> int:
    """The most client connections to ``dsn``'s database seen (by one watcher) while ``work`` runs."""
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(await asyncio.to_thread(_client_backends, dsn)))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        await work
    finally:
        done.set()
        await watcher
    return peak


async def test_a_burst_of_incidents_opens_a_bounded_number_of_connections(dsn: str) -> None:
    """150 incidents hold their targets and write their audit at once: every call succeeds (PostgreSQL refuses
    connections past ``max_connections``, 100 by default) and the store never has more than its limit open."""
    store = PostgresIncidentStore(dsn, max_connections=8)

    async def incident(n: int) -> None:
        assert await store.hold_targets(f"unship:b:{n}", [f"flag:flagd:b-{n}"]) is None
        await store.write(AuditBatch(incident=record(f"unship:b:{n}"), events=[event(1), event(2)]))

    peak = await _peak_connections(dsn, asyncio.gather(*(incident(n) for n in range(150))))
    assert 1 <= peak <= 8
    assert len(await store.target_holds()) == 150


async def test_the_connection_limit_is_a_setting(dsn: str, tmp_path: Path) -> None:
    """``UNSHIP_DATABASE_CONNECTIONS`` sizes what a process keeps open: the worker's store built from the
    settings never has more than 3 connections, however many incidents write at once."""
    store = build_activities(Settings(state_dir=tmp_path, database_url=dsn, database_connections=3)).store
    burst = asyncio.gather(*(store.hold_targets(f"unship:c:{n}", [f"flag:flagd:c-{n}"]) for n in range(60)))
    assert 1 <= await _peak_connections(dsn, burst) <= 3
    assert len(await store.target_holds()) == 60
