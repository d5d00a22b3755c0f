"""Soak: N automatic rollbacks under random faults, counting what a user or an auditor would notice.

The real processes, as in tests/chaos: the embedded Temporal dev server and ``unship worker`` as its own
process. Every incident reverts its own flag 10 -> 50 -> 100% (1 s bakes) through the generic HTTP flag
contract, served here by a flag service that answers 503, drops the connection (before or after applying a
write) or hangs past the client's timeout at random. Meanwhile, at random intervals, one of: the worker is
``kill -9``ed (restarted 0-1 s later), the Temporal server is ``kill -9``ed (restarted 1-3 s later), the
incident store is unavailable for 1-4 s.

Reported: completed (reverted, flag history exactly 0 -> 10 -> 50 -> 100, audit in the store equal to the
workflow's, review stored), stuck (not closed by the deadline), wrong-flag (any other flag history), lost-audit
(an event of the workflow's trail missing from the store, or one in the store that is not in it), audit-time
skew (a stage stamped more than 2 s away from the flag change), and recovery times: per fault, from the fault's
end to the next flag change of an incident that was in flight; per incident, time beyond the fault-free median.

    ./dev bench chaos [--incidents 200] [--in-flight 20] [--seed N] [--flag-fault-rate 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import header, percentile
from tests.support.chaos import ChaosStack, chaos_playbook, check_incident, check_record, seed_from_env
from workers.runtime.temporal_server import free_port
from workflows.messages import IncidentStatus


@dataclass
class FlagService:
    """The generic HTTP flag contract (activities/http_providers.py) with injected faults; it keeps every
    distinct share each target served (``history``/``seen_at``, as ``FlagWatcher`` does for the flag file)."""

    rng: random.Random
    fault_rate: float
    state: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float | None]] = field(default_factory=dict)
    seen_at: dict[str, list[datetime]] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=lambda: {"503": 0, "dropped": 0, "dropped_after_write": 0,
                                                            "hang": 0})
    requests: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/targets/{key}", self.get)
        app.router.add_put("/targets/{key}", self.put)
        return app

    def _set(self, key: str, percent: float) -> None:
        self.state[key] = percent
        shares = self.history.setdefault(key, [0.0])
        self.seen_at.setdefault(key, [datetime.now(UTC)])
        if shares[-1] != percent:
            shares.append(percent)
            self.seen_at[key].append(datetime.now(UTC))

    async def _fault(self, request: web.Request) -> web.Response | None:
        self.requests += 1
        roll = self.rng.random()
        if roll < self.fault_rate * 0.6:
            self.faults["503"] += 1
            return web.json_response({"error": "injected outage"}, status=503)
        if roll < self.fault_rate * 0.9:
            self.faults["dropped"] += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if roll < self.fault_rate:
            self.faults["hang"] += 1
            await asyncio.sleep(12)  # past the HTTP provider's 10 s timeout
        return None

    async def get(self, request: web.Request) -> web.Response:
        fault = await self._fault(request)
        if fault is not None:
            return fault
        key = request.match_info["key"]
        self.history.setdefault(key, [0.0])
        self.seen_at.setdefault(key, [datetime.now(UTC)])
        return web.json_response({"previous_percent": self.state.get(key, 0.0)})

    async def put(self, request: web.Request) -> web.Response:
        fault = await self._fault(request)
        if fault is not None:
            return fault
        body = await request.json()
        self._set(request.match_info["key"], float(body["previous_percent"]))
        if self.rng.random() < self.fault_rate * 0.3:  # applied, but the answer never arrives
            self.faults["dropped_after_write"] += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return web.json_response({"previous_percent": self.state[request.match_info["key"]]})


@dataclass
class Tally:
    completed: int = 0
    stuck: list[str] = field(default_factory=list)
    wrong_flag: list[str] = field(default_factory=list)
    lost_audit: list[str] = field(default_factory=list)
    time_skew: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    fault_log: list[str] = field(default_factory=list)


async def soak(incidents: int, in_flight: int, seed: int, fault_rate: float) -> tuple[Tally, FlagService]:
    rng = random.Random(seed)
    flags = FlagService(random.Random(seed + 1), fault_rate)
    runner = web.AppRunner(flags.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        stack = ChaosStack(Path(tmp) / "state", rng, seed,
                           worker_env={"UNSHIP_HTTP_PROVIDER_URL": f"http://127.0.0.1:{port}"})
        await stack.start()
        try:
            await _run(stack, flags, tally, incidents, in_flight, rng)
        finally:
            await stack.stop()
            await runner.cleanup()
    return tally, flags


async def _run(stack: ChaosStack, flags: FlagService, tally: Tally, incidents: int, in_flight: int,
               rng: random.Random) -> None:
    started: dict[str, tuple[str, float]] = {}  # incident -> (flag key, monotonic start)
    open_now: set[str] = set()
    slots = asyncio.Semaphore(in_flight)
    done = asyncio.Event()

    async def one(n: int) -> None:
        key = f"soak-flag-{n}"
        await stack.add(chaos_playbook(f"soak-{n}", key, rollback={
            "targets": [{"kind": "flag", "provider": "http", "key": key}]}))
        async with slots:
            t0 = time.monotonic()
            incident = await _retrying(lambda: stack.trigger(f"soak-{n}"))
            started[incident] = (key, t0)
            open_now.add(incident)
            try:
                status = await _closed(stack, incident, deadline=STUCK_AFTER)
            except TimeoutError:
                tally.stuck.append(f"{incident}: not closed {STUCK_AFTER:g} s after it opened: "
                                   + "; ".join(e.message for e in (await _last_status(stack, incident))[-3:]))
                return
            finally:
                open_now.discard(incident)
            tally.durations.append(time.monotonic() - t0)
        await _judge(stack, flags, tally, status, key)
        print(f"{len(tally.durations)}/{incidents} closed ({time.monotonic() - t0:.1f} s)", file=sys.stderr)

    async def faults() -> None:
        await asyncio.sleep(5)  # a fault-free start: the baseline duration
        while not done.is_set():
            await asyncio.sleep(rng.uniform(2, 6))
            if done.is_set():
                return
            kind = rng.choice(["worker", "server", "store"])
            victims = set(open_now)
            if kind == "worker":
                stack.kill_worker()
                await asyncio.sleep(rng.uniform(0, 1))
                stack.start_worker()
            elif kind == "server":
                await stack.kill_server()
                await asyncio.sleep(rng.uniform(1, 3))
                await stack.restart_server()
            else:
                async with stack.store_unavailable():
                    await asyncio.sleep(rng.uniform(1, 4))
            tally.fault_log.append(kind)
            watching.append(asyncio.create_task(_recovery(flags, tally, victims, started, time.monotonic())))

    watching: list[asyncio.Task[None]] = []
    fault_task = asyncio.create_task(faults())
    await asyncio.gather(*(one(n) for n in range(incidents)))
    done.set()
    await fault_task
    await asyncio.gather(*watching)


async def _recovery(flags: FlagService, tally: Tally, victims: set[str], started: dict[str, tuple[str, float]],
                    ended: float) -> None:
    """Seconds from the fault's end until an incident that was in flight moves its flag again."""
    keys = {started[v][0] for v in victims if v in started}
    keys = {k for k in keys if flags.history.get(k, [])[-1:] != [100.0]}
    if not keys:
        return
    before = {k: len(flags.history.get(k, [])) for k in keys}
    while time.monotonic() - ended < 120:
        if any(len(flags.history.get(k, [])) > before[k] for k in keys):
            tally.recoveries.append(time.monotonic() - ended)
            return
        await asyncio.sleep(0.01)


