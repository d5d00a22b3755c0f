"""A real Unleash server (the version pinned in services/unleash) on a given PostgreSQL database.

Bootstrap once per checkout: ``npm ci --prefix services/unleash``. Without it the tests FAIL with that hint.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import httpx

from tests.support.postgres import free_port

SERVICE_DIR = Path(__file__).resolve().parents[2] / "services" / "unleash"
BOOTSTRAP = "npm ci --prefix services/unleash"


class UnleashServer(NamedTuple):
    """``url, admin_token, client_token, stop = start_unleash(...)``. The client token is for ``development``."""

    url: str
    admin_token: str
    client_token: str
    stop: Callable[[], None]


def start_unleash(
    tmp_dir: Path,
    *,
    pg_host: str,
    pg_port: int,
    pg_database: str,
    pg_user: str = "postgres",
    timeout: float = 90.0,
) -> UnleashServer:
    """Run ``node services/unleash/start.mjs`` and wait until ``/health`` is GOOD; FAIL loudly otherwise."""
    if not (SERVICE_DIR / "node_modules" / "unleash-server").is_dir():
        raise RuntimeError(f"Unleash is not installed in {SERVICE_DIR}: run `{BOOTSTRAP}` first")
    port = free_port()
    admin_token = f"*:*.{secrets.token_hex(16)}"
    client_token = f"default:development.{secrets.token_hex(16)}"
    env = {
        **os.environ,
        "DATABASE_HOST": pg_host,
        "DATABASE_PORT": str(pg_port),
        "DATABASE_NAME": pg_database,
        "DATABASE_USERNAME": pg_user,
        "DATABASE_PASSWORD": "",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "INIT_ADMIN_API_TOKENS": admin_token,
        "INIT_BACKEND_API_TOKENS": client_token,
        "LOG_LEVEL": "warn",
    }
    log_path = tmp_dir / "unleash.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        ["node", str(SERVICE_DIR / "start.mjs")], cwd=SERVICE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stop()
            raise RuntimeError(f"Unleash exited with {proc.returncode}; log {log_path}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("health") == "GOOD":
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"Unleash not healthy after {timeout:.0f}s; log {log_path}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.25)
    return UnleashServer(url, admin_token, client_token, stop)
