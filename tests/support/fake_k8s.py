"""A local server speaking the Kubernetes API shape for KServe InferenceServices (one resource kind).

``GET`` and ``PATCH`` (``application/merge-patch+json`` only; other patch types get 415, as for CRDs) on
``/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``, bearer-token auth, errors as
``Status`` objects (404 NotFound, 409 Conflict on a stale ``metadata.resourceVersion``), and a small fake
controller that follows KServe's Serverless-mode rules, read in kserve/kserve:

- ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``, ``createKnativeService``:
  one Knative Service per component (predictor, transformer, explainer). With ``canaryTrafficPercent`` set and a
  ``latestRolledoutRevision`` known, the route is ``[latestRevision: canary%, revisionName:
  latestRolledoutRevision (tag "prev"): (100 - canary)%]``; without it (or with 100), ``[latestRevision: 100%]``.
  The remainder goes to ``latestRolledoutRevision`` *as it is at that reconcile*: right after a promotion that is
  the latest revision itself, so the first status after a canary patch splits traffic over the SAME revision.
- ``pkg/apis/serving/v1beta1/inference_service_status.go``, ``PropagateStatus``: per component, a latest revision
  at 100% becomes ``latestRolledoutRevision`` (the old one becomes ``previousRolledoutRevision``); when the latest
  revision is already the rolled-out one and its traffic is split under 100% over itself, ``latestRolledoutRevision``
  goes back to ``previousRolledoutRevision``, so the NEXT reconcile routes the remainder there. ``status.traffic``
  is the Knative Service's traffic (the ``latestRevision`` entry resolved to the latest ready revision's name).
  ``status.observedGeneration`` is the Knative Service's ``observedGeneration`` of the component propagated last
  (the controller reconciles predictor, then transformer, then explainer), NOT the InferenceService's
  ``metadata.generation``: a predictor patch on an InferenceService with a transformer never raises it.

Timing: the controller is asynchronous. A PATCH answers the object with the old status; each later GET first
runs one reconcile pass (after ``status_lag`` GETs that still see the old status), until a pass changes nothing.
So a reader sees every intermediate status KServe would show, in order.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.support.fake_http import Answer, FakeServer, Request

PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"
# The order in which the InferenceService controller reconciles components (controller.go): the last one's
# Knative observedGeneration is what status.observedGeneration shows.
COMPONENTS = ("predictor", "transformer", "explainer")


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


def desired_route(canary: int | None, component_status: dict[str, Any]) -> list[dict[str, Any]]:
    """``createKnativeService``'s traffic targets for one component."""
    rolled_out = component_status.get("latestRolledoutRevision") or ""
    if canary is not None and rolled_out:
        route: list[dict[str, Any]] = [{"latestRevision": True, "percent": canary}]
        if canary < 100:
            route.append({"revisionName": rolled_out, "latestRevision": False, "percent": 100 - canary,
                          "tag": "prev"})
        return route
    return [{"latestRevision": True, "percent": 100}]


def propagate(component_status: dict[str, Any], traffic: list[dict[str, Any]]) -> None:
    """``PropagateStatus``'s rolled-out bookkeeping for one component, then its traffic."""
    latest_ready = component_status.get("latestReadyRevision")
    latest_created = component_status.get("latestCreatedRevision")
    per_revision: dict[str, int] = {}
    for entry in traffic:
        per_revision[entry["revisionName"]] = per_revision.get(entry["revisionName"], 0) + entry["percent"]
    for entry in traffic:
        if entry["revisionName"] != latest_ready or not entry.get("latestRevision"):
            continue
        if component_status.get("latestRolledoutRevision") != latest_ready:
            if entry["percent"] == 100:
                component_status["previousRolledoutRevision"] = component_status.get("latestRolledoutRevision")
                component_status["latestRolledoutRevision"] = latest_ready
        elif (latest_ready == latest_created and entry["percent"] < 100
              and per_revision.get(entry["revisionName"]) == 100 and component_status.get("previousRolledoutRevision")):
            # the split is over the rolled-out revision itself: roll the bookkeeping back to the previous one
            component_status["latestRolledoutRevision"] = component_status["previousRolledoutRevision"]
    component_status["traffic"] = traffic


