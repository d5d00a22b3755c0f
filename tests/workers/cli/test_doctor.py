"""`unship doctor` (and the same preflight at `unship worker` / `unship up` start) catches what would otherwise
surface mid-incident, and each finding says what to set."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from tests.support.prometheus import start_prometheus, stop_prometheus
from tests.support.stack import cli_env, make_settings, temporal_target
from workers.cli import app as cli
from workers.runtime.temporal_server import free_port

LIBRARY_ENV = {"UNSHIP_CHAT_DB_URL": "sqlite:///conversations.db", "UNSHIP_FEATURESTORE_DB_URL": "sqlite:///f.db"}


def doctor(env: dict[str, str | None]) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["doctor", "--json"], env=env)
    return result.exit_code, json.loads(result.stdout)


def findings(report: dict, severity: str = "error") -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == severity]


def test_doctor_names_the_playbook_field_and_setting_for_each_gap(tmp_path: Path,
                                                                  local_env: WorkflowEnvironment) -> None:
    settings = make_settings(tmp_path, local_env)
    code, report = doctor(cli_env(settings))  # the shipped library, nothing configured
    assert code == 1 and report["ok"] is False
    errors = findings(report)
    prometheus = next(f for f in errors if f["playbook"] == "chat-assistant" and f["check"] == "signals")
    assert prometheus["field"] == "signals.0.source.type" and prometheus["setting"] == "UNSHIP_PROMETHEUS_URL"
    assert "hallucination-rate" in prometheus["message"] and "not configured" in prometheus["message"]
    assert any(f["setting"] == "UNSHIP_CHAT_DB_URL" and f["field"] == "integrity.1.dsn_env" for f in errors)
    assert any(f["playbook"] == "image-generator" and f["check"] == "providers" and "kserve" in f["message"]
               and "UNSHIP_KUBERNETES_API_URL" in f["setting"] for f in errors)
    assert any(f["check"] == "temporal" for f in findings(report, "ok"))
    assert any(f["check"] == "store" for f in findings(report, "ok"))

    text = CliRunner().invoke(cli, ["doctor"], env=cli_env(settings, COLUMNS="80"))
    line = next(ln for ln in text.stdout.splitlines() if "hallucination-rate" in ln)
    assert line.startswith("ERROR") and line.endswith("(set UNSHIP_PROMETHEUS_URL)")  # one unwrapped line


def test_doctor_checks_that_configured_systems_answer(tmp_path: Path, local_env: WorkflowEnvironment) -> None:
    settings = make_settings(tmp_path, local_env)
    dead = f"http://127.0.0.1:{free_port()}"
    code, report = doctor(cli_env(settings, UNSHIP_PROMETHEUS_URL=dead, **LIBRARY_ENV))
    assert code == 1
    (unreachable,) = [f for f in findings(report) if f["check"] == "prometheus"]
    assert dead in unreachable["message"] and unreachable["setting"] == "UNSHIP_PROMETHEUS_URL"
    assert not [f for f in findings(report) if f["check"] == "signals"]  # configured now, only unreachable

    url, process = start_prometheus(tmp_path / "prometheus", [])
    try:
        code, report = doctor(cli_env(settings, UNSHIP_PROMETHEUS_URL=url, **LIBRARY_ENV))
    finally:
        stop_prometheus(process)
    assert any(f["check"] == "prometheus" for f in findings(report, "ok"))
    assert {f["check"] for f in findings(report)} == {"providers"}  # only KServe is left: no Kubernetes here


def test_unknown_namespace_and_unreachable_temporal_are_errors(tmp_path: Path,
                                                               local_env: WorkflowEnvironment) -> None:
    settings = make_settings(tmp_path, local_env)
    code, report = doctor(cli_env(settings, UNSHIP_TEMPORAL_NAMESPACE="no-such-namespace"))
    (temporal,) = [f for f in findings(report) if f["check"] == "temporal"]
    assert "no-such-namespace" in temporal["message"] and "does not exist" in temporal["message"]
    assert temporal_target(local_env) in temporal["message"]
    code, report = doctor(cli_env(settings, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}"))
    (temporal,) = [f for f in findings(report) if f["check"] == "temporal"]
    assert code == 1 and "cannot reach Temporal" in temporal["message"] and "TEMPORAL_ADDRESS" in temporal["setting"]


def test_worker_refuses_to_start_on_preflight_errors(tmp_path: Path, local_env: WorkflowEnvironment) -> None:
    settings = make_settings(tmp_path, local_env)
    result = CliRunner().invoke(cli, ["worker"], env=cli_env(settings))
    assert result.exit_code == 1
    assert "preflight found errors" in result.stderr and "--no-preflight" in result.stderr
    assert "UNSHIP_PROMETHEUS_URL" in result.stderr
