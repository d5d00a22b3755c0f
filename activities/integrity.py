"""Post-rollback verification: is the world in the state the rollback intended?

Each check yields a ``CheckResult`` with evidence, pass or fail. A check that cannot run (a timeout, a missing
environment variable, a database that is not configured) is a failed result that says why, never an exception
that would hide the other checks' evidence.

SQL checks run one statement, read-only, whatever it says: SQLite databases are opened with ``mode=ro``;
PostgreSQL queries run in a ``READ ONLY`` transaction that is rolled back, with a statement timeout, through
the extended query protocol (one statement, so ``SELECT 1; DELETE ...`` is refused). ``$release`` inside a
single-quoted SQL string (``WHERE model_version = '$release'``) is replaced by the incident's release, quoted;
anywhere else it is refused.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from temporalio.exceptions import ApplicationError

from activities.contracts import (
    CheckResult,
    FlagProvider,
    IntegrityRequest,
    IntegrityResult,
    Measurement,
    PollRequest,
    SignalSource,
)
from playbooks.models import (
    HttpCheck,
    IntegrityCheck,
    PromqlCheck,
    ReadbackCheck,
    Signal,
    SignalCategory,
    SqlCheck,
    Target,
)
from playbooks.models import SignalSource as SourceSpec

READBACK_TOLERANCE = 0.01
READ_RETRY_DELAYS = (0.5, 1.0, 2.0)
"""Seconds between the read-back check's retries of a retryable read failure (then the failure is evidence)."""


