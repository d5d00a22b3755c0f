"""A real local HTTP server (stdlib, in a thread) for SaaS we cannot run here, with scripted faults.

``FakeServer`` is the base of every test server in ``tests/support`` (Kubernetes/KServe, LaunchDarkly, Slack,
the Prometheus exporter) and ``ContractServer`` implements unship's own generic HTTP flag/router contract
(the module docstring of ``activities/http_providers.py`` is its specification).

Subclasses implement ``handle`` for the documented API; tests script what happens to the next requests with
``fail_next``: an HTTP status (answered with the subclass's error body and headers), ``DROP`` (the connection
is closed before anything is done) or ``DROP_AFTER_APPLY`` (the request takes effect, then the connection is
closed without an answer: the worst case for a client, which must retry and converge).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

DROP = "drop"
DROP_AFTER_APPLY = "drop-after-apply"

Fault = int | str | None


class Request:
    """What the fake received."""

    def __init__(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
                 body: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class Answer:
    """A status, a body (JSON-encoded unless it is ``bytes``/``str``, sent as ``content_type``) and headers."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.content_type = content_type

    def encoded(self) -> tuple[bytes, str | None]:
        if self.body is None:
            return b"", self.content_type
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), self.content_type or "application/json"


class FakeServer:
    """Base class: ``with Sub() as fake: fake.url``; thread-safe state under ``self.lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.faults: deque[Fault] = deque()
        self.requests: list[Request] = []
        self.crashes: list[Exception] = []  # exceptions raised by handle(): answered 500, kept for the test
        self._server: ThreadingHTTPServer | None = None

    # --- to implement -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def error_answer(self, status: int, request: Request) -> Answer:
        return Answer(status, {"message": f"scripted HTTP {status}"})

    # --- control ------------------------------------------------------------------------------------
    def fail_next(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def address(self) -> str:
        """``host:port`` (what a Prometheus scrape config names)."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, parts.path, parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with fake.lock:
                    fake.requests.append(request)
                    fault = fake.faults.popleft() if fake.faults else None
                    if fault == DROP:
                        self.close_connection = True
                        return
                    try:
                        if isinstance(fault, int):
                            answer = fake.error_answer(fault, request)
                        else:
                            answer = fake.handle(request)
                    except Exception as exc:  # noqa: BLE001 - a bug in the fake must not look like a network fault
                        fake.crashes.append(exc)
                        answer = Answer(500, {"message": f"the fake crashed: {type(exc).__name__}: {exc}"})
                    if fault == DROP_AFTER_APPLY:
                        self.close_connection = True
                        return
                payload, content_type = answer.encoded()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if payload and content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name=type(self).__name__,
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ContractServer(FakeServer):
    """A router serving the generic HTTP contract (``activities/http_providers.py``) under ``/router``.

    It stores the absolute split per target: ``GET /router/targets/{key}`` answers ``{"previous_percent": p}``
    (404 for an unknown key), ``PUT`` with the documented body stores ``previous_percent`` (0..100, else 422) and
    answers 204; a wrong bearer token is 401, another method 405. ``writes`` records each accepted PUT body
    with its ``Idempotency-Key`` header (as ``header_key``).
    """

    default_token = "router-secret"

    def __init__(self, token: str = default_token, targets: dict[str, float] | None = None) -> None:
        super().__init__()
        self.token = token
        self.targets: dict[str, float] = {"chat/model": 0.0} if targets is None else dict(targets)
        self.writes: list[dict[str, Any]] = []

    def handle(self, request: Request) -> Answer:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Answer(401, {"error": "bad token"})
        prefix = "/router/targets/"
        if not request.path.startswith(prefix):
            return Answer(404, {"error": "no such route"})
        key = unquote(request.path[len(prefix):])
        if key not in self.targets:
            return Answer(404, {"error": f"unknown target {key}"})
        if request.method == "GET":
            return Answer(200, {"previous_percent": self.targets[key]})
        if request.method == "PUT":
            body = request.json()
            percent = body.get("previous_percent") if isinstance(body, dict) else None
            if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
                return Answer(422, {"error": "previous_percent must be 0..100"})
            self.writes.append({**body, "header_key": request.headers.get("idempotency-key")})
            self.targets[key] = float(percent)
            return Answer(204)
        return Answer(405, {"error": "method not allowed"})
