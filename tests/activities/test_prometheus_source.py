"""Signals measured by a real Prometheus scraping an in-process exporter."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.exceptions import ApplicationError

from activities.contracts import Measurement, PollRequest
from activities.prometheus import PrometheusSignalSource
from playbooks.models import Signal
from tests.support.prometheus import MetricsExporter, free_port, wait_for


def signal(threshold: float = 1.0, no_data: str = "skip", min_samples: int = 0, **source: object) -> Signal:
    return Signal.model_validate({
        "name": "sig", "category": "model_quality", "threshold": {"value": threshold},
        "source": {"type": "prometheus", **source}, "no_data": no_data, "min_samples": min_samples,
    })


def poll(sig: Signal | None = None) -> PollRequest:
    return PollRequest(incident_id="unship:chat:r1", release="r1", signals=[sig] if sig else [], poll=0)


async def scraped(url: str, exporter: MetricsExporter, name: str, value: float,
                  labels: dict[str, str] | None = None) -> None:
    """Set a metric and wait until Prometheus has scraped that value."""
    exporter.set(name, value, labels)
    await asyncio.to_thread(
        wait_for, url, name, lambda r: any(float(s["value"][1]) == value for s in r))


@pytest.fixture
def source(prometheus_url: str) -> PrometheusSignalSource:
    return PrometheusSignalSource(prometheus_url)


async def test_query_value_is_compared_with_the_threshold(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_t_latency_seconds", 2.5)

    high = await source.observe(signal(2, query="unship_t_latency_seconds"), poll())
    assert (high.value, high.measurement) == (2.5, Measurement.BREACH)
    assert high.signal == "sig" and high.category == "model_quality" and high.threshold == "> 2"

    ok = await source.observe(signal(3, query="max(unship_t_latency_seconds)"), poll())
    assert (ok.value, ok.measurement) == (2.5, Measurement.HEALTHY)


async def test_ratio_per_ten_thousand_outputs(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_t_hallucinations", 12)
    await scraped(prometheus_url, exporter, "unship_t_outputs", 4000)
    sig = signal(25, events="sum(unship_t_hallucinations)", outputs="sum(unship_t_outputs)", min_samples=1000)

    obs = await source.observe(sig, poll(sig))
    assert obs.value == pytest.approx(30)
    assert obs.samples == 4000
    assert obs.measurement is Measurement.BREACH
    assert "12 events / 4000 outputs" in obs.detail


async def test_too_few_outputs_is_no_data_not_a_breach(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_t_few_bad", 40)
    await scraped(prometheus_url, exporter, "unship_t_few_outputs", 50)
    sig = signal(25, events="unship_t_few_bad", outputs="unship_t_few_outputs", min_samples=100, no_data="breach")

    obs = await source.observe(sig, poll(sig))
    assert obs.measurement is Measurement.NO_DATA
    assert obs.samples == 50
    assert "only 50 outputs, fewer than min_samples 100" in obs.detail


async def test_no_series_is_no_data_by_policy(prometheus_url: str, source: PrometheusSignalSource) -> None:
    for policy, expected in (("skip", Measurement.NO_DATA), ("healthy", Measurement.HEALTHY),
                             ("breach", Measurement.BREACH)):
        obs = await source.observe(signal(query="unship_t_never_exported", no_data=policy), poll())
        assert obs.value is None
        assert obs.measurement is expected
        assert "no series" in obs.detail and f"no_data: {policy}" in obs.detail

    ratio = signal(events="unship_t_never_exported", outputs="unship_t_never_exported_either")
    obs = await source.observe(ratio, poll(ratio))
    assert (obs.value, obs.measurement) == (None, Measurement.NO_DATA)
    assert "outputs: no series" in obs.detail


async def test_nan_and_infinity_are_no_data(source: PrometheusSignalSource) -> None:
    for query, shown in (("0/0", "NaN"), ("1/0", "+Inf"), ("vector(0)/vector(0)", "NaN")):
        obs = await source.observe(signal(query=query), poll())
        assert (obs.value, obs.measurement) == (None, Measurement.NO_DATA), query
        assert f"value is {shown}" in obs.detail


async def test_zero_outputs_is_no_data(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_t_zero_outputs", 0)
    sig = signal(events="vector(0)", outputs="unship_t_zero_outputs")
    obs = await source.observe(sig, poll(sig))
    assert (obs.value, obs.measurement) == (None, Measurement.NO_DATA)
    assert "0 outputs" in obs.detail


async def test_bad_promql_is_not_retried(source: PrometheusSignalSource) -> None:
    for query in ("rate(unship_t_latency_seconds", "unship_t_latency_seconds[1m]"):
        with pytest.raises(ApplicationError) as err:
            await source.observe(signal(query=query), poll())
        assert err.value.non_retryable, query
        assert "fix it in the playbook" in err.value.message or "instant query" in err.value.message


async def test_query_that_fails_on_the_data_is_no_data(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_t_dup", 1, {"k": "a"})
    await scraped(prometheus_url, exporter, "unship_t_dup", 2, {"k": "b"})
    obs = await source.observe(signal(query="unship_t_dup * on() unship_t_dup"), poll())
    assert (obs.value, obs.measurement) == (None, Measurement.NO_DATA)
    assert "query failed" in obs.detail and "many-to-many" in obs.detail


async def test_unreachable_prometheus_is_retryable() -> None:
    source = PrometheusSignalSource(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        with pytest.raises(ApplicationError) as err:
            await source.observe(signal(query="up"), poll())
    finally:
        await source.aclose()
    assert not err.value.non_retryable
    assert "will retry" in err.value.message


async def test_exactly_min_samples_outputs_is_measured(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_t_edge_bad", 3)
    await scraped(prometheus_url, exporter, "unship_t_edge_outputs", 100)
    sig = signal(25, events="unship_t_edge_bad", outputs="unship_t_edge_outputs", min_samples=100)

    obs = await source.observe(sig, poll(sig))
    assert (obs.measurement, obs.samples) == (Measurement.BREACH, 100)
    assert obs.value == pytest.approx(300)
