"""``tests/support/fake_k8s.py`` against the Kubernetes API and KServe controller rules it imitates.

Sources (kserve/kserve): ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``
(``createKnativeService``: traffic targets), ``pkg/apis/serving/v1beta1/inference_service_status.go``
(``PropagateStatus``: rolled-out bookkeeping, traffic, observedGeneration). Kubernetes API conventions
(kubernetes/community ``contributors/devel/sig-architecture/api-conventions.md``: Status objects, 409 on a stale
resourceVersion) and kubernetes/kubernetes #97423 (CRDs take no strategic merge patch: 415).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_k8s import FakeKubernetes

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/llm"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        server.add_inference_service("ml", "llm", previous="llm-predictor-00001", latest="llm-predictor-00002")
        yield server


@pytest.fixture
def api(fake: FakeKubernetes) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {fake.token}"}, timeout=5) as client:
        yield client


def predictor(client: httpx.Client) -> dict:  # type: ignore[type-arg]
    return client.get(PATH).json()["status"]["components"]["predictor"]


def test_errors_are_status_objects(fake: FakeKubernetes, api: httpx.Client) -> None:
    """api-conventions.md "Response Status Kind": failures answer kind Status with reason and code."""
    missing = api.get(PATH.replace("/llm", "/nope"))
    assert missing.status_code == 404
    assert missing.json() | {"details": None} == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound",
        "code": 404, "message": 'inferenceservices.serving.kserve.io "nope" not found', "details": None}
    unauthorized = httpx.get(fake.url + PATH, headers={"Authorization": "Bearer wrong"})
    assert unauthorized.status_code == 401 and unauthorized.json()["reason"] == "Unauthorized"


def test_custom_resources_take_merge_patch_not_strategic_merge(api: httpx.Client) -> None:
    """kubernetes #97423: a strategic merge patch on a CRD answers 415 UnsupportedMediaType."""
    answer = api.patch(PATH, json={"spec": {}}, headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert answer.status_code == 415 and answer.json()["reason"] == "UnsupportedMediaType"


def test_a_stale_resource_version_is_a_409_conflict(api: httpx.Client) -> None:
    """api-conventions.md "Concurrency Control and Consistency": a stale resourceVersion answers 409."""
    version = api.get(PATH).json()["metadata"]["resourceVersion"]
    assert api.patch(PATH, json={"metadata": {"resourceVersion": version},
                                 "spec": {"predictor": {"canaryTrafficPercent": 90}}}, headers=MERGE).status_code == 200
    stale = api.patch(PATH, json={"metadata": {"resourceVersion": version},
                                  "spec": {"predictor": {"canaryTrafficPercent": 80}}}, headers=MERGE)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"


def test_a_spec_change_raises_generation_and_resource_version_a_no_op_does_not(api: httpx.Client) -> None:
    """api-conventions.md "Metadata": generation counts spec changes; RFC 7386 merge patch semantics."""
    before = api.get(PATH).json()["metadata"]
    after = api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 90}}}, headers=MERGE).json()
    assert after["metadata"]["generation"] == before["generation"] + 1
    assert after["metadata"]["resourceVersion"] != before["resourceVersion"]
    again = api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 90}}}, headers=MERGE).json()
    assert again["metadata"] == after["metadata"]
    removed = api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": None}}}, headers=MERGE).json()
    assert "canaryTrafficPercent" not in removed["spec"]["predictor"]


def test_the_patch_answer_shows_the_old_status_the_controller_is_asynchronous(api: httpx.Client) -> None:
    """The controller reconciles after the write (controller-runtime); the PATCH answer carries the old status."""
    answer = api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 90}}}, headers=MERGE).json()
    assert answer["status"]["components"]["predictor"]["traffic"] == [
        {"revisionName": "llm-predictor-00002", "percent": 100, "latestRevision": True}]


