"""A private, throw-away PostgreSQL 15 cluster for one test session (the real server from the machine image).

``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` user in a folder that user
owns; as any other user it simply runs as that user. It listens on 127.0.0.1 and a free port, with trust
authentication for user ``postgres``, and is deleted by ``stop()``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

PG_BIN = Path(os.environ.get("UNSHIP_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresCluster(NamedTuple):
    """``dsn, stop = start_postgres(tmp)``; ``host``/``port``/``database``/``user`` parse the DSN."""

    dsn: str
    stop: Callable[[], None]

    @property
    def host(self) -> str:
        return urlsplit(self.dsn).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.dsn).port or 5432

    @property
    def database(self) -> str:
        return urlsplit(self.dsn).path.lstrip("/")

    @property
    def user(self) -> str:
        return urlsplit(self.dsn).username or "postgres"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_owner(args: list[str], as_postgres: bool) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if as_postgres else args


def _run(args: list[str], as_postgres: bool, what: str) -> None:
    done = subprocess.run(_as_owner(args, as_postgres), capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"PostgreSQL {what} failed ({' '.join(args)}): {done.stdout}{done.stderr}")


def start_postgres(tmp_dir: Path, database: str = "unleash") -> PostgresCluster:
    """Create and start a private cluster with an empty ``database``; FAIL loudly if it cannot start."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL binaries not found in {PG_BIN} (set UNSHIP_PG_BIN to the bin folder)")
    as_postgres = os.geteuid() == 0
    # The postgres user must be able to reach its folders; pytest's tmp dirs are private to root.
    base = Path(tempfile.mkdtemp(prefix="unship-pg-", dir=None if as_postgres else tmp_dir))
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    if as_postgres:
        for path in (base, data, sock):
            shutil.chown(path, "postgres", "postgres")
    port = free_port()
    pg_ctl = str(PG_BIN / "pg_ctl")
    _run(
        [str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres", "-E", "UTF8",
         "--locale=C.UTF-8"],
        as_postgres,
        "initdb",
    )
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run([pg_ctl, "-D", str(data), "-l", str(base / "postgres.log"), "-o", options, "-w", "start"], as_postgres,
         "start")
    _run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database], as_postgres,
         "createdb")

    def stop() -> None:
        subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], as_postgres),
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)

    return PostgresCluster(f"postgresql://postgres@127.0.0.1:{port}/{database}", stop)
