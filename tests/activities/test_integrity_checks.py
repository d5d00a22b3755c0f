"""Integrity checks after a rollback: each one passes or fails with evidence, none hides another."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from activities.contracts import IntegrityRequest
from activities.flagd import FlagdFileProvider
from activities.integrity import IntegrityChecker
from activities.prometheus import PrometheusSignalSource
from activities.scripted import ScriptedFlagProvider
from playbooks.models import IntegrityCheck, Target
from tests.support.prometheus import free_port

CHECK = TypeAdapter(IntegrityCheck)
TARGETS = [Target(key="chat-model"), Target(key="chat-router")]


def request(*checks: dict[str, Any], expected: float = 100) -> IntegrityRequest:
    return IntegrityRequest(incident_id="unship:chat:r1", release="r1",
                            checks=[CHECK.validate_python(c) for c in checks], targets=TARGETS,
                            expected_previous_percent=expected)


@pytest.fixture
async def flags(tmp_path: Path) -> FlagdFileProvider:
    provider = FlagdFileProvider(tmp_path / "flags.json")
    for target in TARGETS:
        await provider.ensure_flag(target)
        await provider.set_previous_percent(target, 100, "wf:stage:2")
    return provider


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """A local HTTP service reporting which model it serves."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = {
                "/health": (200, {"model": "gpt-a-2024", "status": {"ready": True, "replicas": 3}}),
                "/broken": (500, {"error": "boom"}),
                "/text": (200, "plain text"),
            }.get(self.path, (404, {"error": "not found"}))
            data = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_readback_passes_when_every_target_is_back(flags: FlagdFileProvider) -> None:
    result = await IntegrityChecker(flags).run(request({"kind": "readback", "name": "readback"}))
    [check] = result.results
    assert check.passed and result.passed
    assert "flag:flagd:chat-model: 100% on previous, expected 100% (ok)" in check.evidence


async def test_readback_fails_on_a_target_left_behind(flags: FlagdFileProvider) -> None:
    await flags.set_previous_percent(TARGETS[1], 50, "someone-else")
    [check] = (await IntegrityChecker(flags).run(request({"kind": "readback", "name": "readback"}))).results
    assert not check.passed
    assert "flag:flagd:chat-router: 50% on previous, expected 100% (MISMATCH)" in check.evidence

    missing = IntegrityRequest(incident_id="i", release="r", checks=[CHECK.validate_python(
        {"kind": "readback", "name": "readback"})], targets=[Target(key="gone")], expected_previous_percent=100)
    [check] = (await IntegrityChecker(flags).run(missing)).results
    assert not check.passed and "read failed" in check.evidence and "gone" in check.evidence


async def test_readback_retries_a_passing_outage_and_reports_a_lasting_one() -> None:
    """A 503 during the read-back used to close a completed revert as reverted_unverified (soak benchmark)."""
    flags = ScriptedFlagProvider(state={t.ref: 100 for t in TARGETS})
    flags.fail_next_reads(2)
    [check] = (await IntegrityChecker(flags).run(request({"kind": "readback", "name": "readback"}))).results
    assert check.passed, check.evidence
    flags.fail_next_reads(1, retryable=False)
    [check] = (await IntegrityChecker(flags).run(request({"kind": "readback", "name": "readback"}))).results
    assert not check.passed and "HTTP 403" in check.evidence


async def test_sql_check_against_sqlite(tmp_path: Path, flags: FlagdFileProvider,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "outputs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE outputs (release TEXT, quarantined INTEGER)")
        conn.executemany("INSERT INTO outputs VALUES (?, ?)", [("r1", 1), ("r1", 1), ("r0", 0)])
    monkeypatch.setenv("UNSHIP_TEST_OUTPUTS_DSN", f"sqlite:///{db}")
    checker = IntegrityChecker(flags)
    result = await checker.run(request(
        {"kind": "sql", "name": "all-quarantined", "dsn_env": "UNSHIP_TEST_OUTPUTS_DSN",
         "query": "SELECT count(*) FROM outputs WHERE release = 'r1' AND quarantined = 0", "expect": 0},
        {"kind": "sql", "name": "count-wrong", "dsn_env": "UNSHIP_TEST_OUTPUTS_DSN",
         "query": "SELECT count(*) FROM outputs", "expect": 2},
        {"kind": "sql", "name": "no-env", "dsn_env": "UNSHIP_TEST_UNSET_DSN", "query": "SELECT 1", "expect": 1},
        {"kind": "sql", "name": "bad-table", "dsn_env": "UNSHIP_TEST_OUTPUTS_DSN",
         "query": "SELECT count(*) FROM nope", "expect": 0},
    ))
    ok, wrong, no_env, bad = result.results
    assert ok.passed and "-> 0, expected 0" in ok.evidence
    assert not wrong.passed and "-> 3, expected 2" in wrong.evidence
    assert not no_env.passed and "UNSHIP_TEST_UNSET_DSN is not set" in no_env.evidence
    assert not bad.passed and "no such table" in bad.evidence
    assert not result.passed


