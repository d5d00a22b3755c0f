"""Parsing every sender's payload into alerts, their authentication, and routing with group commit.

No Temporal here: the router's sender is a recorder, so the tests can count round trips exactly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tests.support import alert_payloads as p
from tests.support.playbooks import snapshot
from workers.web.alert_router import AlertRouter
from workers.web.alert_sources import (
    AuthError,
    PayloadError,
    check_basic,
    check_bearer,
    grafana_signature,
    parse_alertmanager,
    parse_datadog,
    parse_generic,
    parse_grafana,
    parse_pagerduty,
    verify_grafana,
    verify_pagerduty,
)
from workflows.messages import Alert, AlertStatus

NOW = datetime(2026, 8, 1, 10, 5, tzinfo=UTC)
LABELS = {"alertname": "GenAIQualityDegraded", "service": "chat", "release": "chat-v2", "severity": "critical"}


def test_alertmanager_alerts_keep_fingerprint_group_key_and_resolution() -> None:
    body = p.alertmanager([p.am_alert(LABELS, "a1b2c3d4e5f60718"),
                           p.am_alert(LABELS | {"pod": "x"}, "ffff000011112222", status="resolved",
                                      ends_at="2026-08-01T10:04:00Z")])
    firing, resolved = parse_alertmanager(body, NOW)
    assert (firing.source, firing.status, firing.name) == ("alertmanager", AlertStatus.FIRING, "GenAIQualityDegraded")
    assert firing.fingerprint == "a1b2c3d4e5f60718" and firing.group_key == body["groupKey"]
    assert firing.ends_at is None, "the zero time of a firing alert is not an end"
    assert firing.severity.value == "critical" and firing.received_at == NOW
    assert resolved.status is AlertStatus.RESOLVED and resolved.ends_at == datetime(2026, 8, 1, 10, 4, tzinfo=UTC)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b.pop("alerts"), "alerts"),
    (lambda b: b.update(version="3"), "version"),
    (lambda b: b["alerts"][0].update(status="burning"), "alerts.0.status"),
    (lambda b: b["alerts"][0].update(labels="release=v2"), "alerts.0.labels"),
    (lambda b: b["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
    (lambda b: b["alerts"][0]["labels"].update(nested={"a": 1}), "alerts.0.labels"),
])
def test_alertmanager_errors_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    body = p.alertmanager([p.am_alert(LABELS, "fp")])
    mutate(body)
    with pytest.raises(PayloadError) as err:
        parse_alertmanager(body, NOW)
    assert err.value.field == field, str(err.value)


def test_grafana_values_become_annotations_and_version_is_checked() -> None:
    (alert,) = parse_grafana(p.grafana([p.am_alert(LABELS, "g1")]), NOW)
    assert alert.source == "grafana" and alert.annotations["value_B"] == "44.2"
    with pytest.raises(PayloadError, match="version"):
        parse_grafana(p.alertmanager([p.am_alert(LABELS, "g1")]), NOW)


def test_datadog_contract_tags_become_labels_and_recovered_resolves() -> None:
    (alert,) = parse_datadog(p.datadog(), NOW)
    assert alert.labels["release"] == "chat-v2" and alert.labels["service"] == "chat"
    assert alert.labels["env"] == "prod" and alert.group_key == "cycle-1234"
    assert alert.status is AlertStatus.FIRING and alert.severity.value == "high"
    (recovered,) = parse_datadog(p.datadog(transition="Recovered"), NOW)
    assert recovered.status is AlertStatus.RESOLVED and recovered.fingerprint == alert.fingerprint
    with pytest.raises(PayloadError) as err:
        parse_datadog(p.datadog(transition="Exploded"), NOW)
    assert err.value.field == "transition"
    with pytest.raises(PayloadError) as err:
        parse_datadog({"transition": "Triggered"}, NOW)
    assert err.value.field == "alert_id"


def test_pagerduty_title_labels_resolution_and_pings() -> None:
    (alert,) = parse_pagerduty(p.pagerduty(), NOW)
    assert alert.labels.items() >= {"alertname": "GenAIQualityDegraded", "service": "chat", "release": "chat-v2"}.items()
    assert alert.fingerprint == "pagerduty:PABC123" and alert.group_key == "key-PABC123"
    (resolved,) = parse_pagerduty(p.pagerduty(event_type="incident.resolved"), NOW)
    assert resolved.status is AlertStatus.RESOLVED
    ping = {"event": {"id": "e1", "event_type": "pagey.ping", "resource_type": "pagey", "data": {"type": "ping"}}}
    assert parse_pagerduty(ping, NOW) == []
    assert parse_pagerduty(p.pagerduty(event_type="incident.annotated"), NOW) == []
    with pytest.raises(PayloadError) as err:
        parse_pagerduty({"event": {"event_type": "incident.triggered"}}, NOW)
    assert err.value.field == "event.id"


def test_generic_single_or_list_and_computed_fingerprint() -> None:
    (one,) = parse_generic({"labels": LABELS}, NOW)
    (listed,) = parse_generic(p.generic(LABELS), NOW)
    assert one.fingerprint == listed.fingerprint and len(one.fingerprint) == 16
    with pytest.raises(PayloadError) as err:
        parse_generic({"alerts": []}, NOW)
    assert err.value.field == "alerts"
    with pytest.raises(PayloadError) as err:
        parse_generic({"alerts": [{"labels": {}}]}, NOW)
    assert err.value.field == "alerts.0.labels"


def test_bearer_and_basic_checks() -> None:
    assert check_bearer(p.bearer("s3cret"), "s3cret")
    assert not check_bearer(p.bearer("s3cret-not"), "s3cret")
    assert not check_bearer({}, "s3cret")
    assert check_basic(p.basic("am", "pw:with:colons"), "am", "pw:with:colons")
    assert not check_basic(p.basic("am", "wrong"), "am", "pw")
    assert not check_basic({"Authorization": "Basic !!!notbase64"}, "am", "pw")


def test_grafana_hmac_with_and_without_timestamp() -> None:
    body = p.raw(p.grafana([p.am_alert(LABELS, "g1")]))
    now = 1_785_578_400.0
    verify_grafana("hmac-secret", body, p.grafana_headers("hmac-secret", body, now), now)
    untimed = {"X-Grafana-Alerting-Signature": grafana_signature("hmac-secret", body, None)}
    verify_grafana("hmac-secret", body, untimed, now)
    with pytest.raises(AuthError, match="does not match"):
        verify_grafana("hmac-secret", body + b" ", p.grafana_headers("hmac-secret", body, now), now)
    with pytest.raises(AuthError, match="replay"):
        verify_grafana("hmac-secret", body, p.grafana_headers("hmac-secret", body, now - 301), now)
    # a timestamp from the future is no fresher than an old one: a captured request replayed later would pass
    with pytest.raises(AuthError, match="away from now"):
        verify_grafana("hmac-secret", body, p.grafana_headers("hmac-secret", body, now + 301), now)
    for edge in (now - 300, now + 300):  # the window is inclusive on both sides
        verify_grafana("hmac-secret", body, p.grafana_headers("hmac-secret", body, edge), now)
    with pytest.raises(AuthError, match="missing"):
        verify_grafana("hmac-secret", body, {}, now)


def test_pagerduty_signature_accepts_any_rotated_entry() -> None:
    body = p.raw(p.pagerduty())
    verify_pagerduty("pd-secret", body, p.pagerduty_headers("pd-secret", body, rotated_secret="old-secret"))
    with pytest.raises(AuthError):
        verify_pagerduty("pd-secret", body, p.pagerduty_headers("forged", body))


# --- routing -------------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, delay: float = 0.01) -> None:
        self.batches: list[tuple[str, list[Alert]]] = []
        self.delay = delay

    async def __call__(self, workflow_id, snapshot, release, alerts) -> str:  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        self.batches.append((workflow_id, list(alerts)))
        return workflow_id


def _alert(release: str, n: int, **labels: str) -> Alert:
    return Alert(source="generic", name="GenAIQualityDegraded", fingerprint=f"{release}-{n}",
                 labels={"alertname": "GenAIQualityDegraded", "service": "chat", "release": release} | labels)


async def test_concurrent_alerts_for_one_incident_share_signals() -> None:
    playbooks = {"chat-test": snapshot()}
    send = Recorder()
    router = AlertRouter(playbooks, send, window=0.005)
    results = await asyncio.gather(*(router.route([_alert(f"r{i % 3}", i)]) for i in range(60)))
    assert all(r.accepted == 1 and r.incidents == [f"unship:chat-test:r{i % 3}"] for i, r in enumerate(results))
    delivered = {a.fingerprint for _, alerts in send.batches for a in alerts}
    assert delivered == {f"r{i % 3}-{i}" for i in range(60)}, "an alert was lost"
    assert len(send.batches) <= 6, f"{len(send.batches)} round trips for 3 incidents"
    assert {wid for wid, _ in send.batches} == {"unship:chat-test:r0", "unship:chat-test:r1", "unship:chat-test:r2"}


class Gauge(Recorder):
    """A recorder that also notes how many sends were in flight at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.in_flight = self.peak = 0

    async def __call__(self, workflow_id, snapshot, release, alerts) -> str:  # type: ignore[no-untyped-def]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().__call__(workflow_id, snapshot, release, alerts)
        finally:
            self.in_flight -= 1


