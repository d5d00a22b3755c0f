"""What every ``unship`` command shares: the Typer app, the consoles, exit codes, settings and playbook
loading, the incident service, the single error boundary, logging and signal handling.

Exit codes: 0 ok, 1 refused or failed check, 2 usage or input error, 3 cannot reach Temporal, 4 not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from rich.console import Console

from playbooks.loader import PlaybookError, load_library
from playbooks.models import PlaybookSnapshot
from workers.cli.api import ApiError
from workers.runtime import logs
from workers.runtime.client import TemporalUnreachable
from workers.runtime.service import (
    IncidentNotFound,
    IncidentService,
    InvalidInput,
    Refused,
    ServiceError,
    TemporalUnavailable,
    UnknownPlaybook,
)
from workers.runtime.settings import SECRET_FIELDS, Settings
from workers.runtime.temporal_server import EmbeddedTemporalError

T = TypeVar("T")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

app = typer.Typer(
    name="unship",
    help="Revert problematic generative-model releases swiftly, safely and on the record.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
options = {"debug": False}
PIPED_WIDTH = 10_000
"""The width tables get when stdout is not a terminal: rows are never wrapped or cut to 80 columns."""

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts (the API's response where the "
                                                        "command mirrors an API call) instead of text.")]


def print_json(data: object) -> None:
    """Data for scripts: one JSON document on stdout, no colour, no wrapping, whatever the terminal."""
    sys.stdout.write(json.dumps(data, indent=2, default=to_jsonable_python) + "\n")
    sys.stdout.flush()


def _print_version(value: bool) -> None:
    if value:
        out.print(f"unship {version()}", soft_wrap=True)
        raise typer.Exit(EXIT_OK)


def version() -> str:
    try:
        return importlib.metadata.version("unship")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    _version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                           callback=_print_version)] = False,
) -> None:
    """unship: durable, audited rollbacks of model releases, driven by YAML playbooks."""
    options["debug"] = debug
    if not out.is_terminal:  # piped or redirected: whole rows, never cut to 80 columns
        out.width = PIPED_WIDTH


SERVER_SETTINGS = ("state_dir", "playbooks_dir", "log_format", "metrics_addr", "temporal_metrics_addr",
                   "temporal_address",
                   "temporal_namespace", "temporal_port", "temporal_ui_port", "task_queue")
WORKER_SETTINGS = ("workflow_cache", "database_url", "database_connections", "flagd_path", "prometheus_url",
                   "prometheus_bearer_token", "unleash_url",
                   "unleash_api_token", "launchdarkly_api_token", "launchdarkly_url", "kubernetes_api_url",
                   "kubernetes_token", "kubernetes_ca_file", "kubernetes_in_cluster", "http_provider_url",
                   "http_provider_token", "http_signals_token", "slack_bot_token", "slack_api_url")
HTTP_SETTINGS = ("http_addr", "api_token", "alert_bearer_token", "alert_basic_user", "alert_basic_password",
                 "grafana_hmac_secret", "pagerduty_signing_secret", "alert_signature_window", "alert_batch_window_ms",
                 "slack_signing_secret", "slack_app_token", "slack_socket_mode", "slack_bot_token", "slack_api_url")


def settings_help(*groups: tuple[str, ...]) -> str:
    """An epilog listing the environment variables a command reads, with their defaults (click keeps the
    ``\b`` paragraph unwrapped)."""
    lines = ["\b", "Settings (environment variables; every secret also as <NAME>_FILE; TEMPORAL_* and "
                   "TEMPORAL_PROFILE configure the Temporal connection too):"]
    seen: list[str] = []
    for group in groups:
        seen += [f for f in group if f not in seen]
    width = max(len(Settings.env_name(f)) for f in seen)
    for name in seen:
        field = Settings.model_fields[name]
        default = field.default
        shown = "" if default is None or name in SECRET_FIELDS else f" [default: {default}]"
        description = field.description or name.replace("_", " ")
        lines.append(f"  {Settings.env_name(name):<{width}}  {description}{shown}")
    return "\n".join(lines)


# --- plumbing ------------------------------------------------------------------------------------------------


def fail(code: int, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(Settings.describe_error(e) for e in exc.errors())
        fail(EXIT_USAGE, f"invalid settings: {problems}")


def exit_code_for(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an expected failure (None: unexpected)."""
    if isinstance(exc, ApiError):
        if exc.status in (0, 502, 503, 504):
            return EXIT_UNREACHABLE, exc.detail
        if exc.status == 404:
            return EXIT_NOT_FOUND, exc.detail
        if exc.status in (400, 413, 422):
            return EXIT_USAGE, exc.detail
        return EXIT_REFUSED, f"refused: {exc.detail}"
    if isinstance(exc, (TemporalUnreachable, TemporalUnavailable, EmbeddedTemporalError)):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, IncidentNotFound):
        return EXIT_NOT_FOUND, str(exc)
    if isinstance(exc, (UnknownPlaybook, InvalidInput, PlaybookError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, Refused):
        return EXIT_REFUSED, f"refused: {exc.reason}"
    if isinstance(exc, ServiceError):
        return EXIT_REFUSED, str(exc)
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, str(exc)
    return None


def run(coro_fn: Callable[[], Awaitable[T]], *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    """Run ``coro_fn`` in a fresh event loop (``loop_factory``'s, e.g. ``uvloop.new_event_loop``) and turn
    expected failures into one line and an exit code."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro_fn())  # type: ignore[arg-type]
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's single error boundary
        if options["debug"]:
            err.print_exception()
        mapped = exit_code_for(exc)
        if mapped is None:
            fail(EXIT_REFUSED, f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)")
        fail(*mapped)


def load_playbooks(settings: Settings) -> dict[str, PlaybookSnapshot]:
    """The playbook library: ``UNSHIP_PLAYBOOKS_DIR`` if it exists, else (default setting) the shipped one."""
    folder = settings.playbooks_dir
    if folder.is_dir():
        return load_library(folder)
    if folder == Settings.model_fields["playbooks_dir"].default:
        return load_library(None)
    fail(EXIT_USAGE, f"UNSHIP_PLAYBOOKS_DIR={folder} is not a folder")


def configure_logging(settings: Settings | None = None) -> None:
    """Logs as ``UNSHIP_LOG_FORMAT`` says (text on a terminal, json otherwise), every configured secret masked."""
    settings = settings or Settings.model_construct()
    logs.configure_logging(settings.log_format, settings.secret_values(), console=err)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, on_second: Callable[[], None] | None = None) -> Iterator[None]:
    """Ctrl-C / SIGTERM set ``stop``; a second one calls ``on_second`` (force)."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        if stop.is_set():
            if on_second:
                on_second()
            return
        err.print("stopping (Ctrl-C again to force)...")
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handle)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)



@contextlib.contextmanager
def reload_on_sighup(service: IncidentService) -> Iterator[None]:
    """SIGHUP reloads ``service``'s playbook library (audited; a library with problems is refused and logged)."""
    loop = asyncio.get_running_loop()
    log = logging.getLogger("unship")
    tasks: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            changes = await service.reload_playbooks(by="SIGHUP")
            log.info("playbooks reloaded on SIGHUP: %s", ", ".join(f"{n} {o or '-'} -> {v or '-'}"
                                                                  for n, (o, v) in changes.items()) or "no change")
        except ServiceError as exc:
            log.error("playbook reload on SIGHUP refused: %s", exc)

    def handle() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, handle)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):
        installed = False
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGHUP)


def playbooks_or_fail(settings: Settings) -> dict[str, PlaybookSnapshot]:
    try:
        return load_playbooks(settings)
    except PlaybookError as exc:
        fail(EXIT_USAGE, f"the playbook library has problems:\n{exc}")


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(EXIT_USAGE, f"cannot listen on {host}:{port} for the HTTP API: {exc.strerror} "
                          "(set UNSHIP_HTTP_ADDR to another host:port)")
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


