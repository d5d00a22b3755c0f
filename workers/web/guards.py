"""What stands in front of every route: the body-size limit, the loopback rule for an API without a token, and
the lazily connected incident service (Temporal may be down when the process starts)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.runtime.service import IncidentService, ServiceError, TemporalUnavailable
from workers.runtime.settings import Settings
from workers.web.problems import PROBLEM_MEDIA_TYPE, problem_body

MAX_BODY_BYTES = 1024 * 1024
"""Larger request bodies get 413 before any route reads them."""

ServiceFactory = Callable[[], Awaitable[IncidentService]]
ServiceGetter = Callable[[], Awaitable[IncidentService]]


def lazy_service(service: IncidentService | ServiceFactory) -> ServiceGetter:
    """A getter for ``service``, or for the service a zero-argument async factory builds on first use.

    A factory that fails (Temporal unreachable) raises ``TemporalUnavailable`` (503) and is tried again next time.
    """
    resolved: list[IncidentService] = [service] if isinstance(service, IncidentService) else []
    lock = asyncio.Lock()

    async def get_service() -> IncidentService:
        if resolved:
            return resolved[0]
        async with lock:
            if not resolved:
                assert not isinstance(service, IncidentService)
                try:
                    resolved.append(await service())
                except ServiceError:
                    raise
                except Exception as exc:  # e.g. Temporal unreachable at first use: 503, retried next time
                    raise TemporalUnavailable(str(exc)) from exc
        return resolved[0]

    return get_service



def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_allowed(settings: Settings) -> None:
    """Refuse to serve an unauthenticated API beyond this machine; raises ``ValueError`` saying what to do."""
    host, _ = settings.http_host_port
    users = settings.resolved_users_file
    credentials = settings.api_token or settings.oidc_issuer or (users.is_file() and users.stat().st_size > 0)
    if not credentials and not is_loopback(host):
        raise ValueError(
            f"UNSHIP_HTTP_ADDR={settings.http_addr} is not a loopback address and no API credential is set "
            "(UNSHIP_API_TOKEN, personal tokens from `unship users add`, or UNSHIP_OIDC_ISSUER); set one "
            "(clients then send 'Authorization: Bearer <token>') or bind to 127.0.0.1"
        )


class BodyLimit:
    """ASGI middleware answering 413 to request bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._reject(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        buffered: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(problem_body(413, f"request body is larger than {self.limit} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
