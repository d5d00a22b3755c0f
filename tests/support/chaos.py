"""Fault injection around the real processes, for tests/chaos/ and bench/chaos.py.

``ChaosStack`` runs the embedded Temporal dev server (``temporal server start-dev`` on a SQLite file) and
``unship worker`` as a separate process, both killable with SIGKILL and restartable on the same state; incidents
are opened through ``IncidentService`` (the gateway's path). ``FlagWatcher`` watches the flagd flag file the
worker writes and keeps, per flag, every distinct share it served: the flag's history as users saw it.
``check_incident`` holds one finished incident against that history, the incident store and its review: right
outcome, flag history exactly as intended, no lost, duplicated or false audit event, review intact.

Randomness comes from one seeded ``random.Random``; the seed is printed when a chaos test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.flagd import FlagdFileProvider, previous_share
from activities.store import SqliteIncidentStore
from playbooks.models import PlaybookSnapshot, Target
from tests.support.playbooks import snapshot
from tests.support.processes import binary
from tests.support.stack import cli_env
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workflows.messages import IncidentStatus, Outcome
from workflows.review import REVIEW_SEQ_BASE
from workflows.rollback import RollbackWorkflow

ROOT = Path(__file__).resolve().parents[2]
INTENDED = [0.0, 10.0, 50.0, 100.0]


def seed_from_env() -> int:
    """``UNSHIP_CHAOS_SEED`` when set (to replay a failure), else a fresh one."""
    value = os.environ.get("UNSHIP_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1, 2**31)


def chaos_playbook(name: str, flag: str, bakes: tuple[float, float, float] = (1, 1, 1),
                   **overrides: Any) -> PlaybookSnapshot:
    """An automatic playbook (no confirmation window, no approval) that reverts ``flag`` 10 -> 50 -> 100%."""
    stages = [{"percent": p, "bake": f"{b:g}s"} for p, b in zip((10, 50, 100), bakes, strict=True)]
    base: dict[str, Any] = {
        "name": name, "confirmation": {"window": "0s"}, "decision": {"mode": "automatic"},
        "rollback": {"targets": [{"kind": "flag", "provider": "flagd", "key": flag}], "stages": stages},
        "review": {"regulatory_report_due": None, "purge_outputs_after": None},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return snapshot(**base)


class FlagWatcher:
    """Watches the flag file (atomically replaced on every write) and records each flag's distinct shares.

    A thread polls the file's identity every 2 ms and parses it when it changed; with stages baking a second
    or more, no served state is missed. ``history[key]`` starts with the share seen first.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: dict[str, list[float | None]] = {}
        self.seen_at: dict[str, list[datetime]] = {}
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="flag-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last: tuple[int, int, int] | None = None
        while not self._stop.is_set():
            try:
                st = self.path.stat()
                ident = (st.st_ino, st.st_mtime_ns, st.st_size)
                if ident != last:
                    doc = json.loads(self.path.read_text())
                    last = ident
                    self._record(doc)
            except (OSError, ValueError):
                pass
            time.sleep(0.002)

    def _record(self, doc: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        with self._changed:
            for key, flag in doc.get("flags", {}).items():
                share = previous_share(flag, "previous")
                shares = self.history.setdefault(key, [])
                if not shares or shares[-1] != share:
                    shares.append(share)
                    self.seen_at.setdefault(key, []).append(now)
            self._changed.notify_all()

    async def until(self, key: str, share: float, timeout: float = 60) -> None:
        """Wait (without blocking the loop) until ``key`` has served ``share``."""
        deadline = time.monotonic() + timeout
        while share not in self.history.get(key, []):
            if time.monotonic() > deadline:
                raise AssertionError(f"{key} never served {share:g}% (history {self.history.get(key)})")
            await asyncio.sleep(0.005)


@dataclass
class ChaosStack:
    """The dev server, ``unship worker`` as its own process, the flag file and the incident store, in ``state``."""

    state: Path
    rng: random.Random
    seed: int
    server: EmbeddedTemporal = field(init=False)
    settings: Settings = field(init=False)
    client: Client = field(init=False)
    service: IncidentService = field(init=False)
    store: SqliteIncidentStore = field(init=False)
    watcher: FlagWatcher = field(init=False)
    flags: FlagdFileProvider = field(init=False)
    worker: subprocess.Popen[bytes] | None = None
    worker_starts: int = 0
    playbooks: dict[str, PlaybookSnapshot] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def flag_path(self) -> Path:
        return self.state / "flags.json"

    async def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.server = EmbeddedTemporal(self.state, port=free_port(), ui_port=0, binary=Path(binary("temporal")))
        await self.server.start()
        self.settings = Settings(state_dir=self.state, task_queue=f"chaos-{uuid.uuid4().hex[:8]}",
                                 temporal_address=self.server.target)
        self.client = await Client.connect(self.server.target, data_converter=pydantic_data_converter)
        self.store = SqliteIncidentStore(self.state / "unship.db")
        self.service = IncidentService(self.client, self.settings, self.playbooks, store=self.store)
        self.flags = FlagdFileProvider(self.flag_path)
        self.watcher = FlagWatcher(self.flag_path)
        self.watcher.start()
        self.start_worker()

    async def stop(self) -> None:
        self.kill_worker()
        self.watcher.stop()
        await self.server.stop()

    # --- playbooks and incidents ------------------------------------------------------------------------

    async def add(self, playbook: PlaybookSnapshot) -> None:
        """Load ``playbook`` and create its flag (everyone on the candidate) in the flag file."""
        self.playbooks[playbook.playbook.name] = playbook
        for target in playbook.playbook.rollback.targets:
            if target.provider == "flagd":
                await self.flags.ensure_flag(target)
                await self.watcher.until(target.key, 0.0)

    async def trigger(self, playbook: str, release: str = "r1") -> str:
        return await self.service.trigger(playbook, release, started_by="chaos")

    def handle(self, incident: str) -> WorkflowHandle[Any, IncidentStatus]:
        return self.client.get_workflow_handle_for(RollbackWorkflow.run, incident)

    async def result(self, incident: str, timeout: float = 120) -> IncidentStatus:
        """The incident's final status; fails at once (with the worker's log) if the worker process exited."""
        task = asyncio.ensure_future(self.handle(incident).result())
        end = time.monotonic() + timeout
        while not task.done():
            self.check_worker(task)
            if time.monotonic() > end:
                task.cancel()
                raise TimeoutError(f"{incident} not closed within {timeout:g} s")
            await asyncio.wait({task}, timeout=0.5)
        return task.result()

    def check_worker(self, pending: asyncio.Future[Any] | None = None) -> None:
        """Fail loudly when the worker process exited by itself (a start-up refusal, a crash)."""
        if self.worker is not None and self.worker.poll() is not None:
            if pending is not None:
                pending.cancel()
            log = (self.state / f"worker-{self.worker_starts - 1}.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"unship worker exited with {self.worker.returncode}: {log}")

    async def until_gate(self, incident: str, timeout: float = 60) -> IncidentStatus:
        """The incident's status once a decision gate is open."""
        end = time.monotonic() + timeout
        while (status := await self.service.get(incident)).gate is None:
            self.check_worker()
            if time.monotonic() > end:
                raise AssertionError(f"{incident}: no gate within {timeout:g} s: "
                                     + "; ".join(e.message for e in status.audit[-3:]))
            await asyncio.sleep(0.05)
        return status

    async def set_by_hand(self, key: str, percent: float) -> None:
        """Someone edits the flag behind unship's back (an atomic write, as any flagd tool does)."""
        await self.flags.set_previous_percent(Target(key=key), percent, f"by-hand-{uuid.uuid4().hex[:6]}")

    # --- faults -------------------------------------------------------------------------------------------

    def start_worker(self) -> None:
        # The chaos playbooks travel in the incidents' inputs; the worker loads no library (an empty folder), so
        # its preflight checks only what it is given.
        empty = self.state / "no-playbooks"
        empty.mkdir(exist_ok=True)
        env = {k: v for k, v in cli_env(self.settings, UNSHIP_PLAYBOOKS_DIR=str(empty)).items() if v is not None}
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNSHIP_")}, **env, **self.worker_env}
        log = open(self.state / f"worker-{self.worker_starts}.log", "wb")  # noqa: SIM115 - the worker's log
        self.worker = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.worker_starts += 1

    def kill_worker(self) -> None:
        """SIGKILL the worker process this stack started (no shutdown, tasks in flight are abandoned)."""
        if self.worker is not None and self.worker.poll() is None:
            os.kill(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
        self.worker = None

    async def kill_server(self) -> None:
        """SIGKILL the Temporal dev server (its SQLite file keeps every workflow)."""
        pid = self.server.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        await self.server.stop()

    async def restart_server(self) -> None:
        await self.server.start()

    @contextlib.asynccontextmanager
    async def store_unavailable(self) -> AsyncIterator[None]:
        """The incident store's file is gone and cannot be created (a directory stands in its place)."""
        db = self.state / "unship.db"
        aside = self.state / "aside"
        aside.mkdir(exist_ok=True)
        moved = []
        for suffix in ("", "-wal", "-shm"):
            path = db.with_name(db.name + suffix)
            if path.exists():
                path.rename(aside / path.name)
                moved.append(path)
        db.mkdir()
        try:
            yield
        finally:
            db.rmdir()
            for path in moved:
                (aside / path.name).rename(path)


class FlagHistory(Protocol):
    """Where a check reads what users were served: ``history[key]`` shares in order, ``seen_at[key]`` when."""

    history: dict[str, list[float | None]]
    seen_at: dict[str, list[datetime]]


def check_incident(stack: ChaosStack, status: IncidentStatus, key: str, *,
                   outcome: Outcome = Outcome.REVERTED, history: list[float] | None = None,
                   flags: FlagHistory | None = None) -> None:
    """Synchronous part of the checks: outcome and the flag's history as the watcher saw it."""
    assert status.outcome is outcome, (f"{status.incident_id}: {status.outcome} != {outcome}: "
                                       + "; ".join(e.message for e in status.audit[-4:]))
    want = INTENDED if history is None else history
    seen = (flags or stack.watcher).history.get(key)
    assert seen == want, f"{key}: users were moved {seen}, intended {want}"


async def check_record(stack: ChaosStack, status: IncidentStatus, key: str, timeout: float = 180,
                       flags: FlagHistory | None = None) -> None:
    """The store holds exactly the incident's audit trail (none lost, duplicated or altered), every claim
    about a write matches the flag file, and the review is stored and on disk.

    The review may land minutes after the run closed: a worker killed while one of the review's activities runs
    (provenance, learning, tasks, the document) is only noticed at that activity's start-to-close timeout (1-2
    min), so ``timeout`` covers the longest of them and a retry."""
    deadline = time.monotonic() + timeout
    stored: list[Any] = []
    review = None
    while True:  # the review child and the last audit batch may land after the run returned
        try:
            stored = await stack.store.events(status.incident_id)
            review = await stack.store.review(status.incident_id)
        except sqlite3.OperationalError:  # a fault is making the store unavailable right now
            pass
        else:
            if review is not None and any(e.kind == "review_written" for e in stored):
                break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    run = [(e.seq, e.kind, e.message, e.at) for e in stored if e.seq < REVIEW_SEQ_BASE]
    want = [(e.seq, e.kind, e.message, e.at) for e in status.audit]
    lost = [w for w in want if w not in run]
    extra = [r for r in run if r not in want]
    assert not lost and not extra, f"{status.incident_id}: lost {lost[:3]}, not in the trail {extra[:3]}"
    review_events = [(e.seq - REVIEW_SEQ_BASE, e.kind) for e in stored if e.seq >= REVIEW_SEQ_BASE]
    assert [kind for _, kind in review_events].count("review_written") == 1, \
        f"{status.incident_id}: not one review_written event: {review_events} (review stored: {review is not None})"
    assert review is not None and review.markdown, f"{status.incident_id}: no review stored"
    path = stack.state / "reviews" / f"{status.incident_id.replace(':', '_')}.md"
    assert path.read_text() == review.markdown, f"{status.incident_id}: the review file differs from the store"
    source = flags or stack.watcher
    seen: dict[float, list[datetime]] = {}  # a share can be served more than once (a drift re-applied)
    for value, when in zip(source.history.get(key, []), source.seen_at.get(key, []), strict=False):
        seen.setdefault(value, []).append(when)
    for event in status.audit:
        if event.kind != "stage_applied":
            continue
        assert "nothing written" not in event.message, f"false audit: {event.message}"
        percent = float(event.data["percent"])
        assert percent in seen, f"audit says {percent:g}% was applied; the flag never served it"
        # stamped when the write happened (the activity reports it), not when the workflow heard of it
        assert any(abs(event.at - when) < timedelta(seconds=2) for when in seen[percent]), (
            f"{event.message}: stamped {event.at}, the flag changed to it at {seen[percent]}")
