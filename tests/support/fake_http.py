"""A real local HTTP server (stdlib, in a thread) for SaaS we cannot run here, with scripted faults.

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
from urllib.parse import parse_qs, urlsplit

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
                    if isinstance(fault, int):
                        answer = fake.error_answer(fault, request)
                    else:
                        answer = fake.handle(request)
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
