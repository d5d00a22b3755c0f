"""Several `unship worker` processes share one Temporal cluster and task queue: three workers run six incidents,
one is killed (SIGKILL) mid-rollback, and the other two finish every incident with each stage applied once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.flagd import FlagdFileProvider
from activities.store import open_store
from playbooks.loader import load_library
from tests.support.playbooks import snapshot
from tests.support.stack import cli_env, make_settings
from workers.runtime.service import IncidentService, TemporalUnavailable
from workers.runtime.worker import ensure_flagd_flags

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = [f"scale-{c}" for c in "abcdef"]


@pytest.fixture
def signals_server() -> Iterator[str]:
    """An HTTP JSON endpoint every worker polls: the bad release breaches, latency stays fine."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            value = 80.0 if "hallucinations" in self.path else 0.01 if "fairness" in self.path else 1.0
            body = json.dumps({"value": value}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _playbook(name: str, signals_url: str) -> dict[str, Any]:
    http = {"type": "http", "json_path": "value"}
    return snapshot(
        name=name,
        signals=[{"name": "hallucinations", "category": "model_quality", "threshold": {"value": 30},
                  "source": {**http, "url": f"{signals_url}/hallucinations"}},
                 {"name": "latency_p95", "category": "operational_health", "threshold": {"value": 2.5},
                  "source": {**http, "url": f"{signals_url}/latency"}},
                 {"name": "fairness_gap", "category": "fairness", "threshold": {"value": 0.1},
                  "source": {**http, "url": f"{signals_url}/fairness"}}],
        confirmation={"window": "4s", "interval": "1s", "breaches": 2, "out_of": 3,
                      "rule": {"any_of": ["hallucinations"]}},
        decision={"mode": "automatic"},
        rollback={"targets": [{"kind": "flag", "provider": "flagd", "key": f"{name}-model"}],
                  "stages": [{"percent": 10, "bake": "2s", "verify": ["latency_p95"]},
                             {"percent": 50, "bake": "2s", "verify": ["latency_p95"]},
                             {"percent": 100, "bake": "1s"}]},
    ).playbook.model_dump(mode="json")


async def test_three_workers_one_killed_mid_rollback_the_others_finish_each_stage_once(
        local_env: WorkflowEnvironment, tmp_path: Path, signals_server: str) -> None:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    for name in PLAYBOOKS:
        (folder / f"{name}.yaml").write_text(json.dumps(_playbook(name, signals_server)))
    playbooks = load_library(folder)
    settings = make_settings(tmp_path, local_env, playbooks_dir=folder)
    settings.state_dir.mkdir(parents=True)
    await ensure_flagd_flags(settings, playbooks)
    store = open_store(settings.resolved_database_url)
    service = IncidentService(local_env.client, settings, playbooks, store=store)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNSHIP_", "TEMPORAL_"))}
    env.update({k: v for k, v in cli_env(settings, UNSHIP_PLAYBOOKS_DIR=str(folder),
                                         UNSHIP_LOG_FORMAT="json").items() if v is not None})
    logs = [(tmp_path / f"worker-{i}.log").open("w") for i in range(3)]
    workers = [subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], cwd=ROOT, env=env,  # noqa: ASYNC220
                                stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        incidents = [await service.trigger(name, "v2-bad", started_by="scale-test") for name in PLAYBOOKS]

        known: dict[str, Any] = {}

        async def phases() -> dict[str, Any]:
            for i in incidents:
                try:
                    known[i] = await service.get(i)
                except TemporalUnavailable:  # its sticky worker was killed: the query waits for a new one
                    pass
            return dict(known)

        deadline = time.monotonic() + 120
        while not all(s.first_revert_at for s in (await phases()).values()) or len(known) < len(incidents):
            assert time.monotonic() < deadline, {i: s.phase for i, s in (await phases()).items()}
            assert all(w.poll() is None for w in workers), "a worker exited"
            await asyncio.sleep(0.2)
        workers[0].send_signal(signal.SIGKILL)  # mid-rollback: every incident is between its stages
        workers[0].wait(timeout=10)

        deadline = time.monotonic() + 180
        statuses = await phases()
        while not all(s.outcome for s in statuses.values()) or len(statuses) < len(incidents):
            assert time.monotonic() < deadline, {i: (s.phase, s.outcome) for i, s in statuses.items()}
            await asyncio.sleep(0.5)
            statuses = await phases()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        for log in logs:
            log.close()
        async for execution in local_env.client.list_workflows(f'TaskQueue="{settings.task_queue}"'):
            if execution.close_time is None:
                await local_env.client.get_workflow_handle(execution.id).terminate("test cleanup")

    flags = FlagdFileProvider(settings.resolved_flagd_path)
    for incident, status in statuses.items():
        assert status.outcome.value == "reverted", (incident, status.audit[-3:])
        applied = [e.data["step"] for e in status.audit if e.kind == "stage_applied"]
        assert sorted(applied) == sorted(set(applied)) and len(applied) == 3, (incident, applied)
        target = playbooks[incident.split(":")[1]].playbook.rollback.targets[0]
        assert await flags.get_previous_percent(target) == 100
    assert workers[1].returncode == workers[2].returncode == 0  # the survivors stopped cleanly on SIGTERM
