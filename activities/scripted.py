"""Scripted stand-ins for the world, used by tabletop exercises and tests.

``ScriptedSignalSource`` replays signal values by poll number (optionally per phase); ``ScriptedFlagProvider``
keeps splits in memory, records every write with its idempotency key, and can be told to fail the next writes
or reads the way a real flag system fails (retryable outage, or a refusal a person must fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.exceptions import ApplicationError

from activities.contracts import PollRequest, SignalObservation
from activities.routing import classify
from playbooks.models import Signal, Target

Timeline = dict[str, list[float | None]]


class ScriptedSignalSource:
    """A ``SignalSource`` whose value for signal ``s`` at poll ``n`` is ``timeline[s][min(n, len - 1)]``.

    ``phases`` maps a phase name (``PollRequest.phase``, e.g. ``confirm`` or ``stage``) to its own timeline,
    which takes precedence for the signals it names. ``samples`` gives sample counts the same way (for
    ``min_samples``). None, or a signal with no script, is "no data".
    """

    def __init__(self, timeline: Timeline, phases: dict[str, Timeline] | None = None,
                 samples: Timeline | None = None) -> None:
        self.timeline = timeline
        self.phases = phases or {}
        self.samples = samples or {}
        self.polls: list[tuple[str, str, int]] = []

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        """The scripted value of ``signal`` at ``request.poll``."""
        self.polls.append((signal.name, request.phase, request.poll))
        script = self.phases.get(request.phase, {}).get(signal.name, self.timeline.get(signal.name))
        if not script:
            return classify(signal, None, None, f"no scripted values for {signal.name!r}")
        value = _at(script, request.poll)
        count = _at(self.samples[signal.name], request.poll) if self.samples.get(signal.name) else None
        detail = f"scripted {request.phase} poll {request.poll}"
        return classify(signal, value, count, detail)


def _at(script: list[float | None], poll: int) -> float | None:
    return script[min(max(poll, 0), len(script) - 1)]


@dataclass(frozen=True)
class FlagWrite:
    """One write that reached the scripted flag system."""

    target: str
    percent: float
    idempotency_key: str


@dataclass
class _Faults:
    count: int = 0
    retryable: bool = True
    message: str = ""


@dataclass
class ScriptedFlagProvider:
    """An in-memory ``FlagProvider``: ``state`` maps ``target.ref`` to the percent on the previous model."""

    state: dict[str, float] = field(default_factory=dict)
    writes: list[FlagWrite] = field(default_factory=list)
    readback_overrides: dict[str, float | None] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict, metadata={"doc": "target.ref -> candidate release"})
    _write_faults: _Faults = field(default_factory=_Faults)
    _read_faults: _Faults = field(default_factory=_Faults)
    _applied: dict[str, tuple[str, float]] = field(default_factory=dict)

    async def served_release(self, target: Target) -> tuple[str | None, str]:
        """The candidate release ``served`` names for the target (None: the script does not say)."""
        release = self.served.get(target.ref)
        return release, (f"{target.ref} serves {release!r} as the candidate" if release
                         else f"{target.ref}: the script names no candidate release")

    def fail_next_writes(self, count: int, retryable: bool = True, message: str = "") -> None:
        """Make the next ``count`` writes fail (retryable like an outage, or not, like a 403)."""
        self._write_faults = _Faults(count, retryable, message)

    def fail_next_reads(self, count: int, retryable: bool = True, message: str = "") -> None:
        """Make the next ``count`` read-backs fail."""
        self._read_faults = _Faults(count, retryable, message)

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        """Apply the split unless this key already applied it; records the write."""
        self._maybe_fail(self._write_faults, target, "write")
        if self._applied.get(target.ref) == (idempotency_key, percent):
            return False
        self.state[target.ref] = percent
        self._applied[target.ref] = (idempotency_key, percent)
        self.writes.append(FlagWrite(target.ref, percent, idempotency_key))
        return True

    async def get_previous_percent(self, target: Target) -> float | None:
        """The stored split (0 = everyone on the candidate), unless a read-back override says otherwise."""
        self._maybe_fail(self._read_faults, target, "read")
        if target.ref in self.readback_overrides:
            return self.readback_overrides[target.ref]
        return self.state.get(target.ref, 0.0)

    @staticmethod
    def _maybe_fail(faults: _Faults, target: Target, action: str) -> None:
        if faults.count <= 0:
            return
        faults.count -= 1
        if faults.retryable:
            raise ApplicationError(
                faults.message or f"scripted: {target.ref}: {action} failed: HTTP 503 (injected outage); will retry",
                type="scripted.http_503",
                non_retryable=False,
            )
        raise ApplicationError(
            faults.message or f"scripted: {target.ref}: {action} refused: HTTP 403 (injected); grant the token access",
            type="scripted.http_403",
            non_retryable=True,
        )