async def test_a_storm_over_many_incidents_keeps_few_signals_in_flight_and_loses_nothing() -> None:
    send = Gauge(delay=0.01)
    router = AlertRouter({"chat-test": snapshot()}, send, window=0, max_sends=3)

    async def sender(n: int) -> list[str]:  # one alert sender: its next alert once the last one was accepted
        reached = []
        for m in range(8):
            result = await router.route([_alert(f"r{(n + m) % 12}", n * 100 + m)])
            assert result.accepted == 1
            reached += result.incidents
        return reached

    reached = await asyncio.gather(*(sender(n) for n in range(30)))
    assert send.peak <= 3, f"{send.peak} signals in flight at once (at most 3)"
    delivered = [a.fingerprint for _, alerts in send.batches for a in alerts]
    assert sorted(delivered) == sorted(f"r{(n + m) % 12}-{n * 100 + m}" for n in range(30) for m in range(8)), \
        "each alert is delivered exactly once"
    assert all(wid == f"unship:chat-test:{a.labels['release']}" for wid, alerts in send.batches for a in alerts)
    assert [r for rs in reached for r in rs] == [f"unship:chat-test:r{(n + m) % 12}" for n in range(30)
                                                 for m in range(8)]
    # 30 senders over 12 incidents: 2.5 alerts of an incident wait at a time, so 96 full signals carry all 240
    assert len(send.batches) <= 100, f"{len(send.batches)} signals for 240 alerts: a lane waiting for a slot " \
                                     "should send every alert of its incident that waits"


