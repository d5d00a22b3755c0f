"""Unleash (self-hosted or cloud) as a ``FlagProvider``, through its Admin API.

Model: the flag ``target.key`` in project ``target.project or "default"`` and environment
``target.environment or "development"``; a user for whom the flag is **enabled** gets the candidate model,
everyone else the previous one. The cohort on the candidate is the rollout percentage of the environment's one
*unconstrained* ``flexibleRollout`` strategy (no constraints, no segments), the one unship manages:

- ``rollout = 100 - previous_percent`` (Unleash rollouts are whole percentages: the value is rounded half up).
- Its ``stickiness`` and ``groupId`` are never changed, so a user moved back to the previous model stays back
  while the rollout decreases. When the environment has no such strategy, unship creates one titled
  ``unship cohort`` with stickiness ``userId`` and ``groupId`` = the flag key.
- Strategies with constraints or segments (e.g. "internal users always get the candidate") are left alone;
  they are outside the split unship controls. Two active unconstrained strategies, or one that is not a
  flexibleRollout, make the split ambiguous: writing fails with a non-retryable error asking a person to
  remove the extra strategy, and reading gives ``None``.
- A disabled environment means everyone is on the previous model (100%). At 100% unship writes rollout 0 and
  keeps the environment on (so the next step of a re-release keeps the same buckets); with
  ``disable_environment_at_full_revert=True`` it also turns the environment off (a kill switch).
- Enabling an environment happens only after an enabled unship strategy exists: Unleash turns an environment
  with no enabled strategy on by auto-creating a 100% default strategy, which would send everyone to the
  candidate.

Which release the candidate serves (``served_release``, checked before the first write): the payload of the
variant the enabled cohort gets: on the managed strategy (strategy variants), else the environment's variants;
the variant named ``candidate_variant``, else the only one. A ``json`` payload names it under
``target.release_key`` (default ``release``, ``version`` or ``model``); a ``string`` payload is the release
itself unless the playbook states a ``release_key``. No such variant
or payload: unship cannot tell, and says so in the audit trail.

Auth: ``Authorization: <admin or service-account token>``. Unleash has no idempotency keys; writes are
absolute (read, write only when different, read back).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx

from activities.errors import configuration_error
from activities.http_providers import (
    ProjectFlagAdapter,
    json_body,
    readback_mismatch,
    same_percent,
    segment,
    send,
)
from activities.routing import named_release
from playbooks.models import Target

SYSTEM = "Unleash"
STRATEGY_TITLE = "unship cohort"
DEFAULT_PROJECT = "default"
DEFAULT_ENVIRONMENT = "development"


def whole_rollout(previous_percent: float) -> int:
    """The flexibleRollout percentage on the candidate, rounded half up (Unleash takes whole numbers)."""
    return math.floor(100.0 - previous_percent + 0.5)


def _unconstrained(strategy: dict[str, Any]) -> bool:
    return not strategy.get("constraints") and not strategy.get("segments")


def _active(strategy: dict[str, Any]) -> bool:
    return not strategy.get("disabled")


class _Ambiguous(Exception):
    pass


def _managed(strategies: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The strategy unship moves; ``None`` when there is none yet. Raises ``_Ambiguous`` when unclear."""
    unconstrained = [s for s in strategies if _unconstrained(s)]
    active = [s for s in unconstrained if _active(s)]
    if len(active) > 1:
        names = ", ".join(f"{s.get('name')} {s.get('id')}" for s in active)
        raise _Ambiguous(f"it has {len(active)} active strategies without constraints ({names})")
    if active:
        if active[0].get("name") != "flexibleRollout":
            raise _Ambiguous(f"its unconstrained strategy {active[0].get('id')} is "
                             f"{active[0].get('name')!r}, not a flexibleRollout")
        return active[0]
    disabled = [s for s in unconstrained if s.get("name") == "flexibleRollout"]
    titled = [s for s in disabled if s.get("title") == STRATEGY_TITLE]
    found = titled or disabled
    return found[0] if found else None


def _rollout_of(strategy: dict[str, Any]) -> int | None:
    try:
        return int(float(str(strategy.get("parameters", {}).get("rollout"))))
    except ValueError:
        return None


def previous_share(environment: dict[str, Any]) -> float | None:
    """The share (0..100) of users on the previous model, from a feature-environment document."""
    if not environment.get("enabled"):
        return 100.0
    try:
        strategy = _managed(environment.get("strategies") or [])
    except _Ambiguous:
        return None
    if strategy is None or not _active(strategy):
        return None
    rollout = _rollout_of(strategy)
    return None if rollout is None else float(100 - rollout)


