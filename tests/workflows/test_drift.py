"""Flags changed behind unship's back (issue 13, defects 2 and 4), on the time-skipping server.

Every write is a compare-and-set against what the incident last wrote or read; every bake reads the targets back
mid-way and at its end. A difference is recorded with the evidence (expected vs found) and either re-applied
(``on_drift: reapply``) or put to a person at a gate; users are never moved toward the suspect release.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import WorkflowHandle

from tests.support.playbooks import snapshot
from tests.support.world import World
from workflows.messages import DecisionRequest, IncidentStatus, Outcome, Verdict
from workflows.rollback import RollbackWorkflow

FLAG = "flag:flagd:chat-model"


def automatic(**rollback: object) -> dict:
    return {"confirmation": {"window": "0s"}, "decision": {"mode": "automatic"},
            "rollback": {"stages": [{"percent": 10, "bake": "5m"}, {"percent": 50, "bake": "5m"},
                                    {"percent": 100, "bake": "5m"}], **rollback}}


def stage_baking(n: int) -> object:
    return lambda s: len(s.stages) > n and s.stages[n].status == "baking"


def gate_open(s: IncidentStatus) -> bool:
    return s.gate is not None and s.gate.purpose == "drift"


async def decide(handle: WorkflowHandle, verdict: Verdict) -> None:
    await handle.execute_update(RollbackWorkflow.decide, DecisionRequest(user="U_ONCALL", verdict=verdict,
                                                                        reason="checked the flag", via="cli"))


async def test_two_incidents_on_one_flag_never_move_users_back_toward_the_release(world: World) -> None:
    """r1 wrote 10%; r2 on the same flag used to reach 100% meanwhile, and r1 then wrote 50% over it.

    Two defences now stand in the way: the second incident waits while the first holds the flag (decision
    rights, "one incident per target"), and every write compares against what the incident last wrote or read
    (the drift gate, tested with a hand edit below). Here the hold keeps r2 off the flag until r1 lets go; r2
    then finds everyone already back and writes nothing.
    """
    r1 = await world.start(snapshot(**automatic(stages=[{"percent": 10, "bake": "1h"}, {"percent": 50, "bake": "5m"},
                                                        {"percent": 100, "bake": "5m"}])), "r1")
    await world.until(r1, stage_baking(0), step=timedelta(seconds=1))
    r2 = await world.start(snapshot(**automatic(stages=[{"percent": 10, "bake": "10s"}, {"percent": 50, "bake": "10s"},
                                                        {"percent": 100, "bake": "10s"}])), "r2")
    waiting = await world.until(r2, lambda s: s.gate is not None and s.gate.purpose.startswith("target held"),
                                step=timedelta(seconds=1))
    assert waiting.gate is not None and r1.id in waiting.gate.purpose
    assert world.writes() == [10], "r2 wrote a flag r1 holds"
    first = await r1.result()
    second = await r2.result()
    assert first.outcome is Outcome.REVERTED and second.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 100], "a write moved users back toward the release"
    assert [s.status for s in second.stages] == ["skipped", "skipped", "skipped"]


async def test_a_flag_lowered_by_hand_during_a_bake_is_put_to_a_person_with_the_evidence(world: World) -> None:
    handle = await world.start(snapshot(**automatic(stages=[{"percent": 10, "bake": "5m"},
                                                            {"percent": 50, "bake": "5m", "verify": ["latency_p95"]},
                                                            {"percent": 100, "bake": "5m"}])))
    await world.until(handle, stage_baking(1), step=timedelta(seconds=1))
    world.flags.state[FLAG] = 0  # someone sets the flag to 0% by hand, 4 s into the 50% bake
    status = await world.until(handle, gate_open, step=timedelta(seconds=30))
    assert status.gate is not None and f"{FLAG}: expected 50%, found 0%" in status.gate.evidence
    assert [s.previous_percent for s in status.flag_read] == [0], "the status must show the flag as read"
    assert not any(e.kind == "stage_verified" and "stage 2" in e.message for e in status.audit), \
        "the record said stage 2 was verified while users were back on the release"
    await decide(handle, Verdict.APPROVE)
    final = await handle.result()
    assert final.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 50, 100]  # re-applied after the approval, then on as planned
    kinds = [e.kind for e in final.audit]
    assert kinds.index("drift_detected") < kinds.index("drift_decided") < kinds.index("stage_verified")


async def test_on_drift_reapply_writes_the_stage_again_and_bakes_anew(world: World) -> None:
    handle = await world.start(snapshot(**automatic(on_drift="reapply")))
    await world.until(handle, stage_baking(1), step=timedelta(seconds=1))
    world.flags.state[FLAG] = 0
    final = await handle.result()
    assert final.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 50, 100]
    drift = next(e for e in final.audit if e.kind == "drift_detected")
    assert "expected 50%, found 0%" in drift.message
    assert any(e.kind == "drift_reapply" for e in final.audit)
    assert [s.previous_percent for s in final.flag_read] == [100]


async def test_a_drift_in_the_last_bake_that_a_person_keeps_halts_with_the_flag_as_read(world: World) -> None:
    handle = await world.start(snapshot(**automatic()))
    await world.until(handle, stage_baking(2), step=timedelta(seconds=1))
    world.flags.state[FLAG] = 0
    await world.until(handle, gate_open, step=timedelta(seconds=30))
    await decide(handle, Verdict.REJECT)
    final = await handle.result()
    assert final.outcome is Outcome.HALTED
    [closed] = [e for e in final.audit if e.kind == "closed"]
    assert "left as found (flag:flagd:chat-model at 0%)" in closed.message
    assert [s.previous_percent for s in final.flag_read] == [0]
    assert world.writes() == [10, 50, 100]
