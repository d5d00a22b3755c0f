"""The embedded Temporal dev server: starts, keeps incidents across a restart, is reused, stops, fails clearly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
from pathlib import Path

import pytest

from tests.support.stack import make_settings
from workers.runtime.client import connect
from workers.runtime.service import IncidentService
from workers.runtime.temporal_server import (
    EmbeddedTemporal,
    EmbeddedTemporalError,
    free_port,
    temporal_answers,
)


async def test_incidents_survive_a_restart_and_the_server_stops(tmp_path: Path, playbooks: dict) -> None:
    port = free_port()
    settings = make_settings(tmp_path, temporal_port=port, temporal_ui_port=0)
    state = settings.state_dir

    async with EmbeddedTemporal(state, port, ui_port=0) as server:
        assert not server.reused and server.pid is not None
        service = IncidentService(await connect(settings), settings, playbooks)
        incident = await service.trigger("chat-test", "v9", started_by="test")
    assert not await temporal_answers(server.target), "the server still answers after exit"
    assert (state / "temporal.db").is_file() and (state / "temporal.log").is_file()
    # a write-ahead log: about half the server's CPU per alert signal (BENCHMARKS.md, alert storm)
    with sqlite3.connect(state / "temporal.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "synchronous=full" in server.command(), "every commit is synced: accepted alerts survive a power cut"

    async with EmbeddedTemporal(state, port, ui_port=0):
        service = IncidentService(await connect(settings), settings, playbooks)
        listed = {i.incident_id: i for i in await service.list(100)}
        assert listed[incident].status == "running"
        assert (listed[incident].playbook, listed[incident].release) == ("chat-test", "v9")
        await service.client.get_workflow_handle(incident).terminate("test cleanup")


async def test_an_accepted_incident_survives_the_server_being_killed(tmp_path: Path, playbooks: dict) -> None:
    """The database runs in write-ahead-log mode for speed, but what Temporal accepted is on disk before it
    answers: SIGKILL right after the trigger loses nothing."""
    port = free_port()
    settings = make_settings(tmp_path, temporal_port=port, temporal_ui_port=0)
    state = settings.state_dir
    async with EmbeddedTemporal(state, port, ui_port=0) as server:
        assert server.pid is not None
        service = IncidentService(await connect(settings), settings, playbooks)
        incident = await service.trigger("chat-test", "v10", started_by="test")
        os.kill(server.pid, signal.SIGKILL)
        while await temporal_answers(server.target, timeout=0.5):
            await asyncio.sleep(0.05)
    with sqlite3.connect(state / "temporal.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async with EmbeddedTemporal(state, port, ui_port=0):
        service = IncidentService(await connect(settings), settings, playbooks)
        listed = {i.incident_id: i for i in await service.list(100)}
        assert listed[incident].status == "running"
        await service.client.get_workflow_handle(incident).terminate("test cleanup")


async def test_a_running_server_is_reused(tmp_path: Path) -> None:
    port = free_port()
    async with EmbeddedTemporal(tmp_path / "a", port, ui_port=0) as first:
        async with EmbeddedTemporal(tmp_path / "b", port, ui_port=0) as second:
            assert second.reused and second.pid is None
        assert await temporal_answers(first.target), "leaving the reusing context stopped the owner's server"


async def test_the_web_ui_url_is_reported(tmp_path: Path) -> None:
    ui_port = free_port()
    async with EmbeddedTemporal(tmp_path, free_port(), ui_port=ui_port) as server:
        assert server.ui_url == f"http://127.0.0.1:{ui_port}"
        assert "--ui-disable-news-fetch" in server.command()
        assert "--headless" not in server.command()


def squat() -> socket.socket:
    """A listener that is not Temporal."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def test_a_grpc_port_taken_by_something_else_is_refused_clearly(tmp_path: Path) -> None:
    with squat() as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(EmbeddedTemporalError, match=f"port {port} .* not a Temporal server"):
            async with EmbeddedTemporal(tmp_path, port, ui_port=0):
                pass


async def test_a_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    with squat() as squatter:  # the Web UI port is taken: the dev server exits at once
        ui_port = squatter.getsockname()[1]
        with pytest.raises(EmbeddedTemporalError) as failure:
            async with EmbeddedTemporal(tmp_path, free_port(), ui_port=ui_port):
                pass
    message = str(failure.value)
    assert "exited with code" in message and str(tmp_path / "temporal.log") in message
    assert f"can't set UI port {ui_port}" in message  # the server's own words, from the log tail
