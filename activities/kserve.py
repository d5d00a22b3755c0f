"""KServe InferenceService canary traffic as a ``FlagProvider``, through the Kubernetes API.

Model: the InferenceService ``target.key`` (``serving.kserve.io/v1beta1``) in namespace
``target.namespace or "default"``, in Serverless (Knative) mode, and one of its components,
``target.component or "predictor"`` (a release can live in the transformer or explainer too). The **candidate**
is that component's latest ready revision; the **previous** model is every *other revision name* that gets
traffic (the last rolled-out one while a canary is in flight, ``previousRolledoutRevision`` after a promotion).
So:

- write: a JSON merge patch of ``spec.<component>.canaryTrafficPercent = 100 - previous_percent`` (a whole
  number, rounded half up), with ``metadata.resourceVersion`` for optimistic concurrency (409 is retried). At
  100% previous this is ``canaryTrafficPercent: 0``, which pins all traffic to the last good revision (KServe's
  documented roll back); at 0% it is 100 (promotion).
- read: ``status.components.<component>.traffic``: the percent on revisions whose name is not the candidate's.
  Entries are counted by revision name, never by their ``latestRevision`` flag: right after a promotion KServe
  first routes the "prev" remainder to ``latestRolledoutRevision``, which is then the candidate itself
  (kserve ``ksvc_reconciler.go`` ``createKnativeService``), and moves it to the previous revision only on a later
  reconcile (``inference_service_status.go`` ``PropagateStatus``).
- after writing, wait (heartbeating) until the component's status traffic shows exactly the split asked for, by
  revision name: the candidate at ``canaryTrafficPercent`` and the rest on other revisions. ``status.
  observedGeneration`` is not used: KServe copies it from the Knative Service of the component reconciled last
  (predictor, transformer, explainer), so it need not reach ``metadata.generation`` at all. If the split does not
  show within ``settle_timeout`` the activity fails retryably with the not-ready conditions in the message.
  Writing is skipped when the spec already asks for it and status shows it.

Which release the candidate serves (``served_release``, checked before the first write): the latest revision
is built from the InferenceService's current spec, so its metadata names it: the label (else annotation)
``target.release_key or "app.kubernetes.io/version"``; with ``release_key: storageUri``, the last path segment
of ``spec.<component>.model.storageUri`` (or ``spec.<component>.storageUri``). Otherwise unship cannot tell and
says so in the audit trail, with the candidate revision and its storage URI as evidence.

Connection: the Kubernetes API base URL with a bearer token and optional CA file (``KServeProvider.in_cluster()``
reads the service-account mount). RBAC needs ``get`` and ``patch`` on ``inferenceservices`` in
``serving.kserve.io``.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from activities.errors import configuration_error
from activities.http_providers import (
    HttpAdapter,
    heartbeat,
    json_body,
    readback_mismatch,
    segment,
    send,
)
from playbooks.models import KServeComponent, Target

SYSTEM = "KServe"
DEFAULT_NAMESPACE = "default"
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def canary_percent(previous_percent: float) -> int:
    """``canaryTrafficPercent`` for a share on the previous model (whole numbers, rounded half up)."""
    return math.floor(100.0 - previous_percent + 0.5)


def component_of(target: Target) -> str:
    return str(target.component or KServeComponent.PREDICTOR)


RELEASE_LABEL = "app.kubernetes.io/version"
STORAGE_URI = "storageUri"


def storage_uri(isvc: dict[str, Any], component: str) -> str | None:
    spec: dict[str, Any] = (isvc.get("spec") or {}).get(component) or {}
    model: dict[str, Any] = spec.get("model") or {}
    uri = model.get("storageUri") or spec.get("storageUri")
    return uri if isinstance(uri, str) and uri else None


def served_by(isvc: dict[str, Any], target: Target) -> tuple[str | None, str]:
    """(the release the candidate revision serves, or None; where it was found / why not)."""
    component = component_of(target)
    revision = candidate_revision(component_status(isvc, component)) or "not known yet"
    uri = storage_uri(isvc, component)
    key = target.release_key or RELEASE_LABEL
    if key == STORAGE_URI:
        last = (uri or "").rstrip("/").rsplit("/", 1)[-1]
        if last:
            return last, f"the {component}'s candidate revision {revision} serves {uri}"
        return None, f"the {component} has no model storageUri to name the release"
    metadata = isvc.get("metadata") or {}
    for kind in ("labels", "annotations"):
        value = (metadata.get(kind) or {}).get(key)
        if isinstance(value, str) and value:
            return value, (f"{kind[:-1]} {key} is {value!r} (candidate revision {revision} of the {component})")
    return None, (f"no label or annotation {key} names the release (candidate revision {revision} of the "
                  f"{component}, storageUri {uri or 'none'}); set it, or release_key: storageUri")


def component_status(isvc: dict[str, Any], component: str = "predictor") -> dict[str, Any]:
    status: dict[str, Any] = ((isvc.get("status") or {}).get("components") or {}).get(component) or {}
    return status


def candidate_revision(status: dict[str, Any]) -> str | None:
    """The revision the ``latestRevision`` traffic entry resolves to: the component's latest ready revision."""
    latest = status.get("latestReadyRevision")
    if latest:
        return str(latest)
    for entry in status.get("traffic") or []:
        if entry.get("latestRevision") and entry.get("revisionName"):
            return str(entry["revisionName"])
    return None


def _split(status: dict[str, Any]) -> tuple[float, float] | None:
    """(percent on the candidate revision, percent on other revisions); ``None`` before traffic is known."""
    traffic = status.get("traffic")
    candidate = candidate_revision(status)
    if not traffic or candidate is None:
        return None
    on_candidate = on_others = 0.0
    for entry in traffic:
        name = entry.get("revisionName") or (candidate if entry.get("latestRevision") else None)
        if name == candidate:
            on_candidate += entry.get("percent") or 0
        else:
            on_others += entry.get("percent") or 0
    return on_candidate, on_others


