"""Search over past reviews and their tags, and report drafts, in SQLite (FTS5) and a REAL PostgreSQL 15 (full
text): every word must match, tags count, odd input is just words (never query syntax), drafts round-trip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from activities.contracts import IncidentStore, ReportDraft, ReviewDocument
from activities.store import PostgresIncidentStore, SqliteIncidentStore
from playbooks.models import Regime
from tests.support.postgres import PostgresCluster, start_postgres

REVIEWS = [
    ReviewDocument(incident_id="unship:chat-assistant:v2.4", markdown="Hallucinations doubled after the prompt "
                   "change; grounding failures per 10k answers crossed 35.", tags=["chat-assistant", "team:ml-platform",
                                                                                "signal:hallucination-rate"]),
    ReviewDocument(incident_id="unship:image-generator:sdxl-9", markdown="NSFW escapes rose on the new sampler.",
                   tags=["image-generator", "team:vision", "signal:nsfw-escape-rate"]),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    pg = start_postgres(tmp_path_factory.mktemp("pg-search"), database="search")
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> IncidentStore:
    if request.param == "sqlite":
        return SqliteIncidentStore(tmp_path / "unship.db")
    cluster: PostgresCluster = request.getfixturevalue("cluster")
    name = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PostgresIncidentStore(cluster.dsn.rsplit("/", 1)[0] + f"/{name}")


async def test_search_finds_reviews_by_words_and_tags_across_teams(store: IncidentStore) -> None:
    for review in REVIEWS:
        await store.save_review(review)
    await store.save_review(REVIEWS[0].model_copy(update={"markdown": REVIEWS[0].markdown + " Purged on day 30."}))
    assert [h.incident_id for h in await store.search("grounding failures")] == ["unship:chat-assistant:v2.4"]
    assert [h.incident_id for h in await store.search("vision")] == ["unship:image-generator:sdxl-9"]
    assert [h.incident_id for h in await store.search("purged")] == ["unship:chat-assistant:v2.4"]  # replaced, once
    assert await store.search("grounding sampler") == []  # every word must match
    for odd in ('"', "NEAR(a b)", "a OR", "*", "x AND NOT y", "';DROP TABLE reviews;--", "   "):
        await store.search(odd)  # words, never query syntax: no error
    hit = (await store.search("hallucinations"))[0]
    assert "**" in hit.snippet and "team:ml-platform" in hit.tags


async def test_report_drafts_round_trip(store: IncidentStore) -> None:
    draft = ReportDraft(incident_id="unship:chat-assistant:v2.4", regime=Regime.GDPR, markdown="# DRAFT", html="<h1>")
    await store.save_report(draft)
    await store.save_report(draft.model_copy(update={"markdown": "# DRAFT v2"}))
    [saved] = await store.reports("unship:chat-assistant:v2.4")
    assert saved.regime is Regime.GDPR and saved.markdown == "# DRAFT v2" and saved.html == "<h1>"
    assert await store.reports("unship:other:v1") == []
