"""Alert storm: N incidents x M distinct alerts each, all posted to the gateway at once, over real HTTP.

The gateway (uvicorn, the real routes and router, the heap frozen as `unship gateway` does) runs in this process
against the embedded Temporal dev server (SQLite); the load generator (bench/_load.py) runs in its own process, so
it neither shares the gateway's event loop nor hides its cost in the gateway's figure. Each alert is its own
Alertmanager webhook request with its own fingerprint. Measured in the same run:

- the load generator's ceiling: the same requests against a raw server answering 202 at once, and against uvicorn
  with an empty ASGI app;
- group commit (the gateway's default): alerts for one incident that arrive together share one signal;
- baseline (skip with --no-baseline): one signal-with-start per alert.

For each: alerts/s accepted (first request sent -> last answer read), the CPU seconds the load generator, this
process (the gateway with its Temporal client) and the Temporal server used meanwhile, signals sent, that exactly
N workflows exist, and that every alert's fingerprint is in its incident's evidence (zero lost; a worker running
the real RollbackWorkflow with a long confirmation window applies the signals afterwards). Append the output to
BENCHMARKS.md with the machine, the date and the load (`uptime`). Profile the gateway with
`py-spy record -r 250 -f raw -- python bench/alert_storm.py --no-baseline` (the load generator is a child
process and is not sampled).

    ./dev bench alert_storm [--incidents 20] [--alerts 50] [--concurrency 100] [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

try:
    import uvloop
except ImportError:  # the gateway runs without it too
    uvloop = None  # type: ignore[assignment]
try:
    import httptools  # noqa: F401 - uvicorn's http="auto" picks it when importable
    HTTPTOOLS = True
except ImportError:
    HTTPTOOLS = False
from ruamel.yaml import YAML
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.chat import LogNotifier
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from bench.machine import header, process_cpu
from playbooks.loader import content_hash, library_folder, load_playbook
from playbooks.models import Playbook, PlaybookSnapshot
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.temporal_server import EmbeddedTemporal, free_port
from workers.web.alert_router import AlertRouter
from workers.web.app import create_app, freeze_heap
from workers.web.gateway import Gateway
from workflows.messages import incident_id
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.rollback import RollbackWorkflow

TOKEN = "bench-alert-token"


def open_playbook() -> PlaybookSnapshot:
    """The library's chat playbook with scripted signals and a one-hour confirmation: incidents stay open."""
    base = load_playbook(library_folder() / "conversational-agent.yaml").playbook.model_dump()
    base["confirmation"].update(window=3600, interval=600, breaches=3, out_of=5)
    for signal in base["signals"]:
        signal["source"] = {"type": "scripted"}
    base["integrity"] = []
    playbook = Playbook.model_validate(base)
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source="bench")


