"""Alert payloads of every supported sender, parsed into ``workflows.messages.Alert``, and their authentication.

Pure functions over bytes, headers and parsed JSON: no web framework, no Temporal. A payload that cannot be
used raises ``PayloadError`` naming the field (``alerts.0.labels``); an authentication failure raises
``AuthError`` saying what the sender must present. Unknown keys are ignored everywhere, because senders add
fields over time (Alertmanager's ``notification_reason``, ``routeLabels`` ...).

Wire formats: Alertmanager webhook version 4, Grafana unified alerting (``version: "1"``, optional HMAC),
PagerDuty V3 webhooks (``X-PagerDuty-Signature``), a documented Datadog custom payload (docs/gateway.md), and
a generic JSON contract.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from playbooks.models import Severity
from workflows.messages import Alert, AlertStatus

SOURCES = ("alertmanager", "grafana", "datadog", "pagerduty", "generic")
MAX_ALERTS = 1000  # per request; Alertmanager's max_alerts should be set below this
SIGNATURE_WINDOW_SECONDS = 300
GRAFANA_SIGNATURE_HEADER = "x-grafana-alerting-signature"
GRAFANA_TIMESTAMP_HEADERS = ("x-grafana-alerting-signature-timestamp", "x-grafana-alerting-timestamp")
PAGERDUTY_SIGNATURE_HEADER = "x-pagerduty-signature"
_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


class PayloadError(ValueError):
    """The body is not a usable payload of its source; ``field`` names where (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class AuthError(Exception):
    """The request does not carry valid credentials for its source (answered with 401)."""


# --- authentication ----------------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def check_bearer(headers: Mapping[str, str], token: str) -> bool:
    """``Authorization: Bearer <token>`` (any scheme case), compared in constant time."""
    scheme, _, presented = (_header(headers, "authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def check_basic(headers: Mapping[str, str], username: str, password: str) -> bool:
    """``Authorization: Basic base64(user:password)``, compared in constant time."""
    scheme, _, encoded = (_header(headers, "authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, given = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    user_ok = hmac.compare_digest(user.encode(), username.encode())
    password_ok = hmac.compare_digest(given.encode(), password.encode())
    return bool(sep) and user_ok and password_ok


def grafana_signature(secret: str, body: bytes, timestamp: str | None) -> str:
    """Grafana's HMAC-SHA256: lowercase hex over ``"<ts>:<body>"`` (or the body alone without a timestamp)."""
    message = (timestamp.encode() + b":" + body) if timestamp else body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_grafana(
    secret: str, body: bytes, headers: Mapping[str, str], now: float,
    window: float = SIGNATURE_WINDOW_SECONDS,
) -> None:
    """Check ``X-Grafana-Alerting-Signature`` (and the timestamp header's freshness when one is sent)."""
    signature = _header(headers, GRAFANA_SIGNATURE_HEADER)
    if not signature:
        raise AuthError("missing X-Grafana-Alerting-Signature (configure hmacConfig on the contact point)")
    timestamp = next((v for h in GRAFANA_TIMESTAMP_HEADERS if (v := _header(headers, h))), None)
    if timestamp is not None:
        try:
            sent = float(timestamp)
        except ValueError:
            raise AuthError("the signature timestamp is not unix seconds") from None
        if abs(now - sent) > window:
            raise AuthError(f"the signature timestamp is more than {window:g}s away from now (replay?)")
    expected = grafana_signature(secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise AuthError("the Grafana signature does not match the body")


def pagerduty_signature(secret: str, body: bytes) -> str:
    """PagerDuty's ``v1=<hex HMAC-SHA256 of the raw body>``."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_pagerduty(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Check ``X-PagerDuty-Signature``; any of its comma-separated ``v1=`` entries may match (key rotation)."""
    header = _header(headers, PAGERDUTY_SIGNATURE_HEADER)
    if not header:
        raise AuthError("missing X-PagerDuty-Signature")
    expected = pagerduty_signature(secret, body).encode()
    if not any(hmac.compare_digest(expected, entry.strip().encode()) for entry in header.split(",")):
        raise AuthError("the PagerDuty signature does not match the body")


# --- decoding ------------------------------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """The JSON document in ``body``, or ``PayloadError('body', ...)``."""
    if not body.strip():
        raise PayloadError("body", "empty; a JSON document is required")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("body", f"not valid JSON ({exc})") from None
    except RecursionError:
        raise PayloadError("body", "JSON nested too deeply") from None


def decode_form_or_json(body: bytes, content_type: str) -> Any:
    """Datadog may send its payload "encoded as form": each template key becomes a form field."""
    if "application/x-www-form-urlencoded" in content_type.lower():
        try:
            fields = urllib.parse.parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise PayloadError("body", "the form is not UTF-8") from None
        return {key: values[-1] for key, values in fields.items()}
    return decode_json(body)


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def _validate(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first.get("loc", ())))
        if prefix:
            field = f"{prefix}.{field}" if field != "body" else prefix
        raise PayloadError(field, str(first.get("msg", "invalid"))) from None


def _stamp(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return None if value <= _ZERO_TIME else value


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex identity of a label set (for senders that do not send a fingerprint)."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


_Labels = dict[str, str]


def _string_map(value: Any) -> Any:
    """Label maps must be string -> string; numbers and booleans are accepted and written as text."""
    if value is None:
        return {}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(item, bool):
                out[key] = str(item).lower()
            elif isinstance(item, (int, float, str)):
                out[key] = str(item)
            else:
                raise ValueError(f"the value of {key!r} must be a string")
        return out
    return value


# --- Alertmanager (webhook version 4) and Grafana (version 1) ---------------------------------------------------


class _AmAlert(_Lenient):
    status: AlertStatus
    labels: _Labels
    annotations: _Labels = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    fingerprint: str = Field(default="", max_length=200)
    generatorURL: str = ""
    values: dict[str, float | None] | None = None  # Grafana only

    _maps = field_validator("labels", "annotations", mode="before")(_string_map)


class _AmMessage(_Lenient):
    version: str
    status: AlertStatus | None = None
    groupKey: str = Field(default="", max_length=2000)
    receiver: str = ""
    alerts: list[_AmAlert] = Field(min_length=0, max_length=MAX_ALERTS)
    truncatedAlerts: int = 0

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _from_am(message: _AmMessage, source: str, received_at: datetime) -> list[Alert]:
    alerts = []
    for item in message.alerts:
        annotations = dict(item.annotations)
        if item.generatorURL:
            annotations.setdefault("generator_url", item.generatorURL)
        for ref, value in (item.values or {}).items():
            if value is not None:
                annotations.setdefault(f"value_{ref}", f"{value:g}")
        alerts.append(Alert(
            source=source, status=item.status, name=item.labels.get("alertname", ""), labels=item.labels,
            annotations=annotations, fingerprint=item.fingerprint or label_fingerprint(item.labels),
            group_key=message.groupKey, severity=Severity.parse(item.labels.get("severity")),
            starts_at=_stamp(item.startsAt), ends_at=_stamp(item.endsAt), received_at=received_at,
        ))
    return alerts


def parse_alertmanager(data: Any, received_at: datetime) -> list[Alert]:
    """Alertmanager's webhook body (``version: "4"``); every alert keeps its fingerprint and the group key."""
    message = _validate(_AmMessage, data)
    if message.version != "4":
        raise PayloadError("version", f"expected Alertmanager webhook version \"4\", got {message.version!r}")
    return _from_am(message, "alertmanager", received_at)


def parse_grafana(data: Any, received_at: datetime) -> list[Alert]:
    """Grafana's unified-alerting webhook body (``version: "1"``); query values become ``value_<ref>``."""
    message = _validate(_AmMessage, data)
    if message.version != "1":
        raise PayloadError("version", f"expected Grafana webhook version \"1\", got {message.version!r}")
    return _from_am(message, "grafana", received_at)


# --- Datadog (custom payload contract) ---------------------------------------------------------------------------

DATADOG_RECOVERED = frozenset({"recovered"})
DATADOG_FIRING = frozenset({"triggered", "re-triggered", "warn", "re-warn", "no data", "re-no data", "renotify",
                            "null"})


class _DatadogPayload(_Lenient):
    alert_id: str = Field(min_length=1, max_length=200)
    transition: str = Field(min_length=1, max_length=50)
    title: str = Field(default="", max_length=2000)
    tags: str = Field(default="", max_length=20000)
    scope: str = Field(default="", max_length=20000)
    cycle_key: str = Field(default="", max_length=200)
    priority: str = Field(default="", max_length=20)
    alert_type: str = Field(default="", max_length=20)
    date: str = Field(default="", max_length=40)
    link: str = Field(default="", max_length=3000)
    event_id: str = Field(default="", max_length=200)

    @field_validator("alert_id", "date", "event_id", "cycle_key", mode="before")
    @classmethod
    def _number_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _datadog_tags(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for raw in text.split(","):
        tag = raw.strip()
        if not tag:
            continue
        key, sep, value = tag.partition(":")
        labels[key.strip()] = value.strip() if sep else "true"
    return labels


def _epoch_ms(text: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def parse_datadog(data: Any, received_at: datetime) -> list[Alert]:
    """The documented Datadog custom payload (docs/gateway.md): tags and scope become labels.

    ``Recovered`` is a resolved alert; every other transition is firing. The fingerprint is the monitor id
    with the triggering scope (one per monitor group); the group key is the alert cycle key.
    """
    payload = _validate(_DatadogPayload, data)
    transition = payload.transition.strip().lower()
    if transition in DATADOG_RECOVERED:
        status = AlertStatus.RESOLVED
    elif transition in DATADOG_FIRING:
        status = AlertStatus.FIRING
    else:
        raise PayloadError("transition", f"unknown Datadog transition {payload.transition!r}; expected one of "
                                         "Triggered, Re-Triggered, Recovered, Warn, Re-Warn, No Data, Renotify")
    labels = _datadog_tags(payload.tags)
    labels.update(_datadog_tags(payload.scope))
    title = re.sub(r"^\[[^\]]*\]\s*", "", payload.title).strip()
    labels.setdefault("alertname", title or f"datadog-monitor-{payload.alert_id}")
    labels["datadog_monitor_id"] = payload.alert_id
    annotations = {k: v for k, v in (("title", payload.title), ("link", payload.link),
                                     ("event_id", payload.event_id), ("transition", payload.transition)) if v}
    when = _epoch_ms(payload.date) if payload.date else None
    severity = Severity.parse(payload.priority or labels.get("severity") or
                              {"error": "high", "warning": "warning"}.get(payload.alert_type.lower(), ""))
    scope_key = ",".join(sorted(t.strip() for t in payload.scope.split(",") if t.strip()))
    return [Alert(
        source="datadog", status=status, name=labels["alertname"], labels=labels, annotations=annotations,
        fingerprint=f"datadog:{payload.alert_id}:{hashlib.sha256(scope_key.encode()).hexdigest()[:8]}",
        group_key=payload.cycle_key or f"datadog:{payload.alert_id}", severity=severity,
        starts_at=when if status is AlertStatus.FIRING else None,
        ends_at=when if status is AlertStatus.RESOLVED else None, received_at=received_at,
    )]


# --- PagerDuty (V3 webhooks) -------------------------------------------------------------------------------------

PAGERDUTY_RESOLVED = frozenset({"incident.resolved"})
PAGERDUTY_FIRING = frozenset({"incident.triggered", "incident.reopened", "incident.escalated",
                              "incident.priority_updated", "incident.unacknowledged"})
_KV_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([^\s,;]+)")


class _PdReference(_Lenient):
    id: str = ""
    summary: str = ""


class _PdData(_Lenient):
    id: str = Field(default="", max_length=200)
    type: str = ""
    title: str = Field(default="", max_length=5000)
    status: str = ""
    urgency: str = ""
    incident_key: str | None = Field(default=None, max_length=1000)
    html_url: str = ""
    created_at: datetime | None = None
    service: _PdReference | None = None
    priority: _PdReference | None = None


class _PdEvent(_Lenient):
    id: str = Field(min_length=1, max_length=200)
    event_type: str = Field(min_length=1, max_length=100)
    resource_type: str = ""
    occurred_at: datetime | None = None
    data: _PdData | None = None


class _PdBody(_Lenient):
    event: _PdEvent


def parse_pagerduty(data: Any, received_at: datetime) -> list[Alert]:
    """One PagerDuty V3 event. Incident triggers fire, resolutions resolve; pings and other events give none.

    Labels: ``alertname`` (the incident title up to the first ``key=value``), ``service`` (the PagerDuty
    service name), ``urgency``, ``priority``, plus every ``key=value`` written in the title, so a title like
    ``GenAIQualityDegraded service=chat-assistant release=v2.3`` routes like an Alertmanager alert.
    """
    event = _validate(_PdBody, data).event
    if event.event_type not in PAGERDUTY_RESOLVED | PAGERDUTY_FIRING or event.data is None:
        return []
    incident = event.data
    if incident.type not in ("incident", "incident_reference", ""):
        return []
    if not incident.id:
        raise PayloadError("event.data.id", "an incident event needs the incident id")
    labels = {k: v for k, v in _KV_RE.findall(incident.title)}
    head = _KV_RE.split(incident.title, maxsplit=1)[0].strip(" -:")
    labels.setdefault("alertname", head or f"pagerduty-{incident.id}")
    if incident.service and incident.service.summary:
        labels.setdefault("service", incident.service.summary)
    if incident.urgency:
        labels.setdefault("urgency", incident.urgency)
    if incident.priority and incident.priority.summary:
        labels.setdefault("priority", incident.priority.summary)
    labels["pagerduty_incident_id"] = incident.id
    status = AlertStatus.RESOLVED if event.event_type in PAGERDUTY_RESOLVED else AlertStatus.FIRING
    severity = Severity.parse(labels.get("severity") or (incident.priority.summary if incident.priority else "")
                              or ("high" if incident.urgency == "high" else "warning"))
    annotations = {k: v for k, v in (("title", incident.title), ("link", incident.html_url),
                                     ("event_id", event.id), ("event_type", event.event_type)) if v}
    return [Alert(
        source="pagerduty", status=status, name=labels["alertname"], labels=labels, annotations=annotations,
        fingerprint=f"pagerduty:{incident.id}", group_key=incident.incident_key or f"pagerduty:{incident.id}",
        severity=severity, starts_at=_stamp(incident.created_at),
        ends_at=_stamp(event.occurred_at) if status is AlertStatus.RESOLVED else None, received_at=received_at,
    )]


# --- generic JSON ------------------------------------------------------------------------------------------------


class _GenericAlert(_Lenient):
    labels: _Labels = Field(min_length=1)
    status: AlertStatus = AlertStatus.FIRING
    name: str = Field(default="", max_length=500)
    annotations: _Labels = Field(default_factory=dict)
    fingerprint: str = Field(default="", max_length=200)
    group_key: str = Field(default="", max_length=2000)
    severity: str = Field(default="", max_length=50)
    starts_at: datetime | None = None
    ends_at: datetime | None = None

    _maps = field_validator("labels", "annotations", mode="before")(_string_map)


class _GenericBody(_Lenient):
    alerts: list[_GenericAlert] = Field(min_length=1, max_length=MAX_ALERTS)


def parse_generic(data: Any, received_at: datetime) -> list[Alert]:
    """``{"alerts": [{labels, status?, name?, annotations?, fingerprint?, group_key?, severity?, starts_at?,
    ends_at?}]}``, or one such alert object on its own."""
    if isinstance(data, dict) and "alerts" not in data and "labels" in data:
        data = {"alerts": [data]}
    body = _validate(_GenericBody, data)
    return [Alert(
        source="generic", status=a.status, name=a.name or a.labels.get("alertname", ""), labels=a.labels,
        annotations=a.annotations, fingerprint=a.fingerprint or label_fingerprint(a.labels),
        group_key=a.group_key, severity=Severity.parse(a.severity or a.labels.get("severity")),
        starts_at=_stamp(a.starts_at), ends_at=_stamp(a.ends_at), received_at=received_at,
    ) for a in body.alerts]


PARSERS: dict[str, Callable[[Any, datetime], list[Alert]]] = {
    "alertmanager": parse_alertmanager,
    "grafana": parse_grafana,
    "datadog": parse_datadog,
    "pagerduty": parse_pagerduty,
    "generic": parse_generic,
}
