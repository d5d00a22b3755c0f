"""Backtests: recorded history through the playbook's own trigger rules."""

from __future__ import annotations

import pytest

from playbooks.loader import library_folder, load_playbook
from tabletop.backtest import OverrideError, apply_overrides, backtest
from tabletop.history import parse_history

CHAT = load_playbook(library_folder() / "conversational-agent.yaml").playbook

# hallucination counters per 5-minute window; 4000 answers each -> rate per 10k = events * 2.5
HISTORY = """timestamp,hallucination-rate.events,hallucination-rate.outputs,latency-p95
2025-03-01T10:00:00Z,10,4000,1.5
2025-03-01T10:05:00Z,12,4000,1.6
2025-03-01T10:10:00Z,30,4000,1.7
2025-03-01T10:15:00Z,32,4000,1.7
2025-03-01T10:20:00Z,35,4000,1.8
2025-03-01T10:25:00Z,36,4000,1.8
"""


def test_fires_when_the_breach_is_sustained() -> None:
    result = backtest(CHAT, parse_history(HISTORY, "h.csv", CHAT.signals))
    # 75 per 10k from 10:10 (> 35); three breaching polls one minute apart sustain it (3 of 5)
    assert result.fired and result.kind == "revert"
    assert result.first_breach_at_s == 600 and result.fired_at_s == 720


def test_a_candidate_threshold_moves_the_firing_time() -> None:
    history = parse_history(HISTORY, "h.csv", CHAT.signals)
    later = backtest(apply_overrides(CHAT, ["hallucination-rate.threshold=80"]), history)
    assert later.fired_at_s == 1320  # 87.5 per 10k first breaches 80 at 10:20
    never = backtest(apply_overrides(CHAT, ["hallucination-rate.threshold=95"]), history)
    assert not never.fired and never.fired_at_s is None and "never sustained" in never.reason


def test_counter_columns_respect_min_samples() -> None:
    quiet = HISTORY.replace(",4000,", ",300,")  # 300 answers per window: below min_samples 500
    history = parse_history(quiet, "h.csv", CHAT.signals)
    assert not backtest(CHAT, history).fired
    assert backtest(apply_overrides(CHAT, ["hallucination-rate.min_samples=100"]), history).fired


def test_seconds_timestamps_and_plain_columns() -> None:
    text = "timestamp,latency-p95\n0,2\n120,5\n600,5\n"
    result = backtest(CHAT, parse_history(text, "h.csv", CHAT.signals))
    assert result.fired and result.fired_at_s == 240


def test_bad_overrides_are_refused() -> None:
    for bad in ("nope.threshold=1", "latency-p95.threshold=fast", "latency-p95.colour=1", "latency-p95"):
        with pytest.raises(OverrideError):
            apply_overrides(CHAT, [bad])
