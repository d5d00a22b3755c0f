"""SQL integrity checks against a REAL PostgreSQL 15: conversation records of the bad release, read-only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import TypeAdapter

from activities.contracts import IntegrityRequest
from activities.integrity import IntegrityChecker, sql_with_release
from activities.scripted import ScriptedFlagProvider
from playbooks.models import IntegrityCheck
from tests.support.postgres import PostgresCluster, free_port, start_postgres

CHECK = TypeAdapter(IntegrityCheck)
BAD = "gpt-chat-2026-03"
GOOD = "gpt-chat-2026-02"
# Every conversation written during the bad release is still there and tagged with the model that wrote it.
INTACT = """
SELECT count(*) FILTER (WHERE model_version IS DISTINCT FROM '$release')
FROM conversations
WHERE created_at >= '2026-03-01 12:00+00' AND created_at < '2026-03-01 13:00+00'
"""
COUNT = "SELECT count(*) FROM conversations WHERE model_version = '$release'"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    pg = start_postgres(tmp_path_factory.mktemp("pg-integrity"), database="chat")
    yield pg
    pg.stop()


@pytest.fixture
def db(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    """A conversations table: 40 written by the bad release between 12:00 and 13:00, 10 by the good one after."""
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS conversations")
        conn.execute("CREATE TABLE conversations (id serial PRIMARY KEY, created_at timestamptz NOT NULL, "
                     "model_version text, transcript text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO conversations (created_at, model_version, transcript) VALUES (%s, %s, %s)",
                [(f"2026-03-01 12:{i:02d}+00", BAD, f"chat {i}") for i in range(40)]
                + [(f"2026-03-01 13:{i:02d}+00", GOOD, f"chat {i}") for i in range(10)],
            )
        yield conn


def request(release: str, *checks: dict[str, Any]) -> IntegrityRequest:
    return IntegrityRequest(incident_id=f"unship:chat:{release}", release=release,
                            checks=[CHECK.validate_python({"kind": "sql", "dsn_env": "CHAT_DB", **c}) for c in checks],
                            targets=[], expected_previous_percent=100)


def checker(cluster: PostgresCluster, **kwargs: Any) -> IntegrityChecker:
    return IntegrityChecker(ScriptedFlagProvider(), environ={"CHAT_DB": cluster.dsn}, **kwargs)


async def test_records_of_the_bad_release_are_intact(cluster: PostgresCluster, db: psycopg.Connection) -> None:
    result = await checker(cluster).run(request(
        BAD,
        {"name": "tagged", "query": INTACT, "expect": 0},
        {"name": "all-kept", "query": COUNT, "expect": 40},
    ))
    tagged, kept = result.results
    assert result.passed, [r.evidence for r in result.results]
    assert f"model_version IS DISTINCT FROM '{BAD}'" in tagged.evidence and "-> 0, expected 0" in tagged.evidence
    assert "-> 40, expected 40" in kept.evidence


async def test_a_missing_or_untagged_record_fails_with_evidence(
        cluster: PostgresCluster, db: psycopg.Connection) -> None:
    db.execute("UPDATE conversations SET model_version = NULL WHERE id = 7")
    db.execute("DELETE FROM conversations WHERE id IN (3, 4)")
    result = await checker(cluster).run(request(
        BAD,
        {"name": "tagged", "query": INTACT, "expect": 0},
        {"name": "all-kept", "query": COUNT, "expect": 40},
    ))
    tagged, kept = result.results
    assert not result.passed
    assert not tagged.passed and "-> 1, expected 0" in tagged.evidence
    assert not kept.passed and "-> 37, expected 40" in kept.evidence


async def test_writes_are_refused_and_nothing_changes(cluster: PostgresCluster, db: psycopg.Connection) -> None:
    result = await checker(cluster).run(request(
        BAD,
        {"name": "cte-delete", "expect": 0,
         "query": "WITH gone AS (DELETE FROM conversations RETURNING id) SELECT count(*) FROM gone"},
        {"name": "two-statements", "expect": 1, "query": "SELECT 1; DELETE FROM conversations"},
        {"name": "read-write-again", "expect": "off",
         "query": "SELECT set_config('transaction_read_only', 'off', true)"},
        {"name": "sequence", "expect": 1, "query": "SELECT nextval('conversations_id_seq')"},
    ))
    cte, two, flip, seq = result.results
    assert not cte.passed and "read-only transaction" in cte.evidence
    assert not two.passed and "multiple commands" in two.evidence
    assert not flip.passed and "read-write" in flip.evidence
    assert not seq.passed and "read-only transaction" in seq.evidence
    assert db.execute("SELECT count(*) FROM conversations").fetchone() == (50,)


async def test_a_slow_query_is_cancelled_and_fails(cluster: PostgresCluster, db: psycopg.Connection) -> None:
    [check] = (await checker(cluster, sql_timeout=0.3).run(request(
        BAD, {"name": "slow", "query": "SELECT count(*) FROM pg_sleep(30)", "expect": 1}))).results
    assert not check.passed and "statement timeout" in check.evidence


async def test_release_cannot_change_the_query(cluster: PostgresCluster, db: psycopg.Connection) -> None:
    hostile = "x' OR '1'='1"
    [check] = (await checker(cluster).run(request(hostile, {"name": "count", "query": COUNT, "expect": 0}))).results
    assert check.passed, check.evidence  # compared as one string: no conversation has that model version

    [bare] = (await checker(cluster).run(request(BAD, {
        "name": "bare", "query": "SELECT count(*) FROM conversations WHERE model_version = $release",
        "expect": 40}))).results
    assert not bare.passed and "single-quoted" in bare.evidence


def test_release_substitution_in_sql() -> None:
    assert sql_with_release("SELECT '$release', 'it''s $release'", "o'k") == "SELECT 'o''k', 'it''s o''k'"
    assert sql_with_release("SELECT 1 -- $release\n", "v") == "SELECT 1 -- $release\n"
    assert sql_with_release("SELECT '$release_x'", "v") == "SELECT '$release_x'"
    for query, release in (('SELECT "$release"', "v"), ("SELECT $release", "v"), ("SELECT '$release'", "a\\b")):
        with pytest.raises(ValueError):
            sql_with_release(query, release)


async def test_unreachable_database_fails_without_the_password(db: psycopg.Connection) -> None:
    checker_ = IntegrityChecker(ScriptedFlagProvider(),
                                environ={"CHAT_DB": f"postgresql://app:s3cret@127.0.0.1:{free_port()}/chat"},
                                sql_timeout=2)
    [check] = (await checker_.run(request(BAD, {"name": "x", "query": "SELECT 1", "expect": 1}))).results
    assert not check.passed and "CHAT_DB" in check.evidence and "s3cret" not in check.evidence
