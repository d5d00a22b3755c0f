"""The generic HTTP JSON signal source against a real local HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.contracts import Measurement, PollRequest
from activities.http_signals import HttpSignalSource
from playbooks.models import Signal
from tests.support.fake_http import DROP, Answer, FakeServer, Request
from tests.support.prometheus import free_port

TOKEN = "sig-token-abc123"


class MetricsApi(FakeServer):
    """An evaluation service reporting per-release numbers under ``/releases/{release}/...``."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Any] = {
            "/releases/ckpt-7/quality": {"data": {"toxicity_per_10k": 31.5, "samples": 5000}},
            "/releases/ckpt-6/quality": {"data": {"toxicity_per_10k": 3, "samples": 5000}},
            "/releases/ckpt%2F7%20beta/quality": {"data": {"toxicity_per_10k": "12.5"}},
            "/list": {"results": [{"value": 1.5}, {"value": 9}]},
            "/odd": {"data": {"toxicity_per_10k": None, "label": "high", "flag": True, "nested": {"a": 1},
                              "nan": "NaN"}},
            "/bare": 42,
        }

    def handle(self, request: Request) -> Answer:
        if request.path == "/text":
            return Answer(200, None, {})
        if request.path in self.answers:
            return Answer(200, self.answers[request.path])
        return Answer(404, {"error": "no such release"})


@pytest.fixture(scope="module")
def api() -> Iterator[MetricsApi]:
    with MetricsApi() as server:
        yield server


def signal(url: str, json_path: str | None = "data.toxicity_per_10k", no_data: str = "skip",
           threshold: float = 25) -> Signal:
    source: dict[str, Any] = {"type": "http", "url": url}
    if json_path is not None:
        source["json_path"] = json_path
    return Signal.model_validate({"name": "toxicity", "category": "model_quality", "threshold": {"value": threshold},
                                  "source": source, "no_data": no_data})


def poll(release: str = "ckpt-7") -> PollRequest:
    return PollRequest(incident_id="i", release=release, signals=[], poll=0)


@pytest.fixture
async def source() -> AsyncIterator[HttpSignalSource]:
    src = HttpSignalSource(token=TOKEN)
    yield src
    await src.aclose()


async def test_value_for_the_polled_release(api: MetricsApi, source: HttpSignalSource) -> None:
    sig = signal(f"{api.url}/releases/$release/quality")
    bad = await source.observe(sig, poll("ckpt-7"))
    good = await source.observe(sig, poll("ckpt-6"))
    assert (bad.value, bad.measurement) == (31.5, Measurement.BREACH)
    assert (good.value, good.measurement) == (3, Measurement.HEALTHY)
    assert "data.toxicity_per_10k = 31.5" in bad.detail
    assert api.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"


async def test_release_is_url_encoded_as_one_path_segment(api: MetricsApi, source: HttpSignalSource) -> None:
    obs = await source.observe(signal(f"{api.url}/releases/$release/quality"), poll("ckpt/7 beta"))
    assert api.requests[-1].path == "/releases/ckpt%2F7%20beta/quality"
    assert (obs.value, obs.measurement) == (12.5, Measurement.HEALTHY)  # a numeric string counts


async def test_list_indexes_and_a_bare_number(api: MetricsApi, source: HttpSignalSource) -> None:
    for path in ("results.1.value", "results[1].value", "$.results[1].value"):
        obs = await source.observe(signal(f"{api.url}/list", path, threshold=5), poll())
        assert (obs.value, obs.measurement) == (9, Measurement.BREACH), path
    bare = await source.observe(signal(f"{api.url}/bare", None, threshold=50), poll())
    assert (bare.value, bare.measurement) == (42, Measurement.HEALTHY)


async def test_anything_but_a_number_is_no_data_with_the_reason(api: MetricsApi, source: HttpSignalSource) -> None:
    cases = {
        "data.toxicity_per_10k": "is null",
        "data.label": "is 'high', not a number",
        "data.flag": "is True, not a number",
        "data.nested": "is an object",
        "data.missing": "'missing' not found",
        "results.0": "'results' not found",
        "data.nan": "is nan",
    }
    for path, reason in cases.items():
        obs = await source.observe(signal(f"{api.url}/odd", path), poll())
        assert (obs.value, obs.measurement) == (None, Measurement.NO_DATA), path
        assert reason in obs.detail and "no_data: skip" in obs.detail, (path, obs.detail)

    text = await source.observe(signal(f"{api.url}/text"), poll())
    assert text.measurement is Measurement.NO_DATA and "not JSON" in text.detail


async def test_no_data_policy_decides_what_an_unmeasured_poll_counts_as(
        api: MetricsApi, source: HttpSignalSource) -> None:
    for policy, expected in (("healthy", Measurement.HEALTHY), ("breach", Measurement.BREACH)):
        obs = await source.observe(signal(f"{api.url}/odd", "data.missing", no_data=policy), poll())
        assert obs.measurement is expected


async def test_client_errors_are_not_retried_server_errors_are(api: MetricsApi, source: HttpSignalSource) -> None:
    sig = signal(f"{api.url}/releases/$release/quality")
    with pytest.raises(ApplicationError) as err:
        await source.observe(sig, poll("ckpt-404"))
    assert err.value.non_retryable and "HTTP 404" in err.value.message

    for status in (401, 403):
        api.fail_next(status)
        with pytest.raises(ApplicationError) as err:
            await source.observe(sig, poll())
        assert err.value.non_retryable, status
        assert TOKEN not in err.value.message

    for fault in (500, 503, 429, DROP):
        api.fail_next(fault)
        with pytest.raises(ApplicationError) as err:
            await source.observe(sig, poll())
        assert not err.value.non_retryable, fault

    assert (await source.observe(sig, poll())).value == 31.5  # and it heals


async def test_unreachable_endpoint_is_retryable_and_a_bad_url_is_not() -> None:
    src = HttpSignalSource()
    try:
        with pytest.raises(ApplicationError) as err:
            await src.observe(signal(f"http://127.0.0.1:{free_port()}/x"), poll())
        assert not err.value.non_retryable
        with pytest.raises(ApplicationError) as err:
            await src.observe(signal("ftp://example.invalid/x"), poll())
        assert err.value.non_retryable and "bad URL" in err.value.message
    finally:
        await src.aclose()