class FakeKubernetes(FakeServer):
    """State: ``objects[(namespace, name)]``; ``patches_applied`` counts PATCHes that changed an object.

    ``ksvcs[(namespace, name, component)]`` are the Knative Services the controller owns (``generation``,
    ``observedGeneration``, ``route``).
    """

    def __init__(self, token: str = "k8s-test-token") -> None:
        super().__init__()
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.ksvcs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.patches_applied = 0
        self.status_lag = 0
        self._pending: dict[tuple[str, str], int] = {}
        self._version = 100

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def add_inference_service(self, namespace: str, name: str, *, previous: str, latest: str,
                              canary: int | None = None, promoted: bool = True,
                              transformer: str | None = None, labels: dict[str, str] | None = None) -> None:
        """An isvc whose predictor has revisions ``previous`` then ``latest`` (already reconciled).

        ``promoted=True``: ``latest`` was rolled out and ``previous`` is ``previousRolledoutRevision``;
        ``False``: ``latest`` is a canary in flight over ``previous`` (the last rolled-out revision).
        ``transformer``: the name of the single revision of a transformer component (none by default).
        """
        spec: dict[str, Any] = {"predictor": {"model": {"modelFormat": {"name": "huggingface"},
                                                        "storageUri": f"s3://models/{latest}"}}}
        if canary is not None:
            spec["predictor"]["canaryTrafficPercent"] = canary
        components: dict[str, Any] = {"predictor": {
            "latestCreatedRevision": latest, "latestReadyRevision": latest,
            "latestRolledoutRevision": latest if promoted else previous,
            "previousRolledoutRevision": previous if promoted else None,
        }}
        if transformer:
            spec["transformer"] = {"containers": [{"name": "kserve-container", "image": "prompt-transformer:1"}]}
            components["transformer"] = {"latestCreatedRevision": transformer, "latestReadyRevision": transformer,
                                         "latestRolledoutRevision": transformer}
        isvc = {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            # two spec versions so far: the first model, then the latest one
            "metadata": {"name": name, "namespace": namespace, "generation": 2,
                         "resourceVersion": self._next_version(), **({"labels": dict(labels)} if labels else {})},
            "spec": spec,
            "status": {"observedGeneration": 0, "conditions": [{"type": "Ready", "status": "True"}],
                       "components": components},
        }
        with self.lock:
            for component in components:
                # the predictor's Knative Service went through create + new model; a transformer only create
                generation = 2 if component == "predictor" else 1
                self.ksvcs[(namespace, name, component)] = {"generation": generation, "observedGeneration": generation,
                                                            "route": None}
            self.objects[(namespace, name)] = isvc
            while self._reconcile_pass(namespace, name):
                pass

    def inference_service(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.objects[(namespace, name)])

    def traffic(self, namespace: str, name: str, component: str = "predictor") -> dict[str, int]:
        """Percent per revision name, as status shows it now (summed when one revision has several entries)."""
        with self.lock:
            entries = self.objects[(namespace, name)]["status"]["components"][component]["traffic"]
            shares: dict[str, int] = {}
            for entry in entries:
                shares[entry["revisionName"]] = shares.get(entry["revisionName"], 0) + entry["percent"]
            return shares

    def settle(self, namespace: str, name: str) -> None:
        """Let the controller run until nothing changes (what a cluster does given time)."""
        with self.lock:
            self._pending.pop((namespace, name), None)
            while self._reconcile_pass(namespace, name):
                pass

    def _reconcile_pass(self, namespace: str, name: str) -> bool:
        """One controller reconcile of every component, in order; True when status changed."""
        isvc = self.objects[(namespace, name)]
        before = copy.deepcopy(isvc["status"])
        for component in COMPONENTS:
            spec = isvc["spec"].get(component)
            if spec is None or component not in isvc["status"]["components"]:
                continue
            component_status = isvc["status"]["components"][component]
            ksvc = self.ksvcs[(namespace, name, component)]
            route = desired_route(spec.get("canaryTrafficPercent"), component_status)
            if route != ksvc["route"]:
                if ksvc["route"] is not None:
                    ksvc["generation"] += 1
                ksvc["route"] = route
            ksvc["observedGeneration"] = ksvc["generation"]  # Knative applies the route at once here
            resolved = [{**entry, "revisionName": entry.get("revisionName") or component_status["latestReadyRevision"]}
                        for entry in route]
            propagate(component_status, resolved)
            isvc["status"]["observedGeneration"] = ksvc["observedGeneration"]
        return isvc["status"] != before

    def _tick(self, key: tuple[str, str]) -> None:
        """The controller's progress between two GETs."""
        waiting = self._pending.get(key)
        if waiting is None:
            return
        if waiting > 0:
            self._pending[key] = waiting - 1
            return
        if not self._reconcile_pass(*key):
            del self._pending[key]

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
            self._tick(key)
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
        for component in COMPONENTS:
            canary = ((patch.get("spec") or {}).get(component) or {}).get("canaryTrafficPercent")
            if canary is not None and (not isinstance(canary, int) or not 0 <= canary <= 100):
                return Answer(422, status_object(422, "Invalid",
                                                 f"spec.{component}.canaryTrafficPercent: Invalid value"))
        new_spec = merge_patch(isvc["spec"], patch.get("spec") or {})
        if new_spec != isvc["spec"]:
            isvc["spec"] = new_spec
            isvc["metadata"]["generation"] += 1
            isvc["metadata"]["resourceVersion"] = self._next_version()
            self.patches_applied += 1
            self._pending[key] = self.status_lag
        return Answer(200, copy.deepcopy(isvc))