class IntegrityChecker:
    """Runs a playbook's integrity checks against the flag provider, HTTP endpoints, Prometheus and databases."""

    def __init__(self, flags: FlagProvider, signals: SignalSource | None = None, http_timeout: float = 10.0,
                 environ: dict[str, str] | None = None, sql_timeout: float = 10.0) -> None:
        self.flags = flags
        self.signals = signals
        self.http_timeout = http_timeout
        self.sql_timeout = sql_timeout
        self._environ = environ

    async def run(self, request: IntegrityRequest) -> IntegrityResult:
        """Run every check (concurrently) and return all results in the playbook's order."""
        results = await asyncio.gather(*(self._guarded(check, request) for check in request.checks))
        return IntegrityResult(results=list(results))

    async def _guarded(self, check: IntegrityCheck, request: IntegrityRequest) -> CheckResult:
        try:
            if isinstance(check, ReadbackCheck):
                return await self.readback(check, request)
            if isinstance(check, HttpCheck):
                return await self.http(check)
            if isinstance(check, PromqlCheck):
                return await self.promql(check, request)
            if isinstance(check, SqlCheck):
                return await self.sql(check, request.release)
            return CheckResult(name=check.name, kind=check.kind, passed=False, evidence="unknown check kind")
        except Exception as exc:  # noqa: BLE001 - every failure becomes evidence on the result
            return CheckResult(name=check.name, kind=check.kind, passed=False,
                               evidence=f"check could not run: {_describe(exc)}")

    async def readback(self, check: ReadbackCheck, request: IntegrityRequest) -> CheckResult:
        """Each target's split, read back, equals the intended share on the previous model."""
        expected = request.expected_previous_percent
        lines = []
        passed = True
        for target in request.targets:
            try:
                actual = await self._read(target)
            except Exception as exc:  # noqa: BLE001
                passed = False
                lines.append(f"{target.ref}: read failed: {_describe(exc)}")
                continue
            ok = actual is not None and abs(actual - expected) <= READBACK_TOLERANCE
            passed = passed and ok
            shown = "unknown" if actual is None else f"{actual:g}%"
            lines.append(f"{target.ref}: {shown} on previous, expected {expected:g}% ({'ok' if ok else 'MISMATCH'})")
        if not request.targets:
            passed = False
            lines.append("no targets to read back")
        return CheckResult(name=check.name, kind=check.kind, passed=passed, evidence="; ".join(lines))

    async def _read(self, target: Target) -> float | None:
        """Read a target's split, retrying what may heal (a 503, a timeout) a few times within the check: a
        passing blip must not turn a completed revert into ``reverted_unverified``."""
        for delay in READ_RETRY_DELAYS:
            try:
                return await self.flags.get_previous_percent(target)
            except ApplicationError as exc:
                if exc.non_retryable:
                    raise
            await asyncio.sleep(delay)
        return await self.flags.get_previous_percent(target)

    async def http(self, check: HttpCheck) -> CheckResult:
        """GET the URL: the status must match, and the JSON answer must contain ``expect_json``."""
        async with httpx.AsyncClient(timeout=self.http_timeout) as client:
            try:
                response = await client.get(check.url)
            except httpx.HTTPError as exc:
                return _fail(check, f"GET {check.url}: {type(exc).__name__}: {exc or 'no answer'}")
        evidence = f"GET {check.url}: HTTP {response.status_code}"
        if response.status_code != check.expect_status:
            return _fail(check, f"{evidence}, expected {check.expect_status}; answer: {response.text[:200]!r}")
        if check.expect_json is not None:
            try:
                body = response.json()
            except ValueError:
                return _fail(check, f"{evidence}, answer is not JSON: {response.text[:200]!r}")
            differences = _json_differences(check.expect_json, body, "")
            if differences:
                return _fail(check, f"{evidence}; JSON differs: {'; '.join(differences[:5])}")
            evidence += "; JSON matches"
        return CheckResult(name=check.name, kind=check.kind, passed=True, evidence=evidence)

    async def promql(self, check: PromqlCheck, request: IntegrityRequest) -> CheckResult:
        """The query's value must not breach the threshold (no data fails: nothing was verified)."""
        if self.signals is None:
            return _fail(check, "no Prometheus is configured; set UNSHIP_PROMETHEUS_URL")
        signal = Signal(
            name=check.name,
            category=SignalCategory.OPERATIONAL_HEALTH,
            source=SourceSpec(type="prometheus", query=check.query),
            threshold=check.threshold,
        )
        poll = PollRequest(incident_id=request.incident_id, release=request.release, signals=[signal], poll=0,
                           phase="verify")
        observation = await self.signals.observe(signal, poll)
        evidence = f"{check.query} = {observation.value!s} (must not be {check.threshold})"
        if observation.detail:
            evidence += f"; {observation.detail}"
        return CheckResult(name=check.name, kind=check.kind,
                           passed=observation.measurement is Measurement.HEALTHY, evidence=evidence)

    async def sql(self, check: SqlCheck, release: str = "") -> CheckResult:
        """A read-only query whose first column of the first row must equal ``expect``."""
        environ = self._environ if self._environ is not None else os.environ
        dsn = environ.get(check.dsn_env)
        if not dsn:
            return _fail(check, f"environment variable {check.dsn_env} is not set; set it to the database URL")
        try:
            query = sql_with_release(check.query, release)
        except ValueError as exc:
            return _fail(check, f"{exc}; fix the query in the playbook")
        if dsn.startswith("sqlite:///"):
            path = Path(dsn[len("sqlite:///"):])
            try:
                value, found = await asyncio.to_thread(_sqlite_first_value, path, query)
            except sqlite3.Error as exc:
                return _fail(check, f"sqlite {path}: {type(exc).__name__}: {exc}")
        elif dsn.startswith(("postgres://", "postgresql://")):
            try:
                value, found = await _postgres_first_value(dsn, query, self.sql_timeout)
            except ImportError:
                return _fail(check, "PostgreSQL checks need psycopg: pip install 'psycopg[binary]'")
            except Exception as exc:  # noqa: BLE001 - psycopg.Error and OSError alike become evidence
                return _fail(check, f"postgresql ({check.dsn_env}): {type(exc).__name__}: {_first_line(exc)}")
        else:
            scheme = dsn.split(":", 1)[0]
            return _fail(check, f"{check.dsn_env} has unsupported scheme {scheme!r}; use sqlite:///path or "
                                "postgresql://user@host/database")
        shown = repr(value) if found else "no rows"
        passed = _equal(value, check.expect)
        return CheckResult(name=check.name, kind=check.kind, passed=passed,
                           evidence=f"{query.strip()} -> {shown}, expected {check.expect!r}")


RELEASE = "$release"
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_]")


