"""KServe provider against a local server speaking the Kubernetes API shape for InferenceServices."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.kserve import KServeProvider
from playbooks.models import Target, TargetKind
from tests.support.fake_http import DROP, DROP_AFTER_APPLY
from tests.support.fake_k8s import FakeKubernetes

TARGET = Target(kind=TargetKind.SERVING, provider="kserve", key="chat-llm", namespace="ml")


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        # gpt-v2 was promoted over gpt-v1; the incident is about gpt-v2.
        server.add_inference_service("ml", "chat-llm", previous="chat-llm-predictor-00001",
                                     latest="chat-llm-predictor-00002")
        yield server


@pytest.fixture
async def provider(fake: FakeKubernetes) -> AsyncIterator[KServeProvider]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield KServeProvider(fake.url, fake.token, client=client, poll_interval=0.01, settle_timeout=5)


def traffic(fake: FakeKubernetes) -> dict[str, int]:
    return fake.traffic("ml", "chat-llm")



async def test_staged_revert_moves_traffic_to_the_previous_revision(fake: FakeKubernetes,
                                                                   provider: KServeProvider) -> None:
    assert await provider.get_previous_percent(TARGET) == 0.0
    for percent in (10, 50, 100):
        assert await provider.set_previous_percent(TARGET, percent, f"wf:revert:{percent}") is True
        assert fake.inference_service("ml", "chat-llm")["spec"]["predictor"]["canaryTrafficPercent"] == 100 - percent
        assert traffic(fake)["chat-llm-predictor-00001"] == percent
        assert await provider.get_previous_percent(TARGET) == percent
    # At 100% the rollback pins the last good revision: canaryTrafficPercent 0, as KServe documents.
    assert traffic(fake) == {"chat-llm-predictor-00002": 0, "chat-llm-predictor-00001": 100}
    patch = next(r for r in reversed(fake.requests) if r.method == "PATCH")
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.json()["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
    assert "resourceVersion" in patch.json()["metadata"]


async def test_canary_in_flight_is_rolled_back_to_the_rolled_out_revision(fake: FakeKubernetes) -> None:
    fake.add_inference_service("ml", "img", previous="img-00003", latest="img-00004", canary=30, promoted=False)
    target = Target(kind=TargetKind.SERVING, provider="kserve", key="img", namespace="ml")
    async with httpx.AsyncClient() as client:
        provider = KServeProvider(fake.url, fake.token, client=client, poll_interval=0.01)
        assert await provider.get_previous_percent(target) == 70.0
        assert await provider.set_previous_percent(target, 100, "k") is True
    assert fake.traffic("ml", "img") == {"img-00004": 0, "img-00003": 100}


async def test_right_after_a_promotion_the_share_is_read_by_revision_name(fake: FakeKubernetes,
                                                                         provider: KServeProvider) -> None:
    # KServe first routes the remainder to latestRolledoutRevision, which after a promotion IS the candidate:
    # status shows [candidate 90%, candidate 10% (tag prev)] until a later reconcile moves it to the previous one.
    assert await provider.set_previous_percent(TARGET, 10, "wf:revert:0") is True
    assert traffic(fake) == {"chat-llm-predictor-00002": 90, "chat-llm-predictor-00001": 10}
    assert await provider.get_previous_percent(TARGET) == 10


async def test_the_intermediate_same_revision_split_reads_as_nothing_moved_back(fake: FakeKubernetes,
                                                                               provider: KServeProvider) -> None:
    fake.objects[("ml", "chat-llm")]["spec"]["predictor"]["canaryTrafficPercent"] = 50
    fake._reconcile_pass("ml", "chat-llm")  # one reconcile only: the split is over the candidate itself
    assert traffic(fake) == {"chat-llm-predictor-00002": 100}
    assert await provider.get_previous_percent(TARGET) == 0


async def test_a_predictor_canary_settles_when_the_isvc_also_has_a_transformer(fake: FakeKubernetes,
                                                                              provider: KServeProvider) -> None:
    # status.observedGeneration follows the transformer's Knative Service, which a predictor patch never changes.
    fake.add_inference_service("ml", "chat-llm", previous="chat-llm-predictor-00001",
                               latest="chat-llm-predictor-00002", transformer="chat-llm-transformer-00001")
    for percent in (10, 50, 100):
        assert await provider.set_previous_percent(TARGET, percent, f"wf:revert:{percent}") is True
        assert traffic(fake)["chat-llm-predictor-00001"] == percent
    isvc = fake.inference_service("ml", "chat-llm")
    assert isvc["status"]["observedGeneration"] < isvc["metadata"]["generation"]  # as on a real cluster
    assert fake.traffic("ml", "chat-llm", "transformer") == {"chat-llm-transformer-00001": 100}


async def test_same_state_twice_writes_once(fake: FakeKubernetes, provider: KServeProvider) -> None:
    assert await provider.set_previous_percent(TARGET, 40, "k") is True
    assert await provider.set_previous_percent(TARGET, 40, "k") is False
    assert fake.patches_applied == 1


async def test_waits_for_the_controller_to_apply_the_split(fake: FakeKubernetes, provider: KServeProvider) -> None:
    fake.status_lag = 3  # status shows the old traffic for three more reads
    assert await provider.set_previous_percent(TARGET, 50, "k") is True
    assert traffic(fake)["chat-llm-predictor-00001"] == 50


async def test_a_split_that_never_settles_is_retryable_and_says_why(fake: FakeKubernetes) -> None:
    fake.status_lag = 10_000
    async with httpx.AsyncClient() as client:
        provider = KServeProvider(fake.url, fake.token, client=client, poll_interval=0.01, settle_timeout=0.2)
        with pytest.raises(ApplicationError) as caught:
            await provider.set_previous_percent(TARGET, 50, "k")
    assert not caught.value.non_retryable
    assert "InferenceService ml/chat-llm" in caught.value.message and "50%" in caught.value.message


async def test_nothing_to_roll_back_to_is_a_clear_error(fake: FakeKubernetes) -> None:
    fake.add_inference_service("ml", "fresh", previous="", latest="fresh-00001")
    isvc = fake.objects[("ml", "fresh")]
    isvc["status"]["components"]["predictor"]["previousRolledoutRevision"] = None
    target = Target(kind=TargetKind.SERVING, provider="kserve", key="fresh", namespace="ml")
    async with httpx.AsyncClient() as client:
        provider = KServeProvider(fake.url, fake.token, client=client)
        with pytest.raises(ApplicationError) as caught:
            await provider.set_previous_percent(target, 10, "k")
    assert caught.value.non_retryable and "no previous rolled-out revision" in caught.value.message
    assert fake.patches_applied == 0


@pytest.mark.parametrize(
    ("status", "retryable", "words"),
    [
        (400, False, "malformed"),
        (401, False, "credentials"),
        (403, False, "permission"),
        (404, False, "does not exist"),
        (405, False, "not allowed"),
        (409, True, "concurrently"),
        (415, False, "answer"),
        (422, False, "invalid"),
        (429, True, "retried"),
        (500, True, "retried"),
        (503, True, "retried"),
    ],
)
async def test_each_error_status_maps_to_retryable_or_not(
    fake: FakeKubernetes, provider: KServeProvider, status: int, retryable: bool, words: str
) -> None:
    fake.fail_next(None, status)  # the read passes, the PATCH fails
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    error = caught.value
    assert error.non_retryable is not retryable
    assert error.message.startswith("KServe: InferenceService ml/chat-llm: HTTP") and str(status) in error.message
    assert words in error.message
    if status in (429, 503):
        assert error.next_retry_delay is not None and error.next_retry_delay.total_seconds() == 1


async def test_unknown_inference_service_is_a_404_naming_it(provider: KServeProvider) -> None:
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET.model_copy(update={"key": "nope"}), 10, "k")
    error = caught.value
    assert error.non_retryable
    assert "InferenceService ml/nope" in error.message and "not found" in error.message
    assert "namespace" in error.message  # the fix: check name and namespace


async def test_concurrent_change_conflicts_and_a_retry_applies_on_the_latest_version(
    fake: FakeKubernetes, provider: KServeProvider
) -> None:
    real_handle = fake.handle
    calls = {"n": 0}

    def someone_else_edits_between_read_and_patch(request):  # type: ignore[no-untyped-def]
        if request.method == "PATCH" and calls["n"] == 0:
            calls["n"] += 1
            fake.objects[("ml", "chat-llm")]["metadata"]["resourceVersion"] = "999999"
        return real_handle(request)

    fake.handle = someone_else_edits_between_read_and_patch  # type: ignore[method-assign]
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    assert not caught.value.non_retryable and "409" in caught.value.message
    assert await provider.set_previous_percent(TARGET, 10, "k") is True
    assert traffic(fake)["chat-llm-predictor-00001"] == 10


@pytest.mark.parametrize("fault", [DROP, DROP_AFTER_APPLY])
async def test_connection_drop_mid_stage_is_retryable_and_a_retry_converges_once(
    fake: FakeKubernetes, provider: KServeProvider, fault: str
) -> None:
    assert await provider.set_previous_percent(TARGET, 10, "wf:revert:0") is True
    fake.fail_next(None, fault)
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 50, "wf:revert:1")
    assert not caught.value.non_retryable and "KServe" in caught.value.message
    await provider.set_previous_percent(TARGET, 50, "wf:revert:1")
    assert traffic(fake)["chat-llm-predictor-00001"] == 50
    assert fake.patches_applied == 2


async def test_wrong_token_is_not_retried_and_not_shown(fake: FakeKubernetes) -> None:
    async with httpx.AsyncClient() as client:
        provider = KServeProvider(fake.url, "wrong-secret", client=client)
        with pytest.raises(ApplicationError) as caught:
            await provider.get_previous_percent(TARGET)
    assert caught.value.non_retryable and "401" in caught.value.message
    assert "wrong-secret" not in caught.value.message


async def test_unreachable_api_is_retryable() -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        provider = KServeProvider("http://127.0.0.1:9", "t", client=client)
        with pytest.raises(ApplicationError) as caught:
            await provider.get_previous_percent(TARGET)
    assert not caught.value.non_retryable and "KServe: InferenceService ml/chat-llm" in caught.value.message


async def test_the_component_the_playbook_names_is_the_one_read_and_moved(fake: FakeKubernetes,
                                                                         provider: KServeProvider) -> None:
    fake.add_inference_service("ml", "chat-llm", previous="chat-llm-predictor-00001",
                               latest="chat-llm-predictor-00002", canary=40, promoted=False,
                               transformer="chat-llm-transformer-00001")
    transformer = Target.model_validate({**TARGET.model_dump(), "component": "transformer"})
    assert await provider.get_previous_percent(TARGET) == 60
    assert await provider.get_previous_percent(transformer) == 0  # its only revision takes all its traffic
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(transformer, 50, "k")
    assert caught.value.non_retryable and "transformer has no previous rolled-out revision" in caught.value.message
    explainer = Target.model_validate({**TARGET.model_dump(), "component": "explainer"})
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(explainer, 50, "k")
    assert caught.value.non_retryable and "has no explainer" in caught.value.message
    assert fake.patches_applied == 0


def test_component_is_a_kserve_option_only() -> None:
    with pytest.raises(ValueError, match="component applies to provider kserve only"):
        Target(kind=TargetKind.FLAG, provider="flagd", key="f", component="predictor")


async def test_the_release_the_candidate_revision_serves_comes_from_a_label_or_the_storage_uri(
        fake: FakeKubernetes, provider: KServeProvider) -> None:
    release, evidence = await provider.served_release(TARGET)
    assert release is None  # no label: KServe cannot say which release; the evidence says what it knows
    assert "candidate revision chat-llm-predictor-00002" in evidence
    assert "storageUri s3://models/chat-llm-predictor-00002" in evidence
    fake.add_inference_service("ml", "chat-v3", previous="chat-v3-predictor-00001", latest="chat-v3-predictor-00002",
                               labels={"app.kubernetes.io/version": "chat-v3.0.0", "release": "chat-v3.0.0-rc1"})
    labelled = TARGET.model_copy(update={"key": "chat-v3"})
    release, evidence = await provider.served_release(labelled)
    assert release == "chat-v3.0.0" and "label app.kubernetes.io/version" in evidence
    assert (await provider.served_release(labelled.model_copy(update={"release_key": "release"})))[0] == \
        "chat-v3.0.0-rc1"
    by_uri = await provider.served_release(labelled.model_copy(update={"release_key": "storageUri"}))
    assert by_uri[0] == "chat-v3-predictor-00002" and "serves s3://models/chat-v3-predictor-00002" in by_uri[1]
