"""A lean HTTP/1.1 load generator for the alert storm, run in its own process so that it neither shares the
gateway's event loop nor hides its own cost in the gateway's figure.

Every request is built once, before the clock starts (its own body, so every alert has its own fingerprint);
``--concurrency`` keep-alive connections then each send one request and read its whole answer before sending
the next (one request per alert, N in flight). The answer is parsed only as far as the status line and
``Content-Length``. Runs on uvloop when it is installed.

    python bench/_load.py --port 8080 --path /v1/alerts/alertmanager --token T --concurrency 100 BODIES.jsonl

``BODIES.jsonl`` holds one JSON body per line. Prints one JSON object: ``statuses`` (status -> count),
``seconds`` (first request sent -> last answer read, connections already open), ``cpu_seconds`` (this process's
CPU time over that span), ``requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; the plain loop still works
    uvloop = None  # type: ignore[assignment]


def build(host: str, port: int, path: str, token: str, bodies: list[bytes]) -> list[bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n").encode()
    return [head + b"Content-Length: %d\r\n\r\n" % len(body) + body for body in bodies]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


async def storm(host: str, port: int, requests: list[bytes], concurrency: int) -> dict[str, object]:
    statuses: Counter[int] = Counter()
    pending = iter(requests)
    connections = [await asyncio.open_connection(host, port) for _ in range(min(concurrency, len(requests)))]

    async def lane(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in pending:
            writer.write(request)
            try:
                status, keep = await _answer(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                status, keep = 0, False  # counted as not accepted: the bench fails on it
            statuses[status] += 1
            if not keep:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
        writer.close()

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane(r, w) for r, w in connections))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"statuses": {str(k): v for k, v in statuses.items()}, "seconds": elapsed, "cpu_seconds": cpu,
            "requests": len(requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("bodies", type=Path, help="one JSON request body per line")
    args = parser.parse_args()
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
    requests = build(args.host, args.port, args.path, args.token, bodies)
    coro = storm(args.host, args.port, requests, args.concurrency)
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
