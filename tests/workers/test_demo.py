"""`unship demo` end to end on the real embedded Temporal dev server: the README's first command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from tests.support.processes import ctrl_c
from workers.demo import run_demo
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e  # the demo runs twice on a real dev server: the end-to-end time limit


def run(state: Path) -> tuple[int, str]:
    console = Console(record=True, width=200, soft_wrap=True)
    code = run_demo(Settings(state_dir=state), speedup=240, console=console)
    return code, console.export_text()


def test_demo_dismisses_the_blip_reverts_the_breach_and_can_run_again(tmp_path: Path) -> None:
    code, out = run(tmp_path)
    assert code == 0, out
    assert "outcome: dismissed" in out and "outcome: reverted" in out
    assert "refused U09INTERN1: U09INTERN1 holds none of the roles" in out
    for stage in ("stage 1 (10%)", "stage 2 (50%)", "stage 3 (100%)"):
        assert f"{stage}: {stage.split('(')[1].rstrip(')')} of users on the previous model" in out
    assert "conversations-not-lost (sql): passed" in out
    review = tmp_path / "demo" / "reviews" / "unship_chat-assistant_chat-v2.4.0~2.md"
    assert review.exists() and "chat-v2.4.0" in review.read_text()
    assert '"unship_previous_percent": 100' in (tmp_path / "demo" / "flags.json").read_text()

    again, out = run(tmp_path)
    assert again == 0, out
    assert "outcome: reverted" in out


def test_demo_with_the_console_prints_its_url_serves_the_incident_and_stays_up_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSHIP_") and k != "TEMPORAL_ADDRESS"}
    env.update({"UNSHIP_STATE_DIR": str(tmp_path / "state"), "UNSHIP_HTTP_ADDR": f"127.0.0.1:{port}",
                "COLUMNS": "200"})
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", "--console", "--speedup", "240"],
                               cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ends when the process exits: a hang is caught by the test timeout
            lines.append(line)
            if "Watch it in the console" in line:
                assert url in line
                assert httpx.get(url, timeout=10).status_code == 200  # up before the first alert
            if "Ctrl-C to stop" in line:
                break
        listing = httpx.get(url, timeout=10)
        assert listing.status_code == 200 and "chat-v2.4.0" in listing.text and "reverted" in listing.text
        page = httpx.get(f"{url}incidents/unship:chat-assistant:chat-v2.4.0~2", timeout=30)
        assert page.status_code == 200 and 'data-kind="stage_applied"' in page.text, page.text[-2000:]
        with httpx.stream("GET", f"{url}stream", timeout=30) as live:  # an open page must not hold up Ctrl-C
            assert next(live.iter_lines()) == "retry: 2000"
            rest = ctrl_c(process, "unship demo --console (with a live stream open)")
    finally:
        if process.poll() is None:
            rest = ctrl_c(process, "unship demo --console")
    out = "".join(lines) + rest
    assert process.returncode == 0, out
    assert "demo finished" in out and "Traceback" not in out
