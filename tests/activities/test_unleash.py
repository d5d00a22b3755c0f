"""Unleash provider against a REAL Unleash server (services/unleash) on a private PostgreSQL cluster.

Evaluation is checked the way applications see it: through the client API with a backend token, and with the
official ``UnleashClient`` Python SDK deciding, for thousands of user ids, who gets the candidate model.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from UnleashClient import UnleashClient
from UnleashClient.utils import InstanceAllowType

from activities.unleash import STRATEGY_TITLE, UnleashProvider
from playbooks.models import Target
from tests.support.postgres import start_postgres
from tests.support.unleash import UnleashServer, start_unleash

USERS = [f"user-{n}" for n in range(3000)]
TOLERANCE = 3.0  # percentage points; 3000 users give a standard deviation under 1 point


@pytest.fixture(scope="module")
def unleash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnleashServer]:
    tmp = tmp_path_factory.mktemp("unleash")
    cluster = start_postgres(tmp)
    try:
        server = start_unleash(tmp, pg_host=cluster.host, pg_port=cluster.port, pg_database=cluster.database)
        try:
            yield server
        finally:
            server.stop()
    finally:
        cluster.stop()


@pytest.fixture
async def admin(unleash: UnleashServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{unleash.url}/api/admin/projects/default/features",
                                 headers={"Authorization": unleash.admin_token}, timeout=10) as client:
        yield client


@pytest.fixture
async def provider(unleash: UnleashServer) -> AsyncIterator[UnleashProvider]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield UnleashProvider(unleash.url, unleash.admin_token, client=client)


_names = iter(range(1_000_000))


async def released_flag(admin: httpx.AsyncClient, *, rollout: int | None = 100, enabled: bool = True,
                        stickiness: str = "userId") -> Target:
    """A flag as a release leaves it: candidate for ``rollout``% of users in ``development``."""
    name = f"chat-model-{next(_names)}"
    (await admin.post("", json={"name": name})).raise_for_status()
    if rollout is not None:
        (await admin.post(f"/{name}/environments/development/strategies", json={
            "name": "flexibleRollout", "constraints": [],
            "parameters": {"rollout": str(rollout), "stickiness": stickiness, "groupId": name},
        })).raise_for_status()
    if enabled:
        (await admin.post(f"/{name}/environments/development/on")).raise_for_status()
    return Target(provider="unleash", key=name, previous_variant="gpt-4o", candidate_variant="gpt-5")


async def environment(admin: httpx.AsyncClient, target: Target) -> dict[str, Any]:
    response = await admin.get(f"/{target.key}/environments/development")
    response.raise_for_status()
    return response.json()


async def wait_for_client_api(unleash: UnleashServer, flag: str, rollout: int | None) -> None:
    """Poll the client API (the SDK's endpoint) until it serves ``rollout`` (``None`` = flag disabled).

    Unleash refreshes what it serves to SDKs about once a second after a write: poll, never assume.
    """
    deadline = time.monotonic() + 20
    seen: Any = None
    async with httpx.AsyncClient(headers={"Authorization": unleash.client_token}) as client:
        while time.monotonic() < deadline:
            features = (await client.get(f"{unleash.url}/api/client/features")).json()["features"]
            feature = next((f for f in features if f["name"] == flag), {})
            if rollout is None:
                seen = feature.get("enabled")
                if seen is False:
                    return
            else:
                seen = [s["parameters"].get("rollout") for s in feature.get("strategies", [])]
                if feature.get("enabled") and seen == [str(rollout)]:
                    return
            await asyncio.sleep(0.2)
    pytest.fail(f"client API never showed rollout {rollout} for {flag}: last saw {seen}")


def users_on_previous(unleash: UnleashServer, flag: str) -> set[str]:
    """The official SDK's verdict: users for whom the flag is off, i.e. who get the previous model."""
    client = UnleashClient(
        url=f"{unleash.url}/api", app_name="unship-tests", custom_headers={"Authorization": unleash.client_token},
        disable_metrics=True, disable_registration=True, refresh_interval=300,
        cache_directory=tempfile.mkdtemp(prefix="unleash-sdk-"),
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    client.initialize_client()
    try:
        assert client.is_initialized, "the Unleash SDK did not initialise"
        return {user for user in USERS if not client.is_enabled(flag, {"userId": user})}
    finally:
        client.destroy()


def share(users: set[str]) -> float:
    return 100.0 * len(users) / len(USERS)



async def test_staged_revert_moves_the_expected_share_and_users_stay_back(
    unleash: UnleashServer, admin: httpx.AsyncClient, provider: UnleashProvider
) -> None:
    target = await released_flag(admin)
    await wait_for_client_api(unleash, target.key, 100)
    assert share(await asyncio.to_thread(users_on_previous, unleash, target.key)) == 0.0
    assert await provider.get_previous_percent(target) == 0.0

    moved_back: list[set[str]] = []
    for stage, percent in enumerate((10, 50, 100)):
        assert await provider.set_previous_percent(target, percent, f"wf:revert:{stage}") is True
        assert await provider.get_previous_percent(target) == percent
        await wait_for_client_api(unleash, target.key, 100 - percent)
        on_previous = await asyncio.to_thread(users_on_previous, unleash, target.key)
        assert abs(share(on_previous) - percent) <= TOLERANCE, f"stage {percent}%: SDK shows {share(on_previous)}%"
        moved_back.append(on_previous)

    ten, fifty, hundred = moved_back
    assert ten <= fifty <= hundred, "a user moved back to the previous model was sent to the candidate again"
    assert hundred == set(USERS)
    strategies = (await environment(admin, target))["strategies"]
    assert len(strategies) == 1
    assert strategies[0]["parameters"] == {"rollout": "0", "stickiness": "userId", "groupId": target.key}


async def test_same_state_twice_writes_once(admin: httpx.AsyncClient, provider: UnleashProvider) -> None:
    target = await released_flag(admin)
    assert await provider.set_previous_percent(target, 25, "k") is True
    before = await environment(admin, target)
    assert await provider.set_previous_percent(target, 25, "k") is False
    assert await environment(admin, target) == before


async def test_flag_without_a_strategy_gets_one_and_no_auto_created_default(
    unleash: UnleashServer, admin: httpx.AsyncClient, provider: UnleashProvider
) -> None:
    target = await released_flag(admin, rollout=None, enabled=False)
    assert await provider.get_previous_percent(target) == 100.0  # environment off: everyone on previous
    assert await provider.set_previous_percent(target, 100, "k") is False
    assert await provider.set_previous_percent(target, 70, "k") is True
    env = await environment(admin, target)
    assert env["enabled"] is True
    assert [(s["title"], s["parameters"]["rollout"], s["disabled"]) for s in env["strategies"]] == [
        (STRATEGY_TITLE, "30", False)
    ]
    await wait_for_client_api(unleash, target.key, 30)
    assert abs(share(await asyncio.to_thread(users_on_previous, unleash, target.key)) - 70) <= TOLERANCE


async def test_existing_stickiness_and_group_are_kept(admin: httpx.AsyncClient, provider: UnleashProvider) -> None:
    target = await released_flag(admin, stickiness="sessionId")
    assert await provider.set_previous_percent(target, 40, "k") is True
    (strategy,) = (await environment(admin, target))["strategies"]
    assert strategy["parameters"] == {"rollout": "60", "stickiness": "sessionId", "groupId": target.key}


async def test_constrained_strategies_are_left_alone(admin: httpx.AsyncClient, provider: UnleashProvider) -> None:
    target = await released_flag(admin)
    (await admin.post(f"/{target.key}/environments/development/strategies", json={
        "name": "flexibleRollout", "parameters": {"rollout": "100", "stickiness": "userId", "groupId": "staff"},
        "constraints": [{"contextName": "userId", "operator": "IN", "values": ["alice"]}],
    })).raise_for_status()
    assert await provider.set_previous_percent(target, 50, "k") is True
    strategies = (await environment(admin, target))["strategies"]
    assert sorted(s["parameters"]["rollout"] for s in strategies) == ["100", "50"]


async def test_a_disabled_strategy_is_re_enabled_with_the_new_rollout(admin: httpx.AsyncClient,
                                                                     provider: UnleashProvider) -> None:
    target = await released_flag(admin)
    (strategy,) = (await environment(admin, target))["strategies"]
    (await admin.patch(f"/{target.key}/environments/development/strategies/{strategy['id']}",
                       json=[{"op": "replace", "path": "/disabled", "value": True}])).raise_for_status()
    # Unleash turns the environment off with its last enabled strategy: everyone is on the previous model.
    assert (await environment(admin, target))["enabled"] is False
    assert await provider.get_previous_percent(target) == 100.0
    assert await provider.set_previous_percent(target, 30, "k") is True
    env = await environment(admin, target)
    assert [(s["id"], s["parameters"]["rollout"], s["disabled"]) for s in env["strategies"]] == [
        (strategy["id"], "70", False)
    ]
    assert env["enabled"] is True


async def test_kill_switch_turns_the_environment_off_and_back_on_safely(
    unleash: UnleashServer, admin: httpx.AsyncClient
) -> None:
    target = await released_flag(admin)
    async with httpx.AsyncClient() as client:
        provider = UnleashProvider(unleash.url, unleash.admin_token, client=client,
                                   disable_environment_at_full_revert=True)
        assert await provider.set_previous_percent(target, 100, "k") is True
        assert (await environment(admin, target))["enabled"] is False
        assert await provider.get_previous_percent(target) == 100.0
        await wait_for_client_api(unleash, target.key, None)
        # A re-release step turns it back on with the kept strategy, not a new 100% default one.
        assert await provider.set_previous_percent(target, 80, "k2") is True
    env = await environment(admin, target)
    assert env["enabled"] is True
    assert [s["parameters"]["rollout"] for s in env["strategies"]] == ["20"]


async def test_two_unconstrained_strategies_are_refused_with_a_clear_error(
    admin: httpx.AsyncClient, provider: UnleashProvider
) -> None:
    target = await released_flag(admin)
    (await admin.post(f"/{target.key}/environments/development/strategies",
                      json={"name": "default", "constraints": []})).raise_for_status()
    assert await provider.get_previous_percent(target) is None
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(target, 10, "k")
    assert caught.value.non_retryable
    assert target.key in caught.value.message and "single unconstrained flexibleRollout" in caught.value.message


async def test_unknown_flag_is_not_retried_and_names_it(provider: UnleashProvider) -> None:
    target = Target(provider="unleash", key="no-such-flag")
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(target, 10, "k")
    error = caught.value
    assert error.non_retryable and "HTTP 404" in error.message
    assert "Unleash: flag 'no-such-flag' (project 'default', environment 'development')" in error.message


@pytest.mark.parametrize(("token", "status"), [("*:*.not-a-real-token", 401), ("client", 403)])
async def test_refused_credentials_are_not_retried(unleash: UnleashServer, admin: httpx.AsyncClient,
                                                   token: str, status: int) -> None:
    target = await released_flag(admin)
    secret = unleash.client_token if token == "client" else token
    async with httpx.AsyncClient() as client:
        provider = UnleashProvider(unleash.url, secret, client=client)
        with pytest.raises(ApplicationError) as caught:
            await provider.set_previous_percent(target, 10, "k")
    assert caught.value.non_retryable and f"HTTP {status}" in caught.value.message
    assert secret not in caught.value.message


async def test_unreachable_server_is_retryable() -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        provider = UnleashProvider("http://127.0.0.1:9", "*:*.x", client=client)
        with pytest.raises(ApplicationError) as caught:
            await provider.get_previous_percent(Target(provider="unleash", key="f"))
    assert not caught.value.non_retryable and caught.value.message.startswith("Unleash: flag 'f'")


def test_missing_settings_are_named() -> None:
    with pytest.raises(ApplicationError) as caught:
        UnleashProvider("http://unleash:4242", None)
    assert caught.value.non_retryable and "UNSHIP_UNLEASH_API_TOKEN" in caught.value.message


def test_bootstrap_is_named_when_unleash_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.support.unleash as support

    monkeypatch.setattr(support, "SERVICE_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="npm ci --prefix services/unleash"):
        support.start_unleash(tmp_path, pg_host="127.0.0.1", pg_port=1, pg_database="x")


async def test_the_candidate_cohorts_variant_payload_names_the_release(admin: httpx.AsyncClient,
                                                                       provider: UnleashProvider) -> None:
    bare = await released_flag(admin, rollout=100)
    release, evidence = await provider.served_release(bare)
    assert release is None and "no variant of the candidate cohort carries a release" in evidence
    name = f"chat-model-{next(_names)}"
    (await admin.post("", json={"name": name})).raise_for_status()
    variants = [{"name": "gpt-5", "weight": 1000, "weightType": "variable", "stickiness": "default",
                 "payload": {"type": "json", "value": '{"model": "gpt-5", "release": "chat-v3.0.0"}'}}]
    (await admin.post(f"/{name}/environments/development/strategies", json={
        "name": "flexibleRollout", "title": "release", "constraints": [], "variants": variants,
        "parameters": {"rollout": "100", "stickiness": "userId", "groupId": name},
    })).raise_for_status()
    (await admin.post(f"/{name}/environments/development/on")).raise_for_status()
    target = Target(provider="unleash", key=name, previous_variant="gpt-4o", candidate_variant="gpt-5")
    release, evidence = await provider.served_release(target)
    assert release == "chat-v3.0.0" and "strategy release variant 'gpt-5' carries release 'chat-v3.0.0'" in evidence
    assert (await provider.served_release(target.model_copy(update={"release_key": "model"})))[0] == "gpt-5"
    # moving users keeps the strategy's variants, so the check reads the same after a stage
    assert await provider.set_previous_percent(target, 50, "wf:revert:0") is True
    assert (await provider.served_release(target))[0] == "chat-v3.0.0"
