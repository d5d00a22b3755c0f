"""Metrics and traces of the unship processes themselves.

``serve_metrics`` puts unship's ``/metrics`` on ``UNSHIP_METRICS_ADDR`` for processes without the HTTP app
(``unship worker``, ``unship demo``); ``unship up`` and ``unship gateway`` serve it on the HTTP app as well.
The Temporal SDK's own metrics are configured with the client (``workers.runtime.client.temporal_runtime``).
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from activities import metrics
from workers.runtime.settings import Settings, split_host_port


def serve_metrics(settings: Settings) -> WSGIServer | None:
    """Serve unship's metrics on ``UNSHIP_METRICS_ADDR`` in a background thread (None when unset)."""
    if not settings.metrics_addr:
        return None
    host, port = split_host_port(settings.metrics_addr)
    try:
        server, _ = start_http_server(port, addr=host, registry=metrics.REGISTRY)
    except OSError as exc:
        raise ValueError(f"UNSHIP_METRICS_ADDR={settings.metrics_addr}: cannot listen there: {exc.strerror}") from exc
    return server


def stop_metrics(server: WSGIServer | None) -> None:
    if server is not None:
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.server_close()
