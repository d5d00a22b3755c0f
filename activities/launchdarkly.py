"""LaunchDarkly as a ``FlagProvider``, through the REST API v2 and semantic patch.

Model: the flag ``target.key`` in project ``target.project or "default"`` and environment
``target.environment or "production"``. ``previous_variant`` / ``candidate_variant`` name two of the flag's
variations (matched by variation ``name``, else by its value as text). The cohort split is the environment's
**fallthrough** (the users no targeting rule matches): a percentage rollout with weights in thousandths,
``previous = round(percent * 1000)`` and ``candidate = 100000 - previous``. The rollout's ``bucketBy`` and
context kind are kept, and with two weighted variations LaunchDarkly's bucketing is monotone, so a user moved
back stays back while the previous share grows. Individual targets and rules are left alone.

- A flag that is off serves its off variation to everyone: reading gives 100% when that is the previous
  variation. Writing a share below 100% to a flag that is off also turns it on (same semantic patch).
- ``turn_off_at_full_revert=True`` also turns the flag off at 100% (a kill switch); this needs the flag's off
  variation to be the previous one.

Which release the candidate serves (``served_release``, checked before the first write): the candidate
variation's value when it names one (a JSON object's ``target.release_key``, default ``release``/``version``/
``model``; without a ``release_key``, also a string other than the variation's name), else the flag's custom property
``target.release_key or "candidate_release"`` (``customProperties.<key>.value``, one value). Neither: unship
cannot tell, and says so in the audit trail.

Pending changes: LaunchDarkly answers 400 to a change that would make a pending scheduled change or approval
request of the flag fail, unless ``?ignoreConflicts=true`` (API docs, "Update feature flag"). Overriding
someone's pending release plan is a product decision, so it is the target's ``override_pending_changes``
(default false). By default a 400 is explained: unship lists the environment's scheduled changes and pending
approval requests and, if there are any, fails non-retryably with ``LaunchDarkly.pending_changes`` naming each
of them (id, when, what, who asked), so the stage halts with that reason instead of "check the playbook".

Errors: 429 is retried after ``X-Ratelimit-Reset`` (ms since the epoch) or ``Retry-After``; 405 means the
environment requires an approval for this change: never retried, a person must request/apply it in
LaunchDarkly. 409 (concurrent update) and 5xx are retried.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.exceptions import ApplicationError

from activities.errors import configuration_error, http_failure
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

SYSTEM = "LaunchDarkly"
API_VERSION = "20240415"
SEMANTIC_PATCH = "application/json; domain-model=launchdarkly.semanticpatch"
DEFAULT_PROJECT = "default"
DEFAULT_ENVIRONMENT = "production"
TOTAL_WEIGHT = 100_000
OPEN_APPROVAL_STATUSES = frozenset({"pending", "scheduled"})


def rate_limit_delay(response: httpx.Response, now: float | None = None) -> timedelta | None:
    """How long to wait after a 429: ``X-Ratelimit-Reset`` (epoch ms) first, then ``Retry-After`` (s)."""
    reset = response.headers.get("X-Ratelimit-Reset")
    if reset:
        try:
            seconds = float(reset) / 1000.0 - (time.time() if now is None else now)
            return timedelta(seconds=max(seconds, 0.0))
        except ValueError:
            pass
    after = response.headers.get("Retry-After")
    if after:
        try:
            return timedelta(seconds=max(float(after), 0.0))
        except ValueError:
            return None
    return None


def launchdarkly_failure(system: str, obj: str, response: httpx.Response) -> ApplicationError:
    """``http_failure`` plus LaunchDarkly's rate-limit reset header and its meaning of 405."""
    if response.status_code == 405:
        return ApplicationError(
            f"{system}: {obj}: HTTP 405: approval required in that environment; request an approval for this "
            f"change in LaunchDarkly (or have an approver apply it) - unship will not retry "
            f"(answer: {response.text[:300].strip()})",
            type=f"{system}.approval_required",
            non_retryable=True,
        )
    error = http_failure(system, obj, response)
    if response.status_code == 429:
        delay = rate_limit_delay(response)
        return ApplicationError(error.message, type=error.type, non_retryable=False,
                                next_retry_delay=delay if delay else None)
    return error


def _when(epoch_ms: Any) -> str:
    if isinstance(epoch_ms, int | float) and not isinstance(epoch_ms, bool):
        return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "an unknown time"


