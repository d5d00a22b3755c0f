"""A real Prometheus (the Debian package) scraping a tiny in-process exporter, for tests.

``start_prometheus(tmp_dir, ["127.0.0.1:PORT"])`` runs the ``prometheus`` binary on a free 127.0.0.1 port,
scraping the given targets every second, and waits until it is ready. ``MetricsExporter`` serves ``/metrics``
values a test sets. ``wait_for`` polls a query until its answer is what the test needs (Prometheus shows the
first scrape only after a few seconds, so tests poll instead of sleeping).

Bootstrap once per machine: ``./dev bootstrap`` (or ``apt-get install -y prometheus``). Without the binary
``start_prometheus`` raises with that hint, and tests FAIL.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.fake_http import Answer, FakeServer, Request
from tests.support.processes import start_server, stop_server

BOOTSTRAP = "./dev bootstrap (or: DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus)"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prometheus(
    tmp_dir: Path, scrape_targets: list[str], timeout: float = 60.0, extra_config: str = ""
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start Prometheus scraping ``scrape_targets`` (``host:port``) every 1s; returns ``(url, process)``.

    Stop it with ``stop_prometheus(process)``. ``extra_config`` is appended to the YAML config (e.g. rule
    files or alerting sections).
    """
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError(f"the 'prometheus' binary is missing: run {BOOTSTRAP}")
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    targets = ", ".join(f"'{t}'" for t in scrape_targets)
    config = tmp_dir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: unship-test\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: [{targets}]\n" + extra_config
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url={url}", "--web.enable-lifecycle"]
    process = start_server("prometheus", argv, tmp_dir / "prometheus.log", f"{url}/-/ready", timeout)
    return url, process


def stop_prometheus(process: subprocess.Popen[bytes]) -> None:
    """Terminate the Prometheus started by ``start_prometheus`` (kill it if it does not stop in 10s)."""
    stop_server(process)


class MetricsExporter(FakeServer):
    """An HTTP ``/metrics`` endpoint (the test servers' ``FakeServer``), serving the values set with ``set``.

    ``exporter.set("unship_test_outputs", 120, {"release": "r1"})``; ``exporter.target`` is the ``host:port``
    to scrape. Started on construction; ``stop()`` shuts it down.
    """

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._types: dict[str, str] = {}
        self.start()

    @property
    def target(self) -> str:
        return self.address

    def handle(self, request: Request) -> Answer:
        if request.method != "GET" or request.path != "/metrics":
            return Answer(404, "404 page not found\n")
        return Answer(200, self.render(), content_type="text/plain; version=0.0.4")

    def set(self, name: str, value: float, labels: dict[str, str] | None = None, kind: str = "gauge") -> None:
        """Serve ``name{labels} value`` from now on (``kind``: gauge or counter)."""
        with self.lock:
            self._values[(name, tuple(sorted((labels or {}).items())))] = value
            self._types[name] = kind

    def remove(self, name: str) -> None:
        """Stop serving every series of ``name``."""
        with self.lock:
            self._values = {k: v for k, v in self._values.items() if k[0] != name}
            self._types.pop(name, None)

    def render(self) -> str:
        """The exposition text."""
        with self.lock:
            lines = [f"# TYPE {name} {kind}" for name, kind in sorted(self._types.items())]
            for (name, labels), value in sorted(self._values.items()):
                label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{label_text}}} {_number(value)}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def instant_query(url: str, query: str) -> dict[str, Any]:
    """The raw ``/api/v1/query`` answer (for waiting and debugging)."""
    return httpx.post(f"{url}/api/v1/query", data={"query": query}, timeout=5).json()


def wait_for(url: str, query: str, ready: Callable[[list[Any]], bool] | None = None,
             timeout: float = 60.0) -> list[Any]:
    """Poll ``query`` until its result satisfies ``ready`` (default: non-empty); returns the result."""
    check = ready or bool
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = instant_query(url, query)
        result = (last.get("data") or {}).get("result") or []
        if last.get("status") == "success" and check(result):
            return result
        time.sleep(0.2)
    raise AssertionError(f"{query!r} did not become ready within {timeout:g}s; last answer: {last}")