async def test_without_batching_every_alert_is_its_own_signal() -> None:
    send = Recorder(delay=0)
    router = AlertRouter({"chat-test": snapshot()}, send, batching=False)
    await asyncio.gather(*(router.route([_alert("r1", i)]) for i in range(10)))
    assert len(send.batches) == 10


async def test_a_failed_send_fails_every_caller_of_that_batch() -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("temporal is down")

    router = AlertRouter({"chat-test": snapshot()}, broken)
    outcomes = await asyncio.gather(*(router.route([_alert("r1", i)]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert not router._lanes, "a failed lane must not linger"


async def test_unmatched_alerts_are_recorded_with_the_reason() -> None:
    send = Recorder(delay=0)
    router = AlertRouter({"chat-test": snapshot()}, send)
    other = Alert(source="generic", name="DiskFull", fingerprint="disk", labels={"alertname": "DiskFull"})
    no_release = Alert(source="generic", name="GenAIQualityDegraded", fingerprint="norel",
                       labels={"alertname": "GenAIQualityDegraded", "service": "chat"})
    bad_release = _alert("has spaces", 1)
    result = await router.route([other, no_release, bad_release, _alert("r1", 2)])
    assert (result.accepted, result.unmatched) == (1, 3)
    summary = router.unmatched.summary()
    assert summary["total"] == 3
    assert summary["by_reason"]["no playbook matches the labels"] == 1
    assert {u["fingerprint"] for u in summary["recent"]} == {"disk", "norel", "has spaces-1"}
    assert any("'release' label is missing" in reason for reason in summary["by_reason"])


async def test_most_specific_playbook_wins_and_severity_label_is_used() -> None:
    broad = snapshot(name="broad", trigger={"matchers": ["alertname=GenAIQualityDegraded"],
                                            "severity_label": "sev"})
    narrow = snapshot(name="narrow", trigger={"matchers": ["alertname=GenAIQualityDegraded", "service=chat"],
                                              "severity_label": "sev"})
    send = Recorder(delay=0)
    router = AlertRouter({"broad": broad, "narrow": narrow}, send)
    result = await router.route([_alert("r1", 1, sev="P1")])
    assert result.incidents == ["unship:narrow:r1"]
    assert send.batches[0][1][0].severity.value == "critical"