async def test_sql_check_opens_the_database_read_only(tmp_path: Path, flags: FlagdFileProvider,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path / "absent.db"
    monkeypatch.setenv("UNSHIP_TEST_DSN", f"sqlite:///{absent}")
    [check] = (await IntegrityChecker(flags).run(request(
        {"kind": "sql", "name": "x", "dsn_env": "UNSHIP_TEST_DSN", "query": "SELECT 1", "expect": 1}))).results
    assert not check.passed and "unable to open" in check.evidence
    assert not absent.exists()

    monkeypatch.setenv("UNSHIP_TEST_DSN", f"postgresql://unship:pw@127.0.0.1:{free_port()}/outputs")
    [check] = (await IntegrityChecker(flags).run(request(
        {"kind": "sql", "name": "x", "dsn_env": "UNSHIP_TEST_DSN", "query": "SELECT 1", "expect": 1}))).results
    assert not check.passed and "UNSHIP_TEST_DSN" in check.evidence
    assert "unship@" not in check.evidence  # the DSN may carry credentials: never echoed


async def test_http_check(service: str, flags: FlagdFileProvider) -> None:
    result = await IntegrityChecker(flags).run(request(
        {"kind": "http", "name": "serving-previous", "url": f"{service}/health",
         "expect_json": {"model": "gpt-a-2024", "status": {"ready": True}}},
        {"kind": "http", "name": "wrong-model", "url": f"{service}/health", "expect_json": {"model": "gpt-b"}},
        {"kind": "http", "name": "error", "url": f"{service}/broken"},
        {"kind": "http", "name": "not-json", "url": f"{service}/text", "expect_json": {"a": 1}},
        {"kind": "http", "name": "down", "url": f"http://127.0.0.1:{free_port()}/health"},
    ))
    ok, wrong, error, not_json, down = result.results
    assert ok.passed and "JSON matches" in ok.evidence
    assert not wrong.passed and "model: expected 'gpt-b', got 'gpt-a-2024'" in wrong.evidence
    assert not error.passed and "HTTP 500, expected 200" in error.evidence
    assert not not_json.passed and "not JSON" in not_json.evidence
    assert not down.passed and "ConnectError" in down.evidence


async def test_promql_check_through_real_prometheus(prometheus_url: str, flags: FlagdFileProvider) -> None:
    source = PrometheusSignalSource(prometheus_url)
    result = await IntegrityChecker(flags, source).run(request(
        {"kind": "promql", "name": "error-rate-low", "query": "vector(0.5)", "threshold": {"value": 1}},
        {"kind": "promql", "name": "error-rate-high", "query": "vector(2)", "threshold": {"value": 1}},
        {"kind": "promql", "name": "absent", "query": "unship_t_no_such_series", "threshold": {"value": 1}},
        {"kind": "promql", "name": "bad", "query": "rate(", "threshold": {"value": 1}},
    ))
    low, high, absent, bad = result.results
    assert low.passed and "= 0.5" in low.evidence
    assert not high.passed and "= 2.0" in high.evidence
    assert not absent.passed and "no series" in absent.evidence
    assert not bad.passed and "invalid" in bad.evidence
    await source.aclose()

    [check] = (await IntegrityChecker(flags).run(request(
        {"kind": "promql", "name": "x", "query": "vector(1)", "threshold": {"value": 1}}))).results
    assert not check.passed and "UNSHIP_PROMETHEUS_URL" in check.evidence


async def test_one_failing_check_does_not_hide_the_others(flags: FlagdFileProvider, service: str) -> None:
    result = await IntegrityChecker(flags).run(request(
        {"kind": "readback", "name": "readback"},
        {"kind": "http", "name": "down", "url": f"http://127.0.0.1:{free_port()}/"},
        {"kind": "http", "name": "health", "url": f"{service}/health"},
    ))
    assert [(r.name, r.passed) for r in result.results] == [("readback", True), ("down", False), ("health", True)]
