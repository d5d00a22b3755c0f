"""Dispatch to the adapter a playbook names, and classify measurements the same way for every source.

``FlagRouter`` picks a ``FlagProvider`` by ``target.provider``; ``SignalRouter`` picks a ``SignalSource`` by
``signal.source.type``. ``classify`` turns a raw value into a ``SignalObservation`` so that a Prometheus
source, a scripted tabletop source and any future source agree on what counts as a breach.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from activities.contracts import (
    FlagProvider,
    Measurement,
    PollRequest,
    SignalObservation,
    SignalSource,
    WriteLog,
)
from activities.errors import configuration_error
from playbooks.models import NoDataPolicy, Signal, Target

_NO_DATA = {
    NoDataPolicy.SKIP: Measurement.NO_DATA,
    NoDataPolicy.HEALTHY: Measurement.HEALTHY,
    NoDataPolicy.BREACH: Measurement.BREACH,
}


def classify(signal: Signal, value: float | None, samples: float | None, detail: str = "", *,
             events: float | None = None, control_events: float | None = None,
             control_outputs: float | None = None) -> SignalObservation:
    """One observation of ``signal``.

    ``value`` None, NaN or infinite cannot be measured: the signal's ``no_data`` policy decides. ``samples``
    below ``signal.min_samples`` is always NO_DATA (too little traffic to judge either way), never a breach.
    """
    observed_at = datetime.now(UTC)
    base = {
        "signal": signal.name,
        "category": signal.category.value,
        "threshold": str(signal.threshold),
        "samples": samples,
        "observed_at": observed_at,
        "events": events,
        "control_events": control_events,
        "control_outputs": control_outputs,
    }
    if value is not None and not math.isfinite(value):
        detail = _join(f"value is {value}", detail)
        value = None
    if samples is not None and samples < signal.min_samples:
        note = f"only {samples:g} outputs, fewer than min_samples {signal.min_samples}"
        return SignalObservation(value=value, measurement=Measurement.NO_DATA, detail=_join(note, detail), **base)
    if value is None:
        measurement = _NO_DATA[signal.no_data]
        note = f"no data, counted as {measurement.value} (no_data: {signal.no_data.value})"
        return SignalObservation(value=None, measurement=measurement, detail=_join(detail, note), **base)
    breached = signal.threshold.breached_by(value)
    measurement = Measurement.BREACH if breached else Measurement.HEALTHY
    return SignalObservation(value=value, measurement=measurement, detail=detail, **base)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


RELEASE_KEYS = ("release", "version", "model")
"""The keys of a variant's object value that name its release, when the playbook states none."""


def named_release(value: object, key: str | None = None) -> str | None:
    """The release a variant's value names: the object's ``key`` (default: the first of ``RELEASE_KEYS`` it has
    as a string), or, when the playbook states no ``key``, a non-empty string value itself. None otherwise."""
    if isinstance(value, dict):
        keys = (key,) if key else RELEASE_KEYS
        found = next((value[k] for k in keys if isinstance(value.get(k), str) and value[k]), None)
        return found if isinstance(found, str) else None
    return value if isinstance(value, str) and value and key is None else None


def hold_key(target: Target) -> str:
    """What one incident holds at a time: the flag or serving object, wherever it lives."""
    where = "/".join(p for p in (target.project, target.environment, target.namespace) if p)
    return f"{target.kind.value}:{target.provider}:{where + '/' if where else ''}{target.key}"


class FlagRouter:
    """A ``FlagProvider`` that hands each target to the provider named by ``target.provider``."""

    def __init__(self, providers: dict[str, FlagProvider]) -> None:
        self.providers = dict(providers)

    def provider_for(self, target: Target) -> FlagProvider:
        """The provider that serves ``target`` (a configuration error when none is configured)."""
        return self._provider(target)

    def _provider(self, target: Target) -> FlagProvider:
        provider = self.providers.get(target.provider)
        if provider is None:
            configured = ", ".join(sorted(self.providers)) or "none"
            raise configuration_error(
                "unship", target.ref,
                f"no flag provider {target.provider!r} is configured (configured: {configured}); "
                "set it up in the settings or change the target's provider in the playbook",
            )
        return provider

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        """Write the split through the target's provider."""
        return await self._provider(target).set_previous_percent(target, percent, idempotency_key)

    async def get_previous_percent(self, target: Target) -> float | None:
        """Read the split back through the target's provider."""
        return await self._provider(target).get_previous_percent(target)

    async def written_at(self, target: Target, idempotency_key: str) -> datetime | None:
        """When the target's provider wrote ``idempotency_key`` (None when it does not keep a ``WriteLog``)."""
        provider = self._provider(target)
        return await provider.written_at(target, idempotency_key) if isinstance(provider, WriteLog) else None


class SignalRouter:
    """A ``SignalSource`` that hands each signal to the source named by ``signal.source.type``."""

    def __init__(self, sources: dict[str, SignalSource]) -> None:
        self.sources = dict(sources)

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        """Observe ``signal`` with the source configured for its type."""
        source = self.sources.get(signal.source.type)
        if source is None:
            configured = ", ".join(sorted(self.sources)) or "none"
            raise configuration_error(
                "unship", f"signal {signal.name}",
                f"no signal source of type {signal.source.type!r} is configured (configured: {configured}); "
                "set it up in the settings (e.g. UNSHIP_PROMETHEUS_URL) or change the signal's source",
            )
        return await source.observe(signal, request)
