"""``tests/support/fake_launchdarkly.py`` against LaunchDarkly's REST API v2 as documented.

Sources: LaunchDarkly API docs (https://launchdarkly.com/docs/api, generated from its OpenAPI spec):
"Update feature flag" (semantic patch, ``ignoreConflicts``, 400/405/409/429), "Get feature flag", "List scheduled
changes", "List approval requests for a flag", "Errors" and "Rate limiting"; ``launchdarkly/api-client-python``
``README.md`` (auth header without "Bearer", ``LD-API-Version``) and ``docs/FeatureFlagsApi.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_launchdarkly import FakeLaunchDarkly

FLAG = "/api/v2/flags/assistant/chat-model"
SEMANTIC = {"Content-Type": "application/json; domain-model=launchdarkly.semanticpatch"}


@pytest.fixture
def fake() -> Iterator[FakeLaunchDarkly]:
    with FakeLaunchDarkly() as server:
        server.add_flag("assistant", "chat-model", [("gpt-4o", "gpt-4o"), ("gpt-5", "gpt-5")])
        yield server


@pytest.fixture
def api(fake: FakeLaunchDarkly) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers={"Authorization": fake.token}, timeout=5) as client:
        yield client


def ids(api: httpx.Client) -> list[str]:
    return [v["_id"] for v in api.get(FLAG).json()["variations"]]


def rollout(api: httpx.Client, weights: tuple[int, int]) -> dict[str, Any]:
    first, second = ids(api)
    return {"environmentKey": "production", "instructions": [
        {"kind": "updateFallthroughVariationOrRollout", "rolloutWeights": {first: weights[0], second: weights[1]}}]}


def test_errors_carry_code_message_and_id(fake: FakeLaunchDarkly) -> None:
    """"Errors": a JSON body with ``code`` and ``message`` (and an ``id``); 401 for a bad token."""
    answer = httpx.get(fake.url + FLAG, headers={"Authorization": "Bearer " + fake.token})
    assert answer.status_code == 401  # the token is sent as is, never with "Bearer"
    assert set(answer.json()) == {"code", "message", "id"} and answer.json()["code"] == "unauthorized"


def test_get_flag_filters_environments_with_env(api: httpx.Client) -> None:
    """"Get feature flag": ``?env=`` limits ``environments`` to the ones named."""
    flag = api.get(FLAG, params={"env": "production"}).json()
    assert list(flag["environments"]) == ["production"]
    assert {"on", "offVariation", "fallthrough"} <= set(flag["environments"]["production"])
    assert api.get("/api/v2/flags/assistant/nope").status_code == 404


def test_semantic_patch_weights_must_add_up_to_100000(api: httpx.Client) -> None:
    """"Update feature flag" / updateFallthroughVariationOrRollout: weights in thousandths summing to 100000."""
    assert api.patch(FLAG, json=rollout(api, (10_000, 89_999)), headers=SEMANTIC).status_code == 400
    answer = api.patch(FLAG, json=rollout(api, (10_000, 90_000)), headers=SEMANTIC)
    assert answer.status_code == 200
    weights = answer.json()["environments"]["production"]["fallthrough"]["rollout"]["variations"]
    assert [w["weight"] for w in weights] == [10_000, 90_000]


def test_a_patch_that_changes_nothing_keeps_the_version(api: httpx.Client) -> None:
    """Flag ``_version`` counts changes; the same patch twice changes the flag once."""
    first = api.patch(FLAG, json=rollout(api, (50_000, 50_000)), headers=SEMANTIC).json()["_version"]
    second = api.patch(FLAG, json=rollout(api, (50_000, 50_000)), headers=SEMANTIC).json()["_version"]
    assert first == second == 2


def test_pending_scheduled_changes_refuse_a_patch_unless_ignore_conflicts(fake: FakeLaunchDarkly,
                                                                         api: httpx.Client) -> None:
    """"Update feature flag", query ``ignoreConflicts``: a change that would make a pending scheduled change or
    approval request fail answers 400, unless ``ignoreConflicts=true``."""
    change = fake.schedule_change("assistant", "chat-model", "production", [{"kind": "turnFlagOff"}],
                                  execution_date_ms=1_893_456_000_000)
    refused = api.patch(FLAG, json=rollout(api, (10_000, 90_000)), headers=SEMANTIC)
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_request"
    other_env = {**rollout(api, (10_000, 90_000)), "environmentKey": "test"}
    assert api.patch(FLAG, json=other_env, headers=SEMANTIC).status_code == 200  # pending only in production
    listed = api.get("/api/v2/projects/assistant/flags/chat-model/environments/production/scheduled-changes")
    assert listed.json()["items"][0]["_id"] == change["_id"]
    assert listed.json()["items"][0]["executionDate"] == 1_893_456_000_000
    forced = api.patch(FLAG, json=rollout(api, (10_000, 90_000)), headers=SEMANTIC,
                       params={"ignoreConflicts": "true"})
    assert forced.status_code == 200


def test_open_approval_requests_conflict_applied_ones_do_not(fake: FakeLaunchDarkly, api: httpx.Client) -> None:
    """"List approval requests for a flag": ``status`` pending|scheduled|failed|completed; only open requests
    (pending, scheduled) can be made to fail by another change."""
    fake.request_approval("assistant", "chat-model", "production", "done already", status="completed")
    assert api.patch(FLAG, json=rollout(api, (10_000, 90_000)), headers=SEMANTIC).status_code == 200
    fake.request_approval("assistant", "chat-model", "production", "to 100%")
    assert api.patch(FLAG, json=rollout(api, (20_000, 80_000)), headers=SEMANTIC).status_code == 400
    items = api.get("/api/v2/projects/assistant/flags/chat-model/environments/production/approval-requests").json()
    assert [i["status"] for i in items["items"]] == ["completed", "pending"]


def test_an_environment_that_requires_approval_answers_405(fake: FakeLaunchDarkly, api: httpx.Client) -> None:
    """"Update feature flag": 405 when the environment requires an approval for the change."""
    fake.approval_required.add("production")
    answer = api.patch(FLAG, json=rollout(api, (10_000, 90_000)), headers=SEMANTIC)
    assert answer.status_code == 405 and answer.json()["code"] == "method_not_allowed"


def test_429_carries_the_rate_limit_reset_in_epoch_milliseconds(fake: FakeLaunchDarkly, api: httpx.Client) -> None:
    """"Rate limiting": ``X-Ratelimit-Reset`` is the epoch time in milliseconds when the window resets."""
    fake.fail_next(429)
    answer = api.get(FLAG)
    assert answer.status_code == 429
    reset_ms = int(answer.headers["X-Ratelimit-Reset"])
    assert time.time() * 1000 < reset_ms < (time.time() + 60) * 1000


def test_a_json_patch_is_not_spoken(api: httpx.Client) -> None:
    """Not LaunchDarkly's behaviour (it also takes JSON Patch): the fake only speaks semantic patch, so a client
    that drops the domain-model content type fails loudly here."""
    answer = api.patch(FLAG, json=[{"op": "replace", "path": "/environments/production/on", "value": False}])
    assert answer.status_code == 400
