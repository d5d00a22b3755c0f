"""A local server speaking the Kubernetes API shape for KServe InferenceServices (one resource kind).

``GET`` and ``PATCH`` (``application/merge-patch+json`` only; other patch types get 415, as for CRDs) on
``/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``, bearer-token auth, errors as
``Status`` objects (404 NotFound, 409 Conflict on a stale ``metadata.resourceVersion``), and a small fake
controller that recomputes ``status.components.predictor`` the way KServe's Serverless mode does:

- no ``canaryTrafficPercent`` (or 100): the latest revision is promoted and gets all traffic;
- otherwise the latest revision gets ``canaryTrafficPercent`` and the rest goes to ``latestRolledoutRevision``
  while a canary is in flight, or to ``previousRolledoutRevision`` after a promotion (so 0 rolls back).

``status_lag`` makes the controller apply a change only after that many further GETs (status lags spec).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.support.fake_http import Answer, FakeServer, Request

PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_object(code: int, reason: str, message: str, name: str | None = None) -> dict[str, Any]:
    details = {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"} if name else {}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}


class FakeKubernetes(FakeServer):
    """State: ``objects[(namespace, name)]``; ``patches_applied`` counts PATCHes that changed an object."""

    def __init__(self, token: str = "k8s-test-token") -> None:
        super().__init__()
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches_applied = 0
        self.status_lag = 0
        self._pending: dict[tuple[str, str], int] = {}
        self._version = 100

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def add_inference_service(self, namespace: str, name: str, *, previous: str, latest: str,
                              canary: int | None = None, promoted: bool = True) -> None:
        """An isvc whose predictor has revisions ``previous`` then ``latest``.

        ``promoted=True``: ``latest`` was rolled out and ``previous`` is ``previousRolledoutRevision``;
        ``False``: ``latest`` is a canary in flight over ``previous`` (the last rolled-out revision).
        """
        predictor_spec: dict[str, Any] = {"model": {"modelFormat": {"name": "huggingface"},
                                                    "storageUri": f"s3://models/{latest}"}}
        if canary is not None:
            predictor_spec["canaryTrafficPercent"] = canary
        isvc = {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace, "generation": 1,
                         "resourceVersion": self._next_version()},
            "spec": {"predictor": predictor_spec},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}],
                       "components": {"predictor": {
                           "latestCreatedRevision": latest, "latestReadyRevision": latest,
                           "latestRolledoutRevision": latest if promoted else previous,
                           "previousRolledoutRevision": previous if promoted else None,
                       }}},
        }
        self._reconcile(isvc)
        with self.lock:
            self.objects[(namespace, name)] = isvc

    def inference_service(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.objects[(namespace, name)])

    @staticmethod
    def _reconcile(isvc: dict[str, Any]) -> None:
        predictor = isvc["status"]["components"]["predictor"]
        latest = predictor["latestReadyRevision"]
        canary = isvc["spec"]["predictor"].get("canaryTrafficPercent")
        if canary is None or canary == 100:
            if predictor["latestRolledoutRevision"] != latest:
                predictor["previousRolledoutRevision"] = predictor["latestRolledoutRevision"]
                predictor["latestRolledoutRevision"] = latest
            traffic = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
        else:
            rolled_out = predictor["latestRolledoutRevision"]
            rest = rolled_out if rolled_out != latest else predictor["previousRolledoutRevision"]
            traffic = [{"revisionName": latest, "percent": canary, "latestRevision": True, "tag": "latest"},
                       {"revisionName": rest, "percent": 100 - canary, "latestRevision": False, "tag": "prev"}]
        predictor["traffic"] = traffic
        isvc["status"]["observedGeneration"] = isvc["metadata"]["generation"]

    def error_answer(self, status: int, request: Request) -> Answer:
        reasons = {404: "NotFound", 409: "Conflict", 429: "TooManyRequests", 500: "InternalError",
                   503: "ServiceUnavailable", 401: "Unauthorized", 403: "Forbidden"}
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return Answer(status, status_object(status, reasons.get(status, "Unknown"), f"scripted HTTP {status}"),
                      headers)

    def handle(self, request: Request) -> Answer:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Answer(401, status_object(401, "Unauthorized", "Unauthorized"))
        if not request.path.startswith(PREFIX):
            return Answer(404, status_object(404, "NotFound", "the server could not find the requested resource"))
        parts = request.path[len(PREFIX):].split("/")
        if len(parts) != 3 or parts[1] != "inferenceservices":
            return Answer(404, status_object(404, "NotFound", "the server could not find the requested resource"))
        key = (parts[0], parts[2])
        isvc = self.objects.get(key)
        if isvc is None:
            return Answer(404, status_object(404, "NotFound",
                                             f'inferenceservices.serving.kserve.io "{parts[2]}" not found', parts[2]))
        if request.method == "GET":
            if key in self._pending:
                self._pending[key] -= 1
                if self._pending[key] <= 0:
                    del self._pending[key]
                    self._reconcile(isvc)
            return Answer(200, copy.deepcopy(isvc))
        if request.method == "PATCH":
            return self._patch(key, isvc, request)
        return Answer(405, status_object(405, "MethodNotAllowed", "the server does not allow this method"))

    def _patch(self, key: tuple[str, str], isvc: dict[str, Any], request: Request) -> Answer:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/merge-patch+json":
            return Answer(415, status_object(415, "UnsupportedMediaType",
                                             "the body of the request was in an unknown format - accepted media "
                                             "types include: application/json-patch+json, "
                                             "application/merge-patch+json, application/apply-patch+yaml"))
        try:
            patch = json.loads(request.body)
        except ValueError:
            return Answer(400, status_object(400, "BadRequest", "invalid JSON"))
        wanted_version = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_version is not None and wanted_version != isvc["metadata"]["resourceVersion"]:
            return Answer(409, status_object(409, "Conflict", f'Operation cannot be fulfilled on inferenceservices.'
                                             f'serving.kserve.io "{key[1]}": the object has been modified; please '
                                             f'apply your changes to the latest version and try again', key[1]))
        canary = ((patch.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        if canary is not None and (not isinstance(canary, int) or not 0 <= canary <= 100):
            return Answer(422, status_object(422, "Invalid", "spec.predictor.canaryTrafficPercent: Invalid value"))
        new_spec = merge_patch(isvc["spec"], patch.get("spec") or {})
        if new_spec != isvc["spec"]:
            isvc["spec"] = new_spec
            isvc["metadata"]["generation"] += 1
            isvc["metadata"]["resourceVersion"] = self._next_version()
            self.patches_applied += 1
            if self.status_lag:
                self._pending[key] = self.status_lag
            else:
                self._reconcile(isvc)
        return Answer(200, copy.deepcopy(isvc))
