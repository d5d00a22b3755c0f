"""Counting and purging a bad release's outputs in REAL PostgreSQL 15 and SQLite, and over the HTTP contract.

Rows of other releases are never touched; deletion runs in bounded batches; a purge that crashes midway
resumes from its heartbeated progress without counting anything twice, on the real Temporal dev server.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.chat import LogNotifier
from activities.contracts import OutputsRequest, OutputsResult, PurgeProgress
from activities.outputs import HttpOutputStore, OutputRouter, SqlOutputStore
from activities.rollback import RollbackActivities
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from playbooks.models import HttpOutputs, OutputLocation, SqlOutputs
from tests.support.fake_http import Answer, FakeServer, Request
from tests.support.postgres import PostgresCluster, start_postgres

BAD, GOOD = "chat-v2.4", "chat-v2.3"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    pg = start_postgres(tmp_path_factory.mktemp("pg-outputs"), database="outputs")
    yield pg
    pg.stop()


def _fill_sqlite(path: Path, bad: int, good: int) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE answers (id INTEGER PRIMARY KEY, model_version TEXT NOT NULL, text TEXT)")
    conn.executemany("INSERT INTO answers (model_version, text) VALUES (?, ?)",
                     [(BAD, f"bad {i}") for i in range(bad)] + [(GOOD, f"good {i}") for i in range(good)])
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def _fill_postgres(cluster: PostgresCluster, bad: int, good: int) -> str:
    name = f"o_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = cluster.dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA chat")
        conn.execute("CREATE TABLE chat.answers (id BIGSERIAL PRIMARY KEY, model_version TEXT NOT NULL, text TEXT)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO chat.answers (model_version, text) VALUES (%s, %s)",
                            [(BAD, f"bad {i}") for i in range(bad)] + [(GOOD, f"good {i}") for i in range(good)])
    return dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SqlOutputs:
    """A database holding 250 outputs of the bad release and 40 of the good one; the URL in OUTPUTS_DSN."""
    if request.param == "sqlite":
        dsn = _fill_sqlite(tmp_path / "answers.db", 250, 40)
        table = "answers"
    else:
        dsn = _fill_postgres(request.getfixturevalue("cluster"), 250, 40)
        table = "chat.answers"
    monkeypatch.setenv("OUTPUTS_DSN", dsn)
    return SqlOutputs(name="answers", dsn_env="OUTPUTS_DSN", table=table, version_column="model_version",
                      batch_size=100)


def _request(*locations: OutputLocation, dry_run: bool = False) -> OutputsRequest:
    return OutputsRequest(incident_id="unship:chat:chat-v2.4", release=BAD, locations=list(locations),
                          dry_run=dry_run)


async def test_counts_only_the_release_and_purges_it_in_batches(database: SqlOutputs) -> None:
    router = OutputRouter()
    assert [c.count for c in await router.counts(_request(database))] == [250]
    result = await router.purge(_request(database), PurgeProgress())
    assert result.total_before == 250 and result.total_after == 0
    assert result.batches == 3  # 100 + 100 + 50, never one unbounded DELETE
    store = SqlOutputStore()
    assert await store.count(database, GOOD) == 40  # the other release's rows are untouched
    again = await router.purge(_request(database), PurgeProgress())  # idempotent: nothing left, nothing counted
    assert again.total_before == 0 and again.batches == 0


class _CrashAfter:
    """An OutputStore that dies (like a killed worker) after ``batches`` deletions, once."""

    def __init__(self, inner: SqlOutputStore, batches: int) -> None:
        self.inner, self.left, self.deleted = inner, batches, 0

    async def count(self, location: OutputLocation, release: str) -> int:
        return await self.inner.count(location, release)

    async def delete_batch(self, location: OutputLocation, release: str, limit: int) -> int:
        if self.left == 0:
            self.left = -1
            raise ConnectionError("worker lost its connection mid-purge")
        self.left -= 1
        n = await self.inner.delete_batch(location, release, limit)
        self.deleted += n
        return n


async def test_a_crash_mid_purge_resumes_without_counting_twice(database: SqlOutputs) -> None:
    crashing = _CrashAfter(SqlOutputStore(), batches=2)
    router = OutputRouter({"sql": crashing})
    progress = PurgeProgress()  # what the activity heartbeats after every batch
    with pytest.raises(ConnectionError):
        await router.purge(_request(database), progress)
    assert progress.before == {"answers": 250} and progress.batches == {"answers": 2}
    result = await router.purge(_request(database), progress)  # the retry, handed the heartbeated progress
    assert result.counts_before[0].count == 250  # the evidence's "before" is the count before the first batch
    assert result.total_after == 0 and result.batches == 3
    assert crashing.deleted == 250  # every row deleted exactly once
    assert await SqlOutputStore().count(database, GOOD) == 40


@workflow.defn(sandboxed=False)
class PurgeOnce:
    @workflow.run
    async def run(self, req: OutputsRequest) -> OutputsResult:
        return await workflow.execute_activity_method(
            RollbackActivities.purge_outputs, req, start_to_close_timeout=timedelta(minutes=1),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3))


async def test_the_purge_activity_resumes_from_its_heartbeat_on_the_dev_server(
        database: SqlOutputs, local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    crashing = _CrashAfter(SqlOutputStore(), batches=2)
    activities = RollbackActivities(ScriptedFlagProvider(), ScriptedSignalSource({}), LogNotifier(),
                                    SqliteIncidentStore(tmp_path / "u.db"), outputs=OutputRouter({"sql": crashing}))
    queue = f"purge-{uuid.uuid4().hex[:6]}"
    async with Worker(local_env.client, task_queue=queue, workflows=[PurgeOnce], activities=activities.all(),
                      workflow_runner=UnsandboxedWorkflowRunner()):
        result: OutputsResult = await local_env.client.execute_workflow(
            PurgeOnce.run, _request(database), id=f"purge-{uuid.uuid4().hex[:6]}", task_queue=queue)
    assert result.counts_before[0].count == 250 and result.total_after == 0
    assert crashing.deleted == 250


class FakeOutputsEndpoint(FakeServer):
    """A service speaking the HTTP deletion contract of activities/outputs.py."""

    def __init__(self, rows: dict[str, int]) -> None:
        super().__init__()
        self.rows = dict(rows)

    def handle(self, request: Request) -> Answer:
        if request.headers.get("authorization") != "Bearer s3cret":
            return Answer(401, {"message": "unauthorized"})
        if request.method == "GET" and request.path == "/outputs/count":
            return Answer(200, {"count": self.rows.get(request.query["release"][0], 0)})
        if request.method == "POST" and request.path == "/outputs/purge":
            body: dict[str, Any] = request.json()
            n = min(int(body["limit"]), self.rows.get(body["release"], 0))
            self.rows[body["release"]] = self.rows.get(body["release"], 0) - n
            return Answer(200, {"deleted": n})
        return Answer(404, {"message": "no route"})


async def test_http_deletion_endpoint_with_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUTS_TOKEN", "s3cret")
    with FakeOutputsEndpoint({BAD: 25, GOOD: 7}) as fake:
        location = HttpOutputs(name="transcripts", url=f"{fake.url}/outputs", token_env="OUTPUTS_TOKEN",
                               batch_size=10)
        store = HttpOutputStore()
        fake.fail_next(503)
        with pytest.raises(ApplicationError) as failed:
            await store.delete_batch(location, BAD, 10)
        assert not failed.value.non_retryable  # a 503 is retried by the workflow
        result = await OutputRouter({"http": store}).purge(_request(location), PurgeProgress())
        assert (result.total_before, result.total_after, result.batches) == (25, 0, 3)
        assert fake.rows[GOOD] == 7
        monkeypatch.setenv("OUTPUTS_TOKEN", "wrong")
        with pytest.raises(ApplicationError) as refused:
            await store.count(location, BAD)
        assert refused.value.non_retryable and "401" in refused.value.message


async def test_a_missing_table_or_url_goes_to_a_person(database: SqlOutputs, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = database.model_copy(update={"table": "no_such_table"})
    with pytest.raises(ApplicationError) as missing:
        await SqlOutputStore().count(wrong, BAD)
    assert missing.value.non_retryable
    monkeypatch.delenv("OUTPUTS_DSN")
    with pytest.raises(ApplicationError) as unset:
        await SqlOutputStore().count(database, BAD)
    assert unset.value.non_retryable and "OUTPUTS_DSN is not set" in unset.value.message
