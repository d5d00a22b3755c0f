"""Every flag/serving provider keeps the same ``FlagProvider`` promises, against its real system or its fake.

Replaces the per-provider ``isinstance(provider, FlagProvider)`` checks (a ``runtime_checkable`` Protocol only
checks that the method names exist, so they could not fail). Each provider here runs against what the other
tests use: the flagd file, the real Unleash server, and the LaunchDarkly, KServe and HTTP-contract fakes.

The promises: a write is read back as written; the same write again writes nothing (and says so); a write the
system refuses (here: a target it does not have) is not retried, names the system and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.contracts import FlagProvider, ServedReleaseReader
from activities.flagd import FlagdFileProvider
from activities.http_providers import HttpProvider
from activities.kserve import KServeProvider
from activities.launchdarkly import LaunchDarklyProvider
from activities.unleash import UnleashProvider
from playbooks.models import Target, TargetKind
from tests.support.fake_http import ContractServer
from tests.support.fake_k8s import FakeKubernetes
from tests.support.fake_launchdarkly import FakeLaunchDarkly
from tests.support.postgres import start_postgres
from tests.support.unleash import UnleashServer, start_unleash

PROVIDERS = ["flagd", "unleash", "launchdarkly", "kserve", "http"]


@dataclass
class Harness:
    provider: FlagProvider
    target: Target
    missing: Target  # a target the system does not have
    system: str  # how error messages name the system
    writes: Callable[[], Awaitable[Any]]  # a snapshot that changes whenever the system is written to


@pytest.fixture(scope="module")
def unleash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnleashServer]:
    tmp = tmp_path_factory.mktemp("unleash-conformance")
    cluster = start_postgres(tmp)
    try:
        server = start_unleash(tmp, pg_host=cluster.host, pg_port=cluster.port, pg_database=cluster.database)
        try:
            yield server
        finally:
            server.stop()
    finally:
        cluster.stop()


@asynccontextmanager
async def flagd(tmp_path: Path) -> AsyncIterator[Harness]:
    path = tmp_path / "flags.json"
    provider = FlagdFileProvider(path)
    target = Target(provider="flagd", key="chat-model", previous_variant="gpt-4o", candidate_variant="gpt-5")
    await provider.ensure_flag(target)

    async def writes() -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    yield Harness(provider, target, target.model_copy(update={"previous_variant": "gpt-3"}), "flagd", writes)


@asynccontextmanager
async def unleash_server(server: UnleashServer) -> AsyncIterator[Harness]:
    async with httpx.AsyncClient(base_url=f"{server.url}/api/admin/projects/default/features",
                                 headers={"Authorization": server.admin_token}, timeout=10) as admin:
        name = f"conformance-{id(admin)}"
        (await admin.post("", json={"name": name})).raise_for_status()
        (await admin.post(f"/{name}/environments/development/strategies", json={
            "name": "flexibleRollout", "constraints": [],
            "parameters": {"rollout": "100", "stickiness": "userId", "groupId": name}})).raise_for_status()
        (await admin.post(f"/{name}/environments/development/on")).raise_for_status()
        target = Target(provider="unleash", key=name, previous_variant="gpt-4o", candidate_variant="gpt-5")

        async def writes() -> Any:
            return (await admin.get(f"/{name}/environments/development")).json()

        async with httpx.AsyncClient(timeout=10) as client:
            yield Harness(UnleashProvider(server.url, server.admin_token, client=client), target,
                          target.model_copy(update={"key": "no-such-flag"}), "Unleash", writes)


@asynccontextmanager
async def launchdarkly() -> AsyncIterator[Harness]:
    with FakeLaunchDarkly() as fake:
        fake.add_flag("assistant", "chat-model", [("gpt-4o", "gpt-4o"), ("gpt-5", "gpt-5")])
        target = Target(provider="launchdarkly", key="chat-model", project="assistant", environment="production",
                        previous_variant="gpt-4o", candidate_variant="gpt-5")

        async def writes() -> int:
            return fake.patches_applied

        async with httpx.AsyncClient(timeout=5) as client:
            yield Harness(LaunchDarklyProvider(fake.token, url=fake.url, client=client), target,
                          target.model_copy(update={"key": "no-such-flag"}), "LaunchDarkly", writes)


@asynccontextmanager
async def kserve() -> AsyncIterator[Harness]:
    with FakeKubernetes() as fake:
        fake.add_inference_service("ml", "chat-llm", previous="chat-llm-predictor-00001",
                                   latest="chat-llm-predictor-00002")
        target = Target(kind=TargetKind.SERVING, provider="kserve", key="chat-llm", namespace="ml")

        async def writes() -> int:
            return fake.patches_applied

        async with httpx.AsyncClient(timeout=5) as client:
            yield Harness(KServeProvider(fake.url, fake.token, client=client, poll_interval=0.01), target,
                          target.model_copy(update={"key": "no-such-isvc"}), "KServe", writes)


@asynccontextmanager
async def http() -> AsyncIterator[Harness]:
    with ContractServer() as fake:
        target = Target(kind=TargetKind.SERVING, provider="http", key="chat/model")

        async def writes() -> int:
            return len(fake.writes)

        async with httpx.AsyncClient(timeout=5) as client:
            yield Harness(HttpProvider(f"{fake.url}/router", fake.token, client=client, system="model router"),
                          target, target.model_copy(update={"key": "no/such/target"}), "model router", writes)


@pytest.fixture(params=PROVIDERS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    name = request.param
    if name == "unleash":
        context = unleash_server(request.getfixturevalue("unleash"))
    elif name == "flagd":
        context = flagd(tmp_path)
    else:
        context = {"launchdarkly": launchdarkly, "kserve": kserve, "http": http}[name]()
    async with context as built:
        yield built


async def test_a_write_is_read_back(harness: Harness) -> None:
    provider, target = harness.provider, harness.target
    assert await provider.get_previous_percent(target) == 0
    for stage, percent in enumerate((10, 50, 100)):
        assert await provider.set_previous_percent(target, percent, f"wf:revert:{stage}") is True
        assert await provider.get_previous_percent(target) == percent


async def test_the_same_write_again_writes_nothing(harness: Harness) -> None:
    provider, target = harness.provider, harness.target
    assert await provider.set_previous_percent(target, 30, "wf:revert:0") is True
    before = await harness.writes()
    assert await provider.set_previous_percent(target, 30, "wf:revert:0") is False
    assert await harness.writes() == before
    assert await provider.get_previous_percent(target) == 30


async def test_a_refused_write_is_not_retried_and_changes_nothing(harness: Harness) -> None:
    provider = harness.provider
    assert await provider.set_previous_percent(harness.target, 20, "wf:revert:0") is True
    before = await harness.writes()
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(harness.missing, 50, "wf:revert:1")
    assert caught.value.non_retryable
    assert caught.value.message.startswith(harness.system)
    assert await harness.writes() == before
    assert await provider.get_previous_percent(harness.target) == 20


async def test_every_flag_system_can_say_which_release_its_candidate_serves(harness: Harness) -> None:
    """The check before the first write: each system answers (release or None, evidence naming it), and asking
    writes nothing. Only the generic HTTP contract has no field for it."""
    provider = harness.provider
    if not isinstance(provider, ServedReleaseReader):
        assert isinstance(provider, HttpProvider)
        return
    before = await harness.writes()
    release, evidence = await provider.served_release(harness.target)
    assert release is None or isinstance(release, str)
    assert evidence and (harness.system in evidence or "flagd" in evidence)
    assert await harness.writes() == before
