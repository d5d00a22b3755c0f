"""``method: sequential`` and ``compare_to: control`` in playbooks: what validates, and every mistake reported as
``file:line: field: message`` at the line to edit."""

from __future__ import annotations

from pathlib import Path

from playbooks.loader import content_hash, library_folder, load_playbook, load_playbook_text
from playbooks.models import CompareTo, ConfirmationMethod, Playbook, SequentialTest
from tests.playbooks.test_loader_errors import BASE, issues_of

# counts per poll interval, as a sequential test needs
EVENTS_1M = ('{release="$release"}[5m]))\n      outputs', '{release="$release"}[1m]))\n      outputs')
OUTPUTS_1M = ('genai_responses_total{release="$release"}[5m]', 'genai_responses_total{release="$release"}[1m]')
SEQUENTIAL = ("  window: 10m\n", "  window: 10m\n  method: sequential\n")


def edited(*edits: tuple[str, str]) -> str:
    text = BASE
    for old, new in edits:
        text = text.replace(old, new)
    return text


def test_a_sequential_playbook_validates_with_defaults() -> None:
    playbook = load_playbook_text(edited(EVENTS_1M, OUTPUTS_1M, SEQUENTIAL)).playbook
    conf = playbook.confirmation
    assert conf.method is ConfirmationMethod.SEQUENTIAL and conf.is_sequential
    settings = conf.sequential_settings
    assert (settings.test, settings.false_alarm, settings.detect, settings.min_polls) == \
        (SequentialTest.CUSUM, 0.01, 1.2, 3)
    assert [s.counted for s in playbook.signals] == [True, False]


def test_the_library_has_a_control_comparison_example() -> None:
    playbook = load_playbook(library_folder() / "chat-assistant-canary.yaml").playbook
    assert playbook.confirmation.is_sequential
    control = playbook.signal("hallucination-rate")
    assert control.compare_to is CompareTo.CONTROL and control.source.control is not None


def test_new_fields_at_their_defaults_leave_the_version_unchanged() -> None:
    snap = load_playbook(library_folder() / "conversational-agent.yaml")
    # the version before method/sequential/compare_to, decision.require/actions and the governance sections
    # (provenance, data, regulatory, review.tracker) existed: their defaults leave the version unchanged
    before = snap.playbook.model_dump(mode="json")
    before["decision"]["require"] = {}  # the shipped playbook now asks for one on-call AND one safety lead
    before["decision"]["actions"] = {"revert_now": None, "abort": None, "pause": None, "break_glass": []}
    for section in ("provenance", "data", "regulatory"):
        before.pop(section)
    before["review"].pop("tracker")
    before["roles"] = {k: v for k, v in before["roles"].items() if k not in ("legal", "privacy", "compliance")}
    before["review"].update(regulatory_report_due=72 * 3600.0, purge_outputs_after=30 * 86400.0)
    assert content_hash(Playbook.model_validate(before))[:12] == "835452bdb2b1"
    data = snap.playbook.model_dump(mode="json")
    data["confirmation"]["method"] = "sequential"
    for signal in data["signals"]:
        for key in ("events", "outputs"):
            if signal["source"].get(key):
                signal["source"][key] = signal["source"][key].replace("[5m]", "[1m]").replace("[15m]", "[1m]")
    assert content_hash(Playbook.model_validate(data)) != snap.content_hash


def test_unknown_method(tmp_path: Path) -> None:
    assert issues_of(tmp_path, EVENTS_1M, OUTPUTS_1M, ("  window: 10m\n", "  window: 10m\n  method: sprt\n")) == [
        "28: confirmation.method: Input should be 'k_of_m' or 'sequential' (got 'sprt')",
    ]


def test_sequential_settings_without_the_method(tmp_path: Path) -> None:
    assert issues_of(tmp_path, ("  window: 10m\n", "  window: 10m\n  sequential:\n    detect: 1.5\n")) == [
        "28: confirmation.sequential: 'sequential' settings apply only with 'method: sequential'",
    ]


def test_out_of_range_settings_point_at_their_line(tmp_path: Path) -> None:
    settings = "  window: 10m\n  method: sequential\n  sequential:\n    false_alarm: 0\n    detect: 0.9\n"
    assert issues_of(tmp_path, EVENTS_1M, OUTPUTS_1M, ("  window: 10m\n", settings)) == [
        "30: confirmation.sequential.false_alarm: Input should be greater than 0 (got 0)",
        "31: confirmation.sequential.detect: Input should be greater than 1 (got 0.9)",
    ]


def test_min_polls_must_fit_in_the_window(tmp_path: Path) -> None:
    settings = "  window: 10m\n  method: sequential\n  sequential:\n    min_polls: 12\n"
    assert issues_of(tmp_path, EVENTS_1M, OUTPUTS_1M, ("  window: 10m\n", settings)) == [
        ("29: confirmation.sequential: 'sequential: min_polls 12' is more than the 10 polls of a 10m window "
         "polled every 1m"),
    ]


def test_overlapping_counts_are_refused(tmp_path: Path) -> None:
    assert issues_of(tmp_path, SEQUENTIAL) == [
        ("17: signals.0.source.events: counts over [5m] overlap from one poll to the next (interval 1m); a "
         "sequential test needs the counts of each interval alone, e.g. increase(...[1m])"),
    ]


def test_control_comparison_needs_the_control_counters(tmp_path: Path) -> None:
    assert issues_of(tmp_path, EVENTS_1M, OUTPUTS_1M, SEQUENTIAL,
                     ("    min_samples: 500\n", "    min_samples: 500\n    compare_to: control\n")) == [
        ("21: signals.0.compare_to: 'compare_to: control' needs the baseline cohort's counters in source.control "
         "(events and outputs)"),
    ]


def test_control_comparison_needs_the_sequential_method(tmp_path: Path) -> None:
    control = ("    min_samples: 500\n",
               "    min_samples: 500\n    compare_to: control\n")
    source = ("[1m]))\n    threshold: {value: 35}",
              "[1m]))\n      control: {events: a_total, outputs: b_total}\n    threshold: {value: 35}")
    assert issues_of(tmp_path, EVENTS_1M, OUTPUTS_1M, control, source) == [
        ("22: signals.0.compare_to: 'compare_to: control' is decided by the sequential test; set "
         "confirmation.method: sequential"),
    ]


def test_the_provider_options_change_the_version_only_when_used() -> None:
    # Target.component (KServe) and Target.override_pending_changes (LaunchDarkly) came later: at their defaults
    # they are left out of the hash (test above: the library's versions are unchanged); set, they count
    snap = load_playbook(library_folder() / "image-generator.yaml")
    data = snap.playbook.model_dump(mode="json")
    assert content_hash(Playbook.model_validate(data)) == snap.content_hash
    kserve = next(t for t in data["rollback"]["targets"] if t["provider"] == "kserve")
    kserve["component"] = "transformer"
    assert content_hash(Playbook.model_validate(data)) != snap.content_hash
