"""unship can be watched: a real Prometheus scrapes its metrics (and the Temporal SDK's) during a demo run, every
query of the shipped Grafana dashboard returns data, the shipped alerting rules pass promtool and load, and the
logs of the whole run (JSON, one event per line) never contain a configured secret."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from tests.support.prometheus import instant_query, start_prometheus, stop_prometheus
from workers.demo import run_demo
from workers.runtime.logs import configure_logging
from workers.runtime.settings import SECRET_FIELDS, Settings
from workers.runtime.telemetry import serve_metrics, stop_metrics
from workers.runtime.temporal_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "unship-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "unship-rules.yaml"


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def test_alerting_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: ./dev bootstrap (Debian package prometheus)"
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@pytest.mark.usefixtures("restore_logging")
def test_prometheus_scrapes_a_demo_run_and_every_dashboard_query_returns_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {name: f"secret-{name}-{i:04d}-Zq" for i, name in enumerate(SECRET_FIELDS) if name != "database_url"}
    for name, value in secrets.items():
        monkeypatch.setenv(f"UNSHIP_{name.upper()}", value)
    metrics_addr, sdk_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    settings = Settings(state_dir=tmp_path / "state", temporal_metrics_addr=sdk_addr, log_format="json")
    logs = io.StringIO()
    configure_logging(settings.log_format, settings.secret_values(), stream=logs)
    console = Console(record=True, width=200, soft_wrap=True, file=io.StringIO())
    # unship's /metrics as `unship worker` serves it, kept up after the demo so Prometheus keeps its series fresh
    server = serve_metrics(settings.model_copy(update={"metrics_addr": metrics_addr}))
    url, prometheus = start_prometheus(tmp_path / "prometheus", [metrics_addr, sdk_addr],
                                       extra_config=f"rule_files: ['{RULES}']\n")
    try:
        assert run_demo(settings, speedup=240, console=console) == 0, console.export_text()
        unanswered = dict(dashboard_queries())
        deadline = time.monotonic() + 90
        while unanswered and time.monotonic() < deadline:
            for title, expr in list(unanswered.items()):
                query = expr.replace("$__rate_interval", "1m").replace("$__range", "10m")
                if instant_query(url, query)["data"]["result"]:
                    del unanswered[title]
            time.sleep(1)
        assert not unanswered, f"dashboard queries without data: {unanswered}"
        reverted = instant_query(url, 'unship_incident_outcomes_total{outcome="reverted"}')["data"]["result"]
        assert reverted and reverted[0]["metric"]["playbook"] == "chat-assistant"
        rules = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert [g["name"] for g in rules] == ["unship"] and all(r["health"] != "err" for r in rules[0]["rules"])
    finally:
        stop_prometheus(prometheus)
        stop_metrics(server)
    written = logs.getvalue() + console.export_text()
    assert logs.getvalue(), "the demo run logged nothing"
    for line in logs.getvalue().splitlines():
        event = json.loads(line)  # one JSON object per line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", event["ts"])
    leaked = [name for name, value in secrets.items() if value in written]
    assert not leaked, f"secrets in the logs: {leaked}"
