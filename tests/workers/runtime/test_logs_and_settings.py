"""What an SRE sees of unship's own configuration and logs: one event per line with ISO 8601 UTC timestamps and
the incident/workflow/trace ids, secrets masked everywhere, settings errors that name the variable and the
expected form, ``*_FILE`` for every secret, ``--version`` and the settings in ``--help``."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from typer.testing import CliRunner

from playbooks.models import human_duration
from workers.cli import app as cli
from workers.runtime.logs import configure_logging
from workers.runtime.settings import SECRET_FIELDS, Settings

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_are_one_object_per_line_with_ids_and_no_secrets() -> None:
    stream = io.StringIO()
    configure_logging("json", ["hunter2-secret"], stream=stream)
    log = logging.getLogger("workers.test")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("alert") as span:
        log.warning("a line\nwith a break and the password hunter2-secret",
                    extra={"temporal_activity": {"workflow_id": "unship:chat:v2", "activity_type": "apply_cohort"}})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert ISO_UTC.match(first["ts"]) and first["level"] == "WARNING" and first["logger"] == "workers.test"
    assert first["incident_id"] == first["workflow_id"] == "unship:chat:v2"
    assert first["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "hunter2-secret" not in stream.getvalue() and "***" in first["message"]
    assert "RuntimeError: boom" in second["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_off_a_terminal_are_single_unwrapped_lines() -> None:
    stream = io.StringIO()
    configure_logging(None, [], stream=stream)  # not a terminal: the default is json
    logging.getLogger("workers.test").info("x")
    assert json.loads(stream.getvalue())["message"] == "x"
    stream = io.StringIO()
    configure_logging("text", [], stream=stream)
    long = "word " * 60
    logging.getLogger("workers.test").info(long, extra={"incident_id": "unship:chat:v2"})
    (line,) = stream.getvalue().splitlines()
    stamp, level, rest = line.split(" ", 2)
    assert ISO_UTC.match(stamp) and level == "INFO" and rest.endswith("incident_id=unship:chat:v2")


def test_settings_errors_name_the_variable_and_the_expected_form(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    for name, value, expected in [
        ("UNSHIP_HTTP_ADDR", "nonsense", "UNSHIP_HTTP_ADDR: expected host:port such as 127.0.0.1:8080"),
        ("UNSHIP_TEMPORAL_PORT", "x", "UNSHIP_TEMPORAL_PORT: Input should be a valid integer"),
        ("UNSHIP_LOG_FORMAT", "xml", "UNSHIP_LOG_FORMAT: Input should be 'json' or 'text'"),
        ("UNSHIP_DATABASE_URL_FILE", "/nonexistent/db-url", "UNSHIP_DATABASE_URL_FILE: cannot read /nonexistent"),
    ]:
        result = runner.invoke(cli, ["worker"], env={name: value})
        assert result.exit_code == 2, (name, result.output)
        assert expected in " ".join(result.stderr.split()), (name, result.stderr)
        assert "invalid literal" not in result.stderr


def test_every_secret_reads_from_a_file_and_never_shows_in_repr(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_FIELDS:
        secret = tmp_path / name
        value = f"postgresql://unship:pw-{name}@db/unship" if name == "database_url" else f"s3cret-{name}"
        secret.write_text(value + "\n")
        monkeypatch.setenv(f"UNSHIP_{name.upper()}_FILE", str(secret))
    settings = Settings()
    assert settings.resolved_database_url == "postgresql://unship:pw-database_url@db/unship"
    assert len(settings.secret_values()) == len(SECRET_FIELDS)
    for value in settings.secret_values():
        assert value not in repr(settings) and value not in str(settings)


def test_version_and_the_settings_each_serving_command_reads() -> None:
    runner = CliRunner()
    version = runner.invoke(cli, ["--version"])
    assert version.exit_code == 0 and re.match(r"^unship \d+\.\d+", version.stdout)
    for command, expected in [("up", ["UNSHIP_HTTP_ADDR", "UNSHIP_DATABASE_URL", "TEMPORAL_ADDRESS"]),
                              ("worker", ["UNSHIP_PROMETHEUS_URL", "UNSHIP_TEMPORAL_METRICS_ADDR"]),
                              ("gateway", ["UNSHIP_ALERT_BEARER_TOKEN", "UNSHIP_SLACK_SIGNING_SECRET"])]:
        shown = runner.invoke(cli, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0
        for variable in expected:
            assert variable in shown.stdout, (command, variable)


def test_durations_read_like_a_person_writes_them() -> None:
    assert [human_duration(s) for s in (0, 4.25, 123.30517, 3605, 90000)] == ["0s", "4.2s", "2m03s", "1h00m",
                                                                               "1d01h"]
