"""The Temporal worker process: settings become adapters, adapters become activities, all on one task queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.chat import LogNotifier
from activities.contracts import TaskTracker, ThresholdAdvisor
from activities.flagd import FlagdFileProvider
from activities.http_providers import HttpProvider
from activities.http_signals import HttpSignalSource
from activities.integrity import IntegrityChecker
from activities.kserve import KServeProvider
from activities.launchdarkly import LaunchDarklyProvider
from activities.prometheus import PrometheusSignalSource
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.slack import SlackNotifier
from activities.store import open_store
from activities.trackers import GitHubTracker, JiraTracker, TrackerRouter
from activities.unleash import UnleashProvider
from playbooks.loader import load_library
from playbooks.models import PlaybookSnapshot, TrackerKind
from workers.runtime.settings import Settings
from workflows.registry import INCIDENT_WORKFLOWS
from workflows.sandbox import workflow_runner

log = logging.getLogger(__name__)

STICKY_TIMEOUT = timedelta(seconds=3)


def build_activities(settings: Settings, advisor: ThresholdAdvisor | None = None) -> RollbackActivities:
    """The production adapters the settings describe, wrapped as the rollback activities.

    Flags and signals are routed by the names playbooks use (see ``flag_providers`` / ``signal_sources``);
    chat goes to Slack with ``UNSHIP_SLACK_BOT_TOKEN`` (``chat_notifier``), else to the log; review tasks go
    to the trackers that are configured (``trackers``). ``advisor`` is the learning loop's threshold advisor,
    handed in by the process (the CLI wires tabletop's backtest sweep; the runtime never imports tabletop).
    """

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    flags = FlagRouter(flag_providers(settings))
    signals = SignalRouter(signal_sources(settings))
    return RollbackActivities(
        flags,
        signals,
        chat_notifier(settings) or LogNotifier(),
        open_store(settings.resolved_database_url, max_connections=settings.database_connections),
        integrity=IntegrityChecker(flags, signals),
        review_dir=settings.state_dir / "reviews",
        trackers=trackers(settings),
        advisor=advisor,
    )


def trackers(settings: Settings) -> TrackerRouter:
    """The review-task trackers the settings configure: GitHub with ``UNSHIP_GITHUB_TOKEN``, Jira with
    ``UNSHIP_JIRA_URL`` and ``UNSHIP_JIRA_API_TOKEN`` (``UNSHIP_JIRA_USER`` for basic auth); ``store`` always."""
    configured: dict[TrackerKind, TaskTracker] = {}
    if settings.github_token:
        configured[TrackerKind.GITHUB] = GitHubTracker(_secret(settings.github_token), settings.github_api_url,
                                                       incident_url=settings.console_url)
    if settings.jira_url and settings.jira_api_token:
        configured[TrackerKind.JIRA] = JiraTracker(settings.jira_url, _secret(settings.jira_api_token),
                                                   user=settings.jira_user, incident_url=settings.console_url)
    return TrackerRouter(configured)


def chat_notifier(settings: Settings) -> Any:
    """Slack when ``UNSHIP_SLACK_BOT_TOKEN`` is set (the library's stages shown as the plan), else None."""
    if settings.slack_bot_token is None:
        return None

    plans: dict[str, Any] = {}
    try:

        folder = settings.playbooks_dir if settings.playbooks_dir.is_dir() else None
        plans = {name: snap.playbook.rollback.stages for name, snap in load_library(folder).items()}
    except Exception as exc:  # noqa: BLE001 - the plan only decorates messages; never block the worker on it
        log.warning("Slack messages will not show planned stages: %s", exc)
    return SlackNotifier.from_token(settings.slack_bot_token.get_secret_value(), settings.slack_api_url, plans,
                                    console_url=settings.console_url)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def flag_providers(settings: Settings) -> dict[str, Any]:
    """The flag/serving providers the settings configure, by the ``target.provider`` name playbooks use.

    ``flagd`` (the file in the state folder) always; ``unleash`` with ``UNSHIP_UNLEASH_URL``, ``launchdarkly``
    with ``UNSHIP_LAUNCHDARKLY_API_TOKEN``, ``kserve`` with ``UNSHIP_KUBERNETES_API_URL`` or
    ``UNSHIP_KUBERNETES_IN_CLUSTER``, ``http`` with ``UNSHIP_HTTP_PROVIDER_URL``. A playbook naming one that is
    not configured fails with the router's non-retryable "not configured" error; a half-configured one (a URL
    without its token) stops the worker at start with what is missing.
    """

    providers: dict[str, Any] = {"flagd": FlagdFileProvider(settings.resolved_flagd_path)}
    try:
        if settings.unleash_url:

            providers["unleash"] = UnleashProvider(settings.unleash_url, _secret(settings.unleash_api_token))
        if settings.launchdarkly_api_token:

            providers["launchdarkly"] = LaunchDarklyProvider(_secret(settings.launchdarkly_api_token),
                                                             settings.launchdarkly_url)
        if settings.kubernetes_in_cluster or settings.kubernetes_api_url:

            providers["kserve"] = (
                KServeProvider.in_cluster() if settings.kubernetes_in_cluster
                else KServeProvider(settings.kubernetes_api_url, _secret(settings.kubernetes_token),
                                    ca_file=settings.kubernetes_ca_file)
            )
        if settings.http_provider_url:

            providers["http"] = HttpProvider(settings.http_provider_url, _secret(settings.http_provider_token))
    except ApplicationError as exc:
        raise ValueError(f"settings: {exc.message}") from None
    except OSError as exc:  # e.g. an unreadable UNSHIP_KUBERNETES_CA_FILE
        raise ValueError(f"settings: cannot read {exc.filename}: {exc.strerror}") from None
    return providers


def signal_sources(settings: Settings) -> dict[str, Any]:
    """The signal sources by ``source.type``: ``prometheus`` with ``UNSHIP_PROMETHEUS_URL``; ``http`` always
    (its URL is in the playbook; ``UNSHIP_HTTP_SIGNALS_TOKEN`` is sent as a bearer token when set)."""

    sources: dict[str, Any] = {"http": HttpSignalSource(token=_secret(settings.http_signals_token))}
    if settings.prometheus_url:

        sources["prometheus"] = PrometheusSignalSource(settings.prometheus_url,
                                                       _secret(settings.prometheus_bearer_token))
    return sources


async def ensure_flagd_flags(settings: Settings, playbooks: dict[str, PlaybookSnapshot]) -> list[str]:
    """Create the flagd flags the playbooks name (everyone on the candidate) if the flag file lacks them.

    Returns the keys created. The embedded default thus needs no setup; an existing flag is never touched.
    """

    provider = FlagdFileProvider(settings.resolved_flagd_path)
    created = []
    for snapshot in playbooks.values():
        for target in snapshot.playbook.rollback.targets:
            if target.provider == "flagd" and await provider.ensure_flag(target):
                created.append(target.key)
    return created


def build_worker(client: Client, settings: Settings, activities: RollbackActivities,
                 extra_workflows: Sequence[type] = (),
                 extra_activities: Sequence[Callable[..., Any]] = ()) -> Worker:
    """The worker ``run_worker`` runs: the incident workflows in the project's sandbox, ``activities``, and at
    most ``settings.workflow_cache`` incidents kept in memory (the others replay from history when they move)."""
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[*INCIDENT_WORKFLOWS, *extra_workflows],
        workflow_runner=workflow_runner(),
        activities=[*activities.all(), *extra_activities],
        max_cached_workflows=settings.workflow_cache,
        # A worker that died keeps its incidents' next workflow tasks on its own (sticky) queue until this runs
        # out; then any worker takes them. 3 s instead of 10 s: an incident resumes within seconds of a crash.
        sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
    )


async def run_worker(
    client: Client,
    settings: Settings,
    activities: RollbackActivities | None = None,
    stop: asyncio.Event | None = None,
    *,
    extra_workflows: Sequence[type] = (),
    extra_activities: Sequence[Callable[..., Any]] = (),
) -> None:
    """Poll ``settings.task_queue`` until ``stop`` is set (or forever), then finish in-flight tasks and return.

    ``extra_workflows`` / ``extra_activities`` are features wired in by the process that runs the worker (the
    CLI hands in the scheduled rehearsals), so the runtime never imports them.
    """
    activities = activities if activities is not None else build_activities(settings)
    worker = build_worker(client, settings, activities, extra_workflows, extra_activities)
    log.info("worker polling task queue %r on %s", settings.task_queue, settings.temporal_target)
    if stop is None:
        await worker.run()
        return
    running = asyncio.create_task(worker.run())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if running in done:  # a fatal worker error: surface it instead of waiting for a stop that never comes
        stopping.cancel()
        running.result()
        return
    await worker.shutdown()
    await running
