"""unship's own Prometheus metrics (``prometheus_client``), served at ``/metrics``.

Incident figures are derived from the audit events as the ``record_audit`` activity projects them (workflow code
stays deterministic and never touches a metric): phases entered, outcomes, decisions, stage failures and the
times from the incident's start to detection, decision, first cohort and full revert. The gateway counts alerts
and authentication failures, the activities count their retries and the store its write errors.

Every name here is used by ``deploy/grafana/unship-dashboard.json`` and ``deploy/prometheus/unship-rules.yaml``
(the tests check both against a real Prometheus).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from activities.contracts import AuditBatch

REGISTRY = CollectorRegistry(auto_describe=True)
"""unship's registry (the process's default registry stays free for embedding applications)."""

# Minutes to hours: detection waits for a confirmation window, decisions for people, reverts for bakes.
_SECONDS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)

INCIDENT_PHASES = Counter("unship_incident_phase_entered", "Incidents entering a phase, by playbook and phase.",
                          ["playbook", "phase"], registry=REGISTRY)
INCIDENT_OUTCOMES = Counter("unship_incident_outcomes", "Incidents closed, by playbook and outcome.",
                            ["playbook", "outcome"], registry=REGISTRY)
ALERTS = Counter("unship_alerts", "Alerts received by the gateway, by source and result "
                 "(accepted, unmatched, refused).", ["source", "result"], registry=REGISTRY)
AUTH_FAILURES = Counter("unship_auth_failures", "Requests refused for missing or wrong credentials, by endpoint "
                        "(api, alerts, slack).", ["endpoint"], registry=REGISTRY)
DECISIONS = Counter("unship_decisions", "Decisions at approval gates, by verdict and result (accepted, refused).",
                    ["verdict", "result"], registry=REGISTRY)
STAGE_FAILURES = Counter("unship_stage_failures", "Revert or release stages that failed to apply or verify.",
                         ["playbook", "kind"], registry=REGISTRY)
ACTIVITY_RETRIES = Counter("unship_activity_retries", "Activity attempts after the first, by external system.",
                           ["system"], registry=REGISTRY)
STORE_WRITE_ERRORS = Counter("unship_store_write_errors", "Incident store writes that failed (retried).",
                             registry=REGISTRY)
TIME_TO_DETECT = Histogram("unship_time_to_detect_seconds", "Incident start to sustained breach confirmed.",
                           ["playbook"], buckets=_SECONDS, registry=REGISTRY)
TIME_TO_DECIDE = Histogram("unship_time_to_decide_seconds", "Incident start to the revert decision.",
                           ["playbook"], buckets=_SECONDS, registry=REGISTRY)
TIME_TO_FIRST_COHORT = Histogram("unship_time_to_first_cohort_seconds", "Incident start to the first cohort "
                                 "moved back.", ["playbook"], buckets=_SECONDS, registry=REGISTRY)
TIME_TO_FULL_REVERT = Histogram("unship_time_to_full_revert_seconds", "Incident start to every user on the "
                                "previous model.", ["playbook"], buckets=_SECONDS, registry=REGISTRY)

ALERT_RESULTS = ("accepted", "unmatched", "refused")
AUTH_ENDPOINTS = ("api", "alerts", "slack")
SYSTEMS = ("flags", "signals", "chat", "store", "integrity")


def initialise(sources: tuple[str, ...] = ()) -> None:
    """Create the label sets known in advance at zero, so dashboards and alerts see 0 rather than no data."""
    for source in sources:
        for result in ALERT_RESULTS:
            ALERTS.labels(source=source, result=result)
    for endpoint in AUTH_ENDPOINTS:
        AUTH_FAILURES.labels(endpoint=endpoint)
    for verdict in ("approve", "reject"):
        for result in ("accepted", "refused"):
            DECISIONS.labels(verdict=verdict, result=result)
    for system in SYSTEMS:
        ACTIVITY_RETRIES.labels(system=system)


class AuditMetrics:
    """Turns projected audit batches into incident metrics, each event counted once per process (a retried or
    replayed batch carries events already seen)."""

    def __init__(self, remember: int = 50_000) -> None:
        initialise()
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._first_stage: set[str] = set()
        self._remember = remember

    def observe(self, batch: AuditBatch) -> None:
        incident = batch.incident
        run = f"{incident.incident_id}@{incident.started_at.isoformat()}"  # an id is reused after it closed
        last = self._seen.get(run, 0)
        new = [e for e in batch.events if e.seq > last]
        if not new:
            return
        self._seen[run] = max(e.seq for e in new)
        self._seen.move_to_end(run)
        while len(self._seen) > self._remember:
            forgotten, _ = self._seen.popitem(last=False)
            self._first_stage.discard(forgotten)
        playbook = incident.playbook
        for event in new:
            since = _seconds(incident.started_at, event.at)
            if event.kind in ("opened", "release_started"):
                INCIDENT_PHASES.labels(playbook=playbook, phase="confirming" if event.kind == "opened"
                                       else "releasing").inc()
            elif event.kind == "gate_opened":
                INCIDENT_PHASES.labels(playbook=playbook, phase="awaiting_decision").inc()
            elif event.kind == "escalated":
                INCIDENT_PHASES.labels(playbook=playbook, phase="escalated").inc()
            elif event.kind == "frozen":
                INCIDENT_PHASES.labels(playbook=playbook, phase="investigating").inc()
            elif event.kind == "confirmed":
                TIME_TO_DETECT.labels(playbook=playbook).observe(since)
            elif event.kind == "decided":
                TIME_TO_DECIDE.labels(playbook=playbook).observe(since)
                INCIDENT_PHASES.labels(playbook=playbook, phase="reverting").inc()
            elif event.kind == "decision":
                DECISIONS.labels(verdict=str(event.data.get("verdict", "unknown")), result="accepted").inc()
            elif event.kind == "decision_refused":
                DECISIONS.labels(verdict=str(event.data.get("verdict", "unknown")), result="refused").inc()
            elif event.kind == "stage_applied":
                if run not in self._first_stage:
                    self._first_stage.add(run)
                    TIME_TO_FIRST_COHORT.labels(playbook=playbook).observe(since)
                if float(event.data.get("percent", 0) or 0) >= 100 and incident.incident_id.startswith("unship:"):
                    TIME_TO_FULL_REVERT.labels(playbook=playbook).observe(since)
            elif event.kind in ("stage_failed", "apply_failed"):
                STAGE_FAILURES.labels(playbook=playbook, kind=event.kind).inc()
            elif event.kind == "review_started":
                INCIDENT_PHASES.labels(playbook=playbook, phase="review").inc()
            elif event.kind == "closed":
                INCIDENT_PHASES.labels(playbook=playbook, phase="closed").inc()
                INCIDENT_OUTCOMES.labels(playbook=playbook, outcome=str(event.data.get("outcome", "unknown"))).inc()
                self._first_stage.discard(run)


def _seconds(start: datetime, at: datetime) -> float:
    if (start.tzinfo is None) != (at.tzinfo is None):
        start, at = start.replace(tzinfo=None), at.replace(tzinfo=None)
    return max(0.0, (at - start).total_seconds())
