"""The one way unship connects to Temporal: pydantic payloads, the configured address and namespace."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from workers.runtime.settings import Settings


class TemporalUnreachable(ConnectionError):
    """No Temporal frontend answered at the configured address."""

    def __init__(self, target: str, settings: Settings, detail: str) -> None:
        hint = (
            "is `unship up` running?"
            if settings.embedded_temporal
            else "check TEMPORAL_ADDRESS and that the cluster is up"
        )
        super().__init__(f"cannot reach Temporal at {target}: {hint} ({detail})")
        self.target = target


async def connect(settings: Settings, *, timeout: float = 5.0) -> Client:
    """Connect to ``settings.temporal_target``; raises ``TemporalUnreachable`` with a hint when nothing answers."""
    try:
        return await Client.connect(
            settings.temporal_target,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
            connect_timeout=timedelta(seconds=timeout),
        )
    except RuntimeError as exc:  # the SDK reports transport failures as RuntimeError
        raise TemporalUnreachable(settings.temporal_target, settings, _short(exc)) from exc


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__
