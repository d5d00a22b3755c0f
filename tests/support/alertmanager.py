"""A real Prometheus Alertmanager (the Debian package ``prometheus-alertmanager``) for tests.

``start_alertmanager(tmp_dir, webhook_url, bearer_token)`` runs the binary on a free 127.0.0.1 port with one
webhook receiver pointing at ``webhook_url`` (``send_resolved: true``, ``Authorization: Bearer <token>``),
grouping by alertname and release with 1-second group wait/interval, clustering off. It waits until
Alertmanager is ready and returns ``(url, process)``; stop it with ``stop_alertmanager``.
``alerting_config(am_url, rules_file)`` is the Prometheus config fragment that sends alerts there.

Bootstrap once per machine: ``./dev bootstrap`` (or ``apt-get install -y prometheus-alertmanager``). Without the
binary ``start_alertmanager`` raises with that hint, and tests FAIL.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.processes import start_server, stop_server
from tests.support.prometheus import free_port

BOOTSTRAP = "./dev bootstrap (or: DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus-alertmanager)"


def _binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"the 'prometheus-alertmanager' binary is missing: run {BOOTSTRAP}")


def start_alertmanager(tmp_dir: Path, webhook_url: str, bearer_token: str,
                       timeout: float = 60.0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start Alertmanager posting every group to ``webhook_url``; returns ``(url, process)``."""
    binary = _binary()
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_dir / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: unship\n"
        "  group_by: [alertname, release]\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: unship\n"
        "    webhook_configs:\n"
        f"      - url: '{webhook_url}'\n"
        "        send_resolved: true\n"
        "        max_alerts: 100\n"
        "        http_config:\n"
        "          authorization:\n"
        "            type: Bearer\n"
        f"            credentials: '{bearer_token}'\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={config}", f"--storage.path={tmp_dir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", f"--web.external-url={url}",
            "--log.level=warn"]
    process = start_server("alertmanager", argv, tmp_dir / "alertmanager.log", f"{url}/-/ready", timeout)
    return url, process


def stop_alertmanager(process: subprocess.Popen[bytes]) -> None:
    """Terminate the Alertmanager started by ``start_alertmanager``."""
    stop_server(process)


def alerting_config(alertmanager_url: str, rules_file: Path) -> str:
    """The Prometheus YAML fragment: load ``rules_file`` and send alerts to the Alertmanager at that URL."""
    target = alertmanager_url.removeprefix("http://")
    return (f"rule_files: ['{rules_file}']\n"
            "alerting:\n  alertmanagers:\n    - static_configs:\n"
            f"        - targets: ['{target}']\n")
