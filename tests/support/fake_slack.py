"""A local server that speaks the Slack Web API shapes unship uses, and records every call.

Slack is SaaS, so tests run the real ``slack_sdk`` clients against this instead. ``FakeSlack().url`` is the
``base_url`` (``http://127.0.0.1:PORT/api/``). Methods: ``chat.postMessage``, ``chat.update``,
``chat.postEphemeral``, ``usergroups.users.list``, ``usergroups.list``, ``auth.test``; anything else answers
``{"ok": false, "error": "unknown_method"}``. Channel names become stable ids (``#ml-incidents`` -> ``C...``);
messages are kept per (channel id, ts) so a test can read what a channel shows now.
``fail_next(method, status=429, error="ratelimited", retry_after=1)`` injects one failure.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: float | None


@dataclass
class FakeSlack:
    """The fake Web API in a thread; ``groups`` maps user-group ids to member ids, ``handles`` handles to ids."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    handles: dict[str, str] = field(default_factory=dict)
    token: str = "xoxb-test-token"

    def __post_init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    args = json.loads(raw or b"{}")
                else:
                    args = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
                self._answer(args)

            def do_GET(self) -> None:
                query = urllib.parse.urlparse(self.path).query
                self._answer({k: v[-1] for k, v in urllib.parse.parse_qs(query).items()})

            def _answer(self, args: dict[str, Any]) -> None:
                path = urllib.parse.urlparse(self.path).path
                method = path.removeprefix("/api/")
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ").strip() or args.get("token")
                status, body, headers = fake.handle(method, args, token)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def channel_id(channel: str) -> str:
        if channel.startswith(("C", "G", "D")) and channel.isalnum():
            return channel
        return "C" + hashlib.sha256(channel.encode()).hexdigest()[:8].upper()

    def fail_next(self, method: str, status: int = 429, error: str = "ratelimited",
                  retry_after: float | None = 1) -> None:
        with self._lock:
            self._failures.setdefault(method, []).append(_Failure(status, error, retry_after))

    def of(self, method: str) -> list[Call]:
        """The recorded calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    def handle(self, method: str, args: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.calls.append(Call(method, args, token))
            failures = self._failures.get(method)
            if failures:
                fail = failures.pop(0)
                headers = {"Retry-After": f"{fail.retry_after:g}"} if fail.retry_after is not None else {}
                return fail.status, {"ok": False, "error": fail.error}, headers
            if token != self.token:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            if method == "auth.test":
                return 200, {"ok": True, "user_id": "UUNSHIPBOT", "team_id": "T0TEST"}, {}
            if method == "chat.postMessage":
                channel = self.channel_id(str(args.get("channel", "")))
                ts = f"1700000000.{next(self._ts):06d}"
                message = {"ts": ts, "text": args.get("text"), "blocks": args.get("blocks") or []}
                self.messages[(channel, ts)] = message
                return 200, {"ok": True, "channel": channel, "ts": ts, "message": message}, {}
            if method == "chat.update":
                channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
                if (channel, ts) not in self.messages:
                    return 200, {"ok": False, "error": "message_not_found"}, {}
                message = {"ts": ts, "text": args.get("text"), "blocks": args.get("blocks") or []}
                self.messages[(channel, ts)] = message
                return 200, {"ok": True, "channel": channel, "ts": ts, "text": args.get("text")}, {}
            if method == "chat.postEphemeral":
                return 200, {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}, {}
            if method == "usergroups.users.list":
                group = str(args.get("usergroup", ""))
                if group not in self.groups:
                    return 200, {"ok": False, "error": "no_such_subteam"}, {}
                return 200, {"ok": True, "users": list(self.groups[group])}, {}
            if method == "usergroups.list":
                return 200, {"ok": True, "usergroups": [{"id": gid, "handle": handle}
                                                        for handle, gid in self.handles.items()]}, {}
            return 200, {"ok": False, "error": "unknown_method"}, {}