async def _judge(stack: ChaosStack, flags: FlagService, tally: Tally, status: IncidentStatus, key: str) -> None:
    try:
        check_incident(stack, status, key, flags=flags)
    except AssertionError as exc:
        (tally.wrong_flag if "users were moved" in str(exc) else tally.other).append(str(exc))
        return
    try:
        await check_record(stack, status, key, flags=flags)
    except AssertionError as exc:
        text = str(exc)
        bucket = (tally.lost_audit if "lost" in text or "review" in text
                  else tally.time_skew if "stamped" in text else tally.other)
        bucket.append(text)
        return
    tally.completed += 1


STUCK_AFTER = 300.0
"""An incident not closed this long after it opened (fault-free: ~4 s) counts as stuck."""


async def _closed(stack: ChaosStack, incident: str, deadline: float) -> IncidentStatus:
    """The incident's final status, waiting through server restarts (the wait is re-issued), or TimeoutError."""
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(incident)
        try:
            return await stack.result(incident, timeout=left)
        except TimeoutError:
            raise
        except Exception:  # noqa: BLE001 - the server is down: wait for it to come back
            await asyncio.sleep(0.5)


async def _last_status(stack: ChaosStack, incident: str) -> list[Any]:
    try:
        return list((await stack.service.get(incident)).audit)
    except Exception:  # noqa: BLE001 - only decorates the report
        return []