def _candidate_variant(variants: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The variant named ``name``, else the only variant; None when there is neither."""
    named = [v for v in variants if isinstance(v, dict) and v.get("name") == name]
    if named:
        return named[0]
    return variants[0] if len(variants) == 1 and isinstance(variants[0], dict) else None


def payload_release(payload: object, key: str | None) -> str | None:
    """The release a variant payload ``{type, value}`` names (string: itself; json: the object's key)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("value"), str):
        return None
    kind, value = payload.get("type"), payload["value"]
    if kind == "string":
        return named_release(value.strip(), key)
    if kind == "json":
        try:
            return named_release(json.loads(value), key)
        except ValueError:
            return None
    return None


def served_in(environment: dict[str, Any], target: Target) -> tuple[str | None, str]:
    """(the release the candidate cohort's variant names, or None; where it was found / why not)."""
    try:
        strategy = _managed(environment.get("strategies") or [])
    except _Ambiguous as exc:
        return None, f"cannot tell which strategy serves the candidate: {exc}"
    places = []
    if strategy is not None:
        places.append((f"strategy {strategy.get('title') or strategy.get('id')}", strategy.get("variants") or []))
    places.append(("environment", environment.get("variants") or []))
    for where, variants in places:
        variant = _candidate_variant([v for v in variants if isinstance(v, dict)], target.candidate_variant)
        if variant is None:
            continue
        release = payload_release(variant.get("payload"), target.release_key)
        if release is not None:
            return release, f"{where} variant {variant.get('name')!r} carries release {release!r}"
    return None, ("no variant of the candidate cohort carries a release in its payload (give the strategy a "
                  f"variant {target.candidate_variant!r} with the release as a string payload)")


class UnleashProvider(ProjectFlagAdapter):
    """Moves users between a flag's previous (disabled) and candidate (enabled) cohorts in Unleash."""

    system = SYSTEM
    default_project = DEFAULT_PROJECT
    default_environment = DEFAULT_ENVIRONMENT

    def __init__(
        self,
        url: str | None,
        api_token: str | None,
        client: httpx.AsyncClient | None = None,
        *,
        disable_environment_at_full_revert: bool = False,
    ) -> None:
        if not url:
            raise configuration_error(SYSTEM, "settings", "no Unleash URL is configured; set UNSHIP_UNLEASH_URL")
        if not api_token:
            raise configuration_error(
                SYSTEM, "settings", "no Unleash admin token is configured; set UNSHIP_UNLEASH_API_TOKEN"
            )
        self._base = url.rstrip("/")
        self._base = self._base.removesuffix("/api")
        self._headers = {"Authorization": api_token}
        self._kill_switch = disable_environment_at_full_revert
        self._use_client(client)

    def _env_url(self, target: Target) -> str:
        project, environment = self._where(target)
        return (f"{self._base}/api/admin/projects/{segment(project)}/features/{segment(target.key)}"
                f"/environments/{segment(environment)}")

    async def _call(self, target: Target, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        return await send(self._client, SYSTEM, self._obj(target), method, self._env_url(target) + path,
                          headers=self._headers, **kwargs)

    async def _environment(self, target: Target) -> dict[str, Any]:
        body = json_body(SYSTEM, self._obj(target), await self._call(target, "GET"))
        if not isinstance(body, dict):
            raise configuration_error(SYSTEM, self._obj(target), "unexpected answer; check the Unleash URL")
        return body

    async def get_previous_percent(self, target: Target) -> float | None:
        return previous_share(await self._environment(target))

    async def served_release(self, target: Target) -> tuple[str | None, str]:
        """The release the candidate cohort's variant payload names (None when Unleash does not say)."""
        release, evidence = served_in(await self._environment(target), target)
        return release, f"Unleash {self._obj(target)}: {evidence}"

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        obj = self._obj(target)
        rollout = whole_rollout(percent)
        wanted = float(100 - rollout)
        turn_off = self._kill_switch and rollout == 0
        environment = await self._environment(target)
        strategies = environment.get("strategies") or []
        try:
            strategy = _managed(strategies)
        except _Ambiguous as exc:
            raise configuration_error(
                SYSTEM, obj, f"cannot tell which strategy holds the cohort split: {exc}; "
                "keep a single unconstrained flexibleRollout strategy in that environment"
            ) from exc
        enabled = bool(environment.get("enabled"))
        if not enabled and rollout == 0:
            return False  # a disabled environment already keeps everyone on the previous model
        if enabled and not turn_off and strategy is not None and _active(strategy) \
                and _rollout_of(strategy) == rollout:
            return False

        if strategy is None:
            await self._call(target, "POST", "/strategies", json={
                "name": "flexibleRollout",
                "title": STRATEGY_TITLE,
                "disabled": False,
                "parameters": {"rollout": str(rollout), "stickiness": "userId", "groupId": target.key},
                "constraints": [],
                "segments": [],
            })
        elif _rollout_of(strategy) != rollout or not _active(strategy):
            patch: list[dict[str, Any]] = [{"op": "replace", "path": "/parameters/rollout", "value": str(rollout)}]
            if not _active(strategy):
                patch.append({"op": "replace", "path": "/disabled", "value": False})
            await self._call(target, "PATCH", f"/strategies/{segment(str(strategy['id']))}", json=patch)
        if turn_off and enabled:
            await self._call(target, "POST", "/off")
        elif not turn_off and not enabled:
            # Safe now: an enabled unship strategy exists, so Unleash does not add its 100% default one.
            await self._call(target, "POST", "/on")

        seen = previous_share(await self._environment(target))
        if not same_percent(seen, wanted):
            raise readback_mismatch(SYSTEM, obj, wanted, seen)
        return True
