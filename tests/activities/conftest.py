"""Fixtures for the activity tests: a real Prometheus scraping an in-process exporter (one per session)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.prometheus import (
    BOOTSTRAP,
    MetricsExporter,
    start_prometheus,
    stop_prometheus,
)


@pytest.fixture(scope="session")
def exporter() -> Iterator[MetricsExporter]:
    """The ``/metrics`` endpoint the session's Prometheus scrapes every second."""
    server = MetricsExporter()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory, exporter: MetricsExporter) -> Iterator[str]:
    """Base URL of a real Prometheus on a free 127.0.0.1 port, scraping ``exporter``."""
    if shutil.which("prometheus") is None:
        pytest.fail(f"the 'prometheus' binary is missing: run {BOOTSTRAP}", pytrace=False)
    url, process = start_prometheus(tmp_path_factory.mktemp("prometheus"), [exporter.target])
    yield url
    stop_prometheus(process)
