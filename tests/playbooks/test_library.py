"""The shipped example playbooks load, mean what their scenario says, and hash stably."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.loader import PlaybookError, library_folder, load_library, load_playbook, load_playbook_text
from playbooks.models import DecisionMode, SignalCategory, TargetKind

EXAMPLES = ["conversational-agent.yaml", "image-generator.yaml", "data-augmentation.yaml"]


@pytest.mark.parametrize("filename", EXAMPLES)
def test_example_loads_with_a_hash_naming_its_version(filename: str) -> None:
    path = library_folder() / filename
    snapshot = load_playbook(path)
    assert snapshot.source == str(path)
    assert len(snapshot.content_hash) == 64
    assert snapshot.version == snapshot.content_hash[:12]


def test_library_is_indexed_by_playbook_name() -> None:
    library = load_library()
    assert set(library) == {"chat-assistant", "chat-assistant-canary", "image-generator", "synthetic-data"}
    assert {s.playbook.scenario.value for s in library.values()} == {
        "conversational-agent", "image-generator", "data-augmentation"}


def test_chat_assistant_matches_its_alert_and_reverts_the_chat_model_flag() -> None:
    playbook = load_playbook(library_folder() / "conversational-agent.yaml").playbook
    labels = {"alertname": "GenAIQualityDegraded", "service": "chat-assistant", "release": "chat-2025-03-04"}
    assert playbook.trigger.matches(labels)
    assert not playbook.trigger.matches({**labels, "service": "search"})
    assert not playbook.trigger.matches({**labels, "release": ""})
    target = playbook.rollback.targets[0]
    assert (target.kind, target.provider, target.key) == (TargetKind.FLAG, "flagd", "chat-model")
    assert (target.previous_variant, target.candidate_variant) == ("previous", "candidate")
    assert [s.percent for s in playbook.rollback.stages] == [10, 50, 100]
    assert set(playbook.decision.roles) == {"on_call", "safety_lead"} and playbook.decision.quorum == 2
    assert playbook.decision.break_glass is not None
    hallucinations = playbook.signal("hallucination-rate")
    assert hallucinations.source.is_ratio and hallucinations.min_samples > 0
    assert SignalCategory.FAIRNESS in {s.category for s in playbook.signals}
    assert {c.kind for c in playbook.integrity} == {"readback", "sql"}
    assert playbook.data is not None and playbook.data.purge and playbook.data.purge.approvers == ["legal", "privacy"]
    assert {r.regime.value for r in playbook.regulatory.reports} == {
        "gdpr_breach", "eu_ai_act_serious_incident", "internal_risk_committee"}
    assert playbook.provenance.fields["model"] == "label:model_version"


def test_image_generator_moves_a_flag_and_a_kserve_serving_target() -> None:
    playbook = load_playbook(library_folder() / "image-generator.yaml").playbook
    assert {(t.kind, t.provider) for t in playbook.rollback.targets} == {
        (TargetKind.FLAG, "flagd"), (TargetKind.SERVING, "kserve")}


def test_data_augmentation_is_automatic_with_a_sql_integrity_check() -> None:
    playbook = load_playbook(library_folder() / "data-augmentation.yaml").playbook
    assert playbook.decision.mode in (DecisionMode.AUTOMATIC, DecisionMode.DRY_RUN)
    assert "sql" in {c.kind for c in playbook.integrity}


def test_hash_ignores_layout_and_comments_but_not_meaning() -> None:
    text = (library_folder() / "conversational-agent.yaml").read_text()
    original = load_playbook_text(text)
    assert load_playbook_text(text).content_hash == original.content_hash
    relaid = "# a new comment\n" + text.replace("  quorum: 2 ", "  quorum:    2 ").replace("bake: 5m", "bake: 300s")
    assert relaid != text
    assert load_playbook_text(relaid).content_hash == original.content_hash
    changed = text.replace("quorum: 2 ", "quorum: 1 ")
    assert load_playbook_text(changed).content_hash != original.content_hash


def test_duplicate_playbook_names_in_a_library_are_an_error(tmp_path: Path) -> None:
    text = (library_folder() / "image-generator.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yml").write_text(text)
    with pytest.raises(PlaybookError) as caught:
        load_library(tmp_path)
    line = text.splitlines().index("name: image-generator") + 1
    assert [str(i) for i in caught.value.issues] == [
        f"{tmp_path / 'b.yml'}:{line}: name: playbook name 'image-generator' is already used by {tmp_path / 'a.yaml'}"
    ]
