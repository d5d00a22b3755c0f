"""The threshold advisor (``unship backtest --sweep/--healthy/--inject``) and sequential backtests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from playbooks.loader import library_folder, load_playbook
from tabletop.backtest import (
    Injection,
    OverrideError,
    advise,
    apply_setting,
    backtest,
    healthy_stretches,
    parse_healthy,
    parse_injection,
    parse_sweep,
    row_spacing_warning,
    scan,
)
from tabletop.history import load_history, parse_history
from workers.cli.rehearse import backtest_command

ROOT = Path(__file__).resolve().parents[2]
CANARY = load_playbook(library_folder() / "chat-assistant-canary.yaml").playbook
CHAT = load_playbook(library_folder() / "conversational-agent.yaml").playbook
EXAMPLE = ROOT / "docs" / "examples" / "chat-history.csv"


def test_sweep_injection_and_healthy_syntax() -> None:
    assert parse_sweep("moderation-failures.threshold=20:30:5").values == [20, 25, 30]
    assert parse_sweep("false_alarm=0.001,0.01").values == [0.001, 0.01]
    assert parse_injection("moderation-failures=x1.3@2400") == Injection("moderation-failures", 1.3, 2400)
    assert parse_healthy("0:3600") == (0, 3600) and parse_healthy("healthy") == "healthy"
    for bad in ("threshold", "x.threshold=5:1:1", "x.threshold=1:5:0", "x.threshold=a,b"):
        with pytest.raises(OverrideError):
            parse_sweep(bad)
    for bad in ("moderation=1.3", "moderation=x1.3@", "moderation=x0@10"):
        with pytest.raises(OverrideError):
            parse_injection(bad)


def test_settings_a_sweep_can_vary() -> None:
    assert apply_setting(CANARY, "false_alarm", 0.05).confirmation.sequential_settings.false_alarm == 0.05
    assert apply_setting(CANARY, "min_polls", 4).confirmation.sequential_settings.min_polls == 4
    assert apply_setting(CHAT, "breaches", 2).confirmation.breaches == 2
    with pytest.raises(OverrideError, match="does not use 'method: sequential'"):
        apply_setting(CHAT, "detect", 1.5)
    with pytest.raises(OverrideError, match="cannot exceed"):
        apply_setting(CHAT, "breaches", 9)


def test_columns_that_are_not_signals_are_ignored_and_named() -> None:
    history = load_history(EXAMPLE, CANARY.signals)
    assert history.ignored == ["healthy", "deploy_id"]
    assert set(history.series) == {"hallucination-rate", "moderation-failures", "latency-p95"}
    point = history.at("hallucination-rate", 0)
    assert point is not None and point.control_outputs == 60_000 and point.events == 47


def test_never_sustained_counts_measured_polls_per_signal() -> None:
    text = ("timestamp,hallucination-rate.events,hallucination-rate.outputs,latency-p95\n"
            "0,1,4000,1.0\n60,,,1.1\n120,1,100,5.0\n180,2,4000,\n")
    result = backtest(CHAT, parse_history(text, "h.csv", CHAT.signals))
    assert not result.fired
    assert result.measured["hallucination-rate"] == 2  # no counts, or fewer than min_samples: not measured
    assert result.measured["latency-p95"] == 4  # no_data: breach counts the empty cell as a (breaching) poll
    assert ("per signal: hallucination-rate 2 measured (0 breaching), moderation-failures 0 measured "
            "(0 breaching), latency-p95 4 measured (2 breaching)") in result.reason


def test_a_sequential_backtest_decides_as_the_workflow_would() -> None:
    """The backtest's first confirmation is where the workflow's trackers (same code) confirm."""
    from workflows.confirmation import assess_poll, quality_rule, trackers

    history = load_history(EXAMPLE, CANARY.signals)
    result = backtest(CANARY, history)
    assert result.fired and result.kind == "revert" and "moderation-failures: confirmed" in result.reason
    # Replay the same polls straight through the trackers, restarting every 30-poll window like the backtest.
    from tabletop.backtest import _observe

    rule = quality_rule(CANARY)
    t, age = 0.0, 0
    tracker, _ = trackers(CANARY)
    while True:
        observations = _observe(CANARY, history, t)
        tracker.record_poll(assess_poll(rule, observations), observations)
        age += 1
        if tracker.sustained:
            break
        if age == CANARY.confirmation.polls:
            tracker, _ = trackers(CANARY)
            age = 0
        t += 60
    assert t == result.fired_at_s
    assert t >= 6 * 3600  # the regression starts at hour 6; nothing confirmed on the healthy hours


def test_rows_further_apart_than_polls_are_warned_about() -> None:
    text = "timestamp,moderation-failures.events,moderation-failures.outputs\n0,60,20000\n300,60,20000\n600,60,20000\n"
    history = parse_history(text, "h.csv", CANARY.signals)
    warning = row_spacing_warning(CANARY, history)
    assert warning and "300s apart" in warning
    assert row_spacing_warning(CHAT, parse_history(text, "h.csv", CHAT.signals)) is None


def test_the_advisor_recommends_a_threshold_from_the_history() -> None:
    history = load_history(EXAMPLE, CANARY.signals)
    stretches = healthy_stretches(history, [parse_healthy("healthy")])
    assert stretches[0][0] == 0 and stretches[-1][1] == 6 * 3600 - 60 + 60
    advice = advise(CANARY, history, parse_sweep("moderation-failures.threshold=20:40:4"), stretches,
                    [parse_injection("moderation-failures=x1.2@3600")])
    by_value = {c.value: c for c in advice.candidates}
    assert by_value[20].false_confirmations > 0  # below the healthy rate (24/10k): confirms on healthy hours
    assert all(by_value[v].false_confirmations == 0 for v in (24, 28, 32, 36, 40))
    assert advice.recommended == 24
    assert by_value[24].delay_s is not None and by_value[24].delay_s <= 15 * 60


def test_cli_json_and_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code = backtest_command(str(library_folder() / "chat-assistant-canary.yaml"), str(EXAMPLE), [], as_json=True,
                            sweep="false_alarm=0.001,0.01", healthy=["0:21540"])
    out, err = capsys.readouterr()
    assert code == 0
    assert err.strip() == ("warning: ignoring column(s) that are not signals of chat-assistant-canary: "
                           "healthy, deploy_id")
    answer = json.loads(out)
    assert answer["key"] == "false_alarm" and [c["value"] for c in answer["candidates"]] == [0.001, 0.01]
    assert all(c["false_confirmations"] == 0 for c in answer["candidates"])
    assert answer["warnings"] == [err.strip()]


def test_scan_restarts_after_each_confirmation() -> None:
    history = load_history(EXAMPLE, CANARY.signals)
    found = scan(CANARY, history)
    assert found and all(c.at_s >= 6 * 3600 for c in found)
    assert len(found) > 1 and found == sorted(found, key=lambda c: c.at_s)


async def test_tabletop_and_backtest_take_the_same_sequential_decision() -> None:
    from tabletop.runner import run_time_skipping
    from tabletop.scenarios import load_scenario, scenario_folder

    rise = load_scenario(scenario_folder() / "canary-sequential-rise.scenario.yaml")
    [result] = await run_time_skipping([rise])
    answer = backtest(rise.snapshot.playbook, rise.history, until_s=rise.scenario.duration.total_seconds())
    assert result.passed and answer.fired
    # the same poll (the third: min_polls); simulated time carries the activities' few real milliseconds
    assert result.detected_at_s is not None and answer.fired_at_s is not None
    assert int(result.detected_at_s // 60) == int(answer.fired_at_s // 60) == 2
