"""The outputs a bad release produced, wherever the playbook says they live: count them and purge them.

Each location kind is an ``OutputStore`` (count, delete one bounded batch):

- ``sql``: a table with a column naming the release that produced each row, in PostgreSQL (psycopg) or SQLite;
  the database URL comes from the environment variable the playbook names (``sqlite:///path`` or
  ``postgresql://...``), never from the playbook itself. Identifiers are validated by the playbook model and
  quoted here; the release is always a bound parameter.
- ``http``: any service speaking this contract (``{url}`` from the playbook, bearer token from ``token_env``)::

      GET  {url}/count?release=R                  -> 200 {"count": 123}
      POST {url}/purge {"release": R, "limit": N} -> 200 {"deleted": k}   (k <= N; 0 when nothing is left)

  A purge call deletes at most ``limit`` rows of that release and says how many it deleted; repeating it
  is harmless (it deletes what is left), so a lost answer is simply retried.

``purge_outputs`` deletes batch by batch until every location is empty, heartbeating its progress
(``PurgeProgress``) after each batch. A retry after a crash resumes from those details: the counts taken
before the first batch stay the "before" of the evidence, so nothing is counted twice, and deleting by the
release predicate is idempotent by nature (a batch that already went finds nothing to delete).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from os import environ
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from temporalio import activity

from activities.contracts import OutputCount, OutputsRequest, OutputsResult, OutputStore, PurgeProgress
from activities.errors import configuration_error, transport_failure
from activities.http_providers import HttpAdapter, json_body, send
from playbooks.models import HttpOutputs, OutputLocation, SqlOutputs

MAX_BATCHES = 1_000_000  # a location that never empties (rows keep arriving) stops here with an error


def _dsn(location: SqlOutputs, env: Mapping[str, str]) -> str:
    dsn = env.get(location.dsn_env)
    if not dsn:
        raise configuration_error("outputs", location.name, f"environment variable {location.dsn_env} is not "
                                  "set; set it to the database URL (sqlite:///path or postgresql://...)")
    if not dsn.startswith(("sqlite:///", "postgres://", "postgresql://")):
        scheme = dsn.split(":", 1)[0]
        raise configuration_error("outputs", location.name, f"{location.dsn_env} has unsupported scheme "
                                  f"{scheme!r}; use sqlite:///path or postgresql://user@host/db")
    return dsn


def _sqlite_ident(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class SqlOutputStore:
    """Outputs in a SQL table, PostgreSQL or SQLite by the URL's scheme (the URL from ``environ``, by default
    the process environment)."""

    def __init__(self, connect_timeout: int = 10, environ: Mapping[str, str] | None = None) -> None:
        self.connect_timeout = connect_timeout
        self._environ = environ

    async def count(self, location: OutputLocation, release: str) -> int:
        assert isinstance(location, SqlOutputs)
        dsn = _dsn(location, self._environ if self._environ is not None else environ)
        if dsn.startswith("sqlite:///"):
            query = f"SELECT count(*) FROM {_sqlite_ident(location.table)} WHERE " \
                    f"{_sqlite_ident(location.version_column)} = ?"
            return int(await asyncio.to_thread(self._sqlite, dsn, query, (release,), False))
        stmt = sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
            sql.Identifier(*location.table.split(".")), sql.Identifier(location.version_column))
        return await self._postgres(location, dsn, stmt, (release,), False)

    async def delete_batch(self, location: OutputLocation, release: str, limit: int) -> int:
        assert isinstance(location, SqlOutputs)
        dsn = _dsn(location, self._environ if self._environ is not None else environ)
        if dsn.startswith("sqlite:///"):
            table, column, key = (_sqlite_ident(location.table), _sqlite_ident(location.version_column),
                                  _sqlite_ident(location.key_column))
            query = f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {column} = ? LIMIT ?)"
            return int(await asyncio.to_thread(self._sqlite, dsn, query, (release, limit), True))
        table_id = sql.Identifier(*location.table.split("."))
        stmt = sql.SQL("DELETE FROM {t} WHERE {k} IN (SELECT {k} FROM {t} WHERE {c} = %s LIMIT %s)").format(
            t=table_id, k=sql.Identifier(location.key_column), c=sql.Identifier(location.version_column))
        return await self._postgres(location, dsn, stmt, (release, limit), True)

    @staticmethod
    def _sqlite(dsn: str, query: str, params: tuple[Any, ...], write: bool) -> int:
        path = Path(dsn[len("sqlite:///"):])
        if not path.exists():
            raise configuration_error("outputs", str(path), "no such SQLite database; check the URL")
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            if write:
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    return conn.execute(query, params).rowcount
            return int(conn.execute(query, params).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise transport_failure("outputs", str(path), exc) from exc
            raise configuration_error("outputs", str(path), f"{exc}; check the table and columns") from exc
        finally:
            conn.close()

    async def _postgres(self, location: SqlOutputs, dsn: str, stmt: sql.Composed, params: tuple[Any, ...],
                        write: bool) -> int:
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=self.connect_timeout)
        except psycopg.OperationalError as exc:
            raise transport_failure("outputs", f"{location.name} ({location.dsn_env})", exc) from exc
        try:
            async with conn, conn.transaction():
                cursor = await conn.execute(stmt, params)
                if write:
                    return cursor.rowcount
                row = await cursor.fetchone()
                return int(row[0]) if row else 0
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
                psycopg.errors.InsufficientPrivilege) as exc:
            raise configuration_error("outputs", location.name, f"{str(exc).splitlines()[0]}; check the table, "
                                      "the columns and the database user's rights") from exc
        except psycopg.OperationalError as exc:
            raise transport_failure("outputs", location.name, exc) from exc


class HttpOutputStore(HttpAdapter):
    """Outputs behind an HTTP deletion endpoint (the contract in this module's docstring)."""

    system = "outputs endpoint"

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._use_client(client)

    def _headers(self, location: HttpOutputs) -> dict[str, str]:
        if not location.token_env:
            return {}
        token = environ.get(location.token_env)
        if not token:
            raise configuration_error(self.system, location.name,
                                      f"environment variable {location.token_env} is not set")
        return {"Authorization": f"Bearer {token}"}

    async def count(self, location: OutputLocation, release: str) -> int:
        assert isinstance(location, HttpOutputs)
        response = await send(self._client, self.system, location.name, "GET", f"{location.url.rstrip('/')}/count",
                              params={"release": release}, headers=self._headers(location))
        return self._number(location, json_body(self.system, location.name, response), "count")

    async def delete_batch(self, location: OutputLocation, release: str, limit: int) -> int:
        assert isinstance(location, HttpOutputs)
        response = await send(self._client, self.system, location.name, "POST",
                              f"{location.url.rstrip('/')}/purge", headers=self._headers(location),
                              json={"release": release, "limit": limit})
        return self._number(location, json_body(self.system, location.name, response), "deleted")

    def _number(self, location: HttpOutputs, body: Any, key: str) -> int:
        value = body.get(key) if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise configuration_error(self.system, location.name,
                                      f"the answer has no whole {key!r} >= 0: {str(body)[:200]}")
        return value


class OutputRouter:
    """Dispatch on the location's ``kind``; more kinds are one more ``OutputStore``."""

    def __init__(self, stores: dict[str, OutputStore] | None = None) -> None:
        self.stores: dict[str, OutputStore] = stores or {"sql": SqlOutputStore(), "http": HttpOutputStore()}

    def _store(self, location: OutputLocation) -> OutputStore:
        store = self.stores.get(location.kind)
        if store is None:
            raise configuration_error("outputs", location.name, f"no output store for kind {location.kind!r}")
        return store

    async def counts(self, req: OutputsRequest) -> list[OutputCount]:
        return [OutputCount(location=loc.name, kind=loc.kind,
                            count=await self._store(loc).count(loc, req.release)) for loc in req.locations]

    async def purge(self, req: OutputsRequest, progress: PurgeProgress) -> OutputsResult:
        """Delete every location's rows of ``req.release`` in batches; ``progress`` is where a retry resumes."""
        if not progress.before:
            progress.before = {c.location: c.count for c in await self.counts(req)}
            _beat(progress)
        for loc in req.locations:
            if loc.name in progress.done:
                continue
            store = self._store(loc)
            while True:
                if progress.batches.get(loc.name, 0) >= MAX_BATCHES:
                    raise configuration_error("outputs", loc.name, "rows keep arriving; stop the writer first")
                deleted = await store.delete_batch(loc, req.release, loc.batch_size)
                if deleted == 0:
                    break
                progress.batches[loc.name] = progress.batches.get(loc.name, 0) + 1
                _beat(progress)
            progress.done.append(loc.name)
            _beat(progress)
        before = [OutputCount(location=loc.name, kind=loc.kind, count=progress.before.get(loc.name, 0))
                  for loc in req.locations]
        return OutputsResult(counts_before=before, counts_after=await self.counts(req),
                             batches=sum(progress.batches.values()))


def _beat(progress: PurgeProgress) -> None:
    if activity.in_activity():
        activity.heartbeat(progress.model_dump(mode="json"))


def resumed_progress() -> PurgeProgress:
    """The progress a previous attempt of this activity heartbeated (empty on the first attempt)."""
    if activity.in_activity():
        details = activity.info().heartbeat_details
        if details:
            first = details[0]
            return PurgeProgress.model_validate(first if isinstance(first, dict) else {})
    return PurgeProgress()
