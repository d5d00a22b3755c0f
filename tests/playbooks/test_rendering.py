"""Chat messages and the post-incident review, rendered from the packaged templates with realistic data."""

from __future__ import annotations

from typing import Any

import pytest

from activities.contracts import MessageKind
from playbooks.models import PlaybookSnapshot
from playbooks.rendering import message_kinds, render_message, render_review
from workflows.messages import IncidentStatus, Outcome

MINIMAL = {"incident_id": "unship:chat-assistant:chat-2025-03-04", "playbook": "chat-assistant",
           "release": "chat-2025-03-04"}


def test_every_message_kind_has_a_template() -> None:
    assert set(message_kinds()) == {k.value for k in MessageKind}


@pytest.mark.parametrize("kind", [k.value for k in MessageKind])
def test_each_kind_renders_with_a_full_context(kind: str, message_context: dict[str, Any]) -> None:
    text = render_message(kind, message_context)
    assert "chat-assistant" in text and "chat-2025-03-04" in text
    assert "None" not in text and "Undefined" not in text
    assert "\n\n\n" not in text and text == text.strip()


@pytest.mark.parametrize("kind", [k.value for k in MessageKind])
def test_each_kind_renders_with_only_the_required_keys(kind: str) -> None:
    text = render_message(kind, MINIMAL)
    assert "chat-2025-03-04" in text and "None" not in text


def test_decision_request_says_who_decides_shows_evidence_and_mentions(message_context: dict[str, Any]) -> None:
    text = render_message("decision_request", message_context)
    assert "<@U04SAFETY01> <!subteam^S05MLONCALL>" in text
    assert "on_call, safety_lead — 2 approvals needed, 1 so far" in text
    assert "*Deadline:* 2025-03-04 10:21:00 UTC" in text
    lines = text.splitlines()
    breach = next(i for i, line in enumerate(lines) if "`hallucination-rate` = 74.9" in line)
    healthy = next(i for i, line in enumerate(lines) if "`latency-p95` = 2.31" in line)
    assert breach < healthy  # breaches first
    assert "`thumbs-down-rate` = no data (threshold > 12 %) — 142 rated answers" in text


def test_decided_lists_each_decision(message_context: dict[str, Any]) -> None:
    text = render_message("decided", message_context)
    assert "<@U04SAFETY01> approved via slack at 2025-03-04 10:09:00 UTC: _grounding failures" in text
    assert "<@U07ONCALL22> approved via cli" in text


def test_rejection_reads_as_rejected(message_context: dict[str, Any]) -> None:
    context = {**message_context, "outcome": "rejected",
               "decisions": [{"user": "U04SAFETY01", "verdict": "reject", "reason": "false alarm", "via": "slack",
                              "at": "2025-03-04T10:09:00Z"}]}
    text = render_message("decided", context)
    assert "*rejected*" in text and "<@U04SAFETY01> rejected via slack" in text


def test_stage_message_shows_progress(message_context: dict[str, Any]) -> None:
    text = render_message("stage", {**message_context, "stage": "stage 2 (50%)", "previous_percent": 50})
    assert "stage 2 (50%) — 50% of users are on the previous model" in text
    assert ":white_check_mark: 10% → :hourglass_flowing_sand: 50% → :white_small_square: 100%" in text


def test_completed_reports_integrity_failures(message_context: dict[str, Any]) -> None:
    context = {**message_context, "outcome": "reverted_unverified",
               "integrity": [{"name": "flag-readback", "kind": "readback", "passed": False,
                              "evidence": "chat-model reads 50% previous, expected 100%"}]}
    text = render_message("completed", context)
    assert "*integrity checks failed*" in text
    assert ":x: `flag-readback` (readback): chat-model reads 50% previous, expected 100%" in text


def test_override_template_wins(message_context: dict[str, Any]) -> None:
    overrides = {"opened": "{{ playbook }} opened {{ incident_id }} for {{ release }} "
                           "{{ mentions | map('mention') | join(',') }}"}
    text = render_message("opened", message_context, overrides)
    assert text == ("chat-assistant opened unship:chat-assistant:chat-2025-03-04 for chat-2025-03-04 "
                    "<@U04SAFETY01>,<!subteam^S05MLONCALL>")
    assert render_message("halted", message_context, overrides) == render_message("halted", message_context)