async def _retrying(call: Any, attempts: int = 30) -> Any:
    """A call from the bench itself (trigger, result) while the Temporal server may be down: retried."""
    for attempt in range(attempts):
        try:
            return await call()
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    return None


def report(tally: Tally, flags: FlagService, incidents: int, in_flight: int, seed: int, seconds: float) -> str:
    base = statistics.median(sorted(tally.durations)[:max(1, len(tally.durations) // 10)]) if tally.durations else 0
    extra = [d - base for d in tally.durations]
    faults = {k: tally.fault_log.count(k) for k in ("worker", "server", "store")}
    lines = [
        header("chaos"),
        f"{incidents} incidents, {in_flight} in flight, seed {seed}, {seconds:.0f} s wall",
        f"faults: worker kill -9 x{faults['worker']}, Temporal server kill -9 x{faults['server']}, "
        f"store unavailable x{faults['store']}; flag API: {flags.requests} requests, "
        + ", ".join(f"{k} {v}" for k, v in flags.faults.items()),
        "",
        "| completed | stuck | wrong flag | lost audit | audit time skew > 2 s | other |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {tally.completed} | {len(tally.stuck)} | {len(tally.wrong_flag)} | {len(tally.lost_audit)} | "
        f"{len(tally.time_skew)} | {len(tally.other)} |",
        "",
        "| seconds | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in (("recovery after a fault (next flag change of an in-flight incident)", tally.recoveries),
                         ("incident duration (alert to closed)", tally.durations),
                         (f"time beyond the fault-free duration ({base:.1f} s)", extra)):
        if values:
            lines.append(f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.9):.1f} | "
                         f"{percentile(values, 0.99):.1f} | {max(values):.1f} |")
    for name, items in (("stuck", tally.stuck), ("wrong flag", tally.wrong_flag), ("lost audit", tally.lost_audit),
                        ("audit time skew", tally.time_skew), ("other", tally.other)):
        for item in items[:5]:
            lines.append(f"{name}: {item[:300]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: UNSHIP_CHAOS_SEED or new)")
    parser.add_argument("--flag-fault-rate", type=float, default=0.05,
                        help="share of flag API requests answered 503, dropped or hung")
    args = parser.parse_args()
    seed = args.seed or seed_from_env()
    t0 = time.monotonic()
    tally, flags = asyncio.run(soak(args.incidents, args.in_flight, seed, args.flag_fault_rate))
    print(report(tally, flags, args.incidents, args.in_flight, seed, time.monotonic() - t0))
    bad = len(tally.stuck) + len(tally.wrong_flag) + len(tally.lost_audit)
    if bad:
        print(f"FAILED (seed {seed})")
        raise SystemExit(1)

if __name__ == "__main__":
    main()
