"""The ``unship`` CLI: exit codes and one-line errors, with and without a Temporal server."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from activities.contracts import TargetState
from playbooks.loader import library_folder, load_library
from tests.support.stack import cli_env, make_settings, person, serve
from workers.cli import app
from workers.cli.incidents import _users_on_previous
from workers.runtime.client import connect
from workers.runtime.service import IncidentService
from workers.runtime.temporal_server import free_port
from workers.web.app import create_app
from workflows.messages import IncidentStatus, Phase

COMMANDS = ["up", "worker", "validate", "trigger", "release", "status", "approve", "reject", "revert-now",
            "abort", "pause", "resume", "demo", "whoami", "login", "users", "users add", "audit", "audit verify",
            "audit export", "playbooks reload", "review", "hold", "hold release", "purge approve", "report submit",
            "report show", "incidents search"]


def nothing_running(tmp_path: Path) -> dict[str, str]:
    return cli_env(make_settings(tmp_path, temporal_port=free_port()))


@pytest.mark.parametrize("command", [[]] + [c.split() for c in COMMANDS])
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("args", [["status"], ["status", "unship:x:y"], ["abort", "unship:x:y"],
                                  ["approve", "unship:x:y", "--reason", "bad"], ["whoami"]])
def test_nothing_running_is_exit_3_with_a_hint(runner: CliRunner, tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, args, env=nothing_running(tmp_path))
    assert result.exit_code == 3, result.output
    assert "cannot reach the unship API" in result.stderr and "is `unship up` running?" in result.stderr
    assert "Traceback" not in result.output


def test_validate_the_shipped_library(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(library_folder())], env=nothing_running(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("OK ") == len(list(library_folder().glob("*.yaml")))


def test_validate_reports_a_broken_playbook(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: Not A Slug\nscenario: conversational-agent\n")
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 1
    assert "broken.yaml" in result.stderr


def test_validate_without_playbooks_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path)])  # a folder with no *.yaml in it
    assert result.exit_code == 2
    assert "no playbook files" in result.stderr


def test_bad_arguments_are_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    env = nothing_running(tmp_path)
    assert runner.invoke(app, ["approve", "unship:x:y"], env=env).exit_code == 2  # no --reason
    # there is no --as: who you are comes from your token
    assert runner.invoke(app, ["approve", "unship:x:y", "--as", "U1", "--reason", "r"], env=env).exit_code == 2
    assert runner.invoke(app, ["trigger", "chat-assistant"], env=env).exit_code == 2  # no --release
    bad_stages = runner.invoke(app, ["release", "chat-assistant", "--release", "v3", "--stages", "10,x"], env=env)
    assert bad_stages.exit_code == 2 and "--stages" in bad_stages.stderr
    bad_setting = runner.invoke(app, ["status"], env={**env, "UNSHIP_TEMPORAL_PORT": "not-a-port"})
    assert bad_setting.exit_code == 2 and "UNSHIP_TEMPORAL_PORT" in bad_setting.stderr


async def test_against_a_running_server(
    runner: CliRunner, tmp_path: Path, local_env: WorkflowEnvironment
) -> None:
    settings = make_settings(tmp_path, local_env)
    token = person(settings, "U04SAFETY01", groups=("ml-oncall",))
    service = IncidentService(await connect(settings), settings, load_library(library_folder()))

    def invoke(*args: str, environment: dict | None = None):  # in a thread: the CLI runs its own event loop
        return asyncio.to_thread(runner.invoke, app, list(args), env=environment or env)

    async with serve(create_app(service, settings)) as url:
        env = cli_env(settings, token, UNSHIP_API_URL=url)
        me = await invoke("whoami")
        assert me.exit_code == 0 and "U04SAFETY01" in me.stdout and "decide" in me.stdout
        unknown = await invoke("status", "unship:chat-assistant:never")
        assert unknown.exit_code == 4 and "no incident 'unship:chat-assistant:never'" in unknown.stderr
        refused = await invoke("approve", "unship:chat-assistant:never", "--reason", "r")
        assert refused.exit_code == 4
        no_playbook = await invoke("trigger", "no-such-playbook", "--release", "v1")
        assert no_playbook.exit_code == 2 and "known playbooks: chat-assistant" in no_playbook.stderr
        bad_release = await invoke("trigger", "chat-assistant", "--release", "two words")
        assert bad_release.exit_code == 2 and "release:" in bad_release.stderr
        listing = await invoke("status")
        assert listing.exit_code == 0, listing.output
        # without a token the server does not know you (a users file exists, so anonymous callers get 401)
        anonymous = await invoke("status", environment=cli_env(settings, UNSHIP_API_URL=url))
        assert anonymous.exit_code == 1 and "no credentials" in anonymous.stderr
        # login checks the token with the server and stores it 0600
        login_env = cli_env(settings, UNSHIP_API_URL=url)
        logged = await invoke("login", "--token", token, environment=login_env)
        assert logged.exit_code == 0 and "logged in as U04SAFETY01" in logged.stdout
        assert stored_privately(Path(login_env["UNSHIP_TOKEN_FILE"])) == token
        assert (await invoke("whoami", environment=login_env)).exit_code == 0


def stored_privately(path: Path) -> str:
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


def test_up_refuses_an_unauthenticated_public_bind(runner: CliRunner, tmp_path: Path) -> None:
    env = {**nothing_running(tmp_path), "UNSHIP_HTTP_ADDR": "0.0.0.0:8080"}
    result = runner.invoke(app, ["up"], env=env)
    assert result.exit_code == 2
    assert "UNSHIP_API_TOKEN" in result.stderr and "loopback" in result.stderr


def test_status_shows_the_flag_as_read_not_as_intended() -> None:
    """Issue 13, defect 4: after a hand edit to 0% the status used to say "Users on previous 100%"."""
    at = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    status = IncidentStatus(incident_id="unship:chat:r1", playbook="chat", playbook_version="abc", scenario="x",
                            release="r1", phase=Phase.CLOSED, started_at=at, previous_percent=100,
                            flag_read=[TargetState(target="flag:flagd:chat-model", previous_percent=0)],
                            flag_read_at=at)
    assert _users_on_previous(status) == "0% as read at 2026-11-29 12:00:05 [bold red](intended 100%)[/]"
    status.flag_read[0].previous_percent = 100
    assert _users_on_previous(status) == "100% as read at 2026-11-29 12:00:05"


def test_validate_json_for_scripts(runner: CliRunner, tmp_path: Path) -> None:
    good = runner.invoke(app, ["validate", str(library_folder()), "--json"], env=nothing_running(tmp_path))
    assert good.exit_code == 0, good.output
    report = json.loads(good.stdout)
    assert report["ok"] and report["problems"] == []
    assert {p["name"] for p in report["playbooks"]} >= {"chat-assistant"}
    assert all(p["file"] and p["version"] and p["content_hash"] for p in report["playbooks"])

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: Not A Slug\nscenario: conversational-agent\n")
    bad = runner.invoke(app, ["validate", str(broken), "--json"])
    assert bad.exit_code == 1  # the exit code a script checks stays the same
    found = json.loads(bad.stdout)
    assert not found["ok"] and found["playbooks"] == []
    assert all(p["file"].endswith("broken.yaml") and p["line"] >= 1 and p["field"] and p["message"]
               for p in found["problems"])
    assert any(p["field"] == "name" for p in found["problems"])


def test_users_json_for_scripts(runner: CliRunner, tmp_path: Path) -> None:
    env = nothing_running(tmp_path)
    added = runner.invoke(app, ["users", "add", "U0JSON1", "--scope", "read", "--group", "ml-oncall", "--json"],
                          env=env)
    assert added.exit_code == 0, added.output
    user = json.loads(added.stdout)
    assert user["user"] == "U0JSON1" and user["scopes"] == ["read"] and len(user["token"]) > 20
    listed = json.loads(runner.invoke(app, ["users", "list", "--json"], env=env).stdout)
    assert listed == {"users": [{"user": "U0JSON1", "scopes": ["read"], "groups": ["ml-oncall"], "name": ""}]}
    assert user["token"] not in json.dumps(listed)  # only its hash is kept, and never printed again
    removed = runner.invoke(app, ["users", "remove", "U0JSON1", "--json"], env=env)
    assert removed.exit_code == 0 and json.loads(removed.stdout) == {"removed": "U0JSON1"}
    again = runner.invoke(app, ["users", "remove", "U0JSON1", "--json"], env=env)
    assert again.exit_code == 4 and again.stdout == ""


def test_every_data_command_offers_json(runner: CliRunner) -> None:
    """Every command that prints data takes --json (the long-running ones, `audit export` (already JSON lines)
    and `report show` (prints a Markdown/HTML document) excepted)."""
    long_running = {"up", "worker", "gateway", "demo"}
    missing = []
    for name, command in _commands(typer.main.get_command(app)):
        if name in long_running or name in ("audit export", "report show"):
            continue
        if not any("--json" in getattr(p, "opts", []) for p in getattr(command, "params", [])):
            missing.append(name)
    assert missing == []


def _commands(command: object, prefix: str = "") -> list[tuple[str, object]]:
    """Every leaf command under Typer's root group, by its full name (``audit verify``)."""
    subcommands: dict[str, object] | None = getattr(command, "commands", None)
    if subcommands is None:
        return [(prefix, command)]
    return [leaf for name, sub in subcommands.items() for leaf in _commands(sub, f"{prefix} {name}".strip())]


@pytest.mark.parametrize("setting", ["UNSHIP_WORKFLOW_CACHE", "UNSHIP_DATABASE_CONNECTIONS"])
def test_the_worker_sizing_settings_are_listed_and_checked(runner: CliRunner, tmp_path: Path, setting: str) -> None:
    assert setting in runner.invoke(app, ["worker", "--help"]).output
    bad = runner.invoke(app, ["worker"], env={**nothing_running(tmp_path), setting: "0"})
    assert bad.exit_code == 2 and setting in bad.stderr, bad.output