def test_playbook_override_from_the_library(chat_snapshot: PlaybookSnapshot) -> None:
    overrides = chat_snapshot.playbook.communications.templates
    assert render_message("dismissed", MINIMAL, overrides) == (
        ":white_check_mark: chat-assistant: `chat-2025-03-04` recovered by itself, no rollback "
        "(unship:chat-assistant:chat-2025-03-04).")


def test_template_errors_name_the_kind() -> None:
    with pytest.raises(ValueError, match=r"message template 'opened' \(the playbook's override\) failed: "
                                         r"UndefinedError.*'releas' is undefined"):
        render_message("opened", MINIMAL, {"opened": "{{ releas }}"})
    with pytest.raises(ValueError, match=r"message template 'stage'.*TemplateSyntaxError at line 1"):
        render_message("stage", MINIMAL, {"stage": "{% if %}"})
    with pytest.raises(ValueError, match=r"message template 'opened' .*templates/opened\.j2.*'release' is undefined"):
        render_message("opened", {"incident_id": "i", "playbook": "p"})
    with pytest.raises(ValueError, match="no message template for kind 'celebration'"):
        render_message("celebration", MINIMAL)


# --- the review ------------------------------------------------------------------------------------------


def review_status(status: IncidentStatus, snapshot: PlaybookSnapshot) -> dict[str, Any]:
    """What the review workflow hands the write_review activity."""
    data = status.model_dump(mode="json")
    data["playbook"] = snapshot.playbook.model_dump(mode="json")
    return data


def test_review_has_the_sections_of_a_post_incident_review(
        incident_status: IncidentStatus, chat_snapshot: PlaybookSnapshot) -> None:
    text = render_review(review_status(incident_status, chat_snapshot))
    assert text.startswith("# Post-incident review: chat-assistant — release `chat-2025-03-04`\n")
    for heading in ("## Summary", "## Impact", "## Timeline", "## Decisions", "## Rollback stages",
                    "## Integrity checks", "## Deadlines", "## What went well", "## What to improve",
                    "## Action items"):
        assert f"\n{heading}\n" in text
    assert "| Outcome | **reverted** |" in text
    assert "- Alert to all users moved back: 27m" in text