def test_after_a_promotion_a_canary_first_splits_over_the_same_revision(api: httpx.Client) -> None:
    """createKnativeService routes the remainder to latestRolledoutRevision (the latest, after a promotion);
    PropagateStatus then moves latestRolledoutRevision back to previousRolledoutRevision, and the next
    reconcile routes the remainder there."""
    api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 90}}}, headers=MERGE)
    first = predictor(api)
    assert [(t["revisionName"], t["percent"], t["latestRevision"]) for t in first["traffic"]] == [
        ("llm-predictor-00002", 90, True), ("llm-predictor-00002", 10, False)]
    assert first["traffic"][1]["tag"] == "prev"
    assert first["latestRolledoutRevision"] == "llm-predictor-00001"
    second = predictor(api)
    assert [(t["revisionName"], t["percent"]) for t in second["traffic"]] == [
        ("llm-predictor-00002", 90), ("llm-predictor-00001", 10)]
    assert predictor(api) == second  # settled: further reads change nothing


def test_canary_zero_pins_the_last_good_revision_and_100_promotes(fake: FakeKubernetes, api: httpx.Client) -> None:
    """KServe canary docs (rollback: canaryTrafficPercent 0; promote: remove it) and PropagateStatus (a latest
    revision at 100% becomes latestRolledoutRevision, the old one previousRolledoutRevision)."""
    api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 0}}}, headers=MERGE)
    fake.settle("ml", "llm")
    assert fake.traffic("ml", "llm") == {"llm-predictor-00002": 0, "llm-predictor-00001": 100}
    api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": None}}}, headers=MERGE)
    fake.settle("ml", "llm")
    status = predictor(api)
    assert fake.traffic("ml", "llm") == {"llm-predictor-00002": 100}
    assert (status["latestRolledoutRevision"], status["previousRolledoutRevision"]) == (
        "llm-predictor-00002", "llm-predictor-00001")


def test_canary_in_flight_sends_the_rest_to_the_last_rolled_out_revision(fake: FakeKubernetes) -> None:
    """createKnativeService: while the latest revision is not rolled out, the remainder goes to
    latestRolledoutRevision (the old model)."""
    fake.add_inference_service("ml", "img", previous="img-00003", latest="img-00004", canary=30, promoted=False)
    assert fake.traffic("ml", "img") == {"img-00004": 30, "img-00003": 70}


def test_observed_generation_follows_the_knative_service_of_the_last_component(fake: FakeKubernetes,
                                                                              api: httpx.Client) -> None:
    """PropagateStatus sets status.observedGeneration from the Knative Service of each component in turn
    (predictor, then transformer, then explainer): with a transformer, a predictor patch never raises it."""
    fake.add_inference_service("ml", "llm", previous="llm-predictor-00001", latest="llm-predictor-00002",
                               transformer="llm-transformer-00001")
    before = api.get(PATH).json()
    api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 50}}}, headers=MERGE)
    fake.settle("ml", "llm")
    after = api.get(PATH).json()
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["status"]["observedGeneration"] == before["status"]["observedGeneration"] == 1
    assert fake.ksvcs[("ml", "llm", "predictor")]["generation"] > fake.ksvcs[("ml", "llm", "transformer")]["generation"]
    assert fake.traffic("ml", "llm") == {"llm-predictor-00002": 50, "llm-predictor-00001": 50}


def test_status_lag_holds_the_old_status_for_that_many_reads(fake: FakeKubernetes, api: httpx.Client) -> None:
    """Not a KServe rule: a knob that makes the asynchronous controller slower, as on a busy cluster."""
    fake.status_lag = 2
    api.patch(PATH, json={"spec": {"predictor": {"canaryTrafficPercent": 0}}}, headers=MERGE)
    assert [t["percent"] for t in predictor(api)["traffic"]] == [100]
    assert [t["percent"] for t in predictor(api)["traffic"]] == [100]
    assert [t["percent"] for t in predictor(api)["traffic"]] == [0, 100]
