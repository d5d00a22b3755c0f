"""RollbackWorkflow with ``confirmation.method: sequential`` on the time-skipping server."""

from __future__ import annotations

import math
from typing import Any

from playbooks.rendering import render_review
from tests.support.playbooks import sequential_snapshot
from tests.support.world import World
from workflows.messages import Command, Outcome, Phase
from workflows.rollback import RollbackWorkflow


def closing(status: Any) -> str:
    return str(next(e for e in status.audit if e.kind == "closed").message)


async def test_a_doubled_rate_confirms_after_min_polls(world: World) -> None:
    world.signals.timeline = {"hallucinations": [60.0], "latency_p95": [1.0], "fairness_gap": [0.01]}
    world.signals.samples = {"hallucinations": [20_000]}
    handle = await world.start(sequential_snapshot())
    status = await world.at_phase(handle, Phase.AWAITING_DECISION)
    polls = [e for e in status.audit if e.kind == "poll"]
    assert len(polls) == 3  # each poll adds at most h / min_polls: the third one confirms
    confirmed = next(e for e in status.audit if e.kind == "confirmed")
    h = math.log(30 / 0.01)
    assert f"hallucinations: confirmed; evidence {h:.1f} of {h:.1f} needed; pooled rate 60.0/10k over 3 polls" \
        in confirmed.message
    [evidence] = [e for e in status.confirmation if e.signal == "hallucinations"]
    assert evidence.confirmed and evidence.method == "cusum" and evidence.needed == evidence.statistic
    assert evidence.bound is not None and 30 < evidence.bound < 60
    assert polls[0].data["evidence"][0]["signal"] == "hallucinations"
    request = next(text for note, text in world.chat.sent if note.kind.value == "decision_request")
    assert "*Confirmation* (sequential test" in request and "evidence 8.0 of 8.0 needed" in request
    await handle.signal(RollbackWorkflow.abort, Command(by="U_ONCALL", reason="test done"))
    final = await handle.result()
    review = render_review(final.model_dump(mode="json"), playbook=sequential_snapshot().playbook.model_dump(mode="json"))
    assert "### Confirmation evidence" in review and "**confirmed** (cusum): hallucinations: confirmed" in review


async def test_a_one_poll_spike_is_dismissed_as_not_sustained(world: World) -> None:
    # A 60-second spike to 10x the threshold, then the rate sits just under it for the whole window.
    world.signals.timeline = {"hallucinations": [300.0, 29.0], "latency_p95": [1.0], "fairness_gap": [0.01]}
    world.signals.samples = {"hallucinations": [20_000]}
    handle = await world.start(sequential_snapshot(), release="spiky-v1")
    status = await handle.result()
    assert status.outcome is Outcome.DISMISSED
    assert [e.kind for e in status.audit].count("poll") == 30
    assert closing(status).startswith(
        "dismissed: transient: 0 of 1 required signal(s) confirmed; hallucinations: evidence 0.0 of 8.0 needed; "
        "last poll 29.0/10k, within what 30/10k explains")
    assert world.flags.writes == []


async def test_polls_without_counts_add_no_evidence(world: World) -> None:
    # No outputs reported: the value alone is no evidence; latency still confirms by 3 of 5.
    world.signals.timeline = {"hallucinations": [90.0], "latency_p95": [3.0], "fairness_gap": [0.01]}
    world.signals.samples = {}
    snap = sequential_snapshot()
    snap = snap.model_copy(update={"playbook": snap.playbook.model_copy(update={
        "confirmation": snap.playbook.confirmation.model_copy(update={"rule": None})})})
    handle = await world.start(snap, release="nocounts-v1")
    status = await world.at_phase(handle, Phase.AWAITING_DECISION)
    [h] = [e for e in status.confirmation if e.signal == "hallucinations"]
    assert not h.confirmed and "3 polls without counts" in h.text
    [lat] = [e for e in status.confirmation if e.signal == "latency_p95"]
    assert lat.confirmed and lat.method == "k_of_m"
    await handle.signal(RollbackWorkflow.abort, Command(by="U_ONCALL", reason="test done"))
    await handle.result()
