"""`unship gateway` as a separate process: alerts in over HTTP, incidents out in Temporal, Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.support import alert_payloads as p
from tests.support.processes import ctrl_c
from tests.support.stack import temporal_target
from workers.runtime.temporal_server import free_port

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "gateway-alert-token-42"


async def test_gateway_process_accepts_alerts_into_temporal(local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    port = free_port()
    queue = f"tq-gw-{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSHIP_") and k != "TEMPORAL_ADDRESS"}
    env.update({"TEMPORAL_ADDRESS": temporal_target(local_env), "UNSHIP_HTTP_ADDR": f"127.0.0.1:{port}",
                "UNSHIP_TASK_QUEUE": queue, "UNSHIP_ALERT_BEARER_TOKEN": TOKEN,
                "UNSHIP_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"})
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "gateway"], cwd=ROOT, env=env, text=True,  # noqa: ASYNC220
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 60  # guards against a hang only
            while True:
                assert process.poll() is None, process.communicate()[0]
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "unship gateway never became ready"
                await asyncio.sleep(0.2)
            labels = {"alertname": "GenAIQualityDegraded", "service": "chat-assistant", "release": "v9.1"}
            body = p.raw(p.alertmanager([p.am_alert(labels, "0123456789abcdef")]))
            assert (await http.post("/v1/alerts/alertmanager", content=body)).status_code == 401
            response = await http.post("/v1/alerts/alertmanager", content=body, headers=p.bearer(TOKEN))
            assert response.status_code == 202, response.text
            assert response.json()["incidents"] == ["unship:chat-assistant:v9.1"]
            assert "/v1/alerts/grafana" in (await http.get("/openapi.json")).json()["paths"]
        handle = local_env.client.get_workflow_handle("unship:chat-assistant:v9.1")
        described = await handle.describe()
        assert described.task_queue == queue
        await handle.terminate("test cleanup")
    finally:
        output = ctrl_c(process, "unship gateway", timeout=30)
    assert process.returncode == 0, output
    assert "gateway listening" in output and "Traceback" not in output and TOKEN not in output