def webhook(release: str, fingerprint: str) -> bytes:
    labels = {"alertname": "GenAIQualityDegraded", "service": "chat-assistant", "release": release,
              "severity": "warning", "pod": fingerprint}
    return json.dumps({
        "version": "4", "groupKey": f'{{}}:{{alertname="GenAIQualityDegraded",release="{release}"}}',
        "status": "firing", "receiver": "unship", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager", "truncatedAlerts": 0,
        "alerts": [{"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2026-08-01T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fingerprint}],
    }).encode()


LOAD = Path(__file__).resolve().parent / "_load.py"


async def run_load(port: int, path: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """Post ``bodies`` with the lean client (bench/_load.py) in its own process; its JSON result."""
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as file:
        file.write(b"\n".join(bodies) + b"\n")
        file.flush()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(LOAD), "--port", str(port), "--path", path, "--token", TOKEN,
            "--concurrency", str(concurrency), file.name, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the load generator failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    result["accepted"] = result["statuses"].get("202", 0)
    return result


class _Trivial(asyncio.Protocol):
    """An HTTP/1.1 server that answers every request 202 at once: the load generator's ceiling."""

    ANSWER = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.transport.write(self.ANSWER)  # type: ignore[attr-defined]


async def _empty_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI app can do for a POST: read the body, answer 202 ``{}``."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def ceilings(bodies: list[bytes], concurrency: int) -> list[dict[str, Any]]:
    """The same requests against a raw 202 server (the client's ceiling) and uvicorn with an empty app."""
    results = []
    port = free_port("127.0.0.1")
    raw = await asyncio.get_running_loop().create_server(_Trivial, "127.0.0.1", port, backlog=4096)
    results.append({"mode": "client ceiling (raw 202 server)", **await run_load(port, "/", bodies, concurrency)})
    raw.close()
    await raw.wait_closed()
    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(_empty_app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off", backlog=4096))
    server.capture_signals = lambda: _no_signal_capture(server)  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    results.append({"mode": "uvicorn, empty ASGI app", **await run_load(port, "/", bodies, concurrency)})
    server.should_exit = True
    await serving
    return results


@contextlib.contextmanager
def _no_signal_capture(server: uvicorn.Server) -> Iterator[None]:
    yield


async def storm(client: Client, settings: Settings, snapshot: PlaybookSnapshot, *, batching: bool, incidents: int,
                alerts: int, concurrency: int, tag: str, server_pid: int | None) -> dict[str, Any]:
    """Post the storm; the result's ``check`` verifies it once a worker runs."""
    service = IncidentService(client, settings, {snapshot.playbook.name: snapshot})
    router = AlertRouter.for_service(service, batching=batching, window=settings.alert_batch_window_ms / 1000)
    app = create_app(service, settings, api=False, gateway=Gateway(settings, lambda: _ready(service), router=router))
    freeze_heap()  # as `unship gateway` does before serving
    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, timeout_keep_alive=120, backlog=4096))
    server.capture_signals = lambda: _no_signal_capture(server)  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)

    releases = [f"{tag}-{n}" for n in range(incidents)]
    # interleave incidents so every incident's alerts arrive spread over the whole storm
    requests = [(r, f"{tag}-{n:03d}-{m:04d}") for m in range(alerts) for n, r in enumerate(releases)]
    bodies = [webhook(r, f) for r, f in requests]
    cpu, server_cpu = time.process_time(), process_cpu(server_pid)
    load = await run_load(port, "/v1/alerts/alertmanager", bodies, concurrency)
    cpu, server_cpu = time.process_time() - cpu, process_cpu(server_pid) - server_cpu
    server.should_exit = True
    await serving

    ids = {incident_id(snapshot.playbook.name, r) for r in releases}
    return {"check": lambda: verify(client, snapshot, tag, releases, requests, ids),
        "mode": "group commit" if batching else "one signal per alert", "requests": len(requests),
        "accepted": load["accepted"], "other_status": len(requests) - load["accepted"], "seconds": load["seconds"],
        "alerts_per_s": load["accepted"] / load["seconds"], "client_cpu": load["cpu_seconds"],
        "gateway_cpu": cpu, "server_cpu": server_cpu,
        "signals": router.signals_sent}


async def _answers(port: int, path: str) -> bool:
    """True once ``GET path`` on 127.0.0.1:port answers 200."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer.startswith(b"HTTP/1.1 200")


async def storm_process(client: Client, settings: Settings, snapshot: PlaybookSnapshot, *, incidents: int,
                        alerts: int, concurrency: int, tag: str, server_pid: int | None,
                        temporal: str) -> dict[str, Any]:
    """The storm against `unship gateway` as its own process (the same playbook, as a playbook file)."""
    folder = settings.state_dir / f"playbooks-{tag}"
    folder.mkdir()
    with (folder / "bench.yaml").open("w") as file:
        YAML().dump(snapshot.playbook.model_dump(mode="json", exclude_none=True), file)
    port = free_port("127.0.0.1")
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal, "UNSHIP_HTTP_ADDR": f"127.0.0.1:{port}",
           "UNSHIP_PLAYBOOKS_DIR": str(folder), "UNSHIP_TASK_QUEUE": settings.task_queue,
           "UNSHIP_STATE_DIR": str(settings.state_dir / f"gateway-{tag}"), "UNSHIP_ALERT_BEARER_TOKEN": TOKEN}
    gateway = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.cli", "gateway", env=env,
                                                   stdout=asyncio.subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not await _answers(port, "/readyz"):
            if gateway.returncode is not None or time.monotonic() > deadline:
                raise SystemExit(f"`unship gateway` did not become ready (exit {gateway.returncode})")
            await asyncio.sleep(0.1)
        releases = [f"{tag}-{n}" for n in range(incidents)]
        requests = [(r, f"{tag}-{n:03d}-{m:04d}") for m in range(alerts) for n, r in enumerate(releases)]
        bodies = [webhook(r, f) for r, f in requests]
        cpu, server_cpu = process_cpu(gateway.pid), process_cpu(server_pid)
        load = await run_load(port, "/v1/alerts/alertmanager", bodies, concurrency)
        cpu, server_cpu = process_cpu(gateway.pid) - cpu, process_cpu(server_pid) - server_cpu
    finally:
        if gateway.returncode is None:
            gateway.terminate()
        await gateway.wait()
    ids = {incident_id(snapshot.playbook.name, r) for r in releases}
    return {"check": lambda: verify(client, snapshot, tag, releases, requests, ids),
        "mode": "group commit, `unship gateway`", "requests": len(requests),
        "accepted": load["accepted"], "other_status": len(requests) - load["accepted"], "seconds": load["seconds"],
        "alerts_per_s": load["accepted"] / load["seconds"], "client_cpu": load["cpu_seconds"],
        "gateway_cpu": cpu, "server_cpu": server_cpu, "signals": "?"}


async def verify(client: Client, snapshot: PlaybookSnapshot, tag: str, releases: list[str],
                 requests: list[tuple[str, str]], ids: set[str]) -> dict[str, Any]:
    """Exactly one workflow per incident, and every alert's fingerprint in its incident's evidence."""
    query = f'WorkflowId STARTS_WITH "unship:{snapshot.playbook.name}:{tag}-"'
    deadline = time.monotonic() + 10  # visibility is eventually consistent
    while True:
        found = [e.id async for e in client.list_workflows(query)]
        if len(found) >= len(ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    lost = 0
    for release in releases:
        wf = incident_id(snapshot.playbook.name, release)
        expected = {f for r, f in requests if r == release}
        deadline = time.monotonic() + 60  # the worker applies the signals it finds in the history
        while True:
            status = await client.get_workflow_handle(wf).query(RollbackWorkflow.status)
            seen = {a["fingerprint"] for e in status.audit if e.kind == "alert" for a in e.data.get("alerts", [])}
            if expected <= seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        lost += len(expected - seen)
    return {"workflows": len(found), "expected_workflows": len(ids),
                     "duplicates": len(found) - len(set(found)), "lost": lost}


async def _ready(service: IncidentService) -> IncidentService:
    return service


async def main(incidents: int, alerts: int, concurrency: int, baseline: bool, process: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with EmbeddedTemporal(state, port=free_port("127.0.0.1"), ui_port=0) as server:
            client = await Client.connect(server.target, data_converter=pydantic_data_converter)
            snapshot = open_playbook()
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            settings = Settings(state_dir=state, task_queue=queue, alert_bearer_token=TOKEN)
            acts = RollbackActivities(FlagRouter({"flagd": ScriptedFlagProvider()}),
                                      SignalRouter({"scripted": ScriptedSignalSource({})}), LogNotifier(),
                                      SqliteIncidentStore(state / "unship.db"))
            worker = Worker(client, task_queue=queue, workflows=INCIDENT_WORKFLOWS,
                            activities=acts.all())
            floor = await ceilings([webhook(f"c-{n % incidents}", f"c-{n}") for n in range(incidents * alerts)],
                                   concurrency)
            warmup = await storm(client, settings, snapshot, batching=True, incidents=2, alerts=5,
                                 concurrency=concurrency, tag="warmup", server_pid=server.pid)
            results = [warmup]
            for batching in (True, False) if baseline else (True,):
                tag = f"{'gc' if batching else 'one'}{uuid.uuid4().hex[:4]}"
                results.append(await storm(client, settings, snapshot, batching=batching, incidents=incidents,
                                           alerts=alerts, concurrency=concurrency, tag=tag,
                                           server_pid=server.pid))
            if process:
                results.append(await storm_process(client, settings, snapshot, incidents=incidents, alerts=alerts,
                                                   concurrency=concurrency, tag=f"proc{uuid.uuid4().hex[:4]}",
                                                   server_pid=server.pid, temporal=server.target))
            async with worker:
                for r in results:
                    r.update(await r.pop("check")())
                results = results[1:]
                async for execution in client.list_workflows(f'TaskQueue="{queue}" AND ExecutionStatus="Running"'):
                    await client.get_workflow_handle(execution.id).terminate("bench done")
    print(header("alert_storm"))
    print(f"{incidents} incidents x {alerts} alerts = {incidents * alerts} webhook requests, {concurrency} in flight, "
          f"embedded dev server (SQLite), batch window {settings.alert_batch_window_ms:g} ms, "
          f"event loop {type(asyncio.get_running_loop()).__module__.split('.')[0]}, "
          f"uvicorn http {'httptools' if HTTPTOOLS else 'h11'}; load generator: bench/_load.py in its own process")
    print("cpu s: CPU seconds used during the storm by the load generator, the gateway's process (HTTP, routing, "
          "Temporal client) and the Temporal dev server")
    print(f"{'mode':<32} {'accepted':>9} {'seconds':>8} {'alerts/s':>9} {'client cpu s':>12} {'gateway cpu s':>13} "
          f"{'server cpu s':>12} {'signals':>8} {'workflows':>10} {'lost':>5}")
    for r in floor:
        print(f"{r['mode']:<32} {r['accepted']:>9} {r['seconds']:>8.2f} {r['accepted'] / r['seconds']:>9.0f} "
              f"{r['cpu_seconds']:>12.2f}")
    for r in results:
        print(f"{r['mode']:<32} {r['accepted']:>9} {r['seconds']:>8.2f} {r['alerts_per_s']:>9.0f} "
              f"{r['client_cpu']:>12.2f} {r['gateway_cpu']:>13.2f} {r['server_cpu']:>12.2f} {r['signals']:>8} "
              f"{r['workflows']:>5}/{r['expected_workflows']:<4} "
              f"{r['lost']:>5}")
    if baseline:
        print(f"speed-up of group commit: {results[0]['alerts_per_s'] / results[1]['alerts_per_s']:.1f}x")
    failed = [r for r in results if r["lost"] or r["workflows"] != r["expected_workflows"] or r["other_status"]]
    if failed:
        print(f"FAILED: {failed}")
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=20, help="distinct (playbook, release) incidents")
    parser.add_argument("--alerts", type=int, default=50, help="alerts per incident, each its own request")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight at once")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the one-signal-per-alert baseline")
    parser.add_argument("--process", action="store_true",
                        help="also storm `unship gateway` run as its own process (signals are not counted there)")
    args = parser.parse_args()
    run = uvloop.run if uvloop is not None else asyncio.run
    run(main(args.incidents, args.alerts, args.concurrency, args.baseline, args.process))
