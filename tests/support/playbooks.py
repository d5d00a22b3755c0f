"""Build playbooks for tests from a compact base, with deep overrides."""

from __future__ import annotations

from typing import Any

from playbooks.loader import content_hash
from playbooks.models import Playbook, PlaybookSnapshot
from tabletop.scenarios import deep_merge

BASE: dict[str, Any] = {
    "name": "chat-test",
    "scenario": "conversational-agent",
    "roles": {
        "on_call": {"users": ["U_ONCALL", "U_ONCALL2"]},
        "safety_lead": {"users": ["U_SAFETY"], "groups": ["S_SAFETY"]},
        "eng_manager": {"users": ["U_MANAGER"]},
    },
    "trigger": {"matchers": ["alertname=GenAIQualityDegraded", "service=chat"]},
    "signals": [
        {"name": "hallucinations", "category": "model_quality",
         "source": {"type": "scripted"}, "threshold": {"value": 30, "unit": "per 10k outputs"}},
        {"name": "latency_p95", "category": "operational_health",
         "source": {"type": "scripted"}, "threshold": {"value": 2.5, "unit": "s"}},
        {"name": "fairness_gap", "category": "fairness",
         "source": {"type": "scripted"}, "threshold": {"value": 0.1}},
    ],
    "confirmation": {"window": "5m", "interval": "1m", "breaches": 3, "out_of": 4,
                     "rule": {"any_of": ["hallucinations"]}},
    "decision": {"mode": "approval", "roles": ["on_call", "safety_lead"], "quorum": 1, "timeout": "15m",
                 "escalation": {"roles": ["eng_manager"], "channel": "#ml-escalations", "timeout": "10m"},
                 "default_action": "revert"},
    "rollback": {
        "targets": [{"kind": "flag", "provider": "flagd", "key": "chat-model"}],
        "stages": [{"percent": 10, "bake": "5m", "verify": ["latency_p95"]},
                   {"percent": 50, "bake": "5m", "verify": ["latency_p95"]},
                   {"percent": 100, "bake": "5m"}],
        "on_stage_failure": "halt",
    },
    "communications": {"channel": "#ml-incidents"},
    "review": {"tasks": [{"title": "Write the incident summary", "owner": "on_call", "due": "3d"}],
               "regulatory_report_due": "72h", "purge_outputs_after": "30d"},
}


def playbook(**overrides: Any) -> Playbook:
    return Playbook.model_validate(deep_merge(BASE, overrides))


def snapshot(**overrides: Any) -> PlaybookSnapshot:
    pb = playbook(**overrides)
    return PlaybookSnapshot(playbook=pb, content_hash=content_hash(pb), source="tests")


COUNTED = {"type": "scripted", "events": "hallucinations_total", "outputs": "responses_total"}


def sequential_snapshot(**sequential: Any) -> PlaybookSnapshot:
    """The base playbook with a counted hallucination rate confirmed by a CUSUM sequential test."""
    signals = [
        {"name": "hallucinations", "category": "model_quality", "source": COUNTED,
         "threshold": {"value": 30, "unit": "per 10k outputs"}},
        {"name": "latency_p95", "category": "operational_health", "source": {"type": "scripted"},
         "threshold": {"value": 2.5, "unit": "s"}},
        {"name": "fairness_gap", "category": "fairness", "source": {"type": "scripted"},
         "threshold": {"value": 0.1}},
    ]
    return snapshot(signals=signals, confirmation={
        "window": "30m", "interval": "1m", "breaches": 3, "out_of": 5, "method": "sequential",
        "sequential": {"test": "cusum", "false_alarm": 0.01, "detect": 1.2, "min_polls": 3, **sequential},
    })
