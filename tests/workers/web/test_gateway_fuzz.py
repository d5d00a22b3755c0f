"""Fuzzing the gateway: thousands of malformed, mutated and mis-signed requests, and never a 5xx.

The requests go through the real ASGI app in process (the HTTP layer is covered by test_gateway_http.py);
the router's sender records instead of calling Temporal, so accepted alerts cost nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import alert_payloads as p
from tests.support.playbooks import snapshot
from tests.support.stack import make_settings
from workers.web.alert_router import AlertRouter
from workers.web.alert_sources import SOURCES, grafana_signature, pagerduty_signature
from workers.web.app import create_app
from workers.web.gateway import Gateway

BEARER = "fuzz-bearer"
GRAFANA = "fuzz-grafana"
PAGERDUTY = "fuzz-pagerduty"
SLACK = "fuzz-slack"
LABELS = {"alertname": "GenAIQualityDegraded", "service": "chat", "release": "v1"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def _valid(source: str) -> Any:
    return {"alertmanager": p.alertmanager([p.am_alert(LABELS, "fp1")]),
            "grafana": p.grafana([p.am_alert(LABELS, "fp1")]),
            "datadog": p.datadog(),
            "pagerduty": p.pagerduty(),
            "generic": p.generic(LABELS)}[source]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _replace(copy[head], rest, value)
    return copy


@st.composite
def mutated(draw: st.DrawFn, source: str) -> bytes:
    """A valid payload of ``source`` with one node replaced by arbitrary JSON (or deleted)."""
    payload = _valid(source)
    path = draw(st.sampled_from(_paths(payload)))
    if path and draw(st.booleans()) and isinstance(payload, dict):
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            payload = _replace(payload, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
            return json.dumps(payload).encode()
    return json.dumps(_replace(payload, path, draw(json_values)), allow_nan=True).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),  # nesting bombs
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.text(max_size=200).map(str.encode),
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, loop: asyncio.AbstractEventLoop) -> Iterator[httpx.AsyncClient]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    conf = make_settings(tmp, None, alert_bearer_token=BEARER, grafana_hmac_secret=GRAFANA,
                         pagerduty_signing_secret=PAGERDUTY, slack_signing_secret=SLACK)
    snap = snapshot()

    async def sender(workflow_id: str, *_: Any) -> str:
        return workflow_id

    async def no_service() -> Any:
        raise RuntimeError("the fuzz test has no Temporal")

    router = AlertRouter({snap.playbook.name: snap}, sender, window=0)
    app = create_app(no_service, conf, api=False, gateway=Gateway(conf, no_service, router=router))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    yield http
    loop.run_until_complete(http.aclose())


def _sign(source: str, body: bytes, mode: str) -> dict[str, str]:
    if mode == "none":
        return {}
    if mode == "garbage":
        return {"Authorization": "Bearer \x00nope", "X-Grafana-Alerting-Signature": "zz",
                "X-PagerDuty-Signature": "v1=,,,", "X-Grafana-Alerting-Signature-Timestamp": "soon"}
    if source == "grafana":
        ts = str(int(time.time()))
        return {"X-Grafana-Alerting-Signature": grafana_signature(GRAFANA, body, ts),
                "X-Grafana-Alerting-Signature-Timestamp": ts}
    if source == "pagerduty":
        return {"X-PagerDuty-Signature": pagerduty_signature(PAGERDUTY, body)}
    return {"Authorization": f"Bearer {BEARER}"}


def _post(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, path: str, body: bytes,
          headers: dict[str, str]) -> httpx.Response:
    return loop.run_until_complete(client.post(path, content=body, headers=headers))


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(source=st.sampled_from(SOURCES), body=bodies, auth=st.sampled_from(["signed", "none", "garbage"]),
       content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))
def test_arbitrary_bodies_never_get_a_5xx(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, source: str,
                                          body: bytes, auth: str, content_type: str) -> None:
    headers = _sign(source, body, auth) | ({"Content-Type": content_type} if content_type else {})
    response = _post(loop, client, f"/v1/alerts/{source}", body, headers)
    assert response.status_code < 500, (response.status_code, response.text)
    if auth != "signed":
        assert response.status_code == 401


@FUZZ
@given(data=st.data(), source=st.sampled_from(SOURCES))
def test_mutated_valid_payloads_are_accepted_or_named(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient,
                                                      data: st.DataObject, source: str) -> None:
    body = data.draw(mutated(source))
    response = _post(loop, client, f"/v1/alerts/{source}", body, _sign(source, body, "signed")
                     | {"Content-Type": "application/json"})
    assert response.status_code in (202, 400, 422), (response.status_code, response.text)
    if response.status_code == 422:
        assert response.json()["field"], "a 422 names the field"


block_actions_like = st.fixed_dictionaries(
    {"type": st.just("block_actions")},
    optional={"user": json_values, "actions": json_values, "container": json_values, "channel": json_values},
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=json_values | block_actions_like, raw=st.booleans(), junk=st.binary(max_size=100))
def test_signed_slack_requests_with_any_payload_never_get_a_5xx(
        loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, payload: Any, raw: bool, junk: bytes) -> None:
    body = junk if raw else urllib.parse.urlencode({"payload": json.dumps(payload, allow_nan=True)}).encode()
    ts = str(int(time.time()))
    # signed by hand: the SDK's helper only signs UTF-8 text, and junk bytes must be answered too
    signature = "v0=" + hmac.new(SLACK.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    response = _post(loop, client, "/v1/slack/interactivity", body,
                     {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature,
                      "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code < 500, (response.status_code, response.text)
