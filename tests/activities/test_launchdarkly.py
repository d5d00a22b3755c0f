"""LaunchDarkly provider against a local server speaking LaunchDarkly's documented REST v2 shapes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.launchdarkly import LaunchDarklyProvider, rate_limit_delay
from playbooks.models import Target
from tests.support.fake_http import DROP, DROP_AFTER_APPLY
from tests.support.fake_launchdarkly import FakeLaunchDarkly

TARGET = Target(provider="launchdarkly", key="chat-model", project="assistant", environment="production",
                previous_variant="gpt-4o", candidate_variant="gpt-5")


@pytest.fixture
def fake() -> Iterator[FakeLaunchDarkly]:
    with FakeLaunchDarkly() as server:
        server.add_flag("assistant", "chat-model", [("gpt-4o", "gpt-4o-2024-08"), ("gpt-5", "gpt-5-2025-08")])
        yield server


@pytest.fixture
async def provider(fake: FakeLaunchDarkly) -> AsyncIterator[LaunchDarklyProvider]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield LaunchDarklyProvider(fake.token, url=fake.url, client=client)


def weights(fake: FakeLaunchDarkly, env: str = "production") -> dict[int, int]:
    rollout = fake.environment("assistant", "chat-model", env)["fallthrough"]["rollout"]
    return {v["variation"]: v["weight"] for v in rollout["variations"]}



async def test_staged_revert_sets_fallthrough_weights_and_reads_them_back(
    fake: FakeLaunchDarkly, provider: LaunchDarklyProvider
) -> None:
    assert await provider.get_previous_percent(TARGET) == 0.0
    for stage, percent in enumerate((10, 50, 100)):
        assert await provider.set_previous_percent(TARGET, percent, f"wf:revert:{stage}") is True
        assert weights(fake) == {0: percent * 1000, 1: 100_000 - percent * 1000}
        assert await provider.get_previous_percent(TARGET) == percent
    patch = next(r for r in reversed(fake.requests) if r.method == "PATCH")
    assert patch.headers["content-type"] == "application/json; domain-model=launchdarkly.semanticpatch"
    assert patch.headers["ld-api-version"] == "20240415"
    assert patch.json()["environmentKey"] == "production"
    assert "wf:revert:2" in patch.json()["comment"]
    # The other environment is untouched.
    assert fake.environment("assistant", "chat-model", "test")["fallthrough"] == {"variation": 1}


async def test_same_state_twice_writes_once(fake: FakeLaunchDarkly, provider: LaunchDarklyProvider) -> None:
    assert await provider.set_previous_percent(TARGET, 25, "k") is True
    assert await provider.set_previous_percent(TARGET, 25, "k") is False
    assert fake.patches_applied == 1


async def test_variations_can_be_named_by_value_and_bucketing_is_kept(fake: FakeLaunchDarkly) -> None:
    flag = fake.add_flag("default", "image-model", [("old", "sdxl-1.0"), ("new", "sdxl-2.0")])
    flag["environments"]["production"]["fallthrough"] = {
        "rollout": {"variations": [{"variation": 0, "weight": 0}, {"variation": 1, "weight": 100_000}],
                    "bucketBy": "orgId", "contextKind": "organization"}}
    target = Target(provider="launchdarkly", key="image-model", previous_variant="sdxl-1.0",
                    candidate_variant="sdxl-2.0")
    async with httpx.AsyncClient() as client:
        provider = LaunchDarklyProvider(fake.token, url=fake.url, client=client)
        assert await provider.set_previous_percent(target, 12.5, "k") is True
        assert await provider.get_previous_percent(target) == 12.5
    rollout = fake.environment("default", "image-model", "production")["fallthrough"]["rollout"]
    assert rollout["bucketBy"] == "orgId" and rollout["contextKind"] == "organization"


async def test_flag_that_is_off_is_turned_on_for_a_partial_share(fake: FakeLaunchDarkly,
                                                                 provider: LaunchDarklyProvider) -> None:
    fake.flags[("assistant", "chat-model")]["environments"]["production"]["on"] = False
    assert await provider.get_previous_percent(TARGET) == 100.0  # off variation is the previous model
    assert await provider.set_previous_percent(TARGET, 100, "k") is False
    assert await provider.set_previous_percent(TARGET, 60, "k2") is True
    assert fake.environment("assistant", "chat-model", "production")["on"] is True
    assert await provider.get_previous_percent(TARGET) == 60.0


async def test_kill_switch_turns_the_flag_off_at_full_revert(fake: FakeLaunchDarkly) -> None:
    async with httpx.AsyncClient() as client:
        provider = LaunchDarklyProvider(fake.token, url=fake.url, client=client, turn_off_at_full_revert=True)
        assert await provider.set_previous_percent(TARGET, 100, "k") is True
        assert fake.environment("assistant", "chat-model", "production")["on"] is False
        assert await provider.get_previous_percent(TARGET) == 100.0
        assert await provider.set_previous_percent(TARGET, 100, "k") is False


async def test_unknown_variant_is_a_configuration_error(provider: LaunchDarklyProvider) -> None:
    bad = TARGET.model_copy(update={"previous_variant": "gpt-3"})
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(bad, 10, "k")
    assert caught.value.non_retryable
    assert "gpt-3" in caught.value.message and "'gpt-4o'" in caught.value.message


async def test_429_is_retryable_after_the_rate_limit_reset(fake: FakeLaunchDarkly,
                                                           provider: LaunchDarklyProvider) -> None:
    fake.rate_limit_reset_in = 3.0
    fake.fail_next(None, 429)  # the GET passes, the PATCH is rate limited
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    error = caught.value
    assert not error.non_retryable
    assert error.next_retry_delay is not None and 1.0 < error.next_retry_delay.total_seconds() <= 3.0
    assert "LaunchDarkly" in error.message and "chat-model" in error.message and "429" in error.message
    assert fake.patches_applied == 0
    assert await provider.set_previous_percent(TARGET, 10, "k") is True


def test_rate_limit_delay_falls_back_to_retry_after() -> None:
    response = httpx.Response(429, headers={"Retry-After": "7"})
    assert rate_limit_delay(response).total_seconds() == 7
    reset = httpx.Response(429, headers={"X-Ratelimit-Reset": str(int((time.time() + 5) * 1000))})
    assert 3 < rate_limit_delay(reset).total_seconds() <= 5


async def test_405_approval_required_goes_to_a_human(fake: FakeLaunchDarkly, provider: LaunchDarklyProvider) -> None:
    fake.approval_required.add("production")
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    error = caught.value
    assert error.non_retryable
    assert "approval required in that environment" in error.message
    assert "chat-model" in error.message and "production" in error.message
    assert fake.patches_applied == 0


@pytest.mark.parametrize(
    ("status", "retryable", "words"),
    [
        (400, False, "malformed"),
        (401, False, "credentials"),
        (403, False, "permission"),
        (404, False, "does not exist"),
        (409, True, "concurrently"),
        (422, False, "invalid"),
        (500, True, "retried"),
        (502, True, "retried"),
        (503, True, "retried"),
    ],
)
async def test_each_error_status_maps_to_retryable_or_not(
    fake: FakeLaunchDarkly, provider: LaunchDarklyProvider, status: int, retryable: bool, words: str
) -> None:
    fake.fail_next(status)
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    error = caught.value
    assert error.non_retryable is not retryable
    assert error.message.startswith("LaunchDarkly: flag 'chat-model'") and f"HTTP {status}" in error.message
    assert words in error.message


async def test_unknown_flag_names_the_flag_and_the_fix(provider: LaunchDarklyProvider) -> None:
    with pytest.raises(ApplicationError) as caught:
        await provider.get_previous_percent(TARGET.model_copy(update={"key": "no-such-flag"}))
    assert caught.value.non_retryable
    assert "no-such-flag" in caught.value.message and "check its key" in caught.value.message


async def test_wrong_token_is_not_retried(fake: FakeLaunchDarkly) -> None:
    async with httpx.AsyncClient() as client:
        provider = LaunchDarklyProvider("api-wrong", url=fake.url, client=client)
        with pytest.raises(ApplicationError) as caught:
            await provider.get_previous_percent(TARGET)
    assert caught.value.non_retryable and "401" in caught.value.message and "token" in caught.value.message
    assert "api-wrong" not in caught.value.message


@pytest.mark.parametrize("fault", [DROP, DROP_AFTER_APPLY])
async def test_connection_drop_mid_stage_is_retryable_and_a_retry_converges_once(
    fake: FakeLaunchDarkly, provider: LaunchDarklyProvider, fault: str
) -> None:
    assert await provider.set_previous_percent(TARGET, 10, "wf:revert:0") is True
    fake.fail_next(None, fault)  # GET answers, the PATCH's connection drops
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 50, "wf:revert:1")
    assert not caught.value.non_retryable and "LaunchDarkly" in caught.value.message
    await provider.set_previous_percent(TARGET, 50, "wf:revert:1")  # what Temporal's retry does
    assert weights(fake) == {0: 50_000, 1: 50_000}
    assert fake.patches_applied == 2  # stage 0 once, stage 1 once: never twice


async def test_missing_token_is_a_configuration_error() -> None:
    with pytest.raises(ApplicationError) as caught:
        LaunchDarklyProvider(None)
    assert caught.value.non_retryable and "UNSHIP_LAUNCHDARKLY_API_TOKEN" in caught.value.message


async def test_a_pending_scheduled_change_stops_the_revert_and_says_what_is_pending(
    fake: FakeLaunchDarkly, provider: LaunchDarklyProvider
) -> None:
    change = fake.schedule_change("assistant", "chat-model", "production", [{"kind": "turnFlagOff"}],
                                  execution_date_ms=1_893_456_000_000)
    approval = fake.request_approval("assistant", "chat-model", "production", "raise gpt-5 to 100%")
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "wf:revert:0")
    error = caught.value
    assert error.non_retryable and error.type == "LaunchDarkly.pending_changes"
    assert change["_id"] in error.message and "turnFlagOff" in error.message and "2030-01-01" in error.message
    assert approval["_id"] in error.message and "raise gpt-5 to 100%" in error.message
    assert "override_pending_changes" in error.message
    assert "playbook" not in error.message.replace("override_pending_changes", "")  # not a playbook mistake
    assert fake.patches_applied == 0 and await provider.get_previous_percent(TARGET) == 0


async def test_overriding_pending_changes_is_the_playbooks_choice(fake: FakeLaunchDarkly,
                                                                 provider: LaunchDarklyProvider) -> None:
    fake.schedule_change("assistant", "chat-model", "production", [{"kind": "turnFlagOff"}], 1_893_456_000_000)
    target = Target.model_validate({**TARGET.model_dump(), "override_pending_changes": True})
    assert await provider.set_previous_percent(target, 10, "wf:revert:0") is True
    assert weights(fake) == {0: 10_000, 1: 90_000}
    patch = next(r for r in reversed(fake.requests) if r.method == "PATCH")
    assert patch.query["ignoreConflicts"] == ["true"]


async def test_approval_requests_already_applied_do_not_stop_the_revert(fake: FakeLaunchDarkly,
                                                                       provider: LaunchDarklyProvider) -> None:
    fake.request_approval("assistant", "chat-model", "production", "old change", status="completed")
    assert await provider.set_previous_percent(TARGET, 10, "wf:revert:0") is True


async def test_a_400_with_nothing_pending_still_reads_as_a_rejected_request(fake: FakeLaunchDarkly,
                                                                           provider: LaunchDarklyProvider) -> None:
    fake.fail_next(None, 400)
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    assert caught.value.non_retryable and caught.value.type == "LaunchDarkly.http_400"


async def test_when_pending_changes_cannot_be_listed_the_400_says_so(fake: FakeLaunchDarkly,
                                                                    provider: LaunchDarklyProvider) -> None:
    fake.schedule_change("assistant", "chat-model", "production", [{"kind": "turnFlagOff"}], 1_893_456_000_000)
    fake.fail_next(None, None, 403)  # read, PATCH (400 from the conflict), then the listing is forbidden
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    assert caught.value.non_retryable and "could not list the flag's pending changes" in caught.value.message
    assert "403" in caught.value.message


async def test_the_candidate_variation_names_the_release_it_serves(fake: FakeLaunchDarkly,
                                                                    provider: LaunchDarklyProvider) -> None:
    release, evidence = await provider.served_release(TARGET)
    assert release == "gpt-5-2025-08" and "variation 'gpt-5' serves 'gpt-5-2025-08'" in evidence
    fake.add_flag("assistant", "json-model", [("previous", {"model": "gpt-4o", "release": "chat-v2.4.0"}),
                                              ("candidate", {"model": "gpt-5", "release": "chat-v3.0.0"})])
    assert (await provider.served_release(Target(provider="launchdarkly", key="json-model",
                                                 project="assistant")))[0] == "chat-v3.0.0"
    fake.add_flag("assistant", "bool-model", [("previous", False), ("candidate", True)],
                  custom_properties={"candidate_release": ["chat-v3.0.0"], "jira": ["ML-1", "ML-2"]})
    stated = Target(provider="launchdarkly", key="bool-model", project="assistant")
    assert await provider.served_release(stated) == (
        "chat-v3.0.0", "LaunchDarkly flag 'bool-model' (project 'assistant', environment 'production'): custom "
        "property candidate_release is 'chat-v3.0.0'")
    # a playbook-stated key: a plain string value is then not taken as the release
    assert (await provider.served_release(stated.model_copy(update={"release_key": "jira"})))[0] is None
    keyed = TARGET.model_copy(update={"release_key": "release"})
    release, evidence = await provider.served_release(keyed)
    assert release is None and "names no release" in evidence and "custom property release" in evidence
