"""The Temporal worker process: settings become adapters, adapters become activities, all on one task queue."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.worker import Worker

from workers.settings import Settings

if TYPE_CHECKING:
    from activities.rollback import RollbackActivities
    from playbooks.models import PlaybookSnapshot

log = logging.getLogger(__name__)


def build_activities(settings: Settings) -> RollbackActivities:
    """The production adapters the settings describe, wrapped as the rollback activities.

    Flags always include the flagd file in the state folder; signals include Prometheus when
    ``UNSHIP_PROMETHEUS_URL`` is set; chat goes to the log (until a Slack token is configured).
    """
    from activities.chat import LogNotifier
    from activities.flagd import FlagdFileProvider
    from activities.integrity import IntegrityChecker
    from activities.rollback import RollbackActivities
    from activities.routing import FlagRouter, SignalRouter
    from activities.store import open_store

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    flags = FlagRouter({"flagd": FlagdFileProvider(settings.resolved_flagd_path)})
    sources: dict[str, Any] = {}
    if settings.prometheus_url:
        from activities.prometheus import PrometheusSignalSource

        token = settings.prometheus_bearer_token.get_secret_value() if settings.prometheus_bearer_token else None
        sources["prometheus"] = PrometheusSignalSource(settings.prometheus_url, token)
    signals = SignalRouter(sources)
    return RollbackActivities(
        flags,
        signals,
        LogNotifier(),
        open_store(settings.resolved_database_url),
        integrity=IntegrityChecker(flags, signals),
        review_dir=settings.state_dir / "reviews",
    )


async def ensure_flagd_flags(settings: Settings, playbooks: dict[str, PlaybookSnapshot]) -> list[str]:
    """Create the flagd flags the playbooks name (everyone on the candidate) if the flag file lacks them.

    Returns the keys created. The embedded default thus needs no setup; an existing flag is never touched.
    """
    from activities.flagd import FlagdFileProvider

    provider = FlagdFileProvider(settings.resolved_flagd_path)
    created = []
    for snapshot in playbooks.values():
        for target in snapshot.playbook.rollback.targets:
            if target.provider == "flagd" and await provider.ensure_flag(target):
                created.append(target.key)
    return created


def workflow_classes() -> list[type]:
    """Every workflow unship runs (imported here, not at module import, so the CLI starts fast)."""
    from workflows.release import ReleaseWorkflow
    from workflows.review import ReviewWorkflow
    from workflows.rollback import RollbackWorkflow

    return [RollbackWorkflow, ReviewWorkflow, ReleaseWorkflow]


async def run_worker(
    client: Client,
    settings: Settings,
    activities: RollbackActivities | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Poll ``settings.task_queue`` until ``stop`` is set (or forever), then finish in-flight tasks and return."""
    activities = activities if activities is not None else build_activities(settings)
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=workflow_classes(),
        activities=activities.all(),
    )
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
