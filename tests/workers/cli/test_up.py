"""`unship up` as a person runs it: one process with embedded Temporal, worker and API; Ctrl-C stops it all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.processes import ctrl_c
from tests.support.stack import TOKEN
from workers.runtime.temporal_server import free_port

ROOT = Path(__file__).resolve().parents[3]


def wait_ready(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60  # guards against a hang only
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"unship up exited with {process.returncode}: {process.communicate()[0]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"unship up never became ready: {process.communicate()[0]}")


def test_up_serves_the_api_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    http_port, temporal_port, ui_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSHIP_") and k != "TEMPORAL_ADDRESS"}
    env.update({
        "UNSHIP_STATE_DIR": str(tmp_path / "state"),
        "UNSHIP_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "UNSHIP_TEMPORAL_PORT": str(temporal_port),
        "UNSHIP_TEMPORAL_UI_PORT": str(ui_port),
        "UNSHIP_API_TOKEN": TOKEN,
        "COLUMNS": "200",
    })
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "up", "--no-preflight"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, process)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        opened = httpx.post(f"{url}/v1/incidents", json={"playbook": "chat-assistant", "release": "v2.3"},
                            headers=auth, timeout=30)
        assert opened.status_code == 202, opened.text
        status = httpx.get(f"{url}/v1/incidents/{opened.json()['incident_id']}", headers=auth, timeout=30)
        assert status.status_code == 200 and status.json()["playbook"] == "chat-assistant"
        assert httpx.get(f"http://127.0.0.1:{ui_port}/", timeout=10).status_code == 200  # the Web UI
        console = httpx.get(f"{url}/", timeout=10)  # the console: reading needs sign-in, as the API needs a token
        assert console.status_code == 303 and console.headers["location"] == "/signin?next=%2F"
        assert httpx.get(f"{url}/signin", timeout=10).status_code == 200
    finally:
        output = ctrl_c(process, "unship up", timeout=60)
    assert process.returncode == 0, output
    assert "unship is up" in output and f"http://127.0.0.1:{ui_port}" in output and f"{url}/v1/incidents" in output
    assert f"Console     {url}/" in output
    assert "unship stopped" in output and "Traceback" not in output
    assert TOKEN not in output
    assert (tmp_path / "state" / "temporal.db").is_file()
    assert (tmp_path / "state" / "flags.json").is_file()  # flagd flags of the library, created on first start
    try:
        httpx.get(f"{url}/healthz", timeout=2)
        raise AssertionError("the API still answers after Ctrl-C")
    except httpx.TransportError:
        pass
