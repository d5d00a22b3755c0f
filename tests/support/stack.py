"""The service stack in tests: settings on a temporary state folder, the HTTP app served by uvicorn on a free
port, an API client, and the environment a CLI run needs."""


from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from workers.runtime.settings import Settings
from workers.runtime.temporal_server import free_port
from workers.web.auth import add_user

TOKEN = "test-token-0123456789"

def temporal_target(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host

def make_settings(tmp_path: Path, env: WorkflowEnvironment | None = None, **fields: object) -> Settings:
    """Settings that ignore the developer's environment: everything in ``tmp_path``, a fresh task queue."""
    base: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "task_queue": f"tq-{uuid.uuid4().hex[:8]}",
        "temporal_address": temporal_target(env) if env else None,
        "http_addr": f"127.0.0.1:{free_port()}",
    }
    base.update(fields)
    return Settings.model_validate(base)

def api_client(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30)

def person(settings: Settings, user: str, *scopes: str, groups: tuple[str, ...] = ()) -> str:
    """A personal API token for ``user`` in ``settings``' users file (default scopes: read, trigger, decide,
    operate)."""
    return add_user(settings.resolved_users_file, user, scopes or ("read", "trigger", "decide", "operate"),
                    groups, replace=True)


def cli_env(settings: Settings, token: str | None = None, **extra: str) -> dict[str, str]:
    """The environment that points the CLI at ``settings``' API with ``token`` (nothing from the developer's
    shell: the token file is the test's own)."""
    env = {key: None for key in os.environ if key.startswith("UNSHIP_") or key == "TEMPORAL_ADDRESS"}
    env.update({
        "UNSHIP_STATE_DIR": str(settings.state_dir),
        "UNSHIP_TASK_QUEUE": settings.task_queue,
        "UNSHIP_TEMPORAL_PORT": str(settings.temporal_port),
        "UNSHIP_HTTP_ADDR": settings.http_addr,
        "UNSHIP_TOKEN_FILE": str(settings.state_dir.parent / f"cli-token-{uuid.uuid4().hex[:6]}"),
        "COLUMNS": "200",
    })
    if token:
        env["UNSHIP_TOKEN"] = token
    if settings.temporal_address:
        env["TEMPORAL_ADDRESS"] = settings.temporal_address
    env.update(extra)
    return env  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def serve(app: FastAPI, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port in this event loop; yields the base URL."""
    port = free_port(host)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