def sql_with_release(query: str, release: str) -> str:
    """``query`` with ``$release`` inside single-quoted strings replaced by ``release`` (quotes doubled).

    Raises ``ValueError`` for ``$release`` outside a single-quoted string (in an identifier, a comment or bare
    SQL) and for a release with a backslash or control character (unsafe in ``E'...'`` strings).
    """
    if RELEASE not in query:
        return query
    if any(c == "\\" or ord(c) < 32 for c in release):
        raise ValueError(f"release {release!r} has a backslash or control character; it cannot be put in SQL")
    out: list[str] = []
    i, inside = 0, False
    while i < len(query):
        at_token = query.startswith(RELEASE, i) and not _IDENT_CHAR.match(query, i + len(RELEASE))
        if inside:
            if at_token:
                out.append(release.replace("'", "''"))
                i += len(RELEASE)
                continue
            if query.startswith("''", i):
                out.append("''")
                i += 2
                continue
            inside = query[i] != "'"
        elif at_token:
            raise ValueError(f"{RELEASE} must stand inside a single-quoted string, e.g. model_version = "
                             f"'{RELEASE}'")
        else:
            skip = _sql_skip(query, i)
            if skip > i:
                if RELEASE in query[i:skip] and query[i] == '"':
                    raise ValueError(f"{RELEASE} cannot be part of a quoted identifier")
                out.append(query[i:skip])
                i = skip
                continue
            inside = query[i] == "'"
        out.append(query[i])
        i += 1
    return "".join(out)


def _sql_skip(query: str, i: int) -> int:
    """The end of the comment or quoted identifier starting at ``i`` (``i`` when there is none)."""
    for start, end in (("--", "\n"), ("/*", "*/"), ('"', '"')):
        if query.startswith(start, i):
            stop = query.find(end, i + len(start))
            return len(query) if stop < 0 else stop + len(end)
    return i


async def _postgres_first_value(dsn: str, query: str, timeout: float) -> tuple[Any, bool]:
    import psycopg

    timeout_ms = max(1, int(timeout * 1000))
    conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=max(1, math.ceil(timeout)))
    async with conn:
        # binary=True forces the extended protocol: exactly one statement, never "SELECT 1; DELETE ...".
        async with conn.cursor(binary=True) as cursor:
            await cursor.execute("SET TRANSACTION READ ONLY")
            await cursor.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
            await cursor.execute(f"SET LOCAL lock_timeout = {timeout_ms}")
            await cursor.execute(query)
            row = await cursor.fetchone() if cursor.description else None
        await conn.rollback()
    return (row[0], True) if row else (None, False)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _sqlite_first_value(path: Path, query: str) -> tuple[Any, bool]:
    # mode=ro: the database is opened read-only by SQLite itself, whatever the query says.
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(query).fetchone()
    finally:
        conn.close()
    return (row[0], True) if row else (None, False)


def _equal(actual: Any, expected: Any) -> bool:
    if expected is None or actual is None:
        return actual is expected
    if isinstance(expected, bool):
        if isinstance(actual, str):
            return actual.strip().lower() in (("true", "t", "1") if expected else ("false", "f", "0"))
        return bool(actual) is expected and actual in (0, 1)
    if isinstance(expected, (int, float)):
        if isinstance(actual, str):
            try:
                actual = float(actual)
            except ValueError:
                return False
        if isinstance(actual, (int, float, Decimal)):
            return math.isclose(float(actual), float(expected), rel_tol=1e-9, abs_tol=1e-9)
        return False
    return str(actual) == str(expected)


def _json_differences(expected: Any, actual: Any, path: str) -> list[str]:
    """Where ``actual`` fails to contain ``expected`` (dicts by subset, everything else by equality)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '$'}: expected an object, got {actual!r}"]
        out: list[str] = []
        for key, value in expected.items():
            where = f"{path}.{key}" if path else key
            if key not in actual:
                out.append(f"{where}: missing")
            else:
                out.extend(_json_differences(value, actual[key], where))
        return out
    if expected != actual:
        return [f"{path or '$'}: expected {expected!r}, got {actual!r}"]
    return []


def _fail(check: IntegrityCheck, evidence: str) -> CheckResult:
    return CheckResult(name=check.name, kind=check.kind, passed=False, evidence=evidence)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApplicationError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
