"""The scenario language: the shipped library loads, bad files point at the line to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.loader import discover, library_folder
from tabletop.history import HistoryError, parse_history
from tabletop.scenarios import (
    ScenarioError,
    discover_scenarios,
    load_scenario,
    load_scenario_text,
    scenario_folder,
)

PLAYBOOK = str(library_folder() / "conversational-agent.yaml")


def test_every_library_scenario_loads_with_its_playbook() -> None:
    files = discover_scenarios([scenario_folder()])
    assert len(files) >= 10
    for path in files:
        loaded = load_scenario(path)
        assert loaded.snapshot.playbook.name and loaded.scenario.expect.outcome


def test_validate_does_not_take_scenarios_for_playbooks() -> None:
    found = discover([Path(library_folder()).parent])
    assert found and not any(p.name.endswith(".scenario.yaml") for p in found)


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    text = f"""scenario: broken
playbook: {PLAYBOOK}
signals:
  hallucination-rate:
    - {{at: soon, value: 3}}
people:
  - {{user: U1, action: approve}}
faults:
  - {{system: flags, from: 10m, to: 5m}}
expect:
  outcome: exploded
"""
    with pytest.raises(ScenarioError) as err:
        load_scenario_text(text, "s.scenario.yaml", tmp_path)
    shown = [str(i) for i in err.value.issues]
    assert any(s.startswith("s.scenario.yaml:5: signals.hallucination-rate.0.at:") and "'soon' is not a duration" in s
               for s in shown), shown
    assert any(s.startswith("s.scenario.yaml:7: people.0:") and "'at'" in s for s in shown), shown
    assert any(s.startswith("s.scenario.yaml:9: faults.0.to:") and "'to' must be after 'from'" in s for s in shown), shown
    assert any(s.startswith("s.scenario.yaml:11: expect.outcome:") and "not an outcome" in s for s in shown), shown


def test_unknown_signal_and_missing_playbook_point_at_their_lines(tmp_path: Path) -> None:
    text = f"scenario: s\nplaybook: {PLAYBOOK}\nsignals:\n  nope:\n    - {{at: 0s, value: 1}}\n"
    with pytest.raises(ScenarioError) as err:
        load_scenario_text(text, "x.scenario.yaml", tmp_path)
    assert str(err.value.issues[0]).startswith("x.scenario.yaml:4: signals.nope: unknown signal 'nope'")
    with pytest.raises(ScenarioError) as missing:
        load_scenario_text("scenario: s\nplaybook: nowhere.yaml\n", "y.scenario.yaml", tmp_path)
    assert str(missing.value.issues[0]).startswith("y.scenario.yaml:2: playbook: no playbook file at")


def test_bad_overrides_are_reported_at_the_overrides(tmp_path: Path) -> None:
    text = f"scenario: s\nplaybook: {PLAYBOOK}\noverrides:\n  decision:\n    quorum: 0\n"
    with pytest.raises(ScenarioError) as err:
        load_scenario_text(text, "o.scenario.yaml", tmp_path)
    assert str(err.value.issues[0]).startswith("o.scenario.yaml:5: overrides.decision.quorum:")


def test_history_csv_problems_name_the_line() -> None:
    with pytest.raises(HistoryError, match=r"h.csv:3: latency: 'fast' is not a number"):
        parse_history("timestamp,latency\n0,1.5\n60,fast\n", "h.csv")
    with pytest.raises(HistoryError, match=r"needs both 'x\.events' and 'x\.outputs'"):
        parse_history("timestamp,x.events\n0,1\n", "h.csv")
    with pytest.raises(HistoryError, match="no 'timestamp' column"):
        parse_history("time,x\n0,1\n", "h.csv")
