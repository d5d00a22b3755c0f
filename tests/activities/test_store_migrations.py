"""The incident store has a schema version and ordered migrations: a store written by the release before
versioning (fixtures/store-v1.*.sql, made with main's store code) is upgraded in place on first use, keeps every
incident, event and review, and a store newer than this release is refused, not guessed at."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from activities.contracts import AuditBatch, AuditEvent, IncidentRecord
from activities.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    PostgresIncidentStore,
    SqliteIncidentStore,
    StoreSchemaError,
    schema_status,
)
from tests.support.postgres import PostgresCluster, start_postgres

FIXTURES = Path(__file__).parent / "fixtures"
INCIDENT = "unship:chat-assistant:chat-v2.3.0"


def test_migrations_are_ordered_and_the_newest_is_expected() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == MIGRATIONS[-1].version >= 2


async def _exercise(store: SqliteIncidentStore | PostgresIncidentStore) -> None:
    assert (await schema_status(store)).current == 1  # the previous release's store, not yet upgraded
    records = await store.incidents()
    assert [r.incident_id for r in records] == [INCIDENT] and records[0].outcome == "reverted"
    assert (await schema_status(store)).current == SCHEMA_VERSION  # first use migrated it
    events = await store.events(INCIDENT)
    assert events[0].kind == "opened" and events[-1].kind == "closed"
    review = await store.review(INCIDENT)
    assert review is not None and review.markdown.startswith("# Review of chat-v2.3.0")
    now = datetime.now(UTC)
    await store.write(AuditBatch(
        incident=IncidentRecord(incident_id="unship:chat-assistant:chat-v2.4.0", playbook="chat-assistant",
                                playbook_hash="abc", release="chat-v2.4.0", phase="confirming", started_at=now,
                                updated_at=now),
        events=[AuditEvent(seq=1, at=now, kind="opened", actor="unship", message="opened")]))
    assert len(await store.incidents()) == 2


async def test_sqlite_store_of_the_previous_release_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "unship.db"
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / "store-v1.sqlite.sql").read_text())
    conn.close()
    await _exercise(SqliteIncidentStore(path))
    with sqlite3.connect(path) as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM unship_schema ORDER BY version")]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert applied == [m.version for m in MIGRATIONS] and "incidents_by_playbook" in indexes
    await _exercise_again_is_a_no_op(SqliteIncidentStore(path))


async def _exercise_again_is_a_no_op(store: SqliteIncidentStore | PostgresIncidentStore) -> None:
    assert len(await store.incidents()) == 2
    assert (await schema_status(store)).current == SCHEMA_VERSION


async def test_a_store_newer_than_this_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unship.db"
    store = SqliteIncidentStore(path)
    await store.incidents()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO unship_schema (version, applied_at) VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreSchemaError, match="run the newer release"):
        await SqliteIncidentStore(path).incidents()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    pg = start_postgres(tmp_path_factory.mktemp("pg-migrations"), database="unship")
    yield pg
    pg.stop()


async def test_postgres_store_of_the_previous_release_is_upgraded_in_place(cluster: PostgresCluster) -> None:
    name = f"m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = cluster.dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((FIXTURES / "store-v1.postgres.sql").read_text())
    await _exercise(PostgresIncidentStore(dsn))
    with psycopg.connect(dsn) as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM unship_schema ORDER BY version")]
    assert applied == [m.version for m in MIGRATIONS]
    await _exercise_again_is_a_no_op(PostgresIncidentStore(dsn))