def describe_pending(scheduled: list[dict[str, Any]], approvals: list[dict[str, Any]]) -> list[str]:
    """One line per pending scheduled change / open approval request."""
    lines = []
    for change in scheduled:
        kinds = ", ".join(str(i.get("kind")) for i in change.get("instructions") or [] if isinstance(i, dict))
        lines.append(f"scheduled change {change.get('_id')} at {_when(change.get('executionDate'))}"
                     + (f" ({kinds})" if kinds else ""))
    for request in approvals:
        if request.get("status") not in OPEN_APPROVAL_STATUSES:
            continue
        what = request.get("description") or "no description"
        lines.append(f"approval request {request.get('_id')} ({request.get('status')}, review "
                     f"{request.get('reviewStatus', '?')}, requested by {request.get('requestorId', '?')}): {what}")
    return lines


def _variation_index(variations: list[dict[str, Any]], wanted: str) -> int | None:
    for index, variation in enumerate(variations):
        if variation.get("name") == wanted:
            return index
    for index, variation in enumerate(variations):
        value = variation.get("value")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if text == wanted:
            return index
    return None


def previous_share(environment: dict[str, Any], previous_index: int) -> float | None:
    """The share (0..100) of fallthrough users served the variation at ``previous_index``."""
    if not environment.get("on", False):
        off = environment.get("offVariation")
        return None if off is None else (100.0 if off == previous_index else 0.0)
    fallthrough = environment.get("fallthrough") or {}
    rollout = fallthrough.get("rollout")
    if rollout:
        weights = {v.get("variation"): v.get("weight", 0) for v in rollout.get("variations", [])}
        return float(weights.get(previous_index, 0)) * 100.0 / TOTAL_WEIGHT
    if fallthrough.get("variation") is not None:
        return 100.0 if fallthrough["variation"] == previous_index else 0.0
    return None


