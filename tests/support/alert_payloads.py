"""Realistic webhook bodies and signed headers for every alert source the gateway accepts (tests, bench)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from workers.web.alert_sources import grafana_signature, pagerduty_signature

FIRING_END = "0001-01-01T00:00:00Z"


def am_alert(labels: dict[str, str], fingerprint: str, status: str = "firing",
             starts_at: str = "2026-08-01T10:00:00Z", ends_at: str = FIRING_END) -> dict[str, Any]:
    return {"status": status, "labels": dict(labels), "annotations": {"summary": "quality degraded"},
            "startsAt": starts_at, "endsAt": ends_at, "generatorURL": "http://prometheus/graph?g0.expr=x",
            "fingerprint": fingerprint}


def alertmanager(alerts: list[dict[str, Any]], group_key: str = '{}:{alertname="GenAIQualityDegraded"}',
                 version: str = "4") -> dict[str, Any]:
    """An Alertmanager v0.2x webhook body, with the newer keys a receiver must tolerate."""
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": version, "groupKey": group_key, "truncatedAlerts": 0, "status": status,
            "receiver": "unship", "groupLabels": {"alertname": "GenAIQualityDegraded"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "notification_reason": "first notification", "routeLabels": {}, "alerts": alerts}


def grafana(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    body = alertmanager(alerts, group_key='{}/{}:{alertname="GenAIQualityDegraded"}', version="1")
    body.update({"orgId": 1, "state": "alerting", "title": "[FIRING:1] GenAIQualityDegraded", "message": "..."})
    for alert in body["alerts"]:
        alert.update({"silenceURL": "http://grafana/silence", "dashboardURL": "", "panelURL": "",
                      "values": {"B": 44.2, "C": 1}, "valueString": "[ var='B' value=44.2 ]"})
    return body


def datadog(alert_id: str = "1234", transition: str = "Triggered",
            tags: str = "service:chat,release:chat-v2,alertname:GenAIQualityDegraded",
            scope: str = "env:prod") -> dict[str, Any]:
    return {"alert_id": alert_id, "transition": transition, "cycle_key": f"cycle-{alert_id}",
            "title": f"[{transition}] GenAIQualityDegraded", "tags": tags, "scope": scope,
            "date": "1785578400000", "link": "https://app.datadoghq.com/monitors/1234", "event_id": "777",
            "priority": "P2", "alert_type": "error"}


def pagerduty(incident: str = "PABC123", event_type: str = "incident.triggered",
              title: str = "GenAIQualityDegraded service=chat release=chat-v2") -> dict[str, Any]:
    return {"event": {
        "id": f"evt-{incident}-{event_type}", "event_type": event_type, "resource_type": "incident",
        "occurred_at": "2026-08-01T10:00:00Z", "agent": None, "client": None,
        "data": {"id": incident, "type": "incident", "self": f"https://api.pagerduty.com/incidents/{incident}",
                 "html_url": f"https://acme.pagerduty.com/incidents/{incident}", "number": 42,
                 "status": "triggered" if event_type == "incident.triggered" else "resolved",
                 "incident_key": f"key-{incident}", "created_at": "2026-08-01T10:00:00Z", "title": title,
                 "service": {"id": "PSVC1", "summary": "chat", "type": "service_reference"},
                 "assignees": [], "escalation_policy": {"id": "PEP1"}, "teams": [], "priority": None,
                 "urgency": "high", "conference_bridge": None, "resolve_reason": None}}}


def generic(labels: dict[str, str], fingerprint: str = "", status: str = "firing",
            group_key: str = "canary-checker") -> dict[str, Any]:
    return {"alerts": [{"labels": labels, "status": status, "fingerprint": fingerprint, "group_key": group_key,
                        "annotations": {"summary": "from a script"}}]}


def raw(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}", "Content-Type": "application/json"}


def grafana_headers(secret: str, body: bytes, timestamp: float | None = None) -> dict[str, str]:
    ts = str(int(timestamp if timestamp is not None else time.time()))
    return {"X-Grafana-Alerting-Signature": grafana_signature(secret, body, ts),
            "X-Grafana-Alerting-Signature-Timestamp": ts, "Content-Type": "application/json"}


def pagerduty_headers(secret: str, body: bytes, rotated_secret: str | None = None) -> dict[str, str]:
    signature = pagerduty_signature(secret, body)
    if rotated_secret:
        signature = pagerduty_signature(rotated_secret, body) + "," + signature
    return {"X-PagerDuty-Signature": signature, "X-Webhook-Id": "wh-1", "Content-Type": "application/json",
            "User-Agent": "PagerDuty-Webhook/V3.0"}
