"""A local server speaking LaunchDarkly's REST API v2 shapes for flags (GET flag, semantic-patch PATCH).

Only what unship uses, as documented (sources: LaunchDarkly's OpenAPI spec as rendered at
https://launchdarkly.com/docs/api and in ``launchdarkly/api-client-python`` ``docs/FeatureFlagsApi.md``):

- ``GET /api/v2/flags/{project}/{flag}?env=`` returns the flag with ``variations[{_id, value, name}]``,
  ``environments.<env>.{on, offVariation, fallthrough}`` and, when set, ``customProperties`` (a mapping of keys to
  ``{name, value: [strings]}``) ("Get feature flag"; the API clients' ``FeatureFlag.custom_properties``).
- ``PATCH /api/v2/flags/{project}/{flag}`` with ``Content-Type: application/json; domain-model=
  launchdarkly.semanticpatch`` applies ``turnFlagOn``, ``turnFlagOff`` and ``updateFallthroughVariationOrRollout``
  (weights in thousandths adding up to 100000) ("Update feature flag", "Using semantic patches").
- Pending changes ("Update feature flag", query parameter ``ignoreConflicts``): "If a flag configuration change
  made through this endpoint would cause a pending scheduled change or approval request to fail, this endpoint
  will return a 400. You can ignore this check by setting this parameter to true." The fake keeps scheduled
  changes (``schedule_change``) and approval requests (``request_approval``) per environment and answers 400
  ``invalid_request`` to any PATCH that changes that environment while one is pending, unless
  ``?ignoreConflicts=true``. (LaunchDarkly decides conflicts semantically; "any change conflicts" is the fake's
  simplification, and the message wording is not documented.) They are listed by
  ``GET /api/v2/projects/{p}/flags/{f}/environments/{e}/scheduled-changes`` ("List scheduled changes": ``items``
  with ``_id``, ``executionDate`` in epoch ms, ``instructions``) and ``.../approval-requests`` ("List approval
  requests for a flag": ``items`` with ``_id``, ``status`` pending|scheduled|failed|completed, ``reviewStatus``,
  ``description``, ``requestorId``).
- Errors use LaunchDarkly's ``{"code", "message", "id"}`` body. Environments can be marked as requiring approval
  (PATCH answers 405), and 429s carry ``X-Ratelimit-Reset`` (epoch ms) and ``Retry-After`` (API docs, "Rate
  limiting").
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from tests.support.fake_http import Answer, FakeServer, Request

_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 429: "rate_limited", 500: "internal_server_error",
          502: "bad_gateway", 503: "service_unavailable"}


class FakeLaunchDarkly(FakeServer):
    """State: ``flags[(project, key)]``; ``patches_applied`` counts semantic patches that changed a flag."""

    def __init__(self, token: str = "api-test-token") -> None:
        super().__init__()
        self.token = token
        self.flags: dict[tuple[str, str], dict[str, Any]] = {}
        self.approval_required: set[str] = set()
        self.scheduled_changes: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.approval_requests: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.patches_applied = 0
        self.rate_limit_reset_in = 2.0

    def add_flag(self, project: str, key: str, variations: list[tuple[str, Any]],
                 environments: tuple[str, ...] = ("production", "test"), *, on: bool = True,
                 fallthrough_variation: int = 1, off_variation: int = 0,
                 custom_properties: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """A flag whose fallthrough serves ``variations[fallthrough_variation]`` to everyone; ``custom_properties``
        become the flag's ``customProperties`` (``{key: {name, value: [...]}}``, as "Get feature flag" shows)."""
        flag: dict[str, Any] = {
            "key": key, "name": key, "kind": "multivariate", "_version": 1,
            "variations": [{"_id": str(uuid.uuid4()), "name": name, "value": value} for name, value in variations],
            "environments": {
                env: {"on": on, "archived": False, "salt": uuid.uuid4().hex, "version": 1,
                      "offVariation": off_variation, "fallthrough": {"variation": fallthrough_variation},
                      "rules": [], "targets": []}
                for env in environments
            },
        }
        if custom_properties:
            flag["customProperties"] = {k: {"name": k, "value": list(v)} for k, v in custom_properties.items()}
        with self.lock:
            self.flags[(project, key)] = flag
        return flag

    def schedule_change(self, project: str, key: str, env: str, instructions: list[dict[str, Any]],
                        execution_date_ms: int) -> dict[str, Any]:
        """A pending scheduled change of the flag in ``env`` (what a release plan leaves behind)."""
        change = {"_id": uuid.uuid4().hex[:24], "_creationDate": int(time.time() * 1000), "_maintainerId": "m1",
                  "_version": 1, "executionDate": execution_date_ms, "instructions": instructions}
        with self.lock:
            self.scheduled_changes.setdefault((project, key, env), []).append(change)
        return change

    def request_approval(self, project: str, key: str, env: str, description: str,
                         status: str = "pending") -> dict[str, Any]:
        """An approval request on the flag in ``env`` (pending until someone applies it)."""
        request = {"_id": uuid.uuid4().hex[:24], "_version": 1, "creationDate": int(time.time() * 1000),
                   "requestorId": "m2", "description": description, "status": status, "reviewStatus": "pending",
                   "instructions": [], "allReviews": []}
        with self.lock:
            self.approval_requests.setdefault((project, key, env), []).append(request)
        return request

    def _pending(self, project: str, key: str, env: str) -> bool:
        approvals = [a for a in self.approval_requests.get((project, key, env), [])
                     if a["status"] in ("pending", "scheduled")]
        return bool(self.scheduled_changes.get((project, key, env)) or approvals)

    def environment(self, project: str, key: str, env: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.flags[(project, key)]["environments"][env])

    def error_answer(self, status: int, request: Request) -> Answer:
        headers = {}
        if status == 429:
            headers = {"X-Ratelimit-Reset": str(int((time.time() + self.rate_limit_reset_in) * 1000)),
                       "X-Ratelimit-Route-Remaining": "0"}
        return Answer(status, {"code": _CODES.get(status, "error"), "message": f"scripted HTTP {status}",
                               "id": uuid.uuid4().hex}, headers)

    def _error(self, status: int, message: str) -> Answer:
        return Answer(status, {"code": _CODES.get(status, "error"), "message": message, "id": uuid.uuid4().hex})

    def handle(self, request: Request) -> Answer:
        if request.headers.get("authorization") != self.token:
            return self._error(401, "Invalid access token")
        parts = request.path.strip("/").split("/")
        if len(parts) == 9 and parts[:3] == ["api", "v2", "projects"] and parts[4] == "flags" \
                and parts[6] == "environments" and parts[8] in ("scheduled-changes", "approval-requests"):
            if (parts[3], parts[5]) not in self.flags:
                return self._error(404, "Unknown resource")
            kept = self.scheduled_changes if parts[8] == "scheduled-changes" else self.approval_requests
            items = copy.deepcopy(kept.get((parts[3], parts[5], parts[7]), []))
            return Answer(200, {"items": items, "totalCount": len(items), "_links": {}})
        if len(parts) != 5 or parts[:3] != ["api", "v2", "flags"]:
            return self._error(404, "Unknown resource")
        flag = self.flags.get((parts[3], parts[4]))
        if flag is None:
            return self._error(404, "Unknown resource")
        if request.method == "GET":
            shown = copy.deepcopy(flag)
            if "env" in request.query:
                wanted = set(request.query["env"])
                shown["environments"] = {k: v for k, v in shown["environments"].items() if k in wanted}
            return Answer(200, shown)
        if request.method == "PATCH":
            return self._semantic_patch(parts[3], flag, request)
        return self._error(405, "Method not allowed")

    def _semantic_patch(self, project: str, flag: dict[str, Any], request: Request) -> Answer:
        if "domain-model=launchdarkly.semanticpatch" not in request.headers.get("content-type", ""):
            return self._error(400, "This fake only speaks semantic patch")
        body = request.json()
        env_key = body.get("environmentKey")
        env = flag["environments"].get(env_key)
        if env is None:
            return self._error(400, f"Unknown environment key {env_key!r}")
        if env_key in self.approval_required:
            return self._error(405, "This environment requires approval for flag changes")
        changed = copy.deepcopy(env)
        ids = {v["_id"]: i for i, v in enumerate(flag["variations"])}
        for instruction in body.get("instructions") or []:
            kind = instruction.get("kind")
            if kind == "turnFlagOn":
                changed["on"] = True
            elif kind == "turnFlagOff":
                changed["on"] = False
            elif kind == "updateFallthroughVariationOrRollout":
                if "variationId" in instruction:
                    if instruction["variationId"] not in ids:
                        return self._error(400, "unknown variationId")
                    changed["fallthrough"] = {"variation": ids[instruction["variationId"]]}
                    continue
                weights = instruction.get("rolloutWeights") or {}
                if any(k not in ids for k in weights) or sum(weights.values()) != 100_000 \
                        or any(not isinstance(w, int) or w < 0 for w in weights.values()):
                    return self._error(400, "rolloutWeights must name variations and add up to 100000")
                rollout: dict[str, Any] = {"variations": [{"variation": ids[k], "weight": w}
                                                          for k, w in weights.items()]}
                if instruction.get("rolloutBucketBy"):
                    rollout["bucketBy"] = instruction["rolloutBucketBy"]
                if instruction.get("rolloutContextKind"):
                    rollout["contextKind"] = instruction["rolloutContextKind"]
                changed["fallthrough"] = {"rollout": rollout}
            else:
                return self._error(400, f"unknown instruction kind {kind!r}")
        if changed != env and self._pending(project, flag["key"], env_key) \
                and request.query.get("ignoreConflicts", ["false"])[-1] != "true":
            return self._error(400, "This change conflicts with pending scheduled changes or approval requests on "
                                    f"this flag in {env_key!r}; set ignoreConflicts=true to apply it anyway")
        if changed != env:
            changed["version"] += 1
            flag["environments"][env_key] = changed
            flag["_version"] += 1
            self.patches_applied += 1
        return Answer(200, copy.deepcopy(flag))