def test_review_timeline_has_a_row_per_audit_event_in_order(
        incident_status: IncidentStatus, chat_snapshot: PlaybookSnapshot) -> None:
    text = render_review(review_status(incident_status, chat_snapshot))
    table = text.split("## Timeline\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[:2] == ["| Time | Event | Actor | What happened |", "|---|---|---|---|"]
    assert len(table) == 2 + len(incident_status.audit)
    assert table[2] == ("| 2025-03-04 10:00:00 UTC | opened | alertmanager | alert GenAIQualityDegraded for release "
                        "chat-2025-03-04 (severity high) |")
    assert "| 2025-03-04 10:11:00 UTC | decision | U07ONCALL22 | approve \\| confirmed on dashboards |" in text
    assert ("| 2025-03-04 10:27:00 UTC | stage_applied | unship | stage 3 (100%): 100% of users on the previous "
            "model |") in text
    assert text.index("| breach_confirmed |") < text.index("| stage_applied |") < text.index("| integrity_passed |")


def test_review_lists_signals_tasks_and_deadlines(
        incident_status: IncidentStatus, chat_snapshot: PlaybookSnapshot) -> None:
    text = render_review(review_status(incident_status, chat_snapshot))
    assert "| `hallucination-rate` | model_quality | > 35 per 10k answers | 2 | 2 | 0 | 74.9 | 74.9 |" in text
    assert "| `flag-readback` | readback | passed | chat-model: 100% previous |" in text
    # Task due dates and deadlines count from the incident's start (2025-03-04 10:00 UTC).
    assert ("| Decide whether affected users must be notified | product_owner | U03PRODUCT7 | "
            "2025-03-06 10:00:00 UTC |  | [ ] |") in text
    # report clocks start at detection (10:06); retention and purge count from the start
    assert "- **gdpr_breach report due**: 2025-03-07 10:06:00 UTC" in text
    assert "- **eu_ai_act_serious_incident report due**: 2025-03-19 10:06:00 UTC" in text
    assert "- **Retention of the outputs ends**: 2025-03-11 10:00:00 UTC" in text
    assert "- **Purge outputs of the bad release**: 2025-04-03 10:00:00 UTC" in text


def test_review_uses_the_tasks_and_deadlines_the_review_workflow_computed(
        incident_status: IncidentStatus, chat_snapshot: PlaybookSnapshot) -> None:
    status = review_status(incident_status, chat_snapshot)
    status["review_tasks"] = [{"title": "Retrain the grounding checker", "owner": "on_call",
                               "owners": ["U07ONCALL22"], "due": "2025-03-10T09:00:00+00:00"}]
    status["deadlines"] = [{"what": "regulatory_report_reminder", "at": "2025-03-06T10:00:00+00:00"}]
    text = render_review(status)
    assert ("| Retrain the grounding checker | on_call | U07ONCALL22, S05MLONCALL, ml-oncall | "
            "2025-03-10 09:00:00 UTC |") in text
    assert "- **Regulatory notification reminder**: 2025-03-06 10:00:00 UTC" in text
    assert status["review_tasks"][0].get("groups") is None  # the caller's data is not modified


def test_review_of_a_dismissed_incident_without_a_playbook_dump(incident_status: IncidentStatus) -> None:
    status = incident_status.model_copy(update={
        "outcome": Outcome.DISMISSED, "stages": [], "decisions": [], "integrity": [], "decided_at": None,
        "first_revert_at": None, "full_revert_at": None, "previous_percent": 0}).model_dump(mode="json")
    text = render_review(status)
    assert "Dismissed: the breach was not sustained (transient)." in text
    assert "_No stage was applied._" in text and "_No one decided at a gate._" in text
    assert "- Alert to first users moved back: —" in text


def test_review_template_can_be_replaced(incident_status: IncidentStatus, chat_snapshot: PlaybookSnapshot) -> None:
    status = review_status(incident_status, chat_snapshot)
    assert render_review(status, "{{ playbook_name }}: {{ timeline | length }} events") == "chat-assistant: 10 events\n"
    with pytest.raises(ValueError, match=r"no review template named 'short\.md\.j2'"):
        render_review(status, "short.md.j2")


# --- sandbox and escaping ------------------------------------------------------------------------------------

INJECTION = "{{ cycler.__init__.__globals__.os.popen('id -un').read() }}"


@pytest.mark.parametrize("template", [
    INJECTION,
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ decisions['__class__'] }}",
])
def test_a_template_reaching_for_internals_never_runs_code(template: str) -> None:
    with pytest.raises(ValueError, match=r"failed: (SecurityError|UndefinedError)"):
        render_message("opened", MINIMAL, overrides={"opened": template})


def test_a_template_cannot_mutate_its_context() -> None:
    with pytest.raises(ValueError, match="SecurityError"):
        render_message("opened", {**MINIMAL, "mentions": []},
                       overrides={"opened": "{{ mentions.append('x') }}{{ mentions }}"})


def test_free_text_cannot_forge_slack_mentions_or_links(message_context: dict[str, Any]) -> None:
    context = {**message_context, "reason": "<!channel> see <http://evil.example|the runbook> & act"}
    text = render_message("decided", context)
    assert "&lt;!channel&gt; see &lt;http://evil.example|the runbook&gt; &amp; act" in text
    assert "<!channel>" not in text and "<http://evil" not in text
    assert "<@U04SAFETY01>" in render_message("decision_request", message_context)  # real mentions stay


def test_free_text_cannot_forge_markdown_in_the_review(chat_snapshot: PlaybookSnapshot,
                                                        incident_status: IncidentStatus) -> None:
    status = incident_status.model_dump(mode="json")
    status["decisions"][0]["reason"] = "ok | forged | cell [click](http://evil.example) <img src=x>"
    status["playbook"] = chat_snapshot.playbook.model_dump(mode="json")
    text = render_review(status)
    assert "\\[click\\](http://evil.example)" in text and "\\<img src=x>" in text
    assert "ok \\| forged \\| cell" in text
