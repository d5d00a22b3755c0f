"""Broken playbooks: every problem is reported, each as ``file:line: field: message`` at the line to edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.loader import (
    PlaybookError,
    PlaybookIssue,
    discover,
    library_folder,
    load_playbook,
    load_playbook_text,
    validate_command,
    validate_paths,
)

# A small valid playbook; the line numbers in the expectations below refer to it (edits keep the line count).
BASE = '''\
api_version: unship/v1
name: tiny-chat
scenario: conversational-agent
roles:
  on_call:
    groups: [S05MLONCALL]
  safety_lead:
    users: [U04SAFETY01]
trigger:
  matchers:
    - alertname = GenAIQualityDegraded
    - service = tiny-chat
signals:
  - name: hallucination-rate
    category: model_quality
    source:
      events: sum(increase(genai_grounding_failures_total{release="$release"}[5m]))
      outputs: sum(increase(genai_responses_total{release="$release"}[5m]))
    threshold: {value: 35}
    min_samples: 500
  - name: latency-p95
    category: operational_health
    source:
      query: histogram_quantile(0.95, sum by (le) (rate(genai_seconds_bucket[5m])))
    threshold: {value: 4, unit: s}
confirmation:
  window: 10m
  rule:
    any_of: [hallucination-rate, latency-p95]
decision:
  roles: [on_call, safety_lead]
  quorum: 2
  timeout: 15m
rollback:
  targets:
    - key: chat-model
  stages:
    - percent: 10
      verify: [latency-p95]
    - percent: 50
    - percent: 100
communications:
  channel: "#ml-incidents"
review:
  tasks:
    - title: Write the review
      owner: on_call
'''

KNOWN_SIGNALS = "['hallucination-rate', 'latency-p95']"
KNOWN_ROLES = "['on_call', 'safety_lead']"


def issues_of(tmp_path: Path, *edits: tuple[str, str]) -> list[str]:
    """Apply ``(old, new)`` edits to BASE, load it from a file and return the issues as printed."""
    text = BASE
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    prefix = f"{path}:"
    assert all(str(issue).startswith(prefix) for issue in caught.value.issues)
    return [str(issue)[len(prefix):] for issue in caught.value.issues]


def test_base_playbook_is_valid() -> None:
    assert load_playbook_text(BASE).playbook.name == "tiny-chat"


def test_unknown_field_points_at_the_key_and_lists_the_allowed_ones(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    min_samples: 500\n", "    min_sample: 500\n")) == [
        ("20: signals.0.min_sample: unknown field 'min_sample'; allowed here: name, category, description, "
        "source, threshold, min_samples, no_data, compare_to"),
    ]


def test_bad_duration(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("  timeout: 15m\n", "  timeout: 15 minutes\n")) == [
        "33: decision.timeout: '15 minutes' is not a duration; write it like '90s', '10m', '1h30m' or '2d'",
    ]


def test_stages_not_increasing_points_at_the_offending_stage(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    - percent: 50\n", "    - percent: 5\n")) == [
        "40: rollback.stages.1.percent: stage percentages must increase, got [10.0, 5.0, 100.0]",
    ]


def test_last_stage_must_reach_everyone(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    - percent: 100\n", "    - percent: 90\n")) == [
        "41: rollback.stages.2.percent: the last stage must move 100% of users back, got 90%",
    ]


def test_unknown_signal_in_rule_points_at_the_name(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("[hallucination-rate, latency-p95]", "[hallucination-rate, latency-p59]")) == [
        f"29: confirmation.rule.any_of.1: unknown signal 'latency-p59'; known: {KNOWN_SIGNALS}",
    ]


def test_unknown_role_in_a_block_list_points_at_its_item(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("  roles: [on_call, safety_lead]\n", "  roles:\n    - on_call\n    - safety\n"),
                     ("  quorum: 2\n  timeout: 15m\n", "  quorum: 2\n")) == [
        f"33: decision.roles.1: unknown role 'safety'; known: {KNOWN_ROLES}",
    ]


def test_bad_matcher_regex(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    - service = tiny-chat\n", "    - service =~ tiny-(chat\n")) == [
        ("12: trigger.matchers.1: bad regular expression 'tiny-(chat': missing ), unterminated subpattern "
        "at position 5"),
    ]


def test_yaml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    threshold: {value: 4, unit: s}\n", "    threshold: {value: 4, unit: s\n")) == [
        "26: yaml: expected ',' or '}', but got ':' (while parsing a flow mapping at line 25)",
    ]


def test_duplicate_key_is_a_yaml_error(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("  timeout: 15m\n", "  quorum: 3\n")) == [
        ('33: yaml: found duplicate key "quorum" with value "3" (original value: "2") '
        "(while constructing a mapping at line 31)"),
    ]


def test_missing_required_field_points_at_its_parent(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    - key: chat-model\n", "    - provider: flagd\n")) == [
        "36: rollback.targets.0.key: required field is missing",
    ]


def test_missing_top_level_field_points_at_the_start(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("communications:\n  channel: \"#ml-incidents\"\n", "\n\n")) == [
        "1: communications: required field is missing",
    ]


def test_wrong_type_deep_in_a_list(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("    threshold: {value: 4, unit: s}\n", "    threshold: {value: four, unit: s}\n")) == [
        ("25: signals.1.threshold.value: Input should be a valid number, unable to parse string as a number "
        "(got 'four')"),
    ]


def test_every_problem_in_one_file_is_reported_in_line_order(tmp_path: Path) -> None:
    assert issues_of(
        tmp_path,
        ("    - service = tiny-chat\n", "    - service tiny-chat\n"),
        ("    min_samples: 500\n", "    min_samples: -1\n"),
        ("  window: 10m\n", "  window: soon\n"),
        ("[hallucination-rate, latency-p95]", "[hallucination, latency-p95]"),
        ("  roles: [on_call, safety_lead]\n", "  roles: [on-call, safety_lead]\n"),
        ("      owner: on_call\n", "      owner: oncall\n"),
    ) == [
        ("12: trigger.matchers.1: 'service tiny-chat' is not a matcher; write it like "
        "'alertname=HighHallucinationRate'"),
        "20: signals.0.min_samples: Input should be greater than or equal to 0 (got -1)",
        "27: confirmation.window: 'soon' is not a duration; write it like '90s', '10m', '1h30m' or '2d'",
        f"29: confirmation.rule.any_of.0: unknown signal 'hallucination'; known: {KNOWN_SIGNALS}",
        f"31: decision.roles.0: unknown role 'on-call'; known: {KNOWN_ROLES}",
        f"47: review.tasks.0.owner: unknown role 'oncall'; known: {KNOWN_ROLES}",
    ]


def test_integrity_checks_are_told_apart_by_kind(tmp_path: Path) -> None:
    checks = (
        "integrity:\n"
        "  - kind: sql\n"
        "    name: turns-answered\n"
        "    dsn_env: CHAT_DB_URL\n"
        "    query: DELETE FROM turns\n"
        "    expect: [0]\n"
        "  - kind: smoke\n"
        "    name: x\n"
        "communications:\n"
    )
    assert issues_of(tmp_path, ("communications:\n", checks)) == [
        "46: integrity.0.query: an integrity query must be read-only (SELECT, WITH or VALUES)",
        "47: integrity.0.expect: expected a number, a string or a boolean, got list",
        "48: integrity.1.kind: unknown kind 'smoke'; expected one of 'readback', 'http', 'promql', 'sql'",
    ]


def test_model_level_field_error_is_pointed_at_the_field(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("  window: 10m\n", "  breaches: 9\n")) == [
        "27: confirmation.breaches: 'breaches: 9' cannot exceed 'out_of: 5'",
    ]


def test_template_overrides_are_checked(tmp_path: Path) -> None:
    templates = (
        '  channel: "#ml-incidents"\n'
        "  templates:\n"
        "    opend: hi\n"
        "    halted: |-\n"
        "      Rollback of {{ release }} halted.\n"
        "      {{ reason | default('') }\n"
    )
    assert issues_of(tmp_path, ('  channel: "#ml-incidents"\n', templates)) == [
        ("45: communications.templates.opend: unknown message kind 'opend'; known: completed, decided, "
        "decision_request, dismissed, escalated, halted, investigation, opened, paused, rehearsal, reminder, stage"),
        "48: communications.templates.halted: template does not compile: unexpected '}'",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("", "1: playbook: expected a mapping of playbook fields, got an empty document"),
    ("- a\n- b\n", "1: playbook: expected a mapping of playbook fields, got list"),
    ("name: [unclosed\n",
     "2: yaml: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 1)"),
])
def test_not_a_playbook(text: str, expected: str) -> None:
    with pytest.raises(PlaybookError) as caught:
        load_playbook_text(text, "inline.yaml")
    assert [str(i) for i in caught.value.issues] == [f"inline.yaml:{expected}"]


def test_issue_prints_as_file_line_field_message() -> None:
    issue = PlaybookIssue("pb.yaml", 7, "rollback.stages.1.percent", "stage percentages must increase")
    assert str(issue) == "pb.yaml:7: rollback.stages.1.percent: stage percentages must increase"


# --- many files -------------------------------------------------------------------------------------------


def test_discover_expands_folders_recursively_and_sorts(tmp_path: Path) -> None:
    (tmp_path / "team" / "nested").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for name in ("team/b.yaml", "team/nested/a.yml", "team/notes.md", ".git/x.yaml"):
        (tmp_path / name).write_text(BASE)
    single = tmp_path / "single.yaml"
    single.write_text(BASE)
    missing = tmp_path / "missing.yaml"
    assert discover([tmp_path / "team", single, missing, single]) == sorted(
        [tmp_path / "team" / "b.yaml", tmp_path / "team" / "nested" / "a.yml", single, missing])


def test_validate_paths_reports_missing_files_and_keeps_valid_ones(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    snapshots, issues = validate_paths([good, tmp_path / "nope.yaml"])
    assert [s.playbook.name for s in snapshots] == ["tiny-chat"]
    assert [str(i) for i in issues] == [f"{tmp_path / 'nope.yaml'}:0: file: no such file"]


def test_validate_command_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    version = load_playbook(good).version
    assert validate_command([str(good)]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK {good} (tiny-chat, version {version})\n" and err == ""


def test_validate_command_reports_issues_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "good.yaml").write_text(BASE)
    (tmp_path / "bad.yaml").write_text(BASE.replace("  timeout: 15m\n", "  timeout: later\n"))
    assert validate_command([str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"{tmp_path / 'bad.yaml'}:33: decision.timeout: 'later' is not a duration; "
                   "write it like '90s', '10m', '1h30m' or '2d'\n")


def test_validate_command_with_no_playbooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text("no playbooks here")
    assert validate_command([str(tmp_path)]) == 2
    assert "no playbook files" in capsys.readouterr().err


def test_validate_command_on_the_shipped_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_command([str(library_folder())]) == 0
    assert capsys.readouterr().out.count("OK ") == len(list(library_folder().glob("*.yaml")))


def test_absurd_durations_are_errors_not_crashes(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("  timeout: 15m\n", "  timeout: 99999999999d\n")) == [
        "33: decision.timeout: 8.64e+15 seconds is not a usable duration",
    ]
    assert issues_of(tmp_path, ("  window: 10m\n", "  window: .inf\n")) == [
        "27: confirmation.window: inf seconds is not a usable duration",
    ]


def test_alias_bombs_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6))
    with pytest.raises(PlaybookError) as caught:
        load_playbook_text(bomb, "bomb.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "bomb.yaml:1: playbook: more than 100000 values once YAML aliases are expanded; this is not a playbook"]


def test_a_template_reaching_for_internals_is_refused_with_its_line(tmp_path: Path) -> None:
    templates = (
        '  channel: "#ml-incidents"\n'
        "  templates:\n"
        "    halted: |-\n"
        "      Rollback of {{ release }} halted.\n"
        "      {{ cycler.__init__.__globals__.os.popen('id -un').read() }}\n"
    )
    assert issues_of(tmp_path, ('  channel: "#ml-incidents"\n', templates)) == [
        "47: communications.templates.halted: template uses the unsafe attribute '__globals__': templates run "
        "sandboxed and may only read the message context",
    ]
