"""``tests/support/fake_http.py``: the base every test server shares, and the generic HTTP contract server.

Sources: unship's own contract, the module docstring of ``activities/http_providers.py`` (``PUT``/``GET``
``{base}/targets/{key}``, 200/204, 404 for an unknown target, 401/422, ``Idempotency-Key``); RFC 9110 for the
transport behaviour scripted with ``fail_next`` (a status with the subclass's error body, ``Retry-After``; a
connection closed without a response).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_http import (
    DROP,
    DROP_AFTER_APPLY,
    Answer,
    ContractServer,
    FakeServer,
    Request,
)


@pytest.fixture
def router() -> Iterator[ContractServer]:
    with ContractServer() as server:
        yield server


@pytest.fixture
def api(router: ContractServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url + "/router", timeout=5,
                      headers={"Authorization": f"Bearer {router.token}"}) as client:
        yield client


def test_put_stores_the_absolute_split_and_get_reads_it(router: ContractServer, api: httpx.Client) -> None:
    """Contract: PUT answers 204 (or 200), GET answers ``{"previous_percent": p}``; keys are one URL segment."""
    put = api.put("/targets/chat%2Fmodel", json={"previous_percent": 40, "idempotency_key": "k"},
                  headers={"Idempotency-Key": "k"})
    assert put.status_code == 204
    assert api.get("/targets/chat%2Fmodel").json() == {"previous_percent": 40.0}
    assert router.writes[0]["header_key"] == "k"


@pytest.mark.parametrize(("status", "method", "path", "body", "token"), [
    (404, "GET", "/targets/unknown", None, True),
    (422, "PUT", "/targets/chat%2Fmodel", {"previous_percent": 101}, True),
    (422, "PUT", "/targets/chat%2Fmodel", {"previous_percent": True}, True),
    (401, "GET", "/targets/chat%2Fmodel", None, False),
    (405, "DELETE", "/targets/chat%2Fmodel", None, True),
])
def test_contract_errors(router: ContractServer, status: int, method: str, path: str, body: object,
                         token: bool) -> None:
    """Contract: 404 unknown target, 422 a share outside 0..100, 401 a wrong token; other methods 405."""
    headers = {"Authorization": f"Bearer {router.token}"} if token else {}
    answer = httpx.request(method, router.url + "/router" + path, json=body, headers=headers)
    assert answer.status_code == status and "error" in answer.json()


def test_a_scripted_status_uses_the_error_body_and_headers_then_the_next_request_is_normal(
        router: ContractServer, api: httpx.Client) -> None:
    router.error_answer = lambda status, request: Answer(status, {"error": "slow down"},  # type: ignore[method-assign]
                                                         {"Retry-After": "4"})
    router.fail_next(429)
    limited = api.get("/targets/chat%2Fmodel")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "4"
    assert api.get("/targets/chat%2Fmodel").status_code == 200


def test_drop_closes_the_connection_before_anything_happens(router: ContractServer, api: httpx.Client) -> None:
    router.fail_next(DROP)
    with pytest.raises(httpx.RemoteProtocolError):
        api.put("/targets/chat%2Fmodel", json={"previous_percent": 10})
    assert router.targets["chat/model"] == 0.0


def test_drop_after_apply_changes_state_but_never_answers(router: ContractServer, api: httpx.Client) -> None:
    router.fail_next(DROP_AFTER_APPLY)
    with pytest.raises(httpx.RemoteProtocolError):
        api.put("/targets/chat%2Fmodel", json={"previous_percent": 10})
    assert router.targets["chat/model"] == 10.0


def test_a_bug_in_a_fake_is_a_500_not_a_network_fault() -> None:
    """A crash in ``handle`` answers 500 naming it and is kept in ``crashes``, so it cannot pass for a drop."""

    class Broken(FakeServer):
        def handle(self, request: Request) -> Answer:
            raise KeyError("oops")

    with Broken() as broken:
        answer = httpx.get(broken.url + "/x")
        assert answer.status_code == 500 and "KeyError" in answer.json()["message"]
        assert len(broken.crashes) == 1


def test_text_bodies_keep_their_content_type() -> None:
    class Text(FakeServer):
        def handle(self, request: Request) -> Answer:
            return Answer(200, "a 1\n", content_type="text/plain; version=0.0.4")

    with Text() as server:
        answer = httpx.get(server.url + "/metrics")
        assert answer.text == "a 1\n" and answer.headers["content-type"] == "text/plain; version=0.0.4"