def previous_share(isvc: dict[str, Any], component: str = "predictor") -> float | None:
    """Percent of the component's traffic on revisions other than the candidate; ``None`` before it is known."""
    split = _split(component_status(isvc, component))
    return None if split is None else split[1]


def _settled(isvc: dict[str, Any], component: str, canary: int) -> bool:
    """Status shows the candidate at exactly ``canary`` percent and the rest on other revisions."""
    split = _split(component_status(isvc, component))
    return split is not None and math.isclose(split[0], canary) and math.isclose(split[1], 100 - canary)


def _not_ready(isvc: dict[str, Any]) -> str:
    conditions = (isvc.get("status") or {}).get("conditions") or []
    bad = [f"{c.get('type')}: {c.get('message') or c.get('reason') or c.get('status')}"
           for c in conditions if c.get("status") != "True"]
    return "; ".join(bad) or "no condition reports a problem"


class KServeProvider(HttpAdapter):
    """Moves an InferenceService's predictor traffic between its previous and latest revisions."""

    system = SYSTEM

    def __init__(
        self,
        api_url: str | None,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        *,
        ca_file: str | None = None,
        settle_timeout: float = 120.0,
        poll_interval: float = 1.0,
    ) -> None:
        if not api_url:
            raise configuration_error(SYSTEM, "settings", "no Kubernetes API URL is configured")
        self._base = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._settle_timeout = settle_timeout
        self._poll_interval = poll_interval
        self._use_client(client, verify=ssl.create_default_context(cafile=ca_file) if ca_file else True)

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> KServeProvider:
        """Connect as the pod's service account (token and CA from the standard mount)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = SERVICE_ACCOUNT / "token"
        if not host or not token_file.exists():
            raise configuration_error(SYSTEM, "settings", "not running in a Kubernetes pod with a service account; "
                                                          "configure the Kubernetes API URL and token instead")
        return cls(f"https://{host}:{port}", token_file.read_text().strip(),
                   ca_file=str(SERVICE_ACCOUNT / "ca.crt"), **kwargs)

    @staticmethod
    def _obj(target: Target) -> str:
        return f"InferenceService {target.namespace or DEFAULT_NAMESPACE}/{target.key}"

    def _url(self, target: Target) -> str:
        namespace = target.namespace or DEFAULT_NAMESPACE
        return (f"{self._base}/apis/serving.kserve.io/v1beta1/namespaces/{segment(namespace)}"
                f"/inferenceservices/{segment(target.key)}")

    async def _get(self, target: Target) -> dict[str, Any]:
        obj = self._obj(target)
        body = json_body(SYSTEM, obj, await send(self._client, SYSTEM, obj, "GET", self._url(target),
                                                  headers=self._headers))
        if not isinstance(body, dict) or body.get("kind") not in (None, "InferenceService"):
            raise configuration_error(SYSTEM, obj, "the answer is not an InferenceService; check the API URL")
        return body

    async def get_previous_percent(self, target: Target) -> float | None:
        return previous_share(await self._get(target), component_of(target))

    async def served_release(self, target: Target) -> tuple[str | None, str]:
        """The release the InferenceService says its latest (candidate) revision serves."""
        release, evidence = served_by(await self._get(target), target)
        return release, f"{SYSTEM} {self._obj(target)}: {evidence}"

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        obj = self._obj(target)
        component = component_of(target)
        canary = canary_percent(percent)
        isvc = await self._get(target)
        spec = (isvc.get("spec") or {}).get(component)
        if not isinstance(spec, dict):
            raise configuration_error(SYSTEM, obj, f"the InferenceService has no {component}; check the target's "
                                                   "component in the playbook")
        asked = spec.get("canaryTrafficPercent")
        asked = 100 if asked is None else asked
        status = component_status(isvc, component)
        latest = candidate_revision(status)
        rolled_out = status.get("latestRolledoutRevision")
        fallback = rolled_out if rolled_out and rolled_out != latest else status.get("previousRolledoutRevision")
        if canary < 100 and not fallback:
            raise configuration_error(SYSTEM, obj, f"the {component} has no previous rolled-out revision to send "
                                                   "traffic back to; redeploy the previous model's spec instead")
        if asked == canary and _settled(isvc, component, canary):
            return False
        wrote = False
        if asked != canary:
            patch: dict[str, Any] = {"spec": {component: {"canaryTrafficPercent": canary}}}
            version = (isvc.get("metadata") or {}).get("resourceVersion")
            if version is not None:
                patch["metadata"] = {"resourceVersion": version}
            await send(self._client, SYSTEM, obj, "PATCH", self._url(target), json=patch,
                       headers={**self._headers, "Content-Type": MERGE_PATCH})
            wrote = True
        await self._wait_settled(target, component, canary)
        return wrote

    async def _wait_settled(self, target: Target, component: str, canary: int) -> None:
        deadline = time.monotonic() + self._settle_timeout
        wanted = float(100 - canary)
        while True:
            isvc = await self._get(target)
            if _settled(isvc, component, canary):
                return
            if time.monotonic() >= deadline:
                raise readback_mismatch(SYSTEM, f"{self._obj(target)} {component} ({_not_ready(isvc)})", wanted,
                                        previous_share(isvc, component))
            heartbeat(f"waiting for {self._obj(target)} to send {wanted:g}% of its {component} traffic to the "
                      "previous revision")
            await asyncio.sleep(self._poll_interval)
