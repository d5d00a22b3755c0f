"""The one HTTP application and its serve loop.

``create_app`` assembles health, the operator API (``unship up``; left out for ``unship gateway``), the alert
webhooks and the Slack endpoint on one FastAPI app behind the body limit. ``serve`` runs it with uvicorn on an
already bound socket until ``stop`` is set, together with Slack Socket Mode when it is enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI
from slack_sdk.web.async_client import AsyncWebClient

from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.runtime.telemetry import tracing
from workers.web.api import mount_api
from workers.web.auth import Authenticator
from workers.web.console.routes import mount_console
from workers.web.gateway import Gateway, mount_gateway
from workers.web.guards import MAX_BODY_BYTES, BodyLimit, ServiceFactory, lazy_service
from workers.web.health import mount_health
from workers.web.problems import install_problems
from workers.web.slack_actions import run_socket_mode


def create_app(service: IncidentService | ServiceFactory, settings: Settings, *, api: bool = True,
               gateway: Gateway | None = None) -> FastAPI:
    """The HTTP app over ``service`` (or over the service an async factory builds on first use).

    ``api=False`` serves only the gateway (alerts, Slack, health): ``unship gateway``; ``api=True`` adds the
    operator API and the console at ``/``.
    """
    traced = tracing()
    # Traces come from unship's own instrumentation (``configure_tracing``); FastAPI's native telemetry stays
    # off: without a provider it would only ask OpenTelemetry on every request whether one appeared.
    app = FastAPI(title="unship" if api else "unship gateway", version="1",
                  summary="Revert problematic generative-model releases" if api
                  else "Alert webhooks in, Slack approvals in",
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.state.stopping = asyncio.Event()  # set by ``serve`` when it stops: ends the console's live streams
    install_problems(app)
    if traced is not None:
        traced.instrument_app(app)
    app.state.authenticator = Authenticator(settings)
    get_service = lazy_service(service)
    mount_health(app, get_service)
    if api:
        mount_api(app, get_service, settings)
    mount_gateway(app, get_service, settings, gateway)
    if api:
        mount_console(app, get_service, settings)  # last: it serves "/" and must not shadow the API's routes
    return app


def socket_mode_task(app: FastAPI, settings: Settings, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """With ``UNSHIP_SLACK_SOCKET_MODE``, receive Slack clicks over Socket Mode for ``app``'s gateway until ``stop``."""
    if not settings.slack_socket_mode:
        return None
    if settings.slack_app_token is None or settings.slack_bot_token is None:
        raise ValueError("UNSHIP_SLACK_SOCKET_MODE needs UNSHIP_SLACK_APP_TOKEN (xapp-...) and UNSHIP_SLACK_BOT_TOKEN")
    web = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url)
    gateway: Gateway = app.state.gateway
    return asyncio.create_task(run_socket_mode(gateway.slack, settings.slack_app_token.get_secret_value(), web,
                                               stop))


def freeze_heap() -> None:
    """Move everything allocated so far (modules, playbooks, pydantic schemas, the app) out of the garbage
    collector's reach, once the process is set up and before it serves.

    The cyclic collector otherwise walks that whole heap in every full collection, and an alert storm allocates
    fast enough to trigger them often: a quarter of the gateway's CPU per request went to it
    (BENCHMARKS.md, alert storm). Objects created later are collected as usual; what was frozen stays in
    memory, which for a serving process is what happens to it anyway.
    """
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # unship's CLI handles signals itself
        yield


async def serve(app: FastAPI, settings: Settings, sock: socket.socket, stop: asyncio.Event, *,
                alongside: list[asyncio.Task[None]] | None = None,
                on_started: Callable[[], None] | None = None, force: asyncio.Event | None = None,
                freeze: bool = False) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set or any task ends (the HTTP server, Socket Mode or one
    of ``alongside``, e.g. the worker); then stop them all and re-raise the first failure.

    ``on_started`` is called once the server accepts connections; setting ``force`` drops open connections.
    ``freeze`` calls ``freeze_heap`` before serving (the CLI's long-lived servers; not in tests that serve
    many apps in one process).
    """
    if freeze:
        freeze_heap()
    http = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))

    async def force_exit() -> None:
        if force is not None:
            await force.wait()
            http.force_exit = True

    forcer = asyncio.create_task(force_exit())
    http_task = asyncio.create_task(http.serve(sockets=[sock]))
    socket_task = socket_mode_task(app, settings, stop)
    others = list(alongside or []) + ([socket_task] if socket_task else [])
    while not http.started and not http_task.done() and not any(t.done() for t in others):
        await asyncio.sleep(0.05)
    if http.started and on_started is not None:
        on_started()
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({http_task, stopper, *others}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    app.state.stopping.set()
    http.should_exit = True
    results = await asyncio.gather(http_task, *others, return_exceptions=True)
    stopper.cancel()
    forcer.cancel()
    gateway: Gateway = app.state.gateway
    await gateway.slack.drain()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
