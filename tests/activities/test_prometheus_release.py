"""``$release`` in playbook PromQL, and range queries, against a real Prometheus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from activities.contracts import IntegrityRequest, Measurement, PollRequest
from activities.integrity import IntegrityChecker
from activities.prometheus import (
    PrometheusSignalSource,
    ReleaseSubstitutionError,
    substitute_release,
)
from activities.scripted import ScriptedFlagProvider
from playbooks.loader import load_playbook
from playbooks.models import PromqlCheck, Signal
from tests.support.prometheus import MetricsExporter, wait_for

LIBRARY = "playbooks/library"


def signal(threshold: float = 25, min_samples: int = 0, **source: object) -> Signal:
    return Signal.model_validate({
        "name": "sig", "category": "model_quality", "threshold": {"value": threshold},
        "source": {"type": "prometheus", **source}, "min_samples": min_samples,
    })


def poll(release: str, sig: Signal) -> PollRequest:
    return PollRequest(incident_id=f"unship:img:{release}", release=release, signals=[sig], poll=0)


async def scraped(url: str, exporter: MetricsExporter, name: str, value: float, labels: dict[str, str]) -> None:
    exporter.set(name, value, labels)
    await asyncio.to_thread(wait_for, url, name, lambda r: any(
        float(s["value"][1]) == value and all(s["metric"].get(k) == v for k, v in labels.items()) for s in r))


@pytest.fixture
async def source(prometheus_url: str) -> AsyncIterator[PrometheusSignalSource]:
    src = PrometheusSignalSource(prometheus_url)
    yield src
    await src.aclose()


async def test_each_release_is_measured_on_its_own_series(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    for release, bad, served in (("ckpt-7", 60, 10_000), ("ckpt-6", 2, 10_000)):
        await scraped(prometheus_url, exporter, "unship_r_flagged", bad, {"model_version": release})
        await scraped(prometheus_url, exporter, "unship_r_served", served, {"model_version": release})
    sig = signal(events='sum(unship_r_flagged{model_version="$release"})',
                 outputs='sum(unship_r_served{model_version="$release"})', min_samples=1000)

    bad = await source.observe(sig, poll("ckpt-7", sig))
    good = await source.observe(sig, poll("ckpt-6", sig))
    unknown = await source.observe(sig, poll("ckpt-99", sig))

    assert (bad.value, bad.measurement) == (pytest.approx(60), Measurement.BREACH)
    assert (good.value, good.measurement) == (pytest.approx(2), Measurement.HEALTHY)
    assert (unknown.value, unknown.measurement) == (None, Measurement.NO_DATA)  # never "healthy by absence"


async def test_a_release_with_quotes_cannot_change_the_query(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    hostile = 'x"} or vector(1000) or up{a="'
    # The test exporter writes label values verbatim, so give it the exposition-format escaping of v"2\b.
    exporter.set("unship_r_quoted", 7, {"model_version": 'v\\"2\\\\b'})
    await asyncio.to_thread(wait_for, prometheus_url, "unship_r_quoted",
                            lambda r: any(s["metric"].get("model_version") == 'v"2\\b' for s in r))
    sig = signal(threshold=5, query='max(unship_r_quoted{model_version="$release"})')

    exact = await source.observe(sig, poll('v"2\\b', sig))
    injected = await source.observe(sig, poll(hostile, sig))

    assert (exact.value, exact.measurement) == (7, Measurement.BREACH)
    assert (injected.value, injected.measurement) == (None, Measurement.NO_DATA)


async def test_release_outside_a_string_literal_is_a_playbook_error(source: PrometheusSignalSource) -> None:
    sig = signal(query="unship_r_served + $release")
    with pytest.raises(ApplicationError) as err:
        await source.observe(sig, poll("v1", sig))
    assert err.value.non_retryable
    assert "must stand inside a string literal" in err.value.message and "fix the query" in err.value.message


def test_substitution_respects_quotes_comments_and_names() -> None:
    assert substitute_release("x{m='$release'}", "it's") == "x{m='it\\'s'}"
    assert substitute_release('x{m="$release"} # $release', "v1") == 'x{m="v1"} # $release'
    assert substitute_release('x{m="$release_name"}', "v1") == 'x{m="$release_name"}'
    assert substitute_release("x{m=~`$release.*`}", "v1") == "x{m=~`v1.*`}"
    with pytest.raises(ReleaseSubstitutionError):
        substitute_release("x{m=~`$release`}", "a`b")


async def test_library_playbook_signals_run_for_the_alerted_release(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    playbook = load_playbook(f"{LIBRARY}/image-generator.yaml").playbook
    [sig] = [s for s in playbook.signals if s.source.is_ratio and "flagged" in (s.source.events or "")]
    # Counters that start at 0 and grow: increase() over the window sees the growth.
    labels = {"model_version": "sdxl-ft-0412"}
    for total_flagged, total_served in ((0, 0), (90, 12_000)):
        await scraped(prometheus_url, exporter, "imagegen_audit_flagged_total", total_flagged,
                      {**labels, "category": "nsfw"})
        await scraped(prometheus_url, exporter, "imagegen_images_served_total", total_served, labels)

    obs = await source.observe(sig, poll("sdxl-ft-0412", sig))
    other = await source.observe(sig, poll("sdxl-ft-0301", sig))

    assert obs.samples is not None and obs.samples > 0 and obs.value is not None, obs.detail
    assert "events /" in obs.detail
    assert other.value is None and other.measurement is not Measurement.BREACH


async def test_promql_integrity_check_uses_the_release(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_r_live", 0, {"model_version": "ckpt-7"})
    await scraped(prometheus_url, exporter, "unship_r_live", 3, {"model_version": "ckpt-6"})
    check = PromqlCheck(name="bad-release-drained", query='sum(unship_r_live{model_version="$release"})',
                        threshold={"value": 0})
    checker = IntegrityChecker(ScriptedFlagProvider(), source)

    drained = await checker.run(IntegrityRequest(incident_id="i", release="ckpt-7", checks=[check], targets=[],
                                                 expected_previous_percent=100))
    still_live = await checker.run(IntegrityRequest(incident_id="i", release="ckpt-6", checks=[check],
                                                    targets=[], expected_previous_percent=100))

    assert drained.passed, drained.results[0].evidence
    assert not still_live.passed and "= 3.0" in still_live.results[0].evidence


async def test_range_query_gives_the_values_over_the_window(
        prometheus_url: str, exporter: MetricsExporter, source: PrometheusSignalSource) -> None:
    await scraped(prometheus_url, exporter, "unship_r_range", 4, {"model_version": "v1"})
    end = datetime.now(UTC)
    result = await source.query_range('unship_r_range{model_version="v1"}', end - timedelta(seconds=30), end,
                                      timedelta(seconds=1))
    assert result.points, result.detail
    assert result.points[-1][1] == 4
    assert all(t.tzinfo is not None for t, _ in result.points)
    assert [t for t, _ in result.points] == sorted(t for t, _ in result.points)

    nan = await source.query_range("vector(0)/vector(0)", end - timedelta(seconds=5), end, timedelta(seconds=1))
    assert nan.points and all(v is None for _, v in nan.points)

    empty = await source.query_range("unship_r_never", end - timedelta(seconds=5), end, timedelta(seconds=1))
    assert (empty.points, empty.detail) == ([], "no series")

    with pytest.raises(ApplicationError) as err:
        await source.query_range("rate(", end - timedelta(seconds=5), end, timedelta(seconds=1))
    assert err.value.non_retryable

    with pytest.raises(ApplicationError) as err:
        await source.query_range("up", end, end - timedelta(seconds=5), timedelta(seconds=1))
    assert err.value.non_retryable and "start <= end" in err.value.message