class LaunchDarklyProvider(ProjectFlagAdapter):
    """Moves the fallthrough rollout of a LaunchDarkly flag between its previous and candidate variations."""

    system = SYSTEM
    default_project = DEFAULT_PROJECT
    default_environment = DEFAULT_ENVIRONMENT

    def __init__(
        self,
        api_token: str | None,
        url: str = "https://app.launchdarkly.com",
        client: httpx.AsyncClient | None = None,
        *,
        turn_off_at_full_revert: bool = False,
    ) -> None:
        if not api_token:
            raise configuration_error(
                SYSTEM, "settings", "no LaunchDarkly access token is configured; set UNSHIP_LAUNCHDARKLY_API_TOKEN"
            )
        self._base = url.rstrip("/")
        self._headers = {"Authorization": api_token, "LD-API-Version": API_VERSION}
        self._kill_switch = turn_off_at_full_revert
        self._use_client(client)

    def _url(self, target: Target) -> str:
        project, _ = self._where(target)
        return f"{self._base}/api/v2/flags/{segment(project)}/{segment(target.key)}"

    async def _flag(self, target: Target) -> tuple[dict[str, Any], dict[str, Any]]:
        """The flag and its environment's settings."""
        obj = self._obj(target)
        _, environment = self._where(target)
        response = await send(self._client, SYSTEM, obj, "GET", self._url(target), params={"env": environment},
                              headers=self._headers, failure=launchdarkly_failure)
        flag = json_body(SYSTEM, obj, response)
        env = (flag.get("environments") or {}).get(environment) if isinstance(flag, dict) else None
        if not isinstance(env, dict):
            raise configuration_error(SYSTEM, obj, f"the flag has no environment {environment!r}; "
                                                   "check the target's environment key")
        return flag, env

    async def _pending_changes(self, target: Target) -> list[str]:
        """The flag's pending scheduled changes and open approval requests in the target's environment."""
        project, environment = self._where(target)
        obj = self._obj(target)
        base = (f"{self._base}/api/v2/projects/{segment(project)}/flags/{segment(target.key)}"
                f"/environments/{segment(environment)}")
        found: list[list[dict[str, Any]]] = []
        for kind in ("scheduled-changes", "approval-requests"):
            response = await send(self._client, SYSTEM, obj, "GET", f"{base}/{kind}", headers=self._headers,
                                  failure=launchdarkly_failure)
            listing = json_body(SYSTEM, obj, response)
            items = listing.get("items") if isinstance(listing, dict) else None
            found.append([i for i in items or [] if isinstance(i, dict)])
        return describe_pending(found[0], found[1])

    def _indexes(self, target: Target, flag: dict[str, Any]) -> tuple[int, int]:
        variations = flag.get("variations") or []
        found = []
        for role, name in (("previous_variant", target.previous_variant),
                           ("candidate_variant", target.candidate_variant)):
            index = _variation_index(variations, name)
            if index is None:
                known = ", ".join(repr(v.get("name") or v.get("value")) for v in variations)
                raise configuration_error(SYSTEM, self._obj(target), f"{role} {name!r} is not a variation of the "
                                                                     f"flag (it has {known}); fix the playbook")
            found.append(index)
        if found[0] == found[1]:
            raise configuration_error(SYSTEM, self._obj(target),
                                      "previous_variant and candidate_variant name the same variation")
        return found[0], found[1]

    async def served_release(self, target: Target) -> tuple[str | None, str]:
        """The release the candidate variation names (its value, or the flag's custom property)."""
        flag, _ = await self._flag(target)
        _, candidate = self._indexes(target, flag)
        variation = flag["variations"][candidate]
        name = variation.get("name") or target.candidate_variant
        obj = f"{SYSTEM} {self._obj(target)}"
        release = named_release(variation.get("value"), target.release_key)
        if release is not None and release not in (name, target.candidate_variant):
            return release, f"{obj}: variation {name!r} serves {release!r}"
        key = target.release_key or "candidate_release"
        stated = ((flag.get("customProperties") or {}).get(key) or {}).get("value")
        if isinstance(stated, list) and len(stated) == 1 and named_release(stated[0]):
            return stated[0], f"{obj}: custom property {key} is {stated[0]!r}"
        return None, (f"{obj}: variation {name!r} names no release and the flag has no single-valued custom "
                      f"property {key}")

    async def get_previous_percent(self, target: Target) -> float | None:
        flag, env = await self._flag(target)
        previous, _ = self._indexes(target, flag)
        return previous_share(env, previous)

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        obj = self._obj(target)
        _, environment = self._where(target)
        flag, env = await self._flag(target)
        previous, candidate = self._indexes(target, flag)
        weight = round(percent * TOTAL_WEIGHT / 100)
        wanted = weight * 100.0 / TOTAL_WEIGHT
        turn_off = self._kill_switch and weight == TOTAL_WEIGHT
        if turn_off and env.get("offVariation") != previous:
            raise configuration_error(SYSTEM, obj, "cannot turn the flag off to revert: its off variation is not "
                                                   f"{target.previous_variant!r}; fix the off variation or the playbook")
        current = previous_share(env, previous)
        is_on = bool(env.get("on"))
        if same_percent(current, wanted) and not (turn_off and is_on):
            return False

        variations = flag["variations"]
        instructions: list[dict[str, Any]] = []
        if not is_on and not turn_off:
            instructions.append({"kind": "turnFlagOn"})
        rollout = {
            "kind": "updateFallthroughVariationOrRollout",
            "rolloutWeights": {variations[previous]["_id"]: weight, variations[candidate]["_id"]: TOTAL_WEIGHT - weight},
        }
        existing = (env.get("fallthrough") or {}).get("rollout") or {}
        if existing.get("bucketBy"):
            rollout["rolloutBucketBy"] = existing["bucketBy"]
        if existing.get("contextKind"):
            rollout["rolloutContextKind"] = existing["contextKind"]
        instructions.append(rollout)
        if turn_off and is_on:
            instructions.append({"kind": "turnFlagOff"})
        body = {
            "environmentKey": environment,
            "comment": f"unship {idempotency_key}: {wanted:g}% back to {target.previous_variant}",
            "instructions": instructions,
        }
        params = {"ignoreConflicts": "true"} if target.override_pending_changes else None
        try:
            await send(self._client, SYSTEM, obj, "PATCH", self._url(target), json=body, params=params,
                       headers={**self._headers, "Content-Type": SEMANTIC_PATCH}, failure=launchdarkly_failure)
        except ApplicationError as error:
            if error.type == f"{SYSTEM}.http_400" and not target.override_pending_changes:
                try:
                    pending = await self._pending_changes(target)
                except ApplicationError as lookup:
                    raise ApplicationError(f"{error.message} (could not list the flag's pending changes to "
                                           f"explain it: {lookup.message})", type=error.type,
                                           non_retryable=True) from None
                if pending:
                    raise ApplicationError(
                        f"{SYSTEM}: {obj}: the flag has pending changes this revert would make fail: "
                        + "; ".join(pending) + ". unship did not move any users. Apply, reschedule or cancel them "
                        "in LaunchDarkly and revert again, or set override_pending_changes: true on this target "
                        "to write over them",
                        type=f"{SYSTEM}.pending_changes",
                        non_retryable=True,
                    ) from None
            raise

        _, env = await self._flag(target)
        seen = previous_share(env, previous)
        if not same_percent(seen, wanted) or (turn_off and env.get("on")):
            raise readback_mismatch(SYSTEM, obj, wanted, seen)
        return True
