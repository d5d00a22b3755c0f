"""Fixtures for the processes: settings in a tmp folder, the service over the real dev server (``local_env``
from tests/conftest.py), the HTTP API served by uvicorn on a free port, and a CLI runner."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from tests.support.playbooks import snapshot
from tests.support.stack import make_settings
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings


@pytest.fixture
def playbooks() -> dict:
    snap = snapshot()
    return {snap.playbook.name: snap}


@pytest.fixture
def settings(tmp_path: Path, local_env: WorkflowEnvironment) -> Settings:
    return make_settings(tmp_path, local_env)


@pytest.fixture
def service(local_env: WorkflowEnvironment, settings: Settings, playbooks: dict) -> IncidentService:
    return IncidentService(local_env.client, settings, playbooks)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was (tests that call configure_logging change it process-wide)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved
