"""The generic HTTP flag/router contract against a local server that implements it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.http_providers import HttpProvider
from playbooks.models import Target, TargetKind
from tests.support.fake_http import DROP, DROP_AFTER_APPLY, Answer, ContractServer

TOKEN = ContractServer.default_token


TARGET = Target(kind=TargetKind.SERVING, provider="http", key="chat/model", previous_variant="v1",
                candidate_variant="v2", environment="prod")


@pytest.fixture
def server() -> Iterator[ContractServer]:
    with ContractServer() as fake:
        yield fake


@pytest.fixture
async def provider(server: ContractServer) -> AsyncIterator[HttpProvider]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield HttpProvider(f"{server.url}/router/", TOKEN, client=client, system="model router")



async def test_staged_writes_send_the_documented_body_and_read_back(server: ContractServer,
                                                                   provider: HttpProvider) -> None:
    for percent in (10, 50, 100):
        assert await provider.set_previous_percent(TARGET, percent, f"wf:revert:{percent}") is True
        assert await provider.get_previous_percent(TARGET) == percent
    assert server.writes[0] == {
        "previous_percent": 10, "idempotency_key": "wf:revert:10", "kind": "serving",
        "previous_variant": "v1", "candidate_variant": "v2", "project": None, "environment": "prod",
        "namespace": None, "header_key": "wf:revert:10",
    }


async def test_same_state_twice_writes_once(server: ContractServer, provider: HttpProvider) -> None:
    assert await provider.set_previous_percent(TARGET, 30, "k") is True
    assert await provider.set_previous_percent(TARGET, 30, "k") is False
    assert len(server.writes) == 1


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (401, False), (403, False), (404, False),
                                                   (405, False), (422, False), (429, True), (500, True),
                                                   (503, True)])
async def test_error_statuses(server: ContractServer, provider: HttpProvider, status: int, retryable: bool) -> None:
    server.fail_next(None, status)
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 10, "k")
    assert caught.value.non_retryable is not retryable
    assert caught.value.message.startswith("model router: target 'chat/model': HTTP")


async def test_retry_after_is_honoured(server: ContractServer, provider: HttpProvider) -> None:
    server.error_answer = lambda status, request: Answer(status, {"error": "slow down"},  # type: ignore[method-assign]
                                                         {"Retry-After": "4"})
    server.fail_next(429)
    with pytest.raises(ApplicationError) as caught:
        await provider.get_previous_percent(TARGET)
    assert caught.value.next_retry_delay is not None and caught.value.next_retry_delay.total_seconds() == 4


@pytest.mark.parametrize("fault", [DROP, DROP_AFTER_APPLY])
async def test_connection_drop_is_retryable_and_a_retry_converges(server: ContractServer, provider: HttpProvider,
                                                                  fault: str) -> None:
    server.fail_next(None, fault)
    with pytest.raises(ApplicationError) as caught:
        await provider.set_previous_percent(TARGET, 50, "k")
    assert not caught.value.non_retryable
    await provider.set_previous_percent(TARGET, 50, "k")
    assert server.targets["chat/model"] == 50
    assert len(server.writes) == 1


async def test_answer_that_is_not_json_names_the_url_to_fix(server: ContractServer, provider: HttpProvider) -> None:
    server.handle = lambda request: Answer(200, None)  # type: ignore[method-assign]
    with pytest.raises(ApplicationError) as caught:
        await provider.get_previous_percent(TARGET)
    assert caught.value.non_retryable and "not JSON" in caught.value.message


async def test_unknown_target_is_not_retried(provider: HttpProvider) -> None:
    with pytest.raises(ApplicationError) as caught:
        await provider.get_previous_percent(TARGET.model_copy(update={"key": "other"}))
    assert caught.value.non_retryable and "'other'" in caught.value.message and "404" in caught.value.message
